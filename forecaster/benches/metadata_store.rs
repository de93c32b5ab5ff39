//! Bytes the manager writes into the metadata store per new table version
//! at storefront scale: a 10,000-shard table (two replicas each over 24
//! nodes), 5 shards moving per version, published by
//! `manager::metadata::publish_table_with` into a real `redis-server`
//! started on a loopback port. Side by side in one run:
//!
//! - `full every version`: snapshot interval 1 — the full table beside
//!   every delta, what the store received before the delta log;
//! - `delta log`: the default policy (a snapshot every
//!   `SNAPSHOT_EVERY` versions, the log of the last `LOG_LEN` deltas).
//!
//! Bytes are Redis's own count of what it received
//! (`INFO stats` `total_net_input_bytes`), so they include the protocol.
//! Also prints the time per publish and what a follower one version
//! behind reads (the version, the last delta).
//!
//! `cargo bench -p shardcast-forecaster --bench metadata_store`
//! (`SHARDS`, `CHANGED`, `VERSIONS` override the sizes).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardcast_forecaster::manager::metadata::{self, Conn, Delta, Policy, Published};
use shardmap::contract::MetadataKeys;
use shardmap::control::ReplicaAssignment;
use shardmap::{AssignmentVersion, ReplicaState, TableUpdate};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Redis(Child, u16);

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child, port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `INFO stats`' byte counters, and how many bytes its own answer was on
/// the wire (counted in the next read of `total_net_output_bytes`).
async fn net_bytes(conn: &mut Conn) -> (u64, u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .unwrap();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap()
    };
    // A bulk string: `$<len>\r\n<data>\r\n`.
    let answer = info.len() + info.len().to_string().len() + 5;
    (
        field("total_net_input_bytes"),
        field("total_net_output_bytes"),
        answer as u64,
    )
}

/// `INFO stats` as the client sends it: counted in the input of the
/// `INFO` that reads the counter.
const INFO_COMMAND: u64 = "*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n".len() as u64;

fn table(shards: usize, nodes: usize, counter: u64, moved: &[usize], round: usize) -> TableUpdate {
    let mut m = BTreeMap::new();
    for i in 0..shards {
        // A moved shard's replicas shift by the round; the rest stay.
        let shift = if moved.contains(&i) { round } else { 0 };
        let reps = (0..2)
            .map(|r| ReplicaAssignment {
                node: format!("node-{:02}", (i + r * 7 + shift) % nodes),
                state: ReplicaState::Serving,
            })
            .collect();
        m.insert(format!("REGION{:02}/CATEGORY{:05}", i % 12, i), reps);
    }
    TableUpdate::full(AssignmentVersion::new(1, counter), m)
}

struct Run {
    name: &'static str,
    written_per_version: f64,
    snapshots: usize,
    publish_ms: f64,
    follower_read_per_version: f64,
}

async fn run(name: &'static str, policy: Policy, versions: usize) -> Run {
    let (shards, changed) = (env("SHARDS", 10_000), env("CHANGED", 5));
    let redis = Redis::start();
    let url = format!("redis://127.0.0.1:{}", redis.1);
    let mut conn = metadata::connect(&url).await.unwrap();
    let keys = MetadataKeys::new("bench");
    // Version 1: the first full table (not counted).
    let mut prev = table(shards, 24, 1, &[], 0);
    let r = metadata::publish_table_with(&mut conn, &keys, &prev, None, "bench", policy)
        .await
        .unwrap();
    assert_eq!(r.0, Published::Written);
    let mut written = 0u64;
    let mut snapshots = 0;
    let mut publishing = Duration::ZERO;
    let mut follower = 0u64;
    for round in 1..=versions {
        let moved: Vec<usize> = (0..changed)
            .map(|k| (round * 37 + k * 1999) % shards)
            .collect();
        let next = table(shards, 24, 1 + round as u64, &moved, round);
        let (in0, _, _) = net_bytes(&mut conn).await;
        let started = Instant::now();
        let delta = next.delta_from(&prev);
        let body = serde_json::to_vec(&delta).unwrap();
        let d = Delta {
            base: prev.version,
            body: &body,
        };
        let (p, snap) =
            metadata::publish_table_with(&mut conn, &keys, &next, Some(d), "bench", policy)
                .await
                .unwrap();
        publishing += started.elapsed();
        assert_eq!(p, Published::Written);
        snapshots += usize::from(snap);
        // A follower one version behind: the version, then the last delta.
        let (in1, out0, info_answer) = net_bytes(&mut conn).await;
        written += in1 - in0 - INFO_COMMAND;
        let _: Option<Vec<u8>> = redis::cmd("GET")
            .arg(keys.version())
            .query_async(&mut conn)
            .await
            .unwrap();
        let last: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(keys.table_log())
            .arg(-1)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(last.len(), 1);
        let (_, out1, _) = net_bytes(&mut conn).await;
        follower += out1 - out0 - info_answer;
        prev = next;
    }
    let stored = metadata::read_table(&mut conn, &keys)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored, prev,
        "the store's snapshot and log make the last table"
    );
    Run {
        name,
        written_per_version: written as f64 / versions as f64,
        snapshots,
        publish_ms: publishing.as_secs_f64() * 1e3 / versions as f64,
        follower_read_per_version: follower as f64 / versions as f64,
    }
}

fn main() {
    let versions = env("VERSIONS", 256);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = rt.block_on(run(
        "full every version",
        Policy {
            snapshot_every: 1,
            log_len: 1,
        },
        versions,
    ));
    let after = rt.block_on(run("delta log", Policy::default(), versions));
    println!(
        "{} shards, {} changed per version, {versions} versions",
        env("SHARDS", 10_000),
        env("CHANGED", 5)
    );
    println!("| policy | bytes written / version | snapshots | publish ms / version | follower read bytes / version |");
    println!("|---|---|---|---|---|");
    for r in [&before, &after] {
        println!(
            "| {} | {:.0} | {} | {:.2} | {:.0} |",
            r.name, r.written_per_version, r.snapshots, r.publish_ms, r.follower_read_per_version
        );
    }
    println!(
        "written: delta log / full every version = {:.4}",
        after.written_per_version / before.written_per_version
    );
}
