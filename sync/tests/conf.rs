//! Every shipped sync and node config parses and validates.

use std::path::Path;

use shardcast_sync::config::{NodeConfig, SyncConfig};

#[test]
fn every_shipped_sync_and_node_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".toml") {
            continue;
        }
        if name.starts_with("sync") {
            let c = SyncConfig::load(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.nodes.is_empty() && !c.shards.is_empty(), "{name}");
            checked += 1;
        } else if name.starts_with("node") {
            let c = NodeConfig::load(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.shards.is_empty(), "{name}");
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected conf/sync.toml, conf/sync-postgres-redis.toml, conf/node.toml; checked {checked}"
    );
}
