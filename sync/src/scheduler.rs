//! The transfer scheduler: pre-fetch orders in, warm shards out.
//!
//! An order asks for a shard on a node by a deadline, with a priority. A
//! dispatcher runs queued orders highest priority first (then earliest
//! deadline), at most `concurrency` at once, one per (node, shard); every
//! transfer draws on one bandwidth budget. A finished order leaves the
//! shard *hosted* on the node and produces a [`Report`]. Hosted shards are
//! kept fresh by a background pass woken by the provider's NOTIFY or, as a
//! fallback, by a poll timer. Evicting a shard cancels its transfers and
//! then drops it from the node's cache.
//!
//! On start the scheduler finds hosted shards by their cursors in the node
//! caches and reloads unfinished orders from its state file, so a crash
//! (even `kill -9` mid-transfer) resumes from the cache's cursor. A
//! reloaded order whose shard or node is no longer configured is cancelled
//! with a `reason`, never run. The state file has one writer, off the
//! async workers ([`crate::persist`]). A running order holds its slot
//! (the concurrency bound, its (node, shard) pair) through a guard, freed
//! on every way out of the transfer, a panic included.

mod book;
mod changes;
mod dispatch;
mod refresh;

pub use changes::Since;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cache::ShardCache;
use crate::metrics::Metrics;
use crate::model::ShardDef;
use crate::persist::{self, Loaded, Persister};
use crate::provider::Provider;
use crate::transfer::{no_errors, retry, TokenBucket, TransferParams};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// The order vocabulary is shared with the shard manager (shardmap's
// `contract`): the same types on both sides of the control API.
pub use shardmap::contract::{HostedShard, HostedState, Order, OrderRequest, OrderState, Report};

/// Why an order was refused (the API maps these to 4xx).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OrderError {
    #[error("unknown shard `{0}`")]
    UnknownShard(String),
    #[error("unknown node `{0}`")]
    UnknownNode(String),
    #[error("priority must be a finite number, got {0}")]
    BadPriority(String),
    #[error("give at most one of `deadline_unix_ms` and `deadline_in_ms`")]
    TwoDeadlines,
    #[error("no order {0}")]
    NoOrder(u64),
    #[error("order {0} already finished")]
    Finished(u64),
    #[error("shard `{shard}` is not hosted on node `{node}`")]
    NotHosted { shard: String, node: String },
    #[error(
        "order of manager epoch {epoch} refused: epoch {highest} leads (a stale manager; fenced)"
    )]
    StaleEpoch { epoch: u64, highest: u64 },
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub bandwidth_bytes_per_s: u64,
    pub concurrency: usize,
    /// Without provider notifications: how often the freshness pass looks
    /// for copies due; with them, the safety read of a copy with no known
    /// change (at least once per `max_staleness` when shorter).
    pub poll_interval: Duration,
    /// How far a hosted copy may lag the provider ([`crate::freshness`]):
    /// each copy's delta is read to land within it, at most about once per
    /// it; zero reads on every notification and every poll.
    pub max_staleness: Duration,
    pub transfer: TransferParams,
    /// Where queued orders survive a restart; `None` keeps them in memory.
    pub state_file: Option<PathBuf>,
    /// Finished orders kept for the API.
    pub keep_finished: usize,
    /// How long an evicted shard's copy stays parked in the node's cache
    /// (see [`crate::cache::ShardCache::park`]); zero drops it at once.
    pub keep_evicted: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            bandwidth_bytes_per_s: 0,
            concurrency: 2,
            poll_interval: Duration::from_secs(1),
            max_staleness: Duration::from_secs_f64(crate::freshness::DEFAULT_MAX_STALENESS_S),
            transfer: TransferParams::default(),
            state_file: None,
            keep_finished: 1000,
            keep_evicted: Duration::from_secs(3 * 86_400),
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    next_id: u64,
    orders: Vec<Order>,
    /// The highest manager epoch seen (fencing survives a restart).
    #[serde(default)]
    epoch: u64,
}

impl Persisted {
    fn of(st: &State) -> Persisted {
        Persisted {
            next_id: st.next_id,
            orders: st.orders.values().cloned().collect(),
            epoch: st.epoch,
        }
    }
}

/// Writes of the state file start at most this often: a crash loses at
/// most this much of the orders' latest changes (an order accepted in it
/// is one the manager finds missing and orders again; one finished in it
/// runs again from its cursor, a delta), and a cold fill, which changes
/// orders hundreds of times a second, writes the book ten times a second
/// rather than with every change.
pub const STATE_WRITE_GAP: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    next_id: u64,
    /// The highest manager epoch an order carried.
    epoch: u64,
    orders: BTreeMap<u64, Order>,
    /// (node, shard) pairs a transfer or refresh is working on.
    busy: HashSet<(String, String)>,
    running_orders: usize,
    cancels: HashMap<u64, CancellationToken>,
    /// Hosted copies, with what changed when (`GET /nodes?since=`).
    hosted: changes::HostedBook,
    /// Evicted copies parked in a node's cache: (node, shard) → until (unix
    /// ms). Dropped when the pair is ordered again or the time passes.
    parked: BTreeMap<(String, String), u64>,
    /// Announces finished orders ([`crate::events`]).
    feed: crate::events::Feed,
}

struct Inner {
    provider: Arc<dyn Provider>,
    nodes: BTreeMap<String, Arc<dyn ShardCache>>,
    shards: BTreeMap<String, ShardDef>,
    bucket: TokenBucket,
    cfg: SchedulerConfig,
    metrics: Arc<Metrics>,
    /// Shared with the state file's writer, which copies the orders when
    /// it writes.
    state: Arc<Mutex<State>>,
    wake: Notify,
    shutdown: CancellationToken,
    reports: tokio::sync::broadcast::Sender<Report>,
    /// The supervised loops (recovery, dispatcher, freshness).
    tasks: Arc<shardcast_edge::supervise::Tasks>,
    /// The state file's writer (`None`: orders live in memory only).
    persister: Option<Persister>,
}

/// Why a reloaded order cannot run with the current config, if it cannot.
fn stale_reason(
    o: &Order,
    shards: &BTreeMap<String, ShardDef>,
    nodes: &BTreeMap<String, Arc<dyn ShardCache>>,
) -> Option<String> {
    if !shards.contains_key(&o.shard) {
        Some(format!(
            "shard `{}` is no longer configured (order reloaded from the state file)",
            o.shard
        ))
    } else if !nodes.contains_key(&o.node) {
        Some(format!(
            "node `{}` is no longer configured (order reloaded from the state file)",
            o.node
        ))
    } else {
        None
    }
}

/// Handle to a running scheduler (cheap to clone).
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// Build and start the background tasks (dispatcher, freshness,
    /// recovery), supervised: one that panics or ends early is logged,
    /// counted and started again. They stop when `shutdown` fires.
    pub fn start(
        provider: Arc<dyn Provider>,
        nodes: BTreeMap<String, Arc<dyn ShardCache>>,
        shards: Vec<ShardDef>,
        cfg: SchedulerConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Scheduler {
        let mut state = State {
            next_id: 1,
            ..State::default()
        };
        let shards: BTreeMap<String, ShardDef> =
            shards.into_iter().map(|s| (s.id.clone(), s)).collect();
        let mut invalidated = 0usize;
        if let Some(path) = &cfg.state_file {
            match persist::load::<Persisted>(path, &metrics) {
                Loaded::Found(p) => {
                    state.next_id = p.next_id.max(1);
                    state.epoch = p.epoch;
                    let now = now_ms();
                    for mut o in p.orders {
                        if o.state.is_finished() {
                            // Announced by the run that finished it.
                            state.feed.known([&o]);
                        }
                        if matches!(o.state, OrderState::Queued | OrderState::Running) {
                            if let Some(why) = stale_reason(&o, &shards, &nodes) {
                                tracing::warn!(order = o.id, shard = %o.shard, node = %o.node, reason = %why,
                                    "reloaded order cancelled: its shard or node is no longer configured");
                                o.state = OrderState::Cancelled;
                                o.finished_unix_ms = Some(now);
                                o.reason = Some(why);
                                invalidated += 1;
                            } else if o.state == OrderState::Running {
                                o.state = OrderState::Queued;
                            }
                        }
                        state.next_id = state.next_id.max(o.id.saturating_add(1));
                        state.orders.insert(o.id, o);
                    }
                    tracing::info!(path = %path.display(), orders = state.orders.len(), invalidated, "scheduler state reloaded");
                }
                Loaded::Missing => {}
                Loaded::Corrupt { .. } => {
                    // The orders are gone; ids must not repeat the lost
                    // ones, which a manager may still be asking about.
                    state.next_id = now_ms().max(1);
                }
            }
        }
        for _ in 0..invalidated {
            Metrics::inc(&metrics.orders_invalidated);
            Metrics::inc(&metrics.orders_failed);
        }
        let state = Arc::new(Mutex::new(state));
        let persister = cfg.state_file.clone().map(|p| {
            let st = state.clone();
            Persister::start(
                p,
                metrics.clone(),
                STATE_WRITE_GAP,
                Box::new(move || Persisted::of(&st.lock())),
            )
        });
        let (reports, _) = tokio::sync::broadcast::channel(256);
        let inner = Arc::new(Inner {
            provider,
            nodes,
            shards,
            bucket: TokenBucket::new(cfg.bandwidth_bytes_per_s),
            cfg,
            metrics,
            state,
            wake: Notify::new(),
            shutdown: shutdown.clone(),
            reports,
            tasks: shardcast_edge::supervise::Tasks::new(),
            persister,
        });
        let s = Scheduler { inner };
        if invalidated > 0 {
            s.persist();
        }
        let sup = crate::supervise::Supervisor::new(s.inner.tasks.clone(), shutdown);
        {
            let (s, stopped) = (s.clone(), sup.stopped());
            sup.spawn("recover", move || {
                let (s, mut stopped) = (s.clone(), stopped.clone());
                // One pass at start; then up until shutdown, so its end is
                // not taken for a failure.
                async move {
                    s.recover().await;
                    shardcast_edge::http1::stopped(&mut stopped).await;
                }
            });
        }
        {
            let s = s.clone();
            sup.spawn("dispatch", move || s.clone().dispatch());
        }
        {
            let s = s.clone();
            sup.spawn("freshness", move || s.clone().freshness());
        }
        s
    }

    /// The supervised background loops (`/ready` waits for them).
    pub fn tasks(&self) -> &Arc<shardcast_edge::supervise::Tasks> {
        &self.inner.tasks
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Completion reports as they happen.
    pub fn reports(&self) -> tokio::sync::broadcast::Receiver<Report> {
        self.inner.reports.subscribe()
    }

    /// Every order that finishes (done or cancelled), as a numbered event,
    /// from now on ([`crate::events`]).
    pub fn order_events(&self) -> tokio::sync::broadcast::Receiver<shardmap::contract::OrderEvent> {
        self.inner.state.lock().feed.subscribe()
    }

    pub fn node_names(&self) -> Vec<String> {
        self.inner.nodes.keys().cloned().collect()
    }

    pub fn shard_ids(&self) -> Vec<String> {
        self.inner.shards.keys().cloned().collect()
    }

    /// Find hosted shards by their cursors in every node's cache.
    async fn recover(self) {
        let noop = no_errors();
        for (node, cache) in &self.inner.nodes {
            for shard in self.inner.shards.keys() {
                let c = retry(
                    "cache cursor read",
                    shard,
                    &self.inner.cfg.transfer,
                    &self.inner.shutdown,
                    &noop,
                    &self.inner.metrics.cache_errors,
                    || cache.cursor(shard),
                )
                .await;
                match c {
                    Ok(Some(cursor)) => {
                        let size = cache.size(shard).await.unwrap_or(0);
                        let mut st = self.inner.state.lock();
                        st.hosted
                            .insert_new((node.clone(), shard.clone()), || HostedShard {
                                shard: shard.clone(),
                                state: HostedState::Warming,
                                cursor,
                                rows: size,
                                last_sync_unix_ms: 0,
                            });
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        }
        self.inner.wake.notify_one();
    }

    /// Prometheus text for the scheduler.
    pub fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.inner.metrics.render_scheduler(&mut out);
        let st = self.inner.state.lock();
        let queued = st
            .orders
            .values()
            .filter(|o| o.state == OrderState::Queued)
            .count();
        use shardcast_edge::metrics::{Kind, Writer};
        let mut w = Writer::new(&mut out);
        w.by_label(
            "shardcast_sync_orders",
            Kind::Gauge,
            "Orders by state now.",
            "state",
            [("queued", queued), ("running", st.running_orders)],
        )
        .gauge(
            "shardcast_sync_manager_epoch",
            "The highest manager epoch an order carried.",
            st.epoch,
        )
        .family(
            "shardcast_sync_hosted_cursor",
            Kind::Gauge,
            "Cursor of a hosted shard on a node.",
        );
        for ((n, s), h) in &st.hosted {
            w.sample(
                "shardcast_sync_hosted_cursor",
                &[("node", n), ("shard", s)],
                h.cursor,
            );
        }
        w.family(
            "shardcast_sync_hosted_rows",
            Kind::Gauge,
            "Items of a hosted shard on a node.",
        );
        for ((n, s), h) in &st.hosted {
            w.sample(
                "shardcast_sync_hosted_rows",
                &[("node", n), ("shard", s)],
                h.rows,
            );
        }
        let now = now_ms();
        w.gauge(
            "shardcast_sync_parked_copies",
            "Evicted copies parked in node caches (kept, not served) for a delta re-fetch.",
            st.parked.values().filter(|u| **u > now).count(),
        );
        w.gauge(
            "shardcast_sync_bandwidth_bytes_per_second",
            "Configured budget (0 = unlimited).",
            self.inner.bucket.rate(),
        );
        drop(st);
        self.inner.tasks.render_metrics("shardcast_sync", &mut out);
        out
    }

    #[doc(hidden)]
    pub fn running(&self) -> usize {
        self.inner.state.lock().running_orders
    }

    #[doc(hidden)]
    pub fn metrics_snapshot(&self) -> (u64, u64) {
        let m = &self.inner.metrics;
        (m.rows_copied.load(Relaxed), m.batches_skipped.load(Relaxed))
    }
}
