//! Orders in batches through the control API (`POST /orders/batch`,
//! `GET /orders?ids=`): each order of a batch is validated and queued on
//! its own, the answer says per order what became of it, the batch is
//! bounded, and the queued ones run to done against a real SQLite provider
//! and survive a restart from the state file.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shardcast_sync::api;
use shardcast_sync::cache;
use shardcast_sync::config::default_shards;
use shardcast_sync::metrics::Metrics;
use shardcast_sync::provider;
use shardcast_sync::scheduler::{OrderState, Scheduler, SchedulerConfig};
use shardcast_sync::testkit::{self, eventually_async};
use tokio_util::sync::CancellationToken;

/// Sync's scheduler on a seeded SQLite provider and one memory cache
/// (`node-a`), its control API on a free port: the API's base URL.
async fn control_api(
    p: Arc<dyn provider::ProviderFull>,
    state_file: std::path::PathBuf,
    shutdown: &CancellationToken,
) -> (String, Scheduler) {
    let mut caches = BTreeMap::new();
    caches.insert(
        "node-a".to_string(),
        cache::open("memory", "").await.unwrap(),
    );
    let sched = Scheduler::start(
        p,
        caches,
        default_shards(),
        SchedulerConfig {
            state_file: Some(state_file),
            ..SchedulerConfig::default()
        },
        Arc::new(Metrics::default()),
        shutdown.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::run(
        listener,
        sched.clone(),
        shardcast_sync::http::ListenerConfig::control(),
        None,
        shutdown.clone(),
    ));
    (base, sched)
}

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_queues_each_order_on_its_own_and_answers_per_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = provider::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
        .await
        .unwrap();
    testkit::seed_catalog(p.as_ref()).await;
    let state_file = dir.path().join("sched.json");
    let shutdown = CancellationToken::new();
    let (b, sched) = control_api(p.clone(), state_file.clone(), &shutdown).await;
    let c = reqwest::Client::new();
    let batch = format!("{b}/orders/batch");

    // Two good orders around three bad ones, in epoch 4.
    let (s, j) = post(
        &c,
        &batch,
        &json!({"orders": [
            {"shard": "UK/LIGHTING", "node": "node-a", "priority": 2.0, "deadline_in_ms": 60000, "epoch": 4},
            {"shard": "MARS/ROCKS", "node": "node-a", "epoch": 4},
            {"shard": "UK/LIGHTING", "node": "node-z", "epoch": 4},
            {"shard": "UK/SEASONAL", "node": "node-a", "deadline_unix_ms": 1, "deadline_in_ms": 1, "epoch": 4},
            {"shard": "INTL/LIGHTING", "node": "node-a", "epoch": 4}
        ]}),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    let r = j["results"].as_array().unwrap();
    let statuses: Vec<u64> = r.iter().map(|x| x["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [202, 422, 422, 422, 202], "{j}");
    assert_eq!(r[1]["error"], "unknown shard `MARS/ROCKS`");
    assert_eq!(r[2]["error"], "unknown node `node-z`");
    assert!(r[1].get("order").is_none(), "{j}");
    assert_eq!(r[0]["order"]["shard"], "UK/LIGHTING");
    assert_eq!(r[4]["order"]["shard"], "INTL/LIGHTING");
    let ids: Vec<u64> = [&r[0], &r[4]]
        .iter()
        .map(|x| x["order"]["id"].as_u64().unwrap())
        .collect();
    assert_ne!(ids[0], ids[1]);

    // An order of a lower epoch is refused as a stale manager's, per order.
    let (s, j) = post(
        &c,
        &batch,
        &json!({"orders": [{"shard": "UK/SEASONAL", "node": "node-a", "epoch": 3}]}),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["results"][0]["status"], 409, "{j}");
    assert!(
        j["results"][0]["error"].as_str().unwrap().contains("epoch"),
        "{j}"
    );

    // What is not a batch refuses the whole call; so does one too large.
    for bad in [
        json!([{"shard": "UK/SEASONAL", "node": "node-a"}]),
        json!({"orders": [{"shard": "UK/SEASONAL", "nod": "node-a"}]}),
        json!({"order": []}),
    ] {
        let (s, j) = post(&c, &batch, &bad).await;
        assert_eq!(s, 400, "{bad} → {j}");
        assert!(j["error"].as_str().unwrap().starts_with("order batch body"));
    }
    let many: Vec<Value> = (0..=shardmap::contract::MAX_BATCH)
        .map(|_| json!({"shard": "UK/SEASONAL", "node": "node-a", "epoch": 4}))
        .collect();
    let (s, j) = post(&c, &batch, &json!({ "orders": many })).await;
    assert_eq!(s, 413, "{j}");
    assert!(j["error"].as_str().unwrap().contains("at most 1000"), "{j}");
    // Nothing of the refused calls was queued.
    assert_eq!(sched.orders().len(), 2);

    // The queued ones run to done; `?ids=` answers just those, in the
    // order asked, an unknown id left out.
    let url = format!("{b}/orders?ids={},999999,{}", ids[1], ids[0]);
    let done = eventually_async(Duration::from_secs(60), "both orders done", || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let (s, j) = get(&c, &url).await;
            let v = j.as_array()?.clone();
            (s == 200 && v.len() == 2 && v.iter().all(|o| o["state"] == "done")).then_some(v)
        }
    })
    .await;
    assert_eq!(done[0]["id"].as_u64(), Some(ids[1]));
    assert_eq!(done[1]["id"].as_u64(), Some(ids[0]));
    assert!(done[0]["report"]["rows"].as_u64().unwrap() > 100);
    let (s, j) = get(&c, &format!("{b}/orders?ids={}&state=queued", ids[0])).await;
    assert_eq!((s, j), (200, json!([])));
    for bad in ["1,x", "-1"] {
        let (s, j) = get(&c, &format!("{b}/orders?ids={bad}")).await;
        assert_eq!(s, 400, "{bad} → {j}");
    }
    let too_many: Vec<String> = (0..=shardmap::contract::MAX_BATCH)
        .map(|i| i.to_string())
        .collect();
    let (s, _) = get(&c, &format!("{b}/orders?ids={}", too_many.join(","))).await;
    assert_eq!(s, 400);

    // The batch is in the state file: a restarted scheduler knows both
    // orders and the epoch.
    assert!(sched.flush(Duration::from_secs(5)).await);
    shutdown.cancel();
    drop(sched);
    let shutdown = CancellationToken::new();
    let (_, again) = control_api(p, state_file, &shutdown).await;
    assert_eq!(again.epoch(), 4);
    let known = again.orders_of(&ids);
    assert_eq!(known.len(), 2);
    assert!(known.iter().all(|o| o.state == OrderState::Done));
    shutdown.cancel();
}
