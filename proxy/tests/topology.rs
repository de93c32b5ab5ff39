//! The topology file and node health against a real proxy: a node and a
//! shard added to the topology file the config names serve after the file
//! watcher's reload, with no edit of the proxy's own config; and the
//! proxy publishes what its own health checks find into the metadata
//! store, where the shard manager reads node health.

mod common;

use std::time::Duration;

use common::*;
use shardmap::health::{health_key, HealthReport};

/// A proxy config naming `topology.toml`, with `extra` settings.
fn config(hp: u16, ap: u16, extra: &str) -> String {
    let (catalog, _) = small_catalog();
    format!(
        "topology = \"topology.toml\"\n{extra}\n[listen]\nhttp = [\"127.0.0.1:{hp}\"]\nadmin = \"127.0.0.1:{ap}\"\ngrace_period_s = 2\n{DEFAULT_ROUTES}\n{catalog}\n"
    )
}

fn topology(nodes: &[&TestNode], shards: &str) -> String {
    format!("replication_factor = 1\n{}\n{shards}", nodes_toml(nodes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_and_a_shard_added_to_the_topology_file_serve_after_a_live_reload() {
    let a = TestNode::start("a").await;
    let b = TestNode::start("b").await;
    let (_, shards) = small_catalog();
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("topology.toml");
    std::fs::write(&topo, topology(&[&a], &shards)).unwrap();
    let (hp, ap) = (free_port(), free_port());
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(&cfg, config(hp, ap, "[health]\ninterval_ms = 200\n")).unwrap();
    let p = Proxy::start_with(dir, cfg, hp, ap).await;
    assert_eq!(p.table().await["nodes"].as_array().unwrap().len(), 1);
    let generation = p.config_generation().await;

    // Only the topology file changes: a node, and a shard pinned to it.
    let more = format!(
        "{shards}\n[[shards]]\nid = \"UK/GAMMA\"\ncategories = [\"GAMMA\"]\nregions = [\"UK\"]\nreplicas = [\"b\"]\n"
    );
    std::fs::write(&topo, topology(&[&a, &b], &more)).unwrap();
    eventually(Duration::from_secs(10), "the topology reloaded", || async {
        (p.config_generation().await > generation).then_some(())
    })
    .await;
    let t = p.table().await;
    assert_eq!(t["nodes"].as_array().unwrap().len(), 2, "{t}");
    assert_eq!(p.replicas("UK/GAMMA").await, ["b"]);

    // A broken topology is rejected, naming the file and the field; the
    // running table stays.
    std::fs::write(&topo, topology(&[&a, &b], &more).replace("127.0.0.1", "")).unwrap();
    let r: serde_json::Value = reqwest::Client::new()
        .post(p.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["outcome"], "rejected", "{r}");
    let errors = r["errors"].to_string();
    assert!(
        errors.contains("topology.toml: nodes[0].address"),
        "{errors}"
    );
    assert_eq!(p.replicas("UK/GAMMA").await, ["b"]);

    // A threshold-only edit, which reuses the running topology's checked
    // shards: a value the check refuses is rejected naming the field; a
    // valid one serves, the shard's replicas untouched.
    let pinned = "replicas = [\"b\"]\n";
    let tuned = |t: &str| more.replace(pinned, &format!("{pinned}threshold = {t}\n"));
    std::fs::write(&topo, topology(&[&a, &b], &tuned("-1.0"))).unwrap();
    let r: serde_json::Value = reqwest::Client::new()
        .post(p.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["outcome"], "rejected", "{r}");
    let errors = r["errors"].to_string();
    assert!(
        errors.contains("topology.toml: shards[4].threshold"),
        "{errors}"
    );
    let generation = p.config_generation().await;
    std::fs::write(&topo, topology(&[&a, &b], &tuned("4.0"))).unwrap();
    eventually(
        Duration::from_secs(10),
        "the threshold reloaded",
        || async { (p.config_generation().await > generation).then_some(()) },
    )
    .await;
    assert_eq!(p.replicas("UK/GAMMA").await, ["b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_publishes_its_own_node_health_checks_for_the_manager() {
    let redis = shardcast_sync::testkit::Redis::start();
    let mut a = TestNode::start("a").await;
    let b = TestNode::start("b").await;
    let (_, shards) = small_catalog();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("topology.toml"),
        topology(&[&a, &b], &shards),
    )
    .unwrap();
    let (hp, ap) = (free_port(), free_port());
    let cfg = dir.path().join("proxy.toml");
    let extra = format!(
        "[health]\ninterval_ms = 200\n[control]\nmetadata = \"{}\"\nprefix = \"hp\"\n",
        redis.url()
    );
    std::fs::write(&cfg, config(hp, ap, &extra)).unwrap();
    let _p = Proxy::start_with(dir, cfg, hp, ap).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut read = || {
        let mut c = conn.clone();
        async move {
            let raw: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg(health_key("hp"))
                .query_async(&mut c)
                .await
                .ok()?;
            let (_, body) = raw.into_iter().next()?;
            serde_json::from_str::<HealthReport>(&body).ok()
        }
    };
    let r = eventually(Duration::from_secs(10), "a health report", &mut read).await;
    assert!(
        r.nodes["a"].checks_passing && r.nodes["b"].checks_passing,
        "{r:?}"
    );

    a.kill();
    let r = eventually(
        Duration::from_secs(10),
        "node a reported failing",
        || async { read().await.filter(|r| !r.nodes["a"].checks_passing) },
    )
    .await;
    assert!(r.nodes["b"].checks_passing, "{r:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(health_key("hp"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0,
        "the health hash expires when no proxy writes it: {ttl}"
    );
}
