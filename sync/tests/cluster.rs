//! Node caches on a real Redis Cluster (three masters, a replica each,
//! started by the testkit): pre-fetch from PostgreSQL into the cluster and
//! serve through a node; `kill -9` the master of a shard's slot in the
//! middle of a transfer, with and without the `WAIT` after each batch.
//! Each failover test checks, against the provider row by row, that the
//! cache ends equal to it, and, from a log of every batch the transfer
//! sent, that the version ranges that survived in the cache form one
//! unbroken chain from 0 to the cursor — each range applied exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use shardcast_sync::cache::{self, Applied, CacheError, ShardCache};
use shardcast_sync::config::default_shards;
use shardcast_sync::metrics::Metrics;
use shardcast_sync::model::{CacheBatch, ShardDef};
use shardcast_sync::node::{self, Node, NodeSettings};
use shardcast_sync::provider::{self, Change, ProviderFull};
use shardcast_sync::testkit::{self, eventually_async, spawn_listening, RedisCluster};
use shardcast_sync::transfer::{catch_up, no_errors, Progress, TokenBucket, TransferParams};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_shardcast-sync");

async fn start_pg_and_cluster() -> (testkit::Postgres, RedisCluster) {
    let pg = tokio::task::spawn_blocking(testkit::Postgres::start);
    let rc = tokio::task::spawn_blocking(RedisCluster::start);
    (pg.await.unwrap(), rc.await.unwrap())
}

fn shard(id: &str) -> ShardDef {
    default_shards().into_iter().find(|s| s.id == id).unwrap()
}

async fn get_json(c: &reqwest::Client, url: &str) -> (u16, String, serde_json::Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let xc = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, xc, r.json().await.unwrap())
}

/// Until the node has its catalog (before, every request takes the slow path).
async fn wait_ready(http: &reqwest::Client, base: &str) {
    eventually_async(Duration::from_secs(20), "node ready", || {
        let r = http.get(format!("{base}/ready")).send();
        async move { (r.await.ok()?.status() == 200).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_from_postgres_into_the_cluster_and_serve_through_a_node() {
    let (pg, rc) = start_pg_and_cluster().await;
    let p = provider::open(&pg.url()).await.unwrap();
    testkit::seed_catalog(p.as_ref()).await;
    let shards: Vec<ShardDef> = [
        "UK/LIGHTING",
        "UK/KITCHEN_DINING",
        "UK/HOME_DECOR_OTHER",
        "INTL/LIGHTING",
    ]
    .map(shard)
    .into();

    // The scheduler writes node-a's cache on the cluster…
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
control = "127.0.0.1:0"
[provider]
url = "{}"
[transfer]
batch_rows = 200
poll_interval_ms = 200
state_file = "state.json"
[[nodes]]
name = "node-a"
cache = "{}"
"#,
            pg.url(),
            rc.url()
        ),
    )
    .unwrap();
    let (sync, addrs) = spawn_listening(BIN, &["serve", "--config", config.to_str().unwrap()], 1);
    let control = format!("http://{}", addrs[0].1);
    let http = reqwest::Client::new();
    for s in &shards {
        let r = http
            .post(format!("{control}/orders"))
            .json(&serde_json::json!({"shard": s.id, "node": "node-a", "priority": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "order for {}", s.id);
    }
    eventually_async(Duration::from_secs(60), "every order done", || {
        let http = http.clone();
        let url = format!("{control}/orders");
        async move {
            let j: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
            let orders = j.as_array().or_else(|| j["orders"].as_array())?.clone();
            (orders.len() == 4 && orders.iter().all(|o| o["state"] == "done")).then_some(())
        }
    })
    .await;

    // …row by row what the provider holds, each shard in one slot, the
    // shards spread over the masters.
    let c = cache::open(&rc.url(), "node-a").await.unwrap();
    let mut masters = std::collections::BTreeSet::new();
    for s in &shards {
        testkit::cache_matches_provider(p.as_ref(), c.as_ref(), s)
            .await
            .unwrap();
        let slots: Vec<u16> = ["items", "cursor", "fills"]
            .iter()
            .map(|k| rc.slot(&format!("node-a:{{{}}}:{k}", s.id)))
            .collect();
        assert!(slots.iter().all(|s| *s == slots[0]), "{}: {slots:?}", s.id);
        masters.insert(rc.master_of(&format!("node-a:{{{}}}:cursor", s.id)));
    }
    assert!(masters.len() >= 2, "four shards on one master: {masters:?}");

    // A node in another process serves them from the cluster: a sku never
    // requested before is a hit.
    let (node, addrs) = spawn_listening(
        BIN,
        &[
            "node",
            "--name",
            "node-a",
            "--listen",
            "127.0.0.1:0",
            "--provider",
            &pg.url(),
            "--cache",
            &rc.url(),
        ],
        1,
    );
    let base = format!("http://{}", addrs[0].1);
    wait_ready(&http, &base).await;
    let snap = p.snapshot(&shards[0], 5000).await.unwrap();
    let row = snap.rows.iter().find(|r| r.item.is_some()).unwrap();
    let url = format!("{base}/inventory/{}?region={}", row.sku, row.region);
    let (status, xc, j) = get_json(&http, &url).await;
    assert_eq!((status, xc.as_str()), (200, "hit"), "{j}");
    assert_eq!(j["stock"], row.item.as_ref().unwrap().stock);
    assert_eq!(j["version"], row.version);
    drop(node);
    drop(sync);
}

/// One call of [`ShardCache::apply`] as the transfer saw it.
#[derive(Debug, Clone)]
struct Sent {
    from: u64,
    to: u64,
    rows: u64,
    outcome: Result<Applied, String>,
}

/// A cache that logs every batch written through it.
struct Recorder {
    inner: Arc<dyn ShardCache>,
    log: Mutex<Vec<Sent>>,
}

#[async_trait]
impl ShardCache for Recorder {
    async fn apply(&self, shard: &str, b: &CacheBatch) -> Result<Applied, CacheError> {
        let r = self.inner.apply(shard, b).await;
        self.log.lock().push(Sent {
            from: b.from,
            to: b.to,
            rows: (b.upserts.len() + b.deletes.len()) as u64,
            outcome: r.as_ref().map(|a| *a).map_err(|e| e.to_string()),
        });
        r
    }
    async fn get(&self, shard: &str, field: &str) -> Result<Option<Bytes>, CacheError> {
        self.inner.get(shard, field).await
    }
    async fn fill(
        &self,
        shard: &str,
        field: &str,
        value: Bytes,
        version: u64,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.inner.fill(shard, field, value, version, ttl).await
    }
    async fn evict(&self, shard: &str) -> Result<(), CacheError> {
        self.inner.evict(shard).await
    }
    async fn cursor(&self, shard: &str) -> Result<Option<u64>, CacheError> {
        self.inner.cursor(shard).await
    }
    async fn size(&self, shard: &str) -> Result<u64, CacheError> {
        self.inner.size(shard).await
    }
    async fn dump(&self, shard: &str) -> Result<Vec<(String, Bytes)>, CacheError> {
        self.inner.dump(shard).await
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

/// The batches that survived in the cache, read from the log: a batch the
/// cache applied (or, after a lost answer, reports already there with its
/// cursor at exactly the batch's end) extends the chain; a cursor found
/// *behind* the chain's end means the cache lost the batches past it —
/// items and cursor together — and the chain is cut back there.
#[derive(Debug, Default)]
struct Lineage {
    chain: Vec<(u64, u64, u64)>,
    /// `(chain end before, cursor found)` for every cut.
    cuts: Vec<(u64, u64)>,
    rows_lost: u64,
    replays: u64,
    errors: u64,
}

fn lineage(log: &[Sent]) -> Lineage {
    let mut l = Lineage::default();
    let end = |l: &Lineage| l.chain.last().map_or(0, |b| b.1);
    for s in log {
        match &s.outcome {
            Ok(Applied::Applied) => {
                assert_eq!(s.from, end(&l), "applied only where the cursor was: {s:?}");
                l.chain.push((s.from, s.to, s.rows));
            }
            Ok(Applied::AlreadyApplied { cursor }) => {
                l.replays += 1;
                if *cursor == s.to && s.from == end(&l) {
                    l.chain.push((s.from, s.to, s.rows));
                } else {
                    assert!(*cursor <= end(&l), "the cache is past this transfer: {s:?}");
                }
            }
            Ok(Applied::CursorMismatch { cursor }) => {
                let c = cursor.unwrap_or(0);
                let e = end(&l);
                assert!(c < e, "a mismatch only when the cache lost batches: {s:?}");
                assert!(
                    c == 0 || l.chain.iter().any(|b| b.1 == c),
                    "the cursor survived at a batch boundary ({c}): items and cursor lost together"
                );
                l.rows_lost += l.chain.iter().filter(|b| b.1 > c).map(|b| b.2).sum::<u64>();
                l.chain.retain(|b| b.1 <= c);
                l.cuts.push((e, c));
            }
            Err(_) => l.errors += 1,
        }
    }
    for w in l.chain.windows(2) {
        assert_eq!(w[0].1, w[1].0, "the chain has no gap or overlap");
    }
    l
}

struct Failover {
    /// Kill to promotion.
    took: Duration,
    lineage: Lineage,
    progress: Progress,
    elapsed: Duration,
}

/// Copy a large shard in small batches into a cluster cache through a
/// [`Recorder`], change rows while it runs, and in the middle `kill -9` the
/// master of the shard's slot. `pause_replica`: stop the replica first (so
/// the master acknowledges batches its replica never gets) and let it go
/// just before the kill. Ends when the transfer is done and checks the
/// cache against the provider and through a node. `in_flight`: batches
/// written before the first is answered; the log's [`lineage`] reads the
/// batches in the order they were sent, so it is only drawn for one at a
/// time (with more, a batch sent behind one being retried is refused by
/// the cursor check and shows as a mismatch without any loss).
async fn failover(wait: &str, pause_replica: bool, in_flight: usize) -> Failover {
    let sequential = in_flight == 1;
    let (pg, mut rc) = start_pg_and_cluster().await;
    let p: Arc<dyn ProviderFull> = provider::open(&pg.url()).await.unwrap();
    let cat = testkit::workspace_root().join("data/online_retail/catalog.csv.gz");
    shardcast_sync::load::load(p.as_ref(), &cat, 3, 20_000)
        .await
        .unwrap();
    let s = shard("UK/HOME_DECOR_OTHER");
    let snap = p.snapshot(&s, 5000).await.unwrap();
    let live: Vec<_> = snap.rows.iter().filter(|r| r.item.is_some()).collect();
    assert!(live.len() > 1000, "a long transfer: {} rows", live.len());
    let url = format!("{}?{wait}", rc.url());
    let inner = cache::open(&url, "node-f").await.unwrap();
    let rec = Arc::new(Recorder {
        inner: inner.clone(),
        log: Mutex::new(vec![]),
    });
    // A node serving from the cluster all along.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let n = Node::new(
        p.clone(),
        inner.clone(),
        default_shards(),
        NodeSettings::default(),
        Arc::new(Metrics::default()),
    );
    tokio::spawn(node::run(listener, n, shutdown.clone()));
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    // ~20 rows a batch at ~60 KB/s: about ten seconds of transfer.
    let params = TransferParams {
        batch_rows: 20,
        backoff_max: Duration::from_secs(1),
        in_flight,
        stream: in_flight > 1,
        ..TransferParams::default()
    };
    let started = Instant::now();
    let transfer = {
        let (p, rec, s) = (p.clone(), rec.clone(), s.clone());
        tokio::spawn(async move {
            catch_up(
                p,
                rec,
                &s,
                &TokenBucket::new(60_000),
                &params,
                &Arc::new(Metrics::default()),
                &CancellationToken::new(),
                false,
                &no_errors(),
                &|_| {},
            )
            .await
        })
    };
    // Rows change under the transfer: some already copied, some not yet.
    let changed: Vec<_> = [live[3], live[live.len() / 2], live[live.len() - 2]]
        .map(|r| (r.sku.clone(), r.region.clone()))
        .into();
    let deleted = (live[7].sku.clone(), live[7].region.clone());
    let committed = |rec: &Recorder| {
        let log = rec.log.lock();
        if sequential {
            lineage(&log).chain.len()
        } else {
            log.iter()
                .filter(|s| matches!(s.outcome, Ok(Applied::Applied)))
                .count()
        }
    };
    eventually_async(Duration::from_secs(60), "a quarter of the batches", || {
        let n = committed(&rec);
        async move { (n >= 40).then_some(()) }
    })
    .await;
    let mut changes: Vec<Change> = changed
        .iter()
        .map(|(sku, region)| Change::Stock {
            sku: sku.clone(),
            region: region.clone(),
            stock: 4242,
        })
        .collect();
    changes.push(Change::Delete {
        sku: deleted.0.clone(),
        region: deleted.1.clone(),
    });
    p.apply(&changes).await.unwrap();

    let cursor_key = format!("node-f:{{{}}}:cursor", s.id);
    let (slot, master) =
        tokio::task::block_in_place(|| (rc.slot(&cursor_key), rc.master_of(&cursor_key)));
    let replica = tokio::task::block_in_place(|| rc.replica_of(master));
    let kill_after = if pause_replica {
        tokio::task::block_in_place(|| rc.pause(replica));
        // Fill the replication link's socket buffers (a few MB on
        // loopback), so what the master acknowledges next stays in its
        // own memory and dies with it.
        // 32 MB in one command: longer than the client's 500 ms default
        // on a busy machine.
        let cfg = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(30)));
        let mut m = redis::Client::open(format!("redis://127.0.0.1:{master}/"))
            .unwrap()
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("junk:{{{}}}", s.id))
            .arg(vec![b'x'; 32 << 20])
            .query_async(&mut m)
            .await
            .unwrap();
        committed(&rec) + 8
    } else {
        committed(&rec) + 15
    };
    eventually_async(
        Duration::from_secs(60),
        "the middle of the transfer",
        || {
            let n = committed(&rec);
            async move { (n >= kill_after).then_some(()) }
        },
    )
    .await;
    assert!(!transfer.is_finished(), "the kill comes mid-transfer");
    let at_kill = rec.log.lock().iter().map(|s| s.to).max().unwrap();
    // Requests keep being answered through the failover.
    let probing = CancellationToken::new();
    let prober = {
        let (http, stop) = (http.clone(), probing.clone());
        let url = format!("{base}/inventory/{}?region={}", live[1].sku, live[1].region);
        tokio::spawn(async move {
            let mut seen = vec![];
            while !stop.is_cancelled() {
                let t = Instant::now();
                let status = http.get(&url).send().await.map(|r| r.status().as_u16());
                seen.push((status.unwrap_or(0), t.elapsed()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    let took = tokio::task::block_in_place(|| {
        rc.kill(master);
        if pause_replica {
            rc.resume(replica);
        }
        let (promoted, took) = rc.wait_promoted(slot, master, Duration::from_secs(30));
        assert_eq!(promoted, replica, "the slot's replica took over");
        // The old master rejoins as the new one's replica (WAIT needs one).
        rc.restart(master);
        took
    });
    probing.cancel();
    let seen = prober.await.unwrap();
    let slowest = seen.iter().map(|s| s.1).max().unwrap();
    eprintln!(
        "killed {master} at cursor {at_kill}; {replica} promoted after {took:?}; \
         {} requests meanwhile, slowest {slowest:?}",
        seen.len()
    );
    assert!(
        seen.iter().all(|s| s.0 == 200),
        "answered through the failover: {seen:?}"
    );
    assert!(
        slowest < Duration::from_secs(3),
        "a request waited {slowest:?}"
    );
    let progress = tokio::time::timeout(Duration::from_secs(120), transfer)
        .await
        .expect("the transfer finishes after the failover")
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();

    // Row by row what the provider holds, versions included; the cursor
    // is the provider's.
    testkit::cache_matches_provider(p.as_ref(), inner.as_ref(), &s)
        .await
        .unwrap();
    let head = p.snapshot(&s, 5000).await.unwrap().to;
    let cursor = inner.cursor(&s.id).await.unwrap();
    assert_eq!(cursor, Some(progress.cursor));
    assert!(progress.cursor >= head);
    let l = if sequential {
        let l = lineage(&rec.log.lock());
        assert_eq!(l.chain.first().map(|b| b.0), Some(0));
        assert_eq!(l.chain.last().map(|b| b.1), cursor);
        l
    } else {
        Lineage::default()
    };

    // Served through the node from the promoted master.
    for (sku, region) in &changed {
        let (status, xc, j) =
            get_json(&http, &format!("{base}/inventory/{sku}?region={region}")).await;
        assert_eq!(
            (status, xc.as_str(), &j["stock"]),
            (200, "hit", &4242.into()),
            "{sku}"
        );
    }
    let (status, _, _) = get_json(
        &http,
        &format!("{base}/inventory/{}?region={}", deleted.0, deleted.1),
    )
    .await;
    assert_eq!(status, 404, "the delete travelled");
    shutdown.cancel();
    Failover {
        took,
        lineage: l,
        progress,
        elapsed,
    }
}

/// With `WAIT 1` after each batch (the default), a batch the cache
/// reported applied was on the replica that took over: nothing is lost,
/// so nothing is sent twice; the transfer waits out the failover and
/// resumes from the cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_slots_master_mid_transfer_loses_nothing_with_wait() {
    let f = failover("wait_replicas=1&wait_timeout_ms=500", false, 1).await;
    let l = &f.lineage;
    eprintln!(
        "WAIT 1: promoted after {:?}; {} batches, {} replays, {} failed writes retried, {} cuts; transfer {:?}; {:?}",
        f.took, l.chain.len(), l.replays, l.errors, l.cuts.len(), f.elapsed, f.progress
    );
    assert!(
        l.cuts.is_empty(),
        "an acknowledged batch was lost: {:?}",
        l.cuts
    );
    assert!(
        l.errors > 0,
        "the writes during the failover failed and were retried"
    );
}

/// Without `WAIT` and with the replica stopped, the master acknowledges
/// batches the replica never gets; the promotion loses them — items and
/// cursor together, since they share a slot — and the transfer, finding
/// the cursor behind, re-reads it and re-sends exactly what was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_without_wait_loses_acknowledged_batches_and_the_cursor_resends_them() {
    let f = failover("wait_replicas=0", true, 1).await;
    let l = &f.lineage;
    eprintln!(
        "no WAIT: promoted after {:?}; {} batches, cuts {:?} ({} rows re-sent), {} replays, {} failed writes; transfer {:?}",
        f.took, l.chain.len(), l.cuts, l.rows_lost, l.replays, l.errors, f.elapsed
    );
    assert_eq!(
        l.cuts.len(),
        1,
        "the batches after the replica stopped were lost once"
    );
    assert!(l.rows_lost > 0);
}

/// The same failover with several batches in flight, as transfers run by
/// default: the writes queued behind the dead master fail or are refused
/// by the cursor check, the transfer resumes from the cursor on the
/// promoted replica, and the cache ends row by row equal to the provider
/// (checked inside [`failover`]), its cursor the transfer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_slots_master_mid_pipelined_transfer_ends_equal_to_the_provider() {
    let f = failover("wait_replicas=1&wait_timeout_ms=500", false, 4).await;
    eprintln!(
        "4 in flight, WAIT 1: promoted after {:?}; transfer {:?}; {:?}",
        f.took, f.elapsed, f.progress
    );
    assert!(f.progress.batches > 0);
}
