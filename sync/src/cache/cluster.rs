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

use redis::cluster::ClusterConfig;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::CacheError;

/// The scheme of a cluster cache URL.
pub const SCHEME: &str = "redis+cluster://";

/// Per-attempt deadlines and the deadline of a whole call (retries and
/// redirects included) on a cluster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The deadline of a node's read (and fill) on the request path: past it
/// the node answers from the provider, so a failover costs a request at
/// most this much extra rather than the whole failover.
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(500);

/// A parsed `redis+cluster://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// `redis://[auth@]host:port` of every seed node.
    pub seeds: Vec<String>,
    /// Replicas that must hold a batch before it counts as written.
    pub wait_replicas: u32,
    /// How long a write waits for them.
    pub wait_timeout: Duration,
}

impl ClusterUrl {
    /// Parse a cluster URL; the error names what is wrong with it.
    pub fn parse(url: &str) -> Result<ClusterUrl, String> {
        let rest = url
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("`{url}`: a cluster URL starts with `{SCHEME}`"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let mut seeds = vec![];
        for h in hosts.split(',') {
            let ok = h.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(format!(
                    "`{url}`: seed `{h}` is not host:port (a cluster has no database number)"
                ));
            }
            seeds.push(match auth {
                Some(a) => format!("redis://{a}@{h}"),
                None => format!("redis://{h}"),
            });
        }
        let mut out = ClusterUrl {
            seeds,
            wait_replicas: 1,
            wait_timeout: Duration::from_millis(1000),
        };
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "wait_replicas" => {
                    out.wait_replicas = v.parse().map_err(|_| {
                        format!("`{url}`: wait_replicas `{v}` is not a whole number")
                    })?;
                }
                "wait_timeout_ms" => {
                    let ms: u64 = v.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                        format!("`{url}`: wait_timeout_ms `{v}` is not a positive number")
                    })?;
                    out.wait_timeout = Duration::from_millis(ms);
                }
                _ => {
                    return Err(format!(
                        "`{url}`: unknown option `{k}` (expected wait_replicas, wait_timeout_ms)"
                    ))
                }
            }
        }
        Ok(out)
    }

    /// A client that connects on first use (a cluster that is down now is
    /// retried on every call), with a deadline on every call.
    pub fn connect(&self) -> Result<ClusterConnection, CacheError> {
        let client = redis::cluster::ClusterClientBuilder::new(self.seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .overall_response_timeout(Some(CALL_TIMEOUT))
            // Through a failover: waits of 50 ms doubling to 1 s, ~8 s in
            // all, within the call's deadline; the transfer retries beyond.
            .retries(10)
            .min_retry_wait(50)
            .max_retry_wait(1000)
            .retry_wait_formula(50, 2)
            .build()
            .map_err(|e| CacheError::Other(format!("redis cluster {:?}: {e}", self.seeds)))?;
        Ok(client.get_pending_async_connection_with_config(ClusterConfig::new()))
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
    // The client would send WAIT to every master; it must go to this slot's.
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
        key,
        SlotAddr::Master,
    )));
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(replicas).arg(timeout.as_millis() as u64);
    let acked = conn
        .route_command(cmd, route)
        .await
        .map_err(super::redis::rerr)?;
    let Value::Int(acked) = acked else {
        return Err(CacheError::Other(format!("WAIT answered {acked:?}")));
    };
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
    use super::*;

    #[test]
    fn seeds_auth_and_options() {
        let u = ClusterUrl::parse(
            "redis+cluster://u:p%40ss@h1:7000,10.0.0.2:7001/?wait_replicas=2&wait_timeout_ms=250",
        )
        .unwrap();
        assert_eq!(
            u.seeds,
            ["redis://u:p%40ss@h1:7000", "redis://u:p%40ss@10.0.0.2:7001"]
        );
        assert_eq!(u.wait_replicas, 2);
        assert_eq!(u.wait_timeout, Duration::from_millis(250));
        let d = ClusterUrl::parse("redis+cluster://127.0.0.1:7000").unwrap();
        assert_eq!((d.wait_replicas, d.wait_timeout.as_millis()), (1, 1000));
    }

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

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("redis://h:1", "starts with"),
            ("redis+cluster://h1", "not host:port"),
            ("redis+cluster://h1:7000,", "not host:port"),
            ("redis+cluster://h1:7000/2", "no database"),
            ("redis+cluster://h1:0", "not host:port"),
            ("redis+cluster://h1:7000?wait=1", "unknown option"),
            ("redis+cluster://h1:7000?wait_replicas=x", "wait_replicas"),
            (
                "redis+cluster://h1:7000?wait_timeout_ms=0",
                "wait_timeout_ms",
            ),
        ] {
            let e = ClusterUrl::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
