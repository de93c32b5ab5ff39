//! Node health has one source: the proxies' own checks. The manager runs
//! against a topology whose node addresses nothing listens on (a checker of
//! its own would call every node down) and one stand-in proxy whose
//! `/admin/table` says node `a` is healthy and node `b` down: the manager
//! sees exactly that, and follows the proxy when `b` recovers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardcast_edge::testkit;
use shardcast_forecaster::config::Config;
use shardcast_forecaster::service::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn root() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A stand-in proxy admin API: every request gets a table view whose node
/// `b` is down while `b_down` holds.
async fn fake_proxy(b_down: Arc<AtomicBool>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let b_down = b_down.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The head, then as much body as it announces.
                let head_end = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let node = |name: &str, health: &str| {
                    json!({"name": name, "address": "127.0.0.1:1", "capacity": 100.0,
                           "zone": null, "health": health, "in_flight": 0})
                };
                let b = if b_down.load(Relaxed) {
                    "down"
                } else {
                    "healthy"
                };
                let body = json!({
                    "assignment_version": {"epoch": 0, "counter": 0},
                    "config_generation": 1,
                    "skus": 0,
                    "shards": [],
                    "nodes": [node("a", "healthy"), node("b", b)],
                })
                .to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

async fn manager_view(addr: std::net::SocketAddr) -> Option<Value> {
    match testkit::try_request(addr, "GET", "/manager", &[], b"").await {
        // The whole answer: the JSON follows the head.
        Ok((200, text)) => text
            .split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body).ok()),
        _ => None,
    }
}

async fn wait_for(addr: std::net::SocketAddr, what: &str, ok: impl Fn(&Value) -> bool) {
    let t = Instant::now();
    loop {
        if let Some(v) = manager_view(addr).await {
            if ok(&v) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}: {v}"
            );
        }
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_sees_node_health_as_the_proxies_report_it() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens at either address.
    std::fs::write(
        dir.path().join("topology.toml"),
        "[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\
         [[nodes]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n\
         [[shards]]\nid = \"UK/X\"\ncategories = [\"X\"]\nregions = [\"UK\"]\n",
    )
    .unwrap();
    let b_down = Arc::new(AtomicBool::new(true));
    let proxy = fake_proxy(b_down.clone()).await;
    let text = format!(
        "listen = \"127.0.0.1:0\"\n\
         [model]\nhourly = \"{root}/forecaster/models/shardcast_hourly.json\"\ndaily = \"{root}/forecaster/models/shardcast_daily.json\"\n\
         [planner]\ncycle_s = 0.2\n\
         [manager]\ntopology = \"topology.toml\"\nsync = \"http://127.0.0.1:1\"\nproxies = [\"{proxy}\"]\n\
         interval_ms = 100\nfail_after = 1\ndry_run = true\n",
        root = root().display()
    );
    let cfg = Config::parse(&text, dir.path(), "health.toml").expect("config");
    let svc = Service::start(cfg).await.expect("start");
    let health = |v: &Value, n: &str| v["nodes"][n]["health"].as_str().unwrap_or("").to_string();
    wait_for(svc.addr, "b down and a up, as the proxy says", |v| {
        health(v, "b") == "down" && health(v, "a") == "up"
    })
    .await;
    // Several rounds later `a` is still up: nothing else checks it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = manager_view(svc.addr).await.unwrap();
    assert_eq!(health(&v, "a"), "up", "{v}");
    let decisions = v.to_string();
    assert!(
        decisions.contains("health checks fail from 1 of 1 proxies"),
        "{v}"
    );

    b_down.store(false, Relaxed);
    wait_for(svc.addr, "b up again", |v| health(v, "b") == "up").await;
    svc.shutdown().await;
}
