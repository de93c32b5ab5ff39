//! Delta throughput, PostgreSQL → Redis, for ~1M changed rows, beside
//! `redis-benchmark -P 16 -t set` against the same Redis as the ceiling.
//!
//! `cargo bench -p shardcast-sync --bench delta_throughput`
//! (env: `ROWS_SCALE` = catalog scale, default 118 ≈ 1.0M rows;
//! `BATCH_ROWS`, default 5000).
//!
//! Steps: start throwaway PostgreSQL and Redis (testkit); load the catalog
//! at the scale; `UPDATE` every row (1M changed rows, stamped by the
//! trigger); copy the delta since the pre-update cursor of one shard
//! holding all 14 cells into Redis with [`catch_up`] (one reader, batches
//! applied atomically with their cursor, no bandwidth limit); then run
//! redis-benchmark with the default 3-byte value and with values of the
//! delta's mean size. Prints rows/s, MB/s and the ratios.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast_sync::cache::{self, ShardCache};
use shardcast_sync::metrics::Metrics;
use shardcast_sync::model::ShardDef;
use shardcast_sync::provider::{self, postgres::PgProvider};
use shardcast_sync::testkit;
use shardcast_sync::transfer::{catch_up, no_errors, TokenBucket, TransferParams};
use tokio_util::sync::CancellationToken;

fn redis_benchmark(port: u16, n: u64, value: usize) -> f64 {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            "16",
            "-t",
            "set",
            "-q",
        ])
        .args([
            "-n",
            &n.to_string(),
            "-d",
            &value.to_string(),
            "-r",
            "1000000",
        ])
        .output()
        .expect("redis-benchmark (scripts/setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "SET: 512820.53 requests per second, p50=..." (after \r progress lines)
    text.split(['\r', '\n'])
        .filter_map(|l| l.trim().strip_prefix("SET: "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("cannot parse redis-benchmark output: {text}"))
}

fn main() {
    // `cargo bench` passes `--bench`; this harness has no filters.
    let scale: u32 = std::env::var("ROWS_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(118);
    let batch_rows: usize = std::env::var("BATCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pg = testkit::Postgres::start();
    let redis = testkit::Redis::start();
    rt.block_on(async {
        let p = provider::open(&pg.url()).await.unwrap();
        let cat = testkit::workspace_root().join("data/online_retail/catalog.csv.gz");
        let t = Instant::now();
        let n = shardcast_sync::load::load(p.as_ref(), &cat, scale, 50_000)
            .await
            .unwrap();
        eprintln!("loaded {n} rows in {:.1}s", t.elapsed().as_secs_f64());
        let before = p.head().await.unwrap();
        let admin = PgProvider::new(&pg.url());
        let t = Instant::now();
        for sql in [
            "UPDATE inventory SET stock = stock + 1",
            "VACUUM ANALYZE inventory",
            "VACUUM ANALYZE products",
        ] {
            admin.execute_sql(sql).await.unwrap();
        }
        eprintln!("updated every row in {:.1}s", t.elapsed().as_secs_f64());

        // One shard holding every cell: the whole 1M-row delta in one transfer.
        let mut cells = vec![];
        for r in shardcast_sync::config::DATA_REGIONS {
            for c in shardcast_sync::config::DATA_CATEGORIES {
                cells.push((c.to_string(), r.to_string()));
            }
        }
        let shard = ShardDef {
            id: "ALL".into(),
            cells,
        };
        let cache: Arc<dyn ShardCache> = cache::open(&redis.url(), "bench").await.unwrap();
        // Host the shard at the pre-update cursor (as if it had been warm).
        let hosted = shardcast_sync::model::CacheBatch {
            from: 0,
            to: before,
            ..Default::default()
        };
        cache.apply(&shard.id, &hosted).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let params = TransferParams {
            batch_rows,
            ..TransferParams::default()
        };
        let t = Instant::now();
        let pr = catch_up(
            p.clone(),
            cache.clone(),
            &shard,
            &TokenBucket::new(0),
            &params,
            &metrics,
            &CancellationToken::new(),
            true,
            &no_errors(),
            &|_| {},
        )
        .await
        .unwrap();
        let secs = t.elapsed().as_secs_f64();
        let rows_s = pr.rows as f64 / secs;
        let mb_s = pr.bytes as f64 / secs / 1e6;
        let mean = pr.bytes as f64 / pr.rows.max(1) as f64;
        assert_eq!(cache.size(&shard.id).await.unwrap(), n, "every row landed");

        std::thread::sleep(Duration::from_millis(200));
        let ceiling3 = redis_benchmark(redis.port(), 2_000_000, 3);
        let ceiling_mean = redis_benchmark(redis.port(), 2_000_000, mean.round() as usize);
        let date = Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        println!("delta PostgreSQL → Redis ({date}, scale {scale}, batch {batch_rows} rows)");
        println!("  rows          {}", pr.rows);
        println!("  batches       {}", pr.batches);
        println!("  seconds       {secs:.2}");
        println!("  rows/s        {rows_s:.0}");
        println!("  MB/s          {mb_s:.1} (mean item {mean:.0} B incl. field)");
        println!(
            "  redis-benchmark -P 16 -t set, -d 3:        {ceiling3:.0} SET/s → ratio {:.2}",
            rows_s / ceiling3
        );
        println!(
            "  redis-benchmark -P 16 -t set, -d {:.0}:      {ceiling_mean:.0} SET/s → ratio {:.2}",
            mean,
            rows_s / ceiling_mean
        );
    });
}
