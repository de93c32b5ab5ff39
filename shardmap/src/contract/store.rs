//! The client for a [`StoreUrl`]: one connection type for one Redis and
//! for a Redis Cluster, so the metadata store's scripts run unchanged on
//! both; `WAIT` to the master of a key's slot; and a pub/sub subscription
//! that works on either (on a cluster, any node: a cluster's `PUBLISH`
//! reaches every node).

use std::time::Duration;

use redis::cluster::ClusterConfig;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::store_url::{ClusterUrl, StoreUrl};

/// Connecting to one node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One attempt (one Redis: one call).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole call on a cluster, its redirects and retries through a failover
/// included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the cluster `url` names that connects on first use (a
/// cluster that is down now is tried again on every call): `response` bounds
/// one attempt, `call` a whole call with its redirects and its retries
/// through a failover (waits of 50 ms doubling to 1 s, ~8 s in all).
pub fn cluster_connection(
    url: &ClusterUrl,
    response: Duration,
    call: Duration,
) -> Result<ClusterConnection, String> {
    let client = redis::cluster::ClusterClientBuilder::new(url.seeds.clone())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response)
        .overall_response_timeout(Some(call))
        .retries(10)
        .min_retry_wait(50)
        .max_retry_wait(1000)
        .retry_wait_formula(50, 2)
        .build()
        .map_err(|e| format!("redis cluster {:?}: {e}", url.seeds))?;
    Ok(client.get_pending_async_connection_with_config(ClusterConfig::new()))
}

/// `WAIT replicas timeout` on the master serving `key`'s slot (left to
/// itself the client would send it to every master): how many of that
/// master's replicas hold every write this client sent it.
pub async fn slot_replicas_acked(
    conn: &mut ClusterConnection,
    key: &str,
    replicas: u32,
    timeout: Duration,
) -> redis::RedisResult<i64> {
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
        key,
        SlotAddr::Master,
    )));
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(replicas).arg(timeout.as_millis() as u64);
    match conn.route_command(cmd, route).await? {
        Value::Int(n) => Ok(n),
        other => Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "WAIT answered something other than a count",
            format!("{other:?}"),
        ))),
    }
}

/// A connection to one Redis or to a cluster.
#[derive(Clone)]
pub enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster {
        conn: ClusterConnection,
        /// Replicas a write must reach before it counts as written.
        wait_replicas: u32,
        wait_timeout: Duration,
    },
}

/// Connect to the store `url` names (`url` parsed first: a bad one says
/// why). One Redis must answer within 2 s, then each call within 5 s; a
/// cluster connects on first use and every call has a deadline.
pub async fn connect(url: &str) -> Result<Conn, String> {
    match StoreUrl::parse(url)? {
        StoreUrl::Single(u) => {
            let client = redis::Client::open(u.as_str()).map_err(|e| format!("{u}: {e}"))?;
            // A full table at 10k shards is ~1 MB in one script, and the
            // records' write touches every shard: more than the client's
            // default 500 ms may pass under load.
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let fut = client.get_multiplexed_async_connection_with_config(&cfg);
            match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
                Ok(r) => r.map(Conn::Single).map_err(|e| format!("{u}: {e}")),
                Err(_) => Err(format!("{u}: no connection within 2 s")),
            }
        }
        StoreUrl::Cluster(c) => {
            let conn = cluster_connection(&c, RESPONSE_TIMEOUT, CALL_TIMEOUT)?;
            Ok(Conn::Cluster {
                conn,
                wait_replicas: c.wait_replicas,
                wait_timeout: c.wait_timeout,
            })
        }
    }
}

impl Conn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster { .. })
    }

    /// On a cluster, block until `wait_replicas` replicas of the master
    /// serving `key`'s slot hold every write this client sent it (or the
    /// timeout); an error when fewer do, naming how many. One Redis, or
    /// `wait_replicas=0`: nothing to wait for.
    pub async fn wait_replicated(&mut self, key: &str) -> Result<(), String> {
        let Conn::Cluster {
            conn,
            wait_replicas,
            wait_timeout,
        } = self
        else {
            return Ok(());
        };
        if *wait_replicas == 0 {
            return Ok(());
        }
        let acked = slot_replicas_acked(conn, key, *wait_replicas, *wait_timeout)
            .await
            .map_err(|e| format!("WAIT after writing `{key}`: {e}"))?;
        if acked < i64::from(*wait_replicas) {
            return Err(format!(
                "the write to `{key}` reached {acked} of {wait_replicas} replicas within {} ms",
                wait_timeout.as_millis()
            ));
        }
        Ok(())
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster { conn, .. } => conn.req_packed_command(cmd),
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
            Conn::Cluster { conn, .. } => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster { conn, .. } => conn.get_db(),
        }
    }
}

/// A subscription to `channel`. On a cluster, to the first seed that
/// answers, trying them from `start` on (a caller that lost its node
/// passes the next index, so it moves on to another node); returns the
/// index of the node subscribed to. The subscription ends (the stream
/// returns `None`) when that node dies or the connection drops.
pub async fn subscribe(
    url: &str,
    channel: &str,
    start: usize,
) -> Result<(redis::aio::PubSub, usize), String> {
    let nodes = match StoreUrl::parse(url)? {
        StoreUrl::Single(u) => vec![u],
        StoreUrl::Cluster(c) => c.seeds,
    };
    let mut errors = vec![];
    for i in 0..nodes.len() {
        let at = (start + i) % nodes.len();
        let node = &nodes[at];
        let attempt = async {
            let client = redis::Client::open(node.as_str()).map_err(|e| e.to_string())?;
            let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            pubsub.subscribe(channel).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(pubsub)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(p)) => return Ok((p, at)),
            Ok(Err(e)) => errors.push(format!("{node}: {e}")),
            Err(_) => errors.push(format!("{node}: no subscription within 2 s")),
        }
    }
    Err(format!("subscribing to `{channel}`: {}", errors.join("; ")))
}
