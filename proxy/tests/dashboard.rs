//! The operator dashboard in a real headless Chromium, served by the real
//! `shardcast-proxy` binary in front of real test nodes: the page renders
//! every configured shard, its numbers move after traffic and a table
//! update, and the forecaster's forecasts, orders and decisions show up
//! (or "forecaster unreachable" when it is down).
//!
//! Needs Chromium (`/usr/bin/chromium`, or the path in `$CHROMIUM`);
//! scripts/setup installs it. Without it these tests fail with a message
//! saying so: a dashboard nobody checked in a browser is not tested.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

/// The browser: `$CHROMIUM` when set, else the Debian package's binary.
fn chromium() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os("CHROMIUM") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![
            "/usr/bin/chromium".into(),
            "/usr/bin/chromium-browser".into(),
        ],
    };
    match candidates.iter().find(|c| c.is_file()) {
        Some(c) => c.clone(),
        None => panic!(
            "headless Chromium not found (looked for {candidates:?}): the dashboard \
             test needs it; run scripts/setup, which installs the Debian `chromium` \
             package, or set CHROMIUM to the browser's path"
        ),
    }
}

/// Load `url` in headless Chromium, let the page's scripts run for
/// `budget_ms` of virtual time (fetches in flight pause it), and return the
/// serialized DOM. Bounded by a wall-clock timeout.
async fn dump_dom(url: &str, budget_ms: u64) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--mute-audio",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={budget_ms}"))
    .arg("--dump-dom")
    .arg(url)
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium did not finish within 90 s")
        .expect("start chromium");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("id=\"shard-map\""),
        "chromium returned no dashboard DOM:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// Every opening tag in `dom` that contains `needle`.
fn tags_with<'a>(dom: &'a str, needle: &str) -> Vec<&'a str> {
    let mut out = vec![];
    let mut from = 0;
    while let Some(i) = dom[from..].find(needle).map(|i| i + from) {
        let start = dom[..i].rfind('<').unwrap_or(0);
        let end = dom[i..].find('>').map_or(dom.len(), |e| i + e + 1);
        out.push(&dom[start..end]);
        from = end;
    }
    out
}

/// Value of `attr` in an opening tag.
fn attr<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let key = format!(" {attr}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')?;
    Some(&tag[i..i + j])
}

/// `data-value` of the element with `id`, as a number.
fn value(dom: &str, id: &str) -> Option<f64> {
    let tags = tags_with(dom, &format!("id=\"{id}\""));
    attr(tags.first()?, "data-value")?.parse().ok()
}

/// The text right after the opening tag of the element with `id`.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let tag = tags_with(dom, &format!("id=\"{id}\""))[0];
    let i = dom.find(tag).unwrap() + tag.len();
    let j = dom[i..].find('<').map_or(dom.len(), |j| i + j);
    &dom[i..j]
}

/// Replica state shown in the shard map for (shard, node); "" = none.
fn cell_state<'a>(dom: &'a str, shard: &str, node: &str) -> &'a str {
    tags_with(dom, &format!("data-shard=\"{shard}\" data-node=\"{node}\""))
        .into_iter()
        .find(|t| t.contains("class=\"cell\""))
        .and_then(|t| attr(t, "data-state"))
        .unwrap_or_else(|| panic!("no map cell for {shard} on {node}"))
}

const SHARDS: [&str; 4] = ["UK/ALPHA", "UK/BETA", "INTL/ALPHA", "INTL/BETA"];

fn assert_every_shard_shown(dom: &str) {
    for s in SHARDS {
        assert!(
            dom.contains(&format!("<tr data-shard=\"{s}\">")),
            "shard map has no row for {s}"
        );
        let tags = tags_with(dom, &format!("data-shard=\"{s}\""));
        assert!(
            tags.iter().any(|t| t.contains("data-requests")),
            "shard table has no row for {s}"
        );
        assert!(
            tags.iter().any(|t| t.contains("class=\"chart\"")),
            "no chart for {s}"
        );
        let serving = tags
            .iter()
            .filter(|t| t.contains("class=\"cell\"") && t.contains("data-state=\"serving\""))
            .count();
        assert_eq!(
            serving, 2,
            "{s}: replication_factor 2 means two serving cells"
        );
    }
}

fn shard_requests(dom: &str, shard: &str) -> f64 {
    tags_with(dom, &format!("data-shard=\"{shard}\""))
        .into_iter()
        .find_map(|t| attr(t, "data-requests"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no request count for {shard}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_in_chromium_and_follows_traffic() {
    let _ = chromium();
    let nodes = [
        TestNode::start("n1").await,
        TestNode::start("n2").await,
        TestNode::start("n3").await,
    ];
    // A forecaster address nothing listens on.
    let down = free_port();
    let mut o = opts();
    o.extra += &format!(
        "[dashboard]\nforecaster = \"http://127.0.0.1:{down}\"\nforecaster_timeout_ms = 100\n"
    );
    let p = Proxy::start(&[&nodes[0], &nodes[1], &nodes[2]], o).await;
    let page = p.admin_url("/dashboard");

    let dom = dump_dom(&page, 3000).await;
    assert!(
        value(&dom, "refresh-count").unwrap_or(0.0) >= 1.0,
        "the page never rendered its data:\n{dom}"
    );
    assert_every_shard_shown(&dom);
    assert_eq!(text_of(&dom, "assignment-version"), "0:0");
    assert_eq!(value(&dom, "config-generation"), Some(1.0));
    assert!(
        dom.contains("data-assignment=\"0:0\" data-generation=\"1\""),
        "history lacks the start"
    );
    let status = tags_with(&dom, "id=\"forecaster-status\"")[0];
    assert_eq!(attr(status, "data-state"), Some("unreachable"));
    assert_eq!(text_of(&dom, "forecaster-status"), "forecaster unreachable");
    let before_total = value(&dom, "total-requests").expect("total requests shown");
    let before_alpha = shard_requests(&dom, "UK/ALPHA");

    // Traffic through the proxy, and a table update that adds a warming
    // replica of UK/ALPHA on a node that did not host it.
    let c = reqwest::Client::new();
    for i in 0..60 {
        let r = c
            .get(p.url(&format!("/inventory/A{}", i % 100)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for i in 0..20 {
        let r = c
            .get(p.url(&format!("/inventory/B{i}?region=INTL")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let replicas = p.replicas("UK/ALPHA").await;
    let spare = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| !replicas.iter().any(|r| r == n))
        .unwrap();
    let mut assign: Vec<Value> = replicas
        .iter()
        .map(|n| json!({"node": n, "state": "serving"}))
        .collect();
    assign.push(json!({"node": spare, "state": "warming"}));
    let r = c
        .put(p.admin_url("/admin/table"))
        .json(&json!({"version": 2, "shards": {"UK/ALPHA": assign}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // The per-second sampler has to see the traffic before a rate exists.
    let data = p.admin_url("/dashboard/data");
    eventually(
        Duration::from_secs(10),
        "a request rate on the dashboard",
        || {
            let (c, data) = (c.clone(), data.clone());
            async move {
                let v: Value = c.get(&data).send().await.ok()?.json().await.ok()?;
                (v["totals"]["requests_per_s"].as_f64()? > 0.0).then_some(())
            }
        },
    )
    .await;

    let dom = dump_dom(&page, 3000).await;
    assert_every_shard_shown_after_update(&dom, spare);
    let total = value(&dom, "total-requests").unwrap();
    assert!(
        total >= before_total + 80.0,
        "total requests {before_total} -> {total}"
    );
    let alpha = shard_requests(&dom, "UK/ALPHA");
    assert!(
        alpha >= before_alpha + 60.0,
        "UK/ALPHA {before_alpha} -> {alpha}"
    );
    assert!(shard_requests(&dom, "INTL/BETA") >= 20.0);
    assert_eq!(shard_requests(&dom, "UK/BETA"), 0.0);
    assert!(
        value(&dom, "total-rps").unwrap_or(0.0) > 0.0,
        "req/s not shown"
    );
    // A bare counter is epoch 0; the update moved no config generation.
    assert_eq!(text_of(&dom, "assignment-version"), "0:2");
    assert_eq!(value(&dom, "config-generation"), Some(1.0));
    assert!(
        dom.contains("data-assignment=\"0:2\" data-generation=\"1\""),
        "history lacks the update"
    );
    assert!(
        value(&dom, "total-hit-rate").is_some(),
        "hit rate not shown (test nodes send x-cache)"
    );
    assert!(value(&dom, "total-p99").is_some(), "p99 not shown");
}

fn assert_every_shard_shown_after_update(dom: &str, spare: &str) {
    for s in SHARDS {
        assert!(
            dom.contains(&format!("<tr data-shard=\"{s}\">")),
            "shard map has no row for {s}"
        );
    }
    assert_eq!(cell_state(dom, "UK/ALPHA", spare), "warming");
}

/// A stand-in forecaster: `/forecasts`, `/series` and `/manager` with the
/// shapes the real one (and the shard manager being built) answer.
async fn fake_forecaster(bodies: Vec<(&'static str, String)>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let bodies = Arc::new(bodies);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let found = bodies
                        .iter()
                        .find(|(p, _)| req.uri().path() == *p)
                        .map(|(_, b)| b.clone());
                    async move {
                        Ok::<_, Infallible>(match found {
                            Some(b) => http::Response::new(Full::new(Bytes::from(b))),
                            None => http::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_forecasts_orders_and_decisions() {
    let _ = chromium();
    // Built from the forecaster's and the manager's own types
    // (`shardmap::contract`): what the stand-in sends is what they send.
    use shardmap::contract::forecast::*;
    use shardmap::contract::manager::*;
    use shardmap::control::ReplicaAssignment;
    let horizon = |values: [f32; 3]| HorizonView {
        levels: vec![0.1, 0.5, 0.9],
        values: values.to_vec(),
        source: ForecastSource::Model { model: "m".into() },
        fallback: false,
    };
    let forecasts = ForecastsView {
        generated_at: "2025-01-01T10:00:00Z".into(),
        origin_hour: "2025-01-01 09:00".into(),
        origin_day: "2024-12-31".into(),
        cycle_ms: 5.0,
        models: vec![],
        feeds: vec![],
        shards: [(
            "UK/ALPHA".to_string(),
            ShardForecasts {
                history_hours: 48,
                horizons: [
                    ("1h".to_string(), horizon([20.0, 30.0, 45.0])),
                    ("1d".to_string(), horizon([400.0, 600.0, 900.0])),
                ]
                .into(),
            },
        )]
        .into(),
    };
    let ring = |step_ms: i64, values: Vec<f64>| SeriesRing {
        start_unix_ms: 0,
        step_ms,
        values,
        last_partial: true,
    };
    let hours: Vec<f64> = (0..48).map(|i| 10.0 + f64::from(i % 24)).collect();
    let series = SeriesSetView {
        hours: 48,
        shards: [(
            "UK/ALPHA".to_string(),
            SeriesView {
                shard: "UK/ALPHA".into(),
                history_hours: 48,
                hourly: ring(3_600_000, hours),
                minutes: ring(60_000, vec![1.0, 2.0, 3.0]),
            },
        )]
        .into(),
    };
    let order = |id: u64, state: TrackedState, reason: Reason| OrderView {
        id,
        shard: "UK/ALPHA".into(),
        node: "n3".into(),
        state,
        priority: 0.75,
        deadline_unix_ms: None,
        submitted_unix_ms: 1_700_000_000_000,
        finished_unix_ms: None,
        rows: 120,
        bytes: 4096,
        reason,
        replaces: None,
        adds_replica: true,
        deadline_met: None,
    };
    let decision = |action: &str, reason: Reason, detail: &str| Decision {
        at_unix_ms: 1_700_000_000_000,
        action: action.into(),
        shard: "UK/ALPHA".into(),
        node: "n3".into(),
        reason,
        detail: detail.into(),
        dry_run: false,
    };
    let lease = LeaseView {
        leader: true,
        epoch: 1,
        holder: Some("m".into()),
        id: "m".into(),
        lease_ms: 3000,
    };
    let manager = ManagerView {
        leader: true,
        epoch: 1,
        holder: Some("m".into()),
        lease,
        assignment_version: shardmap::AssignmentVersion::new(1, 3),
        table_refusals: Refusals::default(),
        dry_run: false,
        rounds: 1,
        last_round_unix_ms: 1,
        replication_factor: 2,
        sync_error: None,
        metadata_error: None,
        proxies_behind: Default::default(),
        shards: [(
            "UK/ALPHA".to_string(),
            ShardView {
                replicas: vec![ReplicaAssignment {
                    node: "n1".into(),
                    state: shardmap::ReplicaState::Serving,
                }],
                target: Some(3),
                predicted_rps: 12.5,
                observed_rps: 4.0,
                threshold: Some(10.0),
                skill: 0.5,
                pinned: None,
                hosted: Default::default(),
            },
        )]
        .into(),
        nodes: [(
            "n1".to_string(),
            NodeView {
                health: ProbeHealth::Up,
                last_error: None,
                drained: false,
                load_rps: 4.0,
                capacity: 100.0,
                zone: None,
            },
        )]
        .into(),
        orders: vec![
            order(41, TrackedState::Running, Reason::Forecast),
            order(42, TrackedState::Queued, Reason::Initial),
        ],
        decisions: vec![
            decision("add_replica", Reason::Forecast, "p90 45 > threshold 10"),
            decision("refresh", Reason::Initial, ""),
        ],
        deferred: 0,
        operator: OperatorView::default(),
        prefetch: PrefetchView {
            by_reason: [
                (Reason::Forecast, 5),
                (Reason::Load, 2),
                (Reason::Initial, 28),
            ]
            .into(),
            warm_before_rise: 4,
            warm_after_rise: 1,
            no_rise: 1,
            rises: 6,
            rises_met_warm: 3,
        },
        admission: Default::default(),
    };
    let (forecasts, series, manager) = (
        serde_json::to_string(&forecasts).unwrap(),
        serde_json::to_string(&series).unwrap(),
        serde_json::to_string(&manager).unwrap(),
    );
    let f = fake_forecaster(vec![
        ("/forecasts", forecasts),
        ("/series", series),
        ("/manager", manager),
    ])
    .await;
    let nodes = [
        TestNode::start("n1").await,
        TestNode::start("n2").await,
        TestNode::start("n3").await,
    ];
    let mut o = opts();
    o.extra += &format!("[dashboard]\nforecaster = \"http://{f}\"\n");
    let p = Proxy::start(&[&nodes[0], &nodes[1], &nodes[2]], o).await;

    let dom = dump_dom(&p.admin_url("/dashboard"), 3000).await;
    assert!(value(&dom, "refresh-count").unwrap_or(0.0) >= 1.0, "{dom}");
    let status = tags_with(&dom, "id=\"forecaster-status\"")[0];
    assert_eq!(attr(status, "data-state"), Some("ok"), "{status}");

    // The chart of UK/ALPHA has the actual line, the p10–p90 band and p50.
    let chart_at = dom
        .find("class=\"chart\" data-shard=\"UK/ALPHA\"")
        .expect("chart of UK/ALPHA");
    let chart = &dom[chart_at..chart_at + dom[chart_at..].find("</svg>").expect("svg")];
    for part in ["class=\"actual\"", "class=\"band\"", "class=\"p50\""] {
        assert!(chart.contains(part), "chart lacks {part}: {chart}");
    }
    // A shard without forecasts says so instead of drawing nothing.
    let other = tags_with(&dom, "class=\"chart\" data-shard=\"UK/BETA\"")[0];
    assert_eq!(attr(other, "data-has-forecast"), Some("false"));
    // Forecast numbers in the shard table: 1h p50 [p10–p90], 1d.
    assert!(dom.contains("30 [20–45]"), "1h forecast not shown");
    assert!(dom.contains("600 [400–900]"), "1d forecast not shown");

    // Orders and decisions.
    let order = tags_with(&dom, "data-order-id=\"41\"");
    assert_eq!(order.len(), 1, "order 41 not shown");
    assert_eq!(attr(order[0], "data-state"), Some("running"));
    assert_eq!(tags_with(&dom, "data-order-id=\"42\"").len(), 1);
    assert!(dom.contains("add_replica"), "decision not shown");
    assert!(
        dom.contains("p90 45 &gt; threshold 10"),
        "decision detail not shown"
    );
    assert_eq!(tags_with(&dom, "data-reason=\"initial\"").len(), 1);
    // What the pre-fetches bought, in the header.
    assert_eq!(value(&dom, "prefetch-forecast"), Some(5.0));
    assert_eq!(text_of(&dom, "prefetch-forecast"), "5 / load 2");
    assert_eq!(value(&dom, "warm-before-rise"), Some(4.0));
    assert_eq!(
        text_of(&dom, "warm-before-rise"),
        "4 (3 of 6 rises met warm)"
    );
    assert_every_shard_shown(&dom);
}
