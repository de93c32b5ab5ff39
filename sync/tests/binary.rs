//! The `shardcast-sync` binary on a bare machine: the embedded defaults
//! (SQLite provider seeded from the catalog, in-process caches, nodes
//! served by `serve`) and the standalone `node`, `load` and `changes`
//! subcommands. No Redis or PostgreSQL involved.

use std::process::Command;
use std::time::Duration;

use shardcast_sync::testkit::{eventually_async, spawn_listening, workspace_root, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_shardcast-sync");
fn spawn(args: &[&str], want: usize) -> (Proc, Vec<(String, String)>) {
    let (p, addrs) = spawn_listening(BIN, args, want);
    (
        p,
        addrs
            .into_iter()
            .map(|(w, a)| (w, format!("http://{a}")))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_serve_runs_everything_without_redis_or_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let cat = workspace_root().join("data/online_retail/catalog.csv.gz");
    let config = dir.path().join("sync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
control = "127.0.0.1:0"
[provider]
url = "sqlite:var/provider.db"
seed_catalog = "{}"
[transfer]
poll_interval_ms = 100
state_file = "var/state.json"
[[nodes]]
name = "node-a"
cache = "memory"
listen = "127.0.0.1:0"
"#,
            cat.display()
        ),
    )
    .unwrap();
    let (child, addrs) = spawn(&["serve", "--config", config.to_str().unwrap()], 2);
    let node = &addrs.iter().find(|(w, _)| w == "node node-a").unwrap().1;
    let control = &addrs.iter().find(|(w, _)| w == "control").unwrap().1;
    let http = reqwest::Client::new();
    let url = format!("{node}/inventory/85123A?region=UK");
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{control}/orders"))
        .json(&serde_json::json!({"shard": "UK/LIGHTING", "node": "node-a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Once warm, a sku never requested before is a hit.
    let url = format!("{node}/inventory/21733?region=UK");
    eventually_async(
        Duration::from_secs(30),
        "warm shard served from the node's cache",
        || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let r = http.get(&url).send().await.ok()?;
                (r.headers().get("x-cache")? == "hit").then_some(())
            }
        },
    )
    .await;
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_changes_and_node_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("p.db").display());
    let root = workspace_root();
    let cat = root.join("data/online_retail/catalog.csv.gz");
    let lines = root.join("data/online_retail/lines.csv.gz");
    let out = Command::new(BIN)
        .args(["load", "--provider", &db, "--scale", "2", "--catalog"])
        .arg(&cat)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "loaded 17070 rows"
    );

    let (child, addrs) = spawn(
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--provider",
            &db,
            "--cache",
            "memory",
        ],
        1,
    );
    let base = &addrs[0].1;
    let http = reqwest::Client::new();
    let get = |sku: &str| {
        let http = http.clone();
        let url = format!("{base}/inventory/{sku}?region=UK");
        async move {
            let r = http.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (s, v) = get("85123A-V0001").await;
    assert_eq!(s, 200, "a synthesised variant: {v}");
    assert_eq!(v["attributes"]["base_sku"], "85123A");
    assert_eq!(
        get("85123A-V0002").await.0,
        404,
        "scale 2 has variants 0 and 1 only"
    );
    let r = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let out = Command::new(BIN)
        .args([
            "changes",
            "--provider",
            &db,
            "--scale",
            "2",
            "--rate",
            "0",
            "--limit",
            "3000",
            "--catalog",
        ])
        .arg(&cat)
        .arg("--lines")
        .arg(&lines)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "applied 3000 changes"
    );
    drop(child);

    // The replay really changed stock and prices.
    let p = shardcast_sync::provider::open(&db).await.unwrap();
    let head = p.head().await.unwrap();
    assert!(head > 17070 + 1000, "versions advanced: {head}");
}
