//! The shard manager's round at storefront scale: `Manager::round` over the
//! topology `benches/scale/gen.py` writes (10,000 shards by rule, 24 nodes
//! by default), against a loopback HTTP server that answers as sync does
//! (`GET /nodes`: every configured replica hosted and warm; `POST /epoch`)
//! and as a proxy does (`PUT /admin/table`: 200 with the versions). No
//! metadata store (the manager leads alone).
//!
//! Two rounds: `steady` (nothing changes: observe, plan, publish nothing
//! new) and `one_pin` (an operator pin moves one shard each round: a new
//! version goes to the proxy). Prints the bytes each publish sent.
//!
//! `cargo bench -p shardcast-forecaster --bench manager_round`; set
//! `SHARDCAST_SCALE_DIR` to a directory gen.py wrote (else one is
//! generated in a temporary directory: needs `python3`).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use shardcast_forecaster::engine::ForecastHandle;
use shardcast_forecaster::manager::Manager;
use shardcast_forecaster::store::{Retention, Store};
use shardcast_forecaster::time::Clock;

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

async fn answer(
    nodes: Arc<Vec<u8>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let ok = |b: Vec<u8>| {
        Ok(Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(b)))
            .unwrap())
    };
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/nodes") => ok(nodes.to_vec()),
        ("POST", "/epoch") => ok(body.to_vec()),
        // Every order is done as soon as it is taken.
        ("POST", "/orders") => {
            let o: shardmap::contract::OrderRequest = serde_json::from_slice(&body).unwrap();
            let id = ORDER_IDS.fetch_add(1, Relaxed) + 1;
            ORDERS
                .lock()
                .insert(id, (o.shard.clone(), o.node.clone(), o.epoch));
            ok(order(id, &o.shard, &o.node, o.epoch))
        }
        ("GET", p) if p.starts_with("/orders/") => {
            let id: u64 = p["/orders/".len()..].parse().unwrap_or(0);
            let Some((shard, node, epoch)) = ORDERS.lock().get(&id).cloned() else {
                return Ok(Response::builder()
                    .status(404)
                    .body(Full::new(Bytes::new()))
                    .unwrap());
            };
            ok(order(id, &shard, &node, epoch))
        }
        ("DELETE", _) => Ok(Response::builder()
            .status(202)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_vec())))
            .unwrap()),
        ("PUT", "/admin/table") => {
            TABLE_BYTES.fetch_add(body.len() as u64, Relaxed);
            TABLE_PUTS.fetch_add(1, Relaxed);
            let u: shardmap::TableUpdate = serde_json::from_slice(&body).unwrap();
            ok(serde_json::to_vec(&shardmap::UpdateAnswer {
                error: None,
                assignment_version: u.version,
                config_generation: 1,
            })
            .unwrap())
        }
        _ => Ok(Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .unwrap()),
    }
}

static ORDER_IDS: AtomicU64 = AtomicU64::new(0);
type Orders = std::collections::HashMap<u64, (String, String, u64)>;
static ORDERS: std::sync::LazyLock<parking_lot::Mutex<Orders>> =
    std::sync::LazyLock::new(Default::default);

/// An order as sync reports it when it is done.
fn order(id: u64, shard: &str, node: &str, epoch: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id, "shard": shard, "node": node, "priority": 1.0,
        "deadline_unix_ms": null, "state": "done", "submitted_unix_ms": 1,
        "started_unix_ms": 1, "finished_unix_ms": 2, "cursor": 100, "rows": 100,
        "bytes": 10000, "last_error": null, "report": null, "epoch": epoch
    }))
    .unwrap()
}

/// sync's `GET /nodes` for `topo`: every configured replica warm.
fn hosted(topo: &shardmap::Topology) -> Vec<u8> {
    let mut by_node: std::collections::BTreeMap<&str, Vec<serde_json::Value>> = topo
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), vec![]))
        .collect();
    for s in &topo.shards {
        for r in &s.replicas {
            by_node
                .entry(r.as_str())
                .or_default()
                .push(serde_json::json!({
                    "shard": s.id, "state": "warm", "cursor": 100, "rows": 100,
                    "last_sync_unix_ms": 1
                }));
        }
    }
    let m: serde_json::Map<String, serde_json::Value> = by_node
        .into_iter()
        .map(|(n, h)| (n.to_string(), serde_json::json!({ "hosted": h })))
        .collect();
    serde_json::to_vec(&m).unwrap()
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
    let nodes = Arc::new(hosted(&topo));
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let nodes = nodes.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |r| answer(nodes.clone(), r));
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
         topology = \"{}\"\nsync = \"http://{addr}\"\nproxies = [\"http://{addr}\"]\nprefix = \"bench\"\n",
        dir.join("topology.toml").display()
    );
    let cfg = shardcast_forecaster::config::Config::parse(&text, &dir, "bench.toml")
        .unwrap()
        .manager
        .unwrap();
    let store = Arc::new(Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        topo.shards.len() + 10,
    ));
    let m = Manager::new(cfg, store, ForecastHandle::new(), Clock::real()).unwrap();
    let mut conn = None;
    // The first rounds announce the epoch and push the first table.
    for _ in 0..2 {
        rt.block_on(m.round(&mut conn));
    }
    eprintln!(
        "{} shards, {} nodes: first publish {} bytes in {} PUT(s)",
        topo.shards.len(),
        topo.nodes.len(),
        TABLE_BYTES.swap(0, Relaxed),
        TABLE_PUTS.swap(0, Relaxed)
    );
    let mut g = c.benchmark_group(format!("manager_round_{}", topo.shards.len()));
    g.sample_size(20);
    g.bench_function("steady", |b| b.iter(|| rt.block_on(m.round(&mut conn))));
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
    g.bench_function("one_pin", |b| {
        b.iter(|| {
            flip = !flip;
            let to = if flip {
                others.clone()
            } else {
                shard.replicas.clone()
            };
            m.pin(&shard.id, Some(to)).unwrap();
            rt.block_on(m.round(&mut conn))
        })
    });
    g.finish();
    let puts = TABLE_PUTS.load(Relaxed).max(1);
    eprintln!(
        "one_pin: {} bytes per PUT /admin/table over {puts} PUTs",
        TABLE_BYTES.load(Relaxed) / puts
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
