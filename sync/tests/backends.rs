//! One suite, every backend: the same generic test functions run against
//! the PostgreSQL and SQLite providers and the Redis and in-process caches
//! (real servers started by the testkit).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shardcast_sync::cache::{self, Applied, ShardCache};
use shardcast_sync::metrics::Metrics;
use shardcast_sync::model::{encode_batch, encode_value, field, CacheBatch, ShardDef};
use shardcast_sync::provider::{self, Change, ProviderFull};
use shardcast_sync::testkit;
use shardcast_sync::transfer::{catch_up, Progress, TokenBucket, TransferParams};
use tokio_util::sync::CancellationToken;

/// Keeps a backend's server (or directory) alive for the test.
enum Guard {
    Pg(#[allow(dead_code)] testkit::Postgres),
    Redis(#[allow(dead_code)] testkit::Redis),
    Dir(#[allow(dead_code)] tempfile::TempDir),
    None,
}

async fn sqlite() -> (Arc<dyn ProviderFull>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("p.db").display());
    (provider::open(&url).await.unwrap(), Guard::Dir(dir))
}

async fn postgres() -> (Arc<dyn ProviderFull>, Guard) {
    let pg = tokio::task::spawn_blocking(testkit::Postgres::start)
        .await
        .unwrap();
    (provider::open(&pg.url()).await.unwrap(), Guard::Pg(pg))
}

async fn memory() -> (Arc<dyn ShardCache>, Guard) {
    (cache::open("memory", "").await.unwrap(), Guard::None)
}

async fn redis() -> (Arc<dyn ShardCache>, Guard) {
    let r = tokio::task::spawn_blocking(testkit::Redis::start)
        .await
        .unwrap();
    (cache::open(&r.url(), "t").await.unwrap(), Guard::Redis(r))
}

fn shard(id: &str, cells: &[(&str, &str)]) -> ShardDef {
    ShardDef {
        id: id.into(),
        cells: cells
            .iter()
            .map(|(c, r)| (c.to_string(), r.to_string()))
            .collect(),
    }
}

fn up(sku: &str, region: &str, cat: &str, stock: i64, price: i64) -> Change {
    Change::Upsert {
        sku: sku.into(),
        region: region.into(),
        category: cat.into(),
        stock,
        price_cents: price,
        attributes: format!(r#"{{"description":"item {sku}"}}"#),
    }
}

async fn sync_shard(
    p: &Arc<dyn ProviderFull>,
    c: &Arc<dyn ShardCache>,
    s: &ShardDef,
    batch_rows: usize,
) -> Progress {
    let params = TransferParams {
        batch_rows,
        ..TransferParams::default()
    };
    catch_up(
        p.clone(),
        c.clone(),
        s,
        &TokenBucket::new(0),
        &params,
        &Arc::new(Metrics::default()),
        &CancellationToken::new(),
        false,
        &shardcast_sync::transfer::no_errors(),
        &|_| {},
    )
    .await
    .unwrap()
}

/// The cache's content of a shard must be exactly the provider's snapshot.
async fn assert_same(p: &Arc<dyn ProviderFull>, c: &Arc<dyn ShardCache>, s: &ShardDef) {
    let snap = p.snapshot(s, 1000).await.unwrap();
    let mut want: Vec<(String, Bytes)> = snap
        .rows
        .iter()
        .map(|r| {
            (
                field(&r.sku, &r.region),
                encode_value(r, r.item.as_ref().unwrap(), 1 << 20).unwrap(),
            )
        })
        .collect();
    want.sort();
    let mut have = c.dump(&s.id).await.unwrap();
    have.sort();
    assert_eq!(have, want, "cache differs from provider for shard {}", s.id);
    let cursor = c.cursor(&s.id).await.unwrap();
    assert!(
        cursor >= Some(snap.to),
        "cursor {cursor:?} behind snapshot {}",
        snap.to
    );
}

// ---------------------------------------------------------------------------
// Generic tests
// ---------------------------------------------------------------------------

async fn provider_deltas_in_version_order(p: Arc<dyn ProviderFull>) {
    let s = shard("UK/LIGHTING", &[("LIGHTING", "UK")]);
    p.apply(&[
        up("A1", "UK", "LIGHTING", 5, 100),
        up("A2", "UK", "LIGHTING", 6, 200),
        up("A2", "INTL", "LIGHTING", 7, 230),
        up("B1", "UK", "KITCHEN", 1, 50),
    ])
    .await
    .unwrap();
    let b = p.delta(&s, 0, 10).await.unwrap();
    let skus: Vec<_> = b
        .rows
        .iter()
        .map(|r| (r.sku.as_str(), r.region.as_str()))
        .collect();
    assert_eq!(
        skus,
        vec![("A1", "UK"), ("A2", "UK")],
        "only the shard's cells"
    );
    assert!(b.rows.windows(2).all(|w| w[0].version < w[1].version));
    assert!(!b.more);
    assert_eq!(b.to, b.rows[1].version);

    // Update one: it comes after the cursor, once.
    p.apply(&[Change::Stock {
        sku: "A1".into(),
        region: "UK".into(),
        stock: 9,
    }])
    .await
    .unwrap();
    let d = p.delta(&s, b.to, 10).await.unwrap();
    assert_eq!(d.rows.len(), 1);
    assert_eq!(d.rows[0].sku, "A1");
    assert_eq!(d.rows[0].item.as_ref().unwrap().stock, 9);

    // Batches: limit 1 pages through in order.
    let one = p.delta(&s, 0, 1).await.unwrap();
    assert_eq!(one.rows.len(), 1);
    assert!(one.more);
    let two = p.delta(&s, one.to, 1).await.unwrap();
    assert!(two.rows[0].version > one.to);
    assert!(p.head().await.unwrap() >= d.to);
}

async fn provider_delete_leaves_tombstone(p: Arc<dyn ProviderFull>) {
    let s = shard("UK/SEASONAL", &[("SEASONAL", "UK")]);
    p.apply(&[
        up("S1", "UK", "SEASONAL", 3, 99),
        up("S2", "UK", "SEASONAL", 4, 99),
    ])
    .await
    .unwrap();
    let first = p.delta(&s, 0, 10).await.unwrap();
    p.apply(&[Change::Delete {
        sku: "S1".into(),
        region: "UK".into(),
    }])
    .await
    .unwrap();
    let d = p.delta(&s, first.to, 10).await.unwrap();
    assert_eq!(d.rows.len(), 1);
    assert_eq!(d.rows[0].sku, "S1");
    assert!(d.rows[0].item.is_none(), "a delete is a tombstone");
    // From cursor 0 (a snapshot) tombstones are left out.
    let snap = p.delta(&s, 0, 10).await.unwrap();
    assert_eq!(
        snap.rows.iter().map(|r| r.sku.as_str()).collect::<Vec<_>>(),
        vec!["S2"]
    );
    // Relisting brings it back at a newer version.
    p.apply(&[up("S1", "UK", "SEASONAL", 8, 120)])
        .await
        .unwrap();
    let again = p.delta(&s, d.to, 10).await.unwrap();
    assert_eq!(again.rows[0].item.as_ref().unwrap().stock, 8);
    assert_eq!(
        p.get("S1", "UK")
            .await
            .unwrap()
            .unwrap()
            .item
            .unwrap()
            .price_cents,
        120
    );
    assert!(p.get("NOPE", "UK").await.unwrap().is_none());
    // Category is immutable.
    let e = p
        .apply(&[up("S2", "UK", "LIGHTING", 1, 1)])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("immutable"), "{e}");
    // Attribute changes re-stamp the product's rows.
    let before = p.get("S2", "UK").await.unwrap().unwrap().version;
    p.apply(&[Change::Upsert {
        sku: "S2".into(),
        region: "UK".into(),
        category: "SEASONAL".into(),
        stock: 4,
        price_cents: 99,
        attributes: r#"{"description":"renamed"}"#.into(),
    }])
    .await
    .unwrap();
    let after = p.get("S2", "UK").await.unwrap().unwrap();
    assert!(after.version > before);
    assert!(after.item.unwrap().attributes.contains("renamed"));
}

fn cb(from: u64, to: u64, up: &[(&str, &str)], del: &[&str]) -> CacheBatch {
    CacheBatch {
        from,
        to,
        upserts: up
            .iter()
            .map(|(f, v)| (f.to_string(), Bytes::from(v.to_string())))
            .collect(),
        deletes: del.iter().map(|d| d.to_string()).collect(),
        bytes: 0,
    }
}

async fn cache_apply_atomic_idempotent(c: Arc<dyn ShardCache>) {
    let s = "UK/X";
    assert_eq!(c.cursor(s).await.unwrap(), None);
    // A batch that does not start at 0 cannot host a shard.
    assert_eq!(
        c.apply(s, &cb(5, 9, &[("UK:a", "1")], &[])).await.unwrap(),
        Applied::CursorMismatch { cursor: None }
    );
    assert_eq!(c.size(s).await.unwrap(), 0);
    assert_eq!(
        c.apply(
            s,
            &cb(
                0,
                3,
                &[("UK:a", r#"{"version":1}"#), ("UK:b", r#"{"version":3}"#)],
                &[]
            )
        )
        .await
        .unwrap(),
        Applied::Applied
    );
    assert_eq!(c.cursor(s).await.unwrap(), Some(3));
    // Replay: skipped, nothing changes.
    assert_eq!(
        c.apply(s, &cb(0, 3, &[("UK:a", "CHANGED")], &[]))
            .await
            .unwrap(),
        Applied::AlreadyApplied { cursor: 3 }
    );
    assert_eq!(
        c.get(s, "UK:a").await.unwrap().unwrap(),
        Bytes::from(r#"{"version":1}"#)
    );
    // A gap is refused.
    assert_eq!(
        c.apply(s, &cb(4, 6, &[], &["UK:a"])).await.unwrap(),
        Applied::CursorMismatch { cursor: Some(3) }
    );
    assert_eq!(
        c.apply(s, &cb(3, 6, &[("UK:c", "3")], &["UK:a"]))
            .await
            .unwrap(),
        Applied::Applied
    );
    assert_eq!(c.get(s, "UK:a").await.unwrap(), None);
    assert_eq!(c.size(s).await.unwrap(), 2);
    assert_eq!(c.cursor(s).await.unwrap(), Some(6));
    // Eviction drops items and cursor together.
    c.evict(s).await.unwrap();
    assert_eq!(c.cursor(s).await.unwrap(), None);
    assert_eq!(c.size(s).await.unwrap(), 0);
    assert_eq!(c.get(s, "UK:c").await.unwrap(), None);
    // A large batch (more than one Lua unpack chunk) applies whole.
    let vals: Vec<(String, String)> = (0..12_000)
        .map(|i| (format!("UK:k{i}"), format!("v{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = vals.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let dels: Vec<String> = (0..9_000).map(|i| format!("UK:k{i}")).collect();
    let drefs: Vec<&str> = dels.iter().map(String::as_str).collect();
    assert_eq!(
        c.apply(s, &cb(0, 1, &refs, &[])).await.unwrap(),
        Applied::Applied
    );
    assert_eq!(c.size(s).await.unwrap(), 12_000);
    assert_eq!(
        c.apply(s, &cb(1, 2, &[], &drefs)).await.unwrap(),
        Applied::Applied
    );
    assert_eq!(c.size(s).await.unwrap(), 3_000);
}

async fn cache_fill_rules(c: Arc<dyn ShardCache>) {
    let s = "UK/F";
    let ttl = Duration::from_millis(300);
    // Not hosted: the fill is readable, then expires.
    c.fill(s, "UK:x", Bytes::from(r#"{"v":1,"version":5}"#), 5, ttl)
        .await
        .unwrap();
    assert!(c.get(s, "UK:x").await.unwrap().is_some());
    assert_eq!(
        c.size(s).await.unwrap(),
        0,
        "unhosted fills are not shard items"
    );
    testkit::eventually_async(
        Duration::from_secs(5),
        "unhosted fill to expire",
        || async { c.get(s, "UK:x").await.unwrap().is_none().then_some(()) },
    )
    .await;
    // Hosted: a fill never overwrites a newer version.
    c.apply(s, &cb(0, 10, &[("UK:y", r#"{"version":10}"#)], &[]))
        .await
        .unwrap();
    c.fill(s, "UK:y", Bytes::from(r#"{"old":1,"version":7}"#), 7, ttl)
        .await
        .unwrap();
    assert_eq!(
        c.get(s, "UK:y").await.unwrap().unwrap(),
        Bytes::from(r#"{"version":10}"#)
    );
    c.fill(s, "UK:y", Bytes::from(r#"{"new":1,"version":12}"#), 12, ttl)
        .await
        .unwrap();
    assert_eq!(
        c.get(s, "UK:y").await.unwrap().unwrap(),
        Bytes::from(r#"{"new":1,"version":12}"#)
    );
    // A stale unhosted fill does not shadow a hosted shard's absence.
    let s2 = "UK/G";
    c.fill(
        s2,
        "UK:z",
        Bytes::from(r#"{"version":1}"#),
        1,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    c.apply(s2, &cb(0, 2, &[], &[])).await.unwrap();
    assert_eq!(c.get(s2, "UK:z").await.unwrap(), None);
}

async fn transfer_insert_update_delete_resume(p: Arc<dyn ProviderFull>, c: Arc<dyn ShardCache>) {
    let s = shard(
        "UK/KITCHEN",
        &[("KITCHEN_DINING", "UK"), ("KITCHEN_DINING", "INTL")],
    );
    let mut changes = vec![];
    for i in 0..250 {
        changes.push(up(
            &format!("K{i:03}"),
            if i % 3 == 0 { "INTL" } else { "UK" },
            "KITCHEN_DINING",
            i,
            100 + i,
        ));
    }
    changes.push(up("OTHER", "UK", "LIGHTING", 1, 1));
    p.apply(&changes).await.unwrap();
    let pr = sync_shard(&p, &c, &s, 64).await;
    assert_eq!(pr.rows, 250);
    assert!(pr.batches >= 4, "batches of 64");
    assert_same(&p, &c, &s).await;

    // Updates and deletes flow as deltas; the cursor resumes.
    let before = c.cursor(&s.id).await.unwrap().unwrap();
    p.apply(&[
        Change::Stock {
            sku: "K001".into(),
            region: "UK".into(),
            stock: 999,
        },
        Change::Price {
            sku: "K002".into(),
            region: "UK".into(),
            price_cents: 1,
        },
        Change::Delete {
            sku: "K004".into(),
            region: "UK".into(),
        },
        Change::StockDelta {
            sku: "K005".into(),
            region: "UK".into(),
            delta: -1000,
        },
    ])
    .await
    .unwrap();
    let pr = sync_shard(&p, &c, &s, 64).await;
    assert_eq!(pr.rows, 4, "only the changes travel");
    assert!(c.cursor(&s.id).await.unwrap().unwrap() > before);
    assert_same(&p, &c, &s).await;
    assert_eq!(c.get(&s.id, "UK:K004").await.unwrap(), None);
    let v: serde_json::Value =
        serde_json::from_slice(&c.get(&s.id, "UK:K005").await.unwrap().unwrap()).unwrap();
    assert_eq!(v["stock"], 0, "stock floors at zero");

    // Nothing new: nothing moves.
    let pr = sync_shard(&p, &c, &s, 64).await;
    assert_eq!(pr.rows, 0);
}

/// An evicted copy parked in the cache is not served, and the next
/// transfer copies only what changed since its cursor, ending identical to
/// the provider; a copy dropped (keep 0) or expired is copied whole.
async fn evicted_copy_resumes_by_delta(p: Arc<dyn ProviderFull>, c: Arc<dyn ShardCache>) {
    let s = shard("UK/LIGHTING", &[("LIGHTING", "UK")]);
    let changes: Vec<Change> = (0..300)
        .map(|i| up(&format!("L{i:03}"), "UK", "LIGHTING", i, 100 + i))
        .collect();
    p.apply(&changes).await.unwrap();
    let first = sync_shard(&p, &c, &s, 64).await;
    assert_eq!(first.rows, 300);
    assert_same(&p, &c, &s).await;
    let cursor = c.cursor(&s.id).await.unwrap().unwrap();

    c.park(&s.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(c.cursor(&s.id).await.unwrap(), None, "parked is not hosted");
    assert_eq!(c.parked(&s.id).await.unwrap(), Some(cursor));
    // Evicted again (a manager's round that repeats its eviction): the
    // parked copy stays, so the next pre-fetch is still a delta.
    c.park(&s.id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        c.parked(&s.id).await.unwrap(),
        Some(cursor),
        "a second eviction dropped the parked copy"
    );
    assert_eq!(
        c.get(&s.id, "UK:L001").await.unwrap(),
        None,
        "a parked copy is never served"
    );
    assert_eq!(c.size(&s.id).await.unwrap(), 0);

    // The provider moves on while the copy is parked; the node's slow path
    // fills one item meanwhile (short-lived, as for any shard not hosted).
    p.apply(&[
        Change::Stock {
            sku: "L001".into(),
            region: "UK".into(),
            stock: 999,
        },
        Change::Delete {
            sku: "L002".into(),
            region: "UK".into(),
        },
        up("L900", "UK", "LIGHTING", 5, 5),
    ])
    .await
    .unwrap();
    let row = p.get("L001", "UK").await.unwrap().unwrap();
    let v = encode_value(&row, row.item.as_ref().unwrap(), 1 << 20).unwrap();
    c.fill(&s.id, "UK:L001", v, row.version, Duration::from_secs(30))
        .await
        .unwrap();

    let again = sync_shard(&p, &c, &s, 64).await;
    assert_eq!(again.rows, 3, "only the changed rows travel: {again:?}");
    assert!(
        again.bytes < first.bytes / 20,
        "{again:?} against {first:?}"
    );
    assert_eq!(c.parked(&s.id).await.unwrap(), None);
    assert_same(&p, &c, &s).await;
    assert_eq!(
        c.get(&s.id, "UK:L002").await.unwrap(),
        None,
        "the delete arrived"
    );
    let snap = p.snapshot(&s, 1000).await.unwrap();
    let live = snap.rows.len() as u64;
    assert_eq!(live, 300, "300 - L002 + L900");
    assert_eq!(c.size(&s.id).await.unwrap(), live);

    // Parked with nothing changed: hosted again by an empty delta.
    let cursor = c.cursor(&s.id).await.unwrap().unwrap();
    c.park(&s.id, Duration::from_secs(60)).await.unwrap();
    let same = sync_shard(&p, &c, &s, 64).await;
    assert_eq!((same.rows, same.cursor), (0, cursor));
    assert_eq!(c.cursor(&s.id).await.unwrap(), Some(cursor));
    assert_same(&p, &c, &s).await;

    // Kept for no time, or past its time: the next copy is whole.
    c.park(&s.id, Duration::ZERO).await.unwrap();
    assert_eq!(c.parked(&s.id).await.unwrap(), None);
    // (A whole copy in batches reads the tombstone too once past cursor 0.)
    assert!(sync_shard(&p, &c, &s, 64).await.rows >= live);
    c.park(&s.id, Duration::from_millis(200)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.parked(&s.id).await.unwrap(), None, "expired");
    assert!(sync_shard(&p, &c, &s, 64).await.rows >= live);
    assert_same(&p, &c, &s).await;
    // Evict drops a parked copy too.
    c.park(&s.id, Duration::from_secs(60)).await.unwrap();
    c.evict(&s.id).await.unwrap();
    assert_eq!(c.parked(&s.id).await.unwrap(), None);
}

async fn rejected_rows_are_counted_not_fatal(p: Arc<dyn ProviderFull>, c: Arc<dyn ShardCache>) {
    let s = shard("UK/BAGS", &[("BAGS_STORAGE", "UK")]);
    let huge = format!(r#"{{"description":"{}"}}"#, "x".repeat(100_000));
    p.apply(&[
        up("G1", "UK", "BAGS_STORAGE", 1, 1),
        Change::Upsert {
            sku: "G2".into(),
            region: "UK".into(),
            category: "BAGS_STORAGE".into(),
            stock: 1,
            price_cents: 1,
            attributes: huge,
        },
        Change::Upsert {
            sku: "G3".into(),
            region: "UK".into(),
            category: "BAGS_STORAGE".into(),
            stock: 1,
            price_cents: 1,
            attributes: "[1,2,3]".into(),
        },
    ])
    .await
    .unwrap();
    let m = Arc::new(Metrics::default());
    let params = TransferParams::default();
    let pr = catch_up(
        p.clone(),
        c.clone(),
        &s,
        &TokenBucket::new(0),
        &params,
        &m,
        &CancellationToken::new(),
        false,
        &shardcast_sync::transfer::no_errors(),
        &|_| {},
    )
    .await
    .unwrap();
    assert!(pr.cursor > 0);
    assert!(c.get(&s.id, "UK:G1").await.unwrap().is_some());
    assert!(
        c.get(&s.id, "UK:G2").await.unwrap().is_none(),
        "oversized not cached"
    );
    assert!(
        c.get(&s.id, "UK:G3").await.unwrap().is_none(),
        "malformed not cached"
    );
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(m.rows_rejected_oversized.load(Relaxed), 1);
    assert_eq!(m.rows_malformed.load(Relaxed), 1);
    let mut out = String::new();
    m.render_scheduler(&mut out);
    assert!(
        out.contains("shardcast_sync_rows_rejected_total{reason=\"oversized\"} 1"),
        "{out}"
    );
}

async fn encode_batch_roundtrip(p: Arc<dyn ProviderFull>, c: Arc<dyn ShardCache>) {
    // Applying the same provider batch twice (a crash between the write and
    // the acknowledgement) is recognised by the cursor.
    let s = shard("INTL/DECOR", &[("HOME_DECOR_OTHER", "INTL")]);
    p.apply(&[up("D1", "INTL", "HOME_DECOR_OTHER", 1, 1)])
        .await
        .unwrap();
    let b = p.delta(&s, 0, 100).await.unwrap();
    let m = Metrics::default();
    let enc = encode_batch(&s.id, &b, 1 << 16, &m);
    assert_eq!(c.apply(&s.id, &enc).await.unwrap(), Applied::Applied);
    assert_eq!(
        c.apply(&s.id, &enc).await.unwrap(),
        Applied::AlreadyApplied { cursor: b.to }
    );
    assert_same(&p, &c, &s).await;
}

// ---------------------------------------------------------------------------
// Instantiation per backend
// ---------------------------------------------------------------------------

macro_rules! provider_tests {
    ($m:ident, $make:ident) => {
        mod $m {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn deltas_in_version_order() {
                let (p, _g) = $make().await;
                provider_deltas_in_version_order(p).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delete_leaves_tombstone() {
                let (p, _g) = $make().await;
                provider_delete_leaves_tombstone(p).await;
            }
        }
    };
}

macro_rules! cache_tests {
    ($m:ident, $make:ident) => {
        mod $m {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn apply_atomic_idempotent() {
                let (c, _g) = $make().await;
                cache_apply_atomic_idempotent(c).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fill_rules() {
                let (c, _g) = $make().await;
                cache_fill_rules(c).await;
            }
        }
    };
}

macro_rules! pair_tests {
    ($m:ident, $mp:ident, $mc:ident) => {
        mod $m {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn insert_update_delete_resume() {
                let (p, _g1) = $mp().await;
                let (c, _g2) = $mc().await;
                transfer_insert_update_delete_resume(p, c).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn evicted_copy_resumes_by_delta() {
                let (p, _g1) = $mp().await;
                let (c, _g2) = $mc().await;
                super::evicted_copy_resumes_by_delta(p, c).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rejected_rows() {
                let (p, _g1) = $mp().await;
                let (c, _g2) = $mc().await;
                rejected_rows_are_counted_not_fatal(p, c).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replayed_batch_skipped() {
                let (p, _g1) = $mp().await;
                let (c, _g2) = $mc().await;
                encode_batch_roundtrip(p, c).await;
            }
        }
    };
}

provider_tests!(provider_sqlite, sqlite);
provider_tests!(provider_postgres, postgres);
cache_tests!(cache_memory, memory);
cache_tests!(cache_redis, redis);
pair_tests!(sqlite_memory, sqlite, memory);
pair_tests!(postgres_redis, postgres, redis);
pair_tests!(sqlite_redis, sqlite, redis);
pair_tests!(postgres_memory, postgres, memory);
