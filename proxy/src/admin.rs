//! The admin listener: `/live`, `/ready`, `/metrics`, `GET|PUT /admin/table`,
//! `POST /admin/reload`, `GET /admin/history`, and the operator dashboard
//! (`GET /dashboard`, `GET /dashboard/data`, see [`crate::dashboard`]).
//! Loopback by default; when
//! bound elsewhere every request needs `Authorization: Bearer <token>`
//! (config validation enforces that a token exists).

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use shardmap::{TableUpdate, TableView};
use tokio::net::TcpListener;
use tracing::{info, warn};

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

/// Handle one admin request (no socket needed: tests call this directly).
pub async fn handle<B>(
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
    req: Request<B>,
) -> Result<Resp, Infallible>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(t) = &token {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v.as_bytes() == t.as_bytes());
        if !ok {
            return Ok(text(StatusCode::UNAUTHORIZED, "bearer token required\n"));
        }
    }
    let (parts, body) = req.into_parts();
    let resp = match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/ready") => {
            if shared.ready.load(Relaxed) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(crate::metrics::render(&shared))))
            .unwrap_or_default(),
        (&Method::GET, "/admin/table") => json(StatusCode::OK, &table_view(&shared)),
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
            match serde_json::from_slice::<TableUpdate>(&bytes) {
                Err(e) => json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": format!("invalid table update: {e}")}),
                ),
                Ok(u) => match reload::apply_update(&shared, u).await {
                    Ok(v) => json(StatusCode::OK, &serde_json::json!({"version": v})),
                    Err(
                        e @ reload::UpdateError::Table(shardmap::table::TableError::Stale {
                            ..
                        }),
                    ) => json(
                        StatusCode::CONFLICT,
                        &serde_json::json!({"error": e.to_string(), "version": shared.current().table.version}),
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
                ReloadOutcome::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            };
            json(status, &out)
        }
        (
            _,
            "/live" | "/ready" | "/metrics" | "/admin/table" | "/admin/reload" | "/admin/history"
            | "/dashboard" | "/dashboard/data",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// Serve the admin API on `listener` until `shutdown` turns true.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let token: Option<Arc<str>> = shared
        .current()
        .config
        .listen
        .admin_token
        .as_deref()
        .map(Arc::from);
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listening");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                handle(shared.clone(), token.clone(), req)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shared() -> Arc<Shared> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "replication_factor = 1\n[listen]\nhttp = [\"127.0.0.1:1\"]\n[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\
             [[shards]]\nid = \"s\"\ncategories = [\"X\"]\nregions = [\"UK\"]\n[[routes]]\nname = \"r\"\npath = \"/i/{sku}\"\n",
        )
        .unwrap();
        crate::run::shared_for_tests(Path::new(&path)).unwrap()
    }

    async fn call(
        s: &Arc<Shared>,
        token: Option<&str>,
        auth: Option<&str>,
        path: &str,
    ) -> StatusCode {
        let mut b = Request::get(path);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let req = b.body(Full::new(Bytes::new())).unwrap();
        handle(s.clone(), token.map(Arc::from), req)
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn bearer_token_is_required_when_set() {
        let s = shared();
        assert_eq!(call(&s, None, None, "/admin/table").await, StatusCode::OK);
        assert_eq!(
            call(&s, Some("sekrit"), None, "/admin/table").await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&s, Some("sekrit"), Some("Bearer nope"), "/metrics").await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&s, Some("sekrit"), Some("Bearer sekrit"), "/metrics").await,
            StatusCode::OK
        );
        assert_eq!(call(&s, None, None, "/nope").await, StatusCode::NOT_FOUND);
        assert_eq!(
            call(&s, None, None, "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
