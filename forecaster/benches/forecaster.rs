//! Benchmarks of the forecaster: a planning cycle for 10k shards × all
//! horizons, by what re-ran (both models, the hourly model at a new hour,
//! one shard after a late frame, nothing), with no refresh budget and with
//! the shipped one (and, printed, how many budgeted cycles a full refresh
//! takes); ingest throughput (decode + store), and memory per shard
//! (printed).
//!
//! `cargo bench -p shardcast-forecaster` — needs `.venv` (scripts/setup).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardcast_forecaster::config::{HistoryAlign, HistoryConfig};
use shardcast_forecaster::engine::{Engine, EngineConfig, ForecastHandle, RefreshBudget};
use shardcast_forecaster::feeds::{self, FeedSource, FeedSpec, Signals};
use shardcast_forecaster::metrics::Metrics;
use shardcast_forecaster::service::seed_history;
use shardcast_forecaster::store::{Retention, Store};
use shardcast_forecaster::time::parse_local;
use shardmap::telemetry::{Frame, Latency, ShardSample, FRAME_VERSION};

const SHARDS: usize = 10_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// 10k shards: the 14 real series (last 60 days), each copied with a
/// per-copy scale and phase so rows differ.
fn store_10k() -> Arc<Store> {
    let real = Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        100,
    );
    seed_history(
        &real,
        &HistoryConfig {
            source: FeedSource::File(root().join("data/online_retail/shard_hourly.csv.gz")),
            id_col: "shard_id".into(),
            time_col: "ds".into(),
            value_col: "lines".into(),
            align: HistoryAlign::AsIs,
        },
        // after the data ends: seeding keeps only hours before "now"
        parse_local("2012-01-01 00:00:00").unwrap() * 1000,
    );
    let origin = parse_local("2011-11-10 23:00:00").unwrap() / 3600;
    let first = origin - 60 * 24 + 1;
    let ids = real.shard_ids();
    let hist: Vec<Vec<f64>> = ids
        .iter()
        .map(|id| {
            let mut v = vec![0.0; 60 * 24];
            real.hourly_window(id, first, &mut v);
            v
        })
        .collect();
    let store = Arc::new(Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        SHARDS,
    ));
    for i in 0..SHARDS {
        let src = &hist[i % hist.len()];
        let k = 0.2 + (i % 17) as f64 * 0.3;
        let v: Vec<f64> = src.iter().map(|x| x * k).collect();
        store.seed_hourly(&format!("R{}/C{i}", i % 7), first, &v);
    }
    store
}

fn engine(store: Arc<Store>, signals: Signals, threads: usize, refresh: RefreshBudget) -> Engine {
    Engine::new(
        EngineConfig {
            hourly_contract: root().join("forecaster/models/shardcast_hourly.json"),
            daily_contract: root().join("forecaster/models/shardcast_daily.json"),
            onnxruntime_lib: None,
            intra_threads: threads,
            cycle: Duration::from_secs(10),
            retry_load: Duration::from_secs(60),
            clock: shardcast_forecaster::time::Clock::real(),
            refresh,
        },
        store,
        Arc::new(ArcSwap::from_pointee(signals)),
        Arc::new(Metrics::default()),
        ForecastHandle::new(),
    )
}

/// A frame of `requests` for shard `id` over the second starting at `t_ms`.
fn one_shard_frame(seq: u64, id: &str, t_ms: i64, requests: u64) -> Frame {
    Frame {
        v: FRAME_VERSION,
        source: "late".into(),
        seq,
        start_unix_ms: t_ms as u64,
        interval_ms: 1000,
        shards: vec![ShardSample {
            shard: id.into(),
            requests,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn inference(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let signals = rt.block_on(feeds::reload(
        &Signals::default(),
        Some(&FeedSpec {
            name: "events".into(),
            source: FeedSource::File(root().join("data/online_retail/events.csv")),
            max_age: Duration::from_secs(0),
        }),
        &[],
        Duration::from_secs(5),
    ));
    let store = store_10k();
    let now = parse_local("2011-11-11 00:00:30").unwrap() * 1000;
    let mut g = c.benchmark_group("planning_cycle_10k_shards");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(SHARDS as u64));
    // `intra1`: no budget, every changed shard re-runs in the cycle that
    // sees the change (the names of the earlier engine's bench, for a side
    // by side run); `budget100`: the shipped default (refresh_budget_ms = 100;
    // `budget120` in results before 2026-12-06, when 120 was).
    let budgeted = RefreshBudget {
        per_cycle: Some(Duration::from_millis(100)),
        max_rows: None,
        catch_up: Duration::from_secs(1),
    };
    for (label, budget) in [
        ("intra1", RefreshBudget::unbounded()),
        ("budget100", budgeted),
    ] {
        let mut e = engine(store.clone(), signals.clone(), 1, budget);
        let set = e.cycle(now);
        assert_eq!(set.shards.len(), SHARDS);
        let fallback = |set: &shardcast_forecaster::engine::ForecastSet| {
            set.shards
                .values()
                .flat_map(|s| &s.horizons)
                .filter(|h| h.is_fallback())
                .count()
        };
        eprintln!(
            "{label}: first cycle of a new engine (loads both models) {:.1} ms, rows run {} / {}, fallback horizons {}",
            set.cycle_ms,
            set.models[0].rows,
            set.models[1].rows,
            fallback(&set)
        );
        // Refresh to completion after both models' inputs change.
        let refresh = |e: &mut Engine, at: i64, what: &str| {
            let (mut n, mut max_ms, mut sum_ms) = (0, 0.0f64, 0.0);
            loop {
                let set = e.cycle(at);
                n += 1;
                max_ms = max_ms.max(set.cycle_ms);
                sum_ms += set.cycle_ms;
                if e.backlog() == 0 || n > 100 {
                    eprintln!(
                        "{label}: {what}: {n} cycles to refresh every shard, slowest {max_ms:.1} ms, total {sum_ms:.0} ms, fallback horizons at the end {}",
                        fallback(&set)
                    );
                    return;
                }
            }
        };
        refresh(&mut e, now, "after the first cycle");
        e.invalidate();
        refresh(&mut e, now, "both models invalidated");
        refresh(&mut e, now + 3_600_000, "a new hour");
        refresh(&mut e, now, "back to the first hour");
        g.bench_function(format!("cold_both_models_{label}"), |b| {
            b.iter(|| {
                e.invalidate();
                e.cycle(now)
            })
        });
        refresh(&mut e, now, "after the both-models bench");
        g.bench_function(format!("warm_cached_{label}"), |b| b.iter(|| e.cycle(now)));
        // A new hour in the same day: only the hourly model re-runs.
        let mut hour = 0i64;
        g.bench_function(format!("new_hour_hourly_model_only_{label}"), |b| {
            b.iter(|| {
                hour = (hour + 1) % 23;
                e.cycle(now + hour * 3_600_000)
            })
        });
        refresh(&mut e, now, "after the new-hour bench");
        // A late frame lands in a closed hour of one shard.
        let ids = store.shard_ids();
        let mut seq = 0u64;
        g.bench_function(format!("late_frame_one_shard_{label}"), |b| {
            b.iter(|| {
                seq += 1;
                let id = &ids[seq as usize % ids.len()];
                store.ingest(&one_shard_frame(seq, id, now - 3_600_000, 5), now);
                let set = e.cycle(now);
                assert_eq!(set.models[0].rows, 1);
                set
            })
        });
        // CPU time per cycle of each kind (this process, all threads): robust
        // to other load on the shared machine, unlike wall time.
        let mut cpu_per = |what: &str,
                           f: &mut dyn FnMut(
            &mut Engine,
            u64,
        )
            -> Arc<shardcast_forecaster::engine::ForecastSet>| {
            let (cpu0, t0) = (cpu_seconds(), std::time::Instant::now());
            let mut max_ms = 0.0f64;
            for k in 0..5 {
                max_ms = max_ms.max(f(&mut e, k).cycle_ms);
            }
            eprintln!(
                "{label}: {what}: mean wall {:.1} ms, slowest {max_ms:.1} ms, mean CPU {:.1} ms",
                t0.elapsed().as_secs_f64() * 200.0,
                (cpu_seconds() - cpu0) * 200.0
            );
        };
        cpu_per("cached cycle", &mut |e, _| e.cycle(now));
        cpu_per("new hour (hourly re-run)", &mut |e, k| {
            e.cycle(now + (k as i64 + 1) * 3_600_000)
        });
        cpu_per("both models invalidated (both re-run)", &mut |e, _| {
            e.invalidate();
            e.cycle(now)
        });
        refresh(&mut e, now, "after the CPU runs");
        // CPU time (this process, all threads) of 5 both-model re-runs
        // (to completion): robust to other load on the shared machine.
        let cpu0 = cpu_seconds();
        let t0 = std::time::Instant::now();
        for _ in 0..5 {
            e.invalidate();
            loop {
                e.cycle(now);
                if e.backlog() == 0 {
                    break;
                }
            }
        }
        eprintln!(
            "{label}: 5 both-model re-runs of every shard, mean wall {:.0} ms, mean CPU {:.0} ms",
            t0.elapsed().as_secs_f64() * 200.0,
            (cpu_seconds() - cpu0) * 200.0
        );
    }
    g.finish();
}

/// utime + stime of this process from /proc/self/stat, in seconds.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn frame(seq: u64, shards: usize, t: u64) -> Frame {
    Frame {
        v: FRAME_VERSION,
        source: "proxy-1".into(),
        seq,
        start_unix_ms: t,
        interval_ms: 1000,
        table_version: 1,
        dropped_before: 0,
        shards: (0..shards)
            .map(|i| ShardSample {
                shard: format!("REGION{}/CATEGORY_{i}", i % 5),
                requests: 100 + i as u64,
                errors: 1,
                cache_hits: 90,
                cache_misses: 10,
                bytes: 123_456,
                latency: Latency {
                    count: 100,
                    p50_us: 800,
                    p90_us: 2_000,
                    p99_us: 9_000,
                    max_us: 20_000,
                    mean_us: 1_000.5,
                },
                top_skus: (0..8)
                    .map(|k| (format!("SKU{k:05}"), 10 - k as u64))
                    .collect(),
            })
            .collect(),
    }
}

fn ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    for shards in [1usize, 100, 1_000] {
        let store = Store::new(
            Retention::default(),
            shardcast_forecaster::time::Zone::utc(),
            100_000,
        );
        let t0 = 1_795_000_000_000u64;
        let bytes = frame(0, shards, t0).encode();
        g.throughput(Throughput::Elements(1));
        let mut seq = 0u64;
        g.bench_function(format!("decode_and_store_frame_{shards}_shards"), |b| {
            b.iter_batched(
                || {
                    seq += 1;
                    seq
                },
                |s| {
                    let mut f = Frame::decode(&bytes).unwrap();
                    f.seq = s;
                    f.start_unix_ms = t0 + s * 1000;
                    store.ingest(&f, (t0 + s * 1000) as i64)
                },
                BatchSize::SmallInput,
            )
        });
        eprintln!("frame with {shards} shards: {} bytes encoded", bytes.len());
    }
    g.finish();

    // Memory per shard (heap held by the rings), printed.
    let store = Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        100,
    );
    let r = Retention::default();
    let t0 = 1_795_000_000_000u64;
    // a shard that has filled every ring: a week of 1 s frames, then 3 years of hours
    store.seed_hourly(
        "full",
        (t0 / 3_600_000) as i64 - r.hours as i64,
        &vec![1.0; r.hours],
    );
    for s in 0..(r.minutes as u64 * 60 / 1000 + 1) {
        let f = frame(s, 1, t0 + s * 60_000);
        let mut f = f;
        f.shards[0].shard = "full".into();
        f.interval_ms = 60_000;
        store.ingest(&f, (t0 + s * 60_000) as i64);
    }
    for s in 0..3_600u64 {
        let mut f = frame(s, 1, t0 + 700_000_000 + s * 1000);
        f.shards[0].shard = "full".into();
        store.ingest(&f, 0);
    }
    let full = store.bytes();
    let typical = Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        100,
    );
    typical.seed_hourly("seeded-60d", 0, &vec![1.0; 60 * 24]);
    eprintln!(
        "memory per shard: full rings {} KiB (cap: {} s + {} min + {} h buckets × 4 B); 60 days seeded, no live data {} KiB",
        full / 1024,
        r.seconds,
        r.minutes,
        r.hours,
        typical.bytes() / 1024
    );
}

criterion_group!(benches, inference, ingest);
criterion_main!(benches);
