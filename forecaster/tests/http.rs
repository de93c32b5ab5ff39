//! The binary's service over real HTTP on port 0: frames accepted and
//! refused (4xx, counted), forecasts by encoded and raw shard id, readiness,
//! and a restart that keeps the history through the snapshot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shardcast_forecaster::config::Config;
use shardcast_forecaster::service::Service;
use shardcast_forecaster::time::now_unix_ms;
use shardmap::telemetry::{Frame, Latency, ShardSample, FRAME_VERSION};

fn root() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn config(dir: &Path, hourly: &str) -> Config {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
[persist]
path = "{snap}"
interval_s = 3600
[model]
hourly = "{root}/forecaster/models/{hourly}"
daily = "{root}/forecaster/models/shardcast_daily.json"
[planner]
cycle_s = 0.2
[feeds.history]
source = "{root}/data/online_retail/shard_hourly.csv.gz"
id_col = "shard_id"
value_col = "lines"
align = "now"
"#,
        snap = dir.join("store.snap").display(),
        root = root().display(),
    );
    Config::parse(&text, dir, "test.toml").expect("config")
}

async fn try_call(
    method: &str,
    url: String,
    body: Vec<u8>,
) -> Result<(u16, String), hyper_util::client::legacy::Error> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn call(method: &str, url: String, body: Vec<u8>) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn frame(seq: u64, requests: u64) -> Frame {
    Frame {
        v: FRAME_VERSION,
        source: "proxy-1".into(),
        seq,
        start_unix_ms: now_unix_ms() as u64 - 1000,
        interval_ms: 1000,
        table_version: 3,
        dropped_before: 0,
        shards: vec![ShardSample {
            shard: "UK/SEASONAL".into(),
            requests,
            errors: 1,
            cache_hits: requests - 1,
            cache_misses: 1,
            bytes: 1000,
            latency: Latency {
                count: requests,
                p50_us: 100,
                p90_us: 200,
                p99_us: 300,
                max_us: 400,
                mean_us: 120.0,
            },
            top_skus: vec![("85123A".into(), 3)],
        }],
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_forecast_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(config(dir.path(), "shardcast_hourly.json"))
        .await
        .unwrap();
    let base = format!("http://{}", svc.addr);
    assert_eq!(call("GET", format!("{base}/live"), vec![]).await.0, 200);
    eventually("ready", || async {
        call("GET", format!("{base}/ready"), vec![]).await.0 == 200
    })
    .await;

    // good frames, with a seq gap (2 frames lost)
    let (st, body) = call("POST", format!("{base}/ingest"), frame(1, 40).encode()).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = call("POST", format!("{base}/ingest"), frame(4, 60).encode()).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"seq_gap\":2"), "{body}");
    // What the forecaster sends is the shared contract, field for field.
    let answer: shardmap::contract::forecast::IngestAnswer = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.seq_gap, 2);

    // bad frames: truncated, garbage, wrong version, inconsistent, oversized, wrong method
    let enc = frame(5, 10).encode();
    let mut wrong_version = frame(5, 10);
    wrong_version.v = 99;
    let mut inconsistent = frame(5, 10);
    inconsistent.shards[0].errors = 11;
    let mut big = b"{\"v\":1,\"source\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', (4 << 20) + 10));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (enc[..enc.len() / 2].to_vec(), 400),
        (b"\x00\xff garbage".to_vec(), 400),
        (wrong_version.encode(), 400),
        (inconsistent.encode(), 422),
        (big, 413),
    ];
    for (body, want) in cases {
        if want == 413 {
            // The server answers 413 from the length alone and closes; the
            // client may still be writing and see a broken pipe instead.
            match try_call("POST", format!("{base}/ingest"), body).await {
                Ok((st, text)) => assert_eq!(st, 413, "{text}"),
                Err(e) => assert!(
                    format!("{e:?}").contains("BrokenPipe")
                        || format!("{e:?}").contains("ConnectionReset"),
                    "{e:?}"
                ),
            }
            continue;
        }
        let (st, text) = call("POST", format!("{base}/ingest"), body).await;
        assert_eq!(st, want, "{text}");
    }
    assert_eq!(call("GET", format!("{base}/ingest"), vec![]).await.0, 405);

    let (_, m) = call("GET", format!("{base}/metrics"), vec![]).await;
    shardcast_edge::metrics::parse_strict(&m).unwrap_or_else(|e| panic!("{e}\n{m}"));
    assert_eq!(
        metric(
            &m,
            "shardcast_forecaster_frames_rejected_total{reason=\"json\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "shardcast_forecaster_frames_rejected_total{reason=\"version\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "shardcast_forecaster_frames_rejected_total{reason=\"invalid\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "shardcast_forecaster_frames_rejected_total{reason=\"too_large\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "shardcast_forecaster_frames_accepted_total"),
        2.0
    );
    assert_eq!(metric(&m, "shardcast_forecaster_frames_seq_gap_total"), 2.0);

    // forecasts: encoded and raw ids, unknown shard, the whole set
    let (st, enc_body) = call("GET", format!("{base}/forecast/UK%2FSEASONAL"), vec![]).await;
    assert_eq!(st, 200, "{enc_body}");
    let v: serde_json::Value = serde_json::from_str(&enc_body).unwrap();
    assert_eq!(v["shard"], "UK/SEASONAL");
    for h in ["1h", "1d", "1w", "1mo"] {
        assert_eq!(
            v["horizons"][h]["source"]["kind"], "model",
            "{h}: {enc_body}"
        );
        assert_eq!(v["horizons"][h]["values"].as_array().unwrap().len(), 9);
        assert_eq!(v["horizons"][h]["levels"][4], 0.5);
    }
    assert!(v["history_hours"].as_u64().unwrap() > 17_000);
    assert!(v["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "sales_history" && f["state"] == "ok"));
    let typed: shardmap::contract::forecast::ShardForecastView =
        serde_json::from_str(&enc_body).unwrap();
    let again: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&typed).unwrap()).unwrap();
    assert_eq!(again, v, "nothing lost or renamed");
    let (st, raw) = call("GET", format!("{base}/forecast/UK/SEASONAL"), vec![]).await;
    assert_eq!(st, 200, "{raw}");
    assert_eq!(
        call("GET", format!("{base}/forecast/NOPE%2FX"), vec![])
            .await
            .0,
        404
    );
    assert_eq!(
        call("GET", format!("{base}/forecast/%zz"), vec![]).await.0,
        400
    );
    let (st, all) = call("GET", format!("{base}/forecasts"), vec![]).await;
    assert_eq!(st, 200);
    let typed: shardmap::contract::forecast::ForecastsView = serde_json::from_str(&all).unwrap();
    assert_eq!(typed.shards.len(), 14);
    assert!(typed.shards["UK/SEASONAL"].horizons.contains_key("1h"));
    let (st, series) = call("GET", format!("{base}/series?hours=3"), vec![]).await;
    assert_eq!(st, 200, "{series}");
    let series: shardmap::contract::forecast::SeriesSetView =
        serde_json::from_str(&series).unwrap();
    assert_eq!(series.hours, 3);
    assert_eq!(series.shards["UK/SEASONAL"].hourly.values.len(), 3);
    let (st, clock) = call("GET", format!("{base}/clock"), vec![]).await;
    assert_eq!(st, 200, "{clock}");
    let clock: shardmap::contract::forecast::ClockView = serde_json::from_str(&clock).unwrap();
    assert!(!clock.replay);

    // the live telemetry is in the store, and a restart keeps it
    let hour = svc.store.local_hour(now_unix_ms());
    let before = svc.store.shard("UK/SEASONAL").unwrap().lock().clone();
    assert_eq!(before.totals.requests, 100);
    svc.shutdown().await;
    assert!(dir.path().join("store.snap").exists());

    let svc = Service::start(config(dir.path(), "shardcast_hourly.json"))
        .await
        .unwrap();
    let after = svc.store.shard("UK/SEASONAL").unwrap().lock().clone();
    assert_eq!(
        after, before,
        "history survives the restart (and is not seeded twice)"
    );
    assert!(after.hours.get(hour) >= 100.0 || after.hours.get(hour - 1) >= 100.0);
    svc.shutdown().await;

    // a corrupt snapshot: reported, started empty then re-seeded, still serving
    std::fs::write(
        dir.path().join("store.snap"),
        b"SCFSNAP1 but then nothing useful",
    )
    .unwrap();
    let svc = Service::start(config(dir.path(), "shardcast_hourly.json"))
        .await
        .unwrap();
    let base = format!("http://{}", svc.addr);
    let (_, m) = call("GET", format!("{base}/metrics"), vec![]).await;
    shardcast_edge::metrics::parse_strict(&m).unwrap_or_else(|e| panic!("{e}\n{m}"));
    assert_eq!(
        metric(&m, "shardcast_forecaster_snapshot_restore_failures_total"),
        1.0
    );
    assert_eq!(
        svc.store
            .shard("UK/SEASONAL")
            .unwrap()
            .lock()
            .totals
            .requests,
        0
    );
    eventually("ready after corrupt snapshot", || async {
        call("GET", format!("{base}/ready"), vec![]).await.0 == 200
    })
    .await;
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_model_path_serves_flagged_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(config(dir.path(), "missing.json"))
        .await
        .unwrap();
    let base = format!("http://{}", svc.addr);
    eventually("ready", || async {
        call("GET", format!("{base}/ready"), vec![]).await.0 == 200
    })
    .await;
    let (st, body) = call(
        "GET",
        format!("{base}/forecast/INTL%2FBAGS_STORAGE"),
        vec![],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["horizons"]["1h"]["source"]["kind"], "seasonal_naive",
        "{body}"
    );
    assert_eq!(v["horizons"]["1h"]["fallback"], true);
    assert_eq!(v["horizons"]["1w"]["source"]["kind"], "model");
    let (_, m) = call("GET", format!("{base}/metrics"), vec![]).await;
    shardcast_edge::metrics::parse_strict(&m).unwrap_or_else(|e| panic!("{e}\n{m}"));
    assert_eq!(
        metric(
            &m,
            "shardcast_forecaster_forecasts{horizon=\"1d\",source=\"seasonal_naive\"}"
        ),
        14.0
    );
    svc.shutdown().await;
}
