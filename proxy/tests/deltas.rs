//! Table deltas end to end: real nodes on loopback and the real proxy
//! binary. Deltas move shards under load without a failed request; a delta
//! computed from another version than the proxy's is refused with 409 and
//! the proxy's version, and the full table then applies; a proxy that
//! follows the metadata store takes deltas when it holds their base and the
//! full table when it does not (a restart).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::store::Store;
use common::*;
use serde_json::{json, Value};
use shardmap::AssignmentVersion;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn v(counter: u64) -> Value {
    json!({"epoch": 1, "counter": counter})
}

fn serving(nodes: &[&str]) -> Value {
    Value::Array(
        nodes
            .iter()
            .map(|n| json!({"node": n, "state": "serving"}))
            .collect(),
    )
}

async fn put(c: &reqwest::Client, p: &Proxy, body: &Value) -> (u16, Value) {
    let r = c
        .put(p.admin_url("/admin/table"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_under_load_fail_nothing_and_a_delta_onto_another_version_is_refused() {
    let nodes = three_nodes().await;
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), opts()).await;
    let c = client();
    let full = json!({"version": v(1), "shards": {
        "UK/ALPHA": serving(&["n1", "n2"]), "UK/BETA": serving(&["n2", "n3"]),
        "INTL/ALPHA": serving(&["n3"]), "INTL/BETA": serving(&["n1"]),
    }});
    assert_eq!(put(&c, &p, &full).await.0, 200);

    // Load on both UK shards while deltas move them around.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let mut load = vec![];
    for w in 0..4u64 {
        let (c, base) = (client(), format!("http://{}", p.http));
        let (stop, ok, bad, errors) = (stop.clone(), ok.clone(), bad.clone(), errors.clone());
        load.push(tokio::spawn(async move {
            let mut i = w;
            // Bounded in time by `stop`, and in count.
            while !stop.load(SeqCst) && i < 200_000 {
                i += 4;
                let sku = if i % 2 == 0 { "A" } else { "B" };
                match c
                    .get(format!("{base}/inventory/{sku}{}", i % 100))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, SeqCst);
                    }
                    r => {
                        bad.fetch_add(1, SeqCst);
                        errors.lock().push(format!("{:?}", r.map(|r| r.status())));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let names = ["n1", "n2", "n3"];
    let mut version = 1u64;
    for round in 0..60usize {
        let (a, b) = (names[round % 3], names[(round + 1) % 3]);
        let delta = json!({"version": v(version + 1), "base": v(version),
            "shards": {"UK/ALPHA": serving(&[a]), "UK/BETA": serving(&[a, b])}});
        let (status, answer) = put(&c, &p, &delta).await;
        assert_eq!(status, 200, "round {round}: {answer}");
        version += 1;
        assert_eq!(answer["assignment_version"], v(version));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, SeqCst);
    for h in load {
        h.await.unwrap();
    }
    let (ok, bad) = (ok.load(SeqCst), bad.load(SeqCst));
    println!("{ok} requests during 60 deltas, {bad} failed");
    assert!(ok > 100, "the load ran: {ok}");
    assert_eq!(bad, 0, "{:?}", errors.lock());
    // The last delta is what serves: UK/ALPHA on the one node it names.
    let last = names[59 % 3];
    for i in 0..10 {
        let r = c
            .get(p.url(&format!("/inventory/A{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-node"], last);
    }
    assert_eq!(
        p.replicas("INTL/ALPHA").await,
        ["n3"],
        "untouched by every delta"
    );

    // A delta from a version the proxy does not hold: 409 with its
    // version, nothing applied; the full table then applies.
    let (status, answer) = put(
        &c,
        &p,
        &json!({"version": v(version + 2), "base": v(version - 1),
            "shards": {"UK/ALPHA": serving(&["n2"])}}),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["assignment_version"], v(version));
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("send the full table"),
        "{answer}"
    );
    assert_eq!(
        p.assignment_version().await,
        AssignmentVersion::new(1, version)
    );
    let mut full = full.clone();
    full["version"] = v(version + 2);
    full["shards"]["UK/ALPHA"] = serving(&["n2"]);
    assert_eq!(put(&c, &p, &full).await.0, 200);
    assert_eq!(p.replicas("UK/ALPHA").await, ["n2"]);
    // A delta that removes a shard's assignment: back to its configured
    // replicas (automatic: two of the three nodes).
    let (status, _) = put(
        &c,
        &p,
        &json!({"version": v(version + 3), "base": v(version + 2), "removed": ["UK/ALPHA"]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(p.replicas("UK/ALPHA").await.len(), 2);
    let applied = p.metric("shardcast_table_update_apply_seconds_sum").await;
    assert!(applied.is_some_and(|s| s > 0.0), "{applied:?}");
}

/// Follow the store: the manager's script appends the delta to the log
/// and writes the version (and now and then a snapshot) together; a proxy
/// at a delta's base reads only the log, one that restarted reads the
/// snapshot and the log's deltas after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_deltas_at_their_base_and_the_full_table_after_a_restart() {
    let store = Store::start("dt").await;
    let nodes = three_nodes().await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let o = store.follower_opts(200);
    let dir = tempfile::tempdir().unwrap();
    let (hp, ap) = (free_port(), free_port());
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, Proxy::config_text(hp, ap, &refs, &o)).unwrap();
    let mut conn = redis::Client::open(store.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // What the manager's publish script writes, in one transaction: the
    // snapshot when given, the delta appended to the log (none: the log
    // starts again), the version, the message.
    async fn publish(
        conn: &mut redis::aio::MultiplexedConnection,
        full: Option<String>,
        delta: Option<&Value>,
        version: &Value,
    ) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(full) = full {
            pipe.cmd("SET").arg("dt:table").arg(full).ignore();
        }
        match delta {
            Some(d) => pipe.cmd("RPUSH").arg("dt:table:log").arg(d.to_string()),
            None => pipe.cmd("DEL").arg("dt:table:log"),
        };
        pipe.ignore()
            .cmd("SET")
            .arg("dt:version")
            .arg(version.to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg("dt:table:changed")
            .arg(version.to_string())
            .ignore();
        let _: () = pipe.query_async(conn).await.unwrap();
    }
    let table = |version: u64, alpha: &[&str]| {
        json!({"version": v(version), "shards": {
            "UK/ALPHA": serving(alpha), "UK/BETA": serving(&["n2", "n3"])}})
    };
    publish(&mut conn, Some(table(1, &["n1"]).to_string()), None, &v(1)).await;
    let p = Proxy::start_with(tempfile::tempdir().unwrap(), config.clone(), hp, ap).await;
    let at = |version: u64| AssignmentVersion::new(1, version);
    eventually(Duration::from_secs(10), "the full table", || async {
        (p.assignment_version().await == at(1)).then_some(())
    })
    .await;
    // The stored full table is made unreadable: a proxy at the delta's base
    // must not need it.
    let mut snapshots = vec![];
    for (n, alpha) in [(2u64, ["n2"]), (3, ["n3"])] {
        let full = table(n, &alpha);
        let delta = json!({"version": v(n), "base": v(n - 1),
            "shards": {"UK/ALPHA": serving(&alpha)}});
        publish(&mut conn, Some("not a table".into()), Some(&delta), &v(n)).await;
        eventually(Duration::from_secs(10), "the delta", || async {
            (p.assignment_version().await == at(n)).then_some(())
        })
        .await;
        assert_eq!(p.replicas("UK/ALPHA").await, alpha);
        snapshots.push(full);
    }
    // A real snapshot, as the script writes one now and then: of version 2,
    // one behind the store's; the log leads on from it.
    let _: () = redis::cmd("SET")
        .arg("dt:table")
        .arg(snapshots[0].to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(p.replicas("UK/BETA").await, ["n2", "n3"]);

    // Restarted: at no version, the log's deltas (bases 1 and 2) do not
    // apply; the snapshot (version 2) does, then the log's delta from 2.
    drop(p);
    let p = Proxy::start_with(tempfile::tempdir().unwrap(), config, hp, ap).await;
    eventually(
        Duration::from_secs(10),
        "the full table after a restart",
        || async { (p.assignment_version().await == at(3)).then_some(()) },
    )
    .await;
    assert_eq!(p.replicas("UK/ALPHA").await, ["n3"]);
    assert_eq!(p.replicas("UK/BETA").await, ["n2", "n3"]);
}
