//! Telemetry end to end: the real proxy binary sends per-shard frames to
//! its sink and counts them; a sink that is down costs dropped frames, not
//! blocked requests.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_frames_reach_a_file_sink_and_metrics_count() {
    let nodes = [TestNode::start("n1").await, TestNode::start("n2").await];
    let mut o = opts();
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("frames.jsonl");
    o.extra = o.extra.replace(
        "[telemetry]\n",
        &format!("[telemetry]\nsink = \"file:{}\"\n", sink.display()),
    );
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let c = reqwest::Client::new();
    for i in 0..50 {
        c.get(p.url(&format!("/inventory/A{}", i % 3)))
            .send()
            .await
            .unwrap();
    }
    let frames = eventually(Duration::from_secs(5), "a frame with UK/ALPHA", || async {
        let text = read_file(&sink);
        let frames: Vec<shardmap::Frame> = text
            .lines()
            .filter_map(|l| shardmap::Frame::decode(l.as_bytes()).ok())
            .collect();
        let total: u64 = frames
            .iter()
            .flat_map(|f| &f.shards)
            .filter(|s| s.shard == "UK/ALPHA")
            .map(|s| s.requests)
            .sum();
        (total == 50).then_some(frames)
    })
    .await;
    let s = frames
        .iter()
        .flat_map(|f| &f.shards)
        .find(|s| s.shard == "UK/ALPHA")
        .unwrap();
    assert!(s.latency.count > 0 && s.latency.p50_us > 0);
    assert!(s.cache_hits + s.cache_misses > 0);
    assert!(!s.top_skus.is_empty());
    let m = p
        .metric("shardcast_shard_requests_total{shard=\"UK/ALPHA\"}")
        .await
        .unwrap();
    assert_eq!(m, 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_sink_down_drops_and_counts_without_blocking() {
    let nodes = [TestNode::start("n1").await];
    let mut o = opts();
    o.extra = "replication_factor = 1\n[telemetry]\ninterval_s = 1\nqueue = 2\nsink = \"http://127.0.0.1:1/ingest\"\n".into();
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let c = reqwest::Client::new();
    for _ in 0..5 {
        for i in 0..10 {
            assert_eq!(
                c.get(p.url(&format!("/inventory/A{i}")))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    eventually(Duration::from_secs(6), "dropped frames counted", || async {
        (p.metric("shardcast_telemetry_frames_total{result=\"dropped\"}")
            .await?
            >= 1.0)
            .then_some(())
    })
    .await;
}
