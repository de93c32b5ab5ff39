//! Node health, published: every health interval, when the config names a
//! metadata store (`[control] metadata`), this proxy writes what its own
//! checks say about every node ([`shardmap::health::HealthReport`]) into
//! the store's health hash. The shard manager reads those reports instead
//! of probing the nodes itself, so there is one health checker — the
//! proxies', from where the traffic is — and the manager acts on the same
//! verdicts replica choice does. Without a metadata store the manager reads
//! the same states from `GET /admin/table`.

use std::sync::Arc;

use shardmap::contract::store::{connect, Conn};
use shardmap::contract::MetadataKeys;
use shardmap::health::{HealthReport, NodeReport, REPORT_TTL_MS};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::snapshot::Snapshot;
use crate::state::Shared;

/// What this proxy's checks say about every node of `snap`'s table now.
pub fn report(instance: &str, snap: &Snapshot) -> HealthReport {
    let now = crate::node::now_ms();
    HealthReport {
        proxy: instance.to_string(),
        at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        nodes: snap
            .table
            .nodes
            .iter()
            .zip(&snap.nodes)
            .map(|(spec, rt)| {
                (
                    spec.name.clone(),
                    NodeReport {
                        health: rt.health(now),
                        checks_passing: rt.checks_passing(),
                    },
                )
            })
            .collect(),
    }
}

async fn write(conn: &mut Conn, keys: &MetadataKeys, r: &HealthReport) -> Result<(), String> {
    let key = keys.node_health();
    let body = serde_json::to_string(r).map_err(|e| e.to_string())?;
    redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(&key)
        .arg(&r.proxy)
        .arg(body)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(REPORT_TTL_MS)
        .ignore()
        .query_async::<()>(conn)
        .await
        .map_err(|e| e.to_string())
}

/// Publish until `shutdown` turns true. A store that is down is retried
/// every interval; the first failure after a success is logged.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut conn: Option<(String, Conn)> = None;
    let mut failing = false;
    loop {
        let snap = shared.current();
        let interval = snap.config.health.interval;
        if let Some(url) = snap.config.control.metadata.clone() {
            if conn.as_ref().is_none_or(|(u, _)| *u != url) {
                conn = match connect(&url).await {
                    Ok(c) => Some((url.clone(), c)),
                    Err(e) => {
                        if !failing {
                            warn!(error = %e, "metadata store unreachable; node health not published");
                        }
                        failing = true;
                        None
                    }
                };
            }
            if let Some((_, c)) = conn.as_mut() {
                let r = report(&shared.instance, &snap);
                let keys = MetadataKeys::for_url(&snap.config.control.prefix, &url);
                match write(c, &keys, &r).await {
                    Ok(()) => {
                        if failing {
                            info!("node health published again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            warn!(error = %e, "node health not published; retrying");
                        }
                        failing = true;
                        conn = None;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
