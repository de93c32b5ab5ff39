//! Following the metadata store: the shard manager writes each new table
//! assignment to Redis (`<prefix>:table`, a JSON [`shardmap::TableUpdate`],
//! with the delta from the table before it at `<prefix>:table:delta`) and
//! publishes its version on `<prefix>:table:changed`. Every proxy
//! subscribed applies the delta when it holds the delta's base, else the
//! full table (only when its assignment version is newer than the
//! table's; the config generation plays no part), so all proxies converge
//! on the same assignment version; a proxy that missed a message, or
//! restarted, catches up on the next one or on the periodic re-read. Redis being down
//! never affects serving: the current table stays, errors are logged with
//! backoff and counted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::state::Shared;

#[derive(Debug, Default)]
pub struct MetadataCounters {
    pub applied: AtomicU64,
    pub errors: AtomicU64,
}

/// Catch up with the store: nothing when its version is this proxy's; the
/// last delta when this proxy holds its base (a few hundred bytes when few
/// shards changed); else the full table. One round trip reads the version
/// and the delta.
async fn fetch_and_apply(
    shared: &Arc<Shared>,
    conn: &mut shardmap::contract::store::Conn,
    keys: &shardmap::contract::MetadataKeys,
) -> Result<(), String> {
    let current = shared.current().table.assignment_version;
    let (version_key, delta_key) = (keys.version(), keys.table_delta());
    let (version, delta): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("MGET")
        .arg(&version_key)
        .arg(&delta_key)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let version =
        version.and_then(|v| serde_json::from_slice::<shardmap::AssignmentVersion>(&v).ok());
    if version.is_some_and(|v| v <= current) {
        return Ok(());
    }
    if let Some(raw) = delta {
        let delta: shardmap::TableUpdate = serde_json::from_slice(&raw)
            .map_err(|e| format!("{delta_key}: not a table update: {e}"))?;
        // The delta that led to the stored table, from this proxy's.
        if Some(delta.version) == version && delta.base == Some(current) {
            return apply(shared, delta, &delta_key).await;
        }
    }
    let key = keys.table();
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let Some(raw) = raw else { return Ok(()) };
    let update: shardmap::TableUpdate =
        serde_json::from_slice(&raw).map_err(|e| format!("{key}: not a table update: {e}"))?;
    if update.version <= shared.current().table.assignment_version {
        return Ok(());
    }
    apply(shared, update, &key).await
}

async fn apply(
    shared: &Arc<Shared>,
    update: shardmap::TableUpdate,
    key: &str,
) -> Result<(), String> {
    let delta = update.base.is_some();
    match crate::reload::apply_update(shared, update).await {
        Ok(v) => {
            shared.metadata.applied.fetch_add(1, Relaxed);
            info!(
                assignment_version = %v.assignment_version,
                delta,
                "table from the metadata store applied"
            );
            Ok(())
        }
        // Moved meanwhile (a push from the manager): the next message or
        // poll reads again.
        Err(crate::reload::UpdateError::Table(
            shardmap::table::TableError::Stale { .. }
            | shardmap::table::TableError::BaseMismatch { .. },
        )) => Ok(()),
        Err(e) => Err(format!("{key}: rejected: {e}")),
    }
}

/// Follow the store named in the config until shutdown.
///
/// On a Redis Cluster the reads go through the cluster client (the slot
/// map, redirects and failovers are its business) and the subscription is
/// to one node, the first of the URL's seeds that answers: a cluster's
/// `PUBLISH` reaches every node. When that node dies or the connection
/// drops, the next session subscribes to the next seed and re-reads the
/// store first, so a message missed meanwhile leaves no proxy behind.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    // The seed to subscribe to first (moves on past one that failed).
    let mut node = 0usize;
    loop {
        let cfg = shared.current().config.control.clone();
        let Some(url) = cfg.metadata.clone() else {
            // Not configured (a reload may configure it later).
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = shutdown.changed() => return,
            }
        };
        let keys = shardmap::contract::MetadataKeys::for_url(cfg.prefix.as_str(), &url);
        let channel = keys.table_changed();
        let poll = Duration::from_millis(cfg.poll_ms);
        let subscribed = &mut node;
        let session = async {
            let mut conn = shardmap::contract::store::connect(&url).await?;
            let (mut pubsub, at) =
                shardmap::contract::store::subscribe(&url, &channel, *subscribed).await?;
            *subscribed = at;
            let mut messages = pubsub.on_message();
            // Subscribed first, then read: nothing published in between
            // is missed.
            fetch_and_apply(&shared, &mut conn, &keys).await?;
            loop {
                let same =
                    shared.current().config.control.metadata.as_deref() == Some(url.as_str());
                if !same {
                    return Ok::<(), String>(());
                }
                tokio::select! {
                    m = messages.next() => {
                        if m.is_none() {
                            *subscribed += 1;
                            return Err("subscription closed (the node went away)".into());
                        }
                    }
                    _ = tokio::time::sleep(poll) => {}
                }
                fetch_and_apply(&shared, &mut conn, &keys).await?;
            }
        };
        let result = tokio::select! {
            r = session => r,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                shared.metadata.errors.fetch_add(1, Relaxed);
                warn!(error = %e, retry_in = ?backoff, "metadata store unavailable; serving the current table");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
