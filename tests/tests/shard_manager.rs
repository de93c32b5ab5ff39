//! The shard manager end to end, with real processes: two proxies, the
//! forecaster (with the manager), the sync scheduler, three reference nodes
//! on Redis caches, Redis as the metadata store and PostgreSQL as the
//! provider.
//!
//! 1. A demand rise on one shard, scripted into the sales history the
//!    forecaster reads (the same hours every day, so the model sees it
//!    coming): the forecast crosses the shard's threshold, the manager
//!    pre-fetches the shard to a third node, and only once the copy is warm
//!    routes to it. Both proxies move to the new version; the rise then
//!    arrives and is served from warm caches with zero failures.
//! 2. Dry run: a pin is planned and shown, nothing changes.
//! 3. An operator drains a node under load: every replica moves off it
//!    make-before-break, with zero failed requests.
//! 4. A node is killed under load: its shards are re-replicated from the
//!    provider to restore the replication factor; zero failed GETs once
//!    it is out of the table.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use system::{
    assignment_version, bin, catalog, eventually, free_port, get_json, load, metric,
    nodes_on_ports, workspace_root, LoadStats, Postgres, Proc, Redis,
};

const SPIKE_SHARD: &str = "UK/SEASONAL";
const PREFIX: &str = "e2e";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:00:00` of a UTC hour index.
fn ds(hour: i64) -> String {
    let days = hour.div_euclid(24);
    // H. Hinnant's civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02} {:02}:00:00", hour.rem_euclid(24))
}

/// 60 days of hourly history: every shard quiet, except the spike shard
/// whose demand jumps at this hour of day and the next, every day.
fn write_history(path: &Path, shards: &[String]) {
    let now_h = now_ms().div_euclid(3_600_000);
    let spike_hours = [now_h.rem_euclid(24), (now_h + 1).rem_euclid(24)];
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "shard_id,ds,lines").unwrap();
    for s in shards {
        for h in now_h - 60 * 24..now_h {
            let v = if s == SPIKE_SHARD && spike_hours.contains(&h.rem_euclid(24)) {
                40_000
            } else {
                20
            };
            writeln!(f, "{s},{},{v}", ds(h)).unwrap();
        }
    }
}

struct Stack {
    _dir: tempfile::TempDir,
    _pg: Postgres,
    redis: Redis,
    nodes: BTreeMap<String, Proc>,
    _sync: Proc,
    forecaster: Proc,
    fc: String,
    proxies: Vec<(u16, u16, Proc)>,
    shards: Vec<String>,
    client: reqwest::Client,
}

impl Stack {
    async fn start() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let root = workspace_root();
        let pg = Postgres::start();
        let redis = Redis::start();
        // Provider seeded from the project's catalog.
        let ok = std::process::Command::new(bin("shardcast-sync"))
            .args(["load", "--provider", &pg.url(), "--catalog"])
            .arg(root.join("data/online_retail/catalog.csv.gz"))
            .current_dir(&root)
            .status()
            .expect("shardcast-sync load");
        assert!(ok.success(), "seeding the provider failed");

        let node_names = ["node-a", "node-b", "node-c"];
        let node_ports: Vec<u16> = node_names.iter().map(|_| free_port()).collect();
        let mut nodes = BTreeMap::new();
        for (n, p) in node_names.iter().zip(&node_ports) {
            let listen = format!("127.0.0.1:{p}");
            nodes.insert(
                n.to_string(),
                Proc::spawn(
                    n,
                    d,
                    &bin("shardcast-sync"),
                    &[
                        "node",
                        "--name",
                        n,
                        "--listen",
                        &listen,
                        "--provider",
                        &pg.url(),
                        "--cache",
                        &redis.url(),
                        "--prefix",
                        n,
                    ],
                ),
            );
        }

        let fc_port = free_port();
        let sync_port = free_port();
        // One topology every process reads: the demo's, on these nodes'
        // ports, with a threshold on the spike shard.
        let mut topology = std::fs::read_to_string(root.join("conf/topology.toml"))
            .unwrap()
            .replace(
                &format!("id = \"{SPIKE_SHARD}\"\n"),
                &format!("id = \"{SPIKE_SHARD}\"\nthreshold = 2.0\n"),
            );
        topology = nodes_on_ports(&topology, &node_ports);
        let topology_file = d.join("topology.toml");
        std::fs::write(&topology_file, &topology).unwrap();
        // Two proxies, one config each (only the listeners differ).
        let demo = std::fs::read_to_string(root.join("conf/proxy-demo.toml")).unwrap();
        let mut proxy_ports = Vec::new();
        let mut proxy_files = Vec::new();
        for i in 0..2 {
            let (hp, ap) = (free_port(), free_port());
            let mut t = demo
                .replace("127.0.0.1:8080", &format!("127.0.0.1:{hp}"))
                .replace("127.0.0.1:9901", &format!("127.0.0.1:{ap}"))
                .replace("127.0.0.1:9300", &format!("127.0.0.1:{fc_port}"))
                .replace(
                    "../data/online_retail/catalog.csv.gz",
                    &root
                        .join("data/online_retail/catalog.csv.gz")
                        .display()
                        .to_string(),
                );
            t.push_str(&format!(
                "\n[control]\nmetadata = \"{}\"\nprefix = \"{PREFIX}\"\npoll_ms = 1000\n",
                redis.url()
            ));
            let f = d.join(format!("proxy-{i}.toml"));
            std::fs::write(&f, t).unwrap();
            proxy_ports.push((hp, ap));
            proxy_files.push(f);
        }
        let shards: Vec<String> = topology
            .lines()
            .filter_map(|l| l.strip_prefix("id = \"").and_then(|l| l.strip_suffix('"')))
            .map(str::to_string)
            .collect();
        assert_eq!(shards.len(), 14, "the demo config's 14 shards");

        // Sync: the provider into each node's Redis cache.
        let mut sync_toml = format!(
            "control = \"127.0.0.1:{sync_port}\"\ncontrol_token = \"sync-s3cret\"\ntopology = \"{}\"\n[provider]\nurl = \"{}\"\n\
             [transfer]\nbandwidth_bytes_per_s = 50000000\nconcurrency = 4\nbatch_rows = 2000\n\
             poll_interval_ms = 1000\nstate_file = \"{}\"\n",
            topology_file.display(),
            pg.url(),
            d.join("sync-state.json").display()
        );
        for n in node_names {
            sync_toml.push_str(&format!(
                "[[nodes]]\nname = \"{n}\"\ncache = \"{}\"\nprefix = \"{n}\"\n",
                redis.url()
            ));
        }
        std::fs::write(d.join("sync.toml"), sync_toml).unwrap();
        let sync_cfg = d.join("sync.toml").display().to_string();
        let sync = Proc::spawn(
            "sync",
            d,
            &bin("shardcast-sync"),
            &["serve", "--config", &sync_cfg],
        );

        // Forecaster + manager.
        write_history(&d.join("history.csv"), &shards);
        let fc_toml = format!(
            "listen = \"127.0.0.1:{fc_port}\"\n\
             [model]\nhourly = \"{m}/shardcast_hourly.json\"\ndaily = \"{m}/shardcast_daily.json\"\n\
             [planner]\ncycle_s = 1\n\
             [feeds.history]\nsource = \"{h}\"\nid_col = \"shard_id\"\ntime_col = \"ds\"\nvalue_col = \"lines\"\nalign = \"as_is\"\n\
             [manager]\ntopology = \"{p}\"\nmetadata = \"{redis}\"\nprefix = \"{PREFIX}\"\n\
             sync = \"http://127.0.0.1:{sync_port}\"\nsync_token = \"sync-s3cret\"\n\
             interval_ms = 300\nchurn_budget = 3\ndrain_ms = 1000\nobserve_window_s = 5\n\
             health_timeout_ms = 300\nfail_after = 2\n",
            m = root.join("forecaster/models").display(),
            h = d.join("history.csv").display(),
            p = topology_file.display(),
            redis = redis.url(),
        );
        std::fs::write(d.join("forecaster.toml"), fc_toml).unwrap();
        let fc_cfg = d.join("forecaster.toml").display().to_string();
        let forecaster = Proc::spawn(
            "forecaster",
            d,
            &bin("shardcast-forecaster"),
            &["--config", &fc_cfg],
        );

        let mut proxies = Vec::new();
        for (i, ((hp, ap), f)) in proxy_ports.iter().zip(&proxy_files).enumerate() {
            let f = f.display().to_string();
            let p = Proc::spawn(
                &format!("proxy-{i}"),
                d,
                &bin("shardcast-proxy"),
                &["-c", &f],
            );
            proxies.push((*hp, *ap, p));
        }
        let client = reqwest::Client::new();
        let mut s = Stack {
            _dir: dir,
            _pg: pg,
            redis,
            nodes,
            _sync: sync,
            forecaster,
            fc: format!("http://127.0.0.1:{fc_port}"),
            proxies,
            shards,
            client,
        };
        for (_, ap, _) in &s.proxies {
            let url = format!("http://127.0.0.1:{ap}/ready");
            let c = s.client.clone();
            eventually(Duration::from_secs(60), "proxy ready", || {
                let (c, url) = (c.clone(), url.clone());
                async move {
                    c.get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                }
            })
            .await;
        }
        s.check_running();
        s
    }

    fn check_running(&mut self) {
        self.forecaster.assert_running();
        for (_, _, p) in &mut self.proxies {
            p.assert_running();
        }
    }

    async fn manager(&self) -> Value {
        get_json(&self.client, &format!("{}/manager", self.fc))
            .await
            .expect("GET /manager")
    }

    async fn proxy_table(&self, i: usize) -> Option<Value> {
        get_json(
            &self.client,
            &format!("http://127.0.0.1:{}/admin/table", self.proxies[i].1),
        )
        .await
    }

    /// Wait until the manager's assignment satisfies `pred` and both
    /// proxies run its assignment version; returns (manager view, seconds from the
    /// manager reaching it to the last proxy having it).
    async fn settle(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, f64) {
        let view = eventually(timeout, what, || async {
            let v = get_json(&self.client, &format!("{}/manager", self.fc)).await?;
            pred(&v).then_some(v)
        })
        .await;
        let t0 = Instant::now();
        let version = assignment_version(&view["assignment_version"]).unwrap();
        eventually(
            Duration::from_secs(10),
            "both proxies on the manager's version",
            || async {
                for i in 0..self.proxies.len() {
                    let t = self.proxy_table(i).await?;
                    if assignment_version(&t["assignment_version"])? < version {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        (view, t0.elapsed().as_secs_f64())
    }

    fn urls_for(&self, skus: &[String], region: &str) -> Vec<String> {
        let mut v = Vec::new();
        for (hp, _, _) in &self.proxies {
            for s in skus {
                v.push(format!(
                    "http://127.0.0.1:{hp}/inventory/{s}?region={region}"
                ));
            }
        }
        v
    }
}

fn replicas(view: &Value, shard: &str) -> Vec<(String, String)> {
    view["shards"][shard]["replicas"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["node"].as_str().unwrap_or("").to_string(),
                        r["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn serving(view: &Value, shard: &str) -> BTreeSet<String> {
    replicas(view, shard)
        .into_iter()
        .filter(|(_, s)| s == "serving")
        .map(|(n, _)| n)
        .collect()
}

async fn run_load(
    urls: Vec<String>,
    workers: usize,
    during: impl std::future::Future<Output = ()>,
) -> LoadStats {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let h = tokio::spawn(load(urls, workers, rx));
    during.await;
    let _ = tx.send(true);
    h.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forecast_prefetch_migration_and_node_loss_with_zero_failed_requests() {
    let mut stack = Stack::start().await;
    let cat = catalog();
    let spike_skus: Vec<String> = cat
        .iter()
        .filter(|(_, c)| c == "SEASONAL")
        .map(|(s, _)| s.clone())
        .take(200)
        .collect();
    let mut all_skus: Vec<String> = Vec::new();
    let mut per_cat: BTreeMap<&str, usize> = BTreeMap::new();
    for (s, c) in &cat {
        let n = per_cat.entry(c.as_str()).or_default();
        if *n < 30 {
            *n += 1;
            all_skus.push(s.clone());
        }
    }

    // 1. The forecast crosses the threshold: pre-fetch to a third node.
    let (view, converge_s) = stack
        .settle(
            "the spike shard pre-fetched to a third node and serving",
            Duration::from_secs(120),
            |v| serving(v, SPIKE_SHARD).len() == 3,
        )
        .await;
    stack.check_running();
    let order = view["orders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["shard"] == SPIKE_SHARD && o["adds_replica"] == true && o["state"] == "done")
        .cloned()
        .unwrap_or_else(|| panic!("no finished add order for {SPIKE_SHARD}: {view:#}"));
    assert_eq!(order["reason"], "forecast", "{order:#}");
    let finished = order["finished_unix_ms"].as_i64().unwrap();
    let decisions = get_json(
        &stack.client,
        &format!("{}/manager/decisions?limit=500", stack.fc),
    )
    .await
    .unwrap();
    assert!(
        decisions
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["action"] == "add"
                && d["shard"] == SPIKE_SHARD
                && d["reason"] == "forecast"),
        "the add is logged with its reason: {decisions:#}"
    );
    // The same, counted on the forecaster's /metrics.
    let text = system::get_text(&stack.client, &format!("{}/metrics", stack.fc)).await;
    let at = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
    assert!(at("shardcast_manager_rounds_total") >= 1.0);
    assert!(at("shardcast_manager_round_seconds_count") >= 1.0);
    assert!(at("shardcast_manager_decisions_total{action=\"add\",reason=\"forecast\"}") >= 1.0);
    assert!(at("shardcast_manager_orders_total{outcome=\"done\"}") >= 1.0);
    assert_eq!(at("shardcast_manager_leader"), 1.0);
    assert!(at("shardcast_manager_epoch") >= 1.0);
    // The other shards stay at the replication factor (nothing predicted).
    for s in &stack.shards {
        if s != SPIKE_SHARD {
            assert_eq!(serving(&view, s).len(), 2, "{s}: {view:#}");
        }
    }
    eprintln!("proxies converged {converge_s:.3} s after the manager's table changed");

    // The rise arrives after the copy is warm: served by all three
    // replicas, from cache, with no failures.
    let rise_start = now_ms();
    assert!(
        finished < rise_start,
        "the pre-fetch finished before the rise"
    );
    let urls = stack.urls_for(&spike_skus, "UK");
    let rise = run_load(urls, 8, tokio::time::sleep(Duration::from_secs(4))).await;
    eprintln!("rise: {rise:?}");
    assert_eq!(
        rise.failed, 0,
        "failed requests during the rise: {:?}",
        rise.errors
    );
    assert!(rise.ok > 100, "{rise:?}");
    assert_eq!(
        rise.by_node.len(),
        3,
        "all three replicas serve: {:?}",
        rise.by_node
    );
    assert!(rise.hit_rate() > 0.9, "served from warm caches: {rise:?}");

    // Metadata store: the table, the version, per-shard and per-node records.
    let mut r = redis::Client::open(stack.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let version: String = redis::cmd("GET")
        .arg(format!("{PREFIX}:version"))
        .query_async(&mut r)
        .await
        .unwrap();
    let version = assignment_version(&serde_json::from_str(&version).unwrap()).unwrap();
    assert!(version >= assignment_version(&view["assignment_version"]).unwrap());
    let rec: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{PREFIX}:shard:{SPIKE_SHARD}"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(rec["replicas"].contains("serving"), "{rec:?}");
    let cursors: BTreeMap<String, u64> = serde_json::from_str(&rec["cursors"]).unwrap();
    assert_eq!(cursors.len(), 3, "a sync cursor per replica: {rec:?}");
    assert!(cursors.values().all(|&c| c > 0), "{rec:?}");

    // 2. Dry run: a pin is planned and shown, nothing is done.
    let put = |path: String, body: Value| {
        let c = stack.client.clone();
        let url = format!("{}{path}", stack.fc);
        async move {
            let r = c.put(&url).json(&body).send().await.unwrap();
            assert!(
                r.status().is_success(),
                "PUT {url}: {}",
                r.text().await.unwrap_or_default()
            );
        }
    };
    let del = |path: String| {
        let c = stack.client.clone();
        let url = format!("{}{path}", stack.fc);
        async move {
            let r = c.delete(&url).send().await.unwrap();
            assert!(r.status().is_success(), "DELETE {url}");
        }
    };
    let before = stack.manager().await["assignment_version"].clone();
    put(
        "/manager/dry-run".into(),
        serde_json::json!({"enabled": true}),
    )
    .await;
    let pin_shard = "INTL/LIGHTING";
    let on = serving(&stack.manager().await, pin_shard);
    let off: String = ["node-a", "node-b", "node-c"]
        .into_iter()
        .find(|n| !on.contains(*n))
        .unwrap()
        .to_string();
    put(
        format!("/manager/pins/{}", pin_shard.replace('/', "%2F")),
        serde_json::json!({"nodes": [off]}),
    )
    .await;
    let plan = eventually(
        Duration::from_secs(10),
        "the dry-run plan shows the pin",
        || async {
            let p = get_json(&stack.client, &format!("{}/manager/plan", stack.fc)).await?;
            p["actions"]
                .as_array()?
                .iter()
                .any(|a| {
                    a["action"] == "add"
                        && a["shard"] == pin_shard
                        && a["node"] == off.as_str()
                        && a["reason"] == "operator"
                })
                .then_some(p)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = stack.manager().await;
    assert_eq!(
        after["assignment_version"], before,
        "dry run changed the table: {plan:#}"
    );
    assert_eq!(serving(&after, pin_shard), on);
    del(format!("/manager/pins/{}", pin_shard.replace('/', "%2F"))).await;
    put(
        "/manager/dry-run".into(),
        serde_json::json!({"enabled": false}),
    )
    .await;

    // 3. Drain node-a under load: make-before-break moves, zero failures.
    let urls = stack.urls_for(&all_skus, "UK");
    let drain = run_load(urls.clone(), 6, async {
        put("/manager/drain/node-a".into(), Value::Null).await;
        stack
            .settle("every replica off node-a", Duration::from_secs(90), |v| {
                v["shards"].as_object().is_some_and(|m| {
                    m.keys().all(|s| {
                        let r = replicas(v, s);
                        !r.iter().any(|(n, _)| n == "node-a")
                            && r.iter().all(|(_, st)| st == "serving")
                    })
                })
            })
            .await;
    })
    .await;
    eprintln!("drain: {drain:?}");
    assert_eq!(
        drain.failed, 0,
        "failed requests while moving off node-a: {:?}",
        drain.errors
    );
    assert!(drain.ok > 100);
    del("/manager/drain/node-a".into()).await;
    // Back in use: the spike shard returns to three replicas.
    stack
        .settle(
            "the spike shard back on three nodes",
            Duration::from_secs(60),
            |v| serving(v, SPIKE_SHARD).len() == 3,
        )
        .await;
    stack.check_running();

    // 4. Kill node-b under load: re-replicated to restore the factor.
    let view = stack.manager().await;
    let on_b: Vec<String> = stack
        .shards
        .iter()
        // shards left below the replication factor (the spike shard keeps two)
        .filter(|s| serving(&view, s).contains("node-b") && serving(&view, s).len() == 2)
        .cloned()
        .collect();
    assert!(!on_b.is_empty());
    let kill_phase = run_load(urls.clone(), 6, async {
        stack.nodes.get_mut("node-b").unwrap().kill9();
        stack
            .settle(
                "node-b's shards re-replicated",
                Duration::from_secs(90),
                |v| {
                    v["nodes"]["node-b"]["health"] == "down"
                        && v["shards"].as_object().is_some_and(|m| {
                            m.keys().all(|s| {
                                let sv = serving(v, s);
                                let r = replicas(v, s);
                                sv.len() >= 2 && !r.iter().any(|(n, _)| n == "node-b")
                            })
                        })
                },
            )
            .await;
    })
    .await;
    eprintln!("while node-b died and was replaced: {kill_phase:?}");
    let decisions = get_json(
        &stack.client,
        &format!("{}/manager/decisions?limit=500", stack.fc),
    )
    .await
    .unwrap();
    for s in &on_b {
        assert!(
            decisions
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["action"] == "add"
                    && d["shard"] == s.as_str()
                    && d["reason"] == "failure"),
            "{s} re-replicated for a failure: {decisions:#}"
        );
    }
    // Once it is out of the table: zero failed GETs.
    let after = run_load(urls, 6, tokio::time::sleep(Duration::from_secs(3))).await;
    eprintln!("after node-b left the table: {after:?}");
    assert_eq!(
        after.failed, 0,
        "failed GETs after node-b was ejected: {:?}",
        after.errors
    );
    assert!(after.ok > 100);
    assert!(!after.by_node.contains_key("node-b"));
    stack.check_running();
}
