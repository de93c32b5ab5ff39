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
//!
//! Successive tables share what did not change: the parts built from the
//! config (cells, region pools, indexes, nodes) sit behind `Arc`s that an
//! update or a reload with the same cells keeps, and every shard's entry is
//! its own `Arc`, so an update that moves `k` shards builds `k` entries and
//! copies one pointer per shard ([`update`]). The request path reads the
//! same fields at the same depth as a table built whole.

mod update;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::{sku_hash, Catalog, CategoryId};
use crate::config::{Config, NodeSpec, ShardSpec, Volatility};
use crate::control::AssignmentVersion;

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

#[derive(Debug, Clone, PartialEq)]
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

impl ShardEntry {
    /// The entry of `spec` with `replicas`.
    fn new(spec: &ShardSpec, replicas: Vec<Replica>) -> ShardEntry {
        ShardEntry {
            id: spec.id.clone(),
            categories: spec.categories.clone(),
            regions: spec.regions.clone(),
            volatility: spec.volatility,
            threshold: spec.threshold,
            configured: spec.replicas.clone(),
            ..ShardEntry::default_with(replicas)
        }
        .placed()
    }

    /// This entry with other replicas.
    fn with_replicas(&self, replicas: Vec<Replica>) -> ShardEntry {
        ShardEntry {
            id: self.id.clone(),
            categories: self.categories.clone(),
            regions: self.regions.clone(),
            volatility: self.volatility,
            threshold: self.threshold,
            configured: self.configured.clone(),
            ..ShardEntry::default_with(replicas)
        }
        .placed()
    }

    fn default_with(replicas: Vec<Replica>) -> ShardEntry {
        ShardEntry {
            id: String::new(),
            categories: vec![],
            regions: vec![],
            volatility: Volatility::default(),
            threshold: None,
            configured: vec![],
            replicas,
            serving: vec![],
            draining: vec![],
        }
    }

    /// `serving` and `draining` from `replicas`.
    fn placed(mut self) -> ShardEntry {
        let of = |st| {
            self.replicas
                .iter()
                .filter(|r| r.state == st)
                .map(|r| r.node)
                .collect()
        };
        self.serving = of(ReplicaState::Serving);
        self.draining = of(ReplicaState::Draining);
        self
    }

    /// The same shard in the same cells, so the table's layout holds.
    fn same_cells(&self, spec: &ShardSpec) -> bool {
        self.id == spec.id && self.categories == spec.categories && self.regions == spec.regions
    }

    /// Exactly what `spec` builds with these replicas.
    fn same_spec(&self, spec: &ShardSpec) -> bool {
        self.same_cells(spec)
            && self.volatility == spec.volatility
            && self.threshold == spec.threshold
            && self.configured == spec.replicas
    }
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

/// The immutable routing snapshot. Cloning one is cheap (pointer copies):
/// every part that does not depend on the assignment is shared.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// The version of the manager's assignment this table holds; set only
    /// by [`RoutingTable::apply`], kept by [`RoutingTable::rebase`].
    pub assignment_version: AssignmentVersion,
    /// The config this table was built from: 1 at start, one more per
    /// applied reload.
    pub config_generation: u64,
    pub catalog: Arc<Catalog>,
    pub regions: Arc<[String]>,
    region_index: Arc<HashMap<String, u16>>,
    /// `cell_shard[cat * regions.len() + region]`
    cell_shard: Arc<[u32]>,
    /// first shard per category (for a sku whose region has no cell)
    cat_shard: Arc<[u32]>,
    /// shards per region (for unknown skus), and all shards
    region_shards: Arc<[Vec<ShardIdx>]>,
    all_shards: Arc<[ShardIdx]>,
    /// One entry per shard, in config order; shared between tables while
    /// the shard's assignment and config stay the same.
    pub shards: Vec<Arc<ShardEntry>>,
    shard_index: Arc<HashMap<String, ShardIdx>>,
    pub nodes: Arc<[NodeSpec]>,
    node_index: Arc<HashMap<String, NodeIdx>>,
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
    /// A delta applies only to the table it was computed from: the sender
    /// sends the full table instead.
    #[error(
        "table delta from version {base} does not apply to the current assignment version {current}: send the full table"
    )]
    BaseMismatch {
        base: AssignmentVersion,
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
    #[error("table update both assigns and removes shard `{0}`")]
    AssignedAndRemoved(String),
}

impl RoutingTable {
    /// Build a table from a validated config and a catalog: the config's
    /// replicas, no manager assignment yet ([`AssignmentVersion::NONE`]), at
    /// config generation `config_generation`.
    pub fn build(config: &Config, catalog: Arc<Catalog>, config_generation: u64) -> RoutingTable {
        let mut t = Self::layout(config, catalog);
        t.config_generation = config_generation;
        t.shards = config
            .shards
            .iter()
            .map(|s| Arc::new(ShardEntry::new(s, t.configured(&s.replicas))))
            .collect();
        t
    }

    /// Everything built from the config's cells and nodes and the catalog
    /// (no shard entries yet).
    fn layout(config: &Config, catalog: Arc<Catalog>) -> RoutingTable {
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
        let mut shard_index = HashMap::with_capacity(config.shards.len());
        for (si, s) in config.shards.iter().enumerate() {
            let si = si as u32;
            shard_index.insert(s.id.clone(), si);
            for r in &s.regions {
                let ri = region_index[r] as usize;
                if region_shards[ri].last() != Some(&si) {
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
        }
        let node_index = config
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i as NodeIdx))
            .collect();
        RoutingTable {
            assignment_version: AssignmentVersion::NONE,
            config_generation: 0,
            catalog,
            regions: regions.into(),
            region_index: Arc::new(region_index),
            cell_shard: cell_shard.into(),
            cat_shard: cat_shard.into(),
            region_shards: region_shards.into(),
            all_shards: (0..config.shards.len() as u32).collect(),
            shards: vec![],
            shard_index: Arc::new(shard_index),
            nodes: config.nodes.clone().into(),
            node_index: Arc::new(node_index),
        }
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
                &self.region_shards[r as usize][..]
            }
            _ => &self.all_shards[..],
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

    #[inline]
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

    /// Configured replica names as this table's nodes, all serving (names
    /// it does not know are skipped: validation already refused them).
    fn configured(&self, names: &[String]) -> Vec<Replica> {
        names
            .iter()
            .filter_map(|n| self.node_by_name(n))
            .map(|node| Replica {
                node,
                state: ReplicaState::Serving,
            })
            .collect()
    }
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
mod tests;
