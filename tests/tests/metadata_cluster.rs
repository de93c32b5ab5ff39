//! The metadata store on a real Redis Cluster (three masters with a
//! replica each), with real processes: one `shardcast-forecaster` manager
//! and a `shardcast-proxy` that follows the store only (the manager pushes
//! to no proxy, and the proxy re-reads the store on its own only every ten
//! minutes, so it converges through the cluster's pub/sub or not at all).
//!
//! The store's URL lists the master of the prefix's slot first, so the
//! proxy subscribes on that very node; `kill -9` takes both the slot's
//! master and the proxy's subscription. Then: the replica is promoted; the
//! manager keeps (or takes again) the lease, fenced by epoch; the proxy
//! subscribes elsewhere and converges on the next version; no version ever
//! goes backwards on the proxy; a restarted proxy reads the current table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};
use shardcast_forecaster::manager::metadata::{self, Published};
use shardcast_sync::testkit::RedisCluster;
use shardmap::contract::MetadataKeys;
use shardmap::{AssignmentVersion, TableUpdate};
use system::{
    assignment_version, bin, control_section, eventually, free_port, get_json, replicas,
    topology_toml, FakeNode, Proc,
};

const PREFIX: &str = "mc";
const LEASE_MS: u64 = 3000;
const SYNC_TOKEN: &str = "sync-s3cret";
/// Longer than the test: a proxy that converges did so on a message.
const POLL_MS: u64 = 600_000;

/// `table` routes `shard` to `nodes`, in any order.
fn same_nodes(table: &Value, shard: &str, nodes: &[&str]) -> bool {
    let mut have = replicas(table, shard);
    have.sort();
    let mut want: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    want.sort();
    have == want
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

struct Stack {
    dir: tempfile::TempDir,
    manager: Proc,
    manager_url: String,
    proxy_toml: std::path::PathBuf,
    admin: String,
    client: reqwest::Client,
    _nodes: Vec<FakeNode>,
    _sync: Proc,
}

impl Stack {
    async fn start(url: &str, caches: &str) -> (Stack, Proc) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let nodes = vec![
            FakeNode::start().await,
            FakeNode::start().await,
            FakeNode::start().await,
        ];
        let topology = d.join("topology.toml");
        std::fs::write(
            &topology,
            topology_toml(
                &[
                    ("a", &nodes[0].addr.to_string()),
                    ("b", &nodes[1].addr.to_string()),
                    ("e", &nodes[2].addr.to_string()),
                ],
                &[("ALPHA", &["a", "b"]), ("BETA", &["b", "e"])],
            ),
        )
        .unwrap();
        let (hp, ap) = (free_port(), free_port());
        let proxy_toml = d.join("proxy.toml");
        std::fs::write(
            &proxy_toml,
            system::proxy_toml(
                hp,
                ap,
                &control_section(Some(url), PREFIX, POLL_MS),
                &[("A1", "ALPHA"), ("B1", "BETA")],
            ),
        )
        .unwrap();
        let proxy = Proc::spawn(
            "proxy",
            d,
            &bin("shardcast-proxy"),
            &["-c", &proxy_toml.display().to_string()],
        );
        // Sync: an empty provider (orders finish at once), the nodes'
        // caches on the same cluster (without WAIT: their durability is
        // not what this test is about, and must not slow the orders).
        let sync_port = free_port();
        let mut sync_toml = format!(
            "control = \"127.0.0.1:{sync_port}\"\ncontrol_token = \"{SYNC_TOKEN}\"\ntopology = \"{}\"\n\
             [provider]\nurl = \"sqlite:{}\"\n\
             [transfer]\nconcurrency = 4\npoll_interval_ms = 1000\nstate_file = \"{}\"\n",
            topology.display(),
            d.join("provider.db").display(),
            d.join("sync-state.json").display()
        );
        for n in ["a", "b", "e"] {
            sync_toml.push_str(&format!(
                "[[nodes]]\nname = \"{n}\"\ncache = \"{caches}\"\nprefix = \"{n}\"\n"
            ));
        }
        std::fs::write(d.join("sync.toml"), &sync_toml).unwrap();
        let sync = Proc::spawn(
            "sync",
            d,
            &bin("shardcast-sync"),
            &[
                "serve",
                "--config",
                &d.join("sync.toml").display().to_string(),
            ],
        );
        let port = free_port();
        let root = system::workspace_root();
        let toml = format!(
            "listen = \"127.0.0.1:{port}\"\n\
             [model]\nhourly = \"{m}/shardcast_hourly.json\"\ndaily = \"{m}/shardcast_daily.json\"\n\
             [planner]\ncycle_s = 1\n\
             [manager]\ntopology = \"{p}\"\nprefix = \"{PREFIX}\"\nsync = \"http://127.0.0.1:{sync_port}\"\n\
             sync_token = \"{SYNC_TOKEN}\"\nmetadata = \"{url}\"\ninterval_ms = 200\nlease_ms = {LEASE_MS}\n\
             health_timeout_ms = 300\nfail_after = 1\n",
            m = root.join("forecaster/models").display(),
            p = topology.display(),
        );
        let f = d.join("manager.toml");
        std::fs::write(&f, toml).unwrap();
        let manager = Proc::spawn(
            "manager",
            d,
            &bin("shardcast-forecaster"),
            &["--config", &f.display().to_string()],
        );
        let s = Stack {
            manager,
            manager_url: format!("http://127.0.0.1:{port}"),
            proxy_toml,
            admin: format!("http://127.0.0.1:{ap}"),
            client: reqwest::Client::new(),
            _nodes: nodes,
            _sync: sync,
            dir,
        };
        (s, proxy)
    }

    fn proxy(&self, name: &str) -> Proc {
        Proc::spawn(
            name,
            self.dir.path(),
            &bin("shardcast-proxy"),
            &["-c", &self.proxy_toml.display().to_string()],
        )
    }

    async fn table(&self) -> Option<Value> {
        get_json(&self.client, &format!("{}/admin/table", self.admin)).await
    }

    async fn proxy_version(&self) -> Option<(u64, u64)> {
        assignment_version(&self.table().await?["assignment_version"])
    }

    async fn view(&self) -> Option<Value> {
        get_json(&self.client, &format!("{}/manager", self.manager_url)).await
    }

    /// The manager's assignment version, when it leads.
    async fn leading(&self) -> Option<(u64, u64)> {
        let v = self.view().await?;
        if v["leader"] != json!(true) {
            return None;
        }
        assignment_version(&v["assignment_version"])
    }

    async fn pin(&self, shard: &str, nodes: &[&str]) {
        let r = self
            .client
            .put(format!(
                "{}/manager/pins/{}",
                self.manager_url,
                shard.replace('/', "%2F")
            ))
            .json(&json!({ "nodes": nodes }))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "pin {shard}: {}", r.status());
    }

    /// Once the proxy routes `shard` to `nodes` (in any order): its version. Past
    /// `within`, a panic with the end of every process's log.
    async fn proxy_on(
        &self,
        shard: &str,
        nodes: &[&str],
        what: &str,
        within: Duration,
    ) -> (u64, u64) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(t) = self.table().await {
                if same_nodes(&t, shard, nodes) {
                    if let Some(v) = assignment_version(&t["assignment_version"]) {
                        return v;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out after {within:?} waiting for {what}; proxy: {:?}\n{}",
            self.table().await,
            self.logs()
        );
    }

    /// The last lines of every process's log.
    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let panic = lines.iter().position(|l| l.contains("panicked"));
                let from = panic.unwrap_or(lines.len().saturating_sub(40));
                let tail = lines[from..lines.len().min(from + 40)].join("\n");
                out.push_str(&format!("--- {}\n{tail}\n", p.display()));
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metadata_store_survives_the_loss_of_its_master() {
    let mut rc = block(RedisCluster::start);
    let keys = MetadataKeys::for_url(PREFIX, &rc.url());
    assert_eq!(keys.table(), "{mc}:table", "one hash tag for every key");
    let slot = block(|| rc.slot(&keys.table()));
    let master = block(|| rc.master_of(&keys.table()));
    // The slot's master first: the proxy subscribes there.
    let mut seeds = vec![format!("127.0.0.1:{master}")];
    seeds.extend(
        rc.ports()
            .into_iter()
            .filter(|p| *p != master)
            .map(|p| format!("127.0.0.1:{p}")),
    );
    let url = format!(
        "redis+cluster://{}?wait_replicas=1&wait_timeout_ms=500",
        seeds.join(",")
    );
    let (mut s, proxy) = Stack::start(&url, &format!("{}?wait_replicas=0", rc.url())).await;
    let mut proxy = Some(proxy);

    // 1. The manager leads and publishes through the cluster; the proxy
    // follows it.
    let first = eventually(Duration::from_secs(30), "the manager leads", || s.leading()).await;
    let epoch = first.0;
    s.pin("UK/ALPHA", &["a", "e"]).await;
    let v1 = s
        .proxy_on(
            "UK/ALPHA",
            &["a", "e"],
            "the proxy on the pinned table",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(v1.0, epoch, "published in the leader's epoch");
    // Where it lives: every key on the one master of the tag's slot.
    let mut conn = metadata::connect(&url).await.unwrap();
    let stored = metadata::read_table(&mut conn, &keys)
        .await
        .unwrap()
        .unwrap();
    assert!((stored.version.epoch, stored.version.counter) >= v1);
    let on_master = block(|| {
        rc.cli(
            master,
            &["EXISTS", &keys.table(), &keys.version(), &keys.epoch()],
        )
    });
    assert_eq!(
        on_master.trim(),
        "3",
        "table, version and epoch on the slot's master"
    );

    // Every version the proxy holds from here on, polled.
    let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watcher = {
        let seen = seen.clone();
        let admin = s.admin.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !*stop_rx.borrow() {
                if let Some(t) = get_json(&client, &format!("{admin}/admin/table")).await {
                    if let Some(v) = assignment_version(&t["assignment_version"]) {
                        seen.lock().push(v);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // 2. kill -9 the master of the tag's slot (and of the proxy's
    // subscription); its replica is promoted.
    let t0 = Instant::now();
    block(|| rc.kill(master));
    let (promoted, took) = block(|| rc.wait_promoted(slot, master, Duration::from_secs(30)));
    eprintln!("killed {master}; {promoted} promoted after {took:?}");
    // Until the old master rejoins as a replica the new one has none, and
    // a table write cannot be confirmed (`WAIT 1`): bring it back.
    block(|| rc.restart(master));
    // Settled: the manager leads, its last store write went through, and
    // the proxy holds its version. (An operator command given while the
    // lease is being lost does not outlive the term: the next term starts
    // from the store's settings.)
    let lead = eventually(
        Duration::from_secs(60),
        "the manager leads after the failover, the store written and the proxy on its version",
        || async {
            let settled = || async {
                let v = s.view().await?;
                let lead = s.leading().await?;
                let ok = v["metadata_error"].is_null() && s.proxy_version().await? == lead;
                ok.then_some(lead)
            };
            // And still so a lease later, in the same term: a lease that
            // was to run out during the failover has.
            let first = settled().await?;
            tokio::time::sleep(Duration::from_millis(LEASE_MS)).await;
            let then = settled().await?;
            (then.0 == first.0).then_some(then)
        },
    )
    .await;
    assert!(
        lead.0 >= epoch,
        "the epoch never goes back: {lead:?} after {epoch}"
    );

    // 3. The next version reaches the proxy, through the subscription it
    // took on another node (its re-read interval is ten minutes).
    s.pin("UK/BETA", &["a", "b"]).await;
    let v2 = s
        .proxy_on(
            "UK/BETA",
            &["a", "b"],
            "the proxy on the table after the failover",
            Duration::from_secs(60),
        )
        .await;
    eprintln!(
        "proxy on {v2:?} {} ms after the kill",
        t0.elapsed().as_millis()
    );
    assert!(v2 > v1);
    assert!(same_nodes(
        &s.table().await.unwrap(),
        "UK/ALPHA",
        &["a", "e"]
    ));
    // And once more, now that the subscription is settled.
    s.pin("UK/ALPHA", &["b", "e"]).await;
    let v3 = s
        .proxy_on(
            "UK/ALPHA",
            &["b", "e"],
            "the proxy on the next table",
            Duration::from_secs(20),
        )
        .await;
    assert!(v3 > v2);
    let _ = stop_tx.send(true);
    watcher.await.unwrap();
    let seen = seen.lock().clone();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "a version went backwards on the proxy: {seen:?}"
    );
    assert!(
        seen.contains(&v2) || seen.iter().any(|v| *v > v2),
        "{seen:?}"
    );

    // 4. Fencing holds on the promoted master: a write of an older epoch
    // is refused and the store keeps the leader's table.
    let mut conn = metadata::connect(&url).await.unwrap();
    let stale = TableUpdate::full(
        AssignmentVersion::new(lead.0 - 1, u64::MAX / 2),
        Default::default(),
    );
    let full = || serde_json::to_vec(&stale).map_err(|e| e.to_string());
    let r = metadata::publish_table(&mut conn, &keys, stale.version, &full, None, "stale")
        .await
        .unwrap();
    assert!(matches!(r, Published::Fenced(_)), "{r:?}");
    let t = metadata::read_table(&mut conn, &keys)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (t.version.epoch, t.version.counter),
        s.leading().await.unwrap()
    );

    // 5. A proxy restarted reads the current table.
    drop(proxy.take());
    let _restarted = s.proxy("proxy-restarted");
    let now = s.leading().await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the restarted proxy on the current table",
        || async { (s.proxy_version().await? == now).then_some(()) },
    )
    .await;
    assert!(same_nodes(
        &s.table().await.unwrap(),
        "UK/ALPHA",
        &["b", "e"]
    ));
    s.manager.assert_running();
}
