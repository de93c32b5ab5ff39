//! The forecaster's listener faces the network with deadlines and bounds,
//! its operator routes check bearer tokens the RFC 6750 way, and JSON
//! bodies must be objects. The service over real sockets on port 0, with
//! small deadlines or small bounds from its config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shardcast_edge::testkit::{self, metric};
use shardcast_forecaster::config::Config;
use shardcast_forecaster::service::Service;

const DEADLINE: Duration = Duration::from_millis(300);

fn root() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A forecaster without history or feeds (it starts at once), `extra`
/// appended to its config.
async fn start(dir: &Path, extra: &str) -> Service {
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[model]\nhourly = \"{root}/forecaster/models/shardcast_hourly.json\"\ndaily = \"{root}/forecaster/models/shardcast_daily.json\"\n[planner]\ncycle_s = 0.2\n{extra}",
        root = root().display()
    );
    let cfg = Config::parse(&text, dir, "edge.toml").expect("config");
    Service::start(cfg).await.expect("start")
}

async fn ready(addr: SocketAddr) {
    let t = Instant::now();
    loop {
        if let Ok((200, _)) = testkit::try_request(addr, "GET", "/ready", &[], b"").await {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_closes_silent_slow_and_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(
        dir.path(),
        "[timeouts]\nclient_header_ms = 300\nclient_body_ms = 300\nclient_keepalive_ms = 300\nclient_write_ms = 300\n",
    )
    .await;
    ready(svc.addr).await;
    testkit::assert_deadlines(svc.addr, DEADLINE, "/live").await;
    let (_, m) = testkit::request(svc.addr, "GET", "/metrics", &[], b"").await;
    // Strict Prometheus text: HELP/TYPE once per family, before its samples.
    let body = m.split_once("\r\n\r\n").map_or(&*m, |(_, b)| b);
    shardcast_edge::metrics::parse_strict(body).unwrap_or_else(|e| panic!("{e}\n{m}"));
    let closed = |stage: &str| {
        let name = format!(
            "shardcast_forecaster_connections_closed_total{{listener=\"api\",stage=\"{stage}\"}}"
        );
        metric(&m, &name).unwrap_or_else(|| panic!("no {name} in:\n{m}"))
    };
    assert!(closed("idle") >= 2.0, "{m}");
    assert!(closed("header") >= 1.0, "{m}");
    assert!(metric(
        &m,
        "shardcast_forecaster_connections_open{listener=\"api\"}"
    )
    .is_some());
    assert!(metric(
        &m,
        "shardcast_forecaster_accept_errors_total{listener=\"api\"}"
    )
    .is_some());
    // /ready waited for the supervised loops, which /metrics shows.
    for t in ["feeds", "inference"] {
        let name = format!("shardcast_forecaster_task_running{{task=\"{t}\"}}");
        assert_eq!(metric(&m, &name), Some(1.0), "{name}:\n{m}");
    }
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_connections_past_the_per_client_bound() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(
        dir.path(),
        "[limits]\nmax_connections = 16\nmax_connections_per_client = 3\n",
    )
    .await;
    ready(svc.addr).await;
    testkit::assert_bound(svc.addr, 3, "/live").await;
    let name = "shardcast_forecaster_connections_refused_total{listener=\"api\",reason=\"client\"}";
    let t = Instant::now();
    let m = loop {
        // The held connections close as the server sees them go.
        if let Ok((200, m)) = testkit::try_request(svc.addr, "GET", "/metrics", &[], b"").await {
            break m;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no room again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // (a /metrics poll above refused while the held connections closed
    // counts too)
    assert!(metric(&m, name).is_some_and(|v| v >= 1.0), "{m}");
    assert_eq!(
        metric(
            &m,
            "shardcast_forecaster_connections_refused_total{listener=\"api\",reason=\"listener\"}"
        ),
        Some(0.0)
    );
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_routes_take_any_bearer_case_and_challenge_and_bodies_must_be_objects() {
    let dir = tempfile::tempdir().unwrap();
    // The manager plans with the shipped demo topology.
    let svc = start(
        dir.path(),
        &format!(
            "[manager]\ntopology = \"{}\"\nsync = \"http://127.0.0.1:1\"\ndry_run = true\nadmin_token = \"s3cret\"\n",
            root().join("conf/topology.toml").display()
        ),
    )
    .await;
    let a = svc.addr;
    ready(a).await;
    let (st, _) =
        testkit::request(a, "GET", "/manager", &["Authorization: bearer s3cret"], b"").await;
    assert_eq!(st, 200, "lower-case scheme");
    let (st, _) =
        testkit::request(a, "GET", "/manager", &["Authorization: Bearer s3cret"], b"").await;
    assert_eq!(st, 200);
    for auth in [
        &[][..],
        &["Authorization: Bearer s3cre"][..],
        &["Authorization: Basic s3cret"][..],
    ] {
        let (st, answer) = testkit::request(a, "GET", "/manager", auth, b"").await;
        assert_eq!(st, 401, "{auth:?}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nwww-authenticate: bearer realm=\"shardcast\"\r\n"),
            "{answer}"
        );
    }
    // serde alone would take `[true]` for `{"enabled": true}`.
    let tok = "Authorization: Bearer s3cret";
    let (st, answer) = testkit::request(a, "PUT", "/manager/dry-run", &[tok], b"[true]").await;
    assert_eq!(st, 400, "{answer}");
    assert!(answer.contains("JSON object"), "{answer}");
    let (st, answer) = testkit::request(
        a,
        "PUT",
        "/manager/dry-run",
        &[tok],
        br#"{"enabled": true}"#,
    )
    .await;
    assert_eq!(st, 200, "{answer}");
    let (st, answer) = testkit::request(a, "POST", "/ingest", &[], b"[1, \"p\", 1]").await;
    assert_eq!(st, 400, "{answer}");
    assert!(answer.contains("JSON object"), "{answer}");
    let (_, m) = testkit::request(a, "GET", "/metrics", &[], b"").await;
    assert_eq!(
        metric(&m, "shardcast_forecaster_task_running{task=\"manager\"}"),
        Some(1.0),
        "{m}"
    );
    svc.shutdown().await;
}
