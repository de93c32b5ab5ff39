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
//! Every decision is logged (tracing, and a bounded list on the API) with
//! its reason: forecast, load, failure, operator, balance or initial.
//! Operator controls: dry run (plans computed and shown, nothing done),
//! pins, node drains and thresholds; they persist in the metadata store.
//!
//! Several managers may run on one metadata store; only the holder of the
//! lease ([`lease`]) writes, each write carrying its epoch as a fencing
//! token. A standby observes and plans, and writes nothing.

pub mod client;
pub mod health;
pub mod lease;
pub mod metadata;
pub mod routes;
pub mod versions;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shardmap::control::ReplicaAssignment;
use shardmap::table::ReplicaState;
use shardmap::{AssignmentVersion, TableUpdate, UpdateAnswer};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::config::{ManagerConfig, Policy};
use crate::engine::{ForecastHandle, Horizon};
use crate::planner::{self, Action, Demand, NodeInput, Plan, PlanInput, Reason, ShardInput};
use crate::store::Store;
use crate::time::{now_unix_ms, Clock, HOUR_MS};
use client::Client;
use lease::Lease;
use versions::{on_refusal, Refusal, Refusals};

const DECISIONS_KEPT: usize = 500;
const ORDERS_KEPT: usize = 200;
const DEFAULT_SHARD_BYTES: u64 = 1 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("topology {path}: {errors}")]
    Topology { path: String, errors: String },
    #[error("oracle demand {0}")]
    Oracle(String),
}

/// What the manager plans with: the topology file every process reads
/// (`[manager] topology`, validated by `shardmap::topology`), and where
/// its table goes.
#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: Vec<shardmap::config::NodeSpec>,
    pub shards: Vec<shardmap::config::ShardSpec>,
    pub replication_factor: usize,
    pub prefix: String,
    pub metadata: Option<String>,
    /// How often proxies send telemetry: observed load needs at least one frame.
    pub telemetry_interval: Duration,
    modified: Option<SystemTime>,
}

impl Topology {
    /// Read the topology file `cfg` names; the rest from `cfg` itself.
    pub fn load(cfg: &ManagerConfig) -> Result<Topology, ManagerError> {
        let path = cfg.topology.as_path();
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let t = shardmap::Topology::load(path).map_err(|e| ManagerError::Topology {
            path: path.display().to_string(),
            errors: e.to_string(),
        })?;
        Ok(Topology {
            nodes: t.nodes,
            shards: t.shards,
            replication_factor: t.replication_factor,
            prefix: cfg.prefix.clone(),
            metadata: cfg.metadata.clone(),
            telemetry_interval: cfg.telemetry_interval,
            modified,
        })
    }
}

/// One logged decision.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub at_unix_ms: i64,
    pub action: String,
    pub shard: String,
    pub node: String,
    pub reason: Reason,
    pub detail: String,
    pub dry_run: bool,
}

/// A pre-fetch order the manager submitted, as it tracks it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    pub id: u64,
    pub shard: String,
    pub node: String,
    /// queued | running | done | cancelled | failed
    pub state: String,
    pub priority: f64,
    pub deadline_unix_ms: Option<i64>,
    pub submitted_unix_ms: i64,
    pub finished_unix_ms: Option<i64>,
    pub rows: u64,
    pub bytes: u64,
    pub reason: Reason,
    /// The order's replica replaces this node's (a move).
    pub replaces: Option<String>,
    /// An add (new replica) or a refresh of one already in the table.
    pub adds_replica: bool,
    pub deadline_met: Option<bool>,
}

/// Operator settings; persisted in the metadata store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Operator {
    pub dry_run: bool,
    pub pins: BTreeMap<String, Vec<String>>,
    pub drained: BTreeSet<String>,
    pub thresholds: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeState {
    pub healthy: bool,
    pub fails: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HostedView {
    pub cursor: u64,
    pub rows: u64,
    pub warm: bool,
}

#[derive(Debug, Clone, Copy)]
struct Skill {
    score: f64,
    /// The hour (store-local index) and median forecast awaiting its actual.
    pending: Option<(i64, f64)>,
}

#[derive(Default)]
struct State {
    /// The version of `replicas` as published: this manager's epoch and a
    /// counter, moved by a change, or past a target that refused it.
    version: AssignmentVersion,
    replicas: BTreeMap<String, Vec<ReplicaAssignment>>,
    nodes: BTreeMap<String, NodeState>,
    orders: VecDeque<OrderView>,
    /// Draining replicas: since when, and why they leave.
    draining_since: BTreeMap<(String, String), (i64, Reason)>,
    leaving: BTreeMap<String, BTreeSet<String>>,
    operator: Operator,
    decisions: VecDeque<Decision>,
    last_plan: Option<Plan>,
    /// The last dry-run plan's actions (kind, shard, node, reason), so an
    /// unchanged plan is not logged again every round.
    last_dry_actions: Vec<(&'static str, String, String, Reason)>,
    hosted: BTreeMap<String, BTreeMap<String, HostedView>>,
    sync_error: Option<String>,
    metadata_error: Option<String>,
    skill: BTreeMap<String, Skill>,
    bytes_per_row: Option<f64>,
    rounds: u64,
    last_round_unix_ms: i64,
    /// Proxies whose last PUT failed (re-sent next round).
    proxies_behind: BTreeSet<String>,
    /// The epoch sync has been told leads (`POST /epoch`); until it is the
    /// current one, no orders.
    sync_epoch: u64,
    demand: BTreeMap<String, Demand>,
}

impl State {
    fn decide(&mut self, d: Decision) {
        info!(
            action = %d.action,
            shard = %d.shard,
            node = %d.node,
            reason = d.reason.as_str(),
            dry_run = d.dry_run,
            detail = %d.detail,
            "shard manager decision"
        );
        if self.decisions.len() >= DECISIONS_KEPT {
            self.decisions.pop_front();
        }
        self.decisions.push_back(d);
    }

    fn update(&self) -> TableUpdate {
        TableUpdate {
            version: self.version,
            shards: self.replicas.clone(),
        }
    }

    fn open_order(&self, shard: &str, node: &str) -> Option<&OrderView> {
        self.orders.iter().find(|o| {
            o.shard == shard && o.node == node && matches!(o.state.as_str(), "queued" | "running")
        })
    }

    fn push_order(&mut self, o: OrderView) {
        if self.orders.len() >= ORDERS_KEPT {
            if let Some(i) = self
                .orders
                .iter()
                .position(|o| !matches!(o.state.as_str(), "queued" | "running"))
            {
                self.orders.remove(i);
            }
        }
        self.orders.push_back(o);
    }
}

/// Sync's view of an order (the fields the manager reads).
#[derive(Debug, Deserialize)]
struct SyncOrder {
    id: u64,
    state: String,
    #[serde(default)]
    rows: u64,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    finished_unix_ms: Option<i64>,
    #[serde(default)]
    report: Option<SyncReport>,
}

#[derive(Debug, Deserialize)]
struct SyncReport {
    #[serde(default)]
    deadline_met: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct SyncHosted {
    shard: String,
    state: String,
    cursor: u64,
    rows: u64,
}

#[derive(Debug, Deserialize)]
struct SyncNode {
    hosted: Vec<SyncHosted>,
}

/// The running manager; shared with the API.
pub struct Manager {
    cfg: ManagerConfig,
    topology: Mutex<Arc<Topology>>,
    store: Arc<Store>,
    forecasts: ForecastHandle,
    http: Client,
    state: Mutex<State>,
    wake: Notify,
    clock: Clock,
    /// Actual hourly demand per shard (the oracle policy): first store-local hour, values.
    oracle: BTreeMap<String, (i64, Vec<f64>)>,
    /// Tables refused as not newer, by target.
    refusals: Refusals,
    /// Leadership: only the leader writes, in its epoch.
    lease: Lease,
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
        let topo = Topology::load(&cfg)?;
        let oracle = match (&cfg.policy, &cfg.oracle) {
            (Policy::Oracle, Some(p)) => crate::feeds::read_file(p)
                .and_then(|b| crate::feeds::parse_history(&b, "shard_id", "ds", "lines"))
                .map_err(|e| ManagerError::Oracle(e.to_string()))?
                .into_iter()
                .map(|(id, first, v)| (id, (first, v)))
                .collect(),
            _ => BTreeMap::new(),
        };
        // A counter from the clock: a restart without the metadata store
        // still numbers its assignments past its previous life's.
        let mut st = State {
            version: AssignmentVersion::new(versions::EPOCH, now_unix_ms().max(1) as u64),
            ..State::default()
        };
        st.operator.dry_run = cfg.dry_run;
        for s in &topo.shards {
            st.replicas.insert(
                s.id.clone(),
                s.replicas
                    .iter()
                    .map(|n| ReplicaAssignment {
                        node: n.clone(),
                        state: ReplicaState::Serving,
                    })
                    .collect(),
            );
        }
        for n in &topo.nodes {
            st.nodes.insert(
                n.name.clone(),
                NodeState {
                    healthy: true,
                    ..NodeState::default()
                },
            );
        }
        let lease = Lease::new(cfg.lease);
        if cfg.metadata.is_none() && topo.metadata.is_none() {
            // No metadata store, no lease: the one manager leads in epoch 1.
            lease.lead_alone(versions::EPOCH);
        }
        // Every call to sync's control API carries `sync_token`.
        let http = Client::default().with_bearer(&cfg.sync, cfg.sync_token.clone());
        Ok(Arc::new(Manager {
            cfg,
            topology: Mutex::new(Arc::new(topo)),
            store,
            forecasts,
            http,
            state: Mutex::new(st),
            wake: Notify::new(),
            clock,
            oracle,
            refusals: Refusals::default(),
            lease,
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

    fn topology(&self) -> Arc<Topology> {
        self.topology.lock().clone()
    }

    fn metadata_url(&self) -> Option<String> {
        self.cfg
            .metadata
            .clone()
            .or_else(|| self.topology().metadata.clone())
    }

    /// Run a round now (operator changes take effect at once).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Re-read the topology file when it changed on disk; a broken file
    /// keeps the last good topology.
    fn refresh_topology(&self) {
        let path = &self.cfg.topology;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified == self.topology().modified {
            return;
        }
        match Topology::load(&self.cfg) {
            Ok(t) => {
                let mut st = self.state.lock();
                for n in &t.nodes {
                    st.nodes.entry(n.name.clone()).or_insert(NodeState {
                        healthy: true,
                        ..NodeState::default()
                    });
                }
                let known: BTreeSet<&str> = t.nodes.iter().map(|n| n.name.as_str()).collect();
                st.nodes.retain(|n, _| known.contains(n.as_str()));
                for s in &t.shards {
                    st.replicas.entry(s.id.clone()).or_insert_with(|| {
                        s.replicas
                            .iter()
                            .map(|n| ReplicaAssignment {
                                node: n.clone(),
                                state: ReplicaState::Serving,
                            })
                            .collect()
                    });
                }
                let ids: BTreeSet<&str> = t.shards.iter().map(|s| s.id.as_str()).collect();
                st.replicas.retain(|id, _| ids.contains(id.as_str()));
                drop(st);
                info!(path = %path.display(), "topology re-read");
                *self.topology.lock() = Arc::new(t);
            }
            Err(e) => {
                // Keep the old topology (remembering this file version, so
                // it is not re-read every round); the next change is tried.
                let kept = Arc::new(Topology {
                    modified,
                    ..(*self.topology()).clone()
                });
                *self.topology.lock() = kept;
                warn!(error = %e, "topology unreadable; planning with the last good one");
            }
        }
    }

    /// Until shutdown: a round every interval (or when woken).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        let mut restored = false;
        let lease_loop = tokio::spawn(self.clone().hold_lease(shutdown.clone()));
        loop {
            if let Some(epoch) = self.lease.take_fresh() {
                // A new term: continue from the store's table (the last
                // leader's), numbered in the new epoch, sent to every proxy.
                let mut st = self.state.lock();
                st.version = AssignmentVersion::new(epoch, 1);
                st.proxies_behind = self.cfg.proxies.iter().cloned().collect();
                restored = false;
            }
            if !restored {
                restored = self.restore(&mut conn).await;
            }
            self.round(&mut conn).await;
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.interval) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {
                    let _ = lease_loop.await;
                    return;
                }
            }
        }
    }

    /// Until shutdown, every third of the lease: renew it when leading,
    /// else try to take it (DESIGN.md, "Managers"); release it at the end.
    /// Without a metadata store there is nothing to hold.
    async fn hold_lease(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.metadata_url().is_none() {
            return;
        }
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        let mut last_error: Option<String> = None;
        loop {
            let prefix = self.topology().prefix.clone();
            if conn.is_none() {
                if let Some(url) = self.metadata_url() {
                    match metadata::connect(&url).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            self.lease.renew_failures.fetch_add(1, Relaxed);
                            // The lease ends by itself; may_write sees to it.
                            self.lease.tick_unreachable();
                            if last_error.as_deref() != Some(e.as_str()) {
                                warn!(error = %e, "metadata store unreachable; the lease cannot be renewed");
                            }
                            last_error = Some(e);
                        }
                    }
                }
            }
            if let Some(c) = conn.as_mut() {
                let was = self.lease.may_write().is_some();
                let fut = self.lease.tick(c, &prefix);
                match tokio::time::timeout(self.lease.period(), fut).await {
                    Ok(Ok(())) => last_error = None,
                    Ok(Err(e)) => {
                        self.lease.tick_unreachable();
                        if last_error.as_deref() != Some(e.as_str()) {
                            warn!(error = %e, "lease");
                        }
                        last_error = Some(e);
                        conn = None;
                    }
                    Err(_) => {
                        self.lease.renew_failures.fetch_add(1, Relaxed);
                        self.lease.tick_unreachable();
                        conn = None;
                    }
                }
                if !was && self.lease.may_write().is_some() {
                    self.wake();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.lease.period()) => {}
                _ = shutdown.changed() => {
                    if let Some(c) = conn.as_mut() {
                        let _ = self.lease.release(c, &prefix).await;
                    }
                    return;
                }
            }
        }
    }

    /// Continue from the table (and operator settings) in the metadata
    /// store. True when done or when there is no store.
    async fn restore(&self, conn: &mut Option<redis::aio::MultiplexedConnection>) -> bool {
        let Some(url) = self.metadata_url() else {
            return true;
        };
        let prefix = self.topology().prefix.clone();
        if conn.is_none() {
            match metadata::connect(&url).await {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    self.state.lock().metadata_error = Some(e);
                    return false;
                }
            }
        }
        let Some(c) = conn.as_mut() else { return false };
        let table = match metadata::read_table(c, &prefix).await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "metadata table unreadable; starting from the proxy config");
                None
            }
        };
        let operator = metadata::read_operator(c, &prefix).await.ok().flatten();
        let topo = self.topology();
        let mut st = self.state.lock();
        if let Some(raw) = operator {
            match serde_json::from_slice::<Operator>(&raw) {
                Ok(op) => {
                    let dry = st.operator.dry_run || op.dry_run;
                    st.operator = op;
                    st.operator.dry_run = dry;
                }
                Err(e) => warn!(error = %e, "stored operator settings unreadable; ignored"),
            }
        }
        if let Some(t) = table {
            let nodes: BTreeSet<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
            for (id, reps) in t.shards {
                if let Some(cur) = st.replicas.get_mut(&id) {
                    let reps: Vec<_> = reps
                        .into_iter()
                        .filter(|r| nodes.contains(r.node.as_str()))
                        .collect();
                    if !reps.is_empty() {
                        *cur = reps;
                    }
                }
            }
            match st.version.past(t.version) {
                Some(v) => st.version = v,
                None => warn!(
                    stored = %t.version,
                    ours = %st.version,
                    "the metadata store holds a table of a higher epoch: another manager leads"
                ),
            }
            info!(
                stored = %t.version,
                version = %st.version,
                "continuing from the table in the metadata store"
            );
        }
        true
    }

    /// One observe → plan → act → publish round.
    pub async fn round(&self, conn: &mut Option<redis::aio::MultiplexedConnection>) {
        self.refresh_topology();
        let topo = self.topology();
        let now = now_unix_ms();
        self.probe_nodes(conn.as_mut(), &topo).await;
        self.read_sync().await;
        if self.lease.may_write().is_none() {
            // A standby (or a leader whose lease is ending): plans are
            // computed and shown; nothing is written.
            let input = self.plan_input(&topo, self.clock.now_ms());
            let plan = planner::plan(&input);
            let mut st = self.state.lock();
            st.last_plan = Some(plan);
            st.rounds += 1;
            st.last_round_unix_ms = now;
            return;
        }
        self.announce_epoch().await;
        let mut changed = self.poll_orders(now).await;
        changed |= self.expire_drains(now).await;

        let input = self.plan_input(&topo, self.clock.now_ms());
        let plan = planner::plan(&input);
        let dry = self.state.lock().operator.dry_run;
        if dry {
            let mut st = self.state.lock();
            let key: Vec<_> = plan
                .actions
                .iter()
                .map(|a| {
                    (
                        a.kind(),
                        a.shard().to_string(),
                        a.node().to_string(),
                        a.reason(),
                    )
                })
                .collect();
            if st.last_dry_actions != key {
                for a in &plan.actions {
                    st.decide(decision(a, now, input.now_ms, true));
                }
                st.last_dry_actions = key;
            }
        } else {
            self.state.lock().last_dry_actions.clear();
            changed |= self.execute(&plan, now, input.now_ms).await;
            self.refresh_unhosted(&topo, &plan, now).await;
            if !self.cfg.host_baseline {
                self.evict_cold(&input, &plan, now).await;
            }
        }
        {
            let mut st = self.state.lock();
            st.last_plan = Some(plan);
            st.rounds += 1;
            st.last_round_unix_ms = now;
            if changed {
                st.version = st.version.next();
            }
        }
        self.publish(conn, &topo, changed).await;
    }

    /// Node health from the proxies' own checks ([`health`]): their
    /// reports in the metadata store, or (no store, or no fresh report in
    /// it) the `/admin/table` of each of `proxies`. Nodes no fresh report
    /// names keep their state.
    async fn probe_nodes(
        &self,
        conn: Option<&mut redis::aio::MultiplexedConnection>,
        topo: &Topology,
    ) {
        let now_ms = now_unix_ms().max(0) as u64;
        let mut reports = match conn {
            Some(c) => health::read_store(c, &topo.prefix, now_ms)
                .await
                .unwrap_or_else(|e| {
                    warn!(error = %e, "node health unreadable from the metadata store");
                    vec![]
                }),
            None => vec![],
        };
        if !health::any_fresh(&reports, now_ms, self.cfg.health_max_age) {
            // No proxy publishes there (or no store): the pushed proxies' views.
            let token = self.cfg.proxy_token.as_deref();
            let t = self.cfg.health_timeout;
            reports = health::read_proxies(&self.http, &self.cfg.proxies, token, t, now_ms).await;
        }
        let known: BTreeSet<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
        let results: Vec<_> = health::verdicts(&reports, now_ms, self.cfg.health_max_age)
            .into_iter()
            .filter(|(n, _)| known.contains(n.as_str()))
            .collect();
        let mut st = self.state.lock();
        let now = now_unix_ms();
        for (name, ok) in results {
            let fail_after = self.cfg.fail_after;
            let was;
            let healthy;
            let err;
            {
                let ns = st.nodes.entry(name.clone()).or_default();
                was = ns.healthy;
                match ok {
                    Ok(()) => {
                        ns.fails = 0;
                        ns.healthy = true;
                        ns.last_error = None;
                    }
                    Err(e) => {
                        ns.fails = ns.fails.saturating_add(1);
                        if ns.fails >= fail_after {
                            ns.healthy = false;
                        }
                        ns.last_error = Some(e);
                    }
                }
                healthy = ns.healthy;
                err = ns.last_error.clone();
            }
            if was != healthy {
                st.decide(Decision {
                    at_unix_ms: now,
                    action: if healthy { "node_up" } else { "node_down" }.into(),
                    shard: String::new(),
                    node: name,
                    reason: Reason::Failure,
                    detail: err.unwrap_or_else(|| "health checks pass again".into()),
                    dry_run: false,
                });
            }
        }
    }

    async fn read_sync(&self) {
        let url = format!("{}/nodes", self.cfg.sync);
        match self
            .http
            .get_json::<BTreeMap<String, SyncNode>>(&url, CALL_TIMEOUT)
            .await
        {
            Ok(nodes) => {
                let mut st = self.state.lock();
                st.hosted = nodes
                    .into_iter()
                    .map(|(n, v)| {
                        let m = v
                            .hosted
                            .into_iter()
                            .map(|h| {
                                (
                                    h.shard,
                                    HostedView {
                                        cursor: h.cursor,
                                        rows: h.rows,
                                        warm: h.state == "warm",
                                    },
                                )
                            })
                            .collect();
                        (n, m)
                    })
                    .collect();
                st.sync_error = None;
            }
            Err(e) => {
                let mut st = self.state.lock();
                if st.sync_error.is_none() {
                    warn!(error = %e, "sync scheduler unreachable; no new orders until it answers");
                }
                st.sync_error = Some(e);
            }
        }
    }

    /// Follow the orders in flight; a finished add turns its replica serving.
    async fn poll_orders(&self, now: i64) -> bool {
        let open: Vec<(u64, i64)> = self
            .state
            .lock()
            .orders
            .iter()
            .filter(|o| matches!(o.state.as_str(), "queued" | "running"))
            .map(|o| (o.id, o.submitted_unix_ms))
            .collect();
        let mut changed = false;
        for (id, submitted) in open {
            let url = format!("{}/orders/{id}", self.cfg.sync);
            let got = self.http.get_json::<SyncOrder>(&url, CALL_TIMEOUT).await;
            let timed_out = now - submitted > self.cfg.order_timeout.as_millis() as i64;
            if self.settle_order(id, got, timed_out, now, &mut changed) {
                let url = format!("{}/orders/{id}", self.cfg.sync);
                let _ = self
                    .http
                    .call(Method::DELETE, &url, None, None, CALL_TIMEOUT)
                    .await;
            }
        }
        changed
    }

    /// Update one tracked order from sync's answer; true when it should be
    /// cancelled at sync (it timed out).
    fn settle_order(
        &self,
        id: u64,
        got: Result<SyncOrder, String>,
        timed_out: bool,
        now: i64,
        changed: &mut bool,
    ) -> bool {
        let mut st = self.state.lock();
        let Some(i) = st.orders.iter().position(|o| o.id == id) else {
            return false;
        };
        {
            match got {
                Ok(so) if so.state == "done" => {
                    let o = &mut st.orders[i];
                    o.state = "done".into();
                    o.rows = so.rows;
                    o.bytes = so.bytes;
                    o.finished_unix_ms = so.finished_unix_ms.or(Some(now));
                    o.deadline_met = so.report.and_then(|r| r.deadline_met);
                    let o = o.clone();
                    if o.rows > 0 {
                        let bpr = o.bytes as f64 / o.rows as f64;
                        st.bytes_per_row = Some(match st.bytes_per_row {
                            Some(b) => 0.8 * b + 0.2 * bpr,
                            None => bpr,
                        });
                    }
                    let mut detail = format!(
                        "order {} done: {} rows, {} bytes in {} ms",
                        o.id,
                        o.rows,
                        o.bytes,
                        o.finished_unix_ms.unwrap_or(now) - o.submitted_unix_ms
                    );
                    if let Some(m) = o.deadline_met {
                        detail.push_str(if m {
                            ", deadline met"
                        } else {
                            ", deadline missed"
                        });
                    }
                    if o.adds_replica {
                        let mut promoted = false;
                        if let Some(reps) = st.replicas.get_mut(&o.shard) {
                            for r in reps.iter_mut().filter(|r| r.node == o.node) {
                                if r.state == ReplicaState::Warming {
                                    r.state = ReplicaState::Serving;
                                    promoted = true;
                                }
                            }
                        }
                        if promoted {
                            *changed = true;
                            if let Some(old) = &o.replaces {
                                st.leaving
                                    .entry(o.shard.clone())
                                    .or_default()
                                    .insert(old.clone());
                            }
                            st.decide(Decision {
                                at_unix_ms: now,
                                action: "serve".into(),
                                shard: o.shard.clone(),
                                node: o.node.clone(),
                                reason: o.reason,
                                detail,
                                dry_run: false,
                            });
                        }
                    } else {
                        st.decide(Decision {
                            at_unix_ms: now,
                            action: "refreshed".into(),
                            shard: o.shard.clone(),
                            node: o.node.clone(),
                            reason: o.reason,
                            detail,
                            dry_run: false,
                        });
                    }
                }
                Ok(so) if so.state == "cancelled" || timed_out => {
                    let why = if so.state == "cancelled" {
                        "cancelled by sync".to_string()
                    } else {
                        format!("not done within {:?}", self.cfg.order_timeout)
                    };
                    *changed |= fail_order(&mut st, i, now, &why);
                    return timed_out && so.state != "cancelled";
                }
                Ok(so) => {
                    let o = &mut st.orders[i];
                    o.state = so.state;
                    o.rows = so.rows;
                    o.bytes = so.bytes;
                    debug_assert_eq!(o.id, so.id);
                }
                Err(e) if timed_out || e.contains(": 404 ") => {
                    *changed |= fail_order(&mut st, i, now, &e);
                    return timed_out;
                }
                Err(_) => {} // sync unreachable: ask again next round
            }
        }
        false
    }

    /// Draining replicas whose time is up leave the table and the cache.
    async fn expire_drains(&self, now: i64) -> bool {
        let due: Vec<(String, String, Reason)> = {
            let st = self.state.lock();
            st.draining_since
                .iter()
                .filter(|(_, &(since, _))| now - since >= self.cfg.drain.as_millis() as i64)
                .map(|(k, &(_, why))| (k.0.clone(), k.1.clone(), why))
                .collect()
        };
        if due.is_empty() {
            return false;
        }
        let mut changed = false;
        for (shard, node, why) in due {
            {
                let mut st = self.state.lock();
                st.draining_since.remove(&(shard.clone(), node.clone()));
                if let Some(reps) = st.replicas.get_mut(&shard) {
                    let before = reps.len();
                    reps.retain(|r| !(r.node == node && r.state == ReplicaState::Draining));
                    changed |= reps.len() != before;
                }
                st.decide(Decision {
                    at_unix_ms: now,
                    action: "evict".into(),
                    shard: shard.clone(),
                    node: node.clone(),
                    reason: why,
                    detail: format!("drained for {:?}; out of the table", self.cfg.drain),
                    dry_run: false,
                });
            }
            let url = format!(
                "{}/nodes/{}/shards/{}",
                self.cfg.sync,
                pct(&node),
                pct(&shard)
            );
            if let Err(e) = self
                .http
                .call(Method::DELETE, &url, None, None, CALL_TIMEOUT)
                .await
            {
                warn!(shard, node, error = %e, "evicting from the node's cache failed; it stays until the node is reused");
            }
        }
        changed
    }

    /// The planner's input at `now` (clock time: trace time when replaying).
    fn plan_input(&self, topo: &Topology, now: i64) -> PlanInput {
        let set = self.forecasts.latest();
        let median_cap = {
            let mut c: Vec<f64> = topo.nodes.iter().map(|n| n.capacity).collect();
            c.sort_by(f64::total_cmp);
            c.get(c.len() / 2).copied().unwrap_or(1000.0)
        };
        let default_threshold = self.cfg.default_threshold_rps.unwrap_or(median_cap * 0.5);
        let next_hour = (now.div_euclid(HOUR_MS) + 1) * HOUR_MS;
        let store_hour = self.store.local_hour(now);
        let mut st = self.state.lock();
        let bytes_per_row = st.bytes_per_row;
        // At least one telemetry frame's span, on this clock (a frame every
        // second spans an hour of trace time at 3600x).
        let frame_s = (topo.telemetry_interval.as_secs_f64() * self.clock.speed()).ceil() as usize;
        let observe_window_s = self.cfg.observe_window_s.max(frame_s);
        let mut shards = Vec::with_capacity(topo.shards.len());
        for s in &topo.shards {
            let threshold = st
                .operator
                .thresholds
                .get(&s.id)
                .copied()
                .or(s.threshold)
                .unwrap_or(default_threshold);
            let observed = self.store.recent_rate(&s.id, now, observe_window_s);
            let mut predicted = 0.0f64;
            let mut rise_at = next_hour;
            let mut p50_hour = None;
            let forecast = match self.cfg.policy {
                Policy::Forecast => set.shards.get(&s.id),
                _ => None,
            };
            if self.cfg.policy == Policy::Oracle {
                // Perfect foresight: the actual demand of this hour and the next.
                if let Some((first, v)) = self.oracle.get(&s.id) {
                    let at = |h: i64| {
                        usize::try_from(h - first)
                            .ok()
                            .and_then(|i| v.get(i).copied())
                            .unwrap_or(0.0)
                            / 3600.0
                    };
                    let (this, next) = (at(store_hour), at(store_hour + 1));
                    predicted = this.max(next);
                    if this > threshold {
                        rise_at = now;
                    }
                }
            }
            if let Some(f) = forecast {
                for h in Horizon::ALL {
                    let Some(hf) = f.horizon(h) else { continue };
                    let q = quantile_at(&hf.levels, &hf.values, self.cfg.quantile);
                    let rate = f64::from(q) / (h.hours() as f64 * 3600.0);
                    if h == Horizon::Hour {
                        p50_hour = Some(f64::from(quantile_at(&hf.levels, &hf.values, 0.5)));
                        if rate > threshold {
                            // the hour forecast is for the hour in progress
                            rise_at = now;
                        }
                    }
                    predicted = predicted.max(rate);
                }
            }
            // Skill: the median hour forecast against what the hour brought.
            let skill = {
                let sk = st.skill.entry(s.id.clone()).or_insert(Skill {
                    score: 0.5,
                    pending: None,
                });
                if let Some((hour, f)) = sk.pending {
                    if hour < store_hour {
                        let mut a = [0.0];
                        self.store.hourly_window(&s.id, hour, &mut a);
                        let denom = a[0].abs() + f.abs();
                        let s1 = if denom > 0.0 {
                            1.0 - (a[0] - f).abs() / denom
                        } else {
                            1.0
                        };
                        sk.score = 0.8 * sk.score + 0.2 * s1;
                        sk.pending = None;
                    }
                }
                if sk.pending.is_none() {
                    if let Some(p) = p50_hour {
                        sk.pending = Some((store_hour, p));
                    }
                }
                sk.score
            };
            let rows = st
                .hosted
                .values()
                .filter_map(|m| m.get(&s.id).map(|h| h.rows))
                .max();
            let bytes = match (rows, bytes_per_row) {
                (Some(r), Some(b)) if r > 0 => (r as f64 * b) as u64,
                _ => DEFAULT_SHARD_BYTES,
            };
            let demand = Demand {
                predicted_rps: predicted,
                rise_at_ms: rise_at,
                observed_rps: observed,
                skill,
            };
            // Never pre-fetch: the planner sees no demand at all.
            let planned = if self.cfg.policy == Policy::None {
                Demand {
                    predicted_rps: 0.0,
                    observed_rps: 0.0,
                    ..demand.clone()
                }
            } else {
                demand.clone()
            };
            st.demand.insert(s.id.clone(), demand.clone());
            shards.push(ShardInput {
                id: s.id.clone(),
                threshold,
                replicas: st
                    .replicas
                    .get(&s.id)
                    .map(|r| {
                        r.iter()
                            .map(|r| planner::ReplicaInput {
                                node: r.node.clone(),
                                state: r.state,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                demand: planned,
                bytes,
                pinned: st.operator.pins.get(&s.id).cloned(),
                leaving: st
                    .leaving
                    .get(&s.id)
                    .map(|l| l.iter().cloned().collect())
                    .unwrap_or_default(),
            });
        }
        let nodes = topo
            .nodes
            .iter()
            .map(|n| NodeInput {
                name: n.name.clone(),
                capacity: n.capacity,
                zone: n.zone.clone(),
                healthy: st.nodes.get(&n.name).is_none_or(|s| s.healthy),
                drained: st.operator.drained.contains(&n.name),
            })
            .collect();
        PlanInput {
            now_ms: now,
            replication_factor: topo.replication_factor,
            churn_budget: self.cfg.churn_budget,
            max_utilization: self.cfg.max_utilization,
            scale_in_ratio: self.cfg.scale_in_ratio,
            // bytes per clock second (deadlines are in clock time)
            bandwidth_bytes_per_s: self.cfg.bandwidth_bytes_per_s / self.clock.speed(),
            nodes,
            shards,
        }
    }

    /// Carry out a plan: `now` is real time, `tnow` the clock's (the plan's).
    async fn execute(&self, plan: &Plan, now: i64, tnow: i64) -> bool {
        let mut changed = false;
        for a in &plan.actions {
            match a {
                Action::Drop { shard, node, .. } => {
                    let open = {
                        let mut st = self.state.lock();
                        if let Some(reps) = st.replicas.get_mut(shard) {
                            reps.retain(|r| r.node != *node);
                        }
                        st.draining_since.remove(&(shard.clone(), node.clone()));
                        if let Some(l) = st.leaving.get_mut(shard) {
                            l.remove(node);
                        }
                        let open = st.open_order(shard, node).map(|o| o.id);
                        if let Some(id) = open {
                            if let Some(o) = st.orders.iter_mut().find(|o| o.id == id) {
                                o.state = "cancelled".into();
                            }
                        }
                        st.decide(decision(a, now, tnow, false));
                        open
                    };
                    changed = true;
                    if let Some(id) = open {
                        let url = format!("{}/orders/{id}", self.cfg.sync);
                        let _ = self
                            .http
                            .call(Method::DELETE, &url, None, None, CALL_TIMEOUT)
                            .await;
                    }
                }
                Action::Drain { shard, node, .. } => {
                    let mut st = self.state.lock();
                    let mut did = false;
                    if let Some(reps) = st.replicas.get_mut(shard) {
                        for r in reps.iter_mut().filter(|r| r.node == *node) {
                            if r.state != ReplicaState::Draining {
                                r.state = ReplicaState::Draining;
                                did = true;
                            }
                        }
                    }
                    if did {
                        st.draining_since
                            .insert((shard.clone(), node.clone()), (now, a.reason()));
                        if let Some(l) = st.leaving.get_mut(shard) {
                            l.remove(node);
                        }
                        st.decide(decision(a, now, tnow, false));
                        changed = true;
                    }
                }
                Action::Add {
                    shard,
                    node,
                    reason,
                    priority,
                    deadline_ms,
                    replaces,
                    ..
                } => match self
                    .submit(shard, node, *priority, self.clock.to_real(*deadline_ms))
                    .await
                {
                    Ok(id) => {
                        let mut st = self.state.lock();
                        st.replicas
                            .entry(shard.clone())
                            .or_default()
                            .push(ReplicaAssignment {
                                node: node.clone(),
                                state: ReplicaState::Warming,
                            });
                        st.push_order(OrderView {
                            id,
                            shard: shard.clone(),
                            node: node.clone(),
                            state: "queued".into(),
                            priority: *priority,
                            deadline_unix_ms: Some(self.clock.to_real(*deadline_ms)),
                            submitted_unix_ms: now,
                            finished_unix_ms: None,
                            rows: 0,
                            bytes: 0,
                            reason: *reason,
                            replaces: replaces.clone(),
                            adds_replica: true,
                            deadline_met: None,
                        });
                        let mut d = decision(a, now, tnow, false);
                        d.detail = format!("{} (order {id})", d.detail);
                        st.decide(d);
                        changed = true;
                    }
                    Err(e) => {
                        let mut st = self.state.lock();
                        let mut d = decision(a, now, tnow, false);
                        d.action = "add_failed".into();
                        d.detail = format!("pre-fetch order refused: {e}");
                        st.decide(d);
                    }
                },
            }
        }
        changed
    }

    /// Replicas in the table that their node's cache does not hold: order a
    /// copy, keeping them serving meanwhile (the node fills on miss). With
    /// `host_baseline` every replica is kept hosted (a fresh start, a lost
    /// cache); without, only the replicas of shards that are hot now.
    async fn refresh_unhosted(&self, topo: &Topology, plan: &Plan, now: i64) {
        let todo: Vec<(String, String, Reason, f64, i64)> = {
            let st = self.state.lock();
            if st.sync_error.is_some() {
                return;
            }
            let mut v = Vec::new();
            for s in &topo.shards {
                let hot = plan.shards.iter().find(|p| p.id == s.id).and_then(|p| {
                    p.reason
                        .filter(|r| matches!(r, Reason::Forecast | Reason::Load))
                        .map(|r| (r, p.load_rps))
                });
                let (reason, priority, deadline) = match (self.cfg.host_baseline, hot) {
                    (_, Some((r, load))) => {
                        let rise = st
                            .demand
                            .get(&s.id)
                            .map_or(now, |d| self.clock.to_real(d.rise_at_ms));
                        (r, load.max(0.01) * 10.0, rise.max(now + 1000))
                    }
                    (true, None) => (Reason::Initial, 0.01, now + 60_000),
                    (false, None) => continue,
                };
                for r in st.replicas.get(&s.id).into_iter().flatten() {
                    let healthy = st.nodes.get(&r.node).is_some_and(|n| n.healthy);
                    let hosted = st
                        .hosted
                        .get(&r.node)
                        .is_some_and(|m| m.contains_key(&s.id));
                    if r.state == ReplicaState::Serving
                        && healthy
                        && !hosted
                        && st.open_order(&s.id, &r.node).is_none()
                    {
                        v.push((s.id.clone(), r.node.clone(), reason, priority, deadline));
                    }
                }
            }
            v
        };
        for (shard, node, reason, priority, deadline) in todo {
            match self.submit(&shard, &node, priority, deadline).await {
                Ok(id) => {
                    let mut st = self.state.lock();
                    st.push_order(OrderView {
                        id,
                        shard: shard.clone(),
                        node: node.clone(),
                        state: "queued".into(),
                        priority,
                        deadline_unix_ms: Some(deadline),
                        submitted_unix_ms: now,
                        finished_unix_ms: None,
                        rows: 0,
                        bytes: 0,
                        reason,
                        replaces: None,
                        adds_replica: false,
                        deadline_met: None,
                    });
                    st.decide(Decision {
                        at_unix_ms: now,
                        action: "refresh".into(),
                        shard,
                        node,
                        reason,
                        detail: format!("replica not in its node's cache (order {id})"),
                        dry_run: false,
                    });
                    // it is in the cache as far as planning goes
                }
                Err(e) => {
                    warn!(shard, node, error = %e, "refresh order refused");
                }
            }
        }
    }

    /// Without `host_baseline`: shards that cooled down (not hot, observed
    /// demand below the scale-in level) leave the node caches; their
    /// replicas keep serving by filling on miss.
    async fn evict_cold(&self, input: &PlanInput, plan: &Plan, now: i64) {
        let todo: Vec<(String, String, String)> = {
            let st = self.state.lock();
            if st.sync_error.is_some() {
                return;
            }
            let mut v = Vec::new();
            for s in &input.shards {
                let hot = plan
                    .shards
                    .iter()
                    .find(|p| p.id == s.id)
                    .is_some_and(|p| matches!(p.reason, Some(Reason::Forecast | Reason::Load)));
                let observed = st.demand.get(&s.id).map_or(0.0, |d| d.observed_rps);
                let calm = observed <= s.threshold * self.cfg.scale_in_ratio
                    || self.cfg.policy == Policy::None;
                if hot || !calm {
                    continue;
                }
                for (node, m) in &st.hosted {
                    if m.contains_key(&s.id) && st.open_order(&s.id, node).is_none() {
                        v.push((
                            s.id.clone(),
                            node.clone(),
                            format!(
                                "cold: observed {observed:.3} rps, threshold {:.3}",
                                s.threshold
                            ),
                        ));
                    }
                }
            }
            v
        };
        for (shard, node, detail) in todo {
            let url = format!(
                "{}/nodes/{}/shards/{}",
                self.cfg.sync,
                pct(&node),
                pct(&shard)
            );
            match self
                .http
                .call(Method::DELETE, &url, None, None, CALL_TIMEOUT)
                .await
            {
                Ok((s, _)) if (200..300).contains(&s) => {
                    let mut st = self.state.lock();
                    if let Some(m) = st.hosted.get_mut(&node) {
                        m.remove(&shard);
                    }
                    st.decide(Decision {
                        at_unix_ms: now,
                        action: "evict".into(),
                        shard,
                        node,
                        reason: Reason::Load,
                        detail,
                        dry_run: false,
                    });
                }
                other => {
                    warn!(shard, node, result = ?other.map(|(s, _)| s), "evicting a cold shard failed")
                }
            }
        }
    }

    /// A new term tells sync its epoch before ordering anything, so the
    /// orders of every older leader are refused from then on. Tried every
    /// round until sync answers.
    async fn announce_epoch(&self) {
        let Some(epoch) = self.lease.may_write() else {
            return;
        };
        if self.state.lock().sync_epoch >= epoch {
            return;
        }
        let url = format!("{}/epoch", self.cfg.sync);
        let body = serde_json::json!({ "epoch": epoch })
            .to_string()
            .into_bytes();
        match self
            .http
            .call(Method::POST, &url, Some(body), None, CALL_TIMEOUT)
            .await
        {
            Ok((s, _)) if (200..300).contains(&s) => {
                info!(epoch, "sync fenced: orders of older epochs are refused");
                self.state.lock().sync_epoch = epoch;
            }
            Ok((409, _)) => self.lease.fenced("sync has seen a higher epoch"),
            other => {
                warn!(result = ?other.map(|(s, _)| s), "announcing the epoch to sync failed; no orders until it answers");
            }
        }
    }

    async fn submit(
        &self,
        shard: &str,
        node: &str,
        priority: f64,
        deadline: i64,
    ) -> Result<u64, String> {
        let Some(epoch) = self.lease.may_write() else {
            return Err("not leading: no orders".into());
        };
        if self.state.lock().sync_epoch < epoch {
            return Err(format!("epoch {epoch} not yet announced to sync"));
        }
        let body = serde_json::json!({
            "shard": shard,
            "node": node,
            "priority": if priority.is_finite() && priority > 0.0 { priority } else { 1.0 },
            "deadline_unix_ms": deadline.max(0),
            "epoch": epoch,
        });
        let url = format!("{}/orders", self.cfg.sync);
        let (status, body) = self
            .http
            .call(
                Method::POST,
                &url,
                Some(body.to_string().into_bytes()),
                None,
                CALL_TIMEOUT,
            )
            .await?;
        if status == 409 {
            // Sync has seen a higher epoch: another manager leads.
            self.lease
                .fenced("sync refused a pre-fetch order of this epoch");
        }
        if !(200..300).contains(&status) {
            return Err(format!("{status} {}", String::from_utf8_lossy(&body)));
        }
        let o: SyncOrder =
            serde_json::from_slice(&body).map_err(|e| format!("order answer: {e}"))?;
        Ok(o.id)
    }

    /// Table to the metadata store (and listed proxies) when it changed;
    /// shard and node records every round.
    ///
    /// A target that refuses the table as not newer (a proxy's 409, a newer
    /// table in the store) has not received it. When the target already
    /// holds exactly this version, it has; when it holds a newer version of
    /// this manager's epoch, the counter moves past it and the same
    /// assignment goes out again to every target at once — a few passes at
    /// most, then the next round carries on.
    async fn publish(
        &self,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
        topo: &Topology,
        changed: bool,
    ) {
        let mut changed = changed;
        for _ in 0..3 {
            if !self.publish_once(conn, topo, changed).await {
                return;
            }
            changed = true;
        }
    }

    /// Move the manager's version to `v` (past a target's), if it is newer.
    /// Every proxy is behind until it has `v`.
    fn outrank(&self, v: AssignmentVersion, target: &str, theirs: AssignmentVersion) {
        let mut st = self.state.lock();
        if v > st.version {
            info!(
                target,
                theirs = %theirs,
                ours = %st.version,
                next = %v,
                "table refused as not newer; re-sending it past the target's version"
            );
            st.version = v;
        }
        st.proxies_behind.extend(self.cfg.proxies.iter().cloned());
    }

    /// One pass of [`Manager::publish`]: true when a refusal moved the
    /// version, so the table must go out again.
    async fn publish_once(
        &self,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
        topo: &Topology,
        changed: bool,
    ) -> bool {
        let (update, behind) = {
            let st = self.state.lock();
            (st.update(), st.proxies_behind.clone())
        };
        if let Some(url) = self.metadata_url() {
            if conn.is_none() {
                match metadata::connect(&url).await {
                    Ok(c) => *conn = Some(c),
                    Err(e) => self.state.lock().metadata_error = Some(e),
                }
            }
            if let Some(c) = conn.as_mut() {
                // Also re-written when the store lost it (restart, flush) or
                // holds an older one.
                let stored = metadata::read_table(c, &topo.prefix).await;
                let mut write = changed;
                let mut fenced = None;
                match &stored {
                    // Newer than ours, or ours by number with other content
                    // (another writer): refused, not delivered.
                    Ok(Some(t))
                        if t.version > update.version
                            || (t.version == update.version && t.shards != update.shards) =>
                    {
                        self.refusals.metadata.fetch_add(1, Relaxed);
                        let refusal = if t.version == update.version {
                            update
                                .version
                                .past(t.version)
                                .map_or(Refusal::Fenced, Refusal::Outrank)
                        } else {
                            on_refusal(update.version, t.version)
                        };
                        match refusal {
                            Refusal::Outrank(v) => {
                                self.outrank(v, "metadata", t.version);
                                return true;
                            }
                            Refusal::Current | Refusal::Retry => {}
                            Refusal::Fenced => {
                                fenced = Some(format!(
                                    "the store holds table version {}, which version {} cannot outrank: another manager leads",
                                    t.version, update.version
                                ));
                            }
                        }
                    }
                    Ok(Some(t)) if t.version == update.version => {}
                    _ => write = true,
                }
                if self.lease.may_write().is_none() {
                    return false;
                }
                if let Some(e) = fenced {
                    // Writing would change nothing (proxies skip what is not
                    // newer) and would overwrite the leader's records.
                    self.lease.fenced(&e);
                    let mut st = self.state.lock();
                    if st.metadata_error.as_deref() != Some(e.as_str()) {
                        warn!(error = %e, "table not published");
                    }
                    st.metadata_error = Some(e);
                } else {
                    let mut res = Ok(());
                    if write {
                        res = match metadata::publish_table(c, &topo.prefix, &update).await {
                            Ok(metadata::Published::Written) => Ok(()),
                            Ok(metadata::Published::Fenced(why)) => {
                                self.refusals.metadata.fetch_add(1, Relaxed);
                                self.lease.fenced(&why);
                                warn!(reason = %why, version = %update.version, "table refused by the store: a newer leader");
                                self.state.lock().metadata_error = Some(why);
                                return false;
                            }
                            Err(e) => Err(e),
                        };
                    }
                    if res.is_ok() {
                        let (shards, nodes, op) = self.records(topo);
                        res = metadata::write_state(
                            c,
                            &topo.prefix,
                            update.version,
                            &shards,
                            &nodes,
                            &op,
                        )
                        .await;
                    }
                    let mut st = self.state.lock();
                    match res {
                        Ok(()) => st.metadata_error = None,
                        Err(e) => {
                            warn!(error = %e, "metadata store write failed; retrying next round");
                            st.metadata_error = Some(e);
                            *conn = None;
                        }
                    }
                }
            }
        }
        if changed || !behind.is_empty() {
            let body = serde_json::to_vec(&update).unwrap_or_default();
            let targets: Vec<String> = if changed {
                self.cfg.proxies.clone()
            } else {
                behind.into_iter().collect()
            };
            for p in targets {
                if self.lease.may_write().is_none() {
                    return false;
                }
                let url = format!("{p}/admin/table");
                let r = self
                    .http
                    .call(
                        Method::PUT,
                        &url,
                        Some(body.clone()),
                        self.cfg.proxy_token.as_deref(),
                        CALL_TIMEOUT,
                    )
                    .await;
                let delivered = match &r {
                    Ok((s, _)) if (200..300).contains(s) => true,
                    // Not newer than what the proxy holds: delivered only if
                    // it holds this very version.
                    Ok((409, answer)) => {
                        self.refusals.proxy.fetch_add(1, Relaxed);
                        match serde_json::from_slice::<UpdateAnswer>(answer) {
                            Ok(a) => match on_refusal(update.version, a.assignment_version) {
                                Refusal::Current => true,
                                Refusal::Outrank(v) => {
                                    self.outrank(v, &p, a.assignment_version);
                                    return true;
                                }
                                Refusal::Fenced => {
                                    self.lease.fenced("a proxy holds a table of a higher epoch");
                                    false
                                }
                                Refusal::Retry => false,
                            },
                            Err(e) => {
                                warn!(proxy = %p, error = %e, "a 409 without the proxy's assignment version");
                                false
                            }
                        }
                    }
                    _ => false,
                };
                let mut st = self.state.lock();
                if delivered {
                    st.proxies_behind.remove(&p);
                } else if st.proxies_behind.insert(p.clone()) {
                    warn!(proxy = %p, result = ?r.map(|(s, _)| s), "table push failed; retrying next round");
                }
            }
        }
        false
    }

    fn records(
        &self,
        topo: &Topology,
    ) -> (
        Vec<metadata::ShardRecord>,
        Vec<metadata::NodeRecord>,
        Vec<u8>,
    ) {
        let st = self.state.lock();
        let plan = st.last_plan.as_ref();
        let shards = topo
            .shards
            .iter()
            .map(|s| {
                let reps = st.replicas.get(&s.id).cloned().unwrap_or_default();
                let cursors: BTreeMap<&str, u64> = reps
                    .iter()
                    .filter_map(|r| {
                        st.hosted
                            .get(&r.node)
                            .and_then(|m| m.get(&s.id))
                            .map(|h| (r.node.as_str(), h.cursor))
                    })
                    .collect();
                let d = st.demand.get(&s.id).cloned().unwrap_or_default();
                metadata::ShardRecord {
                    id: s.id.clone(),
                    content: serde_json::json!({"categories": s.categories, "regions": s.regions})
                        .to_string(),
                    replicas: serde_json::to_string(&reps).unwrap_or_default(),
                    cursors: serde_json::to_string(&cursors).unwrap_or_default(),
                    observed_rps: d.observed_rps,
                    predicted_rps: d.predicted_rps,
                    target: plan
                        .and_then(|p| p.shards.iter().find(|x| x.id == s.id))
                        .map_or(reps.len(), |x| x.target),
                }
            })
            .collect();
        let nodes = topo
            .nodes
            .iter()
            .map(|n| metadata::NodeRecord {
                name: n.name.clone(),
                address: n.address.clone(),
                capacity: n.capacity,
                zone: n.zone.clone().unwrap_or_default(),
                health: if st.nodes.get(&n.name).is_none_or(|s| s.healthy) {
                    "up"
                } else {
                    "down"
                },
                drained: st.operator.drained.contains(&n.name),
                load_rps: plan
                    .and_then(|p| p.node_load.get(&n.name).copied())
                    .unwrap_or(0.0),
            })
            .collect();
        let op = serde_json::to_vec(&st.operator).unwrap_or_default();
        (shards, nodes, op)
    }

    // ---- operator controls and views (the API calls these) ----

    /// The manager's state for `GET /manager`.
    pub fn view(&self) -> serde_json::Value {
        let topo = self.topology();
        let st = self.state.lock();
        let (refused_proxy, refused_metadata) = self.refusals.snapshot();
        let plan = st.last_plan.as_ref();
        let mut shards = serde_json::Map::new();
        for s in &topo.shards {
            let p = plan.and_then(|p| p.shards.iter().find(|x| x.id == s.id));
            let d = st.demand.get(&s.id).cloned().unwrap_or_default();
            shards.insert(
                s.id.clone(),
                serde_json::json!({
                    "replicas": st.replicas.get(&s.id).cloned().unwrap_or_default(),
                    "target": p.map(|p| p.target),
                    "predicted_rps": d.predicted_rps,
                    "observed_rps": d.observed_rps,
                    "threshold": p.map(|p| p.threshold),
                    "skill": d.skill,
                    "pinned": st.operator.pins.get(&s.id),
                    "hosted": st.hosted.iter().filter_map(|(n, m)| m.get(&s.id).map(|h| (n.clone(), h.clone()))).collect::<BTreeMap<_, _>>(),
                }),
            );
        }
        let mut nodes = serde_json::Map::new();
        for n in &topo.nodes {
            let ns = st.nodes.get(&n.name).cloned().unwrap_or_default();
            nodes.insert(
                n.name.clone(),
                serde_json::json!({
                    "health": if ns.healthy { "up" } else { "down" },
                    "last_error": ns.last_error,
                    "drained": st.operator.drained.contains(&n.name),
                    "load_rps": plan.and_then(|p| p.node_load.get(&n.name).copied()).unwrap_or(0.0),
                    "capacity": n.capacity,
                    "zone": n.zone,
                }),
            );
        }
        let lease = self.lease.view();
        serde_json::json!({
            "leader": lease.leader,
            "epoch": lease.epoch,
            "holder": lease.holder,
            "lease": lease,
            "assignment_version": st.version,
            "table_refusals": {"proxy": refused_proxy, "metadata": refused_metadata},
            "dry_run": st.operator.dry_run,
            "rounds": st.rounds,
            "last_round_unix_ms": st.last_round_unix_ms,
            "replication_factor": topo.replication_factor,
            "sync_error": st.sync_error,
            "metadata_error": st.metadata_error,
            "proxies_behind": st.proxies_behind,
            "shards": shards,
            "nodes": nodes,
            "orders": st.orders,
            "decisions": st.decisions.iter().rev().take(100).collect::<Vec<_>>(),
            "deferred": plan.map_or(0, |p| p.deferred),
            "operator": st.operator,
        })
    }

    pub fn plan_view(&self) -> serde_json::Value {
        serde_json::to_value(&self.state.lock().last_plan).unwrap_or_default()
    }

    pub fn decisions(&self, limit: usize) -> Vec<Decision> {
        self.state
            .lock()
            .decisions
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    fn operator_change(&self, what: &str, shard: &str, node: &str, detail: String) {
        let mut st = self.state.lock();
        st.decide(Decision {
            at_unix_ms: now_unix_ms(),
            action: what.into(),
            shard: shard.into(),
            node: node.into(),
            reason: Reason::Operator,
            detail,
            dry_run: false,
        });
        drop(st);
        self.wake();
    }

    pub fn set_dry_run(&self, on: bool) {
        self.state.lock().operator.dry_run = on;
        self.operator_change(
            "dry_run",
            "",
            "",
            format!("dry run {}", if on { "on" } else { "off" }),
        );
    }

    pub fn pin(&self, shard: &str, nodes: Option<Vec<String>>) -> Result<(), String> {
        let topo = self.topology();
        if !topo.shards.iter().any(|s| s.id == shard) {
            return Err(format!("unknown shard `{shard}`"));
        }
        if let Some(ns) = &nodes {
            if ns.is_empty() {
                return Err("a pin names at least one node".into());
            }
            let mut seen = BTreeSet::new();
            for n in ns {
                if !topo.nodes.iter().any(|x| x.name == *n) {
                    return Err(format!("unknown node `{n}`"));
                }
                if !seen.insert(n) {
                    return Err(format!("node `{n}` named twice"));
                }
            }
        }
        let detail = match &nodes {
            Some(ns) => format!("pinned to {}", ns.join(", ")),
            None => "pin removed".into(),
        };
        {
            let mut st = self.state.lock();
            match nodes {
                Some(ns) => st.operator.pins.insert(shard.to_string(), ns),
                None => st.operator.pins.remove(shard),
            };
        }
        self.operator_change("pin", shard, "", detail);
        Ok(())
    }

    pub fn drain_node(&self, node: &str, on: bool) -> Result<(), String> {
        if !self.topology().nodes.iter().any(|x| x.name == node) {
            return Err(format!("unknown node `{node}`"));
        }
        {
            let mut st = self.state.lock();
            if on {
                st.operator.drained.insert(node.to_string());
            } else {
                st.operator.drained.remove(node);
            }
        }
        let what = if on { "drain_node" } else { "undrain_node" };
        self.operator_change(what, "", node, format!("{what} by operator"));
        Ok(())
    }

    pub fn set_threshold(&self, shard: &str, rps: Option<f64>) -> Result<(), String> {
        if !self.topology().shards.iter().any(|s| s.id == shard) {
            return Err(format!("unknown shard `{shard}`"));
        }
        if let Some(v) = rps {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!(
                    "threshold {v} must be a positive number of requests/s"
                ));
            }
        }
        {
            let mut st = self.state.lock();
            match rps {
                Some(v) => st.operator.thresholds.insert(shard.to_string(), v),
                None => st.operator.thresholds.remove(shard),
            };
        }
        let detail = match rps {
            Some(v) => format!("threshold set to {v} rps"),
            None => "threshold back to the configured one".into(),
        };
        self.operator_change("threshold", shard, "", detail);
        Ok(())
    }
}

fn fail_order(st: &mut State, i: usize, now: i64, why: &str) -> bool {
    let o = &mut st.orders[i];
    o.state = "failed".into();
    o.finished_unix_ms = Some(now);
    let o = o.clone();
    let mut changed = false;
    if o.adds_replica {
        if let Some(reps) = st.replicas.get_mut(&o.shard) {
            let before = reps.len();
            reps.retain(|r| !(r.node == o.node && r.state == ReplicaState::Warming));
            changed = reps.len() != before;
        }
    }
    st.decide(Decision {
        at_unix_ms: now,
        action: "order_failed".into(),
        shard: o.shard,
        node: o.node,
        reason: o.reason,
        detail: format!("order {}: {why}; warming replica withdrawn", o.id),
        dry_run: false,
    });
    changed
}

/// A plan action as a decision at real time `now`; `tnow` is the plan's
/// clock time (deadlines are relative to it).
fn decision(a: &Action, now: i64, tnow: i64, dry_run: bool) -> Decision {
    let detail = match a {
        Action::Add {
            detail,
            priority,
            deadline_ms,
            over_capacity,
            replaces,
            ..
        } => {
            let mut d = format!(
                "{detail}; priority {priority:.3}, deadline in {} ms",
                deadline_ms - tnow
            );
            if let Some(r) = replaces {
                d.push_str(&format!(", replaces {r}"));
            }
            if *over_capacity {
                d.push_str(", no node had room");
            }
            d
        }
        Action::Drain { detail, .. } | Action::Drop { detail, .. } => detail.clone(),
    };
    Decision {
        at_unix_ms: now,
        action: a.kind().into(),
        shard: a.shard().into(),
        node: a.node().into(),
        reason: a.reason(),
        detail,
        dry_run,
    }
}

/// The value at the smallest served level ≥ `level` (the top one if none).
fn quantile_at(levels: &[f32], values: &[f32], level: f32) -> f32 {
    levels
        .iter()
        .position(|&l| l + 1e-6 >= level)
        .or(levels.len().checked_sub(1))
        .and_then(|i| values.get(i).copied())
        .unwrap_or(0.0)
}

/// Percent-encode a path segment (shard ids hold `/`).
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_picks_the_served_level_at_or_above() {
        let l = [0.1, 0.5, 0.9];
        let v = [1.0, 2.0, 3.0];
        assert_eq!(quantile_at(&l, &v, 0.9), 3.0);
        assert_eq!(quantile_at(&l, &v, 0.8), 3.0);
        assert_eq!(quantile_at(&l, &v, 0.5), 2.0);
        assert_eq!(quantile_at(&l, &v, 0.99), 3.0);
        assert_eq!(quantile_at(&[], &[], 0.5), 0.0);
    }

    #[test]
    fn a_broken_topology_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let topo = dir.path().join("topology.toml");
        let good = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/topology.toml"),
        )
        .unwrap();
        std::fs::write(&topo, &good).unwrap();
        let text = "listen = \"127.0.0.1:0\"\n[model]\nhourly = \"h\"\ndaily = \"d\"\n[manager]\ntopology = \"topology.toml\"\nsync = \"http://127.0.0.1:1\"\nprefix = \"p1\"\n";
        let cfg = crate::config::Config::parse(text, dir.path(), "f.toml")
            .unwrap()
            .manager
            .unwrap();
        let store = Arc::new(Store::new(crate::store::Retention::default(), 0, 100));
        let m = Manager::new(cfg, store, ForecastHandle::new(), Clock::real()).unwrap();
        assert_eq!(m.topology().shards.len(), 14);
        assert_eq!(m.topology().nodes.len(), 3);
        assert_eq!(m.topology().prefix, "p1");
        // a broken edit (with a new mtime) is refused and the old topology kept
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&topo, "replication_factor = \"two\"\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&topo)
            .unwrap()
            .set_modified(later)
            .unwrap();
        m.refresh_topology();
        assert_eq!(m.topology().shards.len(), 14);
        assert_eq!(m.topology().modified, Some(later));
        // a good edit is taken
        std::fs::write(
            &topo,
            good.replace("replication_factor = 2", "replication_factor = 3"),
        )
        .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&topo)
            .unwrap()
            .set_modified(later + Duration::from_secs(5))
            .unwrap();
        m.refresh_topology();
        assert_eq!(m.topology().replication_factor, 3);
    }

    #[test]
    fn shard_ids_are_percent_encoded_for_paths() {
        assert_eq!(pct("UK/SEASONAL"), "UK%2FSEASONAL");
        assert_eq!(pct("node-a"), "node-a");
    }
}
