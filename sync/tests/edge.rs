//! Every listener of the sync processes faces the network with deadlines
//! and bounds: the control API and an in-process node of `shardcast-sync
//! serve`, and the standalone `shardcast-sync node`. Real processes on port
//! 0, configured through their config files: one with small deadlines, one
//! with small per-client bounds (so each test times one thing).

use std::net::SocketAddr;
use std::time::Duration;

use shardcast_edge::testkit::{self, metric};
use shardcast_sync::testkit::{eventually_async, spawn_listening, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_shardcast-sync");

/// The deadlines of the "fast" processes.
const DEADLINE: Duration = Duration::from_millis(300);
const FAST: &str = "[timeouts]\nclient_header_ms = 300\nclient_body_ms = 300\nclient_keepalive_ms = 300\nclient_write_ms = 300\n";

fn spawn(args: &[&str], want: usize) -> (Proc, Vec<(String, SocketAddr)>) {
    spawn_listening(BIN, args, want)
}

/// `shardcast-sync serve` with one in-process node and an empty SQLite
/// provider, `extra` appended to its config: (process, control, node).
fn serve(dir: &std::path::Path, extra: &str) -> (Proc, SocketAddr, SocketAddr) {
    let config = dir.join("sync.toml");
    std::fs::write(
        &config,
        format!(
            "control = \"127.0.0.1:0\"\n[provider]\nurl = \"sqlite:p.db\"\n{extra}\n[[nodes]]\nname = \"node-a\"\ncache = \"memory\"\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let (p, addrs) = spawn(&["serve", "--config", config.to_str().unwrap()], 2);
    let find = |w: &str| addrs.iter().find(|(who, _)| who == w).unwrap().1;
    (p, find("control"), find("node node-a"))
}

/// `shardcast-sync node` from a config file (empty SQLite provider, memory
/// cache), `extra` appended: (process, address).
fn node(dir: &std::path::Path, extra: &str) -> (Proc, SocketAddr) {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!("name = \"node-t\"\nlisten = \"127.0.0.1:0\"\n[provider]\nurl = \"sqlite:p.db\"\n[cache]\nurl = \"memory\"\n{extra}"),
    )
    .unwrap();
    let (p, addrs) = spawn(&["node", "--config", config.to_str().unwrap()], 1);
    (p, addrs[0].1)
}

async fn ready(addr: SocketAddr) {
    eventually_async(Duration::from_secs(20), "ready", || async move {
        let st = testkit::try_request(addr, "GET", "/ready", &[], b"")
            .await
            .ok()?
            .0;
        (st == 200).then_some(())
    })
    .await;
}

/// The deadlines hold (see [`testkit::assert_deadlines`]) and are counted
/// in the listener's metrics (`prefix`, `listener`).
async fn deadlines_hold(addr: SocketAddr, prefix: &str, listener: &str) {
    testkit::assert_deadlines(addr, DEADLINE, "/live").await;
    let (_, m) = testkit::request(addr, "GET", "/metrics", &[], b"").await;
    let closed = |stage: &str| {
        let name = format!(
            "{prefix}_connections_closed_total{{listener=\"{listener}\",stage=\"{stage}\"}}"
        );
        metric(&m, &name).unwrap_or_else(|| panic!("no {name} in:\n{m}"))
    };
    assert!(closed("idle") >= 2.0, "{m}");
    assert!(closed("header") >= 1.0, "{m}");
    for name in ["connections_open", "accept_errors_total"] {
        let name = format!("{prefix}_{name}{{listener=\"{listener}\"}}");
        assert!(metric(&m, &name).is_some(), "no {name} in:\n{m}");
    }
}

/// With `per_client` connections held, one more is refused, and counted.
async fn bounds_hold(addr: SocketAddr, per_client: usize, prefix: &str, listener: &str) {
    testkit::assert_bound(addr, per_client, "/live").await;
    let name =
        format!("{prefix}_connections_refused_total{{listener=\"{listener}\",reason=\"client\"}}");
    let m = eventually_async(
        Duration::from_secs(5),
        "room again, refusal counted",
        || {
            let name = name.clone();
            async move {
                let (st, m) = testkit::try_request(addr, "GET", "/metrics", &[], b"")
                    .await
                    .ok()?;
                (st == 200 && metric(&m, &name)? >= 1.0).then_some(m)
            }
        },
    )
    .await;
    let refused_listener = format!(
        "{prefix}_connections_refused_total{{listener=\"{listener}\",reason=\"listener\"}}"
    );
    assert_eq!(metric(&m, &refused_listener), Some(0.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_listeners_close_silent_slow_and_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, control, node) = serve(dir.path(), FAST);
    tokio::join!(ready(control), ready(node));
    tokio::join!(
        deadlines_hold(control, "shardcast_sync", "control"),
        deadlines_hold(node, "shardcast_node", "node"),
    );
    // Readiness waited for the supervised loops, which /metrics shows.
    let (_, m) = testkit::request(control, "GET", "/metrics", &[], b"").await;
    strict(&m);
    for t in ["recover", "dispatch", "freshness"] {
        let name = format!("shardcast_sync_task_running{{task=\"{t}\"}}");
        assert_eq!(metric(&m, &name), Some(1.0), "{m}");
    }
    let (_, m) = testkit::request(node, "GET", "/metrics", &[], b"").await;
    strict(&m);
    assert_eq!(
        metric(&m, "shardcast_node_task_running{task=\"catalog\"}"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_listeners_refuse_connections_past_the_per_client_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, control, node) = serve(
        dir.path(),
        "[limits]\nmax_connections = 16\nmax_connections_per_client = 3\n[node.limits]\nmax_connections = 16\nmax_connections_per_client = 2\n",
    );
    tokio::join!(ready(control), ready(node));
    tokio::join!(
        bounds_hold(control, 3, "shardcast_sync", "control"),
        bounds_hold(node, 2, "shardcast_node", "node"),
    );
    // An order body must be a JSON object (serde alone would take an
    // array of the fields in order).
    let (st, body) = testkit::request(
        control,
        "POST",
        "/orders",
        &["Content-Type: application/json"],
        br#"["UK/LIGHTING", "node-a"]"#,
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("JSON object"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_node_closes_silent_slow_and_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, addr) = node(dir.path(), FAST);
    ready(addr).await;
    deadlines_hold(addr, "shardcast_node", "node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_node_refuses_connections_past_the_per_client_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, addr) = node(
        dir.path(),
        "[limits]\nmax_connections = 8\nmax_connections_per_client = 2\n",
    );
    ready(addr).await;
    bounds_hold(addr, 2, "shardcast_node", "node").await;
}

/// Strict Prometheus text: HELP/TYPE once per family, before its samples.
fn strict(m: &str) {
    // The body, after the response head.
    let body = m.split_once("\r\n\r\n").map_or(m, |(_, b)| b);
    shardcast_edge::metrics::parse_strict(body).unwrap_or_else(|e| panic!("{e}\n{m}"));
}
