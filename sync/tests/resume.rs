//! Transfers that resume from a cursor: an outage of Redis or PostgreSQL
//! in the middle of a transfer, and a re-fetch after eviction that copies
//! only the delta of the parked copy.

mod common;

use std::time::Duration;

use shardcast_sync::provider::Change;
use shardcast_sync::scheduler::{OrderState, SchedulerConfig};
use shardcast_sync::testkit::{cache_matches_provider, eventually_async};
use shardcast_sync::transfer::TransferParams;

use common::*;

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
