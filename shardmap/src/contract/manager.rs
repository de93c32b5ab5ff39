//! The shard manager's view, `GET /manager` on the forecaster's listener:
//! what the proxy's dashboard and operators read. The shape is the one
//! the manager has always sent; the field names are the contract.
//!
//! Views accept fields they do not know (an operator's tool should not
//! break because the manager shows more), but every field here must be
//! present, so a rename on the manager's side is an error on the reader's.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::control::{AssignmentVersion, ReplicaAssignment};

/// Why the manager did something; logged with every decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A node failed or was lost: restore the replication factor.
    Failure,
    /// An operator asked (pin, drain, threshold, manual order).
    Operator,
    /// Predicted demand crossed the threshold or a node's capacity.
    Forecast,
    /// Observed demand did (or fell back below it: scale-in).
    Load,
    /// A node is over capacity: a replica moves to a less loaded one.
    Balance,
    /// A replica in the table that its node's cache does not hold yet.
    Initial,
}

impl Reason {
    /// Every reason, in declaration order (a bounded label set).
    pub const ALL: [Reason; 6] = [
        Reason::Failure,
        Reason::Operator,
        Reason::Forecast,
        Reason::Load,
        Reason::Balance,
        Reason::Initial,
    ];

    /// The snake_case name (also a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Failure => "failure",
            Reason::Operator => "operator",
            Reason::Forecast => "forecast",
            Reason::Load => "load",
            Reason::Balance => "balance",
            Reason::Initial => "initial",
        }
    }
}

/// A pre-fetch order as the manager tracks it: sync's states, and
/// `failed` for one the manager gave up on (timed out, refused, lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackedState {
    Queued,
    Running,
    Done,
    Cancelled,
    Failed,
}

impl TrackedState {
    /// Still at sync: queued or running.
    pub fn is_open(self) -> bool {
        matches!(self, TrackedState::Queued | TrackedState::Running)
    }
}

impl From<super::OrderState> for TrackedState {
    fn from(s: super::OrderState) -> Self {
        match s {
            super::OrderState::Queued => TrackedState::Queued,
            super::OrderState::Running => TrackedState::Running,
            super::OrderState::Done => TrackedState::Done,
            super::OrderState::Cancelled => TrackedState::Cancelled,
        }
    }
}

/// A pre-fetch order the manager submitted, as it tracks it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct OrderView {
    pub id: u64,
    pub shard: String,
    pub node: String,
    pub state: TrackedState,
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

/// One logged decision.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Decision {
    pub at_unix_ms: i64,
    /// `add_replica`, `serve`, `evict`, `node_down`, … (the manager's words).
    pub action: String,
    pub shard: String,
    pub node: String,
    pub reason: Reason,
    pub detail: String,
    pub dry_run: bool,
}

/// A shard's copy on a node, as sync reported it to the manager.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct HostedView {
    pub cursor: u64,
    pub rows: u64,
    pub warm: bool,
}

/// One shard in the manager's view.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ShardView {
    pub replicas: Vec<ReplicaAssignment>,
    /// Replicas wanted by the last plan.
    pub target: Option<usize>,
    pub predicted_rps: f64,
    pub observed_rps: f64,
    pub threshold: Option<f64>,
    pub skill: f64,
    pub pinned: Option<Vec<String>>,
    /// Node → its copy.
    pub hosted: BTreeMap<String, HostedView>,
}

/// Node health as the manager's probes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeHealth {
    Up,
    Down,
}

/// One node in the manager's view.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct NodeView {
    pub health: ProbeHealth,
    pub last_error: Option<String>,
    pub drained: bool,
    pub load_rps: f64,
    pub capacity: f64,
    pub zone: Option<String>,
}

/// The manager's lease on leadership.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct LeaseView {
    pub leader: bool,
    pub epoch: u64,
    pub holder: Option<String>,
    /// This manager's id.
    pub id: String,
    pub lease_ms: u64,
}

/// Tables refused as not newer, by target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Refusals {
    pub proxy: u64,
    pub metadata: u64,
}

/// Operator settings (persisted in the metadata store).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct OperatorView {
    pub dry_run: bool,
    pub pins: BTreeMap<String, Vec<String>>,
    pub drained: BTreeSet<String>,
    pub thresholds: BTreeMap<String, f64>,
}

/// What the manager's pre-fetches bought, counted since it started
/// (`forecaster/src/manager/state/prefetch.rs` defines each count).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct PrefetchView {
    /// Pre-fetch orders sync took (adds and refreshes), by the reason that
    /// drove them.
    pub by_reason: BTreeMap<Reason, u64>,
    /// Demand-driven (`forecast` or `load`) pre-fetched replicas whose
    /// order finished before their shard's observed demand first crossed
    /// its threshold in that episode.
    pub warm_before_rise: u64,
    /// ... that finished at or after the rise.
    pub warm_after_rise: u64,
    /// ... whose episode ended without a rise.
    pub no_rise: u64,
    /// Episodes whose observed demand crossed the threshold.
    pub rises: u64,
    /// Rises with at least one pre-fetched replica warm before them.
    pub rises_met_warm: u64,
}

impl PrefetchView {
    /// Pre-fetches driven by `reason`.
    pub fn driven_by(&self, reason: Reason) -> u64 {
        self.by_reason.get(&reason).copied().unwrap_or(0)
    }
}

/// Admission of pre-fetch orders (`forecaster/src/manager/state/admission.rs`):
/// how many may be open at sync, and how many wait in the manager.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AdmissionView {
    /// Orders open at sync at most (the lower of the two below).
    pub limit: usize,
    /// The configured cap (`manager.orders_in_flight_max`).
    pub cap: usize,
    /// What sync finished per second over the last window, if anything.
    pub rate_per_s: Option<f64>,
    /// Orders open at sync now.
    pub in_flight: usize,
    /// Orders wanted but held back in the last round (additions the
    /// planner deferred for want of room, refreshes not ordered).
    pub held_back: usize,
}

/// `GET /manager`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ManagerView {
    pub leader: bool,
    pub epoch: u64,
    pub holder: Option<String>,
    pub lease: LeaseView,
    pub assignment_version: AssignmentVersion,
    pub table_refusals: Refusals,
    pub dry_run: bool,
    pub rounds: u64,
    pub last_round_unix_ms: i64,
    pub replication_factor: usize,
    pub sync_error: Option<String>,
    pub metadata_error: Option<String>,
    pub proxies_behind: BTreeSet<String>,
    pub shards: BTreeMap<String, ShardView>,
    pub nodes: BTreeMap<String, NodeView>,
    /// Oldest first.
    pub orders: Vec<OrderView>,
    /// Newest first.
    pub decisions: Vec<Decision>,
    /// Actions the last plan put off (churn budget).
    pub deferred: usize,
    pub operator: OperatorView,
    pub prefetch: PrefetchView,
    /// Absent from managers before admission existed.
    #[serde(default)]
    pub admission: AdmissionView,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manager's `view()` as it builds it today, with every field.
    pub(crate) const VIEW: &str = r#"{"leader":true,"epoch":2,"holder":"manager-1-a","lease":{"leader":true,"epoch":2,"holder":"manager-1-a","id":"manager-1-a","lease_ms":3000},
        "assignment_version":{"epoch":2,"counter":7},"table_refusals":{"proxy":0,"metadata":1},"dry_run":false,"rounds":12,
        "last_round_unix_ms":1700000000000,"replication_factor":2,"sync_error":null,"metadata_error":null,"proxies_behind":[],
        "shards":{"UK/SEASONAL":{"replicas":[{"node":"node-a","state":"serving"},{"node":"node-c","state":"warming"}],"target":3,
          "predicted_rps":40.5,"observed_rps":3.25,"threshold":2.0,"skill":0.5,"pinned":null,"hosted":{"node-a":{"cursor":9,"rows":3,"warm":true}}}},
        "nodes":{"node-a":{"health":"up","last_error":null,"drained":false,"load_rps":3.5,"capacity":100.0,"zone":null}},
        "orders":[{"id":1,"shard":"UK/SEASONAL","node":"node-c","state":"running","priority":0.5,"deadline_unix_ms":1700000060000,
          "submitted_unix_ms":1700000000000,"finished_unix_ms":null,"rows":0,"bytes":0,"reason":"forecast","replaces":null,"adds_replica":true,"deadline_met":null}],
        "decisions":[{"at_unix_ms":1,"action":"add_replica","shard":"UK/SEASONAL","node":"node-c","reason":"forecast","detail":"p90 above threshold","dry_run":false}],
        "deferred":0,"operator":{"dry_run":false,"pins":{},"drained":[],"thresholds":{}},
        "prefetch":{"by_reason":{"forecast":3,"load":1},"warm_before_rise":2,"warm_after_rise":1,"no_rise":0,"rises":2,"rises_met_warm":1},
        "admission":{"limit":600,"cap":1000,"rate_per_s":10.0,"in_flight":1,"held_back":4}}"#;

    #[test]
    fn the_view_round_trips_and_a_rename_is_an_error() {
        let v: ManagerView = serde_json::from_str(VIEW).unwrap();
        assert_eq!(v.orders[0].state, TrackedState::Running);
        assert_eq!(v.assignment_version, AssignmentVersion::new(2, 7));
        assert_eq!(v.prefetch.driven_by(Reason::Forecast), 3);
        assert_eq!(v.prefetch.driven_by(Reason::Failure), 0);
        let back = serde_json::to_value(&v).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(VIEW).unwrap()
        );
        let renamed = VIEW.replace("\"adds_replica\"", "\"is_add\"");
        assert!(serde_json::from_str::<ManagerView>(&renamed).is_err());
        let unknown = VIEW.replace("\"running\"", "\"paused\"");
        assert!(serde_json::from_str::<ManagerView>(&unknown).is_err());
        // A field the reader does not know is fine (views grow).
        let grown = VIEW.replacen("{\"leader\"", "{\"new_field\":1,\"leader\"", 1);
        assert!(serde_json::from_str::<ManagerView>(&grown).is_ok());
    }
}
