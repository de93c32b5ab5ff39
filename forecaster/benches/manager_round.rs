//! The shard manager's round at storefront scale: `Manager::round` over the
//! topology `benches/scale/gen.py` writes (10,000 shards by rule, 24 nodes
//! by default), with the scale run's manager settings (`host_baseline =
//! false`: only hot shards are kept in the node caches, cooled ones are
//! evicted; memory priced at 0), against a loopback HTTP server that
//! answers as sync does and as a proxy does (`PUT /admin/table`: 200 with
//! the versions). No metadata store (the manager leads alone).
//!
//! The server keeps what each node holds: `GET /nodes` reports it, an
//! eviction (`DELETE /nodes/{node}/shards/{shard}`) removes a shard, and an
//! order (`POST /orders/batch`) is reported running at its first
//! `GET /orders?ids=` and done, its shard then held, at the second.
//!
//! Every shard has a forecast; 300 of them (every 33rd) are predicted over
//! their threshold ("hot"). The rounds measured:
//!
//! - `steady`: nothing changes (the forecast set, the hosted shards);
//! - `one_pin`: an operator pin moves one shard each round (a new version);
//! - `new_set`: the round after a new forecast set (every shard's forecast
//!   new, as after a model run; the hot 300 move to the next 300): every
//!   shard predicted again, the cooled shards' replicas evicted, the newly
//!   hot ones' refreshes ordered;
//! - `orders_running`: the round after it (the refreshes reported running);
//! - `orders_done`: the round after that (reported done, the shards held).
//!
//! Prints, per case, each round's p50 / p90 / max and the mean time of
//! each phase (`shardcast_manager_round_phase_seconds`), and the bytes each
//! publish sent.
//!
//! `cargo bench -p shardcast-forecaster --bench manager_round`; set
//! `SHARDCAST_SCALE_DIR` to a directory gen.py wrote (else one is
//! generated in a temporary directory: needs `python3`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use parking_lot::Mutex;
use shardcast_forecaster::engine::{
    ForecastHandle, ForecastSet, Horizon, HorizonForecast, ShardForecast, Source,
};
use shardcast_forecaster::manager::Manager;
use shardcast_forecaster::store::{Retention, Store};
use shardcast_forecaster::time::Clock;

// As the forecaster binary runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn scale_dir(tmp: &Path) -> PathBuf {
    if let Ok(d) = std::env::var("SHARDCAST_SCALE_DIR") {
        return PathBuf::from(d);
    }
    let gen = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/scale/gen.py");
    let st = std::process::Command::new("python3")
        .arg(gen)
        .args(["--skus", "1000", "--out"])
        .arg(tmp)
        .status()
        .expect("python3 runs benches/scale/gen.py");
    assert!(st.success(), "gen.py failed");
    tmp.to_path_buf()
}

/// Bytes of every `PUT /admin/table` body received.
static TABLE_BYTES: AtomicU64 = AtomicU64::new(0);
static TABLE_PUTS: AtomicU64 = AtomicU64::new(0);
static SUBMITTED: AtomicU64 = AtomicU64::new(0);
static EVICTED: AtomicU64 = AtomicU64::new(0);

/// One order as the server tracks it.
struct Tracked {
    shard: String,
    node: String,
    epoch: u64,
    submitted: u64,
    polls: u32,
    cancelled: bool,
}

/// What sync would hold: shards by node, and the orders.
#[derive(Default)]
struct Sync {
    hosted: BTreeMap<String, BTreeSet<String>>,
    /// `GET /nodes`, rendered again only after a change.
    body: Option<Bytes>,
    orders: HashMap<u64, Tracked>,
    next_id: u64,
}

impl Sync {
    fn nodes(&mut self) -> Bytes {
        if let Some(b) = &self.body {
            return b.clone();
        }
        let m: serde_json::Map<String, serde_json::Value> = self
            .hosted
            .iter()
            .map(|(n, shards)| {
                let h: Vec<serde_json::Value> = shards
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "shard": s, "state": "warm", "cursor": 100, "rows": 100,
                            "last_sync_unix_ms": 1
                        })
                    })
                    .collect();
                (n.clone(), serde_json::json!({ "hosted": h }))
            })
            .collect();
        let b = Bytes::from(serde_json::to_vec(&m).unwrap());
        self.body = Some(b.clone());
        b
    }

    fn host(&mut self, node: &str, shard: &str, on: bool) {
        let m = self.hosted.entry(node.to_string()).or_default();
        let changed = if on {
            m.insert(shard.to_string())
        } else {
            m.remove(shard)
        };
        if changed {
            self.body = None;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An order as sync reports it: queued when taken, running from its first
/// report, done at the second.
fn order(id: u64, t: &Tracked, state: &str) -> serde_json::Value {
    let started = (state != "queued").then_some(t.submitted);
    let finished = (state == "done").then(now_ms);
    serde_json::json!({
        "id": id, "shard": t.shard, "node": t.node, "priority": 1.0,
        "deadline_unix_ms": null, "state": state, "submitted_unix_ms": t.submitted,
        "started_unix_ms": started, "finished_unix_ms": finished, "cursor": 100, "rows": 100,
        "bytes": 10000, "last_error": null, "report": null, "epoch": t.epoch
    })
}

async fn answer(
    sync: Arc<Mutex<Sync>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = |code: u16, b: Bytes| {
        Ok(Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(b))
            .unwrap())
    };
    let json =
        |code: u16, v: serde_json::Value| status(code, serde_json::to_vec(&v).unwrap().into());
    let path = parts.uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (parts.method.as_str(), segments.as_slice()) {
        ("GET", ["nodes"]) => status(200, sync.lock().nodes()),
        ("POST", ["epoch"]) => status(200, body),
        ("POST", ["orders", "batch"]) => {
            let batch: shardmap::contract::OrderBatch = serde_json::from_slice(&body).unwrap();
            SUBMITTED.fetch_add(batch.orders.len() as u64, Relaxed);
            let mut s = sync.lock();
            let results: Vec<serde_json::Value> = batch
                .orders
                .into_iter()
                .map(|o| {
                    s.next_id += 1;
                    let id = s.next_id;
                    let t = Tracked {
                        shard: o.shard,
                        node: o.node,
                        epoch: o.epoch,
                        submitted: now_ms(),
                        polls: 0,
                        cancelled: false,
                    };
                    let v = serde_json::json!({ "status": 202, "order": order(id, &t, "queued") });
                    s.orders.insert(id, t);
                    v
                })
                .collect();
            json(200, serde_json::json!({ "results": results }))
        }
        ("GET", ["orders"]) => {
            let ids =
                shardcast_edge::url::query_param(parts.uri.query(), "ids").unwrap_or_default();
            let mut s = sync.lock();
            let mut out = vec![];
            let mut done = vec![];
            for id in ids.split(',').filter_map(|i| i.parse::<u64>().ok()) {
                let Some(t) = s.orders.get_mut(&id) else {
                    continue;
                };
                t.polls += 1;
                let state = match (t.cancelled, t.polls) {
                    (true, _) => "cancelled",
                    (false, 1) => "running",
                    _ => "done",
                };
                if state == "done" {
                    done.push((t.node.clone(), t.shard.clone()));
                }
                out.push(order(id, t, state));
            }
            for (node, shard) in done {
                s.host(&node, &shard, true);
            }
            json(200, serde_json::Value::Array(out))
        }
        ("DELETE", ["orders", id]) => {
            let mut s = sync.lock();
            match id
                .parse::<u64>()
                .ok()
                .and_then(|id| s.orders.get_mut(&id).map(|t| (id, t)))
            {
                Some((id, t)) => {
                    t.cancelled = true;
                    let v = order(id, t, "cancelled");
                    json(200, v)
                }
                None => status(404, Bytes::new()),
            }
        }
        ("DELETE", ["nodes", node, "shards", shard]) => {
            let node = shardcast_edge::url::decode_segment(node).unwrap_or_default();
            let shard = shardcast_edge::url::decode_segment(shard).unwrap_or_default();
            EVICTED.fetch_add(1, Relaxed);
            sync.lock().host(&node, &shard, false);
            json(
                202,
                serde_json::json!({ "evicting": { "node": node, "shard": shard } }),
            )
        }
        ("PUT", ["admin", "table"]) => {
            TABLE_BYTES.fetch_add(body.len() as u64, Relaxed);
            TABLE_PUTS.fetch_add(1, Relaxed);
            let u: shardmap::TableUpdate = serde_json::from_slice(&body).unwrap();
            json(
                200,
                serde_json::to_value(shardmap::UpdateAnswer {
                    error: None,
                    assignment_version: u.version,
                    config_generation: 1,
                })
                .unwrap(),
            )
        }
        _ => status(404, Bytes::new()),
    }
}

/// A forecast set in which the shards at `hot` are predicted at ten
/// times `threshold_rps` for the hour, the rest at a tenth of it. Every
/// shard's forecast is a new allocation, as after a model run.
fn forecast_set(ids: &[String], hot: &BTreeSet<usize>, threshold_rps: f64, n: i64) -> ForecastSet {
    let hour = |i: usize| {
        let rate = if hot.contains(&i) { 10.0 } else { 0.1 } * threshold_rps;
        let v = (rate * 3600.0) as f32;
        HorizonForecast {
            horizon: Horizon::Hour,
            levels: vec![0.1, 0.5, 0.9],
            values: vec![v * 0.5, v * 0.8, v],
            source: Source::Model {
                model: "bench".into(),
            },
        }
    };
    let shards: BTreeMap<String, Arc<ShardForecast>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.clone(),
                Arc::new(ShardForecast {
                    shard: id.clone(),
                    history_hours: 24,
                    horizons: vec![hour(i)],
                }),
            )
        })
        .collect();
    ForecastSet {
        generated_at_unix_ms: n,
        shards: Arc::new(shards),
        ..ForecastSet::default()
    }
}

/// The hot shards of set `k`: every 33rd, starting at `k mod 33`.
fn hot(n: usize, k: usize) -> BTreeSet<usize> {
    (k % 33..n).step_by(33).collect()
}

/// Each phase's total seconds and the rounds counted, from `/metrics`.
fn phase_sums(m: &Manager) -> (BTreeMap<String, f64>, f64) {
    let mut text = String::new();
    shardcast_forecaster::manager::metrics::render(&mut text, m);
    let mut sums = BTreeMap::new();
    let mut count = 0.0;
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("shardcast_manager_round_phase_seconds_") else {
            continue;
        };
        let Some((series, v)) = rest.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = v.parse().unwrap_or(0.0);
        let phase = series
            .split("phase=\"")
            .nth(1)
            .and_then(|p| p.split('"').next())
            .unwrap_or("");
        if series.starts_with("sum") {
            sums.insert(phase.to_string(), v);
        } else if series.starts_with("count") && phase == "plan" {
            count = v;
        }
    }
    (sums, count)
}

/// The rounds of one case, and the phases' sums when it began.
struct Case {
    name: &'static str,
    rounds: Vec<Duration>,
    phases: BTreeMap<String, f64>,
    /// Phase sums and round count when the case's rounds were last entered.
    mark: Option<(BTreeMap<String, f64>, f64)>,
    counted: f64,
}

impl Case {
    fn new(name: &'static str) -> Case {
        Case {
            name,
            rounds: vec![],
            phases: BTreeMap::new(),
            mark: None,
            counted: 0.0,
        }
    }

    /// One round of this case.
    fn round(
        &mut self,
        m: &Manager,
        rt: &tokio::runtime::Runtime,
        conn: &mut Option<shardcast_forecaster::manager::metadata::Conn>,
    ) -> Duration {
        let before = phase_sums(m);
        let t0 = Instant::now();
        rt.block_on(m.round(conn));
        let d = t0.elapsed();
        let after = phase_sums(m);
        for (p, v) in &after.0 {
            *self.phases.entry(p.clone()).or_default() +=
                v - before.0.get(p).copied().unwrap_or(0.0);
        }
        self.counted += after.1 - before.1;
        self.mark = None;
        self.rounds.push(d);
        d
    }

    fn report(&self) {
        let mut r = self.rounds.clone();
        r.sort();
        if r.is_empty() {
            return;
        }
        let at = |q: f64| r[((r.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        let n = self.counted.max(1.0);
        let phases: Vec<String> = self
            .phases
            .iter()
            .filter(|(_, v)| **v / n >= 0.00005)
            .map(|(p, v)| format!("{p}={:.2}", v / n * 1e3))
            .collect();
        eprintln!(
            "{}: {} rounds, p50 {:.1} / p90 {:.1} / max {:.1} ms; phase means (ms): {}",
            self.name,
            r.len(),
            at(0.5),
            at(0.9),
            at(1.0),
            phases.join(" ")
        );
    }
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scale_dir(tmp.path());
    let topo = shardmap::Topology::load(&dir.join("topology.toml")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut ids: Vec<String> = topo.shards.iter().map(|s| s.id.clone()).collect();
    ids.sort();
    ids.dedup();
    // What the nodes hold at the start: the replicas of the first set's
    // hot shards (as a deployment that ran with it).
    let first_hot = hot(ids.len(), 0);
    let hot_ids: BTreeSet<&str> = first_hot.iter().map(|&i| ids[i].as_str()).collect();
    let sync = Arc::new(Mutex::new(Sync::default()));
    {
        let mut s = sync.lock();
        for n in &topo.nodes {
            s.hosted.entry(n.name.clone()).or_default();
        }
        for sh in &topo.shards {
            if hot_ids.contains(sh.id.as_str()) {
                for r in &sh.replicas {
                    s.host(r, &sh.id, true);
                }
            }
        }
    }
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sync = sync.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let sync = sync.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |r| answer(sync.clone(), r));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    });
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[model]\nhourly = \"h\"\ndaily = \"d\"\n[manager]\n\
         topology = \"{}\"\nsync = \"http://{addr}\"\nproxies = [\"http://{addr}\"]\nprefix = \"bench\"\n\
         host_baseline = false\nmemory_cost_ms_per_mb_hour = 0.0\n",
        dir.join("topology.toml").display()
    );
    let cfg = shardcast_forecaster::config::Config::parse(&text, &dir, "bench.toml")
        .unwrap()
        .manager
        .unwrap();
    // The manager's default threshold: half the median node capacity.
    let threshold = {
        let mut c: Vec<f64> = topo.nodes.iter().map(|n| n.capacity).collect();
        c.sort_by(f64::total_cmp);
        c[c.len() / 2] * 0.5
    };
    let store = Arc::new(Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        topo.shards.len() + 10,
    ));
    let forecasts = ForecastHandle::new();
    let mut set_no = 0usize;
    forecasts.publish(Arc::new(forecast_set(&ids, &first_hot, threshold, 1)));
    let m = Manager::new(cfg, store, forecasts.clone(), Clock::real()).unwrap();
    let mut conn = None;
    // Settle: the first table, the hot shards' extra replicas (two a
    // round, the churn budget: predicted at ten times the threshold, a hot
    // shard wants several) and their orders, until three rounds in a row
    // change nothing.
    let t0 = Instant::now();
    let (mut quiet, mut rounds) = (0, 0);
    while quiet < 3 && rounds < 1500 {
        let (puts, subs, evs) = (
            TABLE_PUTS.load(Relaxed),
            SUBMITTED.load(Relaxed),
            EVICTED.load(Relaxed),
        );
        rt.block_on(m.round(&mut conn));
        rounds += 1;
        let same = puts == TABLE_PUTS.load(Relaxed)
            && subs == SUBMITTED.load(Relaxed)
            && evs == EVICTED.load(Relaxed);
        quiet = if same { quiet + 1 } else { 0 };
    }
    eprintln!(
        "{} shards, {} nodes: settled in {rounds} rounds ({:.1} s); {} bytes in {} PUT(s), {} orders, {} evictions",
        topo.shards.len(),
        topo.nodes.len(),
        t0.elapsed().as_secs_f64(),
        TABLE_BYTES.swap(0, Relaxed),
        TABLE_PUTS.swap(0, Relaxed),
        SUBMITTED.load(Relaxed),
        EVICTED.load(Relaxed),
    );
    let mut g = c.benchmark_group(format!("manager_round_{}", topo.shards.len()));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    let mut steady = Case::new("steady");
    g.bench_function("steady", |b| {
        b.iter_custom(|n| (0..n).map(|_| steady.round(&m, &rt, &mut conn)).sum())
    });
    let shard = topo.shards[topo.shards.len() / 2].clone();
    let others: Vec<String> = topo
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| !shard.replicas.contains(n))
        .take(2)
        .collect();
    let mut flip = false;
    TABLE_BYTES.store(0, Relaxed);
    TABLE_PUTS.store(0, Relaxed);
    let mut one_pin = Case::new("one_pin");
    g.bench_function("one_pin", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    flip = !flip;
                    let to = if flip {
                        others.clone()
                    } else {
                        shard.replicas.clone()
                    };
                    m.pin(&shard.id, Some(to)).unwrap();
                    one_pin.round(&m, &rt, &mut conn)
                })
                .sum()
        })
    });
    let puts = TABLE_PUTS.load(Relaxed).max(1);
    let pin_bytes = TABLE_BYTES.load(Relaxed) / puts;
    m.pin(&shard.id, None).unwrap();
    // A new forecast set, and the two rounds after it; the case measured
    // is one of the three, the others run untimed.
    let mut new_set = Case::new("new_set");
    let mut running = Case::new("orders_running");
    let mut done = Case::new("orders_done");
    let (subs0, evs0) = (SUBMITTED.load(Relaxed), EVICTED.load(Relaxed));
    let mut cycles = 0u64;
    let mut cycle = |which: usize,
                     new_set: &mut Case,
                     running: &mut Case,
                     done: &mut Case,
                     conn: &mut Option<_>| {
        set_no += 1;
        cycles += 1;
        forecasts.publish(Arc::new(forecast_set(
            &ids,
            &hot(ids.len(), set_no),
            threshold,
            1 + set_no as i64,
        )));
        let a = new_set.round(&m, &rt, conn);
        let b = running.round(&m, &rt, conn);
        let c = done.round(&m, &rt, conn);
        [a, b, c][which]
    };
    for (which, name) in ["new_set", "orders_running", "orders_done"]
        .into_iter()
        .enumerate()
    {
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| cycle(which, &mut new_set, &mut running, &mut done, &mut conn))
                    .sum()
            })
        });
    }
    g.finish();
    for case in [&steady, &one_pin, &new_set, &running, &done] {
        case.report();
    }
    eprintln!(
        "one_pin: {pin_bytes} bytes per PUT /admin/table over {puts} PUTs; \
         per new forecast set: {:.0} orders, {:.0} evictions over {cycles} sets",
        (SUBMITTED.load(Relaxed) - subs0) as f64 / cycles.max(1) as f64,
        (EVICTED.load(Relaxed) - evs0) as f64 / cycles.max(1) as f64,
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
