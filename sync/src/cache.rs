//! A node's cache of the shards it hosts.
//!
//! [`ShardCache`] is what the scheduler writes and the node reads. A shard
//! in a cache is a map `field → value` plus a cursor (the last provider
//! version copied in). [`ShardCache::apply`] writes a batch and moves the
//! cursor in one atomic step, and only if the cursor is where the batch
//! starts, so a batch replayed after a crash is recognised and skipped:
//! nothing is lost, nothing applied twice. A shard is *hosted* when its
//! cursor exists.
//!
//! An evicted shard can be *parked* instead of dropped
//! ([`ShardCache::park`]): its items and cursor stay, for a bounded time,
//! but it is no longer hosted — nothing reads its items (a request falls to
//! the slow path as for any shard not hosted), nothing refreshes them. A
//! transfer that finds a parked copy reads the provider's delta from the
//! parked cursor, and its first batch (which must start at that cursor)
//! makes the copy hosted again in the same atomic step: the next pre-fetch
//! moves only what changed. A batch from 0 drops a parked copy.
//!
//! Implementations: [`redis::RedisCache`] (one Lua script per batch; a
//! shard's keys share the hash tag `{shard}`, so on a Redis Cluster —
//! [`cluster`] — they live in one slot) and [`memory::MemoryCache`]
//! (in-process, the embedded default).

pub mod cluster;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::model::CacheBatch;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache cannot be reached; retry with backoff.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// The cache answered something unexpected.
    #[error("cache error: {0}")]
    Other(String),
}

/// What [`ShardCache::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written; the cursor is now the batch's `to`.
    Applied,
    /// The cursor was already at or past the batch's `to`: a replay, skipped.
    AlreadyApplied { cursor: u64 },
    /// The cursor is neither the batch's `from` nor past its `to` (or the
    /// shard is not hosted and the batch does not start at 0): nothing
    /// written; read again from `cursor`.
    CursorMismatch { cursor: Option<u64> },
}

#[async_trait]
pub trait ShardCache: Send + Sync + 'static {
    /// Write `batch` into `shard` and set the cursor to `batch.to`,
    /// atomically, if the cursor is `batch.from` (absent counts as 0). A
    /// shard not hosted whose parked cursor is `batch.from` (above 0) is
    /// hosted again from its parked copy in the same step.
    async fn apply(&self, shard: &str, batch: &CacheBatch) -> Result<Applied, CacheError>;

    /// The value of `field` in `shard`, including slow-path fills.
    async fn get(&self, shard: &str, field: &str) -> Result<Option<Bytes>, CacheError>;

    /// Store a value the node read from the provider on a miss. In a hosted
    /// shard it is kept unless a newer version is already there (later
    /// deltas keep it fresh); in a shard not hosted it expires after `ttl`,
    /// since nothing would refresh it.
    async fn fill(
        &self,
        shard: &str,
        field: &str,
        value: Bytes,
        version: u64,
        ttl: Duration,
    ) -> Result<(), CacheError>;

    /// Drop the shard: its items and its cursor (hosted or parked),
    /// atomically.
    async fn evict(&self, shard: &str) -> Result<(), CacheError>;

    /// Stop hosting the shard but keep its items and cursor for `keep`, so
    /// a later transfer resumes from the cursor; atomically. Not served
    /// while parked (reads see a shard not hosted). A zero `keep`, or a
    /// shard not hosted, drops it as [`ShardCache::evict`] does (and so
    /// does a cache that cannot park: the default).
    async fn park(&self, shard: &str, keep: Duration) -> Result<(), CacheError> {
        let _ = keep;
        self.evict(shard).await
    }

    /// The cursor of the shard's parked copy, if one is kept.
    async fn parked(&self, shard: &str) -> Result<Option<u64>, CacheError> {
        let _ = shard;
        Ok(None)
    }

    /// The shard's cursor; `None` when the shard is not hosted.
    async fn cursor(&self, shard: &str) -> Result<Option<u64>, CacheError>;

    /// Items held for the shard (not counting unhosted fills).
    async fn size(&self, shard: &str) -> Result<u64, CacheError>;

    /// Every `(field, value)` of a hosted shard (tests, audits; not for
    /// the request path).
    async fn dump(&self, shard: &str) -> Result<Vec<(String, Bytes)>, CacheError>;

    fn kind(&self) -> &'static str;
}

const URL_FORMS: &str =
    "`memory`, `redis://host:port[/db]` or `redis+cluster://host:port[,host:port…]`";

/// Check a cache URL without connecting (config validation); the error
/// says what is wrong.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with(cluster::SCHEME) {
        cluster::ClusterUrl::parse(url).map(|_| ())
    } else if url == "memory"
        || url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("unix://")
    {
        Ok(())
    } else {
        Err(format!("`{url}` must be {URL_FORMS}"))
    }
}

/// Open a cache: `memory` (a new in-process cache), `redis://…` (one
/// Redis) or `redis+cluster://…` (a Redis Cluster, by its seed nodes), with
/// a key prefix that keeps several nodes apart on one Redis or cluster.
pub async fn open(url: &str, prefix: &str) -> Result<Arc<dyn ShardCache>, CacheError> {
    check_url(url).map_err(|e| CacheError::Other(format!("cache url {e}")))?;
    if url == "memory" {
        Ok(Arc::new(memory::MemoryCache::default()))
    } else if url.starts_with(cluster::SCHEME) {
        Ok(Arc::new(
            redis::RedisCache::open_cluster(url, prefix).await?,
        ))
    } else {
        Ok(Arc::new(redis::RedisCache::open(url, prefix).await?))
    }
}
