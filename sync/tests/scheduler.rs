//! The transfer scheduler and its control API: priorities, bandwidth,
//! deadlines, eviction, 4xx on bad orders, a transfer that panics, and
//! fencing by the manager's epoch.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast_sync::api;
use shardcast_sync::cache::{self, ShardCache};
use shardcast_sync::scheduler::{OrderRequest, OrderState, SchedulerConfig};
use shardcast_sync::testkit::{cache_matches_provider, eventually_async};
use shardcast_sync::transfer::TransferParams;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_run_by_priority_within_the_bandwidth_budget() {
    let (p, _dir) = sqlite_seeded().await;
    let mut caches = BTreeMap::new();
    caches.insert("a".to_string(), cache::open("memory", "").await.unwrap());
    let rate = 400_000u64;
    let env = start(
        p,
        caches,
        SchedulerConfig {
            bandwidth_bytes_per_s: rate,
            concurrency: 1,
            transfer: TransferParams {
                batch_rows: 100,
                ..TransferParams::default()
            },
            ..SchedulerConfig::default()
        },
    );
    let s = &env.sched;
    let blocker = s.submit(order("UK/LIGHTING", "a", 1.0)).unwrap();
    eventually_async(Duration::from_secs(5), "blocker running", || async {
        (s.order(blocker.id)?.state == OrderState::Running).then_some(())
    })
    .await;
    let low = s.submit(order("UK/BAGS_STORAGE", "a", 1.0)).unwrap();
    let high = s.submit(order("UK/SEASONAL", "a", 9.0)).unwrap();
    let mid = s.submit(order("INTL/SEASONAL", "a", 5.0)).unwrap();
    let t0 = Instant::now();
    let lo = wait_done(s, low.id, Duration::from_secs(60)).await;
    let hi = s.order(high.id).unwrap();
    let md = s.order(mid.id).unwrap();
    let bl = s.order(blocker.id).unwrap();
    assert!(
        hi.started_unix_ms <= md.started_unix_ms,
        "priority 9 before 5"
    );
    assert!(
        md.started_unix_ms <= lo.started_unix_ms,
        "priority 5 before 1"
    );
    // The budget holds over the whole run (plus one burst).
    let bytes: u64 = [&lo, &hi, &md, &bl].iter().map(|o| o.bytes).sum();
    let elapsed = (lo.finished_unix_ms.unwrap() - bl.started_unix_ms.unwrap()) as f64 / 1000.0;
    let burst = (rate / 4).max(64 * 1024) as f64;
    assert!(
        bytes as f64 <= rate as f64 * elapsed * 1.1 + burst,
        "{bytes} bytes in {elapsed:.2}s exceeds {rate} B/s"
    );
    assert!(
        bytes > 200_000,
        "enough data to exercise the budget: {bytes}"
    );
    eprintln!(
        "{bytes} bytes in {elapsed:.2}s ({:.0} B/s, budget {rate}); waited {:?}",
        bytes as f64 / elapsed,
        t0.elapsed()
    );
    for o in [&lo, &hi, &md, &bl] {
        cache_matches_provider(
            env.provider.as_ref(),
            env.caches["a"].as_ref(),
            &shard(&o.shard),
        )
        .await
        .unwrap();
        let r = o.report.as_ref().unwrap();
        assert_eq!(r.cursor, o.cursor);
        assert!(r.rows > 0 && r.bytes > 0);
    }
    env.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_orders_reports_eviction_and_4xx() {
    let (p, _dir) = sqlite_seeded().await;
    let mut caches = BTreeMap::new();
    caches.insert(
        "node-a".to_string(),
        cache::open("memory", "").await.unwrap(),
    );
    let env = start(
        p,
        caches,
        SchedulerConfig {
            poll_interval: Duration::from_millis(100),
            ..SchedulerConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::run(
        listener,
        env.sched.clone(),
        shardcast_sync::http::ListenerConfig::control(),
        None,
        env.shutdown.clone(),
    ));
    let c = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        let c = c.clone();
        let url = format!("{b}/orders");
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (s, j) = post(serde_json::json!({"shard": "MARS/ROCKS", "node": "node-a"})).await;
    assert_eq!(s, 422);
    assert_eq!(j["error"], "unknown shard `MARS/ROCKS`");
    let (s, j) = post(serde_json::json!({"shard": "UK/LIGHTING", "node": "node-z"})).await;
    assert_eq!(
        (s, j["error"].as_str()),
        (422, Some("unknown node `node-z`"))
    );
    let (s, j) = post(serde_json::json!({"shard": "UK/LIGHTING", "node": "node-a", "deadline_unix_ms": 1, "deadline_in_ms": 1})).await;
    assert_eq!(s, 422, "{j}");
    let (s, j) = post(serde_json::json!({"shard": "UK/LIGHTING", "nod": "node-a"})).await;
    assert_eq!(s, 400, "{j}");
    assert!(j["error"].as_str().unwrap().contains("nod"), "{j}");
    let r = c
        .post(format!("{b}/orders"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A JSON array of the fields in order is not an order (serde's derive
    // alone would take it).
    let (s, j) = post(serde_json::json!(["UK/LIGHTING", "node-a"])).await;
    assert_eq!(s, 400, "{j}");
    assert!(j["error"].as_str().unwrap().contains("JSON object"), "{j}");
    let r = c.get(format!("{b}/orders/999")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{b}/nodes/node-z/shards"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // A good order with a generous deadline, one with a deadline already past.
    let (s, j) = post(serde_json::json!({"shard": "UK/LIGHTING", "node": "node-a", "priority": 2.5, "deadline_in_ms": 60000})).await;
    assert_eq!(s, 202, "{j}");
    let id = j["id"].as_u64().unwrap();
    let (s, j2) = post(
        serde_json::json!({"shard": "INTL/LIGHTING", "node": "node-a", "deadline_unix_ms": 1}),
    )
    .await;
    assert_eq!(s, 202);
    let id2 = j2["id"].as_u64().unwrap();
    let done = eventually_async(Duration::from_secs(30), "order done via API", || {
        let c = c.clone();
        let url = format!("{b}/orders/{id}");
        async move {
            let j: serde_json::Value = c.get(url).send().await.ok()?.json().await.ok()?;
            (j["state"] == "done").then_some(j)
        }
    })
    .await;
    let rep = &done["report"];
    assert_eq!(rep["shard"], "UK/LIGHTING");
    assert_eq!(rep["node"], "node-a");
    assert_eq!(rep["deadline_met"], true);
    assert!(rep["rows"].as_u64().unwrap() > 100);
    assert!(rep["cursor"].as_u64().unwrap() > 0);
    let o2 = wait_done(&env.sched, id2, Duration::from_secs(30)).await;
    assert_eq!(o2.report.unwrap().deadline_met, Some(false));

    let hosted: serde_json::Value = c
        .get(format!("{b}/nodes/node-a/shards"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let h = hosted.as_array().unwrap();
    assert_eq!(h.len(), 2, "{hosted}");
    assert!(
        h.iter()
            .all(|x| x["state"] == "warm" && x["rows"].as_u64().unwrap() > 0),
        "{hosted}"
    );
    let list: serde_json::Value = c
        .get(format!("{b}/orders?state=done"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    // What the API sends is the shared vocabulary the manager reads, field
    // for field: orders, hosted shards, node records, the epoch.
    use shardmap::contract::{hosted::Nodes, EpochBody, HostedState, Order};
    let typed: Vec<Order> = serde_json::from_value(list.clone()).unwrap();
    assert!(typed
        .iter()
        .all(|o| o.state == OrderState::Done && o.report.is_some()));
    assert_eq!(serde_json::to_value(&typed).unwrap(), list);
    let nodes: Nodes = c
        .get(format!("{b}/nodes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(nodes["node-a"]
        .hosted
        .iter()
        .all(|h| h.state == HostedState::Warm));
    let epoch: EpochBody = c
        .get(format!("{b}/epoch"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(epoch.epoch, 0);
    let r = c
        .get(format!("{b}/orders?state=failed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "an unknown state is refused");

    let m = c
        .get(format!("{b}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("shardcast_sync_orders_done_total 2"), "{m}");
    assert!(m.contains("shardcast_sync_orders_rejected_total 6"), "{m}");
    assert!(
        m.contains("shardcast_sync_deadlines_total{outcome=\"missed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("shardcast_sync_hosted_cursor{node=\"node-a\",shard=\"UK/LIGHTING\"}"),
        "{m}"
    );

    // Evict: gone from the node's cache and from the hosted list.
    let r = c
        .delete(format!("{b}/nodes/node-a/shards/UK/LIGHTING"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "shard ids with a slash are not one path segment"
    );
    let r = c
        .delete(format!("{b}/nodes/node-a/shards/UK%2FLIGHTING"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let cache = env.caches["node-a"].clone();
    eventually_async(Duration::from_secs(10), "eviction", || async {
        cache
            .cursor("UK/LIGHTING")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(cache.size("UK/LIGHTING").await.unwrap(), 0);
    assert_eq!(env.sched.hosted("node-a").unwrap().len(), 1);
    env.shutdown.cancel();
}

/// With the budget saturated by low-priority transfers already under way,
/// an urgent order that arrives later gets the bandwidth first: it
/// finishes before any of them, though they started well before it and
/// copy the same shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_order_overtakes_low_priority_transfers_for_bandwidth() {
    let (p, _dir) = sqlite_seeded().await;
    let mut caches = BTreeMap::new();
    for n in ["a", "b", "c", "urgent"] {
        caches.insert(n.to_string(), cache::open("memory", "").await.unwrap());
    }
    let env = start(
        p,
        caches,
        SchedulerConfig {
            bandwidth_bytes_per_s: 300_000,
            concurrency: 4,
            transfer: TransferParams {
                batch_rows: 20,
                ..TransferParams::default()
            },
            ..SchedulerConfig::default()
        },
    );
    let s = &env.sched;
    let shard = "UK/HOME_DECOR_OTHER";
    let lows: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| s.submit(order(shard, n, 1.0)).unwrap())
        .collect();
    eventually_async(
        Duration::from_secs(20),
        "low transfers under way",
        || async {
            lows.iter()
                .all(|o| s.order(o.id).is_some_and(|o| o.cursor > 0))
                .then_some(())
        },
    )
    .await;
    let urgent = s
        .submit(OrderRequest {
            deadline_in_ms: Some(1_000),
            ..order(shard, "urgent", 50.0)
        })
        .unwrap();
    let u = wait_done(s, urgent.id, Duration::from_secs(60)).await;
    for o in &lows {
        let o = s.order(o.id).unwrap();
        assert_eq!(
            o.state,
            OrderState::Running,
            "low order {} finished before the urgent one ({} of {} bytes copied)",
            o.id,
            o.bytes,
            u.bytes
        );
        assert!(o.started_unix_ms < u.started_unix_ms);
    }
    for o in &lows {
        wait_done(s, o.id, Duration::from_secs(60)).await;
    }
    env.shutdown.cancel();
}

/// A cache that panics on writes to one shard: a bug in a driver.
struct PanickingCache {
    inner: Arc<dyn ShardCache>,
    shard: &'static str,
}

#[async_trait::async_trait]
impl ShardCache for PanickingCache {
    async fn apply(
        &self,
        shard: &str,
        batch: &shardcast_sync::CacheBatch,
    ) -> Result<cache::Applied, cache::CacheError> {
        if shard == self.shard {
            panic!("driver bug writing {shard}");
        }
        self.inner.apply(shard, batch).await
    }
    async fn get(
        &self,
        shard: &str,
        field: &str,
    ) -> Result<Option<bytes::Bytes>, cache::CacheError> {
        self.inner.get(shard, field).await
    }
    async fn fill(
        &self,
        shard: &str,
        field: &str,
        value: bytes::Bytes,
        version: u64,
        ttl: Duration,
    ) -> Result<(), cache::CacheError> {
        self.inner.fill(shard, field, value, version, ttl).await
    }
    async fn evict(&self, shard: &str) -> Result<(), cache::CacheError> {
        self.inner.evict(shard).await
    }
    async fn cursor(&self, shard: &str) -> Result<Option<u64>, cache::CacheError> {
        self.inner.cursor(shard).await
    }
    async fn size(&self, shard: &str) -> Result<u64, cache::CacheError> {
        self.inner.size(shard).await
    }
    async fn dump(&self, shard: &str) -> Result<Vec<(String, bytes::Bytes)>, cache::CacheError> {
        self.inner.dump(shard).await
    }
    fn kind(&self) -> &'static str {
        "panicking"
    }
}

/// A transfer that panics gives its running slot back: with concurrency 1
/// the next order still runs, and the failed one is cancelled with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_that_panics_frees_its_slot() {
    let (p, _dir) = sqlite_seeded().await;
    let mut caches: BTreeMap<String, Arc<dyn ShardCache>> = BTreeMap::new();
    caches.insert(
        "a".to_string(),
        Arc::new(PanickingCache {
            inner: cache::open("memory", "").await.unwrap(),
            shard: "UK/SEASONAL",
        }),
    );
    let env = start(
        p,
        caches,
        SchedulerConfig {
            concurrency: 1,
            ..SchedulerConfig::default()
        },
    );
    let s = &env.sched;
    let bad = s.submit(order("UK/SEASONAL", "a", 9.0)).unwrap();
    let good = s.submit(order("UK/LIGHTING", "a", 1.0)).unwrap();
    wait_done(s, good.id, Duration::from_secs(30)).await;
    let bad = s.order(bad.id).unwrap();
    assert_eq!(bad.state, OrderState::Cancelled, "{bad:?}");
    assert!(
        bad.reason
            .as_deref()
            .unwrap_or("")
            .contains("internal error"),
        "{bad:?}"
    );
    assert_eq!(s.running(), 0);
    env.shutdown.cancel();
}

/// Fencing (DESIGN.md, "Managers"): once an order of epoch 3 arrived, an
/// order of epoch 2 (a stale manager) is refused, and stays refused after
/// a restart from the state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_of_a_lower_manager_epoch_are_refused_across_a_restart() {
    use shardcast_sync::scheduler::OrderError;
    let (p, dir) = sqlite_seeded().await;
    let state_file = dir.path().join("sched.json");
    let cfg = || SchedulerConfig {
        state_file: Some(state_file.clone()),
        ..SchedulerConfig::default()
    };
    let mut caches = BTreeMap::new();
    caches.insert("a".to_string(), cache::open("memory", "").await.unwrap());
    let env = start(p.clone(), caches.clone(), cfg());
    let s = &env.sched;
    let at = |epoch: u64, shard: &str| OrderRequest {
        epoch,
        ..order(shard, "a", 1.0)
    };
    // An old client (epoch 0) passes until an epoch is seen.
    s.submit(at(0, "UK/LIGHTING")).unwrap();
    let o = s.submit(at(3, "UK/SEASONAL")).unwrap();
    assert_eq!(o.epoch, 3);
    assert_eq!(
        s.submit(at(2, "UK/SEASONAL")).unwrap_err(),
        OrderError::StaleEpoch {
            epoch: 2,
            highest: 3
        }
    );
    assert!(
        s.submit(at(0, "UK/SEASONAL")).is_err(),
        "epoch 0 is below 3"
    );
    assert!(s
        .render_metrics()
        .contains("shardcast_sync_orders_fenced_total 2"));
    assert!(s.flush(Duration::from_secs(5)).await);
    env.shutdown.cancel();
    drop(env);

    let env = start(p, caches, cfg());
    let s = &env.sched;
    assert!(matches!(
        s.submit(at(2, "UK/SEASONAL")),
        Err(OrderError::StaleEpoch { highest: 3, .. })
    ));
    // A new leader announces its epoch before it orders anything: the old
    // one's orders are refused from then on.
    assert_eq!(s.fence(5), Ok(5));
    assert!(s.fence(4).is_err());
    assert!(s.submit(at(4, "UK/SEASONAL")).is_err());
    s.submit(at(5, "UK/SEASONAL")).unwrap();
    assert_eq!(s.epoch(), 5);
    env.shutdown.cancel();
}
