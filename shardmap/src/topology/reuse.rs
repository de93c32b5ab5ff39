//! Reusing the last load's expanded, validated shards when a topology
//! file changes in a way only the changed shards can see.
//!
//! Most of a large topology's load is expanding `[[shard_rules]]` into
//! thousands of shards and checking what spans them: ids unique, each cell
//! in one shard, replicas known and distinct, automatic replica assignment
//! (which balances across every shard). All of that depends only on the
//! nodes, the replication factor and each shard's id, cells and explicit
//! replicas. When those are what the previous (valid) load had, the
//! previous shards stand, and only the per-shard settings that no such
//! rule reads — `volatility` and `threshold` — are copied over, after the
//! changed thresholds pass the same check a full load applies. Anything
//! else, or a threshold the check refuses, takes the full check, so the
//! result and the errors are always what a load without reuse gives.

use super::{NodeSpec, ShardSpec, TopologyFile, Volatility};

/// A valid topology and the file it was checked from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prev<'a> {
    pub(crate) file: &'a TopologyFile,
    pub(crate) nodes: &'a [NodeSpec],
    pub(crate) shards: &'a [ShardSpec],
}

/// The full check's rule for a threshold.
fn threshold_ok(t: Option<f64>) -> bool {
    t.is_none_or(|t| t.is_finite() && t > 0.0)
}

impl TopologyFile {
    /// The shards this file validates to, built from `prev`'s, when this
    /// file differs from `prev.file` in per-shard settings only; `None`
    /// when it needs the full check.
    pub(super) fn patch(&self, prev: Prev<'_>) -> Option<Vec<ShardSpec>> {
        let old = prev.file;
        if self.replication_factor != old.replication_factor
            || self.nodes != old.nodes
            || self.shards.len() != old.shards.len()
            || self.shard_rules.len() != old.shard_rules.len()
        {
            return None;
        }
        // (first shard index, shard count, volatility, threshold)
        let mut changes: Vec<(usize, usize, Volatility, Option<f64>)> = vec![];
        for (i, (a, b)) in self.shards.iter().zip(&old.shards).enumerate() {
            if a.id != b.id
                || a.categories != b.categories
                || a.regions != b.regions
                || a.replicas != b.replicas
            {
                return None;
            }
            if a.volatility != b.volatility || a.threshold != b.threshold {
                if !threshold_ok(a.threshold) {
                    return None;
                }
                changes.push((i, 1, a.volatility, a.threshold));
            }
        }
        let mut at = self.shards.len();
        for (a, b) in self.shard_rules.iter().zip(&old.shard_rules) {
            if a.id != b.id || a.categories != b.categories || a.regions != b.regions {
                return None;
            }
            let cells = a.categories.len() * a.regions.len();
            if a.volatility != b.volatility || a.threshold != b.threshold {
                if !threshold_ok(a.threshold) {
                    return None;
                }
                changes.push((at, cells, a.volatility, a.threshold));
            }
            at += cells;
        }
        if at != prev.shards.len() || prev.nodes.len() != self.nodes.len() {
            return None;
        }
        let mut shards = prev.shards.to_vec();
        for (first, n, volatility, threshold) in changes {
            for s in &mut shards[first..first + n] {
                s.volatility = volatility;
                s.threshold = threshold;
            }
        }
        Some(shards)
    }
}
