//! The manager's HTTP client for its calls to the sync scheduler, the
//! nodes' health checks and the proxies' admin APIs: the workspace's one
//! client ([`shardcast_edge::client`]) with the manager's settings. JSON in,
//! JSON out; every call is bounded by a timeout and a response-size limit.
//! A client built [`Client::with_bearer`] sends its token with every call
//! under one base URL (the sync scheduler's `[manager] sync_token`), so the
//! call sites need not carry it.
//!
//! Sync's control API is here typed ([`Client::sync_order`] and its
//! siblings): the shared contract types of `shardmap::contract` in and out,
//! and a [`SyncError`] to branch on ("no such order", "fenced") instead of
//! matching on message text. The proxies' calls ([`Client::send`],
//! [`Client::get_typed`]) answer [`edge::CallError`].

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use shardcast_edge::client::{self as edge, Call, ClientOptions};
use shardmap::contract::hosted::{Nodes, NodesChange};
use shardmap::contract::{
    EpochBody, Evicting, Order, OrderBatch, OrderBatchAnswer, OrderRequest, OrderResult,
};

const MAX_RESPONSE: usize = 16 << 20;

/// `GET /nodes?since=`'s answer: the change, or the plain list of a sync
/// that predates `since`.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum NodesAnswer {
    Change(NodesChange),
    Plain(Nodes),
}

#[derive(Clone)]
pub struct Client {
    inner: edge::Client,
    /// `(base URL, token)`: calls under the base carry the token.
    bearer: Option<(String, String)>,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            inner: edge::Client::new(ClientOptions {
                connect_timeout: Duration::from_millis(500),
                user_agent: "shardcast-manager",
                ..ClientOptions::default()
            }),
            bearer: None,
        }
    }
}

/// Why a call to sync's control API did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// Sync does not know the order (never submitted, or dropped from its
    /// bounded history of finished orders).
    #[error("sync has no order {0}")]
    NoOrder(u64),
    /// Sync has seen a higher manager epoch: another manager leads.
    #[error("sync refused epoch {epoch}: {message}")]
    Fenced { epoch: u64, message: String },
    /// Sync refused the request as asked (unknown shard or node, a bad
    /// priority, an order already finished): sending it again is useless.
    #[error("sync refused it: {0}")]
    Refused(String),
    /// No answer, or one that is not sync's (worth trying again).
    #[error(transparent)]
    Call(edge::CallError),
}

impl SyncError {
    fn of(e: edge::CallError, order: Option<u64>, epoch: u64) -> SyncError {
        match (&e, e.status()) {
            (_, Some(StatusCode::NOT_FOUND)) if order.is_some() => {
                SyncError::NoOrder(order.unwrap_or_default())
            }
            (edge::CallError::Status { message, .. }, Some(StatusCode::CONFLICT))
                if message.contains("epoch") =>
            {
                SyncError::Fenced {
                    epoch,
                    message: message.clone(),
                }
            }
            (edge::CallError::Status { message, .. }, Some(s)) if s.is_client_error() => {
                SyncError::Refused(message.clone())
            }
            _ => SyncError::Call(e),
        }
    }
}

impl SyncError {
    /// The refusal of one order of a batch (its result's status and error),
    /// as the same refusal of `POST /orders` would be.
    pub fn of_result(status: u16, message: String, epoch: u64) -> SyncError {
        if status == StatusCode::CONFLICT.as_u16() && message.contains("epoch") {
            SyncError::Fenced { epoch, message }
        } else {
            SyncError::Refused(message)
        }
    }
}

impl Client {
    /// Send `Authorization: Bearer <token>` with every call to a URL under
    /// `base` (`base` itself, or `base` followed by `/` or `?`) that does
    /// not bring its own token. No token: unchanged.
    pub fn with_bearer(mut self, base: &str, token: Option<String>) -> Client {
        self.bearer = token
            .filter(|t| !t.is_empty())
            .map(|t| (base.trim_end_matches('/').to_string(), t));
        self
    }

    fn bearer_for(&self, url: &str) -> Option<&str> {
        let (base, token) = self.bearer.as_ref()?;
        let rest = url.strip_prefix(base.as_str())?;
        (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
            .then_some(token.as_str())
    }

    fn request<'a>(&'a self, method: Method, url: &'a str, timeout: Duration) -> Call<'a> {
        Call::new(method, url, timeout)
            .token(self.bearer_for(url))
            .max_body(MAX_RESPONSE)
    }

    /// Send one request (the proxies' admin API, where a refusal's body
    /// is read): the status and the body of any answer, or why there is
    /// none. `token` overrides the base's.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), edge::CallError> {
        let mut c = self.request(method, url, timeout);
        if let Some(t) = token {
            c = c.token(Some(t));
        }
        if let Some(b) = body {
            c = c.json(b);
        }
        self.inner.send(c).await
    }

    /// GET and decode a 2xx JSON answer; `token` overrides the base's.
    pub async fn get_typed<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<T, edge::CallError> {
        let mut c = self.request(Method::GET, url, timeout);
        if let Some(t) = token {
            c = c.token(Some(t));
        }
        self.inner.send_json(c).await
    }

    async fn sync_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, edge::CallError> {
        let mut c = self.request(method, url, timeout);
        if let Some(b) = body {
            c = c.json(b);
        }
        self.inner.send_json(c).await
    }

    /// `GET {sync}/orders/{id}`.
    pub async fn sync_order(
        &self,
        sync: &str,
        id: u64,
        timeout: Duration,
    ) -> Result<Order, SyncError> {
        let url = format!("{}/orders/{id}", sync.trim_end_matches('/'));
        self.sync_json(Method::GET, &url, None, timeout)
            .await
            .map_err(|e| SyncError::of(e, Some(id), 0))
    }

    /// `POST {sync}/orders`: the order as sync queued it.
    pub async fn sync_submit(
        &self,
        sync: &str,
        order: &OrderRequest,
        timeout: Duration,
    ) -> Result<Order, SyncError> {
        let url = format!("{}/orders", sync.trim_end_matches('/'));
        let body = serde_json::to_vec(order).unwrap_or_default();
        self.sync_json(Method::POST, &url, Some(body), timeout)
            .await
            .map_err(|e| SyncError::of(e, None, order.epoch))
    }

    /// `POST {sync}/orders/batch`: one result per order, in the order
    /// sent. An error is the call's (every order of it unsent or unknown);
    /// a refused order is its result's.
    pub async fn sync_submit_batch(
        &self,
        sync: &str,
        batch: &OrderBatch,
        timeout: Duration,
    ) -> Result<Vec<OrderResult>, SyncError> {
        let url = format!("{}/orders/batch", sync.trim_end_matches('/'));
        let body = serde_json::to_vec(batch).unwrap_or_default();
        let epoch = batch.orders.first().map_or(0, |o| o.epoch);
        let answer: OrderBatchAnswer = self
            .sync_json(Method::POST, &url, Some(body), timeout)
            .await
            .map_err(|e| SyncError::of(e, None, epoch))?;
        if answer.results.len() != batch.orders.len() {
            return Err(SyncError::Refused(format!(
                "{} results for a batch of {} orders",
                answer.results.len(),
                batch.orders.len()
            )));
        }
        Ok(answer.results)
    }

    /// `GET {sync}/orders?ids=…`: the orders of `ids` sync knows.
    pub async fn sync_orders_of(
        &self,
        sync: &str,
        ids: &[u64],
        timeout: Duration,
    ) -> Result<Vec<Order>, SyncError> {
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        let url = format!(
            "{}/orders?ids={}",
            sync.trim_end_matches('/'),
            list.join(",")
        );
        self.sync_json(Method::GET, &url, None, timeout)
            .await
            .map_err(|e| SyncError::of(e, None, 0))
    }

    /// `DELETE {sync}/orders/{id}`.
    pub async fn sync_cancel(
        &self,
        sync: &str,
        id: u64,
        timeout: Duration,
    ) -> Result<Order, SyncError> {
        let url = format!("{}/orders/{id}", sync.trim_end_matches('/'));
        self.sync_json(Method::DELETE, &url, None, timeout)
            .await
            .map_err(|e| SyncError::of(e, Some(id), 0))
    }

    /// `POST {sync}/epoch`: announce a new leader's term; the highest
    /// epoch sync has seen.
    pub async fn sync_fence(
        &self,
        sync: &str,
        epoch: u64,
        timeout: Duration,
    ) -> Result<u64, SyncError> {
        let url = format!("{}/epoch", sync.trim_end_matches('/'));
        let body = serde_json::to_vec(&EpochBody { epoch }).unwrap_or_default();
        self.sync_json::<EpochBody>(Method::POST, &url, Some(body), timeout)
            .await
            .map(|b| b.epoch)
            .map_err(|e| SyncError::of(e, None, epoch))
    }

    /// `GET {sync}/nodes`: every node and the shards it hosts.
    pub async fn sync_nodes(&self, sync: &str, timeout: Duration) -> Result<Nodes, SyncError> {
        let url = format!("{}/nodes", sync.trim_end_matches('/'));
        self.sync_json(Method::GET, &url, None, timeout)
            .await
            .map_err(|e| SyncError::of(e, None, 0))
    }

    /// `GET {sync}/nodes?since={since}`: what the hosted shards became
    /// since the answer that carried `since` (`0`: everything). A sync
    /// that predates the parameter answers its plain list, taken as is.
    pub async fn sync_nodes_since(
        &self,
        sync: &str,
        since: &str,
        timeout: Duration,
    ) -> Result<NodesAnswer, SyncError> {
        let url = format!(
            "{}/nodes?since={}",
            sync.trim_end_matches('/'),
            shardcast_edge::url::encode_segment(since)
        );
        self.sync_json(Method::GET, &url, None, timeout)
            .await
            .map_err(|e| SyncError::of(e, None, 0))
    }

    /// `DELETE {sync}/nodes/{node}/shards/{shard}`: drop a shard from a
    /// node's cache (202 once scheduled).
    pub async fn sync_evict(
        &self,
        sync: &str,
        node: &str,
        shard: &str,
        timeout: Duration,
    ) -> Result<(), SyncError> {
        let url = format!(
            "{}/nodes/{}/shards/{}",
            sync.trim_end_matches('/'),
            shardcast_edge::url::encode_segment(node),
            shardcast_edge::url::encode_segment(shard)
        );
        self.sync_json::<Evicting>(Method::DELETE, &url, None, timeout)
            .await
            .map(|_| ())
            .map_err(|e| SyncError::of(e, None, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_urls_under_its_base() {
        let c = Client::default().with_bearer("http://127.0.0.1:9910/", Some("t".into()));
        assert_eq!(c.bearer_for("http://127.0.0.1:9910/orders/3"), Some("t"));
        assert_eq!(c.bearer_for("http://127.0.0.1:9910?x"), Some("t"));
        assert_eq!(c.bearer_for("http://127.0.0.1:9910"), Some("t"));
        assert_eq!(c.bearer_for("http://127.0.0.1:99101/orders"), None);
        assert_eq!(c.bearer_for("http://127.0.0.1:9101/health"), None);
        let none = Client::default().with_bearer("http://127.0.0.1:9910", Some(String::new()));
        assert_eq!(none.bearer_for("http://127.0.0.1:9910/orders"), None);
    }

    /// The header reaches the server (a real socket).
    #[tokio::test]
    async fn calls_under_the_base_carry_the_bearer_header() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await
                .unwrap();
            String::from_utf8_lossy(&got).to_ascii_lowercase()
        });
        let c = Client::default().with_bearer(&base, Some("sync-s3cret".into()));
        let (status, _) = c
            .send(
                Method::GET,
                &format!("{base}/nodes"),
                None,
                None,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let head = server.await.unwrap();
        assert!(
            head.contains("authorization: bearer sync-s3cret\r\n"),
            "{head}"
        );
    }

    /// A server that answers every request with `status` and `body`.
    async fn answering(status: u16, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
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

    /// Sync's refusals, as sync words them, become errors to branch on.
    #[tokio::test]
    async fn syncs_refusals_are_typed() {
        let t = Duration::from_secs(5);
        let c = Client::default();
        let base = answering(404, r#"{"error":"no order 42"}"#).await;
        assert_eq!(
            c.sync_order(&base, 42, t).await.unwrap_err(),
            SyncError::NoOrder(42)
        );
        let base = answering(
            409,
            r#"{"error":"order of manager epoch 1 refused: epoch 2 leads (a stale manager; fenced)"}"#,
        )
        .await;
        let order = OrderRequest {
            shard: "s".into(),
            node: "n".into(),
            priority: 1.0,
            deadline_unix_ms: None,
            deadline_in_ms: None,
            epoch: 1,
        };
        assert!(matches!(
            c.sync_submit(&base, &order, t).await.unwrap_err(),
            SyncError::Fenced { epoch: 1, .. }
        ));
        let base = answering(422, r#"{"error":"unknown shard `s`"}"#).await;
        assert_eq!(
            c.sync_submit(&base, &order, t).await.unwrap_err(),
            SyncError::Refused("unknown shard `s`".into())
        );
        // An answer in another shape is not taken for an order.
        let base = answering(200, r#"{"id":1,"state":"failed"}"#).await;
        assert!(matches!(
            c.sync_order(&base, 1, t).await.unwrap_err(),
            SyncError::Call(shardcast_edge::client::CallError::Decode { .. })
        ));
    }
}
