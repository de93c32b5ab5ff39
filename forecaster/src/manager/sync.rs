//! The sync adapter: the manager's calls to the sync scheduler's control
//! API — what each node holds, pre-fetch orders (submit, follow, cancel),
//! cache evictions and the epoch announcement — through the typed calls of
//! [`super::client`], in the shared contract types of `shardmap::contract`,
//! translated to and from the state machine's events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shardmap::contract::{HostedShard, HostedState, Order, OrderBatch, OrderRequest, MAX_BATCH};
use tracing::warn;

use super::client::{Client, NodesAnswer, SyncError};
use super::lease::Lease;
use shardmap::contract::manager::HostedView;

use super::state::{self, Hosted, OrderReport};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A batch of orders: sync saves its state once per call, so this bounds
/// a call of [`MAX_BATCH`] orders, not one order.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// An order as sync takes it, in `epoch`.
fn request(o: &state::OrderRequest, epoch: u64) -> OrderRequest {
    let priority = if o.priority.is_finite() && o.priority > 0.0 {
        o.priority
    } else {
        1.0
    };
    OrderRequest {
        shard: o.shard.clone(),
        node: o.node.clone(),
        priority,
        deadline_unix_ms: Some(o.deadline_unix_ms.max(0) as u64),
        deadline_in_ms: None,
        epoch,
    }
}

/// What announcing an epoch to sync came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// Sync refuses orders of older epochs from now on.
    Yes,
    /// Sync has seen a higher epoch: another manager leads.
    Fenced,
    Failed(SyncError),
}

/// A hosted copy as the manager sees it.
fn view_of(h: &HostedShard) -> HostedView {
    HostedView {
        cursor: h.cursor,
        rows: h.rows,
        warm: h.state == HostedState::Warm,
    }
}

/// The sync scheduler's control API, at `base`.
#[derive(Clone)]
pub struct SyncClient {
    http: Client,
    base: String,
    /// Sync's hosted shards as last read, with the version of the answer.
    held: Arc<tokio::sync::Mutex<Option<(String, Hosted)>>>,
}

impl SyncClient {
    /// Every call carries `token` (sync's `[manager] sync_token`).
    pub fn new(base: &str, token: Option<String>) -> SyncClient {
        SyncClient {
            http: Client::default().with_bearer(base, token),
            base: base.to_string(),
            held: Arc::default(),
        }
    }

    /// What every node holds: `GET /nodes?since=` the version of the last
    /// answer, applied to the view this client keeps (sync answers in full
    /// on the first call, after its restart, or when the version is too
    /// old). A failed call leaves the view as it was, for the next call to
    /// ask from the same version.
    pub async fn hosted(&self) -> Result<Hosted, SyncError> {
        let mut held = self.held.lock().await;
        let since = held.as_ref().map_or("0", |(v, _)| v.as_str()).to_string();
        let answer = self
            .http
            .sync_nodes_since(&self.base, &since, CALL_TIMEOUT)
            .await?;
        match answer {
            NodesAnswer::Change(change) => {
                let (version, mut view) = held.take().unwrap_or_default();
                if !change.full && version != since {
                    // Cannot happen with the lock held; read whole next time.
                    return Err(SyncError::Refused(format!(
                        "sync answered a change since {since} to a view at {version}"
                    )));
                }
                let version = change.version.clone();
                change.apply_to(&mut view, view_of);
                let out = view.clone();
                *held = Some((version, view));
                Ok(out)
            }
            NodesAnswer::Plain(nodes) => {
                *held = None;
                Ok(nodes
                    .into_iter()
                    .map(|(n, v)| {
                        let m = v
                            .hosted
                            .iter()
                            .map(|h| (h.shard.clone(), view_of(h)))
                            .collect();
                        (n, m)
                    })
                    .collect())
            }
        }
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

    /// Where the orders of `ids` are (`GET /orders?ids=`, up to
    /// [`MAX_BATCH`] a call): one report per id, in the order asked. An id
    /// sync's answer leaves out is missing there; a call that fails leaves
    /// its ids unanswered.
    pub async fn orders(&self, ids: &[u64]) -> Vec<(u64, OrderReport)> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_BATCH) {
            match self
                .http
                .sync_orders_of(&self.base, chunk, CALL_TIMEOUT)
                .await
            {
                Ok(found) => {
                    let mut found: HashMap<u64, Order> =
                        found.into_iter().map(|o| (o.id, o)).collect();
                    out.extend(chunk.iter().map(|&id| {
                        let r = match found.remove(&id) {
                            Some(o) => OrderReport::Found(Box::new(o)),
                            None => OrderReport::Missing(SyncError::NoOrder(id).to_string()),
                        };
                        (id, r)
                    }));
                }
                Err(e) => {
                    let why = e.to_string();
                    out.extend(
                        chunk
                            .iter()
                            .map(|&id| (id, OrderReport::Unreachable(why.clone()))),
                    );
                }
            }
        }
        out
    }

    /// Submit pre-fetch orders in `epoch` (`POST /orders/batch`, up to
    /// [`MAX_BATCH`] a call): per order, in the order given, sync's id for
    /// it or why not. A refusal of the epoch means sync has seen a higher
    /// one: the lease is told (another manager leads).
    pub async fn submit(
        &self,
        orders: &[state::OrderRequest],
        epoch: u64,
        lease: &Lease,
    ) -> Vec<Result<u64, SyncError>> {
        let mut out = Vec::with_capacity(orders.len());
        for chunk in orders.chunks(MAX_BATCH) {
            let batch = OrderBatch {
                orders: chunk.iter().map(|o| request(o, epoch)).collect(),
            };
            match self
                .http
                .sync_submit_batch(&self.base, &batch, BATCH_TIMEOUT)
                .await
            {
                Ok(results) => out.extend(results.into_iter().map(|r| match r.order {
                    Some(o) if r.status < 300 => Ok(o.id),
                    _ => Err(SyncError::of_result(
                        r.status,
                        r.error.unwrap_or_else(|| format!("status {}", r.status)),
                        epoch,
                    )),
                })),
                Err(e) => out.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
        }
        if out
            .iter()
            .any(|r| matches!(r, Err(SyncError::Fenced { .. })))
        {
            lease.fenced("sync refused a pre-fetch order of this epoch");
        }
        out
    }

    /// Evict after a drain: a failure is logged, the copy stays until the
    /// node is reused.
    pub async fn evict_drained(&self, node: &str, shard: &str) {
        if let Err(e) = self.evict(node, shard).await {
            warn!(shard, node, error = %e, "evicting from the node's cache failed; it stays until the node is reused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sync that answers every request with `status` and `body`.
    async fn sync_answering(status: u16, body: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        base
    }

    const RUNNING: &str = r#"{"id":7,"shard":"UK/LIGHTING","node":"node-c","priority":2.5,
        "deadline_unix_ms":null,"state":"running","submitted_unix_ms":1,"started_unix_ms":2,
        "finished_unix_ms":null,"cursor":9,"rows":4,"bytes":40,"last_error":null,"report":null,"epoch":1}"#;

    #[tokio::test]
    async fn sync_answers_become_reports() {
        let c = SyncClient::new(&sync_answering(200, RUNNING.into()).await, None);
        match c.order(7).await {
            OrderReport::Found(o) => {
                assert_eq!(o.state, shardmap::contract::OrderState::Running);
                assert_eq!((o.rows, o.bytes), (4, 40));
            }
            other => panic!("{other:?}"),
        }
        // Another order's answer is not this one's.
        assert!(matches!(c.order(8).await, OrderReport::Unreachable(_)));
        let c = SyncClient::new(
            &sync_answering(404, r#"{"error":"no order 7"}"#.into()).await,
            None,
        );
        assert!(matches!(c.order(7).await, OrderReport::Missing(_)));
    }

    /// A state this manager does not know (a newer sync) is an error the
    /// order's timeout settles, never a finished order.
    #[tokio::test]
    async fn an_unknown_order_state_is_an_error_not_a_finish() {
        let odd = RUNNING.replace(r#""state":"running""#, r#""state":"paused""#);
        let c = SyncClient::new(&sync_answering(200, odd).await, None);
        let report = c.order(7).await;
        let OrderReport::Unreachable(e) = &report else {
            panic!("{report:?}")
        };
        assert!(e.contains("unknown variant `paused`"), "{e}");

        let mut st = super::super::state::tests::state(1, 4);
        super::super::state::tests::ordered(&mut st, "s0", "c", None, 7, 100);
        let fx = st.apply(state::Event::OrderReported {
            id: 7,
            report: report.clone(),
            now: 200,
        });
        assert!(fx.is_empty(), "{fx:?}");
        assert!(st.orders[0].state.is_open());
        assert_eq!(st.outcomes.done, 0);
        // Past the order's timeout it fails, and is cancelled at sync.
        let fx = st.apply(state::Event::OrderReported {
            id: 7,
            report,
            now: 100 + super::super::state::tests::TIMEOUT_MS + 1,
        });
        assert!(fx.contains(&state::Effect::Cancel { id: 7 }));
        assert_eq!(
            st.orders[0].state,
            shardmap::contract::manager::TrackedState::Failed
        );
    }

    #[tokio::test]
    async fn hosted_shards_are_warm_only_when_sync_says_warm() {
        let nodes = r#"{"node-a":{"hosted":[{"shard":"UK/SEASONAL","state":"warm","cursor":12,"rows":3,"last_sync_unix_ms":9},
            {"shard":"UK/LIGHTING","state":"warming","cursor":0,"rows":0,"last_sync_unix_ms":9}]},"node-b":{"hosted":[]}}"#;
        let c = SyncClient::new(&sync_answering(200, nodes.into()).await, None);
        let h = c.hosted().await.unwrap();
        assert!(h["node-a"]["UK/SEASONAL"].warm);
        assert_eq!(h["node-a"]["UK/SEASONAL"].cursor, 12);
        assert!(!h["node-a"]["UK/LIGHTING"].warm);
        assert!(h["node-b"].is_empty());
    }
}
