//! kill -9 in the middle of a transfer, restart: the cache equals the
//! provider for the shard, and the rows copied after the restart are
//! exactly the delta since the cursor the crash left — nothing lost,
//! nothing applied twice. Runs the real `shardcast-sync serve` binary
//! against PostgreSQL and Redis.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use shardcast_sync::cache;
use shardcast_sync::config::default_shards;
use shardcast_sync::provider::{self, Change};
use shardcast_sync::testkit::{self, eventually_async, Proc};

fn spawn(config: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast-sync"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run shardcast-sync");
    // Wait for the control listener line.
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("control listening on") => break,
            Some(Ok(_)) => continue,
            _ => panic!("shardcast-sync exited before listening"),
        }
    }
    Proc(child)
}

async fn metric(c: &reqwest::Client, base: &str, name: &str) -> u64 {
    let m = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_transfer_then_restart_loses_and_repeats_nothing() {
    let pg = tokio::task::spawn_blocking(testkit::Postgres::start)
        .await
        .unwrap();
    let redis = tokio::task::spawn_blocking(testkit::Redis::start)
        .await
        .unwrap();
    let p = provider::open(&pg.url()).await.unwrap();
    let cat = testkit::workspace_root().join("data/online_retail/catalog.csv.gz");
    shardcast_sync::load::load(p.as_ref(), &cat, 3, 20_000)
        .await
        .unwrap();
    let cache = cache::open(&redis.url(), "node-a").await.unwrap();
    let shard = default_shards()
        .into_iter()
        .find(|s| s.id == "UK/HOME_DECOR_OTHER")
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let config = dir.path().join("sync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
control = "127.0.0.1:{port}"
[provider]
url = "{}"
[transfer]
bandwidth_bytes_per_s = 300000
batch_rows = 100
poll_interval_ms = 200
state_file = "state.json"
[[nodes]]
name = "node-a"
cache = "{}"
"#,
            pg.url(),
            redis.url()
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let mut child = spawn(&config);
    let r = http
        .post(format!("{base}/orders"))
        .json(&serde_json::json!({"shard": shard.id, "node": "node-a", "priority": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    // Changes land while the transfer runs.
    p.apply(&[
        Change::Stock {
            sku: "85049A".into(),
            region: "UK".into(),
            stock: 1,
        },
        Change::Delete {
            sku: "21212".into(),
            region: "UK".into(),
        },
    ])
    .await
    .unwrap();
    // Killed once the copy is part-way and the state file says the order
    // runs (the file may lag a change by its write gap).
    let c2 = cache.clone();
    let state_file = dir.path().join("state.json");
    eventually_async(Duration::from_secs(30), "a partial transfer", || async {
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state_file).ok()?).ok()?;
        let running = file["orders"][0]["state"] == "running";
        (running && c2.size(&shard.id).await.ok()? > 300).then_some(())
    })
    .await;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let crashed_at = cache
        .cursor(&shard.id)
        .await
        .unwrap()
        .expect("cursor written with the first batch");
    // Exactly what must still travel: the delta since the crash cursor.
    let mut expected = 0u64;
    let mut c = crashed_at;
    loop {
        let b = p.delta(&shard, c, 1000).await.unwrap();
        expected += b.rows.len() as u64;
        c = b.to;
        if !b.more {
            break;
        }
    }
    assert!(
        expected > 0,
        "the crash came mid-transfer (cursor {crashed_at})"
    );
    let order: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(
        order["orders"][0]["state"], "running",
        "the order was in flight"
    );

    // Restart: the order resumes from the cache's cursor.
    let child = spawn(&config);
    let done = eventually_async(Duration::from_secs(60), "order done after restart", || {
        let http = http.clone();
        let url = format!("{base}/orders/{id}");
        async move {
            let j: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
            (j["state"] == "done").then_some(j)
        }
    })
    .await;
    testkit::cache_matches_provider(p.as_ref(), cache.as_ref(), &shard)
        .await
        .unwrap();
    let copied = metric(&http, &base, "shardcast_sync_rows_copied_total").await;
    let skipped = metric(&http, &base, "shardcast_sync_batches_skipped_total").await;
    assert_eq!(
        copied, expected,
        "rows copied after the restart = the delta since the crash cursor"
    );
    assert_eq!(skipped, 0);
    assert!(done["report"]["cursor"].as_u64().unwrap() > crashed_at);
    eprintln!(
        "crashed at cursor {crashed_at}; {expected} rows left; resumed and finished: {}",
        done["report"]
    );
    drop(child);
}
