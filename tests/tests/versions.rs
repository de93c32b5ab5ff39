//! Assignment versions between the shard manager and proxies, with real
//! processes: two `shardcast-proxy` — one the manager PUTs to, one that
//! follows a throwaway Redis — and `shardcast-forecaster` running the
//! manager, in front of stand-in nodes that answer every request 200.
//!
//! A refusal is never delivery. 1. The pushed proxy holds a newer
//! assignment version than the manager (`PUT /admin/table` by hand): the
//! manager's next table is refused with 409, and the manager re-sends it
//! numbered past the proxy's; both proxies converge. 2. The metadata store
//! holds a newer table than the manager's (another writer): the manager
//! numbers its table past it, and the follower converges.
//!
//! The manager changes its table when a node fails the proxies' health
//! checks (the follower publishes them in the store; the manager has no
//! checker of its own): its replicas leave at once; sync is down, so
//! nothing else changes.

use std::time::Duration;

use serde_json::{json, Value};
use system::{
    assignment_version, bin, control_section, eventually, free_port, get_json, metric, proxy_toml,
    replicas, topology_toml, FakeNode, Proc, Redis,
};

/// The replica nodes of `shard` in a proxy's `/admin/table`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_numbers_its_table_past_a_refusal_and_the_proxies_converge() {
    const PREFIX: &str = "vt";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let redis = Redis::start();
    let (a, b, e) = (
        FakeNode::start().await,
        FakeNode::start().await,
        FakeNode::start().await,
    );
    let mut e = Some(e);
    // `c` is down from the start: nothing listens there.
    let dead = format!("127.0.0.1:{}", free_port());
    let fc_port = free_port();
    // Two proxies: `pushed` gets the manager's PUTs and does not follow the
    // store; `follower` only follows the store.
    // The topology the proxies and the manager read.
    let topology = d.join("topology.toml");
    std::fs::write(
        &topology,
        topology_toml(
            &[
                ("a", &a.addr.to_string()),
                ("b", &b.addr.to_string()),
                ("c", &dead),
                ("e", &e.as_ref().unwrap().addr.to_string()),
            ],
            &[("ALPHA", &["a", "c"]), ("BETA", &["b", "e"])],
        ),
    )
    .unwrap();
    let proxy_toml = |hp: u16, ap: u16, metadata: Option<&str>| {
        let control = control_section(metadata, PREFIX, 500);
        proxy_toml(hp, ap, &control, &[("A1", "ALPHA"), ("B1", "BETA")])
    };
    let mut procs = Vec::new();
    let mut admins = Vec::new();
    let mut files = Vec::new();
    for (name, metadata) in [("pushed", None), ("follower", Some(redis.url()))] {
        let (hp, ap) = (free_port(), free_port());
        let f = d.join(format!("{name}.toml"));
        std::fs::write(&f, proxy_toml(hp, ap, metadata.as_deref())).unwrap();
        procs.push(Proc::spawn(
            name,
            d,
            &bin("shardcast-proxy"),
            &["-c", &f.display().to_string()],
        ));
        admins.push(format!("http://127.0.0.1:{ap}"));
        files.push(f);
    }
    let client = reqwest::Client::new();
    let table = |i: usize| {
        let (c, u) = (client.clone(), format!("{}/admin/table", admins[i]));
        async move { get_json(&c, &u).await }
    };
    for i in 0..2 {
        eventually(Duration::from_secs(30), "proxy answers", || async {
            table(i).await.map(|_| ())
        })
        .await;
    }

    // 1. The pushed proxy holds a newer version of the manager's epoch (1)
    // than the manager will start with (its counter starts at the clock,
    // in ms).
    let ahead = (1u64, 1u64 << 60);
    let r = client
        .put(format!("{}/admin/table", admins[0]))
        .json(&json!({"version": {"epoch": ahead.0, "counter": ahead.1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let root = system::workspace_root();
    let fc_toml = format!(
        "listen = \"127.0.0.1:{fc_port}\"\n\
         [model]\nhourly = \"{m}/shardcast_hourly.json\"\ndaily = \"{m}/shardcast_daily.json\"\n\
         [planner]\ncycle_s = 1\n\
         [manager]\ntopology = \"{p}\"\nprefix = \"{PREFIX}\"\nsync = \"http://127.0.0.1:1\"\nmetadata = \"{redis}\"\n\
         proxies = [\"{pushed}\"]\ninterval_ms = 200\nhealth_timeout_ms = 300\nfail_after = 1\n",
        m = root.join("forecaster/models").display(),
        p = topology.display(),
        redis = redis.url(),
        pushed = admins[0],
    );
    let fc_file = d.join("forecaster.toml");
    std::fs::write(&fc_file, fc_toml).unwrap();
    let mut forecaster = Proc::spawn(
        "forecaster",
        d,
        &bin("shardcast-forecaster"),
        &["--config", &fc_file.display().to_string()],
    );
    let fc = format!("http://127.0.0.1:{fc_port}");
    let manager = || {
        let (c, u) = (client.clone(), format!("{fc}/manager"));
        async move { get_json(&c, &u).await }
    };
    let refusals = |target: &'static str| {
        let (c, u) = (client.clone(), format!("{fc}/metrics"));
        async move {
            let text = c.get(&u).send().await.ok()?.text().await.ok()?;
            metric(
                &text,
                &format!("shardcast_manager_table_refusals_total{{target=\"{target}\"}}"),
            )
        }
    };
    // Both proxies on the manager's version, which passes `floor`, with
    // the manager's table delivered (nothing left to send) and `pred` true.
    let converged = |floor: (u64, u64), pred: fn(&Value) -> bool| {
        let (manager, table) = (&manager, &table);
        async move {
            let view = manager().await?;
            let ours = assignment_version(&view["assignment_version"])?;
            if ours <= floor || view["proxies_behind"] != json!([]) {
                return None;
            }
            let mut tables = Vec::new();
            for i in 0..2 {
                let t = table(i).await?;
                if assignment_version(&t["assignment_version"])? != ours || !pred(&t) {
                    return None;
                }
                tables.push(t);
            }
            Some((view, tables))
        }
    };

    // The manager drops c's replica, is refused (409: the pushed proxy is
    // ahead), and numbers the same table past the proxy's version.
    let (view, tables) = eventually(
        Duration::from_secs(30),
        "both proxies on the manager's table, past the pushed proxy's version",
        || converged(ahead, |t| replicas(t, "UK/ALPHA") == ["a"]),
    )
    .await;
    forecaster.assert_running();
    for p in &mut procs {
        p.assert_running();
    }
    assert_eq!(
        replicas(&tables[1], "UK/BETA"),
        ["b", "e"],
        "{tables:#?} {view:#}"
    );
    assert!(
        refusals("proxy").await.unwrap() >= 1.0,
        "the 409 is counted as a refusal"
    );

    // 2. Another writer puts a newer table in the metadata store; the
    // follower takes it. The manager numbers its own past it (and a node
    // failure changes it): the follower converges on the manager's.
    let theirs = (1u64, 1u64 << 61);
    let other = json!({
        "version": {"epoch": theirs.0, "counter": theirs.1},
        "shards": {"UK/ALPHA": [{"node": "b", "state": "serving"}]}
    });
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // As a writer through the store's script does: the table, and its
    // version beside it.
    let _: () = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(format!("{PREFIX}:table"))
        .arg(other.to_string())
        .ignore()
        .cmd("SET")
        .arg(format!("{PREFIX}:version"))
        .arg(other["version"].to_string())
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{PREFIX}:table:changed"))
        .arg(other["version"].to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(e.take());
    let (view, _) = eventually(
        Duration::from_secs(30),
        "both proxies on the manager's table, past the other writer's",
        || {
            converged(theirs, |t| {
                replicas(t, "UK/BETA") == ["b"] && replicas(t, "UK/ALPHA") == ["a"]
            })
        },
    )
    .await;
    assert!(
        refusals("metadata").await.unwrap() >= 1.0,
        "the newer stored table is counted as a refusal"
    );
    // The store holds the manager's version.
    let stored: String = redis::cmd("GET")
        .arg(format!("{PREFIX}:version"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&stored).unwrap(),
        view["assignment_version"]
    );
    forecaster.assert_running();
    for p in &mut procs {
        p.assert_running();
    }
}
