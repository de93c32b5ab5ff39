//! Table deltas between the shard manager and a proxy, with real processes:
//! `shardcast-forecaster` running the manager (sync down, so the table
//! changes only when a node fails the proxy's health checks) pushes to one
//! `shardcast-proxy`, in front of stand-in nodes that answer every request
//! 200.
//!
//! 1. A change goes out, and the proxy takes it.
//! 2. The proxy restarts (it holds no assignment; the manager believes it
//!    delivered): the next change's delta is refused with 409 and the
//!    proxy's version, the manager sends the full table, and the proxy
//!    converges on the manager's version with every shard's replicas.

use std::time::Duration;

use serde_json::Value;
use system::{
    assignment_version, bin, eventually, free_port, get_json, proxy_toml, replicas, topology_toml,
    FakeNode, Proc,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_refuses_the_delta_and_takes_the_full_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nodes = [
        FakeNode::start().await,
        FakeNode::start().await,
        FakeNode::start().await,
        FakeNode::start().await,
    ];
    let [a, b, ne, ng] = nodes;
    std::fs::write(
        d.join("topology.toml"),
        topology_toml(
            &[
                ("a", &a.addr.to_string()),
                ("b", &b.addr.to_string()),
                ("e", &ne.addr.to_string()),
                ("g", &ng.addr.to_string()),
            ],
            &[
                ("ALPHA", &["a", "e"]),
                ("BETA", &["b", "g"]),
                ("GAMMA", &["a", "b"]),
            ],
        ),
    )
    .unwrap();
    let (mut ne, mut ng) = (Some(ne), Some(ng));
    let (hp, ap) = (free_port(), free_port());
    let proxy_file = d.join("proxy.toml");
    std::fs::write(
        &proxy_file,
        proxy_toml(
            hp,
            ap,
            "[health]\ninterval_ms = 200\ntimeout_ms = 200\neject_after_failures = 1\n",
            &[("A1", "ALPHA"), ("B1", "BETA"), ("G1", "GAMMA")],
        ),
    )
    .unwrap();
    let proxy_args = ["-c".to_string(), proxy_file.display().to_string()];
    let proxy_args: Vec<&str> = proxy_args.iter().map(String::as_str).collect();
    let mut proxy = Proc::spawn("proxy", d, &bin("shardcast-proxy"), &proxy_args);
    let admin = format!("http://127.0.0.1:{ap}");
    let client = reqwest::Client::new();
    let table = || {
        let (c, u) = (client.clone(), format!("{admin}/admin/table"));
        async move { get_json(&c, &u).await }
    };
    eventually(Duration::from_secs(30), "proxy answers", || async {
        table().await.map(|_| ())
    })
    .await;

    let fc_port = free_port();
    let root = system::workspace_root();
    let fc_file = d.join("forecaster.toml");
    std::fs::write(
        &fc_file,
        format!(
            "listen = \"127.0.0.1:{fc_port}\"\n\
             [model]\nhourly = \"{m}/shardcast_hourly.json\"\ndaily = \"{m}/shardcast_daily.json\"\n\
             [planner]\ncycle_s = 1\n\
             [manager]\ntopology = \"{p}\"\nprefix = \"td\"\nsync = \"http://127.0.0.1:1\"\n\
             proxies = [\"{admin}\"]\ninterval_ms = 200\nhealth_timeout_ms = 300\nfail_after = 1\n",
            m = root.join("forecaster/models").display(),
            p = d.join("topology.toml").display(),
        ),
    )
    .unwrap();
    let mut forecaster = Proc::spawn(
        "forecaster",
        d,
        &bin("shardcast-forecaster"),
        &["--config", &fc_file.display().to_string()],
    );
    let manager = || {
        let (c, u) = (
            client.clone(),
            format!("http://127.0.0.1:{fc_port}/manager"),
        );
        async move { get_json(&c, &u).await }
    };
    // The proxy on the manager's version, with nothing left to send, and
    // `pred` true of its table.
    let converged = |pred: Box<dyn Fn(&Value) -> bool + Send + Sync>| {
        let (manager, table) = (&manager, &table);
        async move {
            let view = manager().await?;
            let ours = assignment_version(&view["assignment_version"])?;
            if view["proxies_behind"] != serde_json::json!([]) {
                return None;
            }
            let t = table().await?;
            (assignment_version(&t["assignment_version"])? == ours && pred(&t)).then_some(ours)
        }
    };

    // 1. Node e fails: its replica leaves UK/ALPHA; the change goes out.
    drop(ne.take());
    let v1 = eventually(Duration::from_secs(30), "the proxy without e", || {
        converged(Box::new(|t| replicas(t, "UK/ALPHA") == ["a"]))
    })
    .await;
    assert!(
        proxy.log_text().contains("table update applied"),
        "{}",
        proxy.log_text()
    );

    // 2. The proxy restarts: no assignment. Node g fails: the manager's
    // delta (from v1) is refused, and the full table follows.
    proxy.kill9();
    let mut proxy = Proc::spawn("proxy-restarted", d, &bin("shardcast-proxy"), &proxy_args);
    eventually(
        Duration::from_secs(30),
        "the restarted proxy answers",
        || async { table().await.map(|_| ()) },
    )
    .await;
    drop(ng.take());
    let v2 = eventually(
        Duration::from_secs(30),
        "the restarted proxy on the manager's full table",
        || {
            converged(Box::new(|t| {
                replicas(t, "UK/ALPHA") == ["a"]
                    && replicas(t, "UK/BETA") == ["b"]
                    && replicas(t, "UK/GAMMA") == ["a", "b"]
            }))
        },
    )
    .await;
    assert!(v2 > v1, "{v2:?} after {v1:?}");
    // The restarted proxy refused the delta (its one rejected update) and
    // took the full table.
    let text = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rejected = system::metric(&text, "shardcast_table_updates_total{result=\"rejected\"}");
    let applied = system::metric(&text, "shardcast_table_updates_total{result=\"ok\"}");
    assert!(
        rejected.is_some_and(|n| n >= 1.0) && applied.is_some_and(|n| n >= 1.0),
        "the delta refused, the full table applied: {rejected:?} {applied:?}\n{}",
        proxy.log_text()
    );
    forecaster.assert_running();
    proxy.assert_running();
}
