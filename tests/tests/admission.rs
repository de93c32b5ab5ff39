//! Pre-fetch admission against the real sync scheduler: a wave of orders
//! larger than sync can finish within the order timeout is neither failed
//! for waiting nor sent all at once.
//!
//! `shardcast-sync` copies one shard at a time within a small bandwidth
//! budget (three in-process nodes on memory caches, an embedded SQLite
//! provider seeded from the catalog); `shardcast-forecaster` runs the
//! manager with `host_baseline`, so at start it wants every replica of the
//! demo topology (14 shards × 2) copied: 28 orders whose copies take
//! several times the order timeout in all, each well within it. The
//! manager may hold at most 4 open at sync: the test follows sync's own
//! list of orders while the wave goes through and checks that no more were
//! ever open there, that every replica ends warm, and that no order failed
//! (before admission, every order queued past the timeout was failed and
//! cancelled, and all 28 were at sync at once).

use std::time::{Duration, Instant};

use shardmap::contract::manager::ManagerView;
use shardmap::contract::{Order, OrderState};
use system::{bin, free_port, get_typed, metric, nodes_on_ports, workspace_root, Proc};

const TOKEN: &str = "manager-s3cret";
const CAP: usize = 4;
const TIMEOUT_MS: u64 = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_larger_than_sync_can_take_is_held_back_and_none_fails_for_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = workspace_root();
    let (fc_port, sync_port) = (free_port(), free_port());
    let node_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut topology = std::fs::read_to_string(root.join("conf/topology.toml")).unwrap();
    topology = nodes_on_ports(&topology, &node_ports);
    let topology_file = d.join("topology.toml");
    std::fs::write(&topology_file, &topology).unwrap();

    // One copy at a time at 150 KB/s: the demo catalog's ~1.5 MB of
    // copies take ~10 s, more than three order timeouts.
    let mut sync_toml = format!(
        "control = \"127.0.0.1:{sync_port}\"\ntopology = \"{topo}\"\n\
         [provider]\nurl = \"sqlite:{db}\"\nseed_catalog = \"{cat}\"\n\
         [transfer]\nconcurrency = 1\nbandwidth_bytes_per_s = 150000\npoll_interval_ms = 1000\n",
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
         proxies = []\npolicy = \"none\"\nadmin_token = \"{TOKEN}\"\n\
         interval_ms = 200\norder_timeout_ms = {TIMEOUT_MS}\norders_in_flight_max = {CAP}\n",
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

    let c = reqwest::Client::new();
    let fc = format!("http://127.0.0.1:{fc_port}");
    let sync_url = format!("http://127.0.0.1:{sync_port}");
    let started = Instant::now();
    let mut most_open = 0;
    let mut polls = 0;
    let mut first_done: Option<Instant> = None;
    let view = loop {
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the wave never went through (at most {most_open} open at sync)"
        );
        if let Some(orders) = get_typed::<Vec<Order>>(&c, &format!("{sync_url}/orders"), None).await
        {
            polls += 1;
            let open = orders.iter().filter(|o| !o.state.is_finished()).count();
            most_open = most_open.max(open);
            if first_done.is_none() && orders.iter().any(|o| o.state == OrderState::Done) {
                first_done = Some(Instant::now());
            }
        }
        if let Some(v) = get_typed::<ManagerView>(&c, &format!("{fc}/manager"), Some(TOKEN)).await {
            let hosted = v.shards.values().all(|s| {
                s.replicas
                    .iter()
                    .all(|r| s.hosted.get(&r.node).is_some_and(|h| h.warm))
            });
            let open = v.orders.iter().any(|o| o.state.is_open());
            if v.rounds > 0 && !v.shards.is_empty() && hosted && !open {
                break v;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = first_done.map_or(Duration::ZERO, |t| t.elapsed());
    let metrics = system::get_text(&c, &format!("{fc}/metrics")).await;
    let outcome = |o: &str| {
        metric(
            &metrics,
            &format!("shardcast_manager_orders_total{{outcome=\"{o}\"}}"),
        )
        .unwrap_or(-1.0)
    };
    let replicas: usize = view.shards.values().map(|s| s.replicas.len()).sum();
    println!(
        "{replicas} replicas copied, {} orders done, {} failed; at most {most_open} open at sync over {polls} polls; \
         the wave took {:.1} s after the first copy (order timeout {TIMEOUT_MS} ms); admission {:?}",
        outcome("done"),
        outcome("failed"),
        took.as_secs_f64(),
        view.admission
    );
    assert!(replicas >= 28, "{replicas}");
    assert!(
        took > Duration::from_millis(2 * TIMEOUT_MS),
        "the copies must take longer than the timeout in all for the test to mean anything ({took:?})"
    );
    assert_eq!(outcome("failed"), 0.0, "orders failed for waiting");
    assert!(outcome("done") >= replicas as f64);
    assert!(most_open <= CAP, "{most_open} orders open at sync at once");
    assert!(most_open > 0 && polls > 10);
    assert_eq!(view.admission.cap, CAP);
    assert!(view.admission.limit <= CAP);
    let m = |name: &str| metric(&metrics, name).unwrap_or(-1.0);
    assert_eq!(m("shardcast_manager_orders_cap"), CAP as f64);
    assert!(m("shardcast_manager_orders_limit") <= CAP as f64);
    for p in [&mut sync, &mut forecaster] {
        p.assert_running();
    }
}
