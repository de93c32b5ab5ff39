//! Hosted shards kept fresh: by PostgreSQL's NOTIFY, by polling without
//! it, and changes within the staleness bound read together at the bound.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast_sync::cache;
use shardcast_sync::config::default_shards;
use shardcast_sync::metrics::Metrics;
use shardcast_sync::provider::{self, Change};
use shardcast_sync::scheduler::{Scheduler, SchedulerConfig};
use shardcast_sync::testkit::{cache_matches_provider, eventually_async};
use tokio_util::sync::CancellationToken;

use common::*;

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
