//! The transfer's write pipeline (several batches in flight to the cache)
//! against real PostgreSQL and Redis: every row lands exactly once, the
//! cursor never passes a batch that did not land, and batches sent behind
//! one that was refused write nothing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use shardcast_sync::cache::{self, ShardCache};
use shardcast_sync::metrics::Metrics;
use shardcast_sync::model::ShardDef;
use shardcast_sync::provider::{self, Provider, ProviderFull};
use shardcast_sync::testkit;
use shardcast_sync::transfer::{
    catch_up, no_errors, Progress, TokenBucket, TransferError, TransferParams,
};
use tokio_util::sync::CancellationToken;

async fn start() -> (
    testkit::Postgres,
    testkit::Redis,
    Arc<dyn ProviderFull>,
    Arc<dyn ShardCache>,
) {
    let (pg, redis) =
        tokio::task::spawn_blocking(|| (testkit::Postgres::start(), testkit::Redis::start()))
            .await
            .unwrap();
    let p = provider::open(&pg.url()).await.unwrap();
    testkit::seed_catalog(p.as_ref()).await;
    let c = cache::open(&redis.url(), "pipe").await.unwrap();
    (pg, redis, p, c)
}

fn all_uk() -> ShardDef {
    ShardDef {
        id: "UK/ALL".into(),
        cells: shardcast_sync::config::DATA_CATEGORIES
            .iter()
            .map(|c| (c.to_string(), "UK".to_string()))
            .collect(),
    }
}

async fn transfer(
    p: &Arc<dyn ProviderFull>,
    c: &Arc<dyn ShardCache>,
    s: &ShardDef,
    in_flight: usize,
    must_be_hosted: bool,
    progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<Progress, TransferError> {
    let params = TransferParams {
        batch_rows: 40,
        in_flight,
        stream: true,
        ..TransferParams::default()
    };
    let p: Arc<dyn Provider> = p.clone();
    catch_up(
        p,
        c.clone(),
        s,
        &TokenBucket::new(0),
        &params,
        &Arc::new(Metrics::default()),
        &CancellationToken::new(),
        must_be_hosted,
        &no_errors(),
        progress,
    )
    .await
}

/// Two pipelined transfers of one shard into one cache race each other:
/// each batch lands once (the rows they applied add up to the delta, not
/// more), the cache ends identical to the provider, and the cursor each
/// reported only ever grew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_pipelined_transfers_apply_every_row_once() {
    let (_pg, _redis, p, c) = start().await;
    let s = all_uk();
    let rows = p.snapshot(&s, 5000).await.unwrap().rows.len() as u64;
    assert!(rows > 1000, "the catalog's UK rows: {rows}");
    let last = [AtomicU64::new(0), AtomicU64::new(0)];
    let grew = |i: usize| {
        let last = &last[i];
        move |pr: &Progress| {
            let before = last.swap(pr.cursor, Relaxed);
            assert!(
                pr.cursor >= before,
                "cursor went back: {before} → {}",
                pr.cursor
            );
        }
    };
    let (g0, g1) = (grew(0), grew(1));
    let (a, b) = tokio::join!(
        transfer(&p, &c, &s, 4, false, &g0),
        transfer(&p, &c, &s, 8, false, &g1),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.rows + b.rows,
        rows,
        "every row applied exactly once between them ({} + {})",
        a.rows,
        b.rows
    );
    testkit::cache_matches_provider(p.as_ref(), c.as_ref(), &s)
        .await
        .unwrap();
    assert_eq!(a.cursor, b.cursor, "both end at the provider's head");
}

/// A shard evicted while an incremental refresh has batches in flight:
/// the refresh stops with `NotHosted` and the batches behind the eviction
/// write nothing (no item, no cursor comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_behind_an_eviction_write_nothing() {
    let (_pg, redis, p, c) = start().await;
    let s = all_uk();
    // Hosted at cursor 0 with nothing in it: the refresh copies everything.
    let empty = shardcast_sync::model::CacheBatch::default();
    c.apply(&s.id, &empty).await.unwrap();
    let evicted = AtomicU64::new(0);
    let port = redis.port().to_string();
    let evict = move |pr: &Progress| {
        if pr.batches == 3 && evicted.fetch_add(1, Relaxed) == 0 {
            // From the progress callback: later batches are in flight. The
            // same keys `ShardCache::evict` drops, from another client.
            let keys = ["items", "cursor", "fills", "parked", "parked_cursor"]
                .map(|k| format!("pipe:{{UK/ALL}}:{k}"));
            let out = std::process::Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port, "UNLINK"])
                .args(&keys)
                .output()
                .unwrap();
            assert!(out.status.success(), "redis-cli UNLINK");
        }
    };
    let r = transfer(&p, &c, &s, 8, true, &evict).await;
    assert_eq!(r, Err(TransferError::NotHosted));
    assert_eq!(c.cursor(&s.id).await.unwrap(), None, "no cursor came back");
    assert_eq!(c.size(&s.id).await.unwrap(), 0, "no item came back");
}

/// One batch at a time and eight in flight copy the same content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_does_not_change_what_lands() {
    let (_pg, _redis, p, c) = start().await;
    let s = all_uk();
    let one = transfer(&p, &c, &s, 1, false, &|_| {}).await.unwrap();
    let dump_one = {
        let mut d = c.dump(&s.id).await.unwrap();
        d.sort();
        d
    };
    c.evict(&s.id).await.unwrap();
    let eight = transfer(&p, &c, &s, 8, false, &|_| {}).await.unwrap();
    let mut dump_eight = c.dump(&s.id).await.unwrap();
    dump_eight.sort();
    assert_eq!((one.rows, one.batches), (eight.rows, eight.batches));
    assert_eq!(dump_one, dump_eight);
    testkit::cache_matches_provider(p.as_ref(), c.as_ref(), &s)
        .await
        .unwrap();
}

/// The streaming read gives the batches repeated `delta` calls give, on
/// PostgreSQL (one portal) and on SQLite (the per-batch default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_delta_is_the_per_batch_delta() {
    use futures::StreamExt;
    let (_pg, _redis, pg, _c) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let lite = provider::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
        .await
        .unwrap();
    testkit::seed_catalog(lite.as_ref()).await;
    let s = all_uk();
    for p in [pg, lite] {
        let mut want = vec![];
        let mut c = 0;
        loop {
            let b = p.delta(&s, c, 300).await.unwrap();
            c = b.to;
            let more = b.more;
            want.push(b);
            if !more {
                break;
            }
        }
        let p: Arc<dyn Provider> = p;
        let kind = p.kind();
        let got: Vec<_> = p
            .delta_stream(s.clone(), 0, 300)
            .map(Result::unwrap)
            .collect()
            .await;
        // A full last batch says `more`; the stream then ends with an empty one.
        let got: Vec<_> = got
            .into_iter()
            .filter(|b| !b.rows.is_empty() || b.from == 0)
            .collect();
        let want: Vec<_> = want
            .into_iter()
            .filter(|b| !b.rows.is_empty() || b.from == 0)
            .collect();
        assert!(want.len() > 5, "{} batches", want.len());
        assert_eq!(got.len(), want.len(), "{kind}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.from, g.to, &g.rows), (w.from, w.to, &w.rows), "{kind}");
        }
    }
}

/// PostgreSQL crash-stopped in the middle of a streamed, pipelined copy:
/// the transfer retries, resumes from the cache's cursor once the database
/// is back, and the cache ends row by row equal to the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_crash_mid_stream_resumes_from_the_cursor() {
    let (pg, _redis, p, c) = start().await;
    let s = all_uk();
    let pg = Arc::new(pg);
    let stopped = Arc::new(AtomicU64::new(0));
    let (pg2, stopped2) = (pg.clone(), stopped.clone());
    let crash = move |pr: &Progress| {
        if pr.batches == 5 && stopped2.fetch_add(1, Relaxed) == 0 {
            // Down before the transfer goes on (the callback holds it).
            pg2.stop();
            let pg = pg2.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(500));
                pg.restart();
            });
        }
    };
    let pr = transfer(&p, &c, &s, 4, false, &crash).await.unwrap();
    assert_eq!(stopped.load(Relaxed), 1, "the database went down mid-copy");
    assert!(pr.batches > 5);
    // The provider's own connection may still be the dead one: retried.
    let mut last = String::new();
    for _ in 0..100 {
        match testkit::cache_matches_provider(p.as_ref(), c.as_ref(), &s).await {
            Ok(()) => return,
            Err(e) if e.contains("unavailable") => last = e,
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the provider did not come back: {last}");
}
