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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cache::ShardCache;
use crate::freshness::CopyClock;
use crate::metrics::Metrics;
use crate::model::ShardDef;
use crate::persist::{self, Loaded, Persister};
use crate::provider::Provider;
use crate::transfer::{
    catch_up, no_errors, retry, ErrorSink, Progress, TokenBucket, TransferError, TransferParams,
    Urgency,
};

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
    hosted: BTreeMap<(String, String), HostedShard>,
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
    state: Mutex<State>,
    wake: Notify,
    shutdown: CancellationToken,
    reports: tokio::sync::broadcast::Sender<Report>,
    /// The supervised loops (recovery, dispatcher, freshness).
    tasks: Arc<shardcast_edge::supervise::Tasks>,
    /// The state file's writer (`None`: orders live in memory only).
    persister: Option<Persister<Persisted>>,
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

/// A running order's hold on the scheduler: one of the `concurrency`
/// slots, its (node, shard) pair and its cancel token. Released with the
/// state lock held on the normal way out ([`RunningSlot::release`]); on
/// any other (an early return, a panic, the task dropped at shutdown) the
/// drop releases it and finishes the order: queued again at shutdown,
/// otherwise cancelled with a reason.
struct RunningSlot {
    inner: Arc<Inner>,
    id: u64,
    key: (String, String),
    released: bool,
}

impl RunningSlot {
    fn release(&mut self, st: &mut State) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        st.running_orders = st.running_orders.saturating_sub(1);
        st.busy.remove(&self.key);
        st.cancels.remove(&self.id);
    }
}

impl Drop for RunningSlot {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let inner = self.inner.clone();
        {
            let mut st = inner.state.lock();
            self.release(&mut st);
            if let Some(o) = st.orders.get_mut(&self.id) {
                if o.state == OrderState::Running {
                    if inner.shutdown.is_cancelled() {
                        o.state = OrderState::Queued;
                    } else {
                        o.state = OrderState::Cancelled;
                        o.finished_unix_ms = Some(now_ms());
                        o.reason = Some(if std::thread::panicking() {
                            "the transfer failed unexpectedly (internal error; see the log)".into()
                        } else {
                            "the transfer stopped unexpectedly".into()
                        });
                        Metrics::inc(&inner.metrics.orders_failed);
                    }
                }
            }
        }
        tracing::error!(order = self.id, node = %self.key.0, shard = %self.key.1,
            panicked = std::thread::panicking(), "transfer ended without finishing its order; slot freed");
        Scheduler {
            inner: inner.clone(),
        }
        .persist();
        inner.wake.notify_one();
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
        let persister = cfg
            .state_file
            .clone()
            .map(|p| Persister::start(p, metrics.clone()));
        let (reports, _) = tokio::sync::broadcast::channel(256);
        let inner = Arc::new(Inner {
            provider,
            nodes,
            shards,
            bucket: TokenBucket::new(cfg.bandwidth_bytes_per_s),
            cfg,
            metrics,
            state: Mutex::new(state),
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

    /// Queue an order. An order for a (shard, node) that is already queued
    /// updates that order (higher priority, earlier deadline win) and
    /// returns it.
    pub fn submit(&self, req: OrderRequest) -> Result<Order, OrderError> {
        let res = self.queue(req);
        self.counted(&res);
        if res.is_ok() {
            self.persist();
            self.inner.wake.notify_one();
        }
        res
    }

    /// Queue several orders, each as [`Scheduler::submit`] would (one
    /// refused does not refuse the others); the state is saved once for the
    /// batch, which is what makes a thousand orders one call's work
    /// rather than a thousand saves of every order.
    pub fn submit_batch(&self, reqs: Vec<OrderRequest>) -> Vec<Result<Order, OrderError>> {
        let res: Vec<_> = reqs.into_iter().map(|r| self.queue(r)).collect();
        res.iter().for_each(|r| self.counted(r));
        if res.iter().any(Result::is_ok) {
            self.persist();
            self.inner.wake.notify_one();
        }
        res
    }

    fn counted(&self, res: &Result<Order, OrderError>) {
        let m = &self.inner.metrics;
        match res {
            Ok(_) => Metrics::inc(&m.orders_submitted),
            Err(_) => Metrics::inc(&m.orders_rejected),
        }
    }

    /// Validate and queue one order, without saving the state.
    fn queue(&self, req: OrderRequest) -> Result<Order, OrderError> {
        if !self.inner.shards.contains_key(&req.shard) {
            return Err(OrderError::UnknownShard(req.shard));
        }
        if !self.inner.nodes.contains_key(&req.node) {
            return Err(OrderError::UnknownNode(req.node));
        }
        if !req.priority.is_finite() {
            return Err(OrderError::BadPriority(req.priority.to_string()));
        }
        let now = now_ms();
        let deadline = match (req.deadline_unix_ms, req.deadline_in_ms) {
            (Some(_), Some(_)) => return Err(OrderError::TwoDeadlines),
            (Some(d), None) => Some(d),
            (None, Some(rel)) => Some(now.saturating_add(rel)),
            (None, None) => None,
        };
        let order = {
            let mut st = self.inner.state.lock();
            if req.epoch < st.epoch {
                Metrics::inc(&self.inner.metrics.orders_fenced);
                return Err(OrderError::StaleEpoch {
                    epoch: req.epoch,
                    highest: st.epoch,
                });
            }
            if req.epoch > st.epoch {
                tracing::info!(
                    epoch = req.epoch,
                    previous = st.epoch,
                    "a new manager epoch orders"
                );
                st.epoch = req.epoch;
            }
            let existing = st.orders.values_mut().find(|o| {
                o.state == OrderState::Queued && o.shard == req.shard && o.node == req.node
            });
            if let Some(o) = existing {
                o.priority = o.priority.max(req.priority);
                o.deadline_unix_ms = match (o.deadline_unix_ms, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                o.epoch = req.epoch;
                o.clone()
            } else {
                let id = st.next_id;
                st.next_id += 1;
                let o = Order {
                    id,
                    shard: req.shard,
                    node: req.node,
                    priority: req.priority,
                    deadline_unix_ms: deadline,
                    state: OrderState::Queued,
                    submitted_unix_ms: now,
                    started_unix_ms: None,
                    finished_unix_ms: None,
                    cursor: 0,
                    rows: 0,
                    bytes: 0,
                    last_error: None,
                    reason: None,
                    report: None,
                    epoch: req.epoch,
                };
                st.orders.insert(id, o.clone());
                o
            }
        };
        tracing::debug!(order = order.id, shard = %order.shard, node = %order.node, priority = order.priority, "order queued");
        Ok(order)
    }

    pub fn orders(&self) -> Vec<Order> {
        self.inner.state.lock().orders.values().cloned().collect()
    }

    pub fn order(&self, id: u64) -> Option<Order> {
        self.inner.state.lock().orders.get(&id).cloned()
    }

    /// The orders of `ids` sync knows, in the order asked (an unknown id
    /// is left out).
    pub fn orders_of(&self, ids: &[u64]) -> Vec<Order> {
        let st = self.inner.state.lock();
        ids.iter()
            .filter_map(|id| st.orders.get(id).cloned())
            .collect()
    }

    /// Raise the highest manager epoch seen to `epoch`, before any order of
    /// it: a new leader announces its term, so orders of the old one are
    /// refused from then on. Refused (the highest stays) when `epoch` is
    /// lower; returns the highest.
    pub fn fence(&self, epoch: u64) -> Result<u64, OrderError> {
        {
            let mut st = self.inner.state.lock();
            if epoch < st.epoch {
                Metrics::inc(&self.inner.metrics.orders_fenced);
                return Err(OrderError::StaleEpoch {
                    epoch,
                    highest: st.epoch,
                });
            }
            if epoch == st.epoch {
                return Ok(epoch);
            }
            tracing::info!(epoch, previous = st.epoch, "a new manager epoch announced");
            st.epoch = epoch;
        }
        self.persist();
        Ok(epoch)
    }

    /// The highest manager epoch seen.
    pub fn epoch(&self) -> u64 {
        self.inner.state.lock().epoch
    }

    /// Cancel a queued or running order.
    pub fn cancel(&self, id: u64) -> Result<Order, OrderError> {
        let o = {
            let mut st = self.inner.state.lock();
            let o = st.orders.get_mut(&id).ok_or(OrderError::NoOrder(id))?;
            match o.state {
                OrderState::Done | OrderState::Cancelled => return Err(OrderError::Finished(id)),
                OrderState::Queued => {
                    o.state = OrderState::Cancelled;
                    o.finished_unix_ms = Some(now_ms());
                    o.reason = Some("cancelled through the control API".into());
                }
                OrderState::Running => {
                    o.reason = Some("cancelled through the control API".into());
                }
            }
            let o = o.clone();
            if let Some(c) = st.cancels.get(&id) {
                c.cancel();
            }
            o
        };
        Metrics::inc(&self.inner.metrics.orders_failed);
        self.persist();
        Ok(o)
    }

    /// Shards whose evicted copy is parked on a node now.
    pub fn parked(&self, node: &str) -> Vec<String> {
        let now = now_ms();
        let mut st = self.inner.state.lock();
        st.parked.retain(|_, until| *until > now);
        st.parked
            .keys()
            .filter(|(n, _)| n == node)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Hosted shards of a node.
    pub fn hosted(&self, node: &str) -> Result<Vec<HostedShard>, OrderError> {
        if !self.inner.nodes.contains_key(node) {
            return Err(OrderError::UnknownNode(node.into()));
        }
        let st = self.inner.state.lock();
        Ok(st
            .hosted
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|(_, h)| h.clone())
            .collect())
    }

    /// Drop a shard from a node: cancel its orders, wait for its transfer
    /// to stop, then evict it from the cache (retried while the cache is
    /// down): its copy is parked for `keep_evicted` (not served), so a
    /// later order for the pair copies only the delta. Returns once the
    /// eviction is scheduled.
    pub fn evict(&self, node: &str, shard: &str) -> Result<(), OrderError> {
        if !self.inner.shards.contains_key(shard) {
            return Err(OrderError::UnknownShard(shard.into()));
        }
        let Some(cache) = self.inner.nodes.get(node).cloned() else {
            return Err(OrderError::UnknownNode(node.into()));
        };
        {
            let mut st = self.inner.state.lock();
            let now = now_ms();
            let ids: Vec<u64> = st
                .orders
                .values()
                .filter(|o| {
                    o.node == node
                        && o.shard == shard
                        && matches!(o.state, OrderState::Queued | OrderState::Running)
                })
                .map(|o| o.id)
                .collect();
            for id in ids {
                if let Some(c) = st.cancels.get(&id) {
                    c.cancel();
                }
                if let Some(o) = st.orders.get_mut(&id) {
                    o.reason = Some("the shard was evicted from the node".into());
                    if o.state == OrderState::Queued {
                        o.state = OrderState::Cancelled;
                        o.finished_unix_ms = Some(now);
                    }
                }
            }
            st.hosted.remove(&(node.to_string(), shard.to_string()));
        }
        self.persist();
        let s = self.clone();
        let (node, shard) = (node.to_string(), shard.to_string());
        tokio::spawn(async move {
            let key = (node.clone(), shard.clone());
            // Wait for any transfer on the pair to wind down.
            loop {
                {
                    let mut st = s.inner.state.lock();
                    if !st.busy.contains(&key) {
                        st.busy.insert(key.clone());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let keep = s.inner.cfg.keep_evicted;
            let r = retry(
                "cache evict",
                &shard,
                &s.inner.cfg.transfer,
                &s.inner.shutdown,
                &no_errors(),
                &s.inner.metrics.cache_errors,
                || cache.park(&shard, keep),
            )
            .await;
            {
                let mut st = s.inner.state.lock();
                st.busy.remove(&key);
                st.hosted.remove(&key);
                if r.is_ok() && !keep.is_zero() {
                    st.parked
                        .insert(key.clone(), now_ms() + keep.as_millis() as u64);
                }
            }
            if r.is_ok() {
                Metrics::inc(&s.inner.metrics.evictions);
                tracing::info!(node = %node, shard = %shard, keep_s = keep.as_secs(), "shard evicted (its copy parked for a delta re-fetch)");
            }
            s.inner.wake.notify_one();
        });
        Ok(())
    }

    /// Hand the current orders to the state file's writer (which writes
    /// only the latest of a burst). Taken and handed over under the state
    /// lock, so the writer never gets an older snapshot after a newer one.
    fn persist(&self) {
        let mut st = self.inner.state.lock();
        // Bound the finished orders kept.
        let finished: Vec<u64> = st
            .orders
            .values()
            .filter(|o| matches!(o.state, OrderState::Done | OrderState::Cancelled))
            .map(|o| o.id)
            .collect();
        if finished.len() > self.inner.cfg.keep_finished {
            for id in &finished[..finished.len() - self.inner.cfg.keep_finished] {
                st.orders.remove(id);
            }
        }
        // Every change to an order comes through here: the feed announces
        // the ones that just finished.
        let State { feed, orders, .. } = &mut *st;
        feed.observe(orders.values(), now_ms());
        if let Some(p) = &self.inner.persister {
            p.save(Persisted {
                next_id: st.next_id,
                orders: st.orders.values().cloned().collect(),
                epoch: st.epoch,
            });
        }
    }

    /// Wait (at most `within`) until the state file holds every change so
    /// far; false on timeout. For a clean shutdown.
    pub async fn flush(&self, within: Duration) -> bool {
        let s = self.clone();
        tokio::task::spawn_blocking(move || {
            s.inner
                .persister
                .as_ref()
                .is_none_or(|p| p.flush_blocking(within))
        })
        .await
        .unwrap_or(false)
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
                            .entry((node.clone(), shard.clone()))
                            .or_insert(HostedShard {
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

    /// Pick the best runnable order: highest priority, then earliest
    /// deadline, then oldest.
    fn pick(&self) -> Option<(Order, CancellationToken, RunningSlot)> {
        // Once shutdown fires nothing starts: a transfer it interrupts puts
        // its order back in the queue for the next run, and re-running it
        // here would end at once, again and again.
        if self.inner.shutdown.is_cancelled() {
            return None;
        }
        let mut st = self.inner.state.lock();
        if st.running_orders >= self.inner.cfg.concurrency.max(1) {
            return None;
        }
        let best = st
            .orders
            .values()
            .filter(|o| {
                o.state == OrderState::Queued
                    && !st.busy.contains(&(o.node.clone(), o.shard.clone()))
            })
            .min_by(|a, b| {
                b.priority
                    .total_cmp(&a.priority)
                    .then(
                        a.deadline_unix_ms
                            .unwrap_or(u64::MAX)
                            .cmp(&b.deadline_unix_ms.unwrap_or(u64::MAX)),
                    )
                    .then(a.id.cmp(&b.id))
            })
            .map(|o| o.id)?;
        let o = st.orders.get_mut(&best)?;
        o.state = OrderState::Running;
        o.started_unix_ms = Some(now_ms());
        let o = o.clone();
        let token = self.inner.shutdown.child_token();
        st.cancels.insert(best, token.clone());
        st.running_orders += 1;
        st.busy.insert((o.node.clone(), o.shard.clone()));
        let slot = RunningSlot {
            inner: self.inner.clone(),
            id: best,
            key: (o.node.clone(), o.shard.clone()),
            released: false,
        };
        st.parked.remove(&(o.node.clone(), o.shard.clone()));
        st.hosted
            .entry((o.node.clone(), o.shard.clone()))
            .or_insert(HostedShard {
                shard: o.shard.clone(),
                state: HostedState::Warming,
                cursor: 0,
                rows: 0,
                last_sync_unix_ms: 0,
            });
        Some((o, token, slot))
    }

    async fn dispatch(self) {
        loop {
            let notified = self.inner.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            while let Some((o, token, slot)) = self.pick() {
                self.persist();
                tokio::spawn(self.clone().run_order(o, token, slot));
            }
            tokio::select! {
                _ = notified => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    async fn run_order(self, o: Order, token: CancellationToken, mut slot: RunningSlot) {
        let started = Instant::now();
        // Validated on submit and on reload; an order that still names
        // something unknown is cancelled, never indexed.
        let found = (
            self.inner.shards.get(&o.shard).cloned(),
            self.inner.nodes.get(&o.node).cloned(),
        );
        let (Some(shard), Some(cache)) = found else {
            let why = stale_reason(&o, &self.inner.shards, &self.inner.nodes)
                .unwrap_or_else(|| "unknown shard or node".into());
            tracing::warn!(order = o.id, shard = %o.shard, node = %o.node, reason = %why, "order cancelled");
            {
                let mut st = self.inner.state.lock();
                slot.release(&mut st);
                st.hosted.remove(&(o.node.clone(), o.shard.clone()));
                if let Some(ord) = st.orders.get_mut(&o.id) {
                    ord.state = OrderState::Cancelled;
                    ord.finished_unix_ms = Some(now_ms());
                    ord.reason = Some(why);
                }
            }
            Metrics::inc(&self.inner.metrics.orders_failed);
            self.persist();
            self.inner.wake.notify_one();
            return;
        };
        let params = TransferParams {
            urgency: Urgency {
                priority: o.priority,
                deadline_unix_ms: o.deadline_unix_ms,
            },
            ..self.inner.cfg.transfer.clone()
        };
        tracing::info!(order = o.id, shard = %o.shard, node = %o.node, priority = o.priority, "pre-fetch started");
        let id = o.id;
        let on_error: ErrorSink = {
            let s = self.clone();
            Arc::new(move |e: Option<String>| {
                if let Some(o) = s.inner.state.lock().orders.get_mut(&id) {
                    o.last_error = e;
                }
            })
        };
        let progress = |p: &Progress| {
            if let Some(o) = self.inner.state.lock().orders.get_mut(&id) {
                o.cursor = p.cursor;
                o.rows = p.rows;
                o.bytes = p.bytes;
            }
        };
        let res = catch_up(
            self.inner.provider.clone(),
            cache.clone(),
            &shard,
            &self.inner.bucket,
            &params,
            &self.inner.metrics,
            &token,
            false,
            &on_error,
            &progress,
        )
        .await;
        let size = match &res {
            Ok(_) => cache.size(&shard.id).await.unwrap_or(0),
            Err(_) => 0,
        };
        let key = (o.node.clone(), o.shard.clone());
        let report = {
            let mut st = self.inner.state.lock();
            slot.release(&mut st);
            let now = now_ms();
            match res {
                Ok(p) => {
                    let met = o.deadline_unix_ms.map(|d| now <= d);
                    let report = Report {
                        order: id,
                        shard: o.shard.clone(),
                        node: o.node.clone(),
                        cursor: p.cursor,
                        rows: p.rows,
                        bytes: p.bytes,
                        duration_ms: started.elapsed().as_millis() as u64,
                        deadline_met: met,
                        finished_unix_ms: now,
                    };
                    if let Some(h) = st.hosted.get_mut(&key) {
                        h.state = HostedState::Warm;
                        h.cursor = p.cursor;
                        h.rows = size;
                        h.last_sync_unix_ms = now;
                    }
                    if let Some(ord) = st.orders.get_mut(&id) {
                        ord.state = OrderState::Done;
                        ord.finished_unix_ms = Some(now);
                        ord.cursor = p.cursor;
                        ord.rows = p.rows;
                        ord.bytes = p.bytes;
                        ord.last_error = None;
                        ord.report = Some(report.clone());
                    }
                    Some(report)
                }
                Err(TransferError::Cancelled) | Err(TransferError::NotHosted) => {
                    if let Some(ord) = st.orders.get_mut(&id) {
                        if self.inner.shutdown.is_cancelled() {
                            // Shutting down: run again after a restart.
                            ord.state = OrderState::Queued;
                        } else {
                            ord.state = OrderState::Cancelled;
                            ord.finished_unix_ms = Some(now);
                            ord.reason.get_or_insert_with(|| "cancelled".into());
                        }
                    }
                    None
                }
            }
        };
        self.persist();
        if let Some(r) = report {
            let m = &self.inner.metrics;
            Metrics::inc(&m.orders_done);
            m.transfer_seconds.observe(started.elapsed());
            match r.deadline_met {
                Some(true) => Metrics::inc(&m.deadlines_met),
                Some(false) => Metrics::inc(&m.deadlines_missed),
                None => {}
            }
            tracing::info!(order = r.order, shard = %r.shard, node = %r.node, cursor = r.cursor, rows = r.rows,
                bytes = r.bytes, duration_ms = r.duration_ms, deadline_met = ?r.deadline_met, "shard warm on node");
            let _ = self.inner.reports.send(r);
        }
        self.inner.wake.notify_one();
    }

    /// Keep hosted shards within `max_staleness` of the provider: each copy
    /// is read when its [`CopyClock`] says (provider NOTIFYs mark copies
    /// changed; `poll_interval` bounds the sleep in between).
    async fn freshness(self) {
        let mut notify = self.inner.provider.subscribe();
        let (bound, poll) = (self.inner.cfg.max_staleness, self.inner.cfg.poll_interval);
        // Copies due within one tick are read together: early by at most a
        // tick (the bound still holds), and one pass per tick however many
        // copies there are.
        let tick = (bound / 20).clamp(Duration::from_millis(5), poll.max(Duration::from_millis(5)));
        let tick_ms = tick.as_millis() as u64;
        let mut clocks: HashMap<(String, String), CopyClock> = HashMap::new();
        loop {
            let notified = notify.is_some();
            let now = now_ms();
            let due: Vec<(String, String)> = {
                let st = self.inner.state.lock();
                clocks.retain(|k, _| st.hosted.contains_key(k));
                let mut due = vec![];
                for (k, h) in &st.hosted {
                    let c = clocks
                        .entry(k.clone())
                        .or_insert_with(|| CopyClock::copied(h.last_sync_unix_ms));
                    if h.last_sync_unix_ms > c.synced {
                        // An order brought it current meanwhile.
                        *c = CopyClock::copied(h.last_sync_unix_ms);
                    }
                    let is_due = c
                        .due_at(bound, notified, poll)
                        .is_some_and(|t| t <= now + tick_ms);
                    if is_due && !st.busy.contains(k) {
                        due.push(k.clone());
                    }
                }
                due
            };
            if !due.is_empty() {
                for (key, started, finished) in self.refresh_pairs(due).await {
                    if let Some(c) = clocks.get_mut(&key) {
                        c.read(started, finished);
                    }
                }
            }
            let now = now_ms();
            // A copy due but busy (an order or an eviction on it) waits for
            // the next tick; an order leaves it current anyway.
            let next = clocks
                .values()
                .filter_map(|c| c.due_at(bound, notified, poll))
                .min()
                .map_or(poll, |t| Duration::from_millis(t.saturating_sub(now)))
                .clamp(tick, poll.max(tick));
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(next) => {}
                r = async {
                    match notify.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if r {
                        Metrics::inc(&self.inner.metrics.wakeups_notify);
                        let at = now_ms();
                        for c in clocks.values_mut() {
                            c.changed(at);
                        }
                    } else {
                        notify = None;
                    }
                }
            }
        }
    }

    /// One freshness pass over every hosted (node, shard) not busy, now.
    pub async fn refresh_all(&self) {
        let pairs: Vec<(String, String)> = self.inner.state.lock().hosted.keys().cloned().collect();
        self.refresh_pairs(pairs).await;
    }

    /// Read the delta of each of `pairs` not busy into its copy; returns
    /// each pair read with when its read started and finished (Unix ms).
    async fn refresh_pairs(
        &self,
        pairs: Vec<(String, String)>,
    ) -> Vec<((String, String), u64, u64)> {
        Metrics::inc(&self.inner.metrics.refreshes);
        let pairs: Vec<(String, String)> = {
            let mut st = self.inner.state.lock();
            let free: Vec<_> = pairs
                .into_iter()
                .filter(|k| st.hosted.contains_key(k) && !st.busy.contains(k))
                .collect();
            for k in &free {
                st.busy.insert(k.clone());
            }
            free
        };
        // Pairs refresh concurrently, so one node's cache outage (retried
        // until it is back) does not hold up the others.
        let tasks = pairs.iter().cloned().map(|key| {
            let s = self.clone();
            async move {
                let started = now_ms();
                let (node, shard_id) = &key;
                let found = (
                    s.inner.nodes.get(node).cloned(),
                    s.inner.shards.get(shard_id).cloned(),
                );
                let (Some(cache), Some(shard)) = found else {
                    let mut st = s.inner.state.lock();
                    st.busy.remove(&key);
                    st.hosted.remove(&key);
                    return None;
                };
                let res = catch_up(
                    s.inner.provider.clone(),
                    cache.clone(),
                    &shard,
                    &s.inner.bucket,
                    &s.inner.cfg.transfer,
                    &s.inner.metrics,
                    &s.inner.shutdown,
                    true,
                    &no_errors(),
                    &|_| {},
                )
                .await;
                let size = if res.is_ok() {
                    cache.size(shard_id).await.ok()
                } else {
                    None
                };
                let mut st = s.inner.state.lock();
                st.busy.remove(&key);
                match res {
                    Ok(p) => {
                        let finished = now_ms();
                        if let Some(h) = st.hosted.get_mut(&key) {
                            h.cursor = p.cursor;
                            h.state = HostedState::Warm;
                            if let Some(n) = size {
                                h.rows = n;
                            }
                            h.last_sync_unix_ms = finished;
                        }
                        Some((key, started, finished))
                    }
                    Err(TransferError::NotHosted) => {
                        st.hosted.remove(&key);
                        None
                    }
                    Err(TransferError::Cancelled) => None,
                }
            }
        });
        let done: Vec<_> = futures::future::join_all(tasks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !pairs.is_empty() {
            self.inner.wake.notify_one();
        }
        done
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
