//! What the manager shows, read from a snapshot of its state: the
//! `/manager` views, the decision log and the records written to the
//! metadata store beside the table.

use std::collections::{BTreeMap, VecDeque};

use parking_lot::Mutex;
use serde::Serialize;
use shardmap::contract::manager::{
    Decision as DecisionView, ManagerView, NodeView, ProbeHealth, Refusals, ShardView,
};
use tracing::info;

use super::metadata::{NodeRecord, ShardRecord};
use super::publish::Records;
use super::state::{Decision, State};
use super::topology::Topology;
use super::Manager;

const DECISIONS_KEPT: usize = 500;

/// The last decisions, oldest first.
#[derive(Default)]
pub struct DecisionLog {
    kept: Mutex<VecDeque<Decision>>,
}

impl DecisionLog {
    /// Log a decision (tracing, and the bounded list).
    pub fn record(&self, d: Decision) {
        info!(
            action = d.action,
            shard = %d.shard,
            node = %d.node,
            reason = d.reason.as_str(),
            dry_run = d.dry_run,
            detail = %d.detail,
            "shard manager decision"
        );
        let mut kept = self.kept.lock();
        if kept.len() >= DECISIONS_KEPT {
            kept.pop_front();
        }
        kept.push_back(d);
    }

    /// Newest first.
    pub fn newest(&self, limit: usize) -> Vec<Decision> {
        self.kept.lock().iter().rev().take(limit).cloned().collect()
    }
}

impl Manager {
    /// The manager's state for `GET /manager`.
    pub fn view(&self) -> ManagerView {
        let topo = self.topology();
        let st = self.snapshot();
        let (proxy, metadata) = self.refusals.snapshot();
        let plan = st.last_plan.as_ref();
        let shards = topo
            .shards
            .iter()
            .map(|s| {
                let p = plan.and_then(|p| p.shards.iter().find(|x| x.id == s.id));
                let d = st.demand.get(&s.id).cloned().unwrap_or_default();
                let hosted = st
                    .hosted
                    .iter()
                    .filter_map(|(n, m)| m.get(&s.id).map(|h| (n.clone(), h.clone())))
                    .collect();
                let view = ShardView {
                    replicas: st.replicas.get(&s.id).cloned().unwrap_or_default(),
                    target: p.map(|p| p.target),
                    predicted_rps: d.predicted_rps,
                    observed_rps: d.observed_rps,
                    threshold: p.map(|p| p.threshold),
                    skill: d.skill,
                    pinned: st.operator.pins.get(&s.id).cloned(),
                    hosted,
                };
                (s.id.clone(), view)
            })
            .collect();
        let nodes = topo
            .nodes
            .iter()
            .map(|n| {
                let ns = st.nodes.get(&n.name).cloned().unwrap_or_default();
                let view = NodeView {
                    health: if ns.healthy {
                        ProbeHealth::Up
                    } else {
                        ProbeHealth::Down
                    },
                    last_error: ns.last_error,
                    drained: st.operator.drained.contains(&n.name),
                    load_rps: plan
                        .and_then(|p| p.node_load.get(&n.name).copied())
                        .unwrap_or(0.0),
                    capacity: n.capacity,
                    zone: n.zone.clone(),
                };
                (n.name.clone(), view)
            })
            .collect();
        let lease = self.lease.view();
        ManagerView {
            leader: lease.leader,
            epoch: lease.epoch,
            holder: lease.holder.clone(),
            lease,
            assignment_version: st.version,
            table_refusals: Refusals { proxy, metadata },
            dry_run: st.operator.dry_run,
            rounds: st.rounds,
            last_round_unix_ms: st.last_round_unix_ms,
            replication_factor: topo.replication_factor,
            sync_error: st.sync_error.clone(),
            metadata_error: st.metadata_error.clone(),
            proxies_behind: st.proxies_behind.clone(),
            shards,
            nodes,
            orders: st.orders.iter().cloned().collect(),
            decisions: self.decisions(100),
            deferred: plan.map_or(0, |p| p.deferred),
            operator: st.operator.clone(),
            prefetch: st.prefetch.view.clone(),
            admission: st.admission_view(crate::time::now_unix_ms()),
        }
    }

    /// The last plan (`GET /manager/plan`).
    pub fn plan_view(&self) -> Option<crate::planner::Plan> {
        self.snapshot().last_plan.clone()
    }

    /// Decisions, newest first, as `/manager` shows them.
    pub fn decisions(&self, limit: usize) -> Vec<DecisionView> {
        self.log.newest(limit).iter().map(Decision::view).collect()
    }
}

/// A shard's `content` field in the metadata store.
#[derive(Serialize)]
struct ShardContent<'a> {
    categories: &'a [String],
    regions: &'a [String],
}

/// The shard and node records and the operator settings, as written to
/// the metadata store.
pub fn records(st: &State, topo: &Topology) -> Records {
    // Each shard's target from the last plan, found once per pass rather
    // than by a search of the plan per shard (10k × 10k at scale).
    let plan = st.last_plan.as_ref();
    let targets: std::collections::HashMap<&str, usize> = plan
        .map(|p| p.shards.iter().map(|x| (x.id.as_str(), x.target)).collect())
        .unwrap_or_default();
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
            ShardRecord {
                id: s.id.clone(),
                content: serde_json::to_string(&ShardContent {
                    categories: &s.categories,
                    regions: &s.regions,
                })
                .unwrap_or_default(),
                replicas: serde_json::to_string(&reps).unwrap_or_default(),
                cursors: serde_json::to_string(&cursors).unwrap_or_default(),
                observed_rps: d.observed_rps,
                predicted_rps: d.predicted_rps,
                target: targets.get(s.id.as_str()).copied().unwrap_or(reps.len()),
            }
        })
        .collect();
    let nodes = topo
        .nodes
        .iter()
        .map(|n| NodeRecord {
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
