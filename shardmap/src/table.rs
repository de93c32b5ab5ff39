//! The routing table: the immutable, versioned snapshot the proxy reads per
//! request (sku → category → (category, region) cell → shard → replicas).
//!
//! Built whole by [`RoutingTable::build`] off the request path, then stored
//! in an `ArcSwap` by the proxy; a lookup ([`RoutingTable::route`]) takes no
//! lock, does no I/O and allocates nothing.
//!
//! A table carries two numbers: the [`AssignmentVersion`] of the shard
//! manager's assignment in it, moved only by [`RoutingTable::apply`], and
//! the config generation, moved only by [`RoutingTable::rebase`] (a
//! reload). A reload keeps the assignment and its version, so the manager's
//! next update still applies.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::{sku_hash, Catalog, CategoryId};
use crate::config::{Config, NodeSpec, Volatility};
use crate::control::{AssignmentVersion, ReplicaAssignment, TableUpdate};

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
    /// The version of the manager's assignment this table holds; set only
    /// by [`RoutingTable::apply`], kept by [`RoutingTable::rebase`].
    pub assignment_version: AssignmentVersion,
    /// The config this table was built from: 1 at start, one more per
    /// applied reload.
    pub config_generation: u64,
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
    #[error(
        "table update version {got} is not newer than the current assignment version {current}"
    )]
    Stale {
        got: AssignmentVersion,
        current: AssignmentVersion,
    },
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
    /// Build a table from a validated config and a catalog: the config's
    /// replicas, no manager assignment yet ([`AssignmentVersion::NONE`]), at
    /// config generation `config_generation`.
    pub fn build(config: &Config, catalog: Arc<Catalog>, config_generation: u64) -> RoutingTable {
        let assignment: Vec<Vec<Replica>> = config
            .shards
            .iter()
            .map(|s| configured(config, s))
            .collect();
        Self::assemble(
            config,
            catalog,
            (AssignmentVersion::NONE, config_generation),
            assignment,
        )
    }

    fn assemble(
        config: &Config,
        catalog: Arc<Catalog>,
        (assignment_version, config_generation): (AssignmentVersion, u64),
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
            assignment_version,
            config_generation,
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
    /// update's replica assignment, at the update's assignment version and
    /// this table's config generation. Rejected when its version is not
    /// newer than this table's assignment version, or when it names shards
    /// or nodes this table does not know. Shards the update does not
    /// mention keep their replicas.
    pub fn apply(&self, config: &Config, update: &TableUpdate) -> Result<RoutingTable, TableError> {
        if update.version <= self.assignment_version {
            return Err(TableError::Stale {
                got: update.version,
                current: self.assignment_version,
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
            (update.version, self.config_generation),
            assignment,
        ))
    }

    /// Rebuild this table on a new config (reload), as the next config
    /// generation: shards and nodes that survive keep their current
    /// replicas, and the table keeps its assignment version, so the
    /// manager's next update (numbered after the one applied) still
    /// applies; new shards, and shards whose configured replicas changed,
    /// take the config's.
    pub fn rebase(&self, config: &Config, catalog: Arc<Catalog>) -> RoutingTable {
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
        Self::assemble(
            config,
            catalog,
            (
                self.assignment_version,
                self.config_generation.saturating_add(1),
            ),
            assignment,
        )
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

    fn v(epoch: u64, counter: u64) -> AssignmentVersion {
        AssignmentVersion::new(epoch, counter)
    }

    #[test]
    fn updates_are_versioned_and_checked() {
        let c = config();
        let t = RoutingTable::build(&c, catalog(), 1);
        assert_eq!(t.assignment_version, AssignmentVersion::NONE);
        let mut u = TableUpdate {
            version: AssignmentVersion::NONE,
            shards: Default::default(),
        };
        assert_eq!(
            t.apply(&c, &u).unwrap_err(),
            TableError::Stale {
                got: AssignmentVersion::NONE,
                current: AssignmentVersion::NONE
            }
        );
        u.version = v(1, 6);
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
        assert_eq!(t2.assignment_version, v(1, 6));
        assert_eq!(t2.config_generation, 1, "an update is not a reload");
        let s = t2.shard(t2.shard_by_id("UK/X").unwrap());
        assert_eq!(s.serving, vec![2]);
        assert_eq!(s.draining, vec![0]);
        // untouched shards keep their replicas
        let y = t.shard_by_id("ALL/Y").unwrap();
        assert_eq!(t2.shard(y).replicas, t.shard(y).replicas);
        u.version = v(1, 7);
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
        let t3 = t2.rebase(&c, catalog());
        assert_eq!(t3.shard(t3.shard_by_id("UK/X").unwrap()).serving, vec![2]);
    }

    #[test]
    fn versions_order_by_epoch_then_counter() {
        assert!(v(0, 0) < v(0, 1));
        assert!(
            v(0, u64::MAX) < v(1, 0),
            "a higher epoch outranks any counter"
        );
        assert!(v(1, 5) < v(1, 6));
        assert!(v(2, 1) > v(1, 1_000_000));
        assert_eq!(AssignmentVersion::NONE, v(0, 0));
        assert_eq!(AssignmentVersion::NONE, AssignmentVersion::default());
        assert_eq!(v(1, 5).next(), v(1, 6));
        // What a manager sends to outrank a table: its own version when
        // already newer, else one past the table's counter in its epoch.
        assert_eq!(v(1, 9).past(v(1, 5)), Some(v(1, 9)));
        assert_eq!(v(1, 9).past(v(0, 50)), Some(v(1, 9)));
        assert_eq!(v(1, 9).past(v(1, 9)), Some(v(1, 10)));
        assert_eq!(v(1, 9).past(v(1, 40)), Some(v(1, 41)));
        assert_eq!(v(1, 9).past(v(2, 0)), None, "a lower epoch cannot outrank");
        assert_eq!(v(1, 9).past(v(1, u64::MAX)), None);
        assert_eq!(v(1, 42).to_string(), "1:42");
    }

    #[test]
    fn versions_read_as_objects_or_bare_counters() {
        let read = |j: &str| serde_json::from_str::<AssignmentVersion>(j);
        assert_eq!(read(r#"{"epoch": 1, "counter": 42}"#).unwrap(), v(1, 42));
        assert_eq!(read("42").unwrap(), v(0, 42), "a bare counter is epoch 0");
        assert!(read(r#"{"epoch": 1}"#).is_err());
        assert!(read(r#"{"epoch": 1, "counter": 2, "x": 3}"#).is_err());
        assert!(read("-1").is_err() && read("\"1:2\"").is_err());
        assert_eq!(
            serde_json::to_value(v(1, 42)).unwrap(),
            serde_json::json!({"epoch": 1, "counter": 42})
        );
        let u: TableUpdate = serde_json::from_str(r#"{"version": 7}"#).unwrap();
        assert_eq!(u.version, v(0, 7));
        let u: TableUpdate =
            serde_json::from_str(r#"{"version": {"epoch": 1, "counter": 7}, "shards": {}}"#)
                .unwrap();
        assert_eq!(u.version, v(1, 7));
        let back: TableUpdate = serde_json::from_slice(&serde_json::to_vec(&u).unwrap()).unwrap();
        assert_eq!(back, u);
    }

    /// The dropped update: an assignment at V, then a reload, then the
    /// manager's next assignment (numbered V+1) must still apply.
    #[test]
    fn a_reload_keeps_the_assignment_and_its_version() {
        let c = config();
        let t = RoutingTable::build(&c, catalog(), 1);
        let assign = |version, node: &str| TableUpdate {
            version,
            shards: [(
                "UK/X".to_string(),
                vec![ReplicaAssignment {
                    node: node.into(),
                    state: ReplicaState::Serving,
                }],
            )]
            .into(),
        };
        let t = t.apply(&c, &assign(v(1, 5), "c")).unwrap();
        let reloaded = t.rebase(&c, catalog());
        assert_eq!(reloaded.assignment_version, v(1, 5));
        assert_eq!(reloaded.config_generation, 2);
        let ukx = |t: &RoutingTable| t.shard(t.shard_by_id("UK/X").unwrap()).serving.clone();
        assert_eq!(ukx(&reloaded), vec![2], "the manager's replicas survive");
        // The manager's next assignment applies on the reloaded table...
        let next = reloaded.apply(&c, &assign(v(1, 6), "b")).unwrap();
        assert_eq!(next.assignment_version, v(1, 6));
        assert_eq!(next.config_generation, 2);
        assert_eq!(ukx(&next), vec![1]);
        // ...and one that is not newer than the assignment is still refused.
        assert_eq!(
            reloaded.apply(&c, &assign(v(1, 5), "b")).unwrap_err(),
            TableError::Stale {
                got: v(1, 5),
                current: v(1, 5)
            }
        );
    }

    /// A reload that drops a node and changes one shard's configured
    /// replicas: the assignment version stays, and the manager's replicas
    /// stay wherever they still apply.
    #[test]
    fn a_reload_keeps_what_still_applies_of_the_assignment() {
        let text = |nodes: &[&str], intl: &str| {
            let mut t = String::from(
                "replication_factor = 1\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
                 [[routes]]\nname = \"inv\"\npath = \"/inventory/{sku}\"\n",
            );
            for (i, n) in nodes.iter().enumerate() {
                t += &format!(
                    "[[nodes]]\nname = \"{n}\"\naddress = \"127.0.0.1:{}\"\n",
                    i + 1
                );
            }
            t += "[[shards]]\nid = \"UK/X\"\ncategories = [\"X\"]\nregions = [\"UK\"]\nreplicas = [\"a\"]\n";
            t += &format!("[[shards]]\nid = \"INTL/X\"\ncategories = [\"X\"]\nregions = [\"INTL\"]\nreplicas = [\"{intl}\"]\n");
            t += "[[shards]]\nid = \"ALL/Y\"\ncategories = [\"Y\"]\nregions = [\"UK\"]\nreplicas = [\"c\"]\n";
            Config::from_toml(&t, Path::new("t.toml")).unwrap()
        };
        let c1 = text(&["a", "b", "c"], "a");
        let serving = |node: &str| ReplicaAssignment {
            node: node.into(),
            state: ReplicaState::Serving,
        };
        let t = RoutingTable::build(&c1, catalog(), 1)
            .apply(
                &c1,
                &TableUpdate {
                    version: v(1, 7),
                    shards: [
                        ("UK/X".to_string(), vec![serving("b"), serving("c")]),
                        ("INTL/X".to_string(), vec![serving("b")]),
                        ("ALL/Y".to_string(), vec![serving("c"), serving("a")]),
                    ]
                    .into(),
                },
            )
            .unwrap();
        let r = t.rebase(&text(&["a", "c"], "c"), catalog());
        assert_eq!(r.assignment_version, v(1, 7));
        assert_eq!(r.config_generation, 2);
        let names = |id: &str| -> Vec<String> {
            let s = r.shard(r.shard_by_id(id).unwrap());
            s.serving
                .iter()
                .map(|&n| r.nodes[n as usize].name.clone())
                .collect()
        };
        assert_eq!(names("UK/X"), ["c"], "node b left the config");
        assert_eq!(names("INTL/X"), ["c"], "the config changed INTL/X");
        assert_eq!(names("ALL/Y"), ["c", "a"], "untouched by the reload");
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
