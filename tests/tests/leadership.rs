//! High availability with fencing (DESIGN.md, "Managers"), with real
//! processes: two `shardcast-forecaster` managers on one Redis prefix, the
//! sync scheduler (SQLite provider, Redis caches), two `shardcast-proxy` —
//! one the managers PUT to, one that follows the metadata store — in front
//! of stand-in nodes that answer every request 200.
//!
//! 1. Exactly one manager leads; `kill -9` it and the standby leads within
//!    two lease periods, publishes at a higher epoch, both proxies follow,
//!    and a constant load through the proxies sees no failed request.
//! 2. A leader paused (SIGSTOP) past its lease: the standby takes over;
//!    woken (SIGCONT), the old leader writes nothing, steps down, and
//!    every target refuses its epoch (the store's publish script, a
//!    proxy's 409, sync's 409). No order runs twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardcast_forecaster::manager::metadata::{self, Published};
use shardmap::contract::MetadataKeys;
use shardmap::{AssignmentVersion, TableUpdate};
use system::{
    assignment_version, bin, control_section, eventually, free_port, get_json, load, metric,
    proxy_toml, topology_toml, FakeNode, Proc, Redis,
};

const PREFIX: &str = "ha";
const LEASE_MS: u64 = 800;
const SYNC_TOKEN: &str = "sync-s3cret";

fn signal(p: &Proc, sig: &str) {
    let pid = p.pid().expect("running");
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

struct Stack {
    dir: tempfile::TempDir,
    redis: Redis,
    _nodes: Vec<FakeNode>,
    _sync: Proc,
    sync: String,
    proxies: Vec<Proc>,
    /// Admin URLs: `pushed` (the managers PUT to it), then `follower`.
    admins: Vec<String>,
    /// Traffic URLs of both proxies.
    traffic: Vec<String>,
    /// The topology file the proxies, sync and the managers read.
    topology_file: String,
    client: reqwest::Client,
}

/// A manager: its process and API.
struct Manager {
    proc: Proc,
    url: String,
}

impl Stack {
    async fn start() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let redis = Redis::start();
        let nodes = vec![
            FakeNode::start().await,
            FakeNode::start().await,
            FakeNode::start().await,
        ];
        // The topology every process reads.
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
        let proxy_toml = |hp: u16, ap: u16, metadata: Option<&str>| {
            let control = control_section(metadata, PREFIX, 300);
            proxy_toml(hp, ap, &control, &[("A1", "ALPHA"), ("B1", "BETA")])
        };
        let mut proxies = Vec::new();
        let mut admins = Vec::new();
        let mut traffic = Vec::new();
        for (name, metadata) in [("pushed", None), ("follower", Some(redis.url()))] {
            let (hp, ap) = (free_port(), free_port());
            let f = d.join(format!("{name}.toml"));
            std::fs::write(&f, proxy_toml(hp, ap, metadata.as_deref())).unwrap();
            proxies.push(Proc::spawn(
                name,
                d,
                &bin("shardcast-proxy"),
                &["-c", &f.display().to_string()],
            ));
            admins.push(format!("http://127.0.0.1:{ap}"));
            for sku in ["A1", "B1"] {
                traffic.push(format!("http://127.0.0.1:{hp}/inventory/{sku}?region=UK"));
            }
        }
        // Sync: an empty SQLite provider (orders finish at once), the
        // nodes' caches in Redis.
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
                "[[nodes]]\nname = \"{n}\"\ncache = \"{}\"\nprefix = \"{n}\"\n",
                redis.url()
            ));
        }
        std::fs::write(d.join("sync.toml"), sync_toml).unwrap();
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
        let s = Stack {
            redis,
            _nodes: nodes,
            _sync: sync,
            sync: format!("http://127.0.0.1:{sync_port}"),
            proxies,
            admins,
            traffic,
            topology_file: topology.display().to_string(),
            client: reqwest::Client::new(),
            dir,
        };
        for i in 0..2 {
            eventually(Duration::from_secs(30), "proxy answers", || async {
                s.table(i).await.map(|_| ())
            })
            .await;
        }
        eventually(Duration::from_secs(30), "sync answers", || async {
            s.sync_orders().await.map(|_| ())
        })
        .await;
        s
    }

    fn manager(&self, name: &str) -> Manager {
        let d = self.dir.path();
        let port = free_port();
        let root = system::workspace_root();
        let toml = format!(
            "listen = \"127.0.0.1:{port}\"\n\
             [model]\nhourly = \"{m}/shardcast_hourly.json\"\ndaily = \"{m}/shardcast_daily.json\"\n\
             [planner]\ncycle_s = 1\n\
             [manager]\ntopology = \"{p}\"\nprefix = \"{PREFIX}\"\nsync = \"{sync}\"\nsync_token = \"{SYNC_TOKEN}\"\n\
             metadata = \"{redis}\"\nproxies = [\"{pushed}\"]\ninterval_ms = 200\nlease_ms = {LEASE_MS}\n\
             health_timeout_ms = 300\nfail_after = 1\n",
            m = root.join("forecaster/models").display(),
            p = self.topology_file,
            sync = self.sync,
            redis = self.redis.url(),
            pushed = self.admins[0],
        );
        let f = d.join(format!("{name}.toml"));
        std::fs::write(&f, toml).unwrap();
        Manager {
            proc: Proc::spawn(
                name,
                d,
                &bin("shardcast-forecaster"),
                &["--config", &f.display().to_string()],
            ),
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn table(&self, i: usize) -> Option<Value> {
        get_json(&self.client, &format!("{}/admin/table", self.admins[i])).await
    }

    async fn view(&self, m: &Manager) -> Option<Value> {
        get_json(&self.client, &format!("{}/manager", m.url)).await
    }

    async fn metrics(&self, m: &Manager) -> String {
        let r = self
            .client
            .get(format!("{}/metrics", m.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    }

    async fn sync_orders(&self) -> Option<Vec<Value>> {
        let r = self
            .client
            .get(format!("{}/orders", self.sync))
            .bearer_auth(SYNC_TOKEN)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Wait until exactly one of `ms` leads and the others see it as the
    /// holder; the leader's index and epoch.
    async fn one_leader(&self, ms: &[&Manager], within: Duration) -> (usize, u64) {
        eventually(within, "exactly one manager leads", || async {
            let mut views = Vec::new();
            for m in ms {
                views.push(self.view(m).await?);
            }
            let leaders: Vec<usize> = (0..views.len())
                .filter(|&i| views[i]["leader"] == json!(true))
                .collect();
            let [l] = leaders[..] else { return None };
            let id = &views[l]["lease"]["id"];
            views
                .iter()
                .all(|v| &v["holder"] == id)
                .then(|| (l, views[l]["epoch"].as_u64().unwrap()))
        })
        .await
    }

    /// Both proxies on an assignment of `epoch` (or later), delivered.
    async fn proxies_on(&self, epoch: u64, within: Duration) {
        eventually(within, "both proxies on the leader's epoch", || async {
            for i in 0..2 {
                let t = self.table(i).await?;
                if assignment_version(&t["assignment_version"])?.0 < epoch {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }

    /// No (shard, node) copied twice: at most one finished order each.
    async fn no_order_twice(&self) -> Vec<Value> {
        let orders = self.sync_orders().await.expect("sync orders");
        let mut done: BTreeMap<(String, String), u64> = BTreeMap::new();
        for o in &orders {
            if o["state"] == "done" {
                *done
                    .entry((o["shard"].to_string(), o["node"].to_string()))
                    .or_default() += 1;
            }
        }
        assert!(
            done.values().all(|&n| n == 1),
            "an order ran twice: {done:?} {orders:#?}"
        );
        orders
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_leads_within_two_leases_after_the_leader_is_killed() {
    let s = Stack::start().await;
    let mut ms = [s.manager("manager-1"), s.manager("manager-2")];
    let (l, epoch) = s
        .one_leader(&[&ms[0], &ms[1]], Duration::from_secs(30))
        .await;
    s.proxies_on(epoch, Duration::from_secs(20)).await;
    // The leader's orders reached sync with its epoch.
    eventually(
        Duration::from_secs(20),
        "the leader's orders in sync",
        || async {
            let o = s.sync_orders().await?;
            o.iter().any(|o| o["epoch"] == json!(epoch)).then_some(())
        },
    )
    .await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(load(s.traffic.clone(), 4, stop_rx));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let standby = 1 - l;
    let t0 = Instant::now();
    ms[l].proc.kill9();
    let view = eventually(Duration::from_secs(10), "the standby leads", || async {
        let v = s.view(&ms[standby]).await?;
        (v["leader"] == json!(true)).then_some(v)
    })
    .await;
    let failover = t0.elapsed();
    let new_epoch = view["epoch"].as_u64().unwrap();
    s.proxies_on(new_epoch, Duration::from_secs(10)).await;
    let converged = t0.elapsed();
    eprintln!(
        "failover: {} ms (lease {LEASE_MS} ms); both proxies on epoch {new_epoch} after {} ms",
        failover.as_millis(),
        converged.as_millis()
    );
    assert!(new_epoch > epoch, "a new term, a new epoch: {view:#}");
    assert!(
        failover <= Duration::from_millis(2 * LEASE_MS),
        "failover took {failover:?}, more than two leases"
    );
    // The store holds the new leader's table.
    let mut conn = redis::Client::open(s.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: String = redis::cmd("GET")
        .arg(format!("{PREFIX}:version"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        assignment_version(&serde_json::from_str(&stored).unwrap())
            .unwrap()
            .0,
        new_epoch
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let stats = traffic.await.unwrap();
    assert!(stats.ok > 50, "{stats:?}");
    assert_eq!(
        stats.failed, 0,
        "failed requests during failover: {stats:?}"
    );
    eprintln!(
        "load during failover: {} ok, {} failed",
        stats.ok, stats.failed
    );
    ms[standby].proc.assert_running();
    s.no_order_twice().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_paused_past_its_lease_is_fenced_and_steps_down() {
    let mut s = Stack::start().await;
    let mut ms = [s.manager("manager-1"), s.manager("manager-2")];
    let (l, epoch) = s
        .one_leader(&[&ms[0], &ms[1]], Duration::from_secs(30))
        .await;
    s.proxies_on(epoch, Duration::from_secs(20)).await;
    let standby = 1 - l;

    signal(&ms[l].proc, "-STOP");
    let view = eventually(Duration::from_secs(10), "the standby leads", || async {
        let v = s.view(&ms[standby]).await?;
        (v["leader"] == json!(true)).then_some(v)
    })
    .await;
    let new_epoch = view["epoch"].as_u64().unwrap();
    assert!(new_epoch > epoch);
    s.proxies_on(new_epoch, Duration::from_secs(10)).await;
    // Paused well past its lease, then woken.
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
    signal(&ms[l].proc, "-CONT");

    // Its view says so as soon as its lease has lapsed on its own clock;
    // the step-down (logged, counted) follows when its lease loop runs.
    let (old, why, text) = eventually(
        Duration::from_secs(10),
        "the old leader steps down",
        || async {
            let v = s.view(&ms[l]).await?;
            let why = ms[l]
                .proc
                .log_text()
                .lines()
                .find(|l| l.contains("stepping down"))?
                .to_string();
            let text = s.metrics(&ms[l]).await;
            let counted = metric(&text, "shardcast_manager_step_downs_total")? >= 1.0;
            (v["leader"] == json!(false) && counted).then_some((v, why, text))
        },
    )
    .await;
    assert_eq!(old["epoch"], json!(epoch), "{old:#}");
    eprintln!("old leader: {why}");
    assert_eq!(metric(&text, "shardcast_manager_leader"), Some(0.0));
    // The new leader keeps leading; the proxies stay on its epoch.
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
    let (again, e) = s
        .one_leader(&[&ms[0], &ms[1]], Duration::from_secs(10))
        .await;
    assert_eq!((again, e), (standby, new_epoch));
    for i in 0..2 {
        let t = s.table(i).await.unwrap();
        assert_eq!(
            assignment_version(&t["assignment_version"]).unwrap().0,
            new_epoch
        );
    }

    // Every target refuses the old epoch. The store's publish script:
    let mut conn = metadata::connect(&s.redis.url()).await.unwrap();
    let stale = TableUpdate::full(
        AssignmentVersion::new(epoch, u64::MAX / 2),
        Default::default(),
    );
    let keys = MetadataKeys::new(PREFIX);
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
        t.version.epoch, new_epoch,
        "the store kept the new leader's table"
    );
    // ... and its record write: the operator settings stay the new leader's.
    let before: Option<Vec<u8>> = redis::cmd("GET")
        .arg(keys.operator())
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = metadata::write_state(
        &mut conn,
        &keys,
        stale.version,
        &[],
        &[],
        b"{\"stale\":true}",
    )
    .await
    .unwrap();
    assert!(matches!(r, Published::Fenced(_)), "{r:?}");
    let after: Option<Vec<u8>> = redis::cmd("GET")
        .arg(keys.operator())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        after, before,
        "the store kept the new leader's operator settings"
    );
    // A proxy: 409 with the version it keeps.
    let r = s
        .client
        .put(format!("{}/admin/table", s.admins[0]))
        .json(&stale)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Sync: 409.
    let r = s
        .client
        .post(format!("{}/orders", s.sync))
        .bearer_auth(SYNC_TOKEN)
        .json(&json!({"shard": "UK/ALPHA", "node": "e", "epoch": epoch}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let why = r.text().await.unwrap();
    assert!(why.contains("epoch"), "{why}");

    for m in &mut ms {
        m.proc.assert_running();
    }
    for p in &mut s.proxies {
        p.assert_running();
    }
    let orders = s.no_order_twice().await;
    assert!(
        orders
            .iter()
            .all(|o| o["epoch"].as_u64() <= Some(new_epoch)),
        "{orders:#?}"
    );
}

/// An operator command is acknowledged only once the store holds it: the
/// leader answers 200 with the setting already in `<prefix>:operator`,
/// and a standby, which cannot write it, answers 503 rather than take a
/// command that the next term would never see.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_command_is_answered_once_the_store_holds_it() {
    let s = Stack::start().await;
    let ms = [s.manager("manager-1"), s.manager("manager-2")];
    let (l, _) = s
        .one_leader(&[&ms[0], &ms[1]], Duration::from_secs(30))
        .await;
    let keys = MetadataKeys::new(PREFIX);
    let mut conn = metadata::connect(&s.redis.url()).await.unwrap();
    let put = |m: &Manager, rps: f64| {
        let r = s
            .client
            .put(format!("{}/manager/thresholds/UK%2FBETA", m.url))
            .json(&json!({ "rps": rps }))
            .timeout(Duration::from_secs(15))
            .send();
        async move { r.await.unwrap() }
    };
    for rps in [123.5, 456.25] {
        let r = put(&ms[l], rps).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        // Read at once: no round has run since the answer.
        let stored: Option<String> = redis::cmd("GET")
            .arg(keys.operator())
            .query_async(&mut conn)
            .await
            .unwrap();
        let stored = stored.expect("operator settings in the store");
        assert!(
            stored.contains(&rps.to_string()),
            "the store holds {rps} when the command is answered: {stored}"
        );
    }
    let r = put(&ms[1 - l], 789.0).await;
    assert_eq!(r.status(), 503, "a standby cannot store a command");
    let why = r.text().await.unwrap();
    assert!(why.contains("not yet in the metadata store"), "{why}");
}
