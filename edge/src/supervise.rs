//! Supervised background loops.
//!
//! A background loop whose `JoinError` is dropped is a silent outage: a
//! panic in a health checker would leave every ejected node ejected for
//! good. [`Tasks::spawn`] runs a loop, and when it panics or returns while
//! the process is not shutting down, logs it, counts it and starts it
//! again after a backoff (100 ms doubling to 30 s; back to 100 ms once a
//! run lasted a minute). [`Tasks::all_running`] is what `/ready` waits for.

use std::any::Any;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, warn};

/// One supervised loop, as `/metrics` shows it.
#[derive(Debug)]
pub struct TaskState {
    pub name: &'static str,
    running: AtomicBool,
    /// Runs that ended and were started again.
    pub restarts: AtomicU64,
    /// Of those, the ones that ended in a panic.
    pub panics: AtomicU64,
}

impl TaskState {
    pub fn running(&self) -> bool {
        self.running.load(Relaxed)
    }
}

/// The supervised loops of a process.
#[derive(Debug, Default)]
pub struct Tasks {
    states: Mutex<Vec<Arc<TaskState>>>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const HEALTHY_RUN: Duration = Duration::from_secs(60);

fn panic_message(p: &(dyn Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

impl Tasks {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Run `make()` as a loop named `name` until `shutdown` turns true,
    /// starting it again whenever it panics or returns before that.
    pub fn spawn<F, Fut>(
        &self,
        name: &'static str,
        mut shutdown: watch::Receiver<bool>,
        make: F,
    ) -> JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let state = Arc::new(TaskState {
            name,
            running: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            panics: AtomicU64::new(0),
        });
        self.states.lock().push(state.clone());
        tokio::spawn(async move {
            let mut backoff = BACKOFF_MIN;
            loop {
                let run = make();
                let st = state.clone();
                let started = Instant::now();
                let h = tokio::spawn(async move {
                    st.running.store(true, Relaxed);
                    run.await
                });
                let r = h.await;
                state.running.store(false, Relaxed);
                if *shutdown.borrow() {
                    return;
                }
                match r {
                    Ok(()) => warn!(task = name, "background loop ended; starting it again"),
                    Err(e) if e.is_panic() => {
                        state.panics.fetch_add(1, Relaxed);
                        let p = e.into_panic();
                        error!(
                            task = name,
                            panic = panic_message(p.as_ref()),
                            "background loop panicked; starting it again"
                        );
                    }
                    Err(_) => return, // cancelled: the runtime is going away
                }
                state.restarts.fetch_add(1, Relaxed);
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = BACKOFF_MIN;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::http1::stopped(&mut shutdown) => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        })
    }

    /// Every loop spawned so far is running now.
    pub fn all_running(&self) -> bool {
        self.states.lock().iter().all(|s| s.running())
    }

    /// The loops, for metrics.
    pub fn states(&self) -> Vec<Arc<TaskState>> {
        self.states.lock().clone()
    }

    /// Prometheus text for the loops: running, restarts, panics.
    pub fn render_metrics(&self, prefix: &str, out: &mut String) {
        use crate::metrics::{Kind, Writer};
        let states = self.states();
        let mut w = Writer::new(out);
        w.by_label(
            &format!("{prefix}_task_running"),
            Kind::Gauge,
            "1 while the background loop runs.",
            "task",
            states.iter().map(|s| (s.name, s.running())),
        )
        .by_label(
            &format!("{prefix}_task_restarts_total"),
            Kind::Counter,
            "Background loops that ended or panicked and were started again.",
            "task",
            states.iter().map(|s| (s.name, s.restarts.load(Relaxed))),
        )
        .by_label(
            &format!("{prefix}_task_panics_total"),
            Kind::Counter,
            "Background loop runs that ended in a panic.",
            "task",
            states.iter().map(|s| (s.name, s.panics.load(Relaxed))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_panics_is_started_again_and_counted() {
        let tasks = Tasks::new();
        let (tx, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = tasks.spawn("flaky", rx, move || {
            let r = r.clone();
            async move {
                let n = r.fetch_add(1, Relaxed);
                if n < 2 {
                    panic!("boom {n}");
                }
                std::future::pending::<()>().await
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Relaxed), 3);
        let st = &tasks.states()[0];
        assert_eq!(st.panics.load(Relaxed), 2);
        assert_eq!(st.restarts.load(Relaxed), 2);
        assert!(tasks.all_running());
        let mut m = String::new();
        tasks.render_metrics("x", &mut m);
        assert!(m.contains("x_task_panics_total{task=\"flaky\"} 2"), "{m}");
        assert!(m.contains("x_task_restarts_total{task=\"flaky\"} 2"), "{m}");
        assert!(m.contains("x_task_running{task=\"flaky\"} 1"), "{m}");
        crate::metrics::parse_strict(&m).unwrap_or_else(|e| panic!("{e}\n{m}"));
        tx.send(true).unwrap();
        // the loop itself does not watch shutdown here: abort it like the runtime would
        h.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_returns_at_shutdown_is_not_restarted() {
        let tasks = Tasks::new();
        let (tx, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let rx2 = rx.clone();
        let h = tasks.spawn("quiet", rx, move || {
            let (r, mut rx) = (r.clone(), rx2.clone());
            async move {
                r.fetch_add(1, Relaxed);
                let _ = rx.wait_for(|s| *s).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send(true).unwrap();
        h.await.unwrap();
        assert_eq!(runs.load(Relaxed), 1);
        assert_eq!(tasks.states()[0].restarts.load(Relaxed), 0);
    }
}
