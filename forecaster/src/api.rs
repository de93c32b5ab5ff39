//! The HTTP surface (hyper): `POST /ingest`, `GET /forecast/{shard}`,
//! `GET /forecasts`, `GET /series[/{shard}]`, `/metrics`, `/live`, `/ready`,
//! the shard manager's `/manager…` and `POST /order-events` (sync's pushed
//! completions, [`crate::order_events`]). Answers are the shared contract
//! types of `shardmap::contract`.
//! Handlers only read snapshots and the store; errors map to statuses here
//! and nowhere else. The listener is the workspace's shared one
//! ([`shardcast_edge::http1::serve`], started by the service): HTTP/1.1,
//! bounded, with a deadline at every connection stage.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use shardcast_edge::supervise::Tasks;
use shardcast_edge::ConnLimiter;
use shardmap::contract::forecast::{
    ClockView, ForecastsView, HorizonView, IngestAnswer, SeriesRing, SeriesSetView, SeriesView,
    ShardForecastView, ShardForecasts,
};
use shardmap::contract::ErrorBody;
use shardmap::telemetry::{Frame, FrameError, MAX_FRAME_BYTES};

use crate::engine::{ForecastHandle, ForecastSet, ShardForecast};
use crate::metrics::{Metrics, Reject};
use crate::store::Store;
use crate::time::{HOUR_MS, MINUTE_MS};

/// Hours of actual demand `GET /series` returns unless `?hours=` says.
pub const SERIES_DEFAULT_HOURS: usize = 48;
/// Upper bound on `?hours=` (larger values are capped): 30 days.
pub const SERIES_MAX_HOURS: usize = 30 * 24;
/// Minutes of fine-grained actuals returned beside the hours.
pub const SERIES_MINUTES: usize = 60;

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
    /// The API listener's connections, for `/metrics`.
    pub conns: Arc<ConnLimiter>,
    /// The supervised background loops: `/ready` waits for them all.
    pub tasks: Arc<Tasks>,
    /// Sync's finished-order events (`POST /order-events`).
    pub order_events: Arc<crate::order_events::OrderEvents>,
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

fn json_reply<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json_reply(status, &ErrorBody::new(msg))
}

/// Decode `%XX` escapes of a path segment (`+` stays itself); `None` on
/// a malformed escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    shardcast_edge::url::decode_segment(s)
}

fn horizons_view(s: &ShardForecast) -> BTreeMap<String, HorizonView> {
    s.horizons
        .iter()
        .map(|h| {
            (
                h.horizon.name().to_string(),
                HorizonView {
                    levels: h
                        .levels
                        .iter()
                        .map(|&l| (f64::from(l) * 1e6).round() / 1e6)
                        .collect(),
                    values: h.values.clone(),
                    source: h.source.clone(),
                    fallback: h.is_fallback(),
                },
            )
        })
        .collect()
}

fn shard_view(set: &ForecastSet, s: &ShardForecast) -> ShardForecastView {
    ShardForecastView {
        shard: s.shard.clone(),
        generated_at: set.generated_at.clone(),
        origin_hour: set.origin_hour.clone(),
        history_hours: s.history_hours,
        horizons: horizons_view(s),
        models: set.models.clone(),
        feeds: set.feeds.clone(),
    }
}

fn set_view(set: &ForecastSet) -> ForecastsView {
    ForecastsView {
        generated_at: set.generated_at.clone(),
        origin_hour: set.origin_hour.clone(),
        origin_day: set.origin_day.clone(),
        cycle_ms: set.cycle_ms,
        models: set.models.clone(),
        feeds: set.feeds.clone(),
        shards: set
            .shards
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    ShardForecasts {
                        history_hours: s.history_hours,
                        horizons: horizons_view(s),
                    },
                )
            })
            .collect(),
    }
}

/// `?hours=N` of a query string: the default when absent, capped at
/// [`SERIES_MAX_HOURS`], an error message when not a positive integer.
fn series_hours(query: Option<&str>) -> Result<usize, String> {
    let Some(v) = shardcast_edge::url::query_param(query, "hours") else {
        return Ok(SERIES_DEFAULT_HOURS);
    };
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n.min(SERIES_MAX_HOURS)),
        _ => Err(format!(
            "hours={v:?}: expected a positive integer (at most {SERIES_MAX_HOURS})"
        )),
    }
}

/// Buckets `[last - n + 1, last]` of one ring, on unix time. The last
/// bucket is the one in progress.
fn ring_view(
    ring: &crate::store::Ring,
    last: i64,
    n: usize,
    step_ms: i64,
    offset_ms: i64,
) -> SeriesRing {
    let mut vals = vec![0.0; n];
    let first = last - n as i64 + 1;
    ring.copy_into(first, &mut vals);
    SeriesRing {
        start_unix_ms: first * step_ms - offset_ms,
        step_ms,
        values: vals.iter().map(|v| (v * 1e3).round() / 1e3).collect(),
        last_partial: true,
    }
}

/// One shard's actual demand (requests per bucket): the last `hours`
/// hours and [`SERIES_MINUTES`] minutes, both ending with the bucket in
/// progress. `None` when the store has never seen the shard.
fn series_view(store: &Store, id: &str, hours: usize, now_unix_ms: i64) -> Option<SeriesView> {
    let shard = store.shard(id)?;
    let offset = store.zone().align_ms();
    let local = store.grid_ms(now_unix_ms);
    let g = shard.lock();
    Some(SeriesView {
        shard: id.to_string(),
        history_hours: g.hours.len(),
        hourly: ring_view(&g.hours, local.div_euclid(HOUR_MS), hours, HOUR_MS, offset),
        minutes: ring_view(
            &g.minutes,
            local.div_euclid(MINUTE_MS),
            SERIES_MINUTES,
            MINUTE_MS,
            offset,
        ),
    })
}

impl App {
    /// `GET /series` (every shard) and `GET /series/{shard}`: read-only
    /// actuals for the proxy's dashboard (forecast against actual).
    fn series(&self, path: &str, query: Option<&str>) -> Response<Full<Bytes>> {
        let hours = match series_hours(query) {
            Ok(h) => h,
            Err(m) => return error(StatusCode::BAD_REQUEST, &m),
        };
        let now = self.clock.now_ms();
        if path == "/series" {
            let shards = self
                .store
                .shard_ids()
                .iter()
                .filter_map(|id| Some((id.to_string(), series_view(&self.store, id, hours, now)?)))
                .collect();
            return json_reply(StatusCode::OK, &SeriesSetView { hours, shards });
        }
        let Some(id) = percent_decode(&path["/series/".len()..]) else {
            return error(StatusCode::BAD_REQUEST, "bad percent-encoding in shard id");
        };
        match series_view(&self.store, &id, hours, now) {
            Some(v) => json_reply(StatusCode::OK, &v),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("no series for shard {id:?}"),
            ),
        }
    }

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
        // serde would also take a JSON array of a frame's fields in order.
        if let Err(why) = shardcast_edge::body::require_json_object(&body) {
            m.reject(Reject::Json);
            return error(StatusCode::BAD_REQUEST, why);
        }
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
                    &IngestAnswer {
                        samples: o.samples,
                        too_old: o.too_old,
                        over_capacity: o.over_capacity,
                        seq_gap: o.seq_gap,
                    },
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
        if path == crate::order_events::PATH {
            return crate::order_events::handle(self.manager.as_deref(), &self.order_events, req)
                .await;
        }
        match (req.method(), path.as_str()) {
            (&Method::POST, "/ingest") => self.ingest(req).await,
            (_, "/ingest") => error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            (&Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, "/clock") => {
                // The forecaster's "now": trace time when replaying, so a
                // replayer can start in step with it.
                let now = self.clock.now_ms();
                json_reply(
                    StatusCode::OK,
                    &ClockView {
                        now_unix_ms: now,
                        now: crate::time::format_local(self.store.zone().civil_s(now)),
                        replay: self.clock.is_replay(),
                        speed: self.clock.speed(),
                    },
                )
            }
            (&Method::GET, "/ready") => {
                if !self.forecasts.ready() {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "no forecast cycle yet\n",
                    )
                } else if !self.tasks.all_running() {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "a background loop is not running (see /metrics)\n",
                    )
                } else {
                    reply(StatusCode::OK, "text/plain", "ready\n")
                }
            }
            (&Method::GET, "/metrics") => {
                let mut o = self.metrics.render(&self.store);
                crate::metrics::render_edge(&mut o, &self.conns, &self.tasks);
                if let Some(m) = &self.manager {
                    crate::metrics::render_manager(&mut o, m.refusals());
                    crate::metrics::render_lease(&mut o, m.lease());
                    crate::metrics::render_manager_state(&mut o, m);
                    crate::metrics::render_order_events(&mut o, &self.order_events);
                }
                reply(StatusCode::OK, "text/plain; version=0.0.4", o)
            }
            (&Method::GET, "/forecasts") => {
                let set = self.forecasts.latest();
                if !self.forecasts.ready() {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "no forecast cycle yet");
                }
                json_reply(StatusCode::OK, &set_view(&set))
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
                    Some(s) => json_reply(StatusCode::OK, &shard_view(&set, s)),
                    None => error(
                        StatusCode::NOT_FOUND,
                        &format!("no forecast for shard {id:?}"),
                    ),
                }
            }
            (&Method::GET, p) if p == "/series" || p.starts_with("/series/") => {
                self.series(p, req.uri().query())
            }
            (_, p) if p == "/series" || p.starts_with("/series/") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            }
            (_, "/live" | "/ready" | "/metrics" | "/forecasts") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            }
            _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Retention;
    use crate::time::now_unix_ms;
    use serde_json::Value;
    use shardmap::telemetry::{Latency, ShardSample, FRAME_VERSION};

    fn app() -> App {
        App {
            store: Arc::new(Store::new(
                Retention::default(),
                crate::time::Zone::fixed_minutes(60).unwrap(),
                16,
            )),
            metrics: Arc::new(Metrics::default()),
            forecasts: ForecastHandle::new(),
            manager: None,
            clock: crate::time::Clock::real(),
            conns: ConnLimiter::new(
                "api",
                shardcast_edge::Limits {
                    max_connections: 8,
                    max_per_client: 8,
                },
            ),
            tasks: Tasks::new(),
            order_events: Default::default(),
        }
    }

    async fn get(app: &App, uri: &str) -> (StatusCode, Value) {
        let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        let resp = app.handle(req).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn frame(start_unix_ms: i64, requests: u64) -> Frame {
        Frame {
            v: FRAME_VERSION,
            source: "p".into(),
            seq: 1,
            start_unix_ms: start_unix_ms as u64,
            interval_ms: 1000,
            table_version: 1,
            dropped_before: 0,
            shards: vec![ShardSample {
                shard: "UK/SEASONAL".into(),
                requests,
                errors: 0,
                cache_hits: requests,
                cache_misses: 0,
                bytes: 0,
                latency: Latency {
                    count: requests,
                    p50_us: 1,
                    p90_us: 1,
                    p99_us: 1,
                    max_us: 1,
                    mean_us: 1.0,
                },
                top_skus: vec![],
            }],
        }
    }

    #[tokio::test]
    async fn series_returns_hourly_and_minute_actuals() {
        let app = app();
        let now = now_unix_ms();
        let hour = app.store.local_hour(now);
        // Seeded history for the two hours before the current one, then a
        // frame in the current minute.
        assert!(app.store.seed_hourly("UK/SEASONAL", hour - 2, &[5.0, 7.0]));
        app.store.ingest(&frame(now - 1000, 3), now);

        let (st, v) = get(&app, "/series/UK%2FSEASONAL?hours=4").await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let h = &v["hourly"];
        assert_eq!(h["step_ms"], HOUR_MS);
        let vals: Vec<f64> = serde_json::from_value(h["values"].clone()).unwrap();
        assert_eq!(vals.len(), 4);
        // hour - 3 (nothing), hour - 2, hour - 1, then the current hour
        // (the frame may straddle an hour boundary: its total is what counts).
        assert_eq!(&vals[..2], &[0.0, 5.0]);
        assert!((vals[2] + vals[3] - 10.0).abs() < 1e-3, "{vals:?}");
        // Bucket starts are unix times: the current hour contains `now`.
        let start = h["start_unix_ms"].as_i64().unwrap();
        let cur = start + 3 * HOUR_MS;
        assert!(cur <= now && now < cur + HOUR_MS + 1000, "{start} {now}");
        let m: Vec<f64> = serde_json::from_value(v["minutes"]["values"].clone()).unwrap();
        assert_eq!(m.len(), SERIES_MINUTES);
        assert!((m.iter().sum::<f64>() - 3.0).abs() < 1e-3, "{m:?}");

        // Raw slash, the default window, every shard at once.
        let (st, v) = get(&app, "/series/UK/SEASONAL").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(
            v["hourly"]["values"].as_array().unwrap().len(),
            SERIES_DEFAULT_HOURS
        );
        let (st, v) = get(&app, "/series?hours=100000").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(v["hours"], SERIES_MAX_HOURS);
        let all = &v["shards"]["UK/SEASONAL"]["hourly"]["values"];
        assert_eq!(all.as_array().unwrap().len(), SERIES_MAX_HOURS);
    }

    #[tokio::test]
    async fn series_rejects_bad_input() {
        let app = app();
        assert_eq!(get(&app, "/series/NOPE").await.0, StatusCode::NOT_FOUND);
        app.store
            .ingest(&frame(now_unix_ms() - 1000, 1), now_unix_ms());
        for q in ["hours=0", "hours=-1", "hours=x", "hours="] {
            let (st, v) = get(&app, &format!("/series/UK/SEASONAL?{q}")).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {v}");
        }
        assert_eq!(get(&app, "/series/%zz").await.0, StatusCode::BAD_REQUEST);
        let req = Request::post("/series")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            app.handle(req).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
