//! The sync adapter: the manager's calls to the sync scheduler's control
//! API — what each node holds, pre-fetch orders (submit, follow, cancel),
//! cache evictions and the epoch announcement — translated to and from the
//! state machine's types. The structs mirroring sync's JSON live here and
//! nowhere else.

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use serde::Deserialize;
use tracing::warn;

use super::client::Client;
use super::lease::Lease;
use super::state::{Hosted, HostedView, OrderReport};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Sync's view of an order (the fields the manager reads).
#[derive(Debug, Deserialize)]
struct SyncOrder {
    id: u64,
    state: String,
    #[serde(default)]
    rows: u64,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    finished_unix_ms: Option<i64>,
    #[serde(default)]
    report: Option<SyncReport>,
}

#[derive(Debug, Deserialize)]
struct SyncReport {
    #[serde(default)]
    deadline_met: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct SyncHosted {
    shard: String,
    state: String,
    cursor: u64,
    rows: u64,
}

#[derive(Debug, Deserialize)]
struct SyncNode {
    hosted: Vec<SyncHosted>,
}

/// What announcing an epoch to sync came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// Sync refuses orders of older epochs from now on.
    Yes,
    /// Sync has seen a higher epoch: another manager leads.
    Fenced,
    Failed(String),
}

/// The sync scheduler's control API, at `base`.
#[derive(Clone)]
pub struct SyncClient {
    http: Client,
    base: String,
}

impl SyncClient {
    /// Every call carries `token` (sync's `[manager] sync_token`).
    pub fn new(base: &str, token: Option<String>) -> SyncClient {
        SyncClient {
            http: Client::default().with_bearer(base, token),
            base: base.to_string(),
        }
    }

    /// What every node holds (`GET /nodes`).
    pub async fn hosted(&self) -> Result<Hosted, String> {
        let url = format!("{}/nodes", self.base);
        let nodes = self
            .http
            .get_json::<BTreeMap<String, SyncNode>>(&url, CALL_TIMEOUT)
            .await?;
        Ok(nodes
            .into_iter()
            .map(|(n, v)| {
                let m = v
                    .hosted
                    .into_iter()
                    .map(|h| {
                        (
                            h.shard,
                            HostedView {
                                cursor: h.cursor,
                                rows: h.rows,
                                warm: h.state == "warm",
                            },
                        )
                    })
                    .collect();
                (n, m)
            })
            .collect())
    }

    /// Where order `id` is (`GET /orders/{id}`).
    pub async fn order(&self, id: u64) -> OrderReport {
        let url = format!("{}/orders/{id}", self.base);
        match self.http.get_json::<SyncOrder>(&url, CALL_TIMEOUT).await {
            Ok(so) => {
                debug_assert_eq!(so.id, id);
                match so.state.as_str() {
                    "done" => OrderReport::Done {
                        rows: so.rows,
                        bytes: so.bytes,
                        finished_unix_ms: so.finished_unix_ms,
                        deadline_met: so.report.and_then(|r| r.deadline_met),
                    },
                    "cancelled" => OrderReport::Cancelled,
                    s => OrderReport::Progress {
                        running: s == "running",
                        rows: so.rows,
                        bytes: so.bytes,
                    },
                }
            }
            Err(e) if e.contains(": 404 ") => OrderReport::Missing(e),
            Err(e) => OrderReport::Unreachable(e),
        }
    }

    /// Cancel order `id` (`DELETE /orders/{id}`); a failure is left to the
    /// order's own timeout at sync.
    pub async fn cancel(&self, id: u64) {
        let url = format!("{}/orders/{id}", self.base);
        let _ = self
            .http
            .call(Method::DELETE, &url, None, None, CALL_TIMEOUT)
            .await;
    }

    /// Drop `shard` from `node`'s cache: the status, or why there is none.
    pub async fn evict(&self, node: &str, shard: &str) -> Result<u16, String> {
        let url = format!("{}/nodes/{}/shards/{}", self.base, pct(node), pct(shard));
        self.http
            .call(Method::DELETE, &url, None, None, CALL_TIMEOUT)
            .await
            .map(|(s, _)| s)
    }

    /// Tell sync `epoch` leads (`POST /epoch`).
    pub async fn announce(&self, epoch: u64) -> Announced {
        let url = format!("{}/epoch", self.base);
        let body = serde_json::json!({ "epoch": epoch })
            .to_string()
            .into_bytes();
        match self
            .http
            .call(Method::POST, &url, Some(body), None, CALL_TIMEOUT)
            .await
        {
            Ok((s, _)) if (200..300).contains(&s) => Announced::Yes,
            Ok((409, _)) => Announced::Fenced,
            other => Announced::Failed(format!("{:?}", other.map(|(s, _)| s))),
        }
    }

    /// Submit a pre-fetch order in `epoch`: sync's id for it. A 409 means
    /// sync has seen a higher epoch: the lease is told (another manager
    /// leads).
    pub async fn submit(
        &self,
        shard: &str,
        node: &str,
        priority: f64,
        deadline: i64,
        epoch: u64,
        lease: &Lease,
    ) -> Result<u64, String> {
        let body = serde_json::json!({
            "shard": shard,
            "node": node,
            "priority": if priority.is_finite() && priority > 0.0 { priority } else { 1.0 },
            "deadline_unix_ms": deadline.max(0),
            "epoch": epoch,
        });
        let url = format!("{}/orders", self.base);
        let (status, body) = self
            .http
            .call(
                Method::POST,
                &url,
                Some(body.to_string().into_bytes()),
                None,
                CALL_TIMEOUT,
            )
            .await?;
        if status == 409 {
            lease.fenced("sync refused a pre-fetch order of this epoch");
        }
        if !(200..300).contains(&status) {
            return Err(format!("{status} {}", String::from_utf8_lossy(&body)));
        }
        let o: SyncOrder =
            serde_json::from_slice(&body).map_err(|e| format!("order answer: {e}"))?;
        Ok(o.id)
    }

    /// Evict after a drain: a failure is logged, the copy stays until the
    /// node is reused.
    pub async fn evict_drained(&self, node: &str, shard: &str) {
        if let Err(e) = self.evict(node, shard).await {
            warn!(shard, node, error = %e, "evicting from the node's cache failed; it stays until the node is reused");
        }
    }
}

/// Percent-encode a path segment (shard ids hold `/`).
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_are_percent_encoded_for_paths() {
        assert_eq!(pct("UK/SEASONAL"), "UK%2FSEASONAL");
        assert_eq!(pct("node-a"), "node-a");
    }
}
