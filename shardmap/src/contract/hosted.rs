//! What sync holds on each node: `GET /nodes` (every node and its hosted
//! shards, a map `name → {"hosted": [...]}`) and `GET
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
