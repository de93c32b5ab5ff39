//! Every shipped sync and node config parses and validates.

use std::path::Path;

use shardcast_sync::config::{NodeConfig, SyncConfig};

#[test]
fn every_shipped_sync_and_node_config_is_valid() {
    let dir =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../conf");
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

/// The demo runs `shardcast-sync serve --config conf/sync.toml` behind
/// `shardcast-proxy -c conf/proxy-demo.toml`: the in-process nodes must be
/// the proxy's nodes, on the proxy's addresses, with the proxy's shards.
#[test]
fn demo_sync_serves_the_demo_proxys_nodes_and_shards() {
    let dir =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../conf");
    let sync = SyncConfig::load(&dir.join("sync.toml")).unwrap_or_else(|e| panic!("{e}"));
    let proxy =
        shardmap::Config::load(&dir.join("proxy-demo.toml")).unwrap_or_else(|e| panic!("{e}"));
    let served: Vec<(String, String)> = sync
        .nodes
        .iter()
        .map(|n| {
            let addr = n.listen.map(|a| a.to_string()).unwrap_or_default();
            (n.name.clone(), addr)
        })
        .collect();
    let routed: Vec<(String, String)> = proxy
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.address.clone()))
        .collect();
    assert_eq!(served, routed);
    let sync_ids: Vec<&str> = sync.shards.iter().map(|s| s.id.as_str()).collect();
    let proxy_ids: Vec<&str> = proxy.shards.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(sync_ids, proxy_ids);
}
