//! The in-process cache: one map per shard behind a `parking_lot` lock.
//! Batches apply under the write lock, so readers see a batch whole or not
//! at all — the same atomicity the Redis script gives.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;

use super::{Applied, CacheError, ShardCache};
use crate::model::{value_version, CacheBatch};

#[derive(Default)]
struct Shard {
    cursor: Option<u64>,
    items: HashMap<String, Bytes>,
    /// Fills for a shard not hosted, with their expiry.
    side: HashMap<String, (Bytes, Instant)>,
    /// An evicted copy kept (not served): cursor, items, until when.
    parked: Option<(u64, HashMap<String, Bytes>, Instant)>,
}

impl Shard {
    /// The parked copy, dropped first if it expired.
    fn parked_live(&mut self) -> Option<&mut (u64, HashMap<String, Bytes>, Instant)> {
        if self.parked.as_ref().is_some_and(|p| p.2 <= Instant::now()) {
            self.parked = None;
        }
        self.parked.as_mut()
    }
}

#[derive(Default)]
pub struct MemoryCache {
    shards: RwLock<HashMap<String, Shard>>,
}

impl MemoryCache {
    /// Synchronous read for callers already on the data path.
    pub fn get_now(&self, shard: &str, field: &str) -> Option<Bytes> {
        let g = self.shards.read();
        let s = g.get(shard)?;
        if let Some(v) = s.items.get(field) {
            return Some(v.clone());
        }
        if s.cursor.is_some() {
            return None;
        }
        match s.side.get(field) {
            Some((v, exp)) if *exp > Instant::now() => Some(v.clone()),
            _ => None,
        }
    }
}

#[async_trait]
impl ShardCache for MemoryCache {
    async fn apply(&self, shard: &str, b: &CacheBatch) -> Result<Applied, CacheError> {
        let mut g = self.shards.write();
        let s = g.entry(shard.to_string()).or_default();
        if s.cursor.is_none() && s.parked_live().is_some() {
            let pc = s.parked.as_ref().map_or(0, |p| p.0);
            if b.from == 0 {
                s.parked = None;
            } else if pc == b.from {
                // Back from the parked copy: hosted again at its cursor.
                let (c, items, _) = s.parked.take().expect("checked above");
                s.items = items;
                s.side.clear();
                s.cursor = Some(c);
            }
        }
        let cur = s.cursor.unwrap_or(0);
        if cur != b.from {
            return Ok(match s.cursor {
                Some(c) if c >= b.to => Applied::AlreadyApplied { cursor: c },
                other => Applied::CursorMismatch { cursor: other },
            });
        }
        if b.from == 0 {
            s.side.clear();
        }
        for (f, v) in &b.upserts {
            s.side.remove(f);
            s.items.insert(f.clone(), v.clone());
        }
        for f in &b.deletes {
            s.side.remove(f);
            s.items.remove(f);
        }
        s.cursor = Some(b.to);
        Ok(Applied::Applied)
    }

    async fn get(&self, shard: &str, field: &str) -> Result<Option<Bytes>, CacheError> {
        Ok(self.get_now(shard, field))
    }

    async fn fill(
        &self,
        shard: &str,
        field: &str,
        value: Bytes,
        version: u64,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let mut g = self.shards.write();
        let s = g.entry(shard.to_string()).or_default();
        if s.cursor.is_some() {
            let newer = s
                .items
                .get(field)
                .and_then(|v| value_version(v))
                .is_some_and(|have| have >= version);
            if !newer {
                s.items.insert(field.to_string(), value);
            }
        } else {
            let now = Instant::now();
            if s.side.len() > 100_000 {
                s.side.retain(|_, (_, exp)| *exp > now);
            }
            s.side.insert(field.to_string(), (value, now + ttl));
        }
        Ok(())
    }

    async fn evict(&self, shard: &str) -> Result<(), CacheError> {
        self.shards.write().remove(shard);
        Ok(())
    }

    async fn park(&self, shard: &str, keep: Duration) -> Result<(), CacheError> {
        let mut g = self.shards.write();
        let Some(s) = g.get_mut(shard) else {
            return Ok(());
        };
        match s.cursor.take() {
            Some(c) if !keep.is_zero() => {
                let items = std::mem::take(&mut s.items);
                s.side.clear();
                s.parked = Some((c, items, Instant::now() + keep));
            }
            // Not hosted: evicting again is the same eviction, and a copy
            // parked by the first one stays as it is (dropping it would make
            // the next pre-fetch a whole copy).
            None if !keep.is_zero() => s.side.clear(),
            _ => {
                g.remove(shard);
            }
        }
        Ok(())
    }

    async fn parked(&self, shard: &str) -> Result<Option<u64>, CacheError> {
        Ok(self
            .shards
            .write()
            .get_mut(shard)
            .and_then(|s| s.parked_live().map(|p| p.0)))
    }

    async fn cursor(&self, shard: &str) -> Result<Option<u64>, CacheError> {
        Ok(self.shards.read().get(shard).and_then(|s| s.cursor))
    }

    async fn size(&self, shard: &str) -> Result<u64, CacheError> {
        Ok(self
            .shards
            .read()
            .get(shard)
            .map_or(0, |s| s.items.len() as u64))
    }

    async fn dump(&self, shard: &str) -> Result<Vec<(String, Bytes)>, CacheError> {
        Ok(self
            .shards
            .read()
            .get(shard)
            .map(|s| {
                s.items
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
