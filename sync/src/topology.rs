//! Sync's view of the shared topology file (`topology = "topology.toml"`
//! in `conf/sync.toml` and `conf/node.toml`): the shards to keep fresh come
//! from it, and every node sync writes into must be one of its nodes. The
//! file is read and validated by shardmap's [`Topology`], the same type
//! and validator the proxy and the shard manager use, so the three cannot
//! disagree on shard ids, cells or node names.

use std::net::SocketAddr;
use std::path::Path;

use shardmap::Topology;

use crate::model::ShardDef;

/// Load the topology `key` names (relative to `base`); every problem is
/// pushed to `errs` as `topology: <file>: <field>: <message>`.
pub fn load(base: &Path, key: &str, errs: &mut Vec<String>) -> Option<Topology> {
    let p = Path::new(key);
    let path = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    match Topology::load(&path) {
        Ok(t) => Some(t),
        Err(e) => {
            errs.extend(e.lines().into_iter().map(|l| format!("topology: {l}")));
            None
        }
    }
}

/// The topology's shards as sync keeps them (their cells).
pub fn shards(t: &Topology) -> Vec<ShardDef> {
    t.shards
        .iter()
        .map(|s| {
            let mut cells = Vec::with_capacity(s.categories.len() * s.regions.len());
            for c in &s.categories {
                for r in &s.regions {
                    cells.push((c.clone(), r.clone()));
                }
            }
            cells.sort();
            cells.dedup();
            ShardDef {
                id: s.id.clone(),
                cells,
            }
        })
        .collect()
}

/// The address node `name` has in the topology, when it is an `ip:port` a
/// listener can bind (a host name is the proxies' business, not a bind
/// address). `Err` when the topology has no such node.
pub fn node_address(t: &Topology, name: &str) -> Result<Option<SocketAddr>, String> {
    match t.nodes.iter().find(|n| n.name == name) {
        Some(n) => Ok(n.address.parse().ok()),
        None => Err(format!(
            "`{name}` is not a node of the topology ({}): sync would fill a cache no proxy routes to",
            t.source
                .as_deref()
                .map_or_else(|| "inline".into(), |p| p.display().to_string())
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{NodeConfig, SyncConfig};

    const TOPO: &str = r#"
[[nodes]]
name = "a"
address = "127.0.0.1:9101"
[[nodes]]
name = "b"
address = "store-b.internal:8080"
[[shards]]
id = "UK/X"
categories = ["X", "Y"]
regions = ["UK"]
[[shard_rules]]
categories = ["Z"]
regions = ["UK", "INTL"]
"#;

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("topology.toml"), TOPO).unwrap();
        d
    }

    #[test]
    fn sync_takes_shards_and_node_addresses_from_the_topology() {
        let d = dir();
        let text = "topology = \"topology.toml\"\n\
                    [[nodes]]\nname = \"a\"\n\
                    [[nodes]]\nname = \"b\"\ncache = \"redis://127.0.0.1:6379/0\"\n";
        let c = SyncConfig::from_toml(text, &d.path().join("sync.toml")).unwrap();
        let ids: Vec<&str> = c.shards.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["UK/X", "UK/Z", "INTL/Z"]);
        assert_eq!(c.shards[0].cells.len(), 2);
        // A memory node is served here, on its topology address.
        assert_eq!(c.nodes[0].listen, Some("127.0.0.1:9101".parse().unwrap()));
        assert_eq!(c.nodes[1].listen, None);
    }

    #[test]
    fn sync_errors_name_the_topology_file_and_field() {
        let d = dir();
        let sync = d.path().join("sync.toml");
        // A node the topology does not have, and shards given twice.
        let text = "topology = \"topology.toml\"\nshards_file = \"x.toml\"\n\
                    [[nodes]]\nname = \"q\"\nlisten = \"127.0.0.1:0\"\n";
        let e = SyncConfig::from_toml(text, &sync).unwrap_err();
        let all = e.errors.join("\n");
        assert!(
            all.contains("nodes[0].name: `q` is not a node of the topology"),
            "{all}"
        );
        assert!(
            all.contains("topology: the shards come from the topology file"),
            "{all}"
        );
        // A memory node whose topology address is a host name cannot bind it.
        let text = "topology = \"topology.toml\"\n[[nodes]]\nname = \"b\"\n";
        let e = SyncConfig::from_toml(text, &sync).unwrap_err();
        assert!(e.errors.join("\n").contains("nodes[0].listen"), "{e}");
        // A broken topology: its file and field are named.
        std::fs::write(
            d.path().join("topology.toml"),
            TOPO.replace("127.0.0.1:9101", "nowhere"),
        )
        .unwrap();
        let text =
            "topology = \"topology.toml\"\n[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n";
        let e = SyncConfig::from_toml(text, &sync).unwrap_err();
        let all = e.errors.join("\n");
        let want = format!(
            "topology: {}: nodes[0].address",
            d.path().join("topology.toml").display()
        );
        assert!(all.contains(&want), "{all}");
    }

    #[test]
    fn a_node_takes_its_shards_and_address_from_the_topology() {
        let d = dir();
        let p = d.path().join("node.toml");
        let n = NodeConfig::from_toml("name = \"a\"\ntopology = \"topology.toml\"\n", &p).unwrap();
        assert_eq!(n.listen, "127.0.0.1:9101".parse().unwrap());
        assert_eq!(n.shards.len(), 3);
        let e =
            NodeConfig::from_toml("name = \"zz\"\ntopology = \"topology.toml\"\n", &p).unwrap_err();
        assert!(
            e.errors.join("\n").contains("name: `zz` is not a node"),
            "{e}"
        );
        let e = NodeConfig::from_toml("name = \"a\"\n", Path::new("node.toml")).unwrap_err();
        assert!(e.errors.join("\n").contains("listen: required"), "{e}");
    }
}
