//! The routing table: the immutable, versioned snapshot the proxy reads per
//! request (sku → category → (category, region) cell → shard → replicas).
//!
//! Built whole by [`RoutingTable::build`] off the request path, then stored
//! in an `ArcSwap` by the proxy; a lookup ([`RoutingTable::route`]) takes no
//! lock, does no I/O and allocates nothing.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::{sku_hash, Catalog, CategoryId};
use crate::config::{Config, NodeSpec, Volatility};
use crate::control::{ReplicaAssignment, TableUpdate};

/// Index of a shard within one table.
pub type ShardIdx = u32;
/// Index of a node within one table.
pub type NodeIdx = u32;

const NO_SHARD: u32 = u32::MAX;

/// The life cycle of one copy of a shard on one node (make-before-break).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Being pre-fetched; receives no traffic.
    Warming,
    /// Warm and routed to.
    Serving,
    /// Leaving: routed to only when no serving replica is usable.
    Draining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Replica {
    pub node: NodeIdx,
    pub state: ReplicaState,
}

#[derive(Debug, Clone)]
pub struct ShardEntry {
    pub id: String,
    pub categories: Vec<String>,
    pub regions: Vec<String>,
    pub volatility: Volatility,
    pub threshold: Option<f64>,
    /// The replicas the config gave (before any shard-manager update); a
    /// reload that leaves them unchanged keeps the manager's assignment.
    pub configured: Vec<String>,
    pub replicas: Vec<Replica>,
    /// Nodes of serving replicas, then draining ones: the order replica
    /// choice tries them in.
    pub serving: Vec<NodeIdx>,
    pub draining: Vec<NodeIdx>,
}

/// How a request's shard was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteHow {
    /// The sku is in the catalog and its (category, region) cell has a shard.
    Cell,
    /// Known sku, but no shard covers its cell in this region: the
    /// category's first shard.
    CategoryFallback,
    /// Unknown sku: a consistent hash over the shards of its region (or all).
    Hash,
}

/// The immutable routing snapshot.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    pub version: u64,
    pub catalog: Arc<Catalog>,
    pub regions: Vec<String>,
    region_index: HashMap<String, u16>,
    /// `cell_shard[cat * regions.len() + region]`
    cell_shard: Vec<u32>,
    /// first shard per category (for a sku whose region has no cell)
    cat_shard: Vec<u32>,
    /// shards per region (for unknown skus), and all shards
    region_shards: Vec<Vec<ShardIdx>>,
    all_shards: Vec<ShardIdx>,
    pub shards: Vec<ShardEntry>,
    shard_index: HashMap<String, ShardIdx>,
    pub nodes: Vec<NodeSpec>,
    node_index: HashMap<String, NodeIdx>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("table update version {got} is not newer than the current version {current}")]
    Stale { got: u64, current: u64 },
    #[error("table update names unknown shard `{0}`")]
    UnknownShard(String),
    #[error("table update names unknown node `{node}` for shard `{shard}`")]
    UnknownNode { shard: String, node: String },
    #[error("table update gives shard `{shard}` node `{node}` twice")]
    DuplicateReplica { shard: String, node: String },
    #[error("table update leaves shard `{0}` with no serving replica")]
    NoServing(String),
}

impl RoutingTable {
    /// Build a table from a validated config and a catalog, at `version`.
    pub fn build(config: &Config, catalog: Arc<Catalog>, version: u64) -> RoutingTable {
        let assignment: Vec<Vec<Replica>> = config
            .shards
            .iter()
            .map(|s| configured(config, s))
            .collect();
        Self::assemble(config, catalog, version, assignment)
    }

    fn assemble(
        config: &Config,
        catalog: Arc<Catalog>,
        version: u64,
        assignment: Vec<Vec<Replica>>,
    ) -> RoutingTable {
        let mut regions: Vec<String> = vec![];
        let mut region_index: HashMap<String, u16> = HashMap::new();
        for s in &config.shards {
            for r in &s.regions {
                if !region_index.contains_key(r) {
                    region_index.insert(r.clone(), regions.len() as u16);
                    regions.push(r.clone());
                }
            }
        }
        let ncat = catalog.categories.len();
        let nreg = regions.len();
        let mut cell_shard = vec![NO_SHARD; ncat * nreg];
        let mut cat_shard = vec![NO_SHARD; ncat];
        let mut region_shards = vec![vec![]; nreg];
        let mut shards = Vec::with_capacity(config.shards.len());
        let mut shard_index = HashMap::new();
        for (si, (s, replicas)) in config.shards.iter().zip(assignment).enumerate() {
            let si = si as u32;
            shard_index.insert(s.id.clone(), si);
            for r in &s.regions {
                let ri = region_index[r] as usize;
                if !region_shards[ri].contains(&si) {
                    region_shards[ri].push(si);
                }
                for c in &s.categories {
                    if let Some(ci) = catalog.category_id(c) {
                        cell_shard[ci as usize * nreg + ri] = si;
                        if cat_shard[ci as usize] == NO_SHARD {
                            cat_shard[ci as usize] = si;
                        }
                    }
                }
            }
            let serving = replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Serving)
                .map(|r| r.node)
                .collect();
            let draining = replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Draining)
                .map(|r| r.node)
                .collect();
            shards.push(ShardEntry {
                id: s.id.clone(),
                categories: s.categories.clone(),
                regions: s.regions.clone(),
                volatility: s.volatility,
                threshold: s.threshold,
                configured: s.replicas.clone(),
                replicas,
                serving,
                draining,
            });
        }
        let node_index = config
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i as NodeIdx))
            .collect();
        RoutingTable {
            version,
            catalog,
            regions,
            region_index,
            cell_shard,
            cat_shard,
            region_shards,
            all_shards: (0..shards.len() as u32).collect(),
            shards,
            shard_index,
            nodes: config.nodes.clone(),
            node_index,
        }
    }

    /// Apply a versioned update from the shard manager: a new table with the
    /// update's replica assignment, at the update's version. Rejected when
    /// not newer, or when it names shards or nodes this table does not know.
    /// Shards the update does not mention keep their replicas.
    pub fn apply(&self, config: &Config, update: &TableUpdate) -> Result<RoutingTable, TableError> {
        if update.version <= self.version {
            return Err(TableError::Stale {
                got: update.version,
                current: self.version,
            });
        }
        let mut assignment: Vec<Vec<Replica>> =
            self.shards.iter().map(|s| s.replicas.clone()).collect();
        // A config reload may have changed shards since `self` was built:
        // rebuild the assignment against `config`'s shard list.
        let mut by_id: HashMap<&str, Vec<Replica>> = HashMap::new();
        for (s, a) in self.shards.iter().zip(assignment.drain(..)) {
            by_id.insert(s.id.as_str(), a);
        }
        for (shard, replicas) in &update.shards {
            if !config.shards.iter().any(|s| &s.id == shard) {
                return Err(TableError::UnknownShard(shard.clone()));
            }
            let mut out = vec![];
            for ReplicaAssignment { node, state } in replicas {
                let idx = config
                    .node_index(node)
                    .ok_or_else(|| TableError::UnknownNode {
                        shard: shard.clone(),
                        node: node.clone(),
                    })? as NodeIdx;
                if out.iter().any(|r: &Replica| r.node == idx) {
                    return Err(TableError::DuplicateReplica {
                        shard: shard.clone(),
                        node: node.clone(),
                    });
                }
                out.push(Replica {
                    node: idx,
                    state: *state,
                });
            }
            if !out.iter().any(|r| r.state == ReplicaState::Serving) {
                return Err(TableError::NoServing(shard.clone()));
            }
            by_id.insert(shard.as_str(), out);
        }
        let assignment = config
            .shards
            .iter()
            .map(|s| {
                by_id
                    .remove(s.id.as_str())
                    .unwrap_or_else(|| configured(config, s))
            })
            .collect();
        Ok(Self::assemble(
            config,
            self.catalog.clone(),
            update.version,
            assignment,
        ))
    }

    /// Rebuild this table's assignment on a new config (reload): shards and
    /// nodes that survive keep their current replicas; new shards take the
    /// config's. The version is `version`.
    pub fn rebase(&self, config: &Config, catalog: Arc<Catalog>, version: u64) -> RoutingTable {
        let assignment = config
            .shards
            .iter()
            .map(|s| {
                let from_config = || configured(config, s);
                let Some(&old) = self.shard_index.get(&s.id) else {
                    return from_config();
                };
                let old = &self.shards[old as usize];
                // A config that changed this shard's replicas wins over
                // the current (possibly manager-given) assignment.
                if old.configured != s.replicas {
                    return from_config();
                }
                old.replicas
                    .iter()
                    .filter_map(|r| {
                        let name = &self.nodes[r.node as usize].name;
                        config.node_index(name).map(|i| Replica {
                            node: i as NodeIdx,
                            state: r.state,
                        })
                    })
                    .collect()
            })
            .collect();
        Self::assemble(config, catalog, version, assignment)
    }

    /// The shard for a request's sku and region. Never fails: an unknown sku
    /// hashes consistently over the shards of its region, or over all.
    #[inline]
    pub fn route(&self, sku: &str, region: Option<&str>) -> (ShardIdx, RouteHow) {
        let region = region.and_then(|r| self.region_id(r));
        if let Some(cat) = self.catalog.get(sku) {
            if let Some(s) = self.cell(cat, region) {
                return (s, RouteHow::Cell);
            }
            let s = self.cat_shard[cat as usize];
            if s != NO_SHARD {
                return (s, RouteHow::CategoryFallback);
            }
        }
        let pool = match region {
            Some(r) if !self.region_shards[r as usize].is_empty() => {
                &self.region_shards[r as usize]
            }
            _ => &self.all_shards,
        };
        let i = jump_hash(sku_hash(sku), pool.len() as u32);
        (pool[i as usize], RouteHow::Hash)
    }

    #[inline]
    fn cell(&self, cat: CategoryId, region: Option<u16>) -> Option<ShardIdx> {
        let r = region?;
        let s = *self
            .cell_shard
            .get(cat as usize * self.regions.len() + r as usize)?;
        (s != NO_SHARD).then_some(s)
    }

    pub fn shard(&self, idx: ShardIdx) -> &ShardEntry {
        &self.shards[idx as usize]
    }

    pub fn shard_by_id(&self, id: &str) -> Option<ShardIdx> {
        self.shard_index.get(id).copied()
    }

    pub fn node_by_name(&self, name: &str) -> Option<NodeIdx> {
        self.node_index.get(name).copied()
    }

    pub fn has_region(&self, r: &str) -> bool {
        self.region_id(r).is_some()
    }

    /// Regions are few (a handful to a few dozen): a scan over short
    /// strings beats hashing the request's region.
    #[inline]
    fn region_id(&self, r: &str) -> Option<u16> {
        if self.regions.len() <= 32 {
            self.regions.iter().position(|x| x == r).map(|i| i as u16)
        } else {
            self.region_index.get(r).copied()
        }
    }
}

/// The replicas a config gives a shard, all serving.
fn configured(config: &Config, s: &crate::config::ShardSpec) -> Vec<Replica> {
    s.replicas
        .iter()
        .filter_map(|n| config.node_index(n))
        .map(|i| Replica {
            node: i as NodeIdx,
            state: ReplicaState::Serving,
        })
        .collect()
}

/// Jump consistent hash (Lamping & Veach): a bucket in `0..n` that moves
/// for only `1/n` of keys when `n` grows by one.
#[inline]
pub fn jump_hash(mut key: u64, n: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    pub(crate) fn config() -> Config {
        Config::from_toml(
            r#"
replication_factor = 2
[listen]
http = ["127.0.0.1:0"]
[[nodes]]
name = "a"
address = "127.0.0.1:1"
[[nodes]]
name = "b"
address = "127.0.0.1:2"
[[nodes]]
name = "c"
address = "127.0.0.1:3"
[[shards]]
id = "UK/X"
categories = ["X"]
regions = ["UK"]
[[shards]]
id = "INTL/X"
categories = ["X"]
regions = ["INTL"]
[[shards]]
id = "ALL/Y"
categories = ["Y"]
regions = ["UK", "INTL"]
[[routes]]
name = "inv"
path = "/inventory/{sku}"
"#,
            Path::new("t.toml"),
        )
        .unwrap()
    }

    fn catalog() -> Arc<Catalog> {
        Arc::new(Catalog::from_pairs(&[("x1", "X"), ("y1", "Y"), ("z1", "Z")]).unwrap())
    }

    #[test]
    fn routes_by_cell_category_and_hash() {
        let t = RoutingTable::build(&config(), catalog(), 1);
        let id = |(s, h): (ShardIdx, RouteHow)| (t.shard(s).id.clone(), h);
        assert_eq!(
            id(t.route("x1", Some("UK"))),
            ("UK/X".into(), RouteHow::Cell)
        );
        assert_eq!(
            id(t.route("x1", Some("INTL"))),
            ("INTL/X".into(), RouteHow::Cell)
        );
        assert_eq!(
            id(t.route("y1", Some("INTL"))),
            ("ALL/Y".into(), RouteHow::Cell)
        );
        assert_eq!(
            id(t.route("x1", None)),
            ("UK/X".into(), RouteHow::CategoryFallback)
        );
        // Z has no shard: hashed over the region's shards, deterministically
        let (s1, h) = t.route("z1", Some("UK"));
        assert_eq!(h, RouteHow::Hash);
        assert!(["UK/X", "ALL/Y"].contains(&t.shard(s1).id.as_str()));
        assert_eq!(t.route("z1", Some("UK")).0, s1);
        assert_eq!(t.route("unknown", Some("MARS")).1, RouteHow::Hash);
    }

    #[test]
    fn updates_are_versioned_and_checked() {
        let c = config();
        let t = RoutingTable::build(&c, catalog(), 5);
        let mut u = TableUpdate {
            version: 5,
            shards: Default::default(),
        };
        assert_eq!(
            t.apply(&c, &u).unwrap_err(),
            TableError::Stale { got: 5, current: 5 }
        );
        u.version = 6;
        u.shards.insert(
            "UK/X".into(),
            vec![
                ReplicaAssignment {
                    node: "c".into(),
                    state: ReplicaState::Serving,
                },
                ReplicaAssignment {
                    node: "a".into(),
                    state: ReplicaState::Draining,
                },
            ],
        );
        let t2 = t.apply(&c, &u).unwrap();
        assert_eq!(t2.version, 6);
        let s = t2.shard(t2.shard_by_id("UK/X").unwrap());
        assert_eq!(s.serving, vec![2]);
        assert_eq!(s.draining, vec![0]);
        // untouched shards keep their replicas
        let y = t.shard_by_id("ALL/Y").unwrap();
        assert_eq!(t2.shard(y).replicas, t.shard(y).replicas);
        u.version = 7;
        u.shards.insert(
            "UK/X".into(),
            vec![ReplicaAssignment {
                node: "q".into(),
                state: ReplicaState::Serving,
            }],
        );
        assert!(matches!(
            t2.apply(&c, &u),
            Err(TableError::UnknownNode { .. })
        ));
        // rebase keeps the manager's assignment across a reload
        let t3 = t2.rebase(&c, catalog(), 7);
        assert_eq!(t3.shard(t3.shard_by_id("UK/X").unwrap()).serving, vec![2]);
    }

    #[test]
    fn jump_hash_is_consistent() {
        let moved = (0..10_000u64)
            .filter(|&k| {
                jump_hash(sku_hash(&k.to_string()), 10) != jump_hash(sku_hash(&k.to_string()), 11)
            })
            .count();
        assert!(
            moved < 1_300,
            "{moved} of 10000 moved going 10 → 11 buckets"
        );
        for k in 0..1000u64 {
            assert!(jump_hash(k, 7) < 7);
        }
        assert_eq!(jump_hash(1, 1), 0);
    }
}
