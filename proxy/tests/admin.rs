//! The admin listener against a real process: a bearer token that follows
//! reloads, reloads that say what waits for a restart (and `-t` that says
//! the same), JSON bodies that must be objects, and deadlines on idle
//! connections.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_node_opts() -> ProxyOpts {
    let mut o = opts();
    o.extra = "replication_factor = 1\n".into();
    o
}

fn with_token(text: &str, token: &str) -> String {
    text.replace(
        "grace_period_s = 2\n",
        &format!("grace_period_s = 2\nadmin_token = \"{token}\"\n"),
    )
}

async fn get(url: &str, auth: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(url);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    tokio::time::timeout(Duration::from_secs(5), r.send())
        .await
        .expect("admin answers within 5 s")
        .unwrap()
}

async fn reload(p: &Proxy, auth: Option<&str>) -> (u16, serde_json::Value) {
    let mut r = reqwest::Client::new().post(p.admin_url("/admin/reload"));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let r = tokio::time::timeout(Duration::from_secs(10), r.send())
        .await
        .expect("reload answers within 10 s")
        .unwrap();
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

fn fields(body: &serde_json::Value) -> Vec<String> {
    body["needs_restart"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["field"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A proxy whose admin listener needs `token`; its config text without it.
async fn with_admin_token(nodes: &[TestNode], token: &str) -> (Proxy, String) {
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let (hp, ap) = (free_port(), free_port());
    let config = dir.path().join("proxy.toml");
    let text = Proxy::config_text(hp, ap, &refs, &one_node_opts());
    std::fs::write(&config, with_token(&text, token)).unwrap();
    let p = Proxy::start_with_token(dir, config, hp, ap, Some(token)).await;
    (p, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_admin_token_applies_as_soon_as_the_reload_answers() {
    let nodes = [TestNode::start("n1").await];
    let (p, text) = with_admin_token(&nodes, "old-token").await;
    std::fs::write(&p.config, with_token(&text, "new-token")).unwrap();
    let (status, body) = reload(&p, Some("Bearer old-token")).await;
    if status == 401 {
        // the config-file watcher applied it first: the reload then has to
        // be asked with the new token, and finds nothing left to do
        let (status, body) = reload(&p, Some("Bearer new-token")).await;
        assert_eq!(status, 200, "{body}");
    } else {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["outcome"], "applied", "{body}");
    }
    let r = get(&p.admin_url("/metrics"), Some("Bearer new-token")).await;
    assert_eq!(r.status(), 200, "the new token is refused after the reload");
    let r = get(&p.admin_url("/metrics"), Some("Bearer old-token")).await;
    assert_eq!(
        r.status(),
        401,
        "the old token still works after the reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_scheme_and_bearer_is_case_insensitive() {
    let nodes = [TestNode::start("n1").await];
    let (p, _) = with_admin_token(&nodes, "s3cret").await;
    for auth in [None, Some("Bearer wrong"), Some("Basic s3cret")] {
        let r = get(&p.admin_url("/admin/table"), auth).await;
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer realm=\"shardcast\""),
            "{auth:?}"
        );
    }
    for auth in ["bearer s3cret", "BEARER s3cret", "Bearer s3cret"] {
        let r = get(&p.admin_url("/admin/table"), Some(auth)).await;
        assert_eq!(r.status(), 200, "{auth}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_changes_need_a_restart_on_every_reload_and_in_dash_t() {
    let nodes = [TestNode::start("n1").await];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let o = one_node_opts();
    let p = Proxy::start(&refs, one_node_opts()).await;
    let (hp, ap) = (p.http.port(), p.admin.port());
    let original = std::fs::read_to_string(&p.config).unwrap();

    // nothing changed: -t says a reload applies the whole file
    let (code, out) = tokio::task::spawn_blocking({
        let c = p.config.clone();
        move || check_config(&c)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("a reload applies this whole file"), "{out}");

    // 1. another HTTP port: named on this reload and on the next one too
    let hp2 = free_port();
    std::fs::write(&p.config, Proxy::config_text(hp2, ap, &refs, &o)).unwrap();
    for attempt in 0..2 {
        let (status, body) = reload(&p, None).await;
        assert_eq!(status, 202, "reload {attempt}: {body}");
        assert_eq!(body["outcome"], "needs_restart", "{body}");
        assert_eq!(fields(&body), ["listen.http"], "{body}");
        assert_eq!(
            body["needs_restart"][0]["running"],
            format!("127.0.0.1:{hp}")
        );
        assert_eq!(body["needs_restart"][0]["file"], format!("127.0.0.1:{hp2}"));
    }
    // still serving where it started
    let r = get(&p.url("/inventory/A1"), None).await;
    assert_eq!(r.status(), 200);
    let running: serde_json::Value = get(&p.admin_url("/admin/config"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(running["http"][0], format!("127.0.0.1:{hp}"), "{running}");
    // -t says the same while the proxy runs
    let (code, out) = tokio::task::spawn_blocking({
        let c = p.config.clone();
        move || check_config(&c)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "needs_restart: listen.http (running 127.0.0.1:{hp}, file 127.0.0.1:{hp2})"
        )),
        "{out}"
    );

    // 2. another admin address too
    let ap2 = free_port();
    std::fs::write(&p.config, Proxy::config_text(hp2, ap2, &refs, &o)).unwrap();
    for attempt in 0..2 {
        let (status, body) = reload(&p, None).await;
        assert_eq!(status, 202, "reload {attempt}: {body}");
        assert_eq!(fields(&body), ["listen.http", "listen.admin"], "{body}");
    }
    // -t asks the address in the file, where nothing runs: it says so and
    // lists what applies only at start
    let (code, out) = tokio::task::spawn_blocking({
        let c = p.config.clone();
        move || check_config(&c)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("no running instance answers at 127.0.0.1:{ap2}")),
        "{out}"
    );
    assert!(out.contains("listen.admin"), "{out}");

    // 3. back to what runs: a plain success again
    std::fs::write(&p.config, &original).unwrap();
    let (status, body) = reload(&p, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["outcome"] == "applied" || body["outcome"] == "unchanged",
        "{body}"
    );
    assert!(p
        .log_text()
        .contains("applies only after a restart or graceful upgrade"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_update_that_is_not_a_json_object_is_400() {
    let nodes = [TestNode::start("n1").await];
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), one_node_opts()).await;
    let v0 = p.assignment_version().await;
    // serde's derive reads an array as the struct's fields in order:
    // this would be {version: 99, shards: {}}
    let r = reqwest::Client::new()
        .put(p.admin_url("/admin/table"))
        .header("content-type", "application/json")
        .body("[99, {}]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("must be a JSON object"), "{text}");
    assert_eq!(p.assignment_version().await, v0);
}

/// Read until the peer closes; how long that took.
async fn closed_after(s: &mut TcpStream) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("admin connection still open after 5 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_are_closed_by_the_deadlines() {
    let nodes = [TestNode::start("n1").await];
    let mut o = one_node_opts();
    o.extra =
        "replication_factor = 1\n[timeouts]\nclient_header_ms = 300\nclient_keepalive_ms = 300\n"
            .into();
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    // connects and sends nothing
    let mut s = TcpStream::connect(p.admin).await.unwrap();
    let t = closed_after(&mut s).await;
    assert!(t < Duration::from_secs(2), "silent connection held {t:?}");
    // half a request head, then nothing
    let mut s = TcpStream::connect(p.admin).await.unwrap();
    s.write_all(b"GET /live HT").await.unwrap();
    let t = closed_after(&mut s).await;
    assert!(t < Duration::from_secs(2), "partial head held {t:?}");
    // one request answered, then idle past the keep-alive deadline
    let mut s = TcpStream::connect(p.admin).await.unwrap();
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let t = closed_after(&mut s).await;
    assert!(
        t >= Duration::from_millis(200) && t < Duration::from_secs(2),
        "idle keep-alive connection closed after {t:?}"
    );
}
