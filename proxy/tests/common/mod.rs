//! Test harness: real upstream nodes on port 0, the real `shardcast-proxy`
//! binary started as a process, and `eventually`-style waits.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod store;

/// Poll `f` until it returns Some, or panic after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port, outside the range outgoing connections use.
pub fn free_port() -> u16 {
    shardcast_sync::testkit::free_port()
}

pub const OK: u8 = 0;
pub const FAIL_503: u8 = 1;
/// Read the request, then drop the connection without answering (a node
/// that dies mid-request).
pub const RESET: u8 = 2;

/// A stand-in storefront node: answers `GET /inventory/{sku}` with its own
/// name, `/health` with 200, and counts what it served.
pub struct TestNode {
    pub name: String,
    pub addr: SocketAddr,
    pub mode: Arc<AtomicU8>,
    pub hits: Arc<AtomicU64>,
    pub paths: Arc<parking_lot::Mutex<Vec<String>>>,
    task: Option<JoinHandle<()>>,
    conns: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
}

impl TestNode {
    pub async fn start(name: &str) -> TestNode {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> TestNode {
        let mut n = TestNode {
            name: name.to_string(),
            addr,
            mode: Arc::new(AtomicU8::new(OK)),
            hits: Arc::new(AtomicU64::new(0)),
            paths: Arc::new(parking_lot::Mutex::new(vec![])),
            task: None,
            conns: Arc::new(parking_lot::Mutex::new(vec![])),
        };
        n.listen(addr).await;
        n
    }

    async fn listen(&mut self, addr: SocketAddr) {
        let l = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.addr = l.local_addr().unwrap();
        let (name, mode, hits, paths) = (
            self.name.clone(),
            self.mode.clone(),
            self.hits.clone(),
            self.paths.clone(),
        );
        let conns = self.conns.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (name, mode, hits, paths) =
                    (name.clone(), mode.clone(), hits.clone(), paths.clone());
                let handle = tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (name, mode, hits, paths) =
                            (name.clone(), mode.clone(), hits.clone(), paths.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            if path == "/health" {
                                // A node that drops requests (RESET) still passes
                                // its health check: only the proxy's own
                                // handling of the dropped request is seen, not
                                // an ejection racing the first request.
                                let m = mode.load(SeqCst);
                                let code = if m == OK || m == RESET { 200 } else { 503 };
                                return Ok::<_, std::io::Error>(
                                    http::Response::builder()
                                        .status(code)
                                        .body(Full::new(Bytes::from_static(b"ok")))
                                        .unwrap(),
                                );
                            }
                            hits.fetch_add(1, SeqCst);
                            paths.lock().push(req.uri().to_string());
                            if path.contains("slow") {
                                tokio::time::sleep(Duration::from_millis(1500)).await;
                            }
                            if mode.load(SeqCst) == RESET {
                                return Err(std::io::Error::other("dropped without answering"));
                            }
                            if mode.load(SeqCst) == FAIL_503 {
                                return Ok(http::Response::builder()
                                    .status(503)
                                    .body(Full::new(Bytes::from_static(b"down")))
                                    .unwrap());
                            }
                            let body = format!("{{\"node\":\"{name}\",\"path\":\"{path}\"}}");
                            Ok(http::Response::builder()
                                .header("x-node", name.as_str())
                                .header("x-cache", if path.ends_with('0') { "miss" } else { "hit" })
                                .body(Full::new(Bytes::from(body)))
                                .unwrap())
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
                let mut c = conns.lock();
                c.retain(|c| !c.is_finished());
                c.push(handle);
            }
        }));
    }

    /// Kill the node: stop listening and drop every open connection.
    pub fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }

    /// Start again on the same address.
    pub async fn restart(&mut self) {
        let addr = self.addr;
        self.listen(addr).await;
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three nodes, `n1` to `n3`: the shape most proxy tests route over.
pub async fn three_nodes() -> Vec<TestNode> {
    vec![
        TestNode::start("n1").await,
        TestNode::start("n2").await,
        TestNode::start("n3").await,
    ]
}

/// A running `shardcast-proxy` process.
pub struct Proxy {
    pub child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
}

#[derive(Clone)]
pub struct ProxyOpts {
    pub extra: String,
    pub shards: String,
    pub catalog: String,
    pub routes: String,
    pub https: Option<(u16, String, String)>,
}

pub fn nodes_toml(nodes: &[&TestNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\ncapacity = 100\n",
                n.name, n.addr
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub const DEFAULT_ROUTES: &str = r#"
[[routes]]
name = "inventory"
path = "/inventory/{sku}"
region_query = "region"
default_region = "UK"
"#;

impl Proxy {
    pub fn config_text(http: u16, admin: u16, nodes: &[&TestNode], o: &ProxyOpts) -> String {
        let https = match &o.https {
            Some((p, cert, key)) => format!(
                "[[listen.https]]\naddr = \"127.0.0.1:{p}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n"
            ),
            None => String::new(),
        };
        format!(
            "response_headers = true\n{extra}\n[listen]\nhttp = [\"127.0.0.1:{http}\"]\nadmin = \"127.0.0.1:{admin}\"\ngrace_period_s = 2\n{https}\n{nodes}\n{shards}\n{routes}\n{catalog}\n",
            extra = o.extra,
            nodes = nodes_toml(nodes),
            shards = o.shards,
            routes = o.routes,
            catalog = o.catalog,
        )
    }

    pub async fn start(nodes: &[&TestNode], o: ProxyOpts) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let (hp, ap) = (free_port(), free_port());
        let config = dir.path().join("proxy.toml");
        std::fs::write(&config, Self::config_text(hp, ap, nodes, &o)).unwrap();
        Self::start_with(dir, config, hp, ap).await
    }

    pub async fn start_with(dir: tempfile::TempDir, config: PathBuf, hp: u16, ap: u16) -> Proxy {
        Self::start_with_token(dir, config, hp, ap, None).await
    }

    /// [`Proxy::start_with`] for a config with `admin_token`: the readiness
    /// poll sends it.
    pub async fn start_with_token(
        dir: tempfile::TempDir,
        config: PathBuf,
        hp: u16,
        ap: u16,
        token: Option<&str>,
    ) -> Proxy {
        let log = dir.path().join("proxy.log");
        let child = Command::new(env!("CARGO_BIN_EXE_shardcast-proxy"))
            .arg("-c")
            .arg(&config)
            .arg("--upgrade-sock")
            .arg(dir.path().join("upgrade.sock"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("spawn shardcast-proxy");
        let p = Proxy {
            child,
            http: format!("127.0.0.1:{hp}").parse().unwrap(),
            admin: format!("127.0.0.1:{ap}").parse().unwrap(),
            dir,
            config,
            log,
        };
        let client = reqwest::Client::new();
        let url = p.admin_url("/ready");
        let http = format!("http://{}/", p.http);
        let logp = p.log.clone();
        let auth = token.map(|t| format!("Bearer {t}"));
        eventually(
            Duration::from_secs(20),
            &format!("proxy ready (log: {})", logp.display()),
            || {
                let (client, url, http) = (client.clone(), url.clone(), http.clone());
                let auth = auth.clone();
                async move {
                    let mut get = client.get(&url);
                    if let Some(a) = auth {
                        get = get.header("authorization", a);
                    }
                    let ready = get.send().await.ok()?.status().is_success();
                    // the data listener too
                    let _ = client.get(&http).send().await.ok()?;
                    ready.then_some(())
                }
            },
        )
        .await;
        p
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn table(&self) -> serde_json::Value {
        reqwest::get(self.admin_url("/admin/table"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The version of the manager's assignment in the table (moved only
    /// by applied table updates).
    pub async fn assignment_version(&self) -> shardmap::AssignmentVersion {
        serde_json::from_value(self.table().await["assignment_version"].clone()).unwrap()
    }

    /// The config generation (moved only by applied reloads).
    pub async fn config_generation(&self) -> u64 {
        self.table().await["config_generation"].as_u64().unwrap()
    }

    /// Replica node names of `shard` in the current table.
    pub async fn replicas(&self, shard: &str) -> Vec<String> {
        let t = self.table().await;
        t["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == shard)
            .map(|s| {
                s["replicas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["node"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn metric(&self, name_and_labels: &str) -> Option<f64> {
        let text = reqwest::get(self.admin_url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 14 skus in 2 categories, and a shard per (category, region).
pub fn small_catalog() -> (String, String) {
    let mut cat = String::from("[catalog.skus]\n");
    for i in 0..100 {
        cat += &format!("\"A{i}\" = \"ALPHA\"\n\"B{i}\" = \"BETA\"\n");
    }
    let shards = r#"
[[shards]]
id = "UK/ALPHA"
categories = ["ALPHA"]
regions = ["UK"]
[[shards]]
id = "UK/BETA"
categories = ["BETA"]
regions = ["UK"]
[[shards]]
id = "INTL/ALPHA"
categories = ["ALPHA"]
regions = ["INTL"]
[[shards]]
id = "INTL/BETA"
categories = ["BETA"]
regions = ["INTL"]
"#
    .to_string();
    (cat, shards)
}

pub fn opts() -> ProxyOpts {
    let (catalog, shards) = small_catalog();
    ProxyOpts {
        extra: "replication_factor = 2\n[health]\ninterval_ms = 200\nejection_ms = 500\neject_after_failures = 2\n[telemetry]\ninterval_s = 1\n".into(),
        shards,
        catalog,
        routes: DEFAULT_ROUTES.into(),
        https: None,
    }
}

pub fn count_by<'a>(it: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for k in it {
        *m.entry(k.to_string()).or_insert(0) += 1;
    }
    m
}

pub fn read_file(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Run `shardcast-proxy -t -c config` (bounded in time): (exit code, stdout).
pub fn check_config(config: &Path) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast-proxy"))
        .arg("-t")
        .arg("-c")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shardcast-proxy -t");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut o, &mut out);
            }
            return (status.code().unwrap_or(-1), out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shardcast-proxy -t still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A self-signed certificate for `localhost`: (cert path, key path, DER).
pub fn self_signed(dir: &std::path::Path, tag: &str) -> (String, String, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join(format!("{tag}.crt"));
    let key = dir.join(format!("{tag}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (
        cert.display().to_string(),
        key.display().to_string(),
        ck.cert.der().to_vec(),
    )
}

#[derive(Debug)]
pub struct AcceptAny;
impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
