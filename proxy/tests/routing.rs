//! Routing, load spreading, failover and reload, end to end: real nodes on
//! loopback and the real proxy binary.

mod common;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sku_lands_on_a_replica_of_its_shard_and_load_spreads() {
    let nodes = [
        TestNode::start("n1").await,
        TestNode::start("n2").await,
        TestNode::start("n3").await,
    ];
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), opts()).await;
    let c = client();
    let mut per_shard_nodes: std::collections::HashMap<String, Vec<String>> = Default::default();
    for i in 0..100 {
        for (sku, region) in [(format!("A{i}"), "UK"), (format!("B{i}"), "INTL")] {
            let r = c
                .get(p.url(&format!("/inventory/{sku}?region={region}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let shard = r.headers()["x-shardcast-shard"]
                .to_str()
                .unwrap()
                .to_string();
            let node = r.headers()["x-shardcast-node"]
                .to_str()
                .unwrap()
                .to_string();
            assert_eq!(
                r.headers()["x-node"].to_str().unwrap(),
                node,
                "header names the node that answered"
            );
            let want = if sku.starts_with('A') {
                "ALPHA"
            } else {
                "BETA"
            };
            assert_eq!(shard, format!("{region}/{want}"));
            per_shard_nodes.entry(shard).or_default().push(node);
        }
    }
    for (shard, served) in &per_shard_nodes {
        let replicas = p.replicas(shard).await;
        assert_eq!(replicas.len(), 2);
        let counts = count_by(served.iter().map(String::as_str));
        for (node, n) in &counts {
            assert!(
                replicas.contains(node),
                "{shard} served by {node}, not a replica ({replicas:?})"
            );
            assert!(
                *n >= 20,
                "{shard}: load not spread across replicas: {counts:?}"
            );
        }
        assert_eq!(counts.len(), 2, "{shard}: both replicas serve: {counts:?}");
    }
    // unknown skus still route (hash fallback), keyless requests get a 400
    let r = c.get(p.url("/inventory/NOPE-123")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(p.url("/inventory/")).send().await.unwrap();
    assert_eq!(r.status(), 400, "empty sku");
    let r = c.get(p.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_goes_to_default_pool_when_configured() {
    let nodes = [TestNode::start("n1").await, TestNode::start("n2").await];
    let mut o = opts();
    o.routes = r#"
[[routes]]
name = "by-query"
path = "/lookup"
sku_query = "sku"
on_missing_key = "default_pool"
default_pool = ["n2"]
[[routes]]
name = "strict"
path = "/strict"
sku_header = "x-sku"
"#
    .into();
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let c = client();
    let r = c.get(p.url("/lookup")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-node"], "n2");
    let r = c.get(p.url("/lookup?sku=A1")).send().await.unwrap();
    assert_eq!(r.headers()["x-shardcast-shard"], "UK/ALPHA");
    let r = c.get(p.url("/strict")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("missing sku"));
    let r = c
        .get(p.url("/strict"))
        .header("x-sku", "B3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-shardcast-shard"], "UK/BETA");
}

/// Sends GETs from `workers` tasks until `stop`; returns (ok, failed).
fn load(
    url_base: String,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64, Vec<String>)>> {
    (0..workers)
        .map(|w| {
            let (base, stop) = (url_base.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let (mut ok, mut bad, mut errs) = (0u64, 0u64, vec![]);
                let mut i = w;
                while !stop.load(SeqCst) {
                    i += 1;
                    let sku = if i % 2 == 0 {
                        format!("A{}", i % 100)
                    } else {
                        format!("B{}", i % 100)
                    };
                    match c.get(format!("{base}/inventory/{sku}")).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => {
                            bad += 1;
                            errs.push(format!("status {}", r.status()));
                        }
                        Err(e) => {
                            bad += 1;
                            errs.push(e.to_string());
                        }
                    }
                }
                (ok, bad, errs)
            })
        })
        .collect()
}

async fn finish(
    h: Vec<tokio::task::JoinHandle<(u64, u64, Vec<String>)>>,
) -> (u64, u64, Vec<String>) {
    let (mut ok, mut bad, mut errs) = (0, 0, vec![]);
    for t in h {
        let (o, b, e) = t.await.unwrap();
        ok += o;
        bad += b;
        errs.extend(e);
    }
    (ok, bad, errs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_fails_no_get_and_returns_after_recovery() {
    let mut nodes = [
        TestNode::start("n1").await,
        TestNode::start("n2").await,
        TestNode::start("n3").await,
    ];
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), opts()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = load(format!("http://{}", p.http), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[1].kill();
    let served_before = nodes[1].hits.load(SeqCst);
    // ejected (passively or by health check)
    eventually(Duration::from_secs(5), "n2 out of rotation", || async {
        let t = p.table().await;
        let n = t["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "n2")
            .cloned()
            .unwrap();
        (n["health"] != "healthy").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    nodes[1].restart().await;
    eventually(
        Duration::from_secs(10),
        "n2 back in rotation and serving",
        || async {
            let t = p.table().await;
            let n = t["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == "n2")
                .cloned()
                .unwrap();
            (n["health"] == "healthy" && nodes[1].hits.load(SeqCst) > served_before + 20)
                .then_some(())
        },
    )
    .await;
    stop.store(true, SeqCst);
    let (ok, bad, errs) = finish(h).await;
    assert!(ok > 200, "too little load to mean anything: {ok}");
    assert_eq!(
        bad,
        0,
        "failed GETs while a node died: {:?}",
        &errs[..errs.len().min(5)]
    );
    assert!(p.metric("shardcast_retries_total").await.unwrap() >= 1.0);
    assert!(
        p.metric("shardcast_node_ejections_total{node=\"n2\"}")
            .await
            .unwrap()
            >= 1.0
            || p.log_text().contains("health check failed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_on_another_replica() {
    let nodes = [TestNode::start("n1").await, TestNode::start("n2").await];
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), opts()).await;
    nodes[0].mode.store(FAIL_503, SeqCst);
    let c = client();
    for i in 0..40 {
        let r = c
            .get(p.url(&format!("/inventory/A{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-node"], "n2");
    }
    // POST is not idempotent: a 503 goes back to the client rather than
    // being replayed, unless the first choice was n2.
    let mut saw_503 = false;
    for i in 0..40 {
        let r = c
            .post(p.url(&format!("/inventory/A{i}")))
            .body("x")
            .send()
            .await
            .unwrap();
        saw_503 |= r.status() == 503;
        if saw_503 {
            break;
        }
        nodes[0].mode.store(FAIL_503, SeqCst);
    }
    let _ = saw_503; // n1 may be ejected by now; the GET half is the assertion
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dropping_the_connection_before_answering_is_retried_elsewhere() {
    let nodes = [TestNode::start("n1").await, TestNode::start("n2").await];
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), opts()).await;
    nodes[0].mode.store(RESET, SeqCst);
    let c = client();
    for i in 0..40 {
        let r = c
            .get(p.url(&format!("/inventory/A{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["x-node"], "n2");
    }
    assert!(
        nodes[0].hits.load(SeqCst) > 0,
        "n1 was tried and dropped requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_nothing_and_bad_config_is_rejected() {
    let nodes = [
        TestNode::start("n1").await,
        TestNode::start("n2").await,
        TestNode::start("n3").await,
    ];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let mut o = opts();
    let p = Proxy::start(&refs, opts()).await;
    let v1 = p.version().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = load(format!("http://{}", p.http), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. POST /admin/reload with a changed assignment
    let hp = p.http.port();
    let ap = p.admin.port();
    o.shards = o.shards.replace(
        "id = \"UK/ALPHA\"",
        "id = \"UK/ALPHA\"\nreplicas = [\"n3\"]",
    );
    std::fs::write(&p.config, Proxy::config_text(hp, ap, &refs, &o)).unwrap();
    let c = client();
    let r = c.post(p.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v2 = p.version().await;
    assert!(v2 > v1);
    assert_eq!(p.replicas("UK/ALPHA").await, vec!["n3"]);
    for i in 0..20 {
        let r = c
            .get(p.url(&format!("/inventory/A{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-node"], "n3", "new routing visible");
    }

    // 2. an invalid config: rejected with its errors, version unchanged
    let good = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        good.replace("replicas = [\"n3\"]", "replicas = [\"n9\"]")
            .replace("capacity = 100", "capacity = -5"),
    )
    .unwrap();
    let r = c.post(p.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["outcome"], "rejected");
    let errs = body["errors"].to_string();
    assert!(
        errs.contains("unknown node `n9`") && errs.contains("capacity"),
        "{errs}"
    );
    let history = reqwest::get(p.admin_url("/admin/history"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        p.version().await,
        v2,
        "history: {history}\nlog: {}",
        p.log_text()
    );

    // 3. SIGHUP, with the file fixed again
    std::fs::write(
        &p.config,
        good.replace("replicas = [\"n3\"]", "replicas = [\"n1\"]"),
    )
    .unwrap();
    // (the file watcher may already have applied it; either way it lands)
    p.signal("HUP");
    eventually(
        Duration::from_secs(5),
        "UK/ALPHA on n1 after SIGHUP/file change",
        || async { (p.replicas("UK/ALPHA").await == vec!["n1"]).then_some(()) },
    )
    .await;
    let v3 = p.version().await;
    assert!(v3 > v2);

    // 4. a file change alone
    std::fs::write(
        &p.config,
        good.replace("replicas = [\"n3\"]", "replicas = [\"n2\"]"),
    )
    .unwrap();
    eventually(
        Duration::from_secs(5),
        "UK/ALPHA on n2 after a file change",
        || async { (p.replicas("UK/ALPHA").await == vec!["n2"]).then_some(()) },
    )
    .await;

    stop.store(true, SeqCst);
    let (ok, bad, errs) = finish(h).await;
    assert!(ok > 100);
    assert_eq!(
        bad,
        0,
        "failed requests during reloads: {:?}",
        &errs[..errs.len().min(5)]
    );
    assert!(
        p.metric("shardcast_config_reloads_total{result=\"failed\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_updates_apply_only_when_newer() {
    let nodes = [
        TestNode::start("n1").await,
        TestNode::start("n2").await,
        TestNode::start("n3").await,
    ];
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), opts()).await;
    let c = client();
    let v = p.version().await;
    let upd = |version: u64, node: &str| {
        serde_json::json!({"version": version, "shards": {"UK/BETA": [
            {"node": node, "state": "serving"},
            {"node": "n1", "state": "warming"}
        ]}})
    };
    let r = c
        .put(p.admin_url("/admin/table"))
        .json(&upd(v + 10, "n3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(p.version().await, v + 10);
    for i in 0..20 {
        let r = c
            .get(p.url(&format!("/inventory/B{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()["x-node"],
            "n3",
            "warming replica gets no traffic"
        );
    }
    let r = c
        .put(p.admin_url("/admin/table"))
        .json(&upd(v + 5, "n2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = c
        .put(p.admin_url("/admin/table"))
        .json(&upd(v + 11, "zz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = c
        .put(p.admin_url("/admin/table"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(p.version().await, v + 10);
    assert_eq!(p.replicas("UK/BETA").await, vec!["n3", "n1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_frames_reach_a_file_sink_and_metrics_count() {
    let nodes = [TestNode::start("n1").await, TestNode::start("n2").await];
    let mut o = opts();
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("frames.jsonl");
    o.extra = o.extra.replace(
        "[telemetry]\n",
        &format!("[telemetry]\nsink = \"file:{}\"\n", sink.display()),
    );
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let c = client();
    for i in 0..50 {
        c.get(p.url(&format!("/inventory/A{}", i % 3)))
            .send()
            .await
            .unwrap();
    }
    let frames = eventually(Duration::from_secs(5), "a frame with UK/ALPHA", || async {
        let text = read_file(&sink);
        let frames: Vec<shardmap::Frame> = text
            .lines()
            .filter_map(|l| shardmap::Frame::decode(l.as_bytes()).ok())
            .collect();
        let total: u64 = frames
            .iter()
            .flat_map(|f| &f.shards)
            .filter(|s| s.shard == "UK/ALPHA")
            .map(|s| s.requests)
            .sum();
        (total == 50).then_some(frames)
    })
    .await;
    let s = frames
        .iter()
        .flat_map(|f| &f.shards)
        .find(|s| s.shard == "UK/ALPHA")
        .unwrap();
    assert!(s.latency.count > 0 && s.latency.p50_us > 0);
    assert!(s.cache_hits + s.cache_misses > 0);
    assert!(!s.top_skus.is_empty());
    let m = p
        .metric("shardcast_shard_requests_total{shard=\"UK/ALPHA\"}")
        .await
        .unwrap();
    assert_eq!(m, 50.0);
    let _ = AtomicU64::new(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_sink_down_drops_and_counts_without_blocking() {
    let nodes = [TestNode::start("n1").await];
    let mut o = opts();
    o.extra = "replication_factor = 1\n[telemetry]\ninterval_s = 1\nqueue = 2\nsink = \"http://127.0.0.1:1/ingest\"\n".into();
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let c = client();
    for _ in 0..5 {
        for i in 0..10 {
            assert_eq!(
                c.get(p.url(&format!("/inventory/A{i}")))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    eventually(Duration::from_secs(6), "dropped frames counted", || async {
        (p.metric("shardcast_telemetry_frames_total{result=\"dropped\"}")
            .await?
            >= 1.0)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_converge_on_the_table_published_in_redis() {
    let redis = shardcast_sync::testkit::Redis::start();
    let nodes = [
        TestNode::start("n1").await,
        TestNode::start("n2").await,
        TestNode::start("n3").await,
    ];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let mut o = opts();
    o.extra = format!(
        "{}\n[control]\nmetadata = \"{}\"\nprefix = \"t1\"\npoll_ms = 5000\n",
        o.extra,
        redis.url()
    );
    let a = Proxy::start(
        &refs,
        ProxyOpts {
            extra: o.extra.clone(),
            shards: o.shards.clone(),
            catalog: o.catalog.clone(),
            routes: o.routes.clone(),
            https: None,
        },
    )
    .await;
    let b = Proxy::start(&refs, o).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (i, node) in ["n3", "n2"].iter().enumerate() {
        let version = 100 + i as u64;
        let update = serde_json::json!({"version": version, "shards": {"UK/ALPHA": [{"node": node, "state": "serving"}]}});
        let _: () = redis::cmd("SET")
            .arg("t1:table")
            .arg(update.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        let t0 = std::time::Instant::now();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("t1:table:changed")
            .arg(version)
            .query_async(&mut conn)
            .await
            .unwrap();
        for p in [&a, &b] {
            eventually(
                Duration::from_secs(3),
                "proxy applies the published table",
                || async { (p.version().await == version).then_some(()) },
            )
            .await;
            assert_eq!(p.replicas("UK/ALPHA").await, vec![node.to_string()]);
        }
        // notification-driven, not the 5 s poll
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "converged in {:?}",
            t0.elapsed()
        );
    }
    let r = reqwest::get(a.url("/inventory/A1")).await.unwrap();
    assert_eq!(r.headers()["x-node"], "n2");
    // A stale table in the store is ignored; Redis going away changes nothing.
    let stale = serde_json::json!({"version": 5, "shards": {"UK/ALPHA": [{"node": "n1", "state": "serving"}]}});
    let _: () = redis::cmd("SET")
        .arg("t1:table")
        .arg(stale.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("t1:table:changed")
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(redis);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in [&a, &b] {
        assert_eq!(p.version().await, 101);
        let r = reqwest::get(p.url("/inventory/A2")).await.unwrap();
        assert_eq!(r.status(), 200);
    }
}
