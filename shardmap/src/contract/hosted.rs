//! What sync holds on each node: `GET /nodes` (every node and its hosted
//! shards, a map `name → {"hosted": [...]}`), `GET /nodes?since=<version>`
//! (what changed since an earlier answer, [`NodesChange`]) and `GET
//! /nodes/{node}/shards` (one node's list).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostedState {
    /// Being copied, or found in a cache at start and not yet caught up.
    Warming,
    /// Caught up at least once since it became hosted.
    Warm,
}

/// A shard held in a node's cache, kept fresh by sync.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostedShard {
    pub shard: String,
    pub state: HostedState,
    /// The last provider version copied.
    pub cursor: u64,
    pub rows: u64,
    pub last_sync_unix_ms: u64,
}

/// One node in `GET /nodes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub hosted: Vec<HostedShard>,
    /// Shards whose evicted copy the node's cache keeps parked (not
    /// served): a pre-fetch back copies only the delta.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parked: Vec<String>,
}

/// `GET /nodes`: node name → its record.
pub type Nodes = BTreeMap<String, NodeRecord>;

/// `GET /nodes?since=<version>`: what sync's hosted shards became since
/// the answer that carried `version`. A copy's state, cursor or rows
/// changing is a change; its `last_sync_unix_ms` alone is not (it moves on
/// every freshness read), so a copy in a change carries it as it is then.
/// Parked copies are in the plain `GET /nodes` only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodesChange {
    /// Pass it as `since` next time: `<epoch>.<seq>`, the epoch one run of
    /// sync's own, so a restarted sync is never taken for the same one.
    pub version: String,
    /// `true`: `nodes` is everything (every node, every hosted copy), in
    /// place of what the reader held — `since` was `0`, of another run of
    /// sync, or older than the changes sync still remembers. `false`:
    /// only the nodes with a change, to apply to what the reader held.
    pub full: bool,
    pub nodes: BTreeMap<String, NodeChange>,
}

/// One node's part of a [`NodesChange`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeChange {
    /// Copies new or changed (on a full answer: every hosted copy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosted: Vec<HostedShard>,
    /// Shards no longer hosted (evicted, failed, dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
}

impl NodesChange {
    /// Apply this answer to `held` (node → shard → copy), as a reader that
    /// keeps its own view does: a full answer replaces it.
    pub fn apply_to<V>(
        self,
        held: &mut BTreeMap<String, BTreeMap<String, V>>,
        view: impl Fn(&HostedShard) -> V,
    ) {
        if self.full {
            held.clear();
        }
        for (node, change) in self.nodes {
            let m = held.entry(node).or_default();
            for s in change.gone {
                m.remove(&s);
            }
            for h in change.hosted {
                let v = view(&h);
                m.insert(h.shard, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_read_as_sync_writes_them() {
        // Verbatim from sync's `GET /nodes` before the types moved here.
        let raw = r#"{"node-a":{"hosted":[{"shard":"UK/SEASONAL","state":"warm","cursor":12,
            "rows":3,"last_sync_unix_ms":99}]},"node-b":{"hosted":[]}}"#;
        let n: Nodes = serde_json::from_str(raw).unwrap();
        assert_eq!(n["node-a"].hosted[0].state, HostedState::Warm);
        assert!(n["node-b"].hosted.is_empty());
        let back = serde_json::to_value(&n).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(raw).unwrap()
        );
        assert!(serde_json::from_str::<Nodes>(&raw.replace("warm", "hot")).is_err());
        assert!(serde_json::from_str::<Nodes>(&raw.replace("\"rows\"", "\"items\"")).is_err());
    }
}
