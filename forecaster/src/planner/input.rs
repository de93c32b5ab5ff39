//! What the planner is given: nodes, shards with their replicas and
//! demand, and the round's settings.

use serde::Serialize;

use shardmap::table::ReplicaState;

use super::Economics;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInput {
    pub name: String,
    /// Requests per second the node is sized for.
    pub capacity: f64,
    pub zone: Option<String>,
    /// Passing health checks.
    pub healthy: bool,
    /// Drained by an operator: its replicas move away, nothing new lands.
    pub drained: bool,
}

impl NodeInput {
    pub(super) fn usable(&self) -> bool {
        self.healthy && !self.drained
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaInput {
    pub node: String,
    pub state: ReplicaState,
}

/// What the forecasts and the telemetry say about one shard.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Demand {
    /// The planning quantile of predicted demand, requests/s (the highest
    /// rate over the horizons considered).
    pub predicted_rps: f64,
    /// When that predicted level starts, Unix ms.
    pub rise_at_ms: i64,
    /// Recent observed demand, requests/s.
    pub observed_rps: f64,
    /// Forecast skill in [0, 1] (1 = perfect); weights pre-fetch priority.
    pub skill: f64,
    /// P(demand in the hour in progress crosses the threshold) from the
    /// forecast's quantiles, when the policy has a probabilistic forecast:
    /// with [`Economics`] enabled it and `p_exceed_next`, not the planning
    /// quantile, decide the extra copy.
    pub p_exceed: Option<f64>,
    /// P(the next hour crosses the threshold): it asks for a copy now only
    /// when an order placed a round later could not serve before that hour
    /// starts, or the copy is already held ([`Economics::priced`]).
    pub p_exceed_next: Option<f64>,
    /// When the next hour starts, clock ms (0: unknown, the next hour is
    /// always in reach).
    pub next_hour_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardInput {
    pub id: String,
    /// Requests/s above which the shard gets an extra, pre-fetched replica.
    pub threshold: f64,
    pub replicas: Vec<ReplicaInput>,
    pub demand: Demand,
    /// Bytes a full copy of the shard takes (estimate).
    pub bytes: u64,
    /// Operator pin: the replicas must be exactly these nodes.
    pub pinned: Option<Vec<String>>,
    /// Nodes whose replica is being moved away (a replacement was added):
    /// drained once enough replicas elsewhere serve.
    pub leaving: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanInput {
    pub now_ms: i64,
    pub replication_factor: usize,
    /// Replica additions (transfers) allowed per round.
    pub churn_budget: usize,
    /// Fraction of a node's capacity the planner fills, in (0, 1].
    pub max_utilization: f64,
    /// Scale in when observed demand is below `threshold × scale_in_ratio`.
    pub scale_in_ratio: f64,
    /// Transfer bandwidth, bytes/s, for deadline estimates.
    pub bandwidth_bytes_per_s: f64,
    /// The value of a copy against its memory ([`value`]).
    pub economics: Economics,
    pub nodes: Vec<NodeInput>,
    pub shards: Vec<ShardInput>,
}
