//! Redis Cluster as a node cache's engine: the URL that names a cluster,
//! the client built from it, and the durability step after a write.
//!
//! A cluster is named by its seed nodes in one URL:
//!
//! ```text
//! redis+cluster://[user[:password]@]host:port[,host:port…][?wait_replicas=N&wait_timeout_ms=M]
//! ```
//!
//! Any reachable seed is enough: the client reads the slot map from it,
//! follows `MOVED`/`ASK`, and after a failover reconnects and re-reads the
//! map. A shard's keys share the hash tag `{shard}` (see
//! [`super::redis`]), so one slot — one master — holds a shard's items and
//! its cursor, and the batch script stays a single atomic step.
//!
//! Replication in Redis is asynchronous: a batch a master acknowledged can
//! be lost when its replica is promoted. The cursor is lost with it (same
//! slot, same script), so a transfer that re-reads the cursor re-sends
//! exactly what was lost. On top of that, after every batch the cache sends
//! `WAIT wait_replicas wait_timeout_ms` to the slot's master and reports
//! the write as failed (retried by the transfer; the replay is recognised
//! by the cursor) unless that many replicas have it, so a batch reported
//! applied survives the loss of its master. `wait_replicas=0` turns this
//! off (a cluster without replicas, or availability over durability).

use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::CacheError;

/// The URL form, shared with the metadata store (`shardmap`).
pub use shardmap::contract::store_url::{ClusterUrl, CLUSTER_SCHEME as SCHEME};

/// Per-attempt deadlines and the deadline of a whole call (retries and
/// redirects included) on a cluster.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The deadline of a node's read (and fill) on the request path: past it
/// the node answers from the provider, so a failover costs a request at
/// most this much extra rather than the whole failover.
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(500);

/// A client for the cluster `url` names.
pub trait Connect {
    /// A client that connects on first use (a cluster that is down now is
    /// retried on every call), with a deadline on every call.
    fn connect(&self) -> Result<ClusterConnection, CacheError>;
}

impl Connect for ClusterUrl {
    fn connect(&self) -> Result<ClusterConnection, CacheError> {
        // The transfer retries past the call's deadline itself.
        shardmap::contract::store::cluster_connection(self, RESPONSE_TIMEOUT, CALL_TIMEOUT)
            .map_err(CacheError::Other)
    }
}

/// One connection type for both engines, so the scripts run unchanged.
#[derive(Clone)]
pub enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Block until `replicas` replicas of the master serving `key`'s slot have
/// every write this client sent it, or `timeout`. `Unavailable` when fewer
/// did: the caller retries and the cursor tells whether the write is there.
pub async fn wait_replicated(
    conn: &mut ClusterConnection,
    key: &str,
    replicas: u32,
    timeout: Duration,
) -> Result<(), CacheError> {
    let acked = shardmap::contract::store::slot_replicas_acked(conn, key, replicas, timeout)
        .await
        .map_err(super::redis::rerr)?;
    if acked < i64::from(replicas) {
        return Err(CacheError::Unavailable(format!(
            "write to `{key}` reached {acked} of {replicas} replicas within {} ms",
            timeout.as_millis()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_accepts_every_cache_form() {
        for ok in [
            "memory",
            "redis://127.0.0.1:6379/0",
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        ] {
            assert_eq!(crate::cache::check_url(ok), Ok(()), "{ok}");
        }
        let e = crate::cache::check_url("memcached://x").unwrap_err();
        assert!(e.contains("redis+cluster://"), "{e}");
        assert!(crate::cache::check_url("redis+cluster://h").is_err());
    }
}
