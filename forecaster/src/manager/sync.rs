//! The sync adapter: the manager's calls to the sync scheduler's control
//! API — what each node holds, pre-fetch orders (submit, follow, cancel),
//! cache evictions and the epoch announcement — through the typed calls of
//! [`super::client`], in the shared contract types of `shardmap::contract`,
//! translated to and from the state machine's events.

use std::time::Duration;

use shardmap::contract::{HostedState, OrderRequest};
use tracing::warn;

use super::client::{Client, SyncError};
use super::lease::Lease;
use shardmap::contract::manager::HostedView;

use super::state::{self, Hosted, OrderReport};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What announcing an epoch to sync came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// Sync refuses orders of older epochs from now on.
    Yes,
    /// Sync has seen a higher epoch: another manager leads.
    Fenced,
    Failed(SyncError),
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
    pub async fn hosted(&self) -> Result<Hosted, SyncError> {
        let nodes = self.http.sync_nodes(&self.base, CALL_TIMEOUT).await?;
        Ok(nodes
            .into_iter()
            .map(|(n, v)| {
                let m = v
                    .hosted
                    .into_iter()
                    .map(|h| {
                        let view = HostedView {
                            cursor: h.cursor,
                            rows: h.rows,
                            warm: h.state == HostedState::Warm,
                        };
                        (h.shard, view)
                    })
                    .collect();
                (n, m)
            })
            .collect())
    }

    /// Where order `id` is (`GET /orders/{id}`). An answer that is not an
    /// order (an unknown state: sync and the manager at versions that do
    /// not agree) is no answer, never a finished order.
    pub async fn order(&self, id: u64) -> OrderReport {
        match self.http.sync_order(&self.base, id, CALL_TIMEOUT).await {
            Ok(o) if o.id == id => OrderReport::Found(Box::new(o)),
            Ok(o) => OrderReport::Unreachable(format!("asked for order {id}, got {}", o.id)),
            Err(e @ SyncError::NoOrder(_)) => OrderReport::Missing(e.to_string()),
            Err(e) => OrderReport::Unreachable(e.to_string()),
        }
    }

    /// Cancel order `id` (`DELETE /orders/{id}`); a failure is left to the
    /// order's own timeout at sync.
    pub async fn cancel(&self, id: u64) {
        match self.http.sync_cancel(&self.base, id, CALL_TIMEOUT).await {
            Ok(_) | Err(SyncError::NoOrder(_)) => {}
            Err(e) => {
                warn!(order = id, error = %e, "cancelling at sync failed; the order times out there")
            }
        }
    }

    /// Drop `shard` from `node`'s cache (202 once scheduled).
    pub async fn evict(&self, node: &str, shard: &str) -> Result<(), SyncError> {
        self.http
            .sync_evict(&self.base, node, shard, CALL_TIMEOUT)
            .await
    }

    /// Tell sync `epoch` leads (`POST /epoch`).
    pub async fn announce(&self, epoch: u64) -> Announced {
        match self.http.sync_fence(&self.base, epoch, CALL_TIMEOUT).await {
            // Sync answers the highest epoch it has seen; above ours, it
            // kept the other's fence.
            Ok(seen) if seen > epoch => Announced::Fenced,
            Ok(_) => Announced::Yes,
            Err(SyncError::Fenced { .. }) => Announced::Fenced,
            Err(e) => Announced::Failed(e),
        }
    }

    /// Submit a pre-fetch order in `epoch`: sync's id for it. A refusal of
    /// the epoch means sync has seen a higher one: the lease is told
    /// (another manager leads).
    pub async fn submit(
        &self,
        o: &state::OrderRequest,
        epoch: u64,
        lease: &Lease,
    ) -> Result<u64, SyncError> {
        let priority = if o.priority.is_finite() && o.priority > 0.0 {
            o.priority
        } else {
            1.0
        };
        let request = OrderRequest {
            shard: o.shard.clone(),
            node: o.node.clone(),
            priority,
            deadline_unix_ms: Some(o.deadline_unix_ms.max(0) as u64),
            deadline_in_ms: None,
            epoch,
        };
        match self
            .http
            .sync_submit(&self.base, &request, CALL_TIMEOUT)
            .await
        {
            Ok(order) => Ok(order.id),
            Err(e @ SyncError::Fenced { .. }) => {
                lease.fenced("sync refused a pre-fetch order of this epoch");
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Evict after a drain: a failure is logged, the copy stays until the
    /// node is reused.
    pub async fn evict_drained(&self, node: &str, shard: &str) {
        if let Err(e) = self.evict(node, shard).await {
            warn!(shard, node, error = %e, "evicting from the node's cache failed; it stays until the node is reused");
        }
    }
}
