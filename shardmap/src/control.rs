//! Control-plane wire types: versioned table updates from the shard manager
//! (`PUT /admin/table`) and the table view the proxy exposes
//! (`GET /admin/table`). JSON; field names are part of the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::table::{ReplicaState, RoutingTable};

/// One replica in an update: a node name and the replica's state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaAssignment {
    pub node: String,
    pub state: ReplicaState,
}

/// A versioned replica assignment. Applied only when `version` is newer than
/// the table's; shards it does not name keep their replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableUpdate {
    pub version: u64,
    #[serde(default)]
    pub shards: BTreeMap<String, Vec<ReplicaAssignment>>,
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
    pub version: u64,
    pub skus: usize,
    pub shards: Vec<ShardView>,
    pub nodes: Vec<NodeView>,
}

impl TableView {
    /// The view of `table`, with node health and load from `node_state`.
    pub fn of(table: &RoutingTable, node_state: impl Fn(usize) -> (NodeHealth, u64)) -> TableView {
        TableView {
            version: table.version,
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
