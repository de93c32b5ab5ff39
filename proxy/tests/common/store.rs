//! A metadata store for a proxy to follow: a real Redis started for the
//! test, the `[control]` section that points a proxy at it, and the
//! table writes and notifications a follower reacts to.

use serde_json::Value;
use shardcast_sync::testkit::Redis;

/// A Redis holding the table under `prefix`, with a connection to write it.
/// Dropping it stops the Redis (a store that goes away).
pub struct Store {
    pub redis: Redis,
    pub prefix: String,
    conn: redis::aio::MultiplexedConnection,
}

impl Store {
    pub async fn start(prefix: &str) -> Store {
        let redis = Redis::start();
        let conn = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Store {
            redis,
            prefix: prefix.into(),
            conn,
        }
    }

    /// The `[control]` section that makes a proxy follow this store, reading
    /// it on every notification and every `poll_ms` besides.
    pub fn control(&self, poll_ms: u64) -> String {
        format!(
            "[control]\nmetadata = \"{}\"\nprefix = \"{}\"\npoll_ms = {poll_ms}\n",
            self.redis.url(),
            self.prefix
        )
    }

    /// The default proxy options ([`super::opts`]) with [`Store::control`]:
    /// a proxy that follows this store.
    pub fn follower_opts(&self, poll_ms: u64) -> super::ProxyOpts {
        let mut o = super::opts();
        o.extra += &self.control(poll_ms);
        o
    }

    /// `SET {prefix}:table`, without telling anyone.
    pub async fn set_table(&mut self, table: &str) {
        let _: () = redis::cmd("SET")
            .arg(format!("{}:table", self.prefix))
            .arg(table)
            .query_async(&mut self.conn)
            .await
            .unwrap();
    }

    /// `PUBLISH {prefix}:table:changed {version}`: the notification
    /// followers wake on.
    pub async fn notify(&mut self, version: &Value) {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("{}:table:changed", self.prefix))
            .arg(version.to_string())
            .query_async(&mut self.conn)
            .await
            .unwrap();
    }
}
