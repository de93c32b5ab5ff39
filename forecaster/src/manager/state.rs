//! The manager's state machine: replicas, pre-fetch orders, node health as
//! observed, and operator settings, as data. Nothing here does I/O or reads
//! a clock; [`State::apply`] takes one [`Event`] (an observation, a plan, a
//! result of an earlier effect, an operator command) and returns the
//! [`Effect`]s the round carries out through its adapters (sync, the table
//! publisher, the decision log). In the spirit of Sozu's
//! `ConfigState::dispatch`: one owner applies events, everyone else reads a
//! snapshot.
//!
//! The state keeps these invariants whatever the events (see the property
//! tests): replicas of a shard are on distinct nodes; there is at most one
//! open order per shard and node; at most `churn_budget` replicas are added
//! per plan; and a move is make-before-break — a replica is drained only
//! when the planner says so, which it does once enough others serve.

pub mod admission;
#[cfg(test)]
mod admission_tests;
mod operator;
mod orders;
mod plan;
pub mod prefetch;
#[cfg(test)]
mod proptests;
pub mod replicas;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod walk;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::Serialize;
use shardmap::contract::manager::{HostedView, OperatorView, OrderView, TrackedState};
use shardmap::control::ReplicaAssignment;
use shardmap::table::ReplicaState;
use shardmap::{AssignmentVersion, TableUpdate};
use tracing::{info, warn};

use crate::planner::{Demand, Plan, Reason};
use crate::time::Clock;

pub use operator::CommandError;
pub use orders::{OrderReport, OrderRequest};

/// Orders remembered (open ones are never forgotten).
pub const ORDERS_KEPT: usize = 200;

/// One logged decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub at_unix_ms: i64,
    /// A fixed set (`add`, `drain`, `serve`, `node_down`, `pin`, …): it is
    /// also a metric label.
    pub action: &'static str,
    pub shard: String,
    pub node: String,
    pub reason: Reason,
    pub detail: String,
    pub dry_run: bool,
}

impl Decision {
    /// As `/manager` shows it.
    pub fn view(&self) -> shardmap::contract::manager::Decision {
        shardmap::contract::manager::Decision {
            at_unix_ms: self.at_unix_ms,
            action: self.action.to_string(),
            shard: self.shard.clone(),
            node: self.node.clone(),
            reason: self.reason,
            detail: self.detail.clone(),
            dry_run: self.dry_run,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeState {
    pub healthy: bool,
    pub fails: u32,
    pub last_error: Option<String>,
}

/// What sync holds, by node then shard.
pub type Hosted = BTreeMap<String, BTreeMap<String, HostedView>>;

/// The fixed parts of the manager's config the state machine decides with.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Failed health checks in a row before a node is down.
    pub fail_after: u32,
    /// How long a replica drains before it leaves the table.
    pub drain: Duration,
    /// An order running this long at sync without finishing (or queued
    /// while sync moves none of the orders for this long) is cancelled and
    /// its replica withdrawn ([`admission`]).
    pub order_timeout: Duration,
    /// Orders open at sync at most ([`admission`]); 0: no admission.
    pub orders_in_flight_max: usize,
    /// Keep every replica hosted (true), or only those of hot shards.
    pub host_baseline: bool,
    pub scale_in_ratio: f64,
    /// Replica additions allowed per plan.
    pub churn_budget: usize,
    /// False when the demand policy plans no demand: every shard not hot
    /// is cold.
    pub plans_demand: bool,
    /// The proxies a table is pushed to.
    pub proxies: Vec<String>,
    /// Plans are in clock time; orders carry real time.
    pub clock: Clock,
}

/// An operator command (`/manager` routes).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    DryRun(bool),
    Pin {
        shard: String,
        nodes: Option<Vec<String>>,
    },
    DrainNode {
        node: String,
        on: bool,
    },
    Threshold {
        shard: String,
        rps: Option<f64>,
    },
}

/// What happened, as the state machine is told.
#[derive(Debug, Clone)]
pub enum Event {
    /// The topology was read: the nodes, and each shard with its
    /// configured replicas (the assignment of a shard seen first).
    Topology {
        nodes: Vec<String>,
        shards: Vec<(String, Vec<String>)>,
    },
    /// The metadata store's table and operator settings (a start, a term).
    Restored {
        table: Option<TableUpdate>,
        operator: Option<OperatorView>,
    },
    /// A new term: versions number from 1 in `epoch`, every proxy behind.
    TermBegan {
        epoch: u64,
    },
    /// One node's health check answered (or did not).
    NodeProbed {
        node: String,
        result: Result<(), String>,
        now: i64,
    },
    /// What sync holds, or why it could not be asked.
    SyncObserved(Result<Hosted, String>),
    /// Sync accepted this epoch: orders may go out in it.
    EpochAnnounced(u64),
    /// Sync's answer about an open order.
    OrderReported {
        id: u64,
        report: OrderReport,
        now: i64,
    },
    /// Time passed: drains that are due end.
    DrainsDue {
        now: i64,
    },
    /// A standby's plan: shown, not carried out.
    Standby {
        plan: Plan,
        shards: Vec<ShardDemand>,
        now: i64,
    },
    /// The leader's plan at real time `now`, clock time `tnow`.
    PlanComputed {
        plan: Plan,
        shards: Vec<ShardDemand>,
        now: i64,
        tnow: i64,
    },
    /// Sync took an order ([`Effect::Submit`]) under this id.
    OrderSubmitted {
        order: OrderRequest,
        id: u64,
        now: i64,
    },
    /// Sync refused an order, or it could not be sent.
    OrderRefused {
        order: OrderRequest,
        error: String,
        now: i64,
    },
    /// The plan's orders are out: refresh replicas the caches lack.
    PlanCarriedOut {
        now: i64,
    },
    /// The refreshes are out: evict shards that cooled.
    RefreshesOrdered {
        now: i64,
    },
    /// A cold shard left a node's cache ([`Effect::Evict`] with `cold`).
    Evicted {
        shard: String,
        node: String,
        detail: String,
        now: i64,
    },
    /// The round ends: a changed assignment gets a new version.
    RoundFinished {
        now: i64,
    },
    Operator {
        command: Command,
        now: i64,
    },
    /// A target refused the table as not newer; re-send it at `version`.
    Outranked {
        version: AssignmentVersion,
        target: String,
        theirs: AssignmentVersion,
    },
    /// A proxy holds the current version.
    Delivered {
        proxy: String,
    },
    /// A proxy does not (it is sent the table again next round).
    NotDelivered {
        proxy: String,
    },
    /// The metadata store was written, or why not.
    MetadataStatus(Result<(), String>),
}

/// One shard's demand and threshold, as the plan saw them.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardDemand {
    /// Shared with the manager's per-shard slot: a round copies no ids.
    pub id: std::sync::Arc<str>,
    pub threshold: f64,
    pub demand: Demand,
}

/// What the round must do about an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Log the decision (tracing, the bounded list, the counters).
    Record(Decision),
    /// Send a pre-fetch order to sync; its answer comes back as
    /// [`Event::OrderSubmitted`] or [`Event::OrderRefused`].
    Submit(OrderRequest),
    /// Cancel an order at sync.
    Cancel { id: u64 },
    /// Drop a shard from a node's cache. `cold`: a cold eviction, reported
    /// back as [`Event::Evicted`] when sync did it; `None`: a replica that
    /// drained out of the table (a failure is only logged).
    Evict {
        shard: String,
        node: String,
        cold: Option<String>,
    },
    /// Publish the table (`changed`: a new version) and the records.
    Publish { changed: bool },
    /// The operator settings changed: write them to the metadata store.
    PersistOperator,
    /// An operator command was refused, and why.
    Refused(CommandError),
}

/// Orders by how they ended (`/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OrderOutcomes {
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub refused: u64,
}

/// The manager's replica, order and operator state.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub settings: Settings,
    /// The version of `replicas` as published: this manager's epoch and a
    /// counter, moved by a change, or past a target that refused it.
    pub version: AssignmentVersion,
    /// Every shard's replicas, with the log of what changed when (the
    /// table's deltas cost what changed).
    pub replicas: replicas::Replicas,
    pub nodes: BTreeMap<String, NodeState>,
    pub orders: VecDeque<OrderView>,
    /// Draining replicas: since when, and why they leave.
    pub draining_since: BTreeMap<(String, String), (i64, Reason)>,
    /// Replicas being moved away (their replacement serves).
    pub leaving: BTreeMap<String, BTreeSet<String>>,
    /// Operator settings; persisted in the metadata store.
    pub operator: OperatorView,
    pub last_plan: Option<Plan>,
    /// The last dry-run plan's actions, so an unchanged plan is not logged
    /// again every round.
    last_dry_actions: Vec<(&'static str, String, String, Reason)>,
    /// The plan of this round was a dry run (nothing else is ordered).
    round_dry: bool,
    /// The assignment changed this round.
    dirty: bool,
    pub hosted: Hosted,
    pub sync_error: Option<String>,
    pub metadata_error: Option<String>,
    /// Bytes per row of finished orders (moving average): shard sizes.
    pub bytes_per_row: Option<f64>,
    pub rounds: u64,
    pub last_round_unix_ms: i64,
    /// Proxies without the current version (re-sent next round).
    pub proxies_behind: BTreeSet<String>,
    /// The epoch sync has been told leads; until it is the current one,
    /// no orders.
    pub sync_epoch: u64,
    pub demand: BTreeMap<String, Demand>,
    /// Each shard's threshold in the last plan's input.
    thresholds: BTreeMap<String, f64>,
    pub outcomes: OrderOutcomes,
    /// Pre-fetches by reason, and whether they were warm before the rise.
    pub prefetch: prefetch::Prefetches,
    /// How many orders may be open at sync, and which are overdue.
    pub admission: admission::Admission,
}

impl State {
    /// A state that publishes at `version`, before any topology.
    pub fn new(settings: Settings, version: AssignmentVersion, dry_run: bool) -> State {
        let mut st = State {
            admission: admission::Admission::new(settings.orders_in_flight_max),
            settings,
            version,
            ..State::default()
        };
        st.operator.dry_run = dry_run;
        st
    }

    /// Apply one event; the effects to carry out, in order.
    pub fn apply(&mut self, event: Event) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            Event::Topology { nodes, shards } => self.topology(nodes, shards),
            Event::Restored { table, operator } => self.restored(table, operator),
            Event::TermBegan { epoch } => {
                self.version = AssignmentVersion::new(epoch, 1);
                self.proxies_behind = self.settings.proxies.iter().cloned().collect();
            }
            Event::NodeProbed { node, result, now } => self.probed(node, result, now, &mut fx),
            Event::SyncObserved(Ok(hosted)) => {
                self.hosted = hosted;
                self.sync_error = None;
            }
            Event::SyncObserved(Err(e)) => self.sync_error = Some(e),
            Event::EpochAnnounced(epoch) => self.sync_epoch = epoch,
            Event::OrderReported { id, report, now } => self.reported(id, report, now, &mut fx),
            Event::DrainsDue { now } => self.drains_due(now, &mut fx),
            Event::Standby { plan, shards, now } => {
                self.take_demand(shards);
                self.last_plan = Some(plan);
                self.rounds += 1;
                self.last_round_unix_ms = now;
            }
            Event::PlanComputed {
                plan,
                shards,
                now,
                tnow,
            } => {
                let held_before = self.last_plan.as_ref().map_or(0, |p| p.held_down);
                if plan.held_down > 0 && held_before == 0 {
                    warn!(
                        down = plan.held_down,
                        nodes = self.nodes.len(),
                        "most nodes look down: their replicas are held, not dropped, until most answer again"
                    );
                } else if plan.held_down == 0 && held_before > 0 {
                    info!("most nodes answer again: replicas on down nodes are dropped as usual");
                }
                self.prefetch
                    .planned(&plan, &shards, self.settings.scale_in_ratio, now);
                self.take_demand(shards);
                self.carry_out(&plan, now, tnow, &mut fx);
                self.last_plan = Some(plan);
            }
            Event::OrderSubmitted { order, id, now } => self.submitted(order, id, now, &mut fx),
            Event::OrderRefused { order, error, .. } => self.refused(order, error, &mut fx),
            Event::PlanCarriedOut { now } => self.refresh_unhosted(now, &mut fx),
            Event::RefreshesOrdered { now } => self.evict_cold(now, &mut fx),
            Event::Evicted {
                shard,
                node,
                detail,
                now,
            } => {
                if let Some(m) = self.hosted.get_mut(&node) {
                    m.remove(&shard);
                }
                fx.push(Effect::Record(Decision {
                    at_unix_ms: now,
                    action: "evict",
                    shard,
                    node,
                    reason: Reason::Load,
                    detail,
                    dry_run: false,
                }));
            }
            Event::RoundFinished { now } => {
                self.rounds += 1;
                self.last_round_unix_ms = now;
                let open: std::collections::HashSet<u64> = self
                    .orders
                    .iter()
                    .filter(|o| o.state.is_open())
                    .map(|o| o.id)
                    .collect();
                self.prefetch.keep_open(|id| open.contains(&id));
                self.admission.keep_open(|id| open.contains(&id));
                let changed = std::mem::take(&mut self.dirty);
                if changed {
                    self.version = self.version.next();
                }
                fx.push(Effect::Publish { changed });
            }
            Event::Operator { command, now } => self.command(command, now, &mut fx),
            Event::Outranked {
                version,
                target,
                theirs,
            } => {
                if version > self.version {
                    info!(
                        target,
                        theirs = %theirs,
                        ours = %self.version,
                        next = %version,
                        "table refused as not newer; re-sending it past the target's version"
                    );
                    self.version = version;
                }
                self.proxies_behind
                    .extend(self.settings.proxies.iter().cloned());
            }
            Event::Delivered { proxy } => {
                self.proxies_behind.remove(&proxy);
            }
            Event::NotDelivered { proxy } => {
                self.proxies_behind.insert(proxy);
            }
            Event::MetadataStatus(r) => self.metadata_error = r.err(),
        }
        fx
    }

    /// The table as published.
    pub fn update(&self) -> TableUpdate {
        TableUpdate::full(self.version, (*self.replicas).clone())
    }

    /// Orders open at sync (queued or running).
    pub fn in_flight(&self) -> usize {
        self.orders.iter().filter(|o| o.state.is_open()).count()
    }

    /// Orders that may still be submitted at real time `now` (the
    /// admission limit less those open).
    pub fn order_room(&self, now: i64) -> usize {
        let limit = self.admission.limit(self.settings.order_timeout, now);
        limit.saturating_sub(self.in_flight())
    }

    /// Admission as `/manager` and `/metrics` show it.
    pub fn admission_view(&self, now: i64) -> admission::AdmissionView {
        admission::AdmissionView {
            limit: self.admission.limit(self.settings.order_timeout, now),
            cap: self.admission.cap,
            rate_per_s: self.admission.rate(now),
            in_flight: self.in_flight(),
            held_back: self.last_plan.as_ref().map_or(0, |p| p.deferred)
                + self.admission.refreshes_held,
        }
    }

    /// The open order for this shard on this node, if any.
    pub fn open_order(&self, shard: &str, node: &str) -> Option<&OrderView> {
        self.orders
            .iter()
            .find(|o| o.shard == shard && o.node == node && o.state.is_open())
    }

    fn topology(&mut self, nodes: Vec<String>, shards: Vec<(String, Vec<String>)>) {
        for n in &nodes {
            self.nodes.entry(n.clone()).or_insert(NodeState {
                healthy: true,
                ..NodeState::default()
            });
        }
        let known: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
        self.nodes.retain(|n, _| known.contains(n.as_str()));
        for (id, reps) in &shards {
            self.replicas.or_insert_with(id, || {
                reps.iter()
                    .map(|n| ReplicaAssignment {
                        node: n.clone(),
                        state: ReplicaState::Serving,
                    })
                    .collect()
            });
        }
        let ids: BTreeSet<&str> = shards.iter().map(|(id, _)| id.as_str()).collect();
        self.replicas.retain(|id| ids.contains(id));
    }

    fn restored(&mut self, table: Option<TableUpdate>, operator: Option<OperatorView>) {
        if let Some(op) = operator {
            let dry = self.operator.dry_run || op.dry_run;
            self.operator = op;
            self.operator.dry_run = dry;
        }
        let Some(t) = table else { return };
        for (id, reps) in t.shards {
            if let Some(cur) = self.replicas.get_mut(&id) {
                let reps: Vec<_> = reps
                    .into_iter()
                    .filter(|r| self.nodes.contains_key(&r.node))
                    .collect();
                if !reps.is_empty() {
                    *cur = reps;
                }
            }
        }
        match self.version.past(t.version) {
            Some(v) => self.version = v,
            None => warn!(
                stored = %t.version,
                ours = %self.version,
                "the metadata store holds a table of a higher epoch: another manager leads"
            ),
        }
        info!(
            stored = %t.version,
            version = %self.version,
            "continuing from the table in the metadata store"
        );
    }

    fn probed(&mut self, node: String, result: Result<(), String>, now: i64, fx: &mut Vec<Effect>) {
        let fail_after = self.settings.fail_after;
        let ns = self.nodes.entry(node.clone()).or_default();
        let was = ns.healthy;
        match result {
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
        if was != ns.healthy {
            fx.push(Effect::Record(Decision {
                at_unix_ms: now,
                action: if ns.healthy { "node_up" } else { "node_down" },
                shard: String::new(),
                node,
                reason: Reason::Failure,
                detail: ns
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "health checks pass again".into()),
                dry_run: false,
            }));
        }
    }

    fn drains_due(&mut self, now: i64, fx: &mut Vec<Effect>) {
        let drain = self.settings.drain;
        let due: Vec<(String, String, Reason)> = self
            .draining_since
            .iter()
            .filter(|(_, &(since, _))| now - since >= drain.as_millis() as i64)
            .map(|(k, &(_, why))| (k.0.clone(), k.1.clone(), why))
            .collect();
        for (shard, node, why) in due {
            self.draining_since.remove(&(shard.clone(), node.clone()));
            if let Some(reps) = self.replicas.get_mut(&shard) {
                let before = reps.len();
                reps.retain(|r| !(r.node == node && r.state == ReplicaState::Draining));
                self.dirty |= reps.len() != before;
            }
            fx.push(Effect::Record(Decision {
                at_unix_ms: now,
                action: "evict",
                shard: shard.clone(),
                node: node.clone(),
                reason: why,
                detail: format!("drained for {drain:?}; out of the table"),
                dry_run: false,
            }));
            fx.push(Effect::Evict {
                shard,
                node,
                cold: None,
            });
        }
    }

    /// The demand and thresholds of the last plan's input, updated in place
    /// (a round re-inserts none of its ten thousand shards).
    fn take_demand(&mut self, shards: Vec<ShardDemand>) {
        // Every round but one after a topology change: the same ids as
        // the maps hold, in the same (id) order. One walk over both sets
        // the values, no search per shard.
        let same = |keys: &mut dyn ExactSizeIterator<Item = &String>| {
            keys.len() == shards.len() && keys.zip(&shards).all(|(k, s)| **k == *s.id)
        };
        if same(&mut self.thresholds.keys()) && same(&mut self.demand.keys()) {
            for ((t, d), s) in self
                .thresholds
                .values_mut()
                .zip(self.demand.values_mut())
                .zip(shards)
            {
                *t = s.threshold;
                *d = s.demand;
            }
            return;
        }
        for s in &shards {
            match self.thresholds.get_mut(&*s.id) {
                Some(t) => *t = s.threshold,
                None => {
                    self.thresholds.insert(s.id.to_string(), s.threshold);
                }
            }
        }
        if self.thresholds.len() != shards.len() {
            // Shards gone from the topology.
            let ids: std::collections::HashSet<&str> = shards.iter().map(|s| &*s.id).collect();
            self.thresholds.retain(|id, _| ids.contains(id.as_str()));
        }
        for s in shards {
            match self.demand.get_mut(&*s.id) {
                Some(d) => *d = s.demand,
                None => {
                    self.demand.insert(s.id.to_string(), s.demand);
                }
            }
        }
    }
}
