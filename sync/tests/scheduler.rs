//! The transfer scheduler and its control API: priorities, bandwidth,
//! deadlines, freshness (NOTIFY and polling), eviction, 4xx on bad orders,
//! and outages of Redis and PostgreSQL in the middle of a transfer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast_sync::api;
use shardcast_sync::cache::{self, ShardCache};
use shardcast_sync::config::default_shards;
use shardcast_sync::metrics::Metrics;
use shardcast_sync::model::ShardDef;
use shardcast_sync::provider::{self, Change, ProviderFull};
use shardcast_sync::scheduler::{OrderRequest, OrderState, Scheduler, SchedulerConfig};
use shardcast_sync::testkit::{self, cache_matches_provider, eventually_async};
use shardcast_sync::transfer::TransferParams;
use tokio_util::sync::CancellationToken;

fn shard(id: &str) -> ShardDef {
    default_shards().into_iter().find(|s| s.id == id).unwrap()
}

struct Env {
    provider: Arc<dyn ProviderFull>,
    caches: BTreeMap<String, Arc<dyn ShardCache>>,
    sched: Scheduler,
    shutdown: CancellationToken,
}

/// PostgreSQL seeded with the catalog, and node `a` caching on its own Redis.
struct PgRedis {
    pg: testkit::Postgres,
    redis: testkit::Redis,
    provider: Arc<dyn ProviderFull>,
    caches: BTreeMap<String, Arc<dyn ShardCache>>,
}

async fn pg_with_node_a_on_redis() -> PgRedis {
    let pg = tokio::task::spawn_blocking(testkit::Postgres::start)
        .await
        .unwrap();
    let redis = tokio::task::spawn_blocking(testkit::Redis::start)
        .await
        .unwrap();
    let provider = provider::open(&pg.url()).await.unwrap();
    testkit::seed_catalog(provider.as_ref()).await;
    let mut caches = BTreeMap::new();
    caches.insert(
        "a".to_string(),
        cache::open(&redis.url(), "a").await.unwrap(),
    );
    PgRedis {
        pg,
        redis,
        provider,
        caches,
    }
}

fn start(
    provider: Arc<dyn ProviderFull>,
    caches: BTreeMap<String, Arc<dyn ShardCache>>,
    cfg: SchedulerConfig,
) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let shutdown = CancellationToken::new();
    let sched = Scheduler::start(
        provider.clone(),
        caches.clone(),
        default_shards(),
        cfg,
        Arc::new(Metrics::default()),
        shutdown.clone(),
    );
    Env {
        provider,
        caches,
        sched,
        shutdown,
    }
}

fn order(shard: &str, node: &str, priority: f64) -> OrderRequest {
    OrderRequest {
        shard: shard.into(),
        node: node.into(),
        priority,
        deadline_unix_ms: None,
        deadline_in_ms: None,
        epoch: 0,
    }
}

async fn wait_done(s: &Scheduler, id: u64, within: Duration) -> shardcast_sync::scheduler::Order {
    eventually_async(within, &format!("order {id} done"), || async {
        s.order(id).filter(|o| o.state == OrderState::Done)
    })
    .await
}

async fn sqlite_seeded() -> (Arc<dyn ProviderFull>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = provider::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
        .await
        .unwrap();
    testkit::seed_catalog(p.as_ref()).await;
    (p, dir)
}

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

/// With a poll interval far longer than the test, only NOTIFY can make the
/// hosted shard fresh in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_keeps_hosted_shards_fresh() {
    // The servers live as long as the bindings.
    let PgRedis {
        pg: _pg,
        redis: _redis,
        provider: p,
        caches,
    } = pg_with_node_a_on_redis().await;
    let env = start(
        p,
        caches,
        SchedulerConfig {
            poll_interval: Duration::from_secs(600),
            max_staleness: Duration::from_millis(500),
            ..SchedulerConfig::default()
        },
    );
    let o = env.sched.submit(order("UK/LIGHTING", "a", 1.0)).unwrap();
    wait_done(&env.sched, o.id, Duration::from_secs(30)).await;
    let c = env.caches["a"].clone();
    let before: serde_json::Value =
        serde_json::from_slice(&c.get("UK/LIGHTING", "UK:85123A").await.unwrap().unwrap()).unwrap();
    env.provider
        .apply(&[Change::Stock {
            sku: "85123A".into(),
            region: "UK".into(),
            stock: 123_456,
        }])
        .await
        .unwrap();
    let t = Instant::now();
    eventually_async(Duration::from_secs(10), "NOTIFY-driven refresh", || async {
        let v: serde_json::Value =
            serde_json::from_slice(&c.get("UK/LIGHTING", "UK:85123A").await.ok()??).ok()?;
        (v["stock"] == 123_456).then_some(())
    })
    .await;
    eprintln!(
        "fresh {:?} after the provider commit (stock was {})",
        t.elapsed(),
        before["stock"]
    );
    cache_matches_provider(env.provider.as_ref(), c.as_ref(), &shard("UK/LIGHTING"))
        .await
        .unwrap();
    env.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_keeps_hosted_shards_fresh_without_notify() {
    let (p, _dir) = sqlite_seeded().await;
    let mut caches = BTreeMap::new();
    caches.insert("a".to_string(), cache::open("memory", "").await.unwrap());
    let env = start(
        p,
        caches,
        SchedulerConfig {
            poll_interval: Duration::from_millis(200),
            max_staleness: Duration::from_millis(500),
            ..SchedulerConfig::default()
        },
    );
    let o = env.sched.submit(order("UK/LIGHTING", "a", 1.0)).unwrap();
    wait_done(&env.sched, o.id, Duration::from_secs(30)).await;
    env.provider
        .apply(&[Change::Delete {
            sku: "85123A".into(),
            region: "UK".into(),
        }])
        .await
        .unwrap();
    let c = env.caches["a"].clone();
    eventually_async(Duration::from_secs(10), "polled refresh", || async {
        c.get("UK/LIGHTING", "UK:85123A")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    cache_matches_provider(env.provider.as_ref(), c.as_ref(), &shard("UK/LIGHTING"))
        .await
        .unwrap();
    env.shutdown.cancel();
}

/// Twenty changes of one row, 25 ms apart, on a copy hosted with a
/// staleness bound (SQLite: no notifications): the copy's delta is read
/// at the bound, so the row is one row of about one read, not twenty;
/// with a zero bound (a read every poll) the same changes are read many
/// times. Both end with the last change in the cache.
async fn rows_read_for_a_burst_of_changes(bound: Duration) -> (u64, u64) {
    use shardcast_sync::provider::reads::{Counted, ProviderReads};
    let (p, _dir) = sqlite_seeded().await;
    let reads = Arc::new(ProviderReads::default());
    let counted: Arc<dyn provider::Provider> =
        Arc::new(Counted::new(p.clone(), Duration::ZERO, reads.clone()));
    let mut caches = BTreeMap::new();
    caches.insert("a".to_string(), cache::open("memory", "").await.unwrap());
    let shutdown = CancellationToken::new();
    let sched = Scheduler::start(
        counted,
        caches.clone(),
        default_shards(),
        SchedulerConfig {
            poll_interval: Duration::from_millis(50),
            max_staleness: bound,
            ..SchedulerConfig::default()
        },
        Arc::new(Metrics::default()),
        shutdown.clone(),
    );
    let o = sched.submit(order("UK/LIGHTING", "a", 1.0)).unwrap();
    wait_done(&sched, o.id, Duration::from_secs(30)).await;
    let (q0, r0) = reads.delta_totals();
    for i in 0..20 {
        p.apply(&[Change::Stock {
            sku: "85123A".into(),
            region: "UK".into(),
            stock: 1000 + i,
        }])
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let c = caches["a"].clone();
    let t = Instant::now();
    eventually_async(
        Duration::from_secs(10),
        "the last change in the cache",
        || async {
            let v: serde_json::Value =
                serde_json::from_slice(&c.get("UK/LIGHTING", "UK:85123A").await.ok()??).ok()?;
            (v["stock"] == 1019).then_some(())
        },
    )
    .await;
    eprintln!(
        "bound {bound:?}: the last change cached {:?} after its commit",
        t.elapsed()
    );
    // A trailing read of the bound lands meanwhile, if one is due.
    tokio::time::sleep(bound.max(Duration::from_millis(200))).await;
    let (q1, r1) = reads.delta_totals();
    cache_matches_provider(p.as_ref(), c.as_ref(), &shard("UK/LIGHTING"))
        .await
        .unwrap();
    shutdown.cancel();
    (q1 - q0, r1 - r0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_within_the_staleness_bound_are_read_together_at_the_bound() {
    let (q, rows) = rows_read_for_a_burst_of_changes(Duration::from_millis(800)).await;
    eprintln!("bound 800 ms: {rows} rows in {q} delta reads");
    assert!(
        rows <= 4 && q <= 6,
        "a row changed 20 times within the bound is read about once: {rows} rows in {q} reads"
    );
    let (q0, rows0) = rows_read_for_a_burst_of_changes(Duration::ZERO).await;
    eprintln!("bound 0: {rows0} rows in {q0} delta reads");
    assert!(
        rows0 > rows && q0 > q,
        "a read every poll reads the burst more often: {rows0} rows in {q0} reads"
    );
}

/// A throttled transfer is cut by an outage halfway; the order retries with
/// backoff (visible as `last_error`) and completes once the server is back,
/// with the cache equal to the provider.
async fn outage_mid_transfer(kill_redis: bool) {
    let PgRedis {
        pg,
        mut redis,
        provider: p,
        caches,
    } = pg_with_node_a_on_redis().await;
    let env = start(
        p,
        caches,
        SchedulerConfig {
            bandwidth_bytes_per_s: 150_000,
            transfer: TransferParams {
                batch_rows: 50,
                backoff_max: Duration::from_millis(500),
                ..TransferParams::default()
            },
            ..SchedulerConfig::default()
        },
    );
    let s = &env.sched;
    let o = s.submit(order("UK/HOME_DECOR_OTHER", "a", 1.0)).unwrap();
    eventually_async(Duration::from_secs(20), "transfer under way", || async {
        (s.order(o.id)?.cursor > 0).then_some(())
    })
    .await;
    if kill_redis {
        tokio::task::block_in_place(|| redis.stop());
    } else {
        tokio::task::block_in_place(|| pg.stop());
    }
    let err = eventually_async(
        Duration::from_secs(20),
        "retrying with an error",
        || async { s.order(o.id)?.last_error },
    )
    .await;
    eprintln!("while down: {err}");
    assert!(
        err.contains(if kill_redis { "cache" } else { "provider" }),
        "{err}"
    );
    assert_eq!(s.order(o.id).unwrap().state, OrderState::Running);
    tokio::time::sleep(Duration::from_millis(800)).await;
    if kill_redis {
        tokio::task::block_in_place(|| redis.restart());
    } else {
        tokio::task::block_in_place(|| pg.restart());
    }
    let done = wait_done(s, o.id, Duration::from_secs(90)).await;
    assert!(done.last_error.is_none());
    cache_matches_provider(
        env.provider.as_ref(),
        env.caches["a"].as_ref(),
        &shard("UK/HOME_DECOR_OTHER"),
    )
    .await
    .unwrap();
    env.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_mid_transfer_resumes() {
    outage_mid_transfer(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_transfer_resumes() {
    outage_mid_transfer(false).await;
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

/// Evicting a shard parks its copy: not hosted, not served, not refreshed;
/// the next order for the pair copies only what the provider changed
/// meanwhile and ends identical to the provider, row by row (PostgreSQL and
/// Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_fetch_after_eviction_copies_only_the_delta() {
    // The servers live as long as the bindings.
    let PgRedis {
        pg: _pg,
        redis: _redis,
        provider: p,
        caches,
    } = pg_with_node_a_on_redis().await;
    let env = start(
        p.clone(),
        caches,
        SchedulerConfig {
            poll_interval: Duration::from_millis(200),
            keep_evicted: Duration::from_secs(300),
            ..SchedulerConfig::default()
        },
    );
    let s = &env.sched;
    let c = env.caches["a"].clone();
    let sd = shard("UK/LIGHTING");
    let first = s.submit(order("UK/LIGHTING", "a", 1.0)).unwrap();
    let first = wait_done(s, first.id, Duration::from_secs(30)).await;
    assert!(first.rows > 100, "a whole copy: {}", first.rows);
    cache_matches_provider(p.as_ref(), c.as_ref(), &sd)
        .await
        .unwrap();

    s.evict("a", "UK/LIGHTING").unwrap();
    eventually_async(Duration::from_secs(10), "parked", || async {
        c.parked("UK/LIGHTING").await.unwrap().map(|_| ())
    })
    .await;
    assert_eq!(c.cursor("UK/LIGHTING").await.unwrap(), None);
    assert!(s.hosted("a").unwrap().is_empty());
    assert_eq!(s.parked("a"), vec!["UK/LIGHTING".to_string()]);
    let parked_at = c.parked("UK/LIGHTING").await.unwrap();

    // The provider changes three rows of the shard while it is parked.
    let snap = p.snapshot(&sd, 5000).await.unwrap();
    let skus: Vec<(String, String)> = snap
        .rows
        .iter()
        .take(3)
        .map(|r| (r.sku.clone(), r.region.clone()))
        .collect();
    p.apply(&[
        Change::Stock {
            sku: skus[0].0.clone(),
            region: skus[0].1.clone(),
            stock: 12345,
        },
        Change::Price {
            sku: skus[1].0.clone(),
            region: skus[1].1.clone(),
            price_cents: 1,
        },
        Change::Delete {
            sku: skus[2].0.clone(),
            region: skus[2].1.clone(),
        },
    ])
    .await
    .unwrap();
    // Freshness polls leave a parked copy alone, and nothing serves it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.parked("UK/LIGHTING").await.unwrap(), parked_at);
    let f = shardcast_sync::model::field(&skus[0].0, &skus[0].1);
    assert_eq!(c.get("UK/LIGHTING", &f).await.unwrap(), None);

    let again = s.submit(order("UK/LIGHTING", "a", 1.0)).unwrap();
    let again = wait_done(s, again.id, Duration::from_secs(30)).await;
    assert_eq!(again.rows, 3, "only the changed rows travel");
    assert!(
        again.bytes * 20 < first.bytes,
        "{} bytes against {}",
        again.bytes,
        first.bytes
    );
    cache_matches_provider(p.as_ref(), c.as_ref(), &sd)
        .await
        .unwrap();
    assert!(s.parked("a").is_empty());
    let v: serde_json::Value =
        serde_json::from_slice(&c.get("UK/LIGHTING", &f).await.unwrap().unwrap()).unwrap();
    assert_eq!(v["stock"], 12345);
    env.shutdown.cancel();
}
