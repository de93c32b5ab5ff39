//! The admin listener: `/live`, `/ready`, `/metrics`, `GET|PUT /admin/table`
//! (`GET /admin/table?shards=none`: the version and the nodes only),
//! `POST /admin/reload`, `GET /admin/config`, `GET /admin/history`, and the
//! operator dashboard (`GET /dashboard`, `GET /dashboard/data`, see
//! [`crate::dashboard`]).
//!
//! Served by `shardcast_edge::http1::serve` (HTTP/1.1, bounded by
//! `limits.admin_max_connections`, with the `[timeouts] client_*` deadlines
//! taken when it starts). Loopback by default; when `admin_token` is set
//! every request needs `Authorization: Bearer <token>` (any case of
//! `Bearer`), read from the running snapshot per request so a reload that
//! changes the token applies at once. Config validation enforces a token
//! off loopback.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use shardcast_edge::{auth, http1, Deadlines};
use shardmap::{TableUpdate, TableView, UpdateAnswer};
use tokio::net::TcpListener;

use crate::node::now_ms;
use crate::reload::{self, ReloadOutcome};
use crate::snapshot::Snapshot;
use crate::state::Shared;

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Resp {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// The current table as JSON.
pub fn table_view(shared: &Shared) -> TableView {
    snapshot_view(&shared.current())
}

/// The table of `snap` as JSON, with node health and in-flight counts now.
pub fn snapshot_view(snap: &Snapshot) -> TableView {
    let now = now_ms();
    TableView::of(&snap.table, |i| {
        (snap.nodes[i].health(now), snap.nodes[i].in_flight())
    })
}

/// The table's version and its nodes with their health now, without the
/// shards (`GET /admin/table?shards=none`): what the shard manager reads
/// every round, a few KB where the whole view at 10k shards is megabytes.
pub fn nodes_view(snap: &Snapshot) -> TableView {
    let now = now_ms();
    let t = &snap.table;
    TableView {
        assignment_version: t.assignment_version,
        config_generation: t.config_generation,
        skus: t.catalog.len(),
        shards: vec![],
        nodes: t
            .nodes
            .iter()
            .zip(snap.nodes.iter())
            .map(|(n, state)| shardmap::control::NodeView {
                name: n.name.clone(),
                address: n.address.clone(),
                capacity: n.capacity,
                zone: n.zone.clone(),
                health: state.health(now),
                in_flight: state.in_flight(),
            })
            .collect(),
    }
}

/// Handle one admin request (no socket needed: tests call this directly).
pub async fn handle<B>(shared: Arc<Shared>, req: Request<B>) -> Result<Resp, Infallible>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The token of the running snapshot, not the one at start: a reload
    // that changes it applies to the next request.
    if let Some(t) = shared.current().config.listen.admin_token.as_deref() {
        if !auth::bearer_ok(req.headers(), t) {
            let mut r = text(StatusCode::UNAUTHORIZED, "bearer token required\n");
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(auth::CHALLENGE),
            );
            return Ok(r);
        }
    }
    let (parts, body) = req.into_parts();
    let resp = match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/ready") => {
            // Ready once the first table serves and every background loop
            // runs (one that panicked and waits for its restart is not).
            if shared.ready.load(Relaxed) && shared.tasks.all_running() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(crate::metrics::render(&shared))))
            .unwrap_or_default(),
        (&Method::GET, "/admin/table") => {
            let no_shards = shardcast_edge::url::query_param(parts.uri.query(), "shards")
                .is_some_and(|v| v == "none");
            if no_shards {
                json(StatusCode::OK, &nodes_view(&shared.current()))
            } else {
                json(StatusCode::OK, &table_view(&shared))
            }
        }
        // The restart-only settings the process runs with (what `-t` and
        // reload compare a file against).
        (&Method::GET, "/admin/config") => json(StatusCode::OK, &shared.edge.started),
        (&Method::GET, "/dashboard") => Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .header("cache-control", "no-store")
            .header("x-content-type-options", "nosniff")
            // The page loads nothing from anywhere: enforce it.
            .header(
                "content-security-policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            )
            .body(Full::new(Bytes::from_static(
                crate::dashboard::HTML.as_bytes(),
            )))
            .unwrap_or_default(),
        (&Method::GET, "/dashboard/data") => {
            let body =
                serde_json::to_vec(&crate::dashboard::data(&shared).await).unwrap_or_default();
            Response::builder()
                .header("content-type", "application/json")
                .header("cache-control", "no-store")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default()
        }
        (&Method::GET, "/admin/history") => {
            let h: Vec<_> = shared.history.lock().iter().cloned().collect();
            json(StatusCode::OK, &h)
        }
        (&Method::PUT, "/admin/table") => {
            let bytes = match Limited::new(body, 4 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, format!("body: {e}\n"))),
            };
            // serde's derive would take `[version, shards]` for the struct.
            if let Err(why) = shardcast_edge::body::require_json_object(&bytes) {
                return Ok(json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": format!("invalid table update: {why}")}),
                ));
            }
            match serde_json::from_slice::<TableUpdate>(&bytes) {
                Err(e) => json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": format!("invalid table update: {e}")}),
                ),
                Ok(u) => match reload::apply_update(&shared, u).await {
                    Ok(answer) => json(StatusCode::OK, &answer),
                    // Not newer than the assignment this proxy holds: say
                    // which, so the manager can number its next one past it.
                    // A delta computed from another version than this
                    // proxy's: the same answer, and the manager sends the
                    // full table.
                    Err(
                        e @ reload::UpdateError::Table(
                            shardmap::table::TableError::Stale { current, .. }
                            | shardmap::table::TableError::BaseMismatch { current, .. },
                        ),
                    ) => json(
                        StatusCode::CONFLICT,
                        &UpdateAnswer {
                            error: Some(e.to_string()),
                            assignment_version: current,
                            config_generation: shared.current().table.config_generation,
                        },
                    ),
                    Err(e) => json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &serde_json::json!({"error": e.to_string()}),
                    ),
                },
            }
        }
        (&Method::POST, "/admin/reload") => {
            let out = reload::reload(&shared, "api").await;
            let status = match out {
                ReloadOutcome::Applied { .. } | ReloadOutcome::Unchanged { .. } => StatusCode::OK,
                // Applied, except what waits for a restart: not plain success.
                ReloadOutcome::NeedsRestart { .. } => StatusCode::ACCEPTED,
                ReloadOutcome::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            };
            json(status, &out)
        }
        (
            _,
            "/live" | "/ready" | "/metrics" | "/admin/table" | "/admin/reload" | "/admin/config"
            | "/admin/history" | "/dashboard" | "/dashboard/data",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// Serve the admin API on `listener` until `shutdown` turns true, with the
/// connection bound `shared.edge.admin` and the client deadlines of the
/// current config (a reload applies to new connections).
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let limiter = shared.edge.admin.clone();
    let sh = shared.clone();
    let deadlines = move || {
        let t = sh.current().config.timeouts;
        Deadlines {
            header: t.client_header,
            body: t.client_body,
            keepalive: t.client_keepalive,
            write: t.client_write,
        }
    };
    let svc = service_fn(move |req: Request<Incoming>| handle(shared.clone(), req));
    http1::serve_with(listener, limiter, deadlines, svc, async move {
        http1::stopped(&mut shutdown).await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "replication_factor = 1\n[listen]\nhttp = [\"127.0.0.1:1\"]\n{listen}\n\
        [[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\
        [[shards]]\nid = \"s\"\ncategories = [\"X\"]\nregions = [\"UK\"]\n[[routes]]\nname = \"r\"\npath = \"/i/{sku}\"\n";

    fn write(path: &std::path::Path, listen: &str) {
        std::fs::write(path, CONFIG.replace("{listen}", listen)).unwrap();
    }

    fn shared(listen: &str) -> (tempfile::TempDir, Arc<Shared>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        write(&path, listen);
        let s = crate::run::shared_for_tests(&path).unwrap();
        (dir, s)
    }

    async fn call(s: &Arc<Shared>, auth: Option<&str>, path: &str) -> Resp {
        let mut b = Request::get(path);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        handle(s.clone(), b.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap()
    }

    async fn status(s: &Arc<Shared>, auth: Option<&str>, path: &str) -> StatusCode {
        call(s, auth, path).await.status()
    }

    #[tokio::test]
    async fn bearer_token_is_required_when_set() {
        let (_d, open) = shared("");
        assert_eq!(status(&open, None, "/admin/table").await, StatusCode::OK);
        assert_eq!(status(&open, None, "/nope").await, StatusCode::NOT_FOUND);
        let (_d, s) = shared("admin_token = \"sekrit\"");
        let r = call(&s, None, "/admin/table").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[http::header::WWW_AUTHENTICATE],
            "Bearer realm=\"shardcast\""
        );
        assert_eq!(
            status(&s, Some("Bearer nope"), "/metrics").await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&s, Some("Bearer sekrit"), "/metrics").await,
            StatusCode::OK
        );
        assert_eq!(
            status(&s, Some("bearer sekrit"), "/metrics").await,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_reloaded_token_applies_to_the_next_request() {
        let (d, s) = shared("admin_token = \"old\"");
        write(&d.path().join("p.toml"), "admin_token = \"new\"");
        let out = reload::reload(&s, "test").await;
        assert!(matches!(out, ReloadOutcome::Applied { .. }), "{out:?}");
        assert_eq!(
            status(&s, Some("Bearer old"), "/live").await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&s, Some("Bearer new"), "/live").await,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_listener_change_needs_a_restart_on_every_reload_until_undone() {
        let (d, s) = shared("");
        let path = d.path().join("p.toml");
        write(&path, "admin = \"127.0.0.1:9999\"\nthreads = 3");
        for _ in 0..2 {
            match reload::reload(&s, "test").await {
                ReloadOutcome::NeedsRestart { needs_restart, .. } => {
                    let f: Vec<_> = needs_restart.iter().map(|p| p.field.as_str()).collect();
                    assert_eq!(f, ["listen.admin", "listen.threads"]);
                    assert_eq!(needs_restart[0].file, "127.0.0.1:9999");
                }
                other => panic!("{other:?}"),
            }
        }
        // the running settings did not move
        let r = call(&s, None, "/admin/config").await;
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let running: crate::restart::RestartOnly = serde_json::from_slice(&body).unwrap();
        assert_eq!(running.admin, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(running.threads, 1);
        write(&path, "");
        let out = reload::reload(&s, "test").await;
        assert!(matches!(out, ReloadOutcome::Applied { .. }), "{out:?}");
        let out = reload::reload(&s, "test").await;
        assert!(matches!(out, ReloadOutcome::Unchanged { .. }), "{out:?}");
    }

    #[tokio::test]
    async fn a_table_update_must_be_a_json_object() {
        let (_d, s) = shared("");
        let put = |body: &'static str| {
            let req = Request::put("/admin/table")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            handle(s.clone(), req)
        };
        // serde's derive would read this as {version: 99, shards: {}}
        let r = put("[99, {}]").await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("must be a JSON object"),
            "{body:?}"
        );
        assert_eq!(
            s.current().table.assignment_version,
            shardmap::AssignmentVersion::NONE
        );
        assert_eq!(
            put("{\"version\": 2}").await.unwrap().status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn ready_waits_for_the_first_table_and_every_loop() {
        let (_d, s) = shared("");
        assert_eq!(
            status(&s, None, "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        s.ready.store(true, Relaxed);
        assert_eq!(status(&s, None, "/ready").await, StatusCode::OK);
        // a loop that is not running (panicked, waiting for its restart)
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let h = s.tasks.spawn("flaky", rx, || async { panic!("boom") });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            status(&s, None, "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        h.abort();
    }
}
