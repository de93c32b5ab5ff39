//! The Redis cache. A shard is five keys sharing the hash tag `{shard}`
//! (so a Redis Cluster keeps them in one slot): `P:{shard}:items` (a hash
//! `field → value`), `P:{shard}:cursor`, `P:{shard}:fills` (slow-path
//! fills of a shard not hosted, a hash that expires whole), and
//! `P:{shard}:parked` / `P:{shard}:parked_cursor` (an evicted copy kept,
//! not served, both expiring at the same instant). `P` is the
//! node's key prefix. Every write is one Lua script, so a batch and its
//! cursor land together or not at all — on a single Redis and on a Redis
//! Cluster alike (see [`super::cluster`] for the cluster's URL, routing and
//! the `WAIT` after each batch).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::cluster::{wait_replicated, ClusterUrl, Conn, Connect};
use super::{Applied, CacheError, ShardCache};
use crate::model::CacheBatch;

const APPLY: &str = r#"
local cur = redis.call('GET', KEYS[2])
local hosted = cur ~= false
local c = 0
if hosted then c = tonumber(cur) end
local from = tonumber(ARGV[1])
local to = tonumber(ARGV[2])
if not hosted then
  local pc = redis.call('GET', KEYS[5])
  if pc then
    if from == 0 then
      redis.call('DEL', KEYS[4], KEYS[5])
    elseif tonumber(pc) == from then
      -- Back from the parked copy: hosted again at its cursor.
      redis.call('DEL', KEYS[1], KEYS[3])
      if redis.call('EXISTS', KEYS[4]) == 1 then
        redis.call('RENAME', KEYS[4], KEYS[1])
        redis.call('PERSIST', KEYS[1])
      end
      redis.call('DEL', KEYS[5])
      hosted = true
      c = from
    end
  end
end
if c ~= from then
  if hosted and c >= to then return {1, c} end
  if hosted then return {2, c} end
  return {2, -1}
end
if from == 0 then redis.call('DEL', KEYS[3]) end
local n = tonumber(ARGV[3])
local last = 3 + 2 * n
local i = 4
while i <= last do
  local j = math.min(i + 999, last)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
i = last + 1
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
redis.call('SET', KEYS[2], ARGV[2])
return {0, to}
"#;

const FILL: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then
  local old = redis.call('HGET', KEYS[1], ARGV[1])
  if old then
    local v = string.match(old, '"version":(%d+)}$')
    if v and tonumber(v) >= tonumber(ARGV[3]) then return 0 end
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[4], 'NX')
return 2
"#;

const PARK: &str = r#"
if tonumber(ARGV[1]) <= 0 then
  return redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  -- not hosted: evicting again keeps a copy parked by the first eviction
  return redis.call('UNLINK', KEYS[1], KEYS[3])
end
redis.call('DEL', KEYS[3], KEYS[4])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[1])
end
redis.call('RENAME', KEYS[2], KEYS[5])
redis.call('PEXPIRE', KEYS[5], ARGV[1])
return 0
"#;

const GET: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return v end
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
return redis.call('HGET', KEYS[3], ARGV[1])
"#;

pub struct RedisCache {
    conn: Conn,
    /// On a cluster: replicas a write must reach, and for how long to wait.
    durable: Option<(u32, Duration)>,
    /// On a cluster: the deadline of the request path's reads and fills,
    /// short so a node riding out a failover falls back to the provider.
    request_deadline: Option<Duration>,
    prefix: String,
    apply: Script,
    fill: Script,
    get: Script,
    park: Script,
}

pub(crate) fn rerr(e: redis::RedisError) -> CacheError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        CacheError::Unavailable(format!("redis: {e}"))
    } else {
        CacheError::Other(format!("redis: {e}"))
    }
}

impl RedisCache {
    /// Connect lazily (a Redis that is down now is retried on every call).
    pub async fn open(url: &str, prefix: &str) -> Result<RedisCache, CacheError> {
        let client = redis::Client::open(url)
            .map_err(|e| CacheError::Other(format!("redis url `{url}`: {e}")))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg).map_err(rerr)?;
        Ok(Self::with(Conn::Single(conn), None, prefix))
    }

    /// A cache on a Redis Cluster named by a `redis+cluster://` URL;
    /// connects lazily like [`RedisCache::open`].
    pub async fn open_cluster(url: &str, prefix: &str) -> Result<RedisCache, CacheError> {
        let u = ClusterUrl::parse(url).map_err(CacheError::Other)?;
        let durable = (u.wait_replicas > 0).then_some((u.wait_replicas, u.wait_timeout));
        let mut c = Self::with(Conn::Cluster(u.connect()?), durable, prefix);
        c.request_deadline = Some(super::cluster::REQUEST_DEADLINE);
        Ok(c)
    }

    fn with(conn: Conn, durable: Option<(u32, Duration)>, prefix: &str) -> RedisCache {
        RedisCache {
            conn,
            durable,
            request_deadline: None,
            prefix: prefix.to_string(),
            apply: Script::new(APPLY),
            fill: Script::new(FILL),
            get: Script::new(GET),
            park: Script::new(PARK),
        }
    }

    /// `fut` within the request path's deadline, if there is one.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        match self.request_deadline {
            None => fut.await,
            Some(d) => tokio::time::timeout(d, fut).await.unwrap_or_else(|_| {
                Err(CacheError::Unavailable(format!(
                    "redis cluster: no answer within {} ms",
                    d.as_millis()
                )))
            }),
        }
    }

    /// On a cluster with `wait_replicas > 0`: fail unless the write just
    /// made to `key`'s slot reached the replicas.
    async fn replicated(&self, conn: &mut Conn, key: &str) -> Result<(), CacheError> {
        match (conn, self.durable) {
            (Conn::Cluster(c), Some((n, timeout))) => wait_replicated(c, key, n, timeout).await,
            _ => Ok(()),
        }
    }

    /// The five keys of a shard: items, cursor, fills, parked items,
    /// parked cursor.
    pub fn keys(&self, shard: &str) -> [String; 5] {
        let p = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}:", self.prefix)
        };
        [
            format!("{p}{{{shard}}}:items"),
            format!("{p}{{{shard}}}:cursor"),
            format!("{p}{{{shard}}}:fills"),
            format!("{p}{{{shard}}}:parked"),
            format!("{p}{{{shard}}}:parked_cursor"),
        ]
    }
}

#[async_trait]
impl ShardCache for RedisCache {
    async fn apply(&self, shard: &str, b: &CacheBatch) -> Result<Applied, CacheError> {
        let [items, cursor, fills, parked, parked_cursor] = self.keys(shard);
        let mut inv = self.apply.prepare_invoke();
        inv.key(items)
            .key(cursor)
            .key(fills)
            .key(parked)
            .key(parked_cursor);
        inv.arg(b.from).arg(b.to).arg(b.upserts.len());
        for (f, v) in &b.upserts {
            inv.arg(f.as_bytes()).arg(v.as_ref());
        }
        for f in &b.deletes {
            inv.arg(f.as_bytes());
        }
        let mut conn = self.conn.clone();
        let (code, cur): (i64, i64) = inv.invoke_async(&mut conn).await.map_err(rerr)?;
        if code != 2 {
            // Applied now or before (a replay): either way the batch must be
            // on a replica before the transfer moves past it.
            self.replicated(&mut conn, &self.keys(shard)[1]).await?;
        }
        Ok(match code {
            0 => Applied::Applied,
            1 => Applied::AlreadyApplied { cursor: cur as u64 },
            _ => Applied::CursorMismatch {
                cursor: u64::try_from(cur).ok(),
            },
        })
    }

    async fn get(&self, shard: &str, field: &str) -> Result<Option<Bytes>, CacheError> {
        let [items, cursor, fills, ..] = self.keys(shard);
        let mut conn = self.conn.clone();
        let v: Option<Vec<u8>> = self
            .bounded(async {
                self.get
                    .key(items)
                    .key(cursor)
                    .key(fills)
                    .arg(field)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(rerr)
            })
            .await?;
        Ok(v.map(Bytes::from))
    }

    async fn fill(
        &self,
        shard: &str,
        field: &str,
        value: Bytes,
        version: u64,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let [items, cursor, fills, ..] = self.keys(shard);
        let mut conn = self.conn.clone();
        let _: i64 = self
            .bounded(async {
                self.fill
                    .key(items)
                    .key(cursor)
                    .key(fills)
                    .arg(field)
                    .arg(value.as_ref())
                    .arg(version)
                    .arg(ttl.as_millis().max(1) as u64)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(rerr)
            })
            .await?;
        Ok(())
    }

    async fn evict(&self, shard: &str) -> Result<(), CacheError> {
        let keys = self.keys(shard);
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("UNLINK")
            .arg(&keys[..])
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        self.replicated(&mut conn, &keys[1]).await
    }

    async fn park(&self, shard: &str, keep: Duration) -> Result<(), CacheError> {
        let keys = self.keys(shard);
        let mut conn = self.conn.clone();
        let mut inv = self.park.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(keep.as_millis() as u64);
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(rerr)?;
        self.replicated(&mut conn, &keys[1]).await
    }

    async fn parked(&self, shard: &str) -> Result<Option<u64>, CacheError> {
        let [.., parked_cursor] = self.keys(shard);
        let mut conn = self.conn.clone();
        let v: Option<String> = conn.get(parked_cursor).await.map_err(rerr)?;
        match v {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                CacheError::Other(format!(
                    "shard `{shard}`: parked cursor `{s}` is not a number"
                ))
            }),
        }
    }

    async fn cursor(&self, shard: &str) -> Result<Option<u64>, CacheError> {
        let [_, cursor, ..] = self.keys(shard);
        let mut conn = self.conn.clone();
        let v: Option<String> = conn.get(cursor).await.map_err(rerr)?;
        match v {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                CacheError::Other(format!("shard `{shard}`: cursor `{s}` is not a number"))
            }),
        }
    }

    async fn size(&self, shard: &str) -> Result<u64, CacheError> {
        let [items, ..] = self.keys(shard);
        let mut conn = self.conn.clone();
        conn.hlen(items).await.map_err(rerr)
    }

    async fn dump(&self, shard: &str) -> Result<Vec<(String, Bytes)>, CacheError> {
        let [items, ..] = self.keys(shard);
        let mut conn = self.conn.clone();
        let all: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(items)
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        Ok(all.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
