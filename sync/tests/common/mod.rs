//! What the scheduler's tests share: a scheduler started over real
//! providers and caches, orders, and waits for them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shardcast_sync::cache::{self, ShardCache};
use shardcast_sync::config::default_shards;
use shardcast_sync::metrics::Metrics;
use shardcast_sync::model::ShardDef;
use shardcast_sync::provider::{self, ProviderFull};
use shardcast_sync::scheduler::{OrderRequest, OrderState, Scheduler, SchedulerConfig};
use shardcast_sync::testkit::{self, eventually_async};
use tokio_util::sync::CancellationToken;

pub fn shard(id: &str) -> ShardDef {
    default_shards().into_iter().find(|s| s.id == id).unwrap()
}

pub struct Env {
    pub provider: Arc<dyn ProviderFull>,
    pub caches: BTreeMap<String, Arc<dyn ShardCache>>,
    pub sched: Scheduler,
    pub shutdown: CancellationToken,
}

/// PostgreSQL seeded with the catalog, and node `a` caching on its own Redis.
pub struct PgRedis {
    pub pg: testkit::Postgres,
    pub redis: testkit::Redis,
    pub provider: Arc<dyn ProviderFull>,
    pub caches: BTreeMap<String, Arc<dyn ShardCache>>,
}

pub async fn pg_with_node_a_on_redis() -> PgRedis {
    let pg = tokio::task::spawn_blocking(testkit::Postgres::start)
        .await
        .unwrap();
    let redis = tokio::task::spawn_blocking(testkit::Redis::start)
        .await
        .unwrap();
    let provider = provider::open(&pg.url()).await.unwrap();
    testkit::seed_catalog(provider.as_ref()).await;
    let mut caches = BTreeMap::new();
    caches.insert(
        "a".to_string(),
        cache::open(&redis.url(), "a").await.unwrap(),
    );
    PgRedis {
        pg,
        redis,
        provider,
        caches,
    }
}

pub fn start(
    provider: Arc<dyn ProviderFull>,
    caches: BTreeMap<String, Arc<dyn ShardCache>>,
    cfg: SchedulerConfig,
) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let shutdown = CancellationToken::new();
    let sched = Scheduler::start(
        provider.clone(),
        caches.clone(),
        default_shards(),
        cfg,
        Arc::new(Metrics::default()),
        shutdown.clone(),
    );
    Env {
        provider,
        caches,
        sched,
        shutdown,
    }
}

pub fn order(shard: &str, node: &str, priority: f64) -> OrderRequest {
    OrderRequest {
        shard: shard.into(),
        node: node.into(),
        priority,
        deadline_unix_ms: None,
        deadline_in_ms: None,
        epoch: 0,
    }
}

pub async fn wait_done(
    s: &Scheduler,
    id: u64,
    within: Duration,
) -> shardcast_sync::scheduler::Order {
    eventually_async(within, &format!("order {id} done"), || async {
        s.order(id).filter(|o| o.state == OrderState::Done)
    })
    .await
}

pub async fn sqlite_seeded() -> (Arc<dyn ProviderFull>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = provider::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
        .await
        .unwrap();
    testkit::seed_catalog(p.as_ref()).await;
    (p, dir)
}
