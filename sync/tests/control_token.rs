//! The control API's bearer token, through the real `shardcast-sync serve`
//! binary: refused without it or with a wrong one (401 with
//! `WWW-Authenticate`), accepted with any case of `Bearer`; and a config
//! that puts the control API off loopback without a token does not start.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardcast_sync::testkit::{workspace_root, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_shardcast-sync");

fn config(dir: &Path, head: &str) -> std::path::PathBuf {
    let cat = workspace_root().join("data/online_retail/catalog.csv.gz");
    let p = dir.join("sync.toml");
    std::fs::write(
        &p,
        format!(
            "{head}\n[provider]\nurl = \"sqlite:provider.db\"\nseed_catalog = \"{}\"\n\
             [[nodes]]\nname = \"node-a\"\ncache = \"memory\"\nlisten = \"127.0.0.1:0\"\n",
            cat.display()
        ),
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_wants_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "control = \"127.0.0.1:0\"\ncontrol_token = \"s3cret-token\"",
    );
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let child = Proc(child);
    let base = loop {
        let l = lines.next().expect("exited before listening").unwrap();
        if let Some(a) = l.strip_prefix("control listening on ") {
            break format!("http://{a}");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let c = reqwest::Client::new();

    for auth in [
        None,
        Some("Bearer wrong-token!"),
        Some("Basic s3cret-token"),
    ] {
        for (method, path) in [
            ("GET", "/orders"),
            ("POST", "/orders"),
            ("DELETE", "/nodes/node-a/shards/UK%2FLIGHTING"),
            ("GET", "/metrics"),
        ] {
            let mut r = c.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            if method == "POST" {
                r = r.json(&serde_json::json!({"shard": "UK/LIGHTING", "node": "node-a"}));
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(
                r.headers()["www-authenticate"],
                shardcast_edge::auth::CHALLENGE,
                "{method} {path}"
            );
        }
    }
    // Nothing refused got through.
    let orders: serde_json::Value = c
        .get(format!("{base}/orders"))
        .header("authorization", "Bearer s3cret-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(orders, serde_json::json!([]));

    // The scheme in any case.
    let r = c
        .post(format!("{base}/orders"))
        .header("authorization", "bearer s3cret-token")
        .json(&serde_json::json!({"shard": "UK/LIGHTING", "node": "node-a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let m = c
        .get(format!("{base}/metrics"))
        .header("authorization", "BEARER s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    let m = m.text().await.unwrap();
    assert!(
        m.contains("shardcast_sync_control_unauthorized_total 12"),
        "{m}"
    );
    drop(child);
}

#[test]
fn a_control_api_off_loopback_without_a_token_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "control = \"0.0.0.0:0\"");
    let mut child = Proc(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "serve started with a control API on 0.0.0.0 and no token"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains(
            "control_token: required when `control` (0.0.0.0:0) is not a loopback address"
        ),
        "{err}"
    );
}
