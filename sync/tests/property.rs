//! Property: for any two provider states A and B (B = A + some changes), a
//! cache synced to A, after applying the delta between A and B, equals B.
//! Run against SQLite → in-process (many cases) and PostgreSQL → Redis
//! (fewer cases, one server pair reused with a fresh shard per case).

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shardcast_sync::cache::{self, ShardCache};
use shardcast_sync::metrics::Metrics;
use shardcast_sync::model::{encode_value, field, ShardDef};
use shardcast_sync::provider::{self, Change, ProviderFull};
use shardcast_sync::testkit;
use shardcast_sync::transfer::{catch_up, TokenBucket, TransferParams};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
enum Op {
    Upsert(u8, u8, i64, i64),
    Stock(u8, u8, i64),
    Delta(u8, u8, i64),
    Price(u8, u8, i64),
    Delete(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..8;
    let r = 0u8..2;
    prop_oneof![
        3 => (k.clone(), r.clone(), 0i64..1000, 1i64..10_000).prop_map(|(k, r, s, p)| Op::Upsert(k, r, s, p)),
        2 => (k.clone(), r.clone(), 0i64..1000).prop_map(|(k, r, s)| Op::Stock(k, r, s)),
        2 => (k.clone(), r.clone(), -50i64..50).prop_map(|(k, r, d)| Op::Delta(k, r, d)),
        1 => (k.clone(), r.clone(), 1i64..10_000).prop_map(|(k, r, p)| Op::Price(k, r, p)),
        2 => (k, r).prop_map(|(k, r)| Op::Delete(k, r)),
    ]
}

const REGIONS: [&str; 2] = ["UK", "INTL"];

/// Skus 0..4 are in the shard's category, 4..8 in another one.
fn to_change(ns: &str, o: &Op) -> Change {
    let sku = |k: u8| format!("{ns}-{k}");
    let cat = |k: u8| if k < 4 { "LIGHTING" } else { "SEASONAL" }.to_string();
    match *o {
        Op::Upsert(k, r, s, p) => Change::Upsert {
            sku: sku(k),
            region: REGIONS[r as usize].into(),
            category: cat(k),
            stock: s,
            price_cents: p,
            attributes: format!(r#"{{"d":"{k}"}}"#),
        },
        Op::Stock(k, r, s) => Change::Stock {
            sku: sku(k),
            region: REGIONS[r as usize].into(),
            stock: s,
        },
        Op::Delta(k, r, d) => Change::StockDelta {
            sku: sku(k),
            region: REGIONS[r as usize].into(),
            delta: d,
        },
        Op::Price(k, r, p) => Change::Price {
            sku: sku(k),
            region: REGIONS[r as usize].into(),
            price_cents: p,
        },
        Op::Delete(k, r) => Change::Delete {
            sku: sku(k),
            region: REGIONS[r as usize].into(),
        },
    }
}

async fn sync(p: &Arc<dyn ProviderFull>, c: &Arc<dyn ShardCache>, s: &ShardDef, batch: usize) {
    let params = TransferParams {
        batch_rows: batch,
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
    .unwrap();
}

async fn state(p: &Arc<dyn ProviderFull>, s: &ShardDef) -> Vec<(String, Bytes)> {
    let snap = p.snapshot(s, 3).await.unwrap();
    let mut v: Vec<_> = snap
        .rows
        .iter()
        .map(|r| {
            (
                field(&r.sku, &r.region),
                encode_value(r, r.item.as_ref().unwrap(), 1 << 20).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn run(p: Arc<dyn ProviderFull>, c: Arc<dyn ShardCache>, cases: u32, rt: &tokio::runtime::Runtime) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU64::new(0);
    let strat = (
        proptest::collection::vec(op(), 0..30),
        proptest::collection::vec(op(), 0..30),
        1usize..6,
    );
    runner
        .run(&strat, |(a, b, batch)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ns = format!("c{n}");
            let s = ShardDef {
                id: format!("P{n}"),
                cells: vec![
                    ("LIGHTING".into(), "UK".into()),
                    ("LIGHTING".into(), "INTL".into()),
                ],
            };
            let (p, c) = (p.clone(), c.clone());
            rt.block_on(async move {
                // State A, and a cache synced to it.
                for ch in &a {
                    // Changes to absent rows are no-ops, as in a real provider.
                    p.apply(&[to_change(&ns, ch)]).await.unwrap();
                }
                sync(&p, &c, &s, batch).await;
                let mut have = c.dump(&s.id).await.unwrap();
                have.sort();
                prop_assert_eq!(&have, &state(&p, &s).await, "cache at A");
                // State B; apply only the delta.
                let changes: Vec<Change> = b.iter().map(|o| to_change(&ns, o)).collect();
                p.apply(&changes).await.unwrap();
                sync(&p, &c, &s, batch).await;
                let mut have = c.dump(&s.id).await.unwrap();
                have.sort();
                prop_assert_eq!(have, state(&p, &s).await, "cache at B");
                Ok(())
            })
        })
        .unwrap();
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn delta_between_states_sqlite_memory() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (p, c) = rt.block_on(async {
        (
            provider::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
                .await
                .unwrap(),
            cache::open("memory", "").await.unwrap(),
        )
    });
    run(p, c, 96, &rt);
}

#[test]
fn delta_between_states_postgres_redis() {
    let rt = rt();
    let pg = testkit::Postgres::start();
    let redis = testkit::Redis::start();
    let (p, c) = rt.block_on(async {
        (
            provider::open(&pg.url()).await.unwrap(),
            cache::open(&redis.url(), "prop").await.unwrap(),
        )
    });
    run(p, c, 24, &rt);
}
