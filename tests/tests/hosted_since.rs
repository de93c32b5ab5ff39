//! Sync's hosted list read as a change since a version, with real
//! processes: `shardcast-sync` (two in-process nodes on memory caches, an
//! embedded SQLite provider seeded from the catalog) and the shard
//! manager's own sync adapter (`SyncClient`), which keeps its view and
//! applies each answer.
//!
//! The view the manager applies changes to always ends equal to sync's
//! plain list (no change is missed: copies that appear, warm up, go); an
//! answer with no change in between is empty; a restarted sync (a new
//! epoch) answers in full, and the full answer replaces the view; a reader
//! without `since` (an older manager) still gets the plain list.

use std::time::Duration;

use serde_json::json;
use shardcast_forecaster::manager::state::Hosted;
use shardcast_forecaster::manager::sync::SyncClient;
use shardmap::contract::hosted::{Nodes, NodesChange};
use shardmap::contract::HostedState;
use system::{bin, eventually, free_port, get_typed, workspace_root, Proc};

/// Sync's plain `GET /nodes` in the manager's terms.
async fn plain(c: &reqwest::Client, base: &str) -> Option<Hosted> {
    let nodes: Nodes = get_typed(c, &format!("{base}/nodes"), None).await?;
    Some(
        nodes
            .into_iter()
            .map(|(n, r)| {
                let m = r
                    .hosted
                    .into_iter()
                    .map(|h| {
                        let v = shardmap::contract::manager::HostedView {
                            cursor: h.cursor,
                            rows: h.rows,
                            warm: h.state == HostedState::Warm,
                        };
                        (h.shard, v)
                    })
                    .collect();
                (n, m)
            })
            .collect(),
    )
}

/// The manager's view and sync's plain list agree (read one after the
/// other until they do: transfers move on between the two reads).
async fn agree(c: &reqwest::Client, base: &str, mgr: &SyncClient, what: &str) -> Hosted {
    eventually(Duration::from_secs(30), what, || async {
        let view = mgr.hosted().await.ok()?;
        let whole = plain(c, base).await?;
        (view == whole).then_some(view)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_reads_sync_hosted_list_as_changes_and_misses_none() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = workspace_root();
    let port = free_port();
    let mut toml = format!(
        "control = \"127.0.0.1:{port}\"\n\
         [provider]\nurl = \"sqlite:{db}\"\nseed_catalog = \"{cat}\"\n\
         [transfer]\nconcurrency = 4\npoll_interval_ms = 200\n",
        db = d.join("provider.db").display(),
        cat = root.join("data/online_retail/catalog.csv.gz").display(),
    );
    for n in ["node-a", "node-b"] {
        toml.push_str(&format!(
            "[[nodes]]\nname = \"{n}\"\ncache = \"memory\"\nlisten = \"127.0.0.1:0\"\n"
        ));
    }
    let file = d.join("sync.toml");
    std::fs::write(&file, toml).unwrap();
    let args = ["serve", "--config", &file.display().to_string()];
    let mut sync = Proc::spawn("sync", d, &bin("shardcast-sync"), &args);
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    let shards: Vec<String> = eventually(Duration::from_secs(60), "sync answers", || async {
        get_typed(&c, &format!("{base}/shards"), None).await
    })
    .await;
    assert!(shards.len() >= 3, "{shards:?}");
    let mgr = SyncClient::new(&base, None);

    // First read: everything (every node, none hosting).
    let v = agree(&c, &base, &mgr, "an empty view").await;
    assert_eq!(v.len(), 2);
    assert!(v.values().all(|m| m.is_empty()), "{v:?}");
    let first: NodesChange = get_typed(&c, &format!("{base}/nodes?since=0"), None)
        .await
        .unwrap();
    assert!(first.full && first.nodes.len() == 2, "{first:?}");

    // Copies appear, warm up: the view follows, change by change.
    let order = |shard: &str, node: &str| {
        let (c, url) = (c.clone(), format!("{base}/orders"));
        let body = json!({"shard": shard, "node": node});
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        }
    };
    order(&shards[0], "node-a").await;
    order(&shards[1], "node-a").await;
    order(&shards[2], "node-b").await;
    let v = eventually(Duration::from_secs(60), "three warm copies", || async {
        let v = agree(&c, &base, &mgr, "the view after the orders").await;
        (v.values()
            .flat_map(|m| m.values())
            .filter(|h| h.warm)
            .count()
            == 3)
            .then_some(v)
    })
    .await;
    assert!(v["node-a"][&shards[0]].rows > 0, "{v:?}");

    // Since the first answer: only the three copies, nothing else.
    let since: NodesChange = get_typed(&c, &format!("{base}/nodes?since={}", first.version), None)
        .await
        .unwrap();
    assert!(!since.full, "{since:?}");
    let mut named: Vec<&str> = since
        .nodes
        .values()
        .flat_map(|n| n.hosted.iter().map(|h| h.shard.as_str()))
        .collect();
    named.sort_unstable();
    let mut want: Vec<&str> = shards[..3].iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(named, want, "{since:?}");
    // Nothing changed since the last answer: nothing in this one (the
    // freshness reads in between move only the last sync time).
    let latest: NodesChange = get_typed(&c, &format!("{base}/nodes?since=0"), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let quiet: NodesChange = get_typed(&c, &format!("{base}/nodes?since={}", latest.version), None)
        .await
        .unwrap();
    assert!(!quiet.full && quiet.nodes.is_empty(), "{quiet:?}");

    // A copy goes: the view loses it.
    let r = c
        .delete(format!(
            "{base}/nodes/node-a/shards/{}",
            shards[0].replace('/', "%2F")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v = eventually(Duration::from_secs(30), "the evicted copy gone", || async {
        let v = agree(&c, &base, &mgr, "the view after the eviction").await;
        (!v["node-a"].contains_key(&shards[0])).then_some(v)
    })
    .await;
    assert!(v["node-b"][&shards[2]].warm, "{v:?}");
    let gone: NodesChange = get_typed(&c, &format!("{base}/nodes?since={}", latest.version), None)
        .await
        .unwrap();
    assert_eq!(
        gone.nodes["node-a"].gone,
        vec![shards[0].clone()],
        "{gone:?}"
    );

    // Sync restarts (its memory caches empty): a version of the old run
    // gets everything, and the manager's view drops what the old run held.
    sync.kill9();
    let mut sync = Proc::spawn("sync-2", d, &bin("shardcast-sync"), &args);
    let after: NodesChange = eventually(Duration::from_secs(60), "sync back", || async {
        get_typed(&c, &format!("{base}/nodes?since={}", gone.version), None).await
    })
    .await;
    assert!(after.full && after.nodes.len() == 2, "{after:?}");
    assert_ne!(
        after.version.split('.').next(),
        gone.version.split('.').next(),
        "a new run, a new epoch"
    );
    let v = agree(&c, &base, &mgr, "the view after the restart").await;
    assert!(v.values().all(|m| m.is_empty()), "{v:?}");

    // An older manager: no `since`, the plain list; a bad one says why.
    let old: Nodes = get_typed(&c, &format!("{base}/nodes"), None).await.unwrap();
    assert_eq!(old.len(), 2);
    let r = c
        .get(format!("{base}/nodes?since=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("<epoch>.<seq>"));
    sync.assert_running();
}
