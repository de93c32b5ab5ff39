//! The HTTP surface (hyper): `POST /ingest`, `GET /forecast/{shard}`,
//! `GET /forecasts`, `/metrics`, `/live`, `/ready`. Handlers only read
//! snapshots and the store; errors map to statuses here and nowhere else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use serde_json::{json, Value};
use shardmap::telemetry::{Frame, FrameError, MAX_FRAME_BYTES};
use tokio::net::TcpListener;

use crate::engine::{ForecastHandle, ForecastSet, ShardForecast};
use crate::metrics::{Metrics, Reject};
use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct App {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub forecasts: ForecastHandle,
    /// The shard manager, when configured (`/manager` routes).
    pub manager: Option<Arc<crate::manager::Manager>>,
    /// Real time, or trace time when replaying (frames are re-timed onto it).
    pub clock: crate::time::Clock,
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

fn json_reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json_reply(status, &json!({ "error": msg }))
}

/// Decode `%XX` escapes; `None` on a bad escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn horizons_json(s: &ShardForecast) -> Value {
    let mut m = serde_json::Map::new();
    for h in &s.horizons {
        m.insert(
            h.horizon.name().to_string(),
            json!({ "levels": h.levels.iter().map(|&l| (f64::from(l) * 1e6).round() / 1e6).collect::<Vec<_>>(), "values": h.values, "source": h.source, "fallback": h.is_fallback() }),
        );
    }
    Value::Object(m)
}

fn shard_json(set: &ForecastSet, s: &ShardForecast) -> Value {
    json!({
        "shard": s.shard,
        "generated_at": set.generated_at,
        "origin_hour": set.origin_hour,
        "history_hours": s.history_hours,
        "horizons": horizons_json(s),
        "models": set.models,
        "feeds": set.feeds,
    })
}

fn set_json(set: &ForecastSet) -> Value {
    let shards: serde_json::Map<String, Value> = set
        .shards
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                json!({ "history_hours": s.history_hours, "horizons": horizons_json(s) }),
            )
        })
        .collect();
    json!({
        "generated_at": set.generated_at,
        "origin_hour": set.origin_hour,
        "origin_day": set.origin_day,
        "cycle_ms": set.cycle_ms,
        "models": set.models,
        "feeds": set.feeds,
        "shards": shards,
    })
}

impl App {
    async fn ingest<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let m = &self.metrics;
        m.ingest_requests.fetch_add(1, Ordering::Relaxed);
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_FRAME_BYTES as u64) {
            m.reject(Reject::TooLarge);
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "frame exceeds the size limit",
            );
        }
        let body = match Limited::new(req.into_body(), MAX_FRAME_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let too_large = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                if too_large {
                    m.reject(Reject::TooLarge);
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "frame exceeds the size limit",
                    );
                }
                m.reject(Reject::Body);
                return error(StatusCode::BAD_REQUEST, &format!("reading body: {e}"));
            }
        };
        match Frame::decode(&body) {
            Ok(mut f) => {
                if self.clock.is_replay() {
                    f.start_unix_ms = self
                        .clock
                        .at(f.start_unix_ms.min(i64::MAX as u64) as i64)
                        .max(0) as u64;
                    f.interval_ms = self
                        .clock
                        .span(f.interval_ms.min(i64::MAX as u64) as i64)
                        .max(1) as u64;
                }
                let o = self.store.ingest(&f, self.clock.now_ms());
                json_reply(
                    StatusCode::OK,
                    &json!({ "samples": o.samples, "too_old": o.too_old, "over_capacity": o.over_capacity, "seq_gap": o.seq_gap }),
                )
            }
            Err(e) => {
                let (r, st) = match &e {
                    FrameError::TooLarge(_) => (Reject::TooLarge, StatusCode::PAYLOAD_TOO_LARGE),
                    FrameError::Json(_) => (Reject::Json, StatusCode::BAD_REQUEST),
                    FrameError::Version(_) => (Reject::Version, StatusCode::BAD_REQUEST),
                    FrameError::Invalid(_) => (Reject::Invalid, StatusCode::UNPROCESSABLE_ENTITY),
                };
                m.reject(r);
                tracing::debug!(reason = r.as_str(), error = %e, "frame rejected");
                error(st, &e.to_string())
            }
        }
    }

    /// Route one request. Generic over the body so tests can call it
    /// without a socket.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        if path == "/manager" || path.starts_with("/manager/") {
            return crate::manager::routes::handle(self.manager.as_deref(), req).await;
        }
        match (req.method(), path.as_str()) {
            (&Method::POST, "/ingest") => self.ingest(req).await,
            (_, "/ingest") => error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            (&Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, "/ready") => {
                if self.forecasts.ready() {
                    reply(StatusCode::OK, "text/plain", "ready\n")
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "no forecast cycle yet\n",
                    )
                }
            }
            (&Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(&self.store),
            ),
            (&Method::GET, "/forecasts") => {
                let set = self.forecasts.latest();
                if !self.forecasts.ready() {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "no forecast cycle yet");
                }
                json_reply(StatusCode::OK, &set_json(&set))
            }
            (&Method::GET, p) if p.starts_with("/forecast/") => {
                let Some(id) = percent_decode(&p["/forecast/".len()..]) else {
                    return error(StatusCode::BAD_REQUEST, "bad percent-encoding in shard id");
                };
                if !self.forecasts.ready() {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "no forecast cycle yet");
                }
                let set = self.forecasts.latest();
                match set.shards.get(&id) {
                    Some(s) => json_reply(StatusCode::OK, &shard_json(&set, s)),
                    None => error(
                        StatusCode::NOT_FOUND,
                        &format!("no forecast for shard {id:?}"),
                    ),
                }
            }
            (_, "/live" | "/ready" | "/metrics" | "/forecasts") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            }
            _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }
}

/// Serve `app` on `listener` until `shutdown` turns true.
pub async fn serve(
    app: App,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (io, peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let app = app.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended") },
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
