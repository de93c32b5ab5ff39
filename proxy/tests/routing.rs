//! Routing, load spreading, failover, reload and table updates (through the
//! admin API and from the metadata store), end to end: real nodes on
//! loopback and the real proxy binary.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use common::store::Store;
use common::*;
use shardmap::AssignmentVersion;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sku_lands_on_a_replica_of_its_shard_and_load_spreads() {
    let nodes = three_nodes().await;
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
    let mut nodes = three_nodes().await;
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
    let nodes = three_nodes().await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let mut o = opts();
    let p = Proxy::start(&refs, opts()).await;
    let v1 = p.config_generation().await;
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
    let v2 = p.config_generation().await;
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

    // 2. an invalid config: rejected with its errors, generation unchanged
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
        p.config_generation().await,
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
    let v3 = p.config_generation().await;
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
    let nodes = three_nodes().await;
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), opts()).await;
    let c = client();
    // No manager has assigned anything yet: every update is newer.
    assert_eq!(p.assignment_version().await, AssignmentVersion::NONE);
    let upd = |version: AssignmentVersion, node: &str| {
        serde_json::json!({"version": version, "shards": {"UK/BETA": [
            {"node": node, "state": "serving"},
            {"node": "n1", "state": "warming"}
        ]}})
    };
    let v = AssignmentVersion::new(1, 10);
    let r = c
        .put(p.admin_url("/admin/table"))
        .json(&upd(v, "n3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["assignment_version"], serde_json::json!(v));
    assert_eq!(answer["config_generation"], 1);
    assert_eq!(p.assignment_version().await, v);
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
    // Older, equal, and of a lower epoch (a bare counter is epoch 0),
    // however high its counter: 409 with the version the proxy keeps.
    for stale in [
        serde_json::json!(AssignmentVersion::new(1, 5)),
        serde_json::json!(v),
        serde_json::json!(1_000_000_u64),
    ] {
        let mut body = upd(v, "n2");
        body["version"] = stale.clone();
        let r = c
            .put(p.admin_url("/admin/table"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409, "{stale}");
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            answer["assignment_version"],
            serde_json::json!(v),
            "{answer}"
        );
        assert!(
            answer["error"].as_str().unwrap().contains("not newer"),
            "{answer}"
        );
    }
    let r = c
        .put(p.admin_url("/admin/table"))
        .json(&upd(v.next(), "zz"))
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
    assert_eq!(p.assignment_version().await, v);
    assert_eq!(p.replicas("UK/BETA").await, vec!["n3", "n1"]);
    // A higher epoch outranks any counter of a lower one.
    let r = c
        .put(p.admin_url("/admin/table"))
        .json(&upd(AssignmentVersion::new(2, 0), "n2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(p.replicas("UK/BETA").await, vec!["n2", "n1"]);
}

/// The dropped update: a proxy holds the manager's assignment at V; a
/// config reload (a file change) must not move the number the manager
/// compares against, so the manager's next assignment (V + 1) applies,
/// and one at V or below is refused with the proxy's V in the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_keeps_the_managers_next_assignment() {
    let nodes = three_nodes().await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let o = opts();
    let p = Proxy::start(&refs, opts()).await;
    let c = client();
    let put = |version: AssignmentVersion, node: &str| {
        let body = serde_json::json!({"version": version, "shards": {"UK/ALPHA": [
            {"node": node, "state": "serving"}
        ]}});
        c.put(p.admin_url("/admin/table")).json(&body).send()
    };
    let v = AssignmentVersion::new(1, 5);
    assert_eq!(put(v, "n3").await.unwrap().status(), 200);
    assert_eq!(p.assignment_version().await, v);
    let g = p.config_generation().await;

    // A config reload by file change (the file watcher, not the API).
    let (hp, ap) = (p.http.port(), p.admin.port());
    let text = Proxy::config_text(hp, ap, &refs, &o);
    std::fs::write(&p.config, text.replace("capacity = 100", "capacity = 90")).unwrap();
    eventually(
        Duration::from_secs(5),
        "the file change reloaded",
        || async { (p.config_generation().await > g).then_some(()) },
    )
    .await;
    assert_eq!(
        p.assignment_version().await,
        v,
        "a reload moved the assignment version"
    );
    assert_eq!(p.replicas("UK/ALPHA").await, ["n3"], "the assignment stays");

    // The manager's next assignment applies, and is what the proxy shows.
    let r = put(v.next(), "n2").await.unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    let t = p.table().await;
    assert_eq!(t["assignment_version"], serde_json::json!(v.next()), "{t}");
    assert!(t["config_generation"].as_u64().unwrap() > g, "{t}");
    assert_eq!(p.replicas("UK/ALPHA").await, ["n2"]);
    for i in 0..10 {
        let r = c
            .get(p.url(&format!("/inventory/A{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-node"], "n2");
    }

    // At or below the assignment version: 409 with the proxy's version.
    for stale in [v.next(), v] {
        let r = put(stale, "n1").await.unwrap();
        assert_eq!(r.status(), 409);
        let answer: shardmap::UpdateAnswer = r.json().await.unwrap();
        assert_eq!(answer.assignment_version, v.next());
        assert!(answer.error.is_some());
    }
    assert_eq!(p.replicas("UK/ALPHA").await, ["n2"]);

    // History has both numbers for every event.
    let h: serde_json::Value = reqwest::get(p.admin_url("/admin/history"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let causes: Vec<(String, serde_json::Value, u64)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["cause"].as_str().unwrap().to_string(),
                e["assignment_version"].clone(),
                e["config_generation"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        causes[0],
        (
            "start".into(),
            serde_json::json!(AssignmentVersion::NONE),
            1
        )
    );
    assert_eq!(causes[1], ("update".into(), serde_json::json!(v), 1));
    assert!(causes[2].0.starts_with("reload:"), "{h}");
    assert_eq!(causes[2].1, serde_json::json!(v));
    assert_eq!(causes.last().unwrap().1, serde_json::json!(v.next()), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_converge_on_the_table_published_in_redis() {
    let mut store = Store::start("t1").await;
    let nodes = three_nodes().await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let o = store.follower_opts(5000);
    let a = Proxy::start(&refs, o.clone()).await;
    let b = Proxy::start(&refs, o).await;
    for (i, node) in ["n3", "n2"].iter().enumerate() {
        let version = 100 + i as u64;
        let update = serde_json::json!({"version": version, "shards": {"UK/ALPHA": [{"node": node, "state": "serving"}]}});
        store.set_table(&update.to_string()).await;
        let t0 = std::time::Instant::now();
        store.notify(&version.into()).await;
        for p in [&a, &b] {
            // A bare counter in the store: epoch 0.
            let version = AssignmentVersion::new(0, version);
            eventually(
                Duration::from_secs(3),
                "proxy applies the published table",
                || async { (p.assignment_version().await == version).then_some(()) },
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
    store.set_table(&stale.to_string()).await;
    store.notify(&5.into()).await;
    drop(store);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in [&a, &b] {
        assert_eq!(p.assignment_version().await, AssignmentVersion::new(0, 101));
        let r = reqwest::get(p.url("/inventory/A2")).await.unwrap();
        assert_eq!(r.status(), 200);
    }
}
