//! Delta throughput, PostgreSQL → Redis and PostgreSQL → Redis Cluster, for
//! ~1M changed rows, each beside `redis-benchmark -P 16 -t set` against the
//! same target as the ceiling, interleaved in rounds.
//!
//! `cargo bench -p shardcast-sync --bench delta_throughput`
//! (env: `ROWS_SCALE` = catalog scale, default 118 ≈ 1.0M rows;
//! `BATCH_ROWS`, default 5000; `TARGET` = `redis`, `cluster` or `both`
//! (default); `ROUNDS`, default 2; `CLUSTER_SHARDS`, default 14;
//! `MODES`, default `old,new`: `old` reads a query per batch and writes one
//! batch at a time (the pipeline before), `new` streams the read through
//! one portal with 4 batches in flight; `stream:N` / `batch:N` set each).
//!
//! Steps: start throwaway PostgreSQL, Redis and a 3-master/3-replica Redis
//! Cluster (testkit); load the catalog at the scale; `UPDATE` every row
//! (1M changed rows, stamped by the trigger). Then, per round and target:
//! flush the target; host the shards at the pre-update cursor; copy the
//! delta into it with [`catch_up`] (batches applied atomically with their
//! cursor, no bandwidth limit); flush again and run redis-benchmark at the
//! delta's mean value size (`--cluster` on the cluster). On one Redis the
//! delta is one shard holding all 28 cells; on the cluster it is
//! `CLUSTER_SHARDS` shards (the cells dealt round-robin, whole categories
//! per shard) copied concurrently, as the scheduler runs transfers, since
//! one shard lives in one slot and so on one master, with `wait_replicas=1`
//! (every batch on a replica before its cursor counts).
//! Prints rows/s, MB/s, the ratios and CPU seconds per process (sync,
//! PostgreSQL, Redis) over each phase, which is where the time goes on a
//! shared 2-core machine.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast_sync::cache::{self, ShardCache};
use shardcast_sync::metrics::Metrics;
use shardcast_sync::model::ShardDef;
use shardcast_sync::provider::{self, postgres::PgProvider, Provider};
use shardcast_sync::testkit::{self, RedisCluster};
use shardcast_sync::transfer::{catch_up, no_errors, TokenBucket, TransferParams};
use tokio_util::sync::CancellationToken;

/// cutime + cstime of a process (its children waited for), in seconds.
fn cpu_of_exited_children(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = s.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(13) + ticks(14)) / 100.0
}

/// utime + stime of a process, in seconds.
fn cpu_of(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the `(comm)`, which may hold spaces.
    let Some((_, rest)) = s.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of `pid`, of every live process whose parent it is, and of
/// its children that exited (PostgreSQL backends come and go).
fn cpu_tree(pid: u32) -> f64 {
    let mut total = cpu_of(pid) + cpu_of_exited_children(pid);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if ppid == Some(pid) {
                total += cpu_of(child);
            }
        }
    }
    total
}

/// CPU seconds so far of (this process, PostgreSQL, the Redis servers).
#[derive(Clone, Copy)]
struct Cpu {
    sync: f64,
    pg: f64,
    redis: f64,
}

struct Procs {
    pg: u32,
    redis: Vec<u32>,
}

impl Procs {
    fn now(&self) -> Cpu {
        Cpu {
            sync: cpu_of(std::process::id()),
            pg: cpu_tree(self.pg),
            redis: self.redis.iter().map(|p| cpu_of(*p)).sum(),
        }
    }
}

fn since(a: Cpu, b: Cpu) -> String {
    format!(
        "cpu s: sync {:.2}, postgres {:.2}, redis {:.2}",
        b.sync - a.sync,
        b.pg - a.pg,
        b.redis - a.redis
    )
}

/// `redis-benchmark -P 16 -t set` at `value` bytes: SET/s.
fn redis_benchmark(port: u16, cluster: bool, n: u64, value: usize) -> f64 {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if cluster {
        cmd.arg("--cluster");
    }
    let out = cmd
        .args(["-P", "16", "-t", "set", "-q"])
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

/// `FLUSHALL` (a cluster's replicas refuse it and follow their master).
fn flush(port: u16) {
    let _ = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "FLUSHALL"])
        .output();
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A provider that reads the delta one query per batch (the default
/// [`Provider::delta_stream`]): the pipeline before the streaming read.
struct PerBatch(Arc<dyn Provider>);

#[async_trait::async_trait]
impl Provider for PerBatch {
    async fn delta(
        &self,
        shard: &ShardDef,
        cursor: u64,
        limit: usize,
    ) -> Result<shardcast_sync::model::Batch, provider::ProviderError> {
        self.0.delta(shard, cursor, limit).await
    }
    async fn get(
        &self,
        sku: &str,
        region: &str,
    ) -> Result<Option<shardcast_sync::model::Row>, provider::ProviderError> {
        self.0.get(sku, region).await
    }
    async fn catalog(&self) -> Result<Vec<(String, String)>, provider::ProviderError> {
        self.0.catalog().await
    }
    async fn head(&self) -> Result<u64, provider::ProviderError> {
        self.0.head().await
    }
    fn kind(&self) -> &'static str {
        "per-batch"
    }
}

/// How a run reads and writes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mode {
    /// One streaming read (a portal) rather than a query per batch.
    stream: bool,
    in_flight: usize,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        // `old` = per batch, one in flight (the pipeline before);
        // `new` = streamed, 4 in flight; or `stream:N` / `batch:N`.
        match s {
            "old" => Some(Mode {
                stream: false,
                in_flight: 1,
            }),
            "new" => Some(Mode {
                stream: true,
                in_flight: 4,
            }),
            _ => {
                let (kind, n) = s.split_once(':')?;
                Some(Mode {
                    stream: kind == "stream",
                    in_flight: n.parse().ok()?,
                })
            }
        }
    }

    fn label(self) -> String {
        format!(
            "{} read, {} in flight",
            if self.stream { "streamed" } else { "per-batch" },
            self.in_flight
        )
    }
}

/// A target: name, the port redis-benchmark uses, whether it is a
/// cluster, every node's port, the cache URL, the shards copied into it.
type Target<'a> = (&'a str, u16, bool, Vec<u16>, String, &'a [ShardDef]);

/// One copy of the whole delta: `(rows, bytes, seconds)`.
async fn copy(
    p: Arc<dyn Provider>,
    cache: Arc<dyn ShardCache>,
    shards: &[ShardDef],
    before: u64,
    batch_rows: usize,
    in_flight: usize,
) -> (u64, u64, f64) {
    for s in shards {
        // Host the shard at the pre-update cursor (as if it had been warm).
        let hosted = shardcast_sync::model::CacheBatch {
            from: 0,
            to: before,
            ..Default::default()
        };
        // Retried: a cluster's replicas may still be catching up on the
        // flush, and the write waits for one.
        let mut tries = 0;
        while let Err(e) = cache.apply(&s.id, &hosted).await {
            tries += 1;
            assert!(tries < 30, "hosting {}: {e}", s.id);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let metrics = Arc::new(Metrics::default());
    let params = TransferParams {
        batch_rows,
        in_flight,
        stream: true,
        ..TransferParams::default()
    };
    let bucket = TokenBucket::new(0);
    let cancel = CancellationToken::new();
    let errors = no_errors();
    let t = Instant::now();
    let runs = shards.iter().map(|s| {
        catch_up(
            p.clone(),
            cache.clone(),
            s,
            &bucket,
            &params,
            &metrics,
            &cancel,
            true,
            &errors,
            &|_| {},
        )
    });
    let done = futures::future::join_all(runs).await;
    let secs = t.elapsed().as_secs_f64();
    let (mut rows, mut bytes) = (0, 0);
    for pr in done {
        let pr = pr.unwrap();
        rows += pr.rows;
        bytes += pr.bytes;
    }
    (rows, bytes, secs)
}

fn main() {
    // `cargo bench` passes `--bench`; this harness has no filters.
    let scale: u32 = env("ROWS_SCALE", 118);
    let batch_rows: usize = env("BATCH_ROWS", 5000);
    let rounds: usize = env("ROUNDS", 2);
    let cluster_shards: usize = env("CLUSTER_SHARDS", 14);
    let target: String = env("TARGET", "both".to_string());
    let modes: Vec<Mode> = env("MODES", "old,new".to_string())
        .split(',')
        .map(|m| {
            Mode::parse(m.trim())
                .unwrap_or_else(|| panic!("MODES: `{m}` is not old, new, stream:N or batch:N"))
        })
        .collect();
    let (on_redis, on_cluster) = match target.as_str() {
        "redis" => (true, false),
        "cluster" => (false, true),
        _ => (true, true),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pg = testkit::Postgres::start();
    let redis = on_redis.then(testkit::Redis::start);
    let cluster = on_cluster.then(RedisCluster::start);
    let date = || {
        Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
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
        let p: Arc<dyn Provider> = p;

        // One shard holding every cell: the whole delta in one transfer.
        let mut cells = vec![];
        for r in shardcast_sync::config::DATA_REGIONS {
            for c in shardcast_sync::config::DATA_CATEGORIES {
                cells.push((c.to_string(), r.to_string()));
            }
        }
        let all = vec![ShardDef {
            id: "ALL".into(),
            cells: cells.clone(),
        }];
        // On the cluster: whole categories dealt over `cluster_shards`.
        let mut split: Vec<ShardDef> = (0..cluster_shards.max(1))
            .map(|i| ShardDef {
                id: format!("S{i}"),
                cells: vec![],
            })
            .collect();
        for (i, c) in shardcast_sync::config::DATA_CATEGORIES.iter().enumerate() {
            for r in shardcast_sync::config::DATA_REGIONS {
                let k = i % split.len();
                split[k].cells.push((c.to_string(), r.to_string()));
            }
        }
        split.retain(|s| !s.cells.is_empty());

        let procs = Procs {
            pg: pg.pid().expect("postmaster pid"),
            redis: redis
                .iter()
                .filter_map(testkit::Redis::pid)
                .chain(cluster.iter().flat_map(RedisCluster::pids))
                .collect(),
        };
        println!(
            "delta PostgreSQL → Redis / Redis Cluster ({}, scale {scale}, {n} rows, batch {batch_rows} rows, load {})",
            date(),
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
        );
        let mut ratios: Vec<(&str, Mode, f64)> = vec![];
        for round in 1..=rounds {
            let mut targets: Vec<Target> = vec![];
            if let Some(r) = &redis {
                targets.push(("redis", r.port(), false, vec![r.port()], r.url(), &all));
            }
            if let Some(c) = &cluster {
                targets.push((
                    "cluster",
                    c.ports()[0],
                    true,
                    c.ports(),
                    c.url(),
                    &split,
                ));
            }
            for (name, port, is_cluster, ports, url, shards) in targets {
              for &mode in &modes {
                let reader: Arc<dyn Provider> = if mode.stream {
                    p.clone()
                } else {
                    Arc::new(PerBatch(p.clone()))
                };
                ports.iter().for_each(|p| flush(*p));
                if is_cluster {
                    // FLUSHALL on a replica is refused; the masters' reached it.
                    std::thread::sleep(Duration::from_millis(200));
                }
                let cache: Arc<dyn ShardCache> = cache::open(&url, "bench").await.unwrap();
                let c0 = procs.now();
                let (rows, bytes, secs) =
                    copy(reader, cache.clone(), shards, before, batch_rows, mode.in_flight).await;
                let c1 = procs.now();
                let mut held = 0;
                for s in shards {
                    held += cache.size(&s.id).await.unwrap();
                }
                assert_eq!(held, n, "every row landed");
                let rows_s = rows as f64 / secs;
                let mean = bytes as f64 / rows.max(1) as f64;
                drop(cache);
                ports.iter().for_each(|p| flush(*p));
                std::thread::sleep(Duration::from_millis(200));
                let c2 = procs.now();
                let ceiling = redis_benchmark(port, is_cluster, 2_000_000, mean.round() as usize);
                let c3 = procs.now();
                let ratio = rows_s / ceiling;
                println!(
                    "round {round} {name:7} {}: {rows} rows in {secs:.2} s = {rows_s:.0} rows/s, {:.1} MB/s, mean item {mean:.0} B, {} shard(s) ({})",
                    mode.label(),
                    bytes as f64 / secs / 1e6,
                    shards.len(),
                    since(c0, c1)
                );
                println!(
                    "round {round} {name:7} redis-benchmark -P 16 -t set -d {:.0}{}: {ceiling:.0} SET/s ({}) → ratio {ratio:.2}",
                    mean,
                    if is_cluster { " --cluster" } else { "" },
                    since(c2, c3)
                );
                ratios.push((name, mode, ratio));
              }
            }
        }
        for name in ["redis", "cluster"] {
            for &mode in &modes {
                let r: Vec<String> = ratios
                    .iter()
                    .filter(|(n, m, _)| *n == name && *m == mode)
                    .map(|(_, _, r)| format!("{r:.2}"))
                    .collect();
                if !r.is_empty() {
                    println!("{name} ({}): ratios by round {}", mode.label(), r.join(", "));
                }
            }
        }
        println!(
            "done {} (load {})",
            date(),
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
        );
    });
}
