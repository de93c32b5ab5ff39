//! The scheduler's HTTP/JSON control API. Errors map to statuses here and
//! only here.
//!
//! | route | what |
//! |---|---|
//! | `POST /orders` | submit `{shard, node, priority?, deadline_unix_ms? \| deadline_in_ms?, epoch?}` → 202 + order; 409 when `epoch` is below the highest seen (a fenced, stale manager) |
//! | `POST /orders/batch` | `{"orders": [order, …]}`, at most 1000 → 200 `{"results": [{status, order? \| error?}, …]}`, one per order in the order sent, each queued or refused as `POST /orders` would (202 / 422 / 409); the state is saved once per batch; more than 1000 → 413 |
//! | `POST /epoch` | `{epoch}`: a new leading manager fences the old one's orders before it orders → 200 `{epoch}`; 409 when lower than the highest seen |
//! | `GET /epoch` | `{epoch}`: the highest manager epoch seen (persisted with the orders) |
//! | `GET /orders` | every order (`?state=queued\|running\|done\|cancelled` filters; `?ids=1,2,3`, at most 1000: only those, an unknown id left out) |
//! | `GET /orders/{id}` | one order, with its report once done (a cancelled one with its `reason`) |
//! | `DELETE /orders/{id}` | cancel a queued or running order |
//! | `GET /nodes` | node names and their hosted (and parked) shards |
//! | `GET /nodes?since=<version>` | what the hosted shards became since the answer that carried `version` (`0`: nothing held yet) → `{version, full, nodes: {name: {hosted?, gone?}}}`; `full: true` (everything, in place of what was held) when `since` is `0`, of an earlier run of sync, or older than the changes kept; a `since` that is no version → 400 |
//! | `GET /nodes/{node}/shards` | hosted shards of a node (state, cursor, rows) |
//! | `DELETE /nodes/{node}/shards/{shard}` | evict a shard from a node → 202 (`/` in a shard id as `%2F`) |
//! | `GET /shards` | configured shards and their cells |
//! | `GET /health`, `/live`, `/ready`, `/metrics` | admin (`/ready`: every background loop runs) |
//!
//! The listener is [`http::serve`]'s: HTTP/1.1, bounded, with deadlines
//! (`[timeouts]`, `[limits]` of the sync config).
//!
//! When `control_token` is set every route needs `Authorization: Bearer
//! <token>` (the scheme in any case, the token compared in constant time,
//! [`shardcast_edge::auth`]); a refusal is 401 with `WWW-Authenticate:
//! Bearer realm="shardcast"`, counted in
//! `shardcast_sync_control_unauthorized_total`. Config validation asks for
//! a token when the control address is not loopback, as the proxy's and
//! the manager's admin APIs do.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, StatusCode};
use shardcast_edge::{auth, ConnLimiter};

use shardmap::contract::orders::EvictTarget;
use shardmap::contract::{
    EpochBody, Evicting, OrderBatch, OrderBatchAnswer, OrderResult, StatusBody, MAX_BATCH,
};

use crate::http::{self, ListenerConfig, Resp};
use crate::scheduler::{OrderError, OrderRequest, OrderState, Scheduler, Since};

fn order_error(e: &OrderError) -> Resp {
    http::error(order_status(e), &e.to_string())
}

fn order_status(e: &OrderError) -> StatusCode {
    match e {
        OrderError::UnknownShard(_)
        | OrderError::UnknownNode(_)
        | OrderError::BadPriority(_)
        | OrderError::TwoDeadlines => StatusCode::UNPROCESSABLE_ENTITY,
        OrderError::NoOrder(_) | OrderError::NotHosted { .. } => StatusCode::NOT_FOUND,
        OrderError::Finished(_) | OrderError::StaleEpoch { .. } => StatusCode::CONFLICT,
    }
}

/// `POST /orders/batch`: at most [`MAX_BATCH`] orders, each queued or
/// refused on its own; a body that is not a batch refuses the whole call.
async fn submit_batch(s: &Scheduler, req: Request<Incoming>) -> Resp {
    let body = match http::body(req, 1 << 20).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let batch: OrderBatch = match shardcast_edge::body::require_json_object(&body)
        .map_err(|why| why.to_string())
        .and_then(|()| serde_json::from_slice(&body).map_err(|e| e.to_string()))
    {
        Ok(b) => b,
        Err(why) => {
            crate::metrics::Metrics::inc(&s.metrics().orders_rejected);
            return http::error(StatusCode::BAD_REQUEST, &format!("order batch body: {why}"));
        }
    };
    if batch.orders.len() > MAX_BATCH {
        crate::metrics::Metrics::inc(&s.metrics().orders_rejected);
        return http::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "order batch of {} orders: at most {MAX_BATCH} in one call",
                batch.orders.len()
            ),
        );
    }
    let results = s
        .submit_batch(batch.orders)
        .into_iter()
        .map(|r| match r {
            Ok(o) => OrderResult {
                status: StatusCode::ACCEPTED.as_u16(),
                order: Some(o),
                error: None,
            },
            Err(e) => {
                tracing::info!(reason = %e, "order refused");
                OrderResult {
                    status: order_status(&e).as_u16(),
                    order: None,
                    error: Some(e.to_string()),
                }
            }
        })
        .collect();
    http::json(StatusCode::OK, &OrderBatchAnswer { results })
}

/// `?ids=1,2,3` of `GET /orders`: at most [`MAX_BATCH`] numbers.
fn parse_ids(v: &str) -> Result<Vec<u64>, String> {
    let ids = v
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<u64>()
                .map_err(|_| format!("ids: `{x}` is not an order id"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_BATCH {
        return Err(format!(
            "ids: {} order ids, at most {MAX_BATCH} in one call",
            ids.len()
        ));
    }
    Ok(ids)
}

/// Answer one control request; `conns` is the listener's, for `/metrics`;
/// with a `token`, a request without it is refused.
pub async fn handle(
    s: Scheduler,
    conns: Arc<ConnLimiter>,
    token: Option<&str>,
    req: Request<Incoming>,
) -> Resp {
    if let Some(t) = token {
        if !auth::bearer_ok(req.headers(), t) {
            crate::metrics::Metrics::inc(&s.metrics().control_unauthorized);
            let mut r = http::error(StatusCode::UNAUTHORIZED, "bearer token required");
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(auth::CHALLENGE));
            return r;
        }
    }
    let path = req.uri().path().to_string();
    // Segments are percent-decoded: shard ids hold `/` (`UK%2FLIGHTING`).
    let decoded: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|seg| http::percent_decode_path(seg).unwrap_or_default())
        .collect();
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (&method, parts.as_slice()) {
        (&Method::POST, ["orders"]) => {
            let body = match http::body(req, 64 * 1024).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            // serde would also take a JSON array of the fields in order.
            if let Err(why) = shardcast_edge::body::require_json_object(&body) {
                crate::metrics::Metrics::inc(&s.metrics().orders_rejected);
                return http::error(StatusCode::BAD_REQUEST, &format!("order body: {why}"));
            }
            let order: OrderRequest = match serde_json::from_slice(&body) {
                Ok(o) => o,
                Err(e) => {
                    crate::metrics::Metrics::inc(&s.metrics().orders_rejected);
                    return http::error(StatusCode::BAD_REQUEST, &format!("order body: {e}"));
                }
            };
            match s.submit(order) {
                Ok(o) => http::json(StatusCode::ACCEPTED, &o),
                Err(e) => {
                    tracing::info!(reason = %e, "order refused");
                    order_error(&e)
                }
            }
        }
        (&Method::POST, ["orders", "batch"]) => submit_batch(&s, req).await,
        (&Method::POST, ["epoch"]) => {
            let body = match http::body(req, 4 * 1024).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let f: EpochBody = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => return http::error(StatusCode::BAD_REQUEST, &format!("epoch body: {e}")),
            };
            match s.fence(f.epoch) {
                Ok(epoch) => http::json(StatusCode::OK, &EpochBody { epoch }),
                Err(e) => order_error(&e),
            }
        }
        (&Method::GET, ["epoch"]) => http::json(StatusCode::OK, &EpochBody { epoch: s.epoch() }),
        (&Method::GET, ["orders"]) => {
            let want = match http::query_param(req.uri().query(), "state")
                .map(|v| v.parse::<OrderState>())
                .transpose()
            {
                Ok(w) => w,
                Err(e) => return http::error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            let ids = match http::query_param(req.uri().query(), "ids")
                .map(|v| parse_ids(&v))
                .transpose()
            {
                Ok(ids) => ids,
                Err(e) => return http::error(StatusCode::BAD_REQUEST, &e),
            };
            let all = match &ids {
                Some(ids) => s.orders_of(ids),
                None => s.orders(),
            };
            let orders: Vec<_> = all
                .into_iter()
                .filter(|o| want.is_none_or(|w| o.state == w))
                .collect();
            http::json(StatusCode::OK, &orders)
        }
        (&Method::GET, ["orders", id]) | (&Method::DELETE, ["orders", id]) => {
            let Ok(id) = id.parse::<u64>() else {
                return http::error(StatusCode::BAD_REQUEST, "order id must be a number");
            };
            if method == Method::DELETE {
                return match s.cancel(id) {
                    Ok(o) => http::json(StatusCode::OK, &o),
                    Err(e) => order_error(&e),
                };
            }
            match s.order(id) {
                Some(o) => http::json(StatusCode::OK, &o),
                None => order_error(&OrderError::NoOrder(id)),
            }
        }
        (&Method::GET, ["nodes"]) => match http::query_param(req.uri().query(), "since") {
            None => http::json(StatusCode::OK, &s.nodes()),
            Some(v) => match v.parse::<Since>() {
                Ok(since) => http::json(StatusCode::OK, &s.nodes_since(since)),
                Err(e) => http::error(StatusCode::BAD_REQUEST, &e),
            },
        },
        (&Method::GET, ["nodes", node, "shards"]) => match s.hosted(node) {
            Ok(h) => http::json(StatusCode::OK, &h),
            Err(e) => order_error(&e),
        },
        (&Method::DELETE, ["nodes", node, "shards", shard]) => match s.evict(node, shard) {
            Ok(()) => http::json(
                StatusCode::ACCEPTED,
                &Evicting {
                    evicting: EvictTarget {
                        node: node.to_string(),
                        shard: shard.to_string(),
                    },
                },
            ),
            Err(e) => order_error(&e),
        },
        (&Method::GET, ["shards"]) => http::json(StatusCode::OK, &s.shard_ids()),
        (&Method::GET, ["health"]) | (&Method::GET, ["live"]) => {
            http::json(StatusCode::OK, &StatusBody::ok())
        }
        (&Method::GET, ["ready"]) => {
            if s.tasks().all_running() {
                http::json(StatusCode::OK, &StatusBody::ok())
            } else {
                http::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "a background loop is not running (see /metrics)",
                )
            }
        }
        (&Method::GET, ["metrics"]) => {
            let mut out = s.render_metrics();
            crate::metrics::render_listener(&mut out, "shardcast_sync", &conns);
            http::text(out)
        }
        _ => http::error(StatusCode::NOT_FOUND, &format!("no route {method} {path}")),
    }
}

/// Serve the control API until `shutdown`, with `edge`'s connection
/// deadlines and bounds; with a `token` (the config's `control_token`)
/// every request must carry it.
pub async fn run(
    listener: tokio::net::TcpListener,
    s: Scheduler,
    edge: ListenerConfig,
    token: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let conns = ConnLimiter::new("control", edge.limits);
    let c = conns.clone();
    let token: Option<Arc<str>> = token.map(Arc::from);
    http::serve(
        listener,
        conns,
        edge.deadlines,
        move |req| {
            let (s, c, token) = (s.clone(), c.clone(), token.clone());
            async move { handle(s, c, token.as_deref(), req).await }
        },
        shutdown,
    )
    .await
}
