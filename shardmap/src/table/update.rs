//! The next table from the current one: a manager's update
//! ([`RoutingTable::apply`]) or a reload ([`RoutingTable::rebase`]). Both
//! keep every part of the current table that did not change — the layout
//! when the cells, nodes and catalog are the same, and each shard's entry
//! when its assignment and its config are — so their cost follows what
//! changed, plus one pointer copy per shard.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Replica, ReplicaState, RoutingTable, ShardEntry, TableError};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::control::{ReplicaAssignment, TableUpdate};

impl RoutingTable {
    /// Apply a versioned update from the shard manager: a new table with the
    /// update's replica assignment, at the update's assignment version and
    /// this table's config generation.
    ///
    /// Rejected when its version is not newer than this table's, when it is
    /// a delta (`base` set) computed from another version than this table's
    /// ([`TableError::BaseMismatch`]: the sender falls back to the full
    /// table), or when it names shards or nodes this table does not know.
    /// Shards the update does not mention keep their replicas; shards it
    /// lists in `removed` go back to their configured replicas.
    pub fn apply(&self, update: &TableUpdate) -> Result<RoutingTable, TableError> {
        if update.version <= self.assignment_version {
            return Err(TableError::Stale {
                got: update.version,
                current: self.assignment_version,
            });
        }
        if let Some(base) = update.base {
            if base != self.assignment_version {
                return Err(TableError::BaseMismatch {
                    base,
                    current: self.assignment_version,
                });
            }
        }
        // Check everything before building anything.
        let mut changed: Vec<(usize, Vec<Replica>)> = Vec::new();
        for (shard, replicas) in &update.shards {
            let idx = self
                .shard_by_id(shard)
                .ok_or_else(|| TableError::UnknownShard(shard.clone()))?
                as usize;
            let out = self.replicas_of(shard, replicas)?;
            if self.shards[idx].replicas != out {
                changed.push((idx, out));
            }
        }
        for shard in &update.removed {
            let idx = self
                .shard_by_id(shard)
                .ok_or_else(|| TableError::UnknownShard(shard.clone()))?
                as usize;
            if update.shards.contains_key(shard) {
                return Err(TableError::AssignedAndRemoved(shard.clone()));
            }
            let out = self.configured(&self.shards[idx].configured);
            if self.shards[idx].replicas != out {
                changed.push((idx, out));
            }
        }
        let mut next = self.clone();
        next.assignment_version = update.version;
        for (idx, replicas) in changed {
            next.shards[idx] = Arc::new(self.shards[idx].with_replicas(replicas));
        }
        Ok(next)
    }

    /// An update's replicas for `shard` as this table's nodes, checked.
    fn replicas_of(
        &self,
        shard: &str,
        replicas: &[ReplicaAssignment],
    ) -> Result<Vec<Replica>, TableError> {
        let mut out: Vec<Replica> = Vec::with_capacity(replicas.len());
        for ReplicaAssignment { node, state } in replicas {
            let idx = self
                .node_by_name(node)
                .ok_or_else(|| TableError::UnknownNode {
                    shard: shard.to_string(),
                    node: node.clone(),
                })?;
            if out.iter().any(|r| r.node == idx) {
                return Err(TableError::DuplicateReplica {
                    shard: shard.to_string(),
                    node: node.clone(),
                });
            }
            out.push(Replica {
                node: idx,
                state: *state,
            });
        }
        if !out.iter().any(|r| r.state == ReplicaState::Serving) {
            return Err(TableError::NoServing(shard.to_string()));
        }
        Ok(out)
    }

    /// Rebuild this table on a new config (reload), as the next config
    /// generation: shards and nodes that survive keep their current
    /// replicas, and the table keeps its assignment version, so the
    /// manager's next update (numbered after the one applied) still
    /// applies; new shards, and shards whose configured replicas changed,
    /// take the config's.
    ///
    /// What did not change is kept, not rebuilt: the layout (cells, region
    /// pools, indexes) when the shards' cells, the nodes and the catalog
    /// are the same, and the entry of every shard whose config and
    /// replicas are the same. A reload that changes one shard's settings
    /// builds one entry.
    pub fn rebase(&self, config: &Config, catalog: Arc<Catalog>) -> RoutingTable {
        let same_nodes = *self.nodes == config.nodes[..];
        let same_layout = same_nodes
            && Arc::ptr_eq(&self.catalog, &catalog)
            && self.shards.len() == config.shards.len()
            && self
                .shards
                .iter()
                .zip(&config.shards)
                .all(|(e, s)| e.same_cells(s));
        let mut next = if same_layout {
            self.clone()
        } else {
            RoutingTable::layout(config, catalog)
        };
        next.assignment_version = self.assignment_version;
        next.config_generation = self.config_generation.saturating_add(1);
        // Old node index → new node index, when the nodes moved.
        let renumber: Option<HashMap<u32, u32>> = (!same_nodes).then(|| {
            self.nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| Some((i as u32, next.node_by_name(&n.name)?)))
                .collect()
        });
        next.shards = config
            .shards
            .iter()
            .map(|s| {
                let Some(old) = self.shard_by_id(&s.id) else {
                    return Arc::new(ShardEntry::new(s, next.configured(&s.replicas)));
                };
                let old = &self.shards[old as usize];
                // A config that changed this shard's replicas wins over
                // the current (possibly manager-given) assignment.
                if old.configured != s.replicas {
                    return Arc::new(ShardEntry::new(s, next.configured(&s.replicas)));
                }
                let replicas: Vec<Replica> = match &renumber {
                    None => old.replicas.clone(),
                    Some(map) => old
                        .replicas
                        .iter()
                        .filter_map(|r| {
                            map.get(&r.node).map(|&node| Replica {
                                node,
                                state: r.state,
                            })
                        })
                        .collect(),
                };
                if old.same_spec(s) && replicas == old.replicas {
                    old.clone()
                } else {
                    Arc::new(ShardEntry::new(s, replicas))
                }
            })
            .collect();
        next
    }
}
