//! sync's background loops under [`shardcast_edge::supervise::Tasks`]: a
//! loop that panics or ends before shutdown is logged, counted and started
//! again with backoff, and `/ready` waits until every loop runs.
//!
//! sync stops on a [`CancellationToken`]; the supervisor watches a
//! `watch<bool>`. [`Supervisor`] bridges the two, and marks shutdown seen as
//! soon as a loop ends because of it, so a loop that returns at shutdown is
//! never taken for one that ended by surprise.

use std::future::Future;
use std::sync::Arc;

use shardcast_edge::supervise::Tasks;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The supervised loops of one component (the scheduler, a node).
#[derive(Debug)]
pub struct Supervisor {
    tasks: Arc<Tasks>,
    token: CancellationToken,
    stop: Arc<watch::Sender<bool>>,
}

impl Supervisor {
    /// Loops spawned here are kept in `tasks` and stop when `token` is
    /// cancelled. Call inside a runtime.
    pub fn new(tasks: Arc<Tasks>, token: CancellationToken) -> Supervisor {
        let (tx, _) = watch::channel(token.is_cancelled());
        let stop = Arc::new(tx);
        let (t, s) = (token.clone(), stop.clone());
        tokio::spawn(async move {
            t.cancelled().await;
            s.send_replace(true);
        });
        Supervisor { tasks, token, stop }
    }

    /// Run `make()` as the loop `name` until shutdown, starting it again
    /// whenever it panics or returns before that.
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F) -> JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (token, stop) = (self.token.clone(), self.stop.clone());
        self.tasks.spawn(name, self.stop.subscribe(), move || {
            let run = make();
            let (token, stop) = (token.clone(), stop.clone());
            async move {
                run.await;
                if token.is_cancelled() {
                    stop.send_replace(true);
                }
            }
        })
    }

    /// A receiver that turns `true` at shutdown.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn tasks(&self) -> &Arc<Tasks> {
        &self.tasks
    }
}
