//! The reference node over real sockets: hit, miss, fill, 404, health,
//! metrics, no HTTP/2; with the embedded pair and with PostgreSQL + Redis.

use std::sync::Arc;
use std::time::Duration;

use shardcast_sync::cache::{self, ShardCache};
use shardcast_sync::config::default_shards;
use shardcast_sync::metrics::Metrics;
use shardcast_sync::node::{self, Node, NodeSettings};
use shardcast_sync::provider::{self, Change, ProviderFull};
use shardcast_sync::testkit;
use shardcast_sync::transfer::{catch_up, TokenBucket, TransferParams};
use tokio_util::sync::CancellationToken;

struct Running {
    base: String,
    provider: Arc<dyn ProviderFull>,
    cache: Arc<dyn ShardCache>,
    shutdown: CancellationToken,
}

async fn start(provider: Arc<dyn ProviderFull>, cache: Arc<dyn ShardCache>) -> Running {
    provider
        .apply(&[
            Change::Upsert {
                sku: "85123A".into(),
                region: "UK".into(),
                category: "LIGHTING".into(),
                stock: 40,
                price_cents: 295,
                attributes: r#"{"description":"WHITE HANGING HEART T-LIGHT HOLDER"}"#.into(),
            },
            Change::Upsert {
                sku: "85123A".into(),
                region: "INTL".into(),
                category: "LIGHTING".into(),
                stock: 4,
                price_cents: 339,
                attributes: r#"{"description":"WHITE HANGING HEART T-LIGHT HOLDER"}"#.into(),
            },
            Change::Upsert {
                sku: "22423".into(),
                region: "UK".into(),
                category: "KITCHEN_DINING".into(),
                stock: 7,
                price_cents: 1275,
                attributes: r#"{"description":"REGENCY CAKESTAND 3 TIER"}"#.into(),
            },
        ])
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let n = Node::new(
        provider.clone(),
        cache.clone(),
        default_shards(),
        NodeSettings::default(),
        Arc::new(Metrics::default()),
    );
    tokio::spawn(node::run(listener, n, shutdown.clone()));
    let c = reqwest::Client::new();
    let ready = format!("{base}/ready");
    testkit::eventually_async(Duration::from_secs(10), "node ready", || {
        let c = c.clone();
        let ready = ready.clone();
        async move {
            c.get(&ready)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        }
    })
    .await;
    Running {
        base,
        provider,
        cache,
        shutdown,
    }
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, String, serde_json::Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let xc = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "application/json",
        "every inventory answer is JSON"
    );
    (status, xc, r.json().await.unwrap())
}

async fn node_suite(r: Running) {
    let c = reqwest::Client::new();
    let b = &r.base;
    // Miss: read from the provider, filled.
    let (s, xc, j) = get(&c, &format!("{b}/inventory/85123A?region=UK")).await;
    assert_eq!((s, xc.as_str()), (200, "miss"));
    assert_eq!(j["stock"], 40);
    assert_eq!(
        j["attributes"]["description"],
        "WHITE HANGING HEART T-LIGHT HOLDER"
    );
    // Then a hit (the fill of a shard not hosted lives for fill_ttl).
    let (s, xc, j2) = get(&c, &format!("{b}/inventory/85123A?region=UK")).await;
    assert_eq!((s, xc.as_str()), (200, "hit"));
    assert_eq!(j, j2);
    // Region from the x-region header.
    let resp = c
        .get(format!("{b}/inventory/85123A"))
        .header("x-region", "INTL")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let j: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(j["price_cents"], 339);
    // Unknown sku: 404 JSON, x-cache: miss.
    let (s, xc, j) = get(&c, &format!("{b}/inventory/NOPE-1?region=UK")).await;
    assert_eq!((s, xc.as_str()), (404, "miss"));
    assert_eq!(j["error"], "unknown sku");
    // Bad input: 400 JSON, never a panic.
    let long = "x".repeat(300);
    let (s, _, _) = get(&c, &format!("{b}/inventory/{long}?region=UK")).await;
    assert_eq!(s, 400);
    let (s, _, _) = get(&c, &format!("{b}/inventory/85123A?region=U:K")).await;
    assert_eq!(s, 400);
    let (s, _, _) = get(&c, &format!("{b}/inventory/%FF%FE?region=UK")).await;
    assert_eq!(s, 400);

    // Pre-fetch a shard: a hit straight away, and deltas keep it fresh.
    let shard = default_shards()
        .into_iter()
        .find(|s| s.id == "UK/KITCHEN_DINING")
        .unwrap();
    let sync = || async {
        catch_up(
            r.provider.clone(),
            r.cache.clone(),
            &shard,
            &TokenBucket::new(0),
            &TransferParams::default(),
            &Arc::new(Metrics::default()),
            &CancellationToken::new(),
            false,
            &shardcast_sync::transfer::no_errors(),
            &|_| {},
        )
        .await
        .unwrap()
    };
    sync().await;
    let (s, xc, j) = get(&c, &format!("{b}/inventory/22423?region=UK")).await;
    assert_eq!((s, xc.as_str(), j["stock"].as_i64()), (200, "hit", Some(7)));
    r.provider
        .apply(&[Change::Stock {
            sku: "22423".into(),
            region: "UK".into(),
            stock: 3,
        }])
        .await
        .unwrap();
    sync().await;
    let (_, xc, j) = get(&c, &format!("{b}/inventory/22423?region=UK")).await;
    assert_eq!((xc.as_str(), j["stock"].as_i64()), ("hit", Some(3)));
    // Deleted in the provider: gone from the cache, 404 from the slow path.
    r.provider
        .apply(&[Change::Delete {
            sku: "22423".into(),
            region: "UK".into(),
        }])
        .await
        .unwrap();
    sync().await;
    let (s, xc, _) = get(&c, &format!("{b}/inventory/22423?region=UK")).await;
    assert_eq!((s, xc.as_str()), (404, "miss"));

    // Health and metrics.
    let h = c.get(format!("{b}/health")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let m = c
        .get(format!("{b}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("shardcast_node_requests_total{outcome=\"hit\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("shardcast_node_requests_total{outcome=\"not_found\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("shardcast_node_request_seconds_bucket{cache=\"hit\""),
        "{m}"
    );

    // HTTP/1.1 only (the shared accept loop of shardcast's own APIs): an
    // HTTP/2 prior-knowledge client gets no HTTP/2 answer.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(format!("{b}/inventory/85123A?region=UK"))
        .send()
        .await;
    assert!(
        resp.as_ref()
            .map_or(true, |r| r.version() != reqwest::Version::HTTP_2),
        "{resp:?}"
    );
    r.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sqlite_memory() {
    let dir = tempfile::tempdir().unwrap();
    let p = provider::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
        .await
        .unwrap();
    let c = cache::open("memory", "").await.unwrap();
    node_suite(start(p, c).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_redis() {
    let pg = tokio::task::spawn_blocking(testkit::Postgres::start)
        .await
        .unwrap();
    let redis = tokio::task::spawn_blocking(testkit::Redis::start)
        .await
        .unwrap();
    let p = provider::open(&pg.url()).await.unwrap();
    let c = cache::open(&redis.url(), "node-a").await.unwrap();
    node_suite(start(p, c).await).await;
}

/// The node keeps serving hits while the provider is down, and answers a
/// miss with a clear 503 instead of hanging or panicking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_survives_provider_outage() {
    let pg = tokio::task::spawn_blocking(testkit::Postgres::start)
        .await
        .unwrap();
    let p = provider::open(&pg.url()).await.unwrap();
    let c = cache::open("memory", "").await.unwrap();
    let r = start(p, c).await;
    let http = reqwest::Client::new();
    let b = &r.base;
    assert_eq!(
        get(&http, &format!("{b}/inventory/85123A?region=UK"))
            .await
            .1,
        "miss"
    );
    tokio::task::block_in_place(|| pg.stop());
    let (s, xc, _) = get(&http, &format!("{b}/inventory/85123A?region=UK")).await;
    assert_eq!((s, xc.as_str()), (200, "hit"));
    let (s, xc, j) = get(&http, &format!("{b}/inventory/22423?region=UK")).await;
    assert_eq!((s, xc.as_str()), (503, "miss"), "{j}");
    tokio::task::block_in_place(|| pg.restart());
    testkit::eventually_async(
        Duration::from_secs(20),
        "slow path back after the outage",
        || {
            let http = http.clone();
            let url = format!("{b}/inventory/22423?region=UK");
            async move { (http.get(&url).send().await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await;
}
