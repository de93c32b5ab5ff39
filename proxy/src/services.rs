//! The proxy's background work, run by Pingora as one background service:
//! the admin API, active health checks and their publisher, the telemetry exporter, the
//! dashboard's per-second sampler, the reload triggers (SIGHUP and
//! config-file changes) and the metadata follower. Each loop is supervised
//! (restarted with backoff if it panics or ends) and ends when Pingora
//! signals shutdown.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::http_client::Client;
use crate::state::Shared;
use crate::telemetry::{send, Exporter};

pub struct Control {
    pub shared: Arc<Shared>,
    /// Bound at start-up so a busy port fails fast with a clear error.
    pub admin: parking_lot::Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, shutdown: ShutdownWatch) {
        let shared = self.shared.clone();
        let mut admin = None;
        if let Some(l) = self.admin.lock().take() {
            match l
                .set_nonblocking(true)
                .and_then(|_| tokio::net::TcpListener::from_std(l))
            {
                Ok(l) => {
                    admin = Some(tokio::spawn(crate::admin::serve(
                        shared.clone(),
                        l,
                        shutdown.clone(),
                    )))
                }
                Err(e) => warn!(error = %e, "admin listener unusable"),
            }
        }
        // Every loop supervised: one that panics or ends is logged, counted
        // (`shardcast_task_*`) and started again with backoff.
        let tasks = &shared.tasks;
        macro_rules! supervise {
            ($name:literal, $f:path) => {{
                let (sh, sd) = (shared.clone(), shutdown.clone());
                tasks.spawn($name, shutdown.clone(), move || $f(sh.clone(), sd.clone()))
            }};
        }
        let loops = vec![
            supervise!("health", crate::health::run),
            supervise!("health_publish", crate::health::publish::run),
            supervise!("telemetry", export_loop),
            supervise!("dashboard", crate::dashboard::sample_loop),
            supervise!("sighup", sighup_loop),
            supervise!("config_watch", watch_loop),
            supervise!("metadata", crate::metadata::run),
        ];
        shared.ready.store(true, Relaxed);
        if let Some(admin) = admin {
            // The admin listener cannot be restarted in place (its socket
            // goes with it); if it stops while the proxy runs, exit so the
            // process supervisor starts a whole new one.
            let r = admin.await;
            if !*shutdown.borrow() {
                error!(result = ?r.map_err(|e| e.to_string()), "admin listener stopped; exiting");
                std::process::exit(70);
            }
        }
        futures::future::join_all(loops).await;
    }
}

async fn export_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let client = Client::default();
    let mut exporter = Exporter::new(shared.instance.clone());
    loop {
        let interval = shared.current().config.telemetry.interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let snap = shared.current();
        let t = &snap.config.telemetry;
        exporter.collect(
            &snap.stats,
            t.interval,
            t.top_k,
            snap.table.assignment_version.counter,
            t.queue,
            &shared.export,
        );
        if t.sink == shardmap::config::TelemetrySink::None {
            exporter.queue.clear();
            continue;
        }
        while let Some(mut frame) = exporter.queue.pop_front() {
            frame.dropped_before = exporter.dropped_pending;
            match send(&t.sink, &client, &frame).await {
                Ok(()) => {
                    exporter.dropped_pending = 0;
                    shared.export.frames_sent.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    // Keep it for the next tick; the queue bound drops the
                    // oldest if the sink stays down.
                    shared.export.send_errors.fetch_add(1, Relaxed);
                    if shared.export.send_errors.load(Relaxed) % 30 == 1 {
                        warn!(error = %e, queued = exporter.queue.len() + 1, "telemetry sink unavailable; frames queued, oldest dropped when full");
                    }
                    exporter.queue.push_front(frame);
                    break;
                }
            }
        }
    }
}

async fn sighup_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; reload via the admin API or file changes");
            let _ = shutdown.wait_for(|s| *s).await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading config");
                crate::reload::reload(&shared, "sighup").await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Reload when the config file or the topology file it names changes.
/// Watches their directories, since editors and config managers replace
/// files by rename. The topology file is the one the running config named
/// at start; a reload that names another one is watched after a restart
/// (SIGHUP and `POST /admin/reload` work either way).
async fn watch_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    use notify::{RecursiveMode, Watcher};
    let canon = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    let mut paths: Vec<PathBuf> = vec![canon(&shared.config_path)];
    if let Some(t) = &shared.current().config.topology {
        paths.push(canon(t));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let targets = paths.clone();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let ours = ev.paths.iter().any(|p| {
                targets
                    .iter()
                    .any(|t| p == t || p.file_name() == t.file_name())
            });
            if ours && !ev.kind.is_access() {
                let _ = tx.try_send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the config file; reload via SIGHUP or the admin API");
            let _ = shutdown.wait_for(|s| *s).await;
            return;
        }
    };
    let mut dirs: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| p.parent().map(PathBuf::from))
        .collect();
    dirs.dedup();
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            warn!(error = %e, dir = %dir.display(), "cannot watch the config directory");
            let _ = shutdown.wait_for(|s| *s).await;
            return;
        }
    }
    let read = || {
        paths
            .iter()
            .map(|p| std::fs::read(p).ok())
            .collect::<Vec<_>>()
    };
    let mut last = read();
    loop {
        tokio::select! {
            got = rx.recv() => if got.is_none() { return },
            _ = shutdown.changed() => return,
        }
        // Let a burst of events (write, chmod, rename) settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        let now = read();
        if now.iter().all(Option::is_some) && now != last {
            last = now;
            crate::reload::reload(&shared, "file").await;
        }
    }
}
