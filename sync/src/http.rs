//! The small HTTP layer the node and the control API share: the workspace's
//! one accept loop ([`shardcast_edge::http1::serve`]: HTTP/1.1, a bound on
//! open connections per listener and per client, a deadline at every
//! connection stage), JSON helpers, a bounded body reader, and percent
//! decoding from the shared crates ([`shardcast_edge::url`]). Kept lean:
//! the node is the upstream in the proxy's benchmarks.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use shardcast_edge::{ConnLimiter, Deadlines, Limits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type Resp = Response<Full<Bytes>>;

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static TEXT: HeaderValue = HeaderValue::from_static("text/plain; version=0.0.4");

/// A JSON response from ready bytes.
pub fn json_bytes(status: StatusCode, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, JSON.clone());
    r
}

/// A JSON response from a value.
pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => json_bytes(status, Bytes::from(b)),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding response: {e}"),
        ),
    }
}

/// `{"error": "..."}` with a status.
pub fn error(status: StatusCode, msg: &str) -> Resp {
    json(status, &shardmap::contract::ErrorBody::new(msg))
}

/// Prometheus text.
pub fn text(body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(CONTENT_TYPE, TEXT.clone());
    r
}

/// Read a request body of at most `limit` bytes.
pub async fn body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body: {e}"),
        )),
    }
}

/// Decode `%XX` in a path segment (`+` stays itself); `None` on a
/// malformed escape or invalid UTF-8 ([`shardcast_edge::url`]).
pub fn percent_decode_path(s: &str) -> Option<String> {
    shardcast_edge::url::decode_segment(s)
}

/// A query parameter's decoded value (`+` is a space).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    shardcast_edge::url::query_param(query, name)
}

/// Open connections on the control API (and per client). Its clients are
/// a few hosts (the shard manager, operators, Prometheus), each with a
/// handful of keep-alive connections: 1024 is far above what they use and
/// still bounds a leak or a flood. Per client the same, since one host may
/// hold all of them and refusing it would only hide the leak's source.
pub const CONTROL_MAX_CONNECTIONS: usize = 1024;

/// Open connections on a node (and per client). Every proxy keeps an
/// upstream keep-alive pool of up to 1024 connections per node, so a
/// per-client bound below that would refuse a busy proxy's own pool; 4096
/// leaves room for a few proxies on one host (or behind one NAT address).
pub const NODE_MAX_CONNECTIONS: usize = 4096;

/// One listener's connection deadlines and bounds, validated from a
/// config's `[timeouts]` and `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerConfig {
    pub deadlines: Deadlines,
    pub limits: Limits,
}

impl ListenerConfig {
    /// The control API's defaults.
    pub fn control() -> Self {
        Self::bounded(CONTROL_MAX_CONNECTIONS)
    }

    /// A node's defaults.
    pub fn node() -> Self {
        Self::bounded(NODE_MAX_CONNECTIONS)
    }

    fn bounded(n: usize) -> Self {
        ListenerConfig {
            deadlines: Deadlines {
                keepalive: std::time::Duration::from_millis(crate::config::CLIENT_KEEPALIVE_MS),
                ..Deadlines::default()
            },
            limits: Limits {
                max_connections: n,
                max_per_client: n,
            },
        }
    }
}

/// Accept connections until `shutdown` fires; each request goes to
/// `handler`. HTTP/1.1 with keep-alive; every connection holds a place on
/// `limiter` and runs under `deadlines` (see [`shardcast_edge::http1`]).
/// Returns when the accept loop stops; requests in progress finish.
pub async fn serve<H, F>(
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    deadlines: Deadlines,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Resp> + Send + 'static,
{
    let handler = Arc::new(handler);
    let svc = hyper::service::service_fn(move |req| {
        let h = handler.clone();
        async move { Ok::<_, Infallible>(h(req).await) }
    });
    shardcast_edge::http1::serve(
        listener,
        limiter,
        deadlines,
        svc,
        shutdown.cancelled_owned(),
    )
    .await
}
