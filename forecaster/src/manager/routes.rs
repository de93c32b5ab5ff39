//! The manager's operator API, under `/manager` on the forecaster's
//! listener. Errors map to statuses here.
//!
//! | route | what |
//! |---|---|
//! | `GET /manager` | assignment, node health, demand, orders, recent decisions, operator settings |
//! | `GET /manager/plan` | the last plan (also computed in dry run) |
//! | `GET /manager/decisions?limit=N` | decisions, newest first |
//! | `PUT /manager/dry-run` `{"enabled": bool}` | plan only, or plan and act |
//! | `PUT /manager/pins/{shard}` `{"nodes": [..]}`, `DELETE` | pin a shard to nodes |
//! | `PUT /manager/drain/{node}`, `DELETE` | move every replica off a node, or stop |
//! | `PUT /manager/thresholds/{shard}` `{"rps": f64}`, `DELETE` | override a shard's threshold |
//! | `POST /manager/round` | plan now |
//!
//! When `admin_token` is set every route needs `Authorization: Bearer <token>`
//! (the scheme in any case, the token compared in constant time); a refusal
//! is 401 with `WWW-Authenticate: Bearer realm="shardcast"`. Request bodies
//! must be JSON objects. A refused operator command ([`CommandError`]) is
//! 404 when it names a shard or node that does not exist, 400 for a bad
//! value. With a metadata store, a command taken is answered once the store
//! holds it; 503 when no write confirmed it within three rounds (a standby,
//! or a store not answering): it holds on this manager, but the next term
//! would not see it. Every error body is `{"error": "…"}`. `GET /manager` answers the
//! shared [`shardmap::contract::manager::ManagerView`].

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use serde::{Deserialize, Serialize};
use shardcast_edge::url::{decode_segment, query_param};
use shardmap::contract::ErrorBody;

use super::{CommandError, Manager};

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn reply<T: Serialize + ?Sized>(status: StatusCode, v: &T) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn error(status: StatusCode, msg: &str) -> Resp {
    reply(status, &ErrorBody::new(msg))
}

/// The manager, when this forecaster runs one and the request carries its
/// `admin_token`; otherwise the answer: 404 with a hint, or 401 with a
/// bearer challenge.
pub(crate) fn admitted<'a, B>(
    m: Option<&'a Manager>,
    req: &Request<B>,
) -> Result<&'a Manager, Box<Resp>> {
    let Some(m) = m else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "no shard manager: add a [manager] section to the forecaster config",
        )));
    };
    if let Some(tok) = &m.config().admin_token {
        if !shardcast_edge::auth::bearer_ok(req.headers(), tok) {
            let mut r = error(StatusCode::UNAUTHORIZED, "bearer token required");
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(shardcast_edge::auth::CHALLENGE),
            );
            return Err(Box::new(r));
        }
    }
    Ok(m)
}

/// The answer of an operator command that was taken: `{"ok": true}`.
#[derive(Serialize)]
struct Taken {
    ok: bool,
}

/// `PUT /manager/dry-run`'s answer.
#[derive(Serialize)]
struct DryRunSet {
    dry_run: bool,
}

/// `POST /manager/round`'s answer: `{"round": "requested"}`.
#[derive(Serialize)]
struct RoundRequested {
    round: &'static str,
}

/// A refused command: 404 when it names what does not exist, else 400.
/// A command the state took, answered once the metadata store holds it;
/// 503 when no write confirmed it in time (it holds on this manager, and
/// is written by a later round unless leadership moves first).
async fn stored(m: &Manager, taken: Resp) -> Resp {
    if m.command_stored().await {
        taken
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "taken but not yet in the metadata store (not leading, or the store is not answering): it is lost if leadership moves before this manager writes it; check GET /manager and send it again",
        )
    }
}

fn refused(e: &CommandError) -> Resp {
    let status = if e.is_unknown() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    error(status, &e.to_string())
}

async fn body_json<T, B>(req: Request<B>) -> Result<T, Resp>
where
    T: serde::de::DeserializeOwned,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let b = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("reading body: {e}")))?
        .to_bytes();
    // serde would also take a JSON array of the fields in order.
    shardcast_edge::body::require_json_object(&b)
        .map_err(|why| error(StatusCode::BAD_REQUEST, &format!("body: {why}")))?;
    serde_json::from_slice(&b).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRun {
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pin {
    nodes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Threshold {
    rps: f64,
}

// The error is the finished response; it is built once per bad request.
#[allow(clippy::result_large_err)]
fn decoded(seg: &str) -> Result<String, Resp> {
    decode_segment(seg)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "bad percent-encoding in path"))
}

/// Answer one `/manager…` request; `None` manager → 404 with a hint.
pub async fn handle<B>(m: Option<&Manager>, req: Request<B>) -> Resp
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let m = match admitted(m, &req) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let path = req.uri().path().to_string();
    let limit = query_param(req.uri().query(), "limit");
    let rest = path.trim_start_matches("/manager").trim_start_matches('/');
    let parts: Vec<&str> = if rest.is_empty() {
        vec![]
    } else {
        rest.split('/').collect()
    };
    let method = req.method().clone();
    let ok = |r: Result<(), CommandError>| async move {
        match r {
            Ok(()) => stored(m, reply(StatusCode::OK, &Taken { ok: true })).await,
            Err(e) => refused(&e),
        }
    };
    match (&method, parts.as_slice()) {
        (&Method::GET, []) => reply(StatusCode::OK, &m.view()),
        (&Method::GET, ["plan"]) => reply(StatusCode::OK, &m.plan_view()),
        (&Method::GET, ["decisions"]) => {
            let limit = limit
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(100)
                .min(10_000);
            reply(StatusCode::OK, &m.decisions(limit))
        }
        (&Method::PUT, ["dry-run"]) => match body_json::<DryRun, _>(req).await {
            Ok(d) => {
                m.set_dry_run(d.enabled);
                stored(m, reply(StatusCode::OK, &DryRunSet { dry_run: d.enabled })).await
            }
            Err(r) => r,
        },
        (&Method::PUT, ["pins", shard]) => {
            let shard = match decoded(shard) {
                Ok(s) => s,
                Err(r) => return r,
            };
            match body_json::<Pin, _>(req).await {
                Ok(p) => ok(m.pin(&shard, Some(p.nodes))).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, ["pins", shard]) => match decoded(shard) {
            Ok(s) => ok(m.pin(&s, None)).await,
            Err(r) => r,
        },
        (&Method::PUT, ["drain", node]) | (&Method::DELETE, ["drain", node]) => match decoded(node)
        {
            Ok(n) => ok(m.drain_node(&n, method == Method::PUT)).await,
            Err(r) => r,
        },
        (&Method::PUT, ["thresholds", shard]) => {
            let shard = match decoded(shard) {
                Ok(s) => s,
                Err(r) => return r,
            };
            match body_json::<Threshold, _>(req).await {
                Ok(t) => ok(m.set_threshold(&shard, Some(t.rps))).await,
                Err(r) => r,
            }
        }
        (&Method::DELETE, ["thresholds", shard]) => match decoded(shard) {
            Ok(s) => ok(m.set_threshold(&s, None)).await,
            Err(r) => r,
        },
        (&Method::POST, ["round"]) => {
            m.wake();
            reply(StatusCode::ACCEPTED, &RoundRequested { round: "requested" })
        }
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no route {method} {path} (see GET /manager)"),
        ),
    }
}
