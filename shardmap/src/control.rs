//! Control-plane wire types: versioned table updates from the shard manager
//! (`PUT /admin/table`), the proxy's answer to one, and the table view the
//! proxy exposes (`GET /admin/table`). JSON; field names are part of the API.
//!
//! A table carries two numbers (DESIGN.md, "Versions"): the
//! [`AssignmentVersion`], owned by the leading shard manager and changed
//! only by an applied [`TableUpdate`], and the proxy's config generation,
//! bumped by every applied config reload. Compare-and-set looks at the
//! assignment version only, so a reload never invalidates the manager's
//! next assignment.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::table::{ReplicaState, RoutingTable};

/// One replica in an update: a node name and the replica's state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaAssignment {
    pub node: String,
    pub state: ReplicaState,
}

/// The version of a replica assignment: the epoch of the manager that made
/// it (its fencing token), then a counter that manager advances. Ordered
/// lexicographically, epoch first, so a manager of a higher epoch outranks
/// every assignment of a lower one whatever their counters.
///
/// JSON: `{"epoch": 1, "counter": 42}`; a bare integer `42` reads as epoch
/// 0 (hand-written updates and tables written before epochs existed).
/// Shown as `1:42`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(from = "WireVersion")]
pub struct AssignmentVersion {
    pub epoch: u64,
    pub counter: u64,
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "an assignment version: {\"epoch\": E, \"counter\": N}, or a bare counter N (epoch 0)"
)]
enum WireVersion {
    Bare(u64),
    Full(WireVersionFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireVersionFull {
    epoch: u64,
    counter: u64,
}

impl From<WireVersion> for AssignmentVersion {
    fn from(w: WireVersion) -> Self {
        match w {
            WireVersion::Bare(counter) => AssignmentVersion { epoch: 0, counter },
            WireVersion::Full(f) => AssignmentVersion {
                epoch: f.epoch,
                counter: f.counter,
            },
        }
    }
}

impl AssignmentVersion {
    /// The version of a table no manager has assigned yet (the config's
    /// replicas): every update is newer.
    pub const NONE: AssignmentVersion = AssignmentVersion {
        epoch: 0,
        counter: 0,
    };

    pub const fn new(epoch: u64, counter: u64) -> Self {
        AssignmentVersion { epoch, counter }
    }

    /// The next version of the same epoch.
    pub fn next(self) -> Self {
        AssignmentVersion {
            counter: self.counter.saturating_add(1),
            ..self
        }
    }

    /// The smallest version of this epoch that is at least `self` and newer
    /// than `other`: what a manager at `self` sends to outrank a table at
    /// `other`. `None` when no version of this epoch can (`other` has a
    /// higher epoch: another manager leads).
    pub fn past(self, other: AssignmentVersion) -> Option<AssignmentVersion> {
        if other < self {
            return Some(self);
        }
        if other.epoch > self.epoch {
            return None;
        }
        Some(AssignmentVersion {
            epoch: self.epoch,
            counter: other.counter.checked_add(1)?,
        })
    }
}

impl fmt::Display for AssignmentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.counter)
    }
}

/// A versioned replica assignment. Applied only when `version` is newer than
/// the table's assignment version; shards it does not name keep their
/// replicas, shards in `removed` go back to their configured replicas.
///
/// Two kinds: a full table (`base` absent: the whole assignment, what the
/// metadata store keeps and what a proxy that restarted or fell behind
/// takes), and a delta (`base` set: only the shards whose replicas changed
/// since the assignment at `base`, and the shards no longer assigned).
/// A delta applies only to a table at exactly `base`; any other table
/// refuses it (`409` with its version) and is sent the full table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableUpdate {
    pub version: AssignmentVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<AssignmentVersion>,
    #[serde(default)]
    pub shards: BTreeMap<String, Vec<ReplicaAssignment>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

impl TableUpdate {
    /// A full table: the whole assignment at `version`.
    pub fn full(
        version: AssignmentVersion,
        shards: BTreeMap<String, Vec<ReplicaAssignment>>,
    ) -> TableUpdate {
        TableUpdate {
            version,
            shards,
            ..TableUpdate::default()
        }
    }

    /// The delta that turns the full table `prev` into the full table
    /// `self`: the shards whose replicas differ, and those `prev` had and
    /// `self` has not. One ordered walk over both (their maps are sorted).
    pub fn delta_from(&self, prev: &TableUpdate) -> TableUpdate {
        let mut shards = BTreeMap::new();
        let mut removed = vec![];
        let mut old = prev.shards.iter().peekable();
        for (id, reps) in &self.shards {
            while let Some((o, _)) = old.next_if(|(o, _)| *o < id) {
                removed.push(o.clone());
            }
            match old.next_if(|(o, _)| *o == id) {
                Some((_, r)) if r == reps => {}
                _ => {
                    shards.insert(id.clone(), reps.clone());
                }
            }
        }
        removed.extend(old.map(|(o, _)| o.clone()));
        TableUpdate {
            version: self.version,
            base: Some(prev.version),
            shards,
            removed,
        }
    }

    /// The full table after applying `delta` to this full table (whose
    /// version must be the delta's base), or `None` when it is not.
    pub fn then(&self, delta: &TableUpdate) -> Option<TableUpdate> {
        if delta.base != Some(self.version) {
            return None;
        }
        let mut shards = self.shards.clone();
        for r in &delta.removed {
            shards.remove(r);
        }
        for (id, reps) in &delta.shards {
            shards.insert(id.clone(), reps.clone());
        }
        Some(TableUpdate::full(delta.version, shards))
    }
}

/// The proxy's answer to `PUT /admin/table`: the versions its table has
/// after the request. 200 when the update applied (`assignment_version` is
/// the update's); 409 when it was not newer, with `error` and the
/// assignment version the proxy keeps, which a manager must outrank.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct UpdateAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub assignment_version: AssignmentVersion,
    pub config_generation: u64,
}

/// Health of a node as the proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeHealth {
    Healthy,
    /// Passively ejected after failures; returns after a good health check.
    Ejected,
    /// Failing active health checks.
    Down,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NodeView {
    pub name: String,
    pub address: String,
    pub capacity: f64,
    pub zone: Option<String>,
    pub health: NodeHealth,
    pub in_flight: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ShardView {
    pub id: String,
    pub categories: Vec<String>,
    pub regions: Vec<String>,
    pub replicas: Vec<ReplicaAssignment>,
}

/// `GET /admin/table`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TableView {
    /// The version of the shard manager's assignment in the table
    /// ([`AssignmentVersion::NONE`] before the first update).
    pub assignment_version: AssignmentVersion,
    /// Config reloads applied since the proxy started, counting its start
    /// as 1.
    pub config_generation: u64,
    pub skus: usize,
    pub shards: Vec<ShardView>,
    pub nodes: Vec<NodeView>,
}

impl TableView {
    /// The view of `table`, with node health and load from `node_state`.
    pub fn of(table: &RoutingTable, node_state: impl Fn(usize) -> (NodeHealth, u64)) -> TableView {
        TableView {
            assignment_version: table.assignment_version,
            config_generation: table.config_generation,
            skus: table.catalog.len(),
            shards: table
                .shards
                .iter()
                .map(|s| ShardView {
                    id: s.id.clone(),
                    categories: s.categories.clone(),
                    regions: s.regions.clone(),
                    replicas: s
                        .replicas
                        .iter()
                        .map(|r| ReplicaAssignment {
                            node: table.nodes[r.node as usize].name.clone(),
                            state: r.state,
                        })
                        .collect(),
                })
                .collect(),
            nodes: table
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let (health, in_flight) = node_state(i);
                    NodeView {
                        name: n.name.clone(),
                        address: n.address.clone(),
                        capacity: n.capacity,
                        zone: n.zone.clone(),
                        health,
                        in_flight,
                    }
                })
                .collect(),
        }
    }
}
