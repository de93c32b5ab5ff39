//! The third party's inventory database, read side and write side.
//!
//! [`Provider`] is what sync reads: the delta of a shard since a cursor
//! (rows with a larger provider version, in version order, in batches), a
//! full snapshot (the same from cursor 0, tombstones left out), a single
//! row for the node's slow path, and the catalog. [`ProviderAdmin`] is the
//! provider's own write side, used by the loader, the change generator and
//! the tests. Two implementations: [`postgres::PgProvider`] (the real one)
//! and [`sqlite::SqliteProvider`] (the embedded default).
//!
//! Versions come from one sequence and are stamped by triggers on insert
//! and update; a delete is turned into a tombstone by a trigger, so a delta
//! sees it. Writers take the version lock for their transaction, so
//! versions become visible in order and a reader that has seen version V
//! has seen every version below it — the cursor never skips a row.

pub mod postgres;
pub mod reads;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};

use crate::model::{Batch, Row, ShardDef};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The database cannot be reached; retry with backoff.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// A query failed for another reason.
    #[error("provider query failed: {0}")]
    Query(String),
    /// Bad input from the caller (e.g. an invalid change).
    #[error("invalid provider request: {0}")]
    Invalid(String),
}

/// One change to the provider's data (write side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or update a product and its row in a region. The product's
    /// category never changes once inserted (a different category is
    /// refused); attributes are a JSON object.
    Upsert {
        sku: String,
        region: String,
        category: String,
        stock: i64,
        price_cents: i64,
        attributes: String,
    },
    /// Set the stock of an existing row (no-op when absent).
    Stock {
        sku: String,
        region: String,
        stock: i64,
    },
    /// Add to the stock of an existing row, floored at 0 (no-op when absent).
    StockDelta {
        sku: String,
        region: String,
        delta: i64,
    },
    /// Set the price of an existing row (no-op when absent).
    Price {
        sku: String,
        region: String,
        price_cents: i64,
    },
    /// Delete a row; it stays as a tombstone.
    Delete { sku: String, region: String },
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Rows of `shard` with `version > cursor`, in version order, at most
    /// `limit`. From cursor 0 tombstones are left out (an empty cache has
    /// nothing to delete), which makes it the snapshot.
    async fn delta(
        &self,
        shard: &ShardDef,
        cursor: u64,
        limit: usize,
    ) -> Result<Batch, ProviderError>;

    /// The delta of `shard` from `cursor` on as a stream of batches of at
    /// most `limit` rows each, the same batches [`Provider::delta`] gives
    /// when called again from each batch's `to`, ending with the batch
    /// whose `more` is false. A backend that can hold one query open reads
    /// the whole delta through it (PostgreSQL: one portal on a connection
    /// of its own) instead of a query per batch; the default calls
    /// [`Provider::delta`] per batch. Dropping the stream ends the read.
    fn delta_stream(
        self: Arc<Self>,
        shard: ShardDef,
        cursor: u64,
        limit: usize,
    ) -> BoxStream<'static, Result<Batch, ProviderError>> {
        per_batch(self, shard, cursor, limit)
    }

    /// Every live row of `shard` and the cursor they are current at
    /// (paged by version internally).
    async fn snapshot(&self, shard: &ShardDef, page: usize) -> Result<Batch, ProviderError> {
        let mut all = Batch::default();
        loop {
            let b = self.delta(shard, all.to, page).await?;
            all.to = b.to;
            all.malformed += b.malformed;
            // A row may appear again at a newer version in a later page.
            all.rows.extend(b.rows);
            if !b.more {
                break;
            }
        }
        let mut latest = std::collections::HashMap::new();
        for r in all.rows.drain(..) {
            latest.insert((r.sku.clone(), r.region.clone()), r);
        }
        all.rows = latest.into_values().filter(|r| r.item.is_some()).collect();
        all.rows.sort_by_key(|r| r.version);
        Ok(all)
    }

    /// One row (live or tombstone), for the node's slow path.
    async fn get(&self, sku: &str, region: &str) -> Result<Option<Row>, ProviderError>;

    /// Every product's `(sku, category)`.
    async fn catalog(&self) -> Result<Vec<(String, String)>, ProviderError>;

    /// The highest version stamped so far (0 when empty).
    async fn head(&self) -> Result<u64, ProviderError>;

    /// A channel that ticks when the provider announces a change
    /// (PostgreSQL NOTIFY); `None` when the backend cannot announce, and
    /// callers poll.
    fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Short name for logs (`postgres`, `sqlite`).
    fn kind(&self) -> &'static str;
}

/// [`Provider::delta_stream`] by one [`Provider::delta`] per batch.
pub fn per_batch<P: Provider + ?Sized>(
    p: Arc<P>,
    shard: ShardDef,
    cursor: u64,
    limit: usize,
) -> BoxStream<'static, Result<Batch, ProviderError>> {
    futures::stream::unfold(Some(cursor), move |c| {
        let (p, shard) = (p.clone(), shard.clone());
        async move {
            let c = c?;
            match p.delta(&shard, c, limit).await {
                Ok(b) => {
                    let next = b.more.then_some(b.to);
                    Some((Ok(b), next))
                }
                // The caller retries from the last batch it took.
                Err(e) => Some((Err(e), None)),
            }
        }
    })
    .boxed()
}

/// The provider's write side.
#[async_trait]
pub trait ProviderAdmin: Send + Sync + 'static {
    /// Create or upgrade the schema (idempotent).
    async fn migrate(&self) -> Result<(), ProviderError>;
    /// Apply changes in one transaction.
    async fn apply(&self, changes: &[Change]) -> Result<(), ProviderError>;
    /// Bulk-load products and rows (the loader's fast path).
    async fn bulk_load(&self, rows: &[LoadRow]) -> Result<(), ProviderError>;
    /// Number of inventory rows (live and tombstones).
    async fn count(&self) -> Result<u64, ProviderError>;
}

/// One `(sku, region)` row for [`ProviderAdmin::bulk_load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRow {
    pub sku: String,
    pub category: String,
    pub attributes: String,
    pub region: String,
    pub stock: i64,
    pub price_cents: i64,
}

/// Both sides of one provider.
pub trait ProviderFull: Provider + ProviderAdmin {}
impl<T: Provider + ProviderAdmin> ProviderFull for T {}

/// Open a provider from a URL: `postgres://…` / `host=… …` (PostgreSQL) or
/// `sqlite:PATH` / `sqlite::memory:`. The schema is created if missing.
pub async fn open(url: &str) -> Result<Arc<dyn ProviderFull>, ProviderError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let p = sqlite::SqliteProvider::open(path)?;
        p.migrate().await?;
        Ok(Arc::new(p))
    } else if url.starts_with("postgres") || url.contains("host=") {
        let p = postgres::PgProvider::new(url);
        p.migrate().await?;
        Ok(Arc::new(p))
    } else {
        Err(ProviderError::Invalid(format!(
            "provider url `{url}`: expected `sqlite:PATH` or a PostgreSQL url (`postgres://…` or `host=… user=…`)"
        )))
    }
}

/// Turn an i64 column into a version, refusing negatives.
pub(crate) fn version_of(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}
