//! Wiring: config → store (restored from the snapshot, seeded from the
//! sales history) → feeds task → inference thread → HTTP server → periodic
//! snapshots; and an orderly stop that writes a final snapshot.
//!
//! Every background loop (feeds, snapshots, the inference thread, the
//! shard manager) runs under [`Tasks`]: one that panics or ends before
//! shutdown is logged, counted and started again, and `/ready` waits until
//! they all run. The listener is the shared one
//! ([`shardcast_edge::http1::serve`]) with the config's `[timeouts]` and
//! `[limits]`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use shardcast_edge::supervise::Tasks;
use shardcast_edge::ConnLimiter;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::App;
use crate::config::{Config, HistoryAlign};
use crate::engine::{Engine, EngineConfig, EngineThread, ForecastHandle};
use crate::feeds::{self, FeedSource, FeedState, FeedStatus, Signals};
use crate::manager::Manager;
use crate::metrics::Metrics;
use crate::persist;
use crate::store::Store;
use crate::time::Clock;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("shard manager: {0}")]
    Manager(crate::manager::ManagerError),
}

/// A running forecaster.
pub struct Service {
    pub addr: SocketAddr,
    pub forecasts: ForecastHandle,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub signals: Arc<ArcSwap<Signals>>,
    pub manager: Option<Arc<Manager>>,
    /// The API listener's connections (bounds and counters).
    pub conns: Arc<ConnLimiter>,
    /// The supervised background loops.
    pub loops: Arc<Tasks>,
    snapshot: Option<std::path::PathBuf>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    engine: Option<EngineThread>,
}

/// Seed shards without history from the sales-history file.
pub fn seed_history(
    store: &Store,
    cfg: &crate::config::HistoryConfig,
    now_unix_ms: i64,
) -> FeedStatus {
    let mut st = FeedStatus {
        name: "sales_history".into(),
        state: FeedState::Ok,
        source: cfg.source.to_string(),
        detail: String::new(),
        rows: 0,
        loaded_at_unix_ms: Some(now_unix_ms),
    };
    let FeedSource::File(path) = &cfg.source else {
        st.state = FeedState::Missing;
        st.detail = "history seeding reads a file".into();
        return st;
    };
    let parsed = feeds::read_file(path)
        .and_then(|b| feeds::parse_history(&b, &cfg.id_col, &cfg.time_col, &cfg.value_col));
    let series = match parsed {
        Ok(s) => s,
        Err(e) => {
            st.state = match e {
                feeds::FeedError::Missing(_) => FeedState::Missing,
                feeds::FeedError::Malformed(_) => FeedState::Malformed,
            };
            st.detail = e.to_string();
            st.loaded_at_unix_ms = None;
            return st;
        }
    };
    // The history is civil (local wall-clock) hours; it is shifted by whole
    // civil weeks, which keeps each row's local hour and weekday, then
    // placed on the store's hour buckets through its zone (across a
    // daylight-saving change a civil hour that does not exist adds to the
    // next one; the repeated hour of a fall-back night stays empty).
    let zone = store.zone();
    let now_h = store.local_hour(now_unix_ms);
    let shift = match cfg.align {
        HistoryAlign::AsIs => 0,
        HistoryAlign::Now => {
            let last = series
                .iter()
                .map(|(_, f, v)| f + v.len() as i64 - 1)
                .max()
                .unwrap_or(0);
            let target = zone.local_hour(now_h - 1).civil_s.div_euclid(3600);
            (target - last).div_euclid(168) * 168
        }
    };
    let mut seeded = 0;
    for (id, first, v) in &series {
        // History ends before the current hour: hours from now on are for
        // telemetry to fill (a replay must not see the future, nor count it
        // twice).
        let at = |k: usize| zone.hour_of_civil((first + shift + k as i64) * 3600);
        let keep = v
            .iter()
            .enumerate()
            .take_while(|&(k, _)| at(k) < now_h)
            .count();
        if keep == 0 {
            continue;
        }
        let first_bucket = at(0);
        let mut buckets = vec![0.0; (at(keep - 1) - first_bucket + 1) as usize];
        for (k, x) in v[..keep].iter().enumerate() {
            buckets[(at(k) - first_bucket) as usize] += x;
        }
        st.rows += keep;
        if store.seed_hourly(id, first_bucket, &buckets) {
            seeded += 1;
        }
    }
    st.detail = format!(
        "{} series, {seeded} seeded (others already had history), shifted {} weeks",
        series.len(),
        shift / 168
    );
    st
}

impl Service {
    /// Build everything and start serving.
    pub async fn start(cfg: Config) -> Result<Service, ServiceError> {
        let metrics = Arc::new(Metrics::default());
        let clock = match cfg.clock {
            Some(c) => {
                tracing::info!(start = %crate::time::format_utc_ms(c.start_ms), speed = c.speed, "replay clock");
                Clock::replay(c.start_ms, c.speed)
            }
            None => Clock::real(),
        };
        let store = Arc::new(Store::new(
            cfg.retention,
            cfg.timezone.clone(),
            cfg.max_shards,
        ));
        if let Some((path, _)) = &cfg.snapshot {
            match persist::restore(&store, path) {
                Ok(true) => {
                    tracing::info!(path = %path.display(), shards = store.len(), "store restored")
                }
                Ok(false) => tracing::info!(path = %path.display(), "no snapshot; starting empty"),
                Err(e) => {
                    metrics
                        .snapshot_restore_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "snapshot unusable; starting with an empty store");
                }
            }
        }
        let mut signals = Signals::default();
        if let Some(h) = &cfg.history {
            let (store2, h2) = (store.clone(), h.clone());
            let st =
                tokio::task::spawn_blocking(move || seed_history(&store2, &h2, clock.now_ms()))
                    .await
                    .unwrap_or_else(|e| FeedStatus {
                        name: "sales_history".into(),
                        state: FeedState::Missing,
                        source: h.source.to_string(),
                        detail: e.to_string(),
                        rows: 0,
                        loaded_at_unix_ms: None,
                    });
            if st.state != FeedState::Ok {
                tracing::warn!(detail = %st.detail, "sales history not seeded");
            }
            signals.history = st;
        }
        let timeout = cfg.refresh.min(std::time::Duration::from_secs(30));
        let first = feeds::reload(&signals, cfg.events.as_ref(), &cfg.covariates, timeout).await;
        let signals = Arc::new(ArcSwap::from_pointee(first));
        let (tx, rx) = watch::channel(false);
        let loops = Tasks::new();
        let mut tasks = Vec::new();
        {
            let (signals, events, covariates, every, rx2) = (
                signals.clone(),
                cfg.events.clone(),
                cfg.covariates.clone(),
                cfg.refresh,
                rx.clone(),
            );
            tasks.push(loops.spawn("feeds", rx.clone(), move || {
                feeds::run(
                    signals.clone(),
                    events.clone(),
                    covariates.clone(),
                    every,
                    rx2.clone(),
                )
            }));
        }
        let forecasts = ForecastHandle::new();
        let engine_cfg = EngineConfig {
            hourly_contract: cfg.hourly_contract.clone(),
            daily_contract: cfg.daily_contract.clone(),
            onnxruntime_lib: cfg.onnxruntime_lib.clone(),
            intra_threads: cfg.intra_threads,
            cycle: cfg.cycle,
            refresh: cfg.model_budget,
            retry_load: cfg.retry_model,
            clock,
        };
        let engine = {
            let (store, signals, metrics, forecasts) = (
                store.clone(),
                signals.clone(),
                metrics.clone(),
                forecasts.clone(),
            );
            EngineThread::spawn(
                move || {
                    Engine::new(
                        engine_cfg.clone(),
                        store.clone(),
                        signals.clone(),
                        metrics.clone(),
                        forecasts.clone(),
                    )
                },
                &loops,
                rx.clone(),
            )
        };
        if let Some((path, every)) = cfg.snapshot.clone() {
            let (store, metrics, rx2) = (store.clone(), metrics.clone(), rx.clone());
            tasks.push(loops.spawn("snapshots", rx.clone(), move || {
                let (store, metrics, path, mut rx) =
                    (store.clone(), metrics.clone(), path.clone(), rx2.clone());
                async move {
                    let mut tick = tokio::time::interval(every);
                    tick.tick().await;
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = rx.changed() => return,
                        }
                        let (s, m, p) = (store.clone(), metrics.clone(), path.clone());
                        let _ = tokio::task::spawn_blocking(move || snapshot(&s, &m, &p)).await;
                    }
                }
            }));
        }
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServiceError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServiceError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let manager = match &cfg.manager {
            Some(mc) => {
                let m = Manager::new(mc.clone(), store.clone(), forecasts.clone(), clock)
                    .map_err(ServiceError::Manager)?;
                let (m2, rx2) = (m.clone(), rx.clone());
                tasks.push(loops.spawn("manager", rx.clone(), move || m2.clone().run(rx2.clone())));
                Some(m)
            }
            None => None,
        };
        let conns = ConnLimiter::new("api", cfg.limits);
        let app = App {
            store: store.clone(),
            metrics: metrics.clone(),
            forecasts: forecasts.clone(),
            manager: manager.clone(),
            clock,
            conns: conns.clone(),
            tasks: loops.clone(),
            order_events: Default::default(),
        };
        let svc = hyper::service::service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(app.handle(req).await) }
        });
        let mut stop = rx;
        tasks.push(tokio::spawn(shardcast_edge::http1::serve(
            listener,
            conns.clone(),
            cfg.deadlines,
            svc,
            async move { shardcast_edge::http1::stopped(&mut stop).await },
        )));
        tracing::info!(%addr, shards = store.len(), "forecaster listening");
        Ok(Service {
            addr,
            forecasts,
            store,
            metrics,
            signals,
            manager,
            conns,
            loops,
            snapshot: cfg.snapshot.map(|(p, _)| p),
            shutdown: tx,
            tasks,
            engine: Some(engine),
        })
    }

    /// Ask the inference thread for a cycle now.
    pub fn run_cycle_now(&self) {
        if let Some(e) = &self.engine {
            e.run_now();
        }
    }

    /// Stop serving, stop the inference thread, write a final snapshot.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(e) = self.engine.take() {
            e.shutdown().await;
        }
        if let Some(p) = self.snapshot.clone() {
            let (s, m) = (self.store.clone(), self.metrics.clone());
            let _ = tokio::task::spawn_blocking(move || snapshot(&s, &m, &p)).await;
        }
    }
}

fn snapshot(store: &Store, metrics: &Metrics, path: &std::path::Path) {
    let t = Instant::now();
    match persist::save(store, path) {
        Ok(n) => {
            metrics.snapshots_written.fetch_add(1, Ordering::Relaxed);
            metrics.snapshot_seconds.observe(t.elapsed());
            tracing::debug!(bytes = n, path = %path.display(), "snapshot written");
        }
        Err(e) => {
            metrics.snapshot_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "snapshot failed");
        }
    }
}
