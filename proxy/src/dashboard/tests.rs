//! The dashboard's data against stand-in forecasters that answer in the
//! forecaster's and the manager's own shapes.

use super::*;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::path::Path;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::telemetry::Outcome;

const CONFIG: &str = "replication_factor = 1\n[listen]\nhttp = [\"127.0.0.1:1\"]\n\
    [[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[nodes]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n\
    [[shards]]\nid = \"UK/SEASONAL\"\ncategories = [\"SEASONAL\"]\nregions = [\"UK\"]\nreplicas = [\"a\"]\n\
    [[shards]]\nid = \"UK/LIGHTING\"\ncategories = [\"LIGHTING\"]\nregions = [\"UK\"]\nreplicas = [\"b\"]\n\
    [[routes]]\nname = \"r\"\npath = \"/i/{sku}\"\n";

fn shared(extra: &str) -> (tempfile::TempDir, Arc<Shared>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, format!("{CONFIG}{extra}")).unwrap();
    let s = crate::run::shared_for_tests(Path::new(&path)).unwrap();
    s.record_version(&s.current().table, "start");
    (dir, s)
}

async fn get(s: &Arc<Shared>, path: &str) -> (StatusCode, String, Bytes) {
    let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
    let resp = crate::admin::handle(s.clone(), req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, body)
}

async fn data_json(s: &Arc<Shared>) -> Value {
    let (st, ctype, body) = get(s, "/dashboard/data").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ctype, "application/json");
    serde_json::from_slice(&body).unwrap()
}

/// A stand-in forecaster on port 0 answering `path → (status, body)`;
/// anything else is a 404. `delay` holds every answer back.
async fn fake_forecaster(
    routes: Vec<(&'static str, u16, String)>,
    delay: Duration,
) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let routes = routes.clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        let (code, body) = routes
                            .iter()
                            .find(|(p, _, _)| req.uri().path() == *p)
                            .map(|(_, c, b)| (*c, b.clone()))
                            .unwrap_or((404, "{\"error\":\"no such endpoint\"}".into()));
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(code)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A `/forecasts` answer as the forecaster sends it.
fn forecasts_body() -> String {
    let levels = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99];
    json!({
        "generated_at": "2025-01-01T10:00:00Z",
        "origin_hour": "2025-01-01 09:00",
        "origin_day": "2024-12-31",
        "cycle_ms": 12.5,
        "models": [],
        "feeds": [],
        "shards": {
            "UK/SEASONAL": {
                "history_hours": 72,
                "horizons": {
                    "1h": {"levels": levels, "values": [1, 10, 20, 30, 40, 50, 90], "source": {"kind": "model", "model": "m"}, "fallback": false},
                    "1d": {"levels": levels, "values": [1, 100, 200, 300, 400, 500, 900], "source": {"kind": "seasonal_naive", "reason": "no model"}, "fallback": true}
                }
            }
        }
    })
    .to_string()
}

/// A `/manager` answer as the manager sends it (every field).
fn manager_body() -> String {
    let order = |id: u64, state: &str| {
        json!({"id": id, "shard": "UK/SEASONAL", "node": "b", "state": state, "priority": 0.5,
            "deadline_unix_ms": null, "submitted_unix_ms": 1, "finished_unix_ms": null, "rows": 0,
            "bytes": 0, "reason": "forecast", "replaces": null, "adds_replica": true, "deadline_met": null})
    };
    json!({
        "leader": true, "epoch": 1, "holder": "m-1",
        "lease": {"leader": true, "epoch": 1, "holder": "m-1", "id": "m-1", "lease_ms": 3000},
        "assignment_version": {"epoch": 1, "counter": 7},
        "table_refusals": {"proxy": 0, "metadata": 0},
        "dry_run": true, "rounds": 3, "last_round_unix_ms": 1, "replication_factor": 1,
        "sync_error": null, "metadata_error": null, "proxies_behind": [],
        "shards": {"UK/SEASONAL": {"replicas": [{"node": "a", "state": "serving"}], "target": 2,
            "predicted_rps": 41.0, "observed_rps": 3.0, "threshold": 40.0, "skill": 0.5,
            "pinned": null, "hosted": {}}},
        "nodes": {"a": {"health": "up", "last_error": null, "drained": false, "load_rps": 3.5, "capacity": 100.0, "zone": null}},
        "orders": [order(1, "running"), order(2, "done")],
        "decisions": [{"at_unix_ms": 1, "action": "add_replica", "shard": "UK/SEASONAL", "node": "b",
            "reason": "forecast", "detail": "", "dry_run": true}],
        "deferred": 0,
        "operator": {"dry_run": true, "pins": {}, "drained": [], "thresholds": {}},
        "prefetch": {"by_reason": {"forecast": 3, "initial": 2}, "warm_before_rise": 2,
            "warm_after_rise": 0, "no_rise": 1, "rises": 2, "rises_met_warm": 2}
    })
    .to_string()
}

#[tokio::test]
async fn page_is_self_contained_html() {
    let (_d, s) = shared("");
    let (st, ctype, body) = get(&s, "/dashboard").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ctype, "text/html; charset=utf-8");
    let html = String::from_utf8(body.to_vec()).unwrap();
    for id in [
        "id=\"assignment-version\"",
        "id=\"config-generation\"",
        "id=\"total-requests\"",
        "id=\"shard-map\"",
        "id=\"orders\"",
        "id=\"decisions\"",
        "id=\"forecaster-status\"",
        "id=\"prefetch-forecast\"",
        "id=\"warm-before-rise\"",
    ] {
        assert!(html.contains(id), "page lacks {id}");
    }
    // Nothing is loaded from anywhere else: the only absolute URL is
    // the SVG namespace name, which is an identifier, not a fetch.
    let without_ns = html.replace("http://www.w3.org/2000/svg", "");
    for bad in ["http://", "https://", "src=", "@import", "url("] {
        assert!(!without_ns.contains(bad), "page references {bad:?}");
    }
    let req = Request::post("/dashboard")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = crate::admin::handle(s.clone(), req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn dashboard_needs_the_bearer_token_like_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        CONFIG.replace("[listen]\n", "[listen]\nadmin_token = \"t\"\n"),
    )
    .unwrap();
    let s = crate::run::shared_for_tests(Path::new(&path)).unwrap();
    for path in ["/dashboard", "/dashboard/data"] {
        let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        let resp = crate::admin::handle(s.clone(), req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        let req = Request::get(path)
            .header("authorization", "Bearer t")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = crate::admin::handle(s.clone(), req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn data_has_the_table_history_and_traffic() {
    let (_d, s) = shared("");
    let v = data_json(&s).await;
    assert_eq!(
        v["table"]["assignment_version"],
        json!({"epoch": 0, "counter": 0})
    );
    assert_eq!(v["table"]["config_generation"], 1);
    let ids: Vec<&str> = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["UK/SEASONAL", "UK/LIGHTING"]);
    assert_eq!(v["table"]["shards"][0]["replicas"][0]["node"], "a");
    assert_eq!(v["table"]["shards"][0]["replicas"][0]["state"], "serving");
    assert_eq!(v["table"]["nodes"][1]["health"], "healthy");
    assert_eq!(v["history"][0]["cause"], "start");
    assert_eq!(v["history"][0]["config_generation"], 1);
    assert_eq!(v["history"][0]["assignment_version"]["counter"], 0);
    assert_eq!(v["totals"]["requests"], 0);
    assert_eq!(v["shards"][0]["p99_ms"], Value::Null);
    assert_eq!(v["forecaster"]["configured"], false);
    assert_eq!(v["orders"], json!([]));

    // 100 requests on UK/SEASONAL: 3 of 4 hits, 2 slow ones.
    let snap = s.current();
    snap.stats[0].tick(now_ms());
    for i in 0..100u64 {
        snap.stats[0].record(Outcome {
            sku: b"x",
            error: i == 0,
            cache_hit: Some(i % 4 != 0),
            bytes: 1,
            latency_us: if i < 98 { 2_000 } else { 80_000 },
        });
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    snap.stats[0].tick(now_ms());
    snap.stats[1].tick(now_ms());
    s.counters
        .requests
        .fetch_add(101, std::sync::atomic::Ordering::Relaxed);
    let v = data_json(&s).await;
    let sh = &v["shards"][0];
    assert_eq!(sh["requests"], 100);
    assert_eq!(sh["errors"], 1);
    assert_eq!(sh["hit_rate"], 0.75);
    assert_eq!(sh["recent_hit_rate"], 0.75);
    assert!(sh["requests_per_s"].as_f64().unwrap() > 100.0, "{sh}");
    let p99 = sh["p99_ms"].as_f64().unwrap();
    assert!((79.0..=81.0).contains(&p99), "{p99}");
    let p50 = sh["p50_ms"].as_f64().unwrap();
    assert!((1.9..=2.1).contains(&p50), "{p50}");
    assert_eq!(v["shards"][1]["requests"], 0);
    assert_eq!(v["totals"]["requests"], 100);
    assert_eq!(v["totals"]["received"], 101);
    assert_eq!(v["totals"]["p99_ms"], sh["p99_ms"]);
}

#[tokio::test]
async fn unreachable_forecaster_is_reported_quickly() {
    // A port nothing listens on, and one that answers too late.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let slow = fake_forecaster(
        vec![("/forecasts", 200, forecasts_body())],
        Duration::from_secs(5),
    )
    .await;
    for addr in [closed, slow] {
        let (_d, s) = shared(&format!(
            "[dashboard]\nforecaster = \"http://{addr}\"\nforecaster_timeout_ms = 200\n"
        ));
        let t = Instant::now();
        let v = data_json(&s).await;
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        let f = &v["forecaster"];
        assert_eq!(f["configured"], true);
        assert_eq!(f["reachable"], false, "{f}");
        assert!(f["error"].as_str().is_some_and(|e| !e.is_empty()), "{f}");
        assert_eq!(v["shards"][0]["forecast"], Value::Null);
        // the proxy's own view is still all there
        assert_eq!(v["table"]["config_generation"], 1);
    }
}

#[tokio::test]
async fn forecasts_series_and_manager_are_joined_per_shard() {
    let series = json!({"hours": 48, "shards": {"UK/SEASONAL": {
        "shard": "UK/SEASONAL", "history_hours": 2,
        "hourly": {"start_unix_ms": 0, "step_ms": 3600000, "values": [1.0, 2.0], "last_partial": true},
        "minutes": {"start_unix_ms": 0, "step_ms": 60000, "values": [0.5], "last_partial": true}}}})
    .to_string();
    let addr = fake_forecaster(
        vec![
            ("/forecasts", 200, forecasts_body()),
            ("/series", 200, series),
            ("/manager", 200, manager_body()),
        ],
        Duration::ZERO,
    )
    .await;
    let (_d, s) = shared(&format!("[dashboard]\nforecaster = \"http://{addr}/\"\n"));
    let v = data_json(&s).await;
    let f = &v["forecaster"];
    assert_eq!(f["reachable"], true, "{f}");
    assert_eq!(f["url"], format!("http://{addr}"));
    for p in ["forecasts", "series", "manager"] {
        assert_eq!(f[p]["available"], true, "{p}: {f}");
    }
    assert_eq!(f["origin_hour"], "2025-01-01 09:00");
    let fc = &v["shards"][0]["forecast"];
    assert_eq!(
        fc["1h"],
        json!({"p10": 10.0, "p50": 30.0, "p90": 50.0, "fallback": false, "source": "model"})
    );
    assert_eq!(fc["1d"]["p90"], 500.0);
    assert_eq!(fc["1d"]["fallback"], true);
    assert_eq!(fc["history_hours"], 72);
    assert!(fc.get("1w").is_none(), "{fc}");
    assert_eq!(
        v["shards"][0]["actual"]["hourly"]["values"],
        json!([1.0, 2.0])
    );
    assert_eq!(v["shards"][0]["manager"]["target"], 2);
    assert_eq!(v["shards"][1]["forecast"], Value::Null);
    assert_eq!(v["shards"][1]["manager"], Value::Null);
    assert_eq!(v["manager"]["assignment_version"]["counter"], 7);
    assert_eq!(v["manager"]["prefetch"]["by_reason"]["forecast"], 3);
    assert_eq!(v["manager"]["prefetch"]["warm_before_rise"], 2);
    assert_eq!(v["manager"]["nodes"]["a"]["load_rps"], 3.5);
    assert_eq!(v["orders"].as_array().unwrap().len(), 2);
    assert_eq!(v["orders"][0]["state"], "running");
    assert_eq!(v["decisions"][0]["reason"], "forecast");
}

#[tokio::test]
async fn missing_manager_and_early_forecaster_are_parts_not_failures() {
    // A forecaster without /manager (404) and before its first cycle (503).
    let addr = fake_forecaster(
        vec![(
            "/forecasts",
            503,
            "{\"error\":\"no forecast cycle yet\"}".into(),
        )],
        Duration::ZERO,
    )
    .await;
    let (_d, s) = shared(&format!("[dashboard]\nforecaster = \"http://{addr}\"\n"));
    let v = data_json(&s).await;
    let f = &v["forecaster"];
    assert_eq!(f["reachable"], true, "{f}");
    assert_eq!(f["forecasts"]["available"], false);
    assert_eq!(f["forecasts"]["error"], "HTTP 503: no forecast cycle yet");
    assert_eq!(f["manager"]["error"], "HTTP 404: no such endpoint");
    assert_eq!(v["manager"], Value::Null);
    assert_eq!(v["orders"], json!([]));
}

#[tokio::test]
async fn an_answer_in_another_shape_is_that_parts_error() {
    // A manager that renamed a field and a forecaster with an order
    // state the contract does not know: each part says so, the rest
    // of the page is still there.
    let manager = manager_body().replace("\"adds_replica\"", "\"is_add\"");
    let forecasts = forecasts_body().replace("\"seasonal_naive\"", "\"naive\"");
    let addr = fake_forecaster(
        vec![("/forecasts", 200, forecasts), ("/manager", 200, manager)],
        Duration::ZERO,
    )
    .await;
    let (_d, s) = shared(&format!("[dashboard]\nforecaster = \"http://{addr}\"\n"));
    let v = data_json(&s).await;
    let f = &v["forecaster"];
    assert_eq!(f["reachable"], true, "{f}");
    assert_eq!(f["manager"]["available"], false, "{f}");
    let e = f["manager"]["error"].as_str().unwrap();
    assert!(e.contains("adds_replica"), "{e}");
    assert_eq!(f["forecasts"]["available"], false, "{f}");
    assert!(
        f["forecasts"]["error"].as_str().unwrap().contains("naive"),
        "{f}"
    );
    assert_eq!(v["manager"], Value::Null);
    assert_eq!(v["shards"][0]["forecast"], Value::Null);
    assert_eq!(v["table"]["config_generation"], 1);
}
