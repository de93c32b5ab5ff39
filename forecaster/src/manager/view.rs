//! What the manager shows, read from a snapshot of its state: the
//! `/manager` views, the decision log and the records written to the
//! metadata store beside the table.

use std::collections::{BTreeMap, VecDeque};

use parking_lot::Mutex;
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
    pub fn view(&self) -> serde_json::Value {
        let topo = self.topology();
        let st = self.snapshot();
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
            "decisions": self.log.newest(100),
            "deferred": plan.map_or(0, |p| p.deferred),
            "operator": st.operator,
        })
    }

    /// The last plan (`GET /manager/plan`).
    pub fn plan_view(&self) -> serde_json::Value {
        serde_json::to_value(&self.snapshot().last_plan).unwrap_or_default()
    }

    /// Decisions, newest first.
    pub fn decisions(&self, limit: usize) -> Vec<Decision> {
        self.log.newest(limit)
    }
}

/// The shard and node records and the operator settings, as written to
/// the metadata store.
pub fn records(st: &State, topo: &Topology) -> Records {
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
            ShardRecord {
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
