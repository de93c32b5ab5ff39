//! Harness for the system tests: the whole shardcast stack as real
//! processes — `shardcast-proxy`, `shardcast-sync` (scheduler and nodes),
//! `shardcast-forecaster` — over a throwaway Redis and PostgreSQL (the sync
//! crate's testkit), on free loopback ports.
//!
//! It lives in its own crate because no single process crate owns a test
//! that spans all of them. The binaries are the workspace's own debug
//! builds (`cargo build --workspace`, which `cargo nextest run --workspace`
//! does); a missing one is a clear failure, never a skip.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use shardcast_sync::testkit::{
    eventually_async as eventually, free_port, workspace_root, Postgres, Redis,
};

/// A workspace binary next to this test's executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable under target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace` (or `cargo nextest run --workspace`) first",
        p.display()
    );
    p
}

/// A child process killed on drop; its output goes to a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, dir: &Path, program: &Path, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .current_dir(workspace_root())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        Proc {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    /// The process id, while it runs (for signals: SIGSTOP, SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panic (with the log) if the process already exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                panic!("{} exited ({st}):\n{}", self.name, self.log_text());
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET a JSON document; None on any failure.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let r = client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// GET a text document (a `/metrics` page): its body, a panic when the
/// request fails.
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"))
}

/// GET a document of the shared contract as `T` (with a bearer token when
/// given); None when the request fails or is refused, a panic when the
/// body is not that type.
pub async fn get_typed<T: serde::de::DeserializeOwned>(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Option<T> {
    let mut r = c.get(url).timeout(Duration::from_secs(2));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let body = r.bytes().await.ok()?;
    Some(
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{url}: not the shared contract type: {e}")),
    )
}

/// The demo topology's text with its nodes (`127.0.0.1:9101`…) on
/// `node_ports`, in order.
pub fn nodes_on_ports(topology: &str, node_ports: &[u16]) -> String {
    let mut t = topology.to_string();
    for (k, p) in node_ports.iter().enumerate() {
        t = t.replace(
            &format!("127.0.0.1:910{}", k + 1),
            &format!("127.0.0.1:{p}"),
        );
    }
    t
}

/// An assignment version as JSON (`{"epoch": E, "counter": N}`, or a bare
/// counter N for epoch 0) as `(epoch, counter)`, which orders as the
/// versions do: epoch first.
pub fn assignment_version(v: &serde_json::Value) -> Option<(u64, u64)> {
    if let Some(n) = v.as_u64() {
        return Some((0, n));
    }
    Some((v["epoch"].as_u64()?, v["counter"].as_u64()?))
}

/// (sku, category) pairs of the project's catalog.
/// The nodes a table (`/admin/table` JSON) lists for `shard`, in order;
/// empty when the shard is not in it.
pub fn replicas(table: &serde_json::Value, shard: &str) -> Vec<String> {
    table["shards"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == shard))
        .and_then(|s| s["replicas"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| r["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn catalog() -> Vec<(String, String)> {
    let path = workspace_root().join("data/online_retail/catalog.csv.gz");
    let f = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let r = BufReader::new(flate2::read::GzDecoder::new(f));
    let mut out = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line = line.expect("catalog line");
        if i == 0 {
            continue;
        }
        let mut it = line.split(',');
        let (Some(sku), Some(cat)) = (it.next(), it.next()) else {
            continue;
        };
        if sku.trim() != sku || sku.is_empty() {
            continue;
        }
        out.push((sku.to_string(), cat.to_string()));
    }
    out
}

/// Outcome counts of a load loop.
#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    pub ok: u64,
    /// 5xx answers and transport errors.
    pub failed: u64,
    pub hits: u64,
    pub misses: u64,
    pub by_node: std::collections::BTreeMap<String, u64>,
    pub errors: Vec<String>,
}

impl LoadStats {
    pub fn merge(&mut self, o: LoadStats) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.hits += o.hits;
        self.misses += o.misses;
        for (k, v) in o.by_node {
            *self.by_node.entry(k).or_default() += v;
        }
        self.errors.extend(o.errors.into_iter().take(5));
    }

    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }
}

/// GET `urls` round-robin with `workers` concurrent loops until `stop`.
pub async fn load(
    urls: Vec<String>,
    workers: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> LoadStats {
    let urls = std::sync::Arc::new(urls);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let urls = urls.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let mut st = LoadStats::default();
            let mut i = w * 7919;
            let cap = Instant::now() + Duration::from_secs(120);
            while !*stop.borrow() && Instant::now() < cap {
                let url = &urls[i % urls.len()];
                i += 1;
                match client.get(url).send().await {
                    Ok(r) => {
                        let s = r.status();
                        let cache = r
                            .headers()
                            .get("x-cache")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let node = r
                            .headers()
                            .get("x-shardcast-node")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("?")
                            .to_string();
                        let _ = r.bytes().await;
                        if s.is_server_error() {
                            st.failed += 1;
                            if st.errors.len() < 5 {
                                st.errors.push(format!("{url}: {s}"));
                            }
                        } else {
                            st.ok += 1;
                            *st.by_node.entry(node).or_default() += 1;
                            match cache.as_str() {
                                "hit" => st.hits += 1,
                                "miss" => st.misses += 1,
                                _ => {}
                            }
                        }
                    }
                    Err(e) => {
                        st.failed += 1;
                        if st.errors.len() < 5 {
                            st.errors.push(format!("{url}: {e}"));
                        }
                    }
                }
            }
            st
        }));
    }
    let mut total = LoadStats::default();
    for t in tasks {
        total.merge(t.await.expect("load task"));
    }
    total
}

/// A stand-in node that answers every request `200 ok` (`x-cache: hit`,
/// one request per connection) until dropped.
pub struct FakeNode {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeNode {
    pub async fn start() -> FakeNode {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tokio::io::AsyncWriteExt::write_all(
                        &mut s,
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-cache: hit\r\nconnection: close\r\n\r\nok\n",
                    )
                    .await;
                });
            }
        });
        FakeNode { addr, task }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of the sample `name` (with its labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// A topology file's text: replication factor 2, the `nodes` as
/// (name, address), and a shard `UK/<CATEGORY>` for each (category,
/// replicas) in `shards`.
pub fn topology_toml(nodes: &[(&str, &str)], shards: &[(&str, &[&str])]) -> String {
    let mut t = String::from("replication_factor = 2\n");
    for (name, address) in nodes {
        t.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        ));
    }
    for (category, replicas) in shards {
        let replicas: Vec<String> = replicas.iter().map(|r| format!("\"{r}\"")).collect();
        t.push_str(&format!(
            "[[shards]]\nid = \"UK/{category}\"\ncategories = [\"{category}\"]\nregions = [\"UK\"]\nreplicas = [{}]\n",
            replicas.join(", ")
        ));
    }
    t
}

/// A proxy's config text over `topology.toml` in its directory: traffic on
/// `http`, admin on `admin`, the `sections` as given (e.g. `[control]` or
/// `[health]`), one route `/inventory/{sku}` in region UK, and the catalog
/// `skus` as (sku, category).
pub fn proxy_toml(http: u16, admin: u16, sections: &str, skus: &[(&str, &str)]) -> String {
    let mut t = format!(
        "topology = \"topology.toml\"\n\
         [listen]\nhttp = [\"127.0.0.1:{http}\"]\nadmin = \"127.0.0.1:{admin}\"\n\
         {sections}\
         [[routes]]\nname = \"inventory\"\npath = \"/inventory/{{sku}}\"\ndefault_region = \"UK\"\n\
         [catalog.skus]\n"
    );
    for (sku, category) in skus {
        t.push_str(&format!("\"{sku}\" = \"{category}\"\n"));
    }
    t
}

/// `[control]` following the metadata store at `metadata` (none: the
/// manager pushes), polling every `poll_ms`.
pub fn control_section(metadata: Option<&str>, prefix: &str, poll_ms: u64) -> String {
    let metadata = metadata.map_or(String::new(), |m| format!("metadata = \"{m}\"\n"));
    format!("[control]\n{metadata}prefix = \"{prefix}\"\npoll_ms = {poll_ms}\n")
}
