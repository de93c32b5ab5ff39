//! The names of the metadata store's keys (Redis), in one place: the shard
//! manager writes them and the proxies read them, both from here.
//!
//! | key | what |
//! |---|---|
//! | `<prefix>:table` | the current [`crate::TableUpdate`] (the full table), JSON |
//! | `<prefix>:table:delta` | the change that led to it (a delta from the table before), JSON |
//! | `<prefix>:version` | its [`crate::AssignmentVersion`], JSON |
//! | `<prefix>:table:changed` | pub/sub channel: the version, on every publish |
//! | `<prefix>:epoch` | the highest manager epoch (the fencing token) |
//! | `<prefix>:leader` | the lease: the leading manager's id, with a TTL |
//! | `<prefix>:operator` | the manager's operator settings, JSON |
//! | `<prefix>:shard:<id>` | a hash per shard: content, replicas, cursors, load |
//! | `<prefix>:node:<name>` | a hash per node: address, capacity, zone, health, load |
//! | `<prefix>:node-health` | a hash: each proxy's node-health report, JSON |

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

    /// The last delta: the change from the table before `table` to
    /// `table` (a [`crate::TableUpdate`] with `base`), written with it;
    /// absent when the last write was a full table only.
    pub fn table_delta(&self) -> String {
        self.key("table:delta")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_ones_in_the_readme() {
        let k = MetadataKeys::new("shardcast");
        assert_eq!(k.table(), "shardcast:table");
        assert_eq!(k.version(), "shardcast:version");
        assert_eq!(k.table_changed(), "shardcast:table:changed");
        assert_eq!(k.epoch(), "shardcast:epoch");
        assert_eq!(k.leader(), "shardcast:leader");
        assert_eq!(k.operator(), "shardcast:operator");
        assert_eq!(k.shard("UK/SEASONAL"), "shardcast:shard:UK/SEASONAL");
        assert_eq!(k.node("node-a"), "shardcast:node:node-a");
        assert_eq!(k.node_health(), "shardcast:node-health");
    }
}
