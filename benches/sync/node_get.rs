//! Reference node GET latency over a real socket (HTTP/1.1 keep-alive, one
//! connection): a cache hit (in-process cache and Redis) and a miss (the
//! slow path: cache lookup, provider read, encode; the fill is disabled so
//! every request misses). Provider: SQLite with the catalog at scale 1
//! for the in-process run, PostgreSQL for the Redis run.
//!
//! `cargo bench -p shardcast-sync --bench node_get`

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shardcast_sync::cache::{self, Applied, CacheError, ShardCache};
use shardcast_sync::config::default_shards;
use shardcast_sync::metrics::Metrics;
use shardcast_sync::model::CacheBatch;
use shardcast_sync::node::{self, Node, NodeSettings};
use shardcast_sync::provider::{self, ProviderFull};
use shardcast_sync::testkit;
use shardcast_sync::transfer::{catch_up, no_errors, TokenBucket, TransferParams};
use tokio_util::sync::CancellationToken;

/// A cache that never keeps a fill, so every request for an unhosted shard
/// takes the slow path.
struct NoFill(Arc<dyn ShardCache>);

#[async_trait]
impl ShardCache for NoFill {
    async fn apply(&self, s: &str, b: &CacheBatch) -> Result<Applied, CacheError> {
        self.0.apply(s, b).await
    }
    async fn get(&self, s: &str, f: &str) -> Result<Option<Bytes>, CacheError> {
        self.0.get(s, f).await
    }
    async fn fill(
        &self,
        _: &str,
        _: &str,
        _: Bytes,
        _: u64,
        _: Duration,
    ) -> Result<(), CacheError> {
        Ok(())
    }
    async fn evict(&self, s: &str) -> Result<(), CacheError> {
        self.0.evict(s).await
    }
    async fn cursor(&self, s: &str) -> Result<Option<u64>, CacheError> {
        self.0.cursor(s).await
    }
    async fn size(&self, s: &str) -> Result<u64, CacheError> {
        self.0.size(s).await
    }
    async fn dump(&self, s: &str) -> Result<Vec<(String, Bytes)>, CacheError> {
        self.0.dump(s).await
    }
    fn kind(&self) -> &'static str {
        "nofill"
    }
}

async fn start_node(p: Arc<dyn ProviderFull>, c: Arc<dyn ShardCache>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let n = Node::new(
        p,
        c,
        default_shards(),
        NodeSettings::default(),
        Arc::new(Metrics::default()),
    );
    n.load_catalog(&CancellationToken::new()).await;
    tokio::spawn(node::run(l, n, CancellationToken::new()));
    base
}

async fn warm(p: &Arc<dyn ProviderFull>, c: &Arc<dyn ShardCache>, shard: &str) {
    let s = default_shards()
        .into_iter()
        .find(|s| s.id == shard)
        .unwrap();
    catch_up(
        p.clone(),
        c.clone(),
        &s,
        &TokenBucket::new(0),
        &TransferParams::default(),
        &Arc::new(Metrics::default()),
        &CancellationToken::new(),
        false,
        &no_errors(),
        &|_| {},
    )
    .await
    .unwrap();
}

fn bench(cr: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pg = testkit::Postgres::start();
    let redis = testkit::Redis::start();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let (mem_base, redis_base, pg_nofill_base, sqlite_nofill_base) = rt.block_on(async {
        let sq = provider::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
            .await
            .unwrap();
        testkit::seed_catalog(sq.as_ref()).await;
        let pgp = provider::open(&pg.url()).await.unwrap();
        testkit::seed_catalog(pgp.as_ref()).await;
        let mem = cache::open("memory", "").await.unwrap();
        warm(&sq, &mem, "UK/LIGHTING").await;
        let rc = cache::open(&redis.url(), "bench").await.unwrap();
        warm(&pgp, &rc, "UK/LIGHTING").await;
        let nf_pg: Arc<dyn ShardCache> = Arc::new(NoFill(cache::open("memory", "").await.unwrap()));
        let nf_sq: Arc<dyn ShardCache> = Arc::new(NoFill(cache::open("memory", "").await.unwrap()));
        (
            start_node(sq.clone(), mem).await,
            start_node(pgp.clone(), rc).await,
            start_node(pgp, nf_pg).await,
            start_node(sq, nf_sq).await,
        )
    });
    let rt = &rt;
    let get = |url: String, want: &'static str| {
        let uri: hyper::Uri = url.parse().unwrap();
        let client = client.clone();
        move || {
            let r = rt.block_on(async {
                let r = client.get(uri.clone()).await.unwrap();
                let xc = r.headers()["x-cache"].clone();
                let _ = r.into_body().collect().await.unwrap();
                xc
            });
            assert_eq!(r, want);
        }
    };
    let mut g = cr.benchmark_group("node_get");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    let path = "/inventory/85123A?region=UK";
    let mut f = get(format!("{mem_base}{path}"), "hit");
    g.bench_function("hit_memory", |b| b.iter(&mut f));
    let mut f = get(format!("{redis_base}{path}"), "hit");
    g.bench_function("hit_redis", |b| b.iter(&mut f));
    let mut f = get(format!("{sqlite_nofill_base}{path}"), "miss");
    g.bench_function("miss_sqlite", |b| b.iter(&mut f));
    let mut f = get(format!("{pg_nofill_base}{path}"), "miss");
    g.bench_function("miss_postgres", |b| b.iter(&mut f));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
