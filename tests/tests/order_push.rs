//! A finished pre-fetch reaches the routing table at once, with real
//! processes: `shardcast-sync` (the scheduler, three in-process nodes on
//! memory caches, an embedded SQLite provider seeded from the catalog),
//! `shardcast-forecaster` running the shard manager, and one
//! `shardcast-proxy` the manager PUTs its tables to.
//!
//! The manager's polling interval is long (5 s), so only sync's push
//! (`POST /order-events`) can make it act sooner. An operator pins shards
//! one at a time to a node that does not hold them: the manager adds a
//! warming replica there and orders the pre-fetch; the test measures the
//! time from the order's end at sync (`finished_unix_ms`) to the replica
//! being `serving` in the proxy's `/admin/table`, and prints p50 and max.
//!
//! On the way it reads what the other processes actually send through the
//! shared contract types: sync's orders, the manager's view, the proxy's
//! table; and it checks the receiver's idempotency and its token rule.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use shardmap::contract::manager::ManagerView;
use shardmap::contract::{Order, OrderEvent, OrderEventAnswer, OrderState};
use shardmap::{ReplicaState, TableView};
use system::{
    bin, eventually, free_port, get_text, get_typed, metric, nodes_on_ports, workspace_root, Proc,
};

const TOKEN: &str = "manager-s3cret";
/// The manager's polling interval: far above the latency measured.
const INTERVAL_MS: u64 = 5000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_prefetch_serves_without_waiting_for_the_next_round() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = workspace_root();
    let (hp, ap, fc_port, sync_port) = (free_port(), free_port(), free_port(), free_port());
    let node_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();

    // The demo topology (14 shards, 3 nodes) on free ports: the one file
    // every process reads; the demo proxy config beside it names it.
    let mut topology = std::fs::read_to_string(root.join("conf/topology.toml")).unwrap();
    topology = nodes_on_ports(&topology, &node_ports);
    let topology_file = d.join("topology.toml");
    std::fs::write(&topology_file, &topology).unwrap();
    let proxy = std::fs::read_to_string(root.join("conf/proxy-demo.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{hp}"))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{ap}"))
        .replace("127.0.0.1:9300", &format!("127.0.0.1:{fc_port}"))
        .replace(
            "../data/online_retail/catalog.csv.gz",
            &root
                .join("data/online_retail/catalog.csv.gz")
                .display()
                .to_string(),
        );
    let proxy_file = d.join("proxy.toml");
    std::fs::write(&proxy_file, proxy).unwrap();

    let mut sync_toml = format!(
        "control = \"127.0.0.1:{sync_port}\"\ntopology = \"{topo}\"\n\
         [provider]\nurl = \"sqlite:{db}\"\nseed_catalog = \"{cat}\"\n\
         [transfer]\nconcurrency = 4\npoll_interval_ms = 1000\n\
         [manager]\nurls = [\"http://127.0.0.1:{fc_port}\"]\ntoken = \"{TOKEN}\"\n",
        topo = topology_file.display(),
        db = d.join("provider.db").display(),
        cat = root.join("data/online_retail/catalog.csv.gz").display(),
    );
    for (n, p) in ["node-a", "node-b", "node-c"].iter().zip(&node_ports) {
        sync_toml.push_str(&format!(
            "[[nodes]]\nname = \"{n}\"\ncache = \"memory\"\nlisten = \"127.0.0.1:{p}\"\n"
        ));
    }
    let sync_file = d.join("sync.toml");
    std::fs::write(&sync_file, sync_toml).unwrap();
    let mut sync = Proc::spawn(
        "sync",
        d,
        &bin("shardcast-sync"),
        &["serve", "--config", &sync_file.display().to_string()],
    );

    let fc_toml = format!(
        "listen = \"127.0.0.1:{fc_port}\"\n\
         [model]\nhourly = \"{m}/shardcast_hourly.json\"\ndaily = \"{m}/shardcast_daily.json\"\n\
         [planner]\ncycle_s = 1\n\
         [manager]\ntopology = \"{p}\"\nsync = \"http://127.0.0.1:{sync_port}\"\n\
         proxies = [\"http://127.0.0.1:{ap}\"]\npolicy = \"none\"\nadmin_token = \"{TOKEN}\"\n\
         interval_ms = {INTERVAL_MS}\ndrain_ms = 500\nhealth_timeout_ms = 300\nfail_after = 2\nchurn_budget = 3\n",
        m = root.join("forecaster/models").display(),
        p = topology_file.display(),
    );
    let fc_file = d.join("forecaster.toml");
    std::fs::write(&fc_file, fc_toml).unwrap();
    let mut forecaster = Proc::spawn(
        "forecaster",
        d,
        &bin("shardcast-forecaster"),
        &["--config", &fc_file.display().to_string()],
    );
    let mut proxy = Proc::spawn(
        "proxy",
        d,
        &bin("shardcast-proxy"),
        &["-c", &proxy_file.display().to_string()],
    );

    let c = reqwest::Client::new();
    let fc = format!("http://127.0.0.1:{fc_port}");
    let sync_url = format!("http://127.0.0.1:{sync_port}");
    let table_url = format!("http://127.0.0.1:{ap}/admin/table");
    let view = || {
        let (c, u) = (c.clone(), format!("{fc}/manager"));
        async move { get_typed::<ManagerView>(&c, &u, Some(TOKEN)).await }
    };

    // The baseline: every replica of the config pre-fetched (the manager
    // orders each one its node's cache does not hold) and none pending.
    eventually(
        Duration::from_secs(120),
        "initial pre-fetches done",
        || async {
            let v = view().await?;
            let hosted = v.shards.values().all(|s| {
                s.replicas
                    .iter()
                    .all(|r| s.hosted.get(&r.node).is_some_and(|h| h.warm))
            });
            let open = v.orders.iter().any(|o| o.state.is_open());
            (v.rounds > 0 && hosted && !open && !v.shards.is_empty()).then_some(())
        },
    )
    .await;
    for p in [&mut sync, &mut forecaster, &mut proxy] {
        p.assert_running();
    }

    let mut latencies = Vec::new();
    let table: TableView = get_typed(&c, &table_url, None).await.expect("proxy table");
    for shard in table.shards.iter().take(6) {
        let id = &shard.id;
        let have: Vec<&str> = shard.replicas.iter().map(|r| r.node.as_str()).collect();
        let new = ["node-a", "node-b", "node-c"]
            .into_iter()
            .find(|n| !have.contains(n))
            .expect("a node without the shard");
        // Pinned to its first replica and the new node: the second moves.
        let pin = c
            .put(format!("{fc}/manager/pins/{}", id.replace('/', "%2F")))
            .bearer_auth(TOKEN)
            .json(&json!({"nodes": [have[0], new]}))
            .send()
            .await
            .unwrap();
        assert_eq!(pin.status(), 200, "{}", pin.text().await.unwrap());

        // Watch the proxy's table closely until the new replica serves.
        let started = Instant::now();
        let serving_at = loop {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{id} never served from {new}"
            );
            if let Some(t) = get_typed::<TableView>(&c, &table_url, None).await {
                let serves = t.shards.iter().find(|s| &s.id == id).is_some_and(|s| {
                    s.replicas
                        .iter()
                        .any(|r| r.node == new && r.state == ReplicaState::Serving)
                });
                if serves {
                    break now_ms();
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let orders: Vec<Order> = get_typed(&c, &format!("{sync_url}/orders?state=done"), None)
            .await
            .expect("sync's orders");
        let done = orders
            .iter()
            .filter(|o| &o.shard == id && o.node == new && o.state == OrderState::Done)
            .max_by_key(|o| o.id)
            .expect("the pre-fetch order, done");
        let finished = done.finished_unix_ms.expect("finished_unix_ms");
        assert!(
            serving_at + 5 >= finished,
            "served before the copy was done"
        );
        latencies.push(serving_at.saturating_sub(finished));
    }
    latencies.sort_unstable();
    let (p50, max) = (percentile(&latencies, 0.5), *latencies.last().unwrap());
    println!(
        "order done at sync → replica serving in the proxy's table: p50 {p50} ms, max {max} ms over {} orders ({latencies:?} ms; the manager polls every {INTERVAL_MS} ms)",
        latencies.len()
    );
    // Well inside one polling interval: the push, not the poll, did it.
    assert!(max < INTERVAL_MS / 3, "{latencies:?}");

    let sync_metrics = get_text(&c, &format!("{sync_url}/metrics")).await;
    let sent = metric(
        &sync_metrics,
        "shardcast_sync_order_events_total{outcome=\"sent\"}",
    )
    .unwrap_or(0.0);
    assert!(sent >= latencies.len() as f64, "{sent}");
    // Each push woke a round that followed the orders without planning;
    // the planning rounds stayed on the interval and the pins.
    let fc_metrics = get_text(&c, &format!("{fc}/metrics")).await;
    let order_rounds =
        metric(&fc_metrics, "shardcast_manager_orders_round_seconds_count").unwrap_or(0.0);
    assert!(
        order_rounds >= latencies.len() as f64,
        "{order_rounds} rounds following orders for {} pushes",
        latencies.len()
    );

    // The receiver: behind the token, idempotent per (source, seq).
    let ev = OrderEvent {
        source: "test-run".into(),
        seq: 1,
        order: 1,
        shard: table.shards[0].id.clone(),
        node: "node-a".into(),
        state: OrderState::Done,
        epoch: 1,
        at_unix_ms: now_ms(),
        reason: None,
    };
    let post = |token: Option<&'static str>, body: serde_json::Value| {
        let (c, u) = (c.clone(), format!("{fc}/order-events"));
        async move {
            let mut r = c.post(u).json(&body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let body = serde_json::to_value(&ev).unwrap();
    assert_eq!(post(None, body.clone()).await.0, 401);
    let (st, a) = post(Some(TOKEN), body.clone()).await;
    assert_eq!(st, 200, "{a}");
    let a: OrderEventAnswer = serde_json::from_str(&a).unwrap();
    assert!(a.accepted && !a.duplicate);
    let (st, a) = post(Some(TOKEN), body.clone()).await;
    assert_eq!(st, 200, "{a}");
    let a: OrderEventAnswer = serde_json::from_str(&a).unwrap();
    assert!(!a.accepted && a.duplicate);
    let mut odd = body.clone();
    odd["state"] = json!("failed");
    assert_eq!(post(Some(TOKEN), odd).await.0, 400);
    for p in [&mut sync, &mut forecaster, &mut proxy] {
        p.assert_running();
    }
}
