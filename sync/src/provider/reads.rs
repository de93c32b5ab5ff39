//! Every provider read, counted, and optionally delayed by a wide-area
//! round trip.
//!
//! [`Counted`] wraps any [`Provider`]: each read (a delta batch, a
//! slow-path `get`, the catalog, the head) is counted as one query with
//! the rows it returned, per shard for deltas, into [`ProviderReads`]; and
//! with `[provider] read_latency_ms` above 0 each read first waits that
//! long. The wait stands for the network between a storefront's region and
//! a third party's database — tens of milliseconds in production, nothing
//! against a local SQLite file — so a benchmark on one machine can charge a
//! miss and a pre-fetch batch what they would cost across a wide-area
//! link. It is an asynchronous sleep before the query, so concurrent reads
//! overlap as they would on a real network, and it holds no lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use parking_lot::RwLock;
use shardcast_edge::metrics::{Kind, Writer};

use super::{Provider, ProviderError};
use crate::model::{Batch, Row, ShardDef};

/// Queries and rows read from the provider, by operation (and by shard for
/// deltas).
#[derive(Debug, Default)]
pub struct ProviderReads {
    /// shard → (queries, rows) of delta reads.
    delta: RwLock<BTreeMap<String, Arc<[AtomicU64; 2]>>>,
    get_queries: AtomicU64,
    get_rows: AtomicU64,
    other_queries: AtomicU64,
    latency_ms: AtomicU64,
}

impl ProviderReads {
    fn delta_of(&self, shard: &str) -> Arc<[AtomicU64; 2]> {
        if let Some(c) = self.delta.read().get(shard) {
            return c.clone();
        }
        self.delta
            .write()
            .entry(shard.to_string())
            .or_default()
            .clone()
    }

    /// `(queries, rows)` of delta reads over every shard.
    pub fn delta_totals(&self) -> (u64, u64) {
        self.delta.read().values().fold((0, 0), |(q, r), c| {
            (q + c[0].load(Relaxed), r + c[1].load(Relaxed))
        })
    }

    /// `(queries, rows)` of slow-path reads.
    pub fn get_totals(&self) -> (u64, u64) {
        (self.get_queries.load(Relaxed), self.get_rows.load(Relaxed))
    }

    /// Prometheus text: `shardcast_sync_provider_queries_total{op[,shard]}`,
    /// `shardcast_sync_provider_rows_read_total{op[,shard]}` and the
    /// configured `shardcast_sync_provider_read_latency_seconds`.
    pub fn render(&self, out: &mut String) {
        let mut w = Writer::new(out);
        let delta = self.delta.read();
        w.family(
            "shardcast_sync_provider_queries_total",
            Kind::Counter,
            "Provider reads: delta batches (per shard), slow-path gets, catalog and head reads.",
        );
        for (s, c) in delta.iter() {
            w.sample(
                "shardcast_sync_provider_queries_total",
                &[("op", "delta"), ("shard", s)],
                c[0].load(Relaxed),
            );
        }
        w.sample(
            "shardcast_sync_provider_queries_total",
            &[("op", "get")],
            self.get_queries.load(Relaxed),
        )
        .sample(
            "shardcast_sync_provider_queries_total",
            &[("op", "other")],
            self.other_queries.load(Relaxed),
        );
        w.family(
            "shardcast_sync_provider_rows_read_total",
            Kind::Counter,
            "Rows the provider returned: to delta batches (per shard) and slow-path gets.",
        );
        for (s, c) in delta.iter() {
            w.sample(
                "shardcast_sync_provider_rows_read_total",
                &[("op", "delta"), ("shard", s)],
                c[1].load(Relaxed),
            );
        }
        w.sample(
            "shardcast_sync_provider_rows_read_total",
            &[("op", "get")],
            self.get_rows.load(Relaxed),
        );
        w.gauge(
            "shardcast_sync_provider_read_latency_seconds",
            "Wide-area latency added to every provider read ([provider] read_latency_ms).",
            self.latency_ms.load(Relaxed) as f64 / 1000.0,
        );
    }
}

/// A provider whose reads are counted into `reads` and, with a latency
/// above zero, each delayed by it.
pub struct Counted {
    inner: Arc<dyn Provider>,
    latency: Duration,
    reads: Arc<ProviderReads>,
}

impl Counted {
    pub fn new(inner: Arc<dyn Provider>, latency: Duration, reads: Arc<ProviderReads>) -> Counted {
        reads.latency_ms.store(latency.as_millis() as u64, Relaxed);
        Counted {
            inner,
            latency,
            reads,
        }
    }

    async fn wait(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

#[async_trait]
impl Provider for Counted {
    async fn delta(
        &self,
        shard: &ShardDef,
        cursor: u64,
        limit: usize,
    ) -> Result<Batch, ProviderError> {
        self.wait().await;
        let c = self.reads.delta_of(&shard.id);
        c[0].fetch_add(1, Relaxed);
        let b = self.inner.delta(shard, cursor, limit).await?;
        c[1].fetch_add(b.rows.len() as u64, Relaxed);
        Ok(b)
    }

    /// One query for the whole stream; the latency is paid once per batch
    /// (each is a round trip for the next rows): a batch is handed on that
    /// long after the provider produced it.
    fn delta_stream(
        self: Arc<Self>,
        shard: ShardDef,
        cursor: u64,
        limit: usize,
    ) -> BoxStream<'static, Result<Batch, ProviderError>> {
        let c = self.reads.delta_of(&shard.id);
        c[0].fetch_add(1, Relaxed);
        let latency = self.latency;
        self.inner
            .clone()
            .delta_stream(shard, cursor, limit)
            .then(move |b| {
                let c = c.clone();
                async move {
                    if !latency.is_zero() {
                        tokio::time::sleep(latency).await;
                    }
                    if let Ok(b) = &b {
                        c[1].fetch_add(b.rows.len() as u64, Relaxed);
                    }
                    b
                }
            })
            .boxed()
    }

    async fn get(&self, sku: &str, region: &str) -> Result<Option<Row>, ProviderError> {
        self.wait().await;
        self.reads.get_queries.fetch_add(1, Relaxed);
        let r = self.inner.get(sku, region).await?;
        if r.is_some() {
            self.reads.get_rows.fetch_add(1, Relaxed);
        }
        Ok(r)
    }

    async fn catalog(&self) -> Result<Vec<(String, String)>, ProviderError> {
        self.wait().await;
        self.reads.other_queries.fetch_add(1, Relaxed);
        self.inner.catalog().await
    }

    async fn head(&self) -> Result<u64, ProviderError> {
        self.wait().await;
        self.reads.other_queries.fetch_add(1, Relaxed);
        self.inner.head().await
    }

    fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.subscribe()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::sqlite::SqliteProvider;
    use crate::provider::{Change, ProviderAdmin};

    fn shard() -> ShardDef {
        ShardDef {
            id: "UK/A".into(),
            cells: vec![("A".into(), "UK".into())],
        }
    }

    #[tokio::test]
    async fn reads_are_counted_and_pay_the_latency() {
        let p = Arc::new(SqliteProvider::open(":memory:").unwrap());
        p.migrate().await.unwrap();
        let up = |sku: &str| Change::Upsert {
            sku: sku.into(),
            region: "UK".into(),
            category: "A".into(),
            stock: 1,
            price_cents: 100,
            attributes: "{}".into(),
        };
        p.apply(&[up("s1"), up("s2"), up("s3")]).await.unwrap();
        let reads = Arc::new(ProviderReads::default());
        let c = Counted::new(p, Duration::from_millis(40), reads.clone());
        let t = std::time::Instant::now();
        let b = c.delta(&shard(), 0, 2).await.unwrap();
        assert_eq!(b.rows.len(), 2);
        let b2 = c.delta(&shard(), b.to, 2).await.unwrap();
        assert_eq!(b2.rows.len(), 1);
        assert!(c.get("s1", "UK").await.unwrap().is_some());
        assert!(c.get("nope", "UK").await.unwrap().is_none());
        assert!(t.elapsed() >= Duration::from_millis(160), "4 reads × 40 ms");
        assert_eq!(reads.delta_totals(), (2, 3));
        assert_eq!(reads.get_totals(), (2, 1));
        let mut out = String::new();
        reads.render(&mut out);
        assert!(
            out.contains("shardcast_sync_provider_rows_read_total{op=\"delta\",shard=\"UK/A\"} 3")
        );
        assert!(out.contains("shardcast_sync_provider_queries_total{op=\"get\"} 2"));
        assert!(out.contains("shardcast_sync_provider_read_latency_seconds 0.04"));
    }
}
