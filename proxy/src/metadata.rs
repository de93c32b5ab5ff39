//! Following the metadata store: the shard manager appends each new table
//! assignment's delta to Redis (`<prefix>:table:log`, JSON
//! [`shardmap::TableUpdate`]s each from the version before), now and then
//! with a full snapshot (`<prefix>:table`), and publishes its version on
//! `<prefix>:table:changed`. Every proxy subscribed applies the log's
//! deltas from its own version on when the log has that version as a base,
//! else the snapshot and the deltas after it (only when its assignment version is newer than the
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
/// deltas of the log from this proxy's version on, when the log has it as
/// a base (a few hundred bytes each when few shards changed; read from the
/// newest back, so a proxy one version behind reads one delta); else the
/// snapshot, then the log's deltas after it.
async fn fetch_and_apply(
    shared: &Arc<Shared>,
    conn: &mut shardmap::contract::store::Conn,
    keys: &shardmap::contract::MetadataKeys,
) -> Result<(), String> {
    let current = shared.current().table.assignment_version;
    let version: Option<Vec<u8>> = redis::cmd("GET")
        .arg(keys.version())
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let version =
        version.and_then(|v| serde_json::from_slice::<shardmap::AssignmentVersion>(&v).ok());
    if version.is_some_and(|v| v <= current) {
        return Ok(());
    }
    // The log's newest entries first (a proxy is mostly one version
    // behind): the last one, then the last 8, 64, …, up to the whole log.
    let log_key = keys.table_log();
    let mut window: i64 = 1;
    loop {
        let log: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&log_key)
            .arg(-window)
            .arg(-1)
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        let deltas = shardmap::contract::keys::log_chain(&log, current);
        if !deltas.is_empty() {
            for d in deltas {
                apply(shared, d, &log_key).await?;
            }
            return Ok(());
        }
        if (log.len() as i64) < window {
            break;
        }
        window *= 8;
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
    let snapshot = update.version;
    if snapshot > shared.current().table.assignment_version {
        apply(shared, update, &key).await?;
    }
    // The snapshot may be a few versions old: the log leads on from it
    // (re-read: it may have moved on while the snapshot was read).
    let log: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(&log_key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let at = shared.current().table.assignment_version;
    for d in shardmap::contract::keys::log_chain(&log, at) {
        apply(shared, d, &log_key).await?;
    }
    Ok(())
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
