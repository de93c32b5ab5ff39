//! The names of the metadata store's keys (Redis), in one place: the shard
//! manager writes them and the proxies read them, both from here.
//!
//! | key | what |
//! |---|---|
//! | `<prefix>:table` | a snapshot: a full [`crate::TableUpdate`], JSON, at `version` or older |
//! | `<prefix>:table:log` | list: the last deltas (each from the version before), JSON, oldest first |
//! | `<prefix>:table:head` | hash: `snapshot` (the snapshot's version), `since` (deltas after it), `writer` |
//! | `<prefix>:version` | its [`crate::AssignmentVersion`], JSON |
//! | `<prefix>:table:changed` | pub/sub channel: the version, on every publish |
//! | `<prefix>:epoch` | the highest manager epoch (the fencing token) |
//! | `<prefix>:leader` | the lease: the leading manager's id, with a TTL |
//! | `<prefix>:operator` | the manager's operator settings, JSON |
//! | `<prefix>:shard:<id>` | a hash per shard: content, replicas, cursors, load |
//! | `<prefix>:node:<name>` | a hash per node: address, capacity, zone, health, load |
//! | `<prefix>:node-health` | a hash: each proxy's node-health report, JSON |

//!
//! On a Redis Cluster every key must hash to one slot (the publish and
//! records scripts touch the table, version, epoch and every record at
//! once), so [`MetadataKeys::for_url`] puts the prefix in a hash tag:
//! `shardcast` becomes `{shardcast}` (keys `{shardcast}:table`, …). A
//! prefix that already holds a tag (`{sc}`, `eu-{sc}`) is kept as written.

/// The keys under one prefix (`[control] prefix` of the proxy config).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetadataKeys {
    prefix: String,
}

impl MetadataKeys {
    pub fn new(prefix: impl Into<String>) -> MetadataKeys {
        MetadataKeys {
            prefix: prefix.into(),
        }
    }

    /// The keys for the store `url` names: on a cluster
    /// (`redis+cluster://…`) under one hash tag, see the module docs.
    pub fn for_url(prefix: &str, url: &str) -> MetadataKeys {
        if super::store_url::is_cluster_url(url) && !has_hash_tag(prefix) {
            MetadataKeys::new(format!("{{{prefix}}}"))
        } else {
            MetadataKeys::new(prefix)
        }
    }

    /// The prefix the keys start with (hash tag included).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, suffix: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 1 + suffix.len());
        k.push_str(&self.prefix);
        k.push(':');
        k.push_str(suffix);
        k
    }

    pub fn table(&self) -> String {
        self.key("table")
    }

    pub fn version(&self) -> String {
        self.key("version")
    }

    /// The delta log: a list of the last deltas, oldest first, each a
    /// [`crate::TableUpdate`] with `base` (the version before it); each
    /// one's base is the one before's version, and the last one's version
    /// is the store's. Bounded; a proxy whose version is a base in it reads
    /// only the deltas from there.
    pub fn table_log(&self) -> String {
        self.key("table:log")
    }

    /// A hash beside the table: `snapshot` (the version `table` holds, JSON),
    /// `since` (deltas written after it), `writer` (the id of the manager
    /// that wrote `version`).
    pub fn table_head(&self) -> String {
        self.key("table:head")
    }

    /// A channel, not a key.
    pub fn table_changed(&self) -> String {
        self.key("table:changed")
    }

    pub fn epoch(&self) -> String {
        self.key("epoch")
    }

    pub fn leader(&self) -> String {
        self.key("leader")
    }

    pub fn operator(&self) -> String {
        self.key("operator")
    }

    pub fn shard(&self, id: &str) -> String {
        self.key(&format!("shard:{id}"))
    }

    pub fn node(&self, name: &str) -> String {
        self.key(&format!("node:{name}"))
    }

    /// The proxies' node-health reports ([`crate::health::health_key`]).
    pub fn node_health(&self) -> String {
        crate::health::health_key(&self.prefix)
    }
}

use crate::{AssignmentVersion, TableUpdate};

/// The deltas of a `<prefix>:table:log` (raw JSON, oldest first) that lead on from
/// `from`: the first one whose base is `from`, then each later one whose
/// base is the version reached. Empty when none has `from` as its base.
pub fn log_chain(log: &[Vec<u8>], from: AssignmentVersion) -> Vec<TableUpdate> {
    let mut out: Vec<TableUpdate> = vec![];
    let mut at = from;
    for raw in log {
        // An entry that does not parse, or does not follow on, is skipped:
        // the chain only ever takes a delta from the version it is at.
        let Ok(d) = serde_json::from_slice::<TableUpdate>(raw) else {
            continue;
        };
        if d.base == Some(at) {
            at = d.version;
            out.push(d);
        }
    }
    out
}

/// Redis Cluster's rule: a `{` followed, later, by a `}` with at least
/// one character between them.
fn has_hash_tag(key: &str) -> bool {
    key.find('{')
        .is_some_and(|open| key[open + 1..].find('}').is_some_and(|len| len > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_ones_in_the_readme() {
        let k = MetadataKeys::new("shardcast");
        assert_eq!(k.table(), "shardcast:table");
        assert_eq!(k.version(), "shardcast:version");
        assert_eq!(k.table_log(), "shardcast:table:log");
        assert_eq!(k.table_head(), "shardcast:table:head");
        assert_eq!(k.table_changed(), "shardcast:table:changed");
        assert_eq!(k.epoch(), "shardcast:epoch");
        assert_eq!(k.leader(), "shardcast:leader");
        assert_eq!(k.operator(), "shardcast:operator");
        assert_eq!(k.shard("UK/SEASONAL"), "shardcast:shard:UK/SEASONAL");
        assert_eq!(k.node("node-a"), "shardcast:node:node-a");
        assert_eq!(k.node_health(), "shardcast:node-health");
    }

    #[test]
    fn on_a_cluster_every_key_shares_one_hash_tag() {
        let cluster = "redis+cluster://127.0.0.1:7000";
        let k = MetadataKeys::for_url("shardcast", cluster);
        assert_eq!(k.table(), "{shardcast}:table");
        assert_eq!(k.epoch(), "{shardcast}:epoch");
        assert_eq!(k.node_health(), "{shardcast}:node-health");
        assert_eq!(k.shard("UK/A{x}"), "{shardcast}:shard:UK/A{x}");
        // Already tagged: as written.
        assert_eq!(
            MetadataKeys::for_url("eu-{sc}", cluster).table(),
            "eu-{sc}:table"
        );
        // An empty tag is no tag.
        assert_eq!(MetadataKeys::for_url("a{}", cluster).table(), "{a{}}:table");
        // One Redis: unchanged.
        let one = MetadataKeys::for_url("shardcast", "redis://127.0.0.1:6379");
        assert_eq!(one.table(), "shardcast:table");
    }

    #[test]
    fn a_log_chain_leads_on_from_its_base() {
        let v = |c| AssignmentVersion::new(1, c);
        let d = |b, c| {
            serde_json::to_vec(&TableUpdate {
                version: v(c),
                base: Some(v(b)),
                ..TableUpdate::default()
            })
            .unwrap()
        };
        let log = vec![d(1, 2), d(2, 3), b"junk".to_vec(), d(3, 4), d(4, 5)];
        let at = |from| -> Vec<u64> {
            log_chain(&log, v(from))
                .iter()
                .map(|u| u.version.counter)
                .collect()
        };
        assert_eq!(at(1), [2, 3, 4, 5], "past an entry that does not parse");
        assert_eq!(at(3), [4, 5]);
        assert_eq!(at(5), Vec::<u64>::new(), "current: nothing");
        assert_eq!(at(9), Vec::<u64>::new(), "not in the log");
        // A gap ends the chain; a repeated delta is taken once.
        let gap = vec![d(1, 2), d(3, 4)];
        assert_eq!(log_chain(&gap, v(1)).len(), 1);
        let twice = vec![d(1, 2), d(1, 2), d(2, 3)];
        assert_eq!(log_chain(&twice, v(1)).len(), 2);
    }
}
