//! The shard manager: every round it observes (node health, what the sync
//! scheduler holds, the orders in flight, forecasts and observed load),
//! asks the [`planner`](crate::planner) what to do, carries it out, and
//! publishes the resulting table.
//!
//! A replica's life is make-before-break: an *add* submits a pre-fetch
//! order to sync and puts the replica in the table as `warming` (no
//! traffic); when the order reports the shard warm the replica turns
//! `serving`; a replica that leaves turns `draining` (routed to only when no
//! serving replica is usable) for `drain_ms`, then goes from the table and
//! is evicted from its node's cache. A node that fails its health checks
//! loses its replicas at once (the proxies already eject it) and the
//! planner restores the replication factor from the provider.
//!
//! The pieces: [`state`] is the replica/order/operator state machine, pure
//! data with `apply(event) → effects`; the round here gathers observations
//! through the adapters — [`sync`] (orders, hosted shards), [`health`]
//! (node health as the proxies report it), [`publish`] (metadata store and proxies) — feeds them to
//! the state as events and carries out the effects through the same
//! adapters. [`demand`] holds the demand policies, one type each. Views
//! ([`view`]) and metrics ([`metrics`]) read a snapshot of the state.
//!
//! Every decision is logged (tracing, and a bounded list on the API) with
//! its reason: forecast, load, failure, operator, balance or initial.
//! Operator controls: dry run (plans computed and shown, nothing done),
//! pins, node drains and thresholds; they persist in the metadata store.
//!
//! Several managers may run on one metadata store; only the holder of the
//! lease ([`lease`]) writes, each write carrying its epoch as a fencing
//! token. A standby observes and plans, and writes nothing.

pub mod client;
mod controls;
pub mod demand;
mod effects;
pub mod health;
mod leading;
pub mod lease;
pub mod metadata;
pub mod metrics;
pub mod phases;
pub mod publish;
pub mod routes;
pub mod state;
pub mod sync;
pub mod topology;
pub mod versions;
pub mod view;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use shardmap::AssignmentVersion;
use tokio::sync::{watch, Notify};
use tracing::warn;

use crate::config::ManagerConfig;
use crate::engine::ForecastHandle;
use crate::planner;
use crate::store::Store;
use crate::time::{now_unix_ms, Clock};
use demand::{DemandModel, Inputs};
use health::Prober;
use lease::Lease;
use metrics::{ManagerMetrics, Target};
use phases::{Laps, Phase};
use publish::{Pass, Publisher};
use state::{Effect, Event, Settings, State};
use sync::SyncClient;
use versions::Refusals;
use view::DecisionLog;

pub use state::{CommandError, Decision, NodeState};
pub use topology::Topology;

type Conn = metadata::Conn;

/// `f`'s output and how long it took.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, std::time::Duration) {
    let t0 = Instant::now();
    let out = f.await;
    (out, t0.elapsed())
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("topology {path}: {errors}")]
    Topology { path: String, errors: String },
    #[error("oracle demand {0}")]
    Oracle(String),
}

/// The running manager; shared with the API.
pub struct Manager {
    cfg: ManagerConfig,
    topology: topology::Source,
    store: Arc<Store>,
    forecasts: ForecastHandle,
    clock: Clock,
    /// The one owner of the state: only [`Manager::apply`] changes it.
    state: Mutex<State>,
    /// What views read: the state after the last event, copied when read
    /// after a change (`stale`), not after every event — at ten thousand
    /// shards a copy of the state costs milliseconds, and a round applies
    /// dozens of events.
    snapshot: ArcSwap<State>,
    stale: std::sync::atomic::AtomicBool,
    demand: Mutex<DemandModel>,
    log: DecisionLog,
    sync: SyncClient,
    prober: Prober,
    publisher: Publisher,
    wake: Notify,
    /// The next round plans (an operator change, a new term, a round
    /// asked for), even before the interval is up; a wake without it is a
    /// finished order, which a round without the planner applies.
    plan_wanted: std::sync::atomic::AtomicBool,
    /// Orders sync said finished since the last round that followed them:
    /// the order-following round asks sync about these, not every open
    /// order (a thousand in a cold fill, many times a second).
    finished: Mutex<Finished>,
    /// Tables refused as not newer, by target.
    refusals: Refusals,
    /// Leadership: only the leader writes, in its epoch.
    lease: Lease,
    metrics: ManagerMetrics,
}

/// The ids of orders sync announced finished, up to [`Finished::MAX`];
/// beyond it (a burst the rounds fell behind), every open order.
#[derive(Default)]
struct Finished {
    ids: Vec<u64>,
    overflowed: bool,
}

impl Finished {
    const MAX: usize = 4096;

    fn push(&mut self, id: u64) {
        if self.ids.len() < Self::MAX {
            self.ids.push(id);
        } else {
            self.overflowed = true;
        }
    }

    /// Of `open` (ascending or not), the ones to ask sync about.
    fn of(&self, open: &[u64]) -> Vec<u64> {
        if self.overflowed {
            return open.to_vec();
        }
        let mut ids = self.ids.clone();
        ids.sort_unstable();
        ids.dedup();
        open.iter()
            .copied()
            .filter(|id| ids.binary_search(id).is_ok())
            .collect()
    }
}

impl Manager {
    /// Read the proxy config and build the starting assignment (all
    /// configured replicas serving). The metadata store, when reachable,
    /// replaces it with the stored table at [`Manager::run`] start.
    pub fn new(
        cfg: ManagerConfig,
        store: Arc<Store>,
        forecasts: ForecastHandle,
        clock: Clock,
    ) -> Result<Arc<Manager>, ManagerError> {
        let topology = topology::Source::open(&cfg)?;
        let policy = demand::policy(&cfg)?;
        let settings = Settings {
            fail_after: cfg.fail_after,
            drain: cfg.drain,
            order_timeout: cfg.order_timeout,
            orders_in_flight_max: cfg.orders_in_flight_max,
            host_baseline: cfg.host_baseline,
            scale_in_ratio: cfg.scale_in_ratio,
            churn_budget: cfg.churn_budget,
            plans_demand: policy.plans_demand(),
            proxies: cfg.proxies.clone(),
            clock,
        };
        // A counter from the clock: a restart without the metadata store
        // still numbers its assignments past its previous life's.
        let version = AssignmentVersion::new(versions::EPOCH, now_unix_ms().max(1) as u64);
        let mut st = State::new(settings, version, cfg.dry_run);
        st.apply(topology.get().event());
        let lease = Lease::new(cfg.lease);
        if cfg.metadata.is_none() && topology.get().metadata.is_none() {
            // No metadata store, no lease: the one manager leads in epoch 1.
            lease.lead_alone(versions::EPOCH);
        }
        Ok(Arc::new(Manager {
            // Every call to sync's control API carries `sync_token`.
            sync: SyncClient::new(&cfg.sync, cfg.sync_token.clone()),
            prober: Prober::new(
                cfg.proxies.clone(),
                cfg.proxy_token.clone(),
                cfg.health_timeout,
                cfg.health_max_age,
            ),
            publisher: Publisher::new(cfg.proxies.clone(), cfg.proxy_token.clone()),
            cfg,
            topology,
            store,
            forecasts,
            clock,
            snapshot: ArcSwap::from_pointee(st.clone()),
            stale: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(st),
            demand: Mutex::new(DemandModel::new(policy)),
            log: DecisionLog::default(),
            wake: Notify::new(),
            plan_wanted: std::sync::atomic::AtomicBool::new(true),
            finished: Mutex::new(Finished::default()),
            refusals: Refusals::default(),
            lease,
            metrics: ManagerMetrics::default(),
        }))
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.cfg
    }

    /// Tables refused as not newer, by target.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Leadership (`/manager`, `/metrics`).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The state after the last event.
    pub fn snapshot(&self) -> Arc<State> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.stale.swap(false, SeqCst) {
            // Under the lock: an event applied meanwhile is in the copy,
            // or marks it stale again.
            let st = self.state.lock();
            self.snapshot.store(Arc::new(st.clone()));
        }
        self.snapshot.load_full()
    }

    /// Read the current state without copying it (the round's own reads).
    fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock())
    }

    /// Feed one event to the state; the effects to carry out.
    fn apply(&self, e: Event) -> Vec<Effect> {
        let mut st = self.state.lock();
        let fx = st.apply(e);
        self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
        fx
    }

    /// [`Manager::apply`], its time counted to `phase` (a part of the
    /// running one).
    fn apply_timed(&self, e: Event, laps: &mut Laps, phase: Phase) -> Vec<Effect> {
        let t0 = Instant::now();
        let fx = self.apply(e);
        laps.side(phase, t0.elapsed());
        fx
    }

    fn topology(&self) -> Arc<Topology> {
        self.topology.get()
    }

    fn metadata_url(&self) -> Option<String> {
        self.cfg
            .metadata
            .clone()
            .or_else(|| self.topology().metadata.clone())
    }

    /// Run a planning round now (operator changes take effect at once).
    pub fn wake(&self) {
        self.plan_wanted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Sync announced pre-fetch order `id` finished: follow it now, so its
    /// replica turns serving without waiting for the interval. The plan
    /// stays on its interval — at ten thousand shards a cold fill finishes
    /// orders many times a second, and re-planning every shard for each
    /// is what kept the rounds back to back.
    pub fn orders_finished(&self, id: u64) {
        self.finished.lock().push(id);
        self.wake.notify_one();
    }

    /// Re-read the proxy config when it changed on disk; a broken file
    /// keeps the last good topology.
    fn refresh_topology(&self) {
        if let Some(t) = self.topology.refresh() {
            self.apply(t.event());
        }
    }

    /// Until shutdown: a planning round every interval (or when woken by
    /// [`Manager::wake`]); between them, a round that follows the orders
    /// whenever one finishes ([`Manager::orders_finished`]).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut conn: Option<Conn> = None;
        let mut restored = false;
        let mut begun: Option<u64> = None;
        let mut plan_at = tokio::time::Instant::now();
        let mut planned_at = plan_at;
        let lease_loop = tokio::spawn(self.clone().hold_lease(shutdown.clone()));
        loop {
            if let Some(epoch) = self.lease.fresh() {
                // A new term: continue from the store's table (the last
                // leader's), numbered in the new epoch, sent to every proxy.
                // Nothing is written in it until the store has been read.
                if begun != Some(epoch) {
                    self.apply(Event::TermBegan { epoch });
                    begun = Some(epoch);
                }
                restored = self.restore(&mut conn).await;
                if restored {
                    self.lease.taken_up(epoch);
                }
            } else if !restored {
                restored = self.restore(&mut conn).await;
            }
            let plans = self.plan_wanted.swap(false, SeqCst)
                || tokio::time::Instant::now() >= plan_at
                || self.lease.may_write().is_none();
            if plans {
                self.round(&mut conn).await;
                planned_at = tokio::time::Instant::now();
                plan_at = planned_at + self.cfg.interval;
            } else {
                self.orders_round(&mut conn).await;
                if self.room_for_held_back() {
                    // The last plan held orders back for want of room and
                    // finished orders made some: plan again soon, not a
                    // whole interval on (a cold fill keeps sync busy), but
                    // no more than four times an interval.
                    plan_at = plan_at.min(planned_at + self.cfg.interval / 4);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(plan_at) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {
                    let _ = lease_loop.await;
                    return;
                }
            }
        }
    }

    /// Continue from the table (and operator settings) in the metadata
    /// store. True when done or when there is no store.
    async fn restore(&self, conn: &mut Option<Conn>) -> bool {
        let Some(url) = self.metadata_url() else {
            return true;
        };
        let keys = self.topology().keys.clone();
        if conn.is_none() {
            match metadata::connect(&url).await {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    self.apply(Event::MetadataStatus(Err(e)));
                    return false;
                }
            }
        }
        let Some(c) = conn.as_mut() else { return false };
        let table = match metadata::read_table(c, &keys).await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "metadata table unreadable; starting from the proxy config");
                None
            }
        };
        let operator = match metadata::read_operator(c, &keys).await {
            Ok(op) => op,
            Err(e) => {
                warn!(error = %e, "stored operator settings unreadable; ignored");
                None
            }
        };
        let replaced = operator.is_some();
        let taken = {
            let mut st = self.state.lock();
            st.apply(Event::Restored { table, operator });
            self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
            self.publisher.operator_commands()
        };
        if replaced {
            // Commands taken before the stored settings replaced them are
            // not in them: their callers hear 503, not 200.
            self.publisher.operator_superseded(taken);
        }
        true
    }

    /// One observe → plan → act → publish round.
    pub async fn round(&self, conn: &mut Option<Conn>) {
        let started = Instant::now();
        let mut laps = Laps::start(Phase::Topology);
        self.round_inner(conn, &mut laps).await;
        let took = started.elapsed();
        let spent = laps.finish();
        if took > phases::SLOW_ROUND {
            let predicted = self.demand.lock().predicted;
            phases::slow(
                took,
                &spent,
                predicted,
                self.with_state(|st| st.in_flight()),
            );
        }
        self.metrics.round(took, spent);
    }

    async fn round_inner(&self, conn: &mut Option<Conn>, laps: &mut Laps) {
        self.refresh_topology();
        let topo = self.topology();
        let now = now_unix_ms();
        let now_ms = now_unix_ms().max(0) as u64;
        // Node health, what sync's nodes hold and where the open orders
        // are: three waits on the network, side by side (each phase's own
        // time is recorded apart; `observe` is their wall time).
        laps.enter(Phase::Observe);
        let leading = self.lease.may_write().is_some();
        // Every open order is followed here: what finished so far is in it.
        *self.finished.lock() = Finished::default();
        let open = if leading { self.open_orders() } else { vec![] };
        let ((probed, probe_t), (hosted, hosted_t), (reports, orders_t)) = tokio::join!(
            timed((self.prober).probe(conn.as_mut(), &topo.keys, &topo.nodes, now_ms)),
            timed(self.sync.hosted()),
            timed(async {
                if !leading {
                    return vec![];
                }
                self.announce_epoch().await;
                // Follow the orders in flight; a finished add turns its
                // replica serving. One call per thousand open orders.
                self.sync.orders(&open).await
            }),
        );
        laps.side(Phase::Probe, probe_t);
        laps.side(Phase::Hosted, hosted_t);
        laps.side(Phase::Orders, orders_t);
        let at = now_unix_ms();
        for (node, result) in probed {
            let fx = self.apply(Event::NodeProbed {
                node,
                result,
                now: at,
            });
            self.carry_out(fx, laps).await;
        }
        let hosted = hosted.map_err(|e| e.to_string());
        if let Err(e) = &hosted {
            if self.with_state(|st| st.sync_error.is_none()) {
                warn!(error = %e, "sync scheduler unreachable; no new orders until it answers");
            }
        }
        // Before the orders' reports: an order sync forgot is judged by
        // what its nodes hold now.
        self.apply(Event::SyncObserved(hosted));
        if self.lease.may_write().is_none() {
            // A standby (or a leader whose lease is ending): plans are
            // computed and shown; nothing is written.
            laps.enter(Phase::Plan);
            let (plan, shards, _) = self.plan(&topo, laps);
            self.apply(Event::Standby { plan, shards, now });
            return;
        }
        for (id, report) in reports {
            let fx = self.apply(Event::OrderReported { id, report, now });
            self.carry_out(fx, laps).await;
        }
        laps.enter(Phase::Plan);
        let fx = self.apply(Event::DrainsDue { now });
        self.carry_out(fx, laps).await;
        let (plan, shards, tnow) = self.plan(&topo, laps);
        let event = Event::PlanComputed {
            plan,
            shards,
            now,
            tnow,
        };
        let fx = self.apply_timed(event, laps, Phase::Carry);
        self.carry_out(fx, laps).await;
        let fx = self.apply_timed(Event::PlanCarriedOut { now }, laps, Phase::Refresh);
        self.carry_out(fx, laps).await;
        let fx = self.apply_timed(Event::RefreshesOrdered { now }, laps, Phase::Cold);
        self.carry_out(fx, laps).await;
        let changed = self.finish_round(now, laps).await;
        laps.enter(Phase::Publish);
        self.publish(conn, &topo, changed, laps).await;
    }

    /// The ids of the orders open at sync.
    fn open_orders(&self) -> Vec<u64> {
        self.with_state(|st| {
            st.orders
                .iter()
                .filter(|o| o.state.is_open())
                .map(|o| o.id)
                .collect()
        })
    }

    /// End the round: a changed assignment gets its new version. True when
    /// it changed (the table goes out).
    async fn finish_round(&self, now: i64, laps: &mut Laps) -> bool {
        let fx = self.apply(Event::RoundFinished { now });
        let changed = fx
            .iter()
            .any(|e| matches!(e, Effect::Publish { changed: true }));
        self.carry_out(fx, laps).await;
        changed
    }

    /// Between planning rounds, when orders finished: ask sync about those
    /// of them still open here (not every open order: a cold fill has a
    /// thousand open and finishes some many times a second), apply their
    /// reports (a warm replica turns serving, a failed one leaves the
    /// table), end the drains that are due, and publish a changed table.
    /// No health checks, no view of the caches, no plan — those wait for
    /// the next planning round, at most an interval away.
    pub async fn orders_round(&self, conn: &mut Option<Conn>) {
        let started = Instant::now();
        let mut laps = Laps::start(Phase::Orders);
        if self.lease.may_write().is_none() {
            return;
        }
        let topo = self.topology();
        let now = now_unix_ms();
        let finished = std::mem::take(&mut *self.finished.lock());
        let open = self.open_orders();
        let asked = finished.of(&open);
        if asked.is_empty() {
            // Nothing this manager has open finished (an order of another
            // term, or one a planning round already followed).
            return;
        }
        self.announce_epoch().await;
        let reports = self.sync.orders(&asked).await;
        for (id, report) in reports {
            // An order sync no longer knows, or did not answer for, is
            // judged by the planning round, which reads what the nodes
            // hold first (a forgotten order may have left its copy warm).
            if !matches!(report, state::OrderReport::Found(_)) {
                continue;
            }
            let fx = self.apply(Event::OrderReported { id, report, now });
            self.carry_out(fx, &mut laps).await;
        }
        let fx = self.apply(Event::DrainsDue { now });
        self.carry_out(fx, &mut laps).await;
        if self.finish_round(now, &mut laps).await {
            laps.enter(Phase::Publish);
            self.publish(conn, &topo, true, &mut laps).await;
        }
        self.metrics.orders_round(started.elapsed());
    }

    /// Orders the last plan wanted but held back for want of room, and
    /// room for some now.
    fn room_for_held_back(&self) -> bool {
        let now = now_unix_ms();
        self.with_state(|st| {
            let a = st.admission_view(now);
            a.held_back > 0 && a.in_flight < a.limit
        })
    }

    /// The plan for now, on the manager's clock (trace time when replaying).
    fn plan(
        &self,
        topo: &Topology,
        laps: &mut Laps,
    ) -> (planner::Plan, Vec<state::ShardDemand>, i64) {
        let t0 = Instant::now();
        let set = self.forecasts.latest();
        let inputs = Inputs {
            cfg: &self.cfg,
            topo,
            store: &self.store,
            forecasts: &set,
            clock: self.clock,
            now: self.clock.now_ms(),
        };
        let mut model = self.demand.lock();
        let (mut input, shards, room) = self.with_state(|st| {
            let (input, shards) = demand::plan_input(&inputs, st, &mut model);
            (input, shards, st.order_room(now_unix_ms()))
        });
        // Additions beyond what sync can take now wait in the plan (its
        // `deferred`), ranked, for a later round.
        input.churn_budget = input.churn_budget.min(room);
        laps.side(Phase::Input, t0.elapsed());
        let t1 = Instant::now();
        let plan = planner::plan(&input);
        laps.side(Phase::Planner, t1.elapsed());
        let tnow = input.now_ms;
        model.keep(input);
        (plan, shards, tnow)
    }

    /// Table to the metadata store (and listed proxies) when it changed;
    /// shard and node records every round. A refusal that moves the
    /// version sends the same assignment out again — a few passes at most,
    /// then the next round carries on.
    async fn publish(
        &self,
        conn: &mut Option<Conn>,
        topo: &Topology,
        changed: bool,
        laps: &mut Laps,
    ) {
        let started = changed.then(std::time::Instant::now);
        let mut changed = changed;
        for _ in 0..3 {
            let (version, behind, metadata_error) = self.with_state(|st| {
                (
                    st.version,
                    st.proxies_behind.iter().cloned().collect(),
                    st.metadata_error.clone(),
                )
            });
            // Read when the pass needs them: only the round changes the
            // replicas, and it is publishing.
            let table = || {
                self.with_state(|st| {
                    let t = shardmap::TableUpdate::full(version, (*st.replicas).clone());
                    (t, st.replicas.seq())
                })
            };
            // Only the shards whose replicas were touched since `last`.
            let delta_from = |last: &shardmap::TableUpdate, since: u64| {
                self.with_state(|st| {
                    let d = st.replicas.delta_since(version, last, since);
                    (d, st.replicas.seq())
                })
            };
            let pass = Pass {
                version,
                table: &table,
                delta_from: &delta_from,
                behind,
                changed,
                keys: &topo.keys,
                metadata_url: self.metadata_url(),
                metadata_error,
            };
            let records = || self.with_state(|st| view::records(st, topo));
            let out = self
                .publisher
                .publish_once(conn, pass, records, &self.lease, &self.refusals)
                .await;
            laps.moved(Phase::Store, out.store);
            laps.side(Phase::Table, out.table);
            for e in out.events {
                match &e {
                    Event::MetadataStatus(Err(_)) => self.metrics.publish_failed(Target::Metadata),
                    Event::NotDelivered { .. } => self.metrics.publish_failed(Target::Proxy),
                    _ => {}
                }
                self.apply(e);
            }
            if !out.again {
                // Not `snapshot()`: a copy of the whole state to read one set.
                let all_have_it = self.with_state(|st| st.proxies_behind.is_empty());
                if let Some(t0) = started.filter(|_| all_have_it) {
                    self.metrics.published(t0.elapsed());
                }
                return;
            }
            changed = true;
        }
    }
}

#[cfg(test)]
mod tests;
