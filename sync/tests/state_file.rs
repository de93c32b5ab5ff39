//! The scheduler's state file through the real `shardcast-sync serve`
//! binary (embedded defaults: SQLite provider, in-process caches):
//!
//! - orders reloaded for a shard and a node no longer configured are
//!   cancelled with a reason, and do not take the running slots from a new
//!   order;
//! - the file is a whole snapshot at every moment, through concurrent
//!   changes and `kill -9`;
//! - a corrupt file at start is moved aside and reported, not dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast_sync::testkit::{eventually_async, workspace_root, Proc};

/// A sync config in `dir` with in-process nodes `nodes` and the state file
/// `state.json`.
fn write_config(dir: &Path, nodes: &[&str], extra_transfer: &str) -> PathBuf {
    let cat = workspace_root().join("data/online_retail/catalog.csv.gz");
    let mut t = format!(
        r#"
control = "127.0.0.1:0"
[provider]
url = "sqlite:provider.db"
seed_catalog = "{}"
[transfer]
concurrency = 2
poll_interval_ms = 200
state_file = "state.json"
{extra_transfer}
"#,
        cat.display()
    );
    for n in nodes {
        t.push_str(&format!(
            "[[nodes]]\nname = \"{n}\"\ncache = \"memory\"\nlisten = \"127.0.0.1:0\"\n"
        ));
    }
    let p = dir.join("sync.toml");
    std::fs::write(&p, t).unwrap();
    p
}

/// Start `serve`; stderr goes to `log`. Returns the control API's base URL.
fn serve(config: &Path, log: &Path) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast-sync"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("run shardcast-sync");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let control = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(a) = l.strip_prefix("control listening on ") {
                    break format!("http://{a}");
                }
            }
            _ => panic!(
                "shardcast-sync exited before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), control)
}

async fn get(c: &reqwest::Client, url: String) -> Option<serde_json::Value> {
    c.get(url).send().await.ok()?.json().await.ok()
}

async fn wait_state(
    c: &reqwest::Client,
    base: &str,
    id: u64,
    state: &str,
    within: Duration,
) -> serde_json::Value {
    eventually_async(within, &format!("order {id} {state}"), || {
        let url = format!("{base}/orders/{id}");
        async move { get(c, url).await.filter(|o| o["state"] == state) }
    })
    .await
}

fn order(id: u64, shard: &str, node: &str, state: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "shard": shard, "node": node, "priority": 5.0,
        "deadline_unix_ms": null, "state": state,
        "submitted_unix_ms": 1, "started_unix_ms": 2, "finished_unix_ms": null,
        "cursor": 10, "rows": 10, "bytes": 1000, "last_error": null, "report": null
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_for_a_removed_shard_or_node_are_cancelled_and_do_not_block_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["node-a"], "");
    // Two orders left by an older config (concurrency 2: both slots).
    std::fs::write(
        dir.path().join("state.json"),
        serde_json::json!({
            "next_id": 3,
            "orders": [
                order(1, "UK/RETIRED_CATEGORY", "node-a", "running"),
                order(2, "UK/LIGHTING", "node-gone", "queued"),
            ]
        })
        .to_string(),
    )
    .unwrap();
    let log = dir.path().join("sync.log");
    let (_p, base) = serve(&config, &log);
    let c = reqwest::Client::new();

    // A new, valid order still runs to completion.
    let r = c
        .post(format!("{base}/orders"))
        .json(&serde_json::json!({"shard": "UK/LIGHTING", "node": "node-a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    assert_eq!(id, 3, "ids go on from the reloaded ones");
    let done = wait_state(&c, &base, id, "done", Duration::from_secs(30)).await;
    assert!(done["report"]["rows"].as_u64().unwrap() > 0, "{done}");

    // The stale ones are cancelled, each with its reason.
    let o1 = wait_state(&c, &base, 1, "cancelled", Duration::from_secs(5)).await;
    let why = o1["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("shard `UK/RETIRED_CATEGORY` is no longer configured"),
        "{o1}"
    );
    let o2 = wait_state(&c, &base, 2, "cancelled", Duration::from_secs(5)).await;
    let why = o2["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("node `node-gone` is no longer configured"),
        "{o2}"
    );
    assert!(o2["finished_unix_ms"].as_u64().is_some());
    let m = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("shardcast_sync_orders_invalidated_total 2"),
        "{m}"
    );
    assert!(
        m.contains("shardcast_sync_orders{state=\"running\"} 0"),
        "{m}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("reloaded order cancelled") && logged.contains("node-gone"),
        "{logged}"
    );
    // And the file says so too, for the next start.
    let file: serde_json::Value = eventually_async(
        Duration::from_secs(5),
        "cancellations persisted",
        || async {
            let j: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).ok()?).ok()?;
            let states: Vec<_> = j["orders"]
                .as_array()?
                .iter()
                .map(|o| o["state"].as_str().unwrap_or("").to_string())
                .collect();
            (states == ["cancelled", "cancelled", "done"]).then_some(j)
        },
    )
    .await;
    assert!(file["orders"][0]["reason"].is_string(), "{file}");
}

/// Every read of the state file parses, while many clients change orders
/// at once and while the process is killed with SIGKILL; after each kill
/// the restarted scheduler reloads exactly what the file holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_state_file_is_always_whole_through_concurrent_changes_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["node-a", "node-b"], "");
    let state = dir.path().join("state.json");
    let log = dir.path().join("sync.log");

    // A reader that parses every version of the file it can see.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (state, stop, reads) = (state.clone(), stop.clone(), reads.clone());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                if let Ok(b) = std::fs::read(&state) {
                    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&b) {
                        return Err(format!("a torn state file ({e}), {} bytes", b.len()));
                    }
                    reads.fetch_add(1, Relaxed);
                }
            }
            Ok(())
        })
    };

    let shards: Vec<String> = shardcast_sync::config::default_shards()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let c = reqwest::Client::new();
    for round in 0..2 {
        // What the killed process left, read before the new one can change it.
        let left: Option<serde_json::Value> =
            (round > 0).then(|| serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap());
        let (mut p, base) = serve(&config, &log);
        if let Some(file) = left {
            let in_file = file["orders"].as_array().unwrap();
            // The new process reloads exactly what the file holds...
            let logged = std::fs::read_to_string(&log).unwrap();
            let reloaded = logged
                .lines()
                .find(|l| l.contains("scheduler state reloaded"))
                .and_then(|l| l.split("orders=").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no reload line in the log:\n{logged}"));
            assert_eq!(
                reloaded,
                in_file.len(),
                "every order in the file is reloaded"
            );
            // ...and serves every unfinished one of them (it may already
            // have run some, and dropped the oldest finished for them).
            let listed: std::collections::BTreeSet<u64> = get(&c, format!("{base}/orders"))
                .await
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_u64().unwrap())
                .collect();
            for o in in_file {
                if matches!(o["state"].as_str(), Some("queued" | "running")) {
                    let id = o["id"].as_u64().unwrap();
                    assert!(
                        listed.contains(&id),
                        "order {id} from the file is not served"
                    );
                }
            }
        }
        // Eight clients submit and cancel as fast as they can: every change
        // is a new snapshot for the writer.
        let until = Instant::now() + Duration::from_millis(2500);
        let clients: Vec<_> = (0..8)
            .map(|k| {
                let (c, base, shards) = (c.clone(), base.clone(), shards.clone());
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while Instant::now() < until {
                        let shard = &shards[(k * 7 + n) % shards.len()];
                        let node = if n % 2 == 0 { "node-a" } else { "node-b" };
                        let r = c
                            .post(format!("{base}/orders"))
                            .json(&serde_json::json!({"shard": shard, "node": node, "priority": (n % 5) as f64 + 1.0}))
                            .send()
                            .await;
                        if let Ok(r) = r {
                            if let Ok(j) = r.json::<serde_json::Value>().await {
                                if n % 3 == 0 {
                                    if let Some(id) = j["id"].as_u64() {
                                        let _ = c.delete(format!("{base}/orders/{id}")).send().await;
                                    }
                                }
                            }
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // Kill it in the middle of the storm.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        p.0.kill().unwrap();
        p.0.wait().unwrap();
        let mut sent = 0;
        for t in clients {
            sent += t.await.unwrap();
        }
        assert!(sent > 50, "the storm happened: {sent} requests");
        eprintln!(
            "round {round}: {sent} requests, {} reads so far",
            reads.load(Relaxed)
        );
        let b = std::fs::read(&state).expect("a state file after the storm");
        let j: serde_json::Value = serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("the state file after kill -9 is torn: {e}"));
        assert!(!j["orders"].as_array().unwrap().is_empty());
        drop(p);
    }
    stop.store(true, Relaxed);
    reader.join().unwrap().unwrap();
    assert!(reads.load(Relaxed) > 10, "the reader saw the file change");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains("cannot write the scheduler state"),
        "{logged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_moved_aside_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["node-a"], "");
    let torn = br#"{"next_id": 9, "orders": [{"id": 7, "shard": "UK/LIGHT"#;
    std::fs::write(dir.path().join("state.json"), torn).unwrap();
    let log = dir.path().join("sync.log");
    let (_p, base) = serve(&config, &log);
    let c = reqwest::Client::new();

    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "moved aside: {aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), torn, "kept as it was");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ERROR") && logged.contains("state file is corrupt"),
        "{logged}"
    );
    let m = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("shardcast_sync_state_file_corrupt_total 1"),
        "{m}"
    );

    // The scheduler works on, with ids that cannot be mistaken for the
    // lost orders', and writes a fresh, whole file.
    let r = c
        .post(format!("{base}/orders"))
        .json(&serde_json::json!({"shard": "UK/LIGHTING", "node": "node-a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    assert!(id > 9, "a fresh id range after the loss: {id}");
    wait_state(&c, &base, id, "done", Duration::from_secs(30)).await;
    eventually_async(Duration::from_secs(5), "a fresh state file", || async {
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).ok()?).ok()?;
        (j["orders"][0]["state"] == "done").then_some(())
    })
    .await;
}
