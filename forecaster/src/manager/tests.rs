//! The manager with its adapters, over the demo topology.

use super::*;
use std::time::{Duration, SystemTime};

/// A manager over the demo topology (copied to `dir`, no metadata store:
/// it leads alone), with one proxy listed; the topology path and text.
pub(super) fn demo_manager(dir: &std::path::Path) -> (Arc<Manager>, std::path::PathBuf, String) {
    let topo = dir.join("topology.toml");
    let good = std::fs::read_to_string(
        std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../conf/topology.toml"),
    )
    .unwrap();
    std::fs::write(&topo, &good).unwrap();
    let text = "listen = \"127.0.0.1:0\"\n[model]\nhourly = \"h\"\ndaily = \"d\"\n[manager]\ntopology = \"topology.toml\"\nsync = \"http://127.0.0.1:1\"\nproxies = [\"http://127.0.0.1:1\"]\nprefix = \"p1\"\n";
    let cfg = crate::config::Config::parse(text, dir, "f.toml")
        .unwrap()
        .manager
        .unwrap();
    let store = Arc::new(Store::new(
        crate::store::Retention::default(),
        crate::time::Zone::utc(),
        100,
    ));
    let m = Manager::new(cfg, store, ForecastHandle::new(), Clock::real()).unwrap();
    (m, topo, good)
}

#[test]
fn a_broken_topology_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let (m, proxy, good) = demo_manager(dir.path());
    assert_eq!(m.topology().shards.len(), 14);
    assert_eq!(m.topology().nodes.len(), 3);
    assert_eq!(m.topology().keys.prefix(), "p1");
    // a broken edit (with a new mtime) is refused and the old topology kept
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&proxy, "replication_factor = \"two\"\n").unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&proxy)
        .unwrap()
        .set_modified(later)
        .unwrap();
    m.refresh_topology();
    assert_eq!(m.topology().shards.len(), 14);
    assert_eq!(m.topology().modified, Some(later));
    // a good edit is taken
    std::fs::write(
        &proxy,
        good.replace("replication_factor = 2", "replication_factor = 3"),
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&proxy)
        .unwrap()
        .set_modified(later + Duration::from_secs(5))
        .unwrap();
    m.refresh_topology();
    assert_eq!(m.topology().replication_factor, 3);
}

/// `GET` (or another method) on the manager's routes, without a socket:
/// the status and the body.
async fn call(m: &Manager, method: http::Method, uri: &str, body: &str) -> (u16, Vec<u8>) {
    use http_body_util::{BodyExt, Full};
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let r = routes::handle(Some(m), req).await;
    let status = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (status, b.to_vec())
}

/// What the dashboard reads is the shared `ManagerView`, with every field
/// the contract names, orders in `TrackedState`s and decisions as logged.
#[tokio::test]
async fn the_manager_view_is_the_shared_contract() {
    use shardmap::contract::manager::{ManagerView, OperatorView, TrackedState};
    let dir = tempfile::tempdir().unwrap();
    let (m, _, _) = demo_manager(dir.path());
    let shard = m.topology().shards[0].id.clone();
    let node = m.topology().nodes[0].name.clone();
    m.pin(&shard, Some(vec![node.clone()])).unwrap();
    // An order in flight and one the manager gave up on.
    for (id, report) in [
        (
            7,
            state::tests::at_sync(shardmap::contract::OrderState::Running, 3, 30),
        ),
        (8, state::OrderReport::Missing("sync has no order 8".into())),
    ] {
        let order = state::OrderRequest {
            shard: shard.clone(),
            node: m.topology().nodes[2].name.clone(),
            priority: 1.0,
            deadline_unix_ms: 10,
            reason: planner::Reason::Forecast,
            replaces: None,
            adds_replica: false,
            decision: None,
        };
        m.apply(Event::OrderSubmitted { order, id, now: 1 });
        m.apply(Event::OrderReported { id, report, now: 2 });
    }
    let (status, body) = call(&m, http::Method::GET, "/manager", "").await;
    assert_eq!(status, 200);
    let v: ManagerView = serde_json::from_slice(&body).expect("a ManagerView");
    assert_eq!(v.shards.len(), 14);
    assert_eq!(v.nodes.len(), 3);
    assert_eq!(v.shards[&shard].pinned, Some(vec![node.clone()]));
    let states: Vec<TrackedState> = v.orders.iter().map(|o| o.state).collect();
    assert_eq!(states, [TrackedState::Running, TrackedState::Failed]);
    let actions: Vec<&str> = v.decisions.iter().map(|d| d.action.as_str()).collect();
    assert_eq!(actions, ["pin"]);
    let want = OperatorView {
        pins: [(shard.clone(), vec![node])].into(),
        ..OperatorView::default()
    };
    assert_eq!(v.operator, want);
    assert_eq!(v.lease.epoch, versions::EPOCH);
    // Exactly the contract's fields: nothing the reader would drop.
    let raw: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(raw, serde_json::to_value(&v).unwrap());
}

/// Operator commands answer typed errors: 404 for a shard or node that
/// does not exist, 400 for a bad value; `?limit=` is form-decoded.
#[tokio::test]
async fn refused_commands_map_to_404_and_400() {
    use http::Method;
    let dir = tempfile::tempdir().unwrap();
    let (m, _, _) = demo_manager(dir.path());
    assert_eq!(
        m.pin("nope", None),
        Err(CommandError::UnknownShard("nope".into()))
    );
    let shard = shardcast_edge::url::encode_segment(&m.topology().shards[0].id).into_owned();
    let cases = [
        (
            Method::PUT,
            "/manager/pins/nope".to_string(),
            r#"{"nodes":["node-a"]}"#,
            404,
        ),
        (
            Method::PUT,
            format!("/manager/pins/{shard}"),
            r#"{"nodes":["zz"]}"#,
            404,
        ),
        (
            Method::PUT,
            format!("/manager/pins/{shard}"),
            r#"{"nodes":[]}"#,
            400,
        ),
        (Method::PUT, "/manager/drain/zz".to_string(), "", 404),
        (
            Method::PUT,
            format!("/manager/thresholds/{shard}"),
            r#"{"rps":-1.0}"#,
            400,
        ),
        (
            Method::PUT,
            format!("/manager/thresholds/{shard}"),
            r#"{"rps":5.0}"#,
            200,
        ),
        (
            Method::DELETE,
            format!("/manager/thresholds/{shard}"),
            "",
            200,
        ),
    ];
    for (method, uri, body, want) in cases {
        let (status, answer) = call(&m, method.clone(), &uri, body).await;
        assert_eq!(
            status,
            want,
            "{method} {uri}: {}",
            String::from_utf8_lossy(&answer)
        );
        if want != 200 {
            let e = shardmap::contract::ErrorBody::message_of(&answer);
            assert!(e.is_some(), "an error body");
        }
    }
    let (status, body) = call(&m, Method::GET, "/manager/decisions?x=1&limit=1", "").await;
    assert_eq!(status, 200);
    let d: Vec<shardmap::contract::manager::Decision> = serde_json::from_slice(&body).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].action, "threshold");
}

#[test]
fn the_orders_round_asks_only_about_open_orders_sync_said_finished() {
    let mut f = Finished::default();
    for id in [7, 3, 7, 42] {
        f.push(id);
    }
    // 42 is not open here (another term's, or followed already).
    assert_eq!(f.of(&[1, 3, 5, 7, 9]), vec![3, 7]);
    assert!(Finished::default().of(&[1, 2]).is_empty());
    // Past the bound, every open order is asked about.
    let mut f = Finished::default();
    for id in 0..=Finished::MAX as u64 {
        f.push(id + 100);
    }
    assert_eq!(f.of(&[1, 2]), vec![1, 2]);
}
