//! Ingest → series: resolutions roll up, sources add up, gaps are counted,
//! snapshots round-trip and corrupt ones are refused.

use proptest::prelude::*;
use shardcast_forecaster::persist;
use shardcast_forecaster::store::{Retention, Store};
use shardmap::telemetry::{Frame, Latency, ShardSample, FRAME_VERSION};

fn sample(shard: &str, requests: u64) -> ShardSample {
    ShardSample {
        shard: shard.into(),
        requests,
        errors: 0,
        cache_hits: requests,
        cache_misses: 0,
        bytes: requests * 100,
        latency: Latency::default(),
        top_skus: vec![],
    }
}

fn frame(
    source: &str,
    seq: u64,
    start_ms: u64,
    interval_ms: u64,
    shards: Vec<ShardSample>,
) -> Frame {
    Frame {
        v: FRAME_VERSION,
        source: source.into(),
        seq,
        start_unix_ms: start_ms,
        interval_ms,
        table_version: 1,
        dropped_before: 0,
        shards,
    }
}

const T0: u64 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000; // an hour boundary

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the frames (offsets, intervals, counts, shards), every hour
    /// bucket equals the sum of its minute buckets and of its second buckets
    /// while they are retained, and the hour totals equal what was sent.
    #[test]
    fn resolutions_roll_up(frames in prop::collection::vec(
        (0u64..7_200_000, prop::sample::select(vec![1_000u64, 1_500, 10_000, 60_000, 90_000]), 0u64..1_000, 0usize..3),
        1..60,
    )) {
        let store = Store::new(Retention { seconds: 3 * 3600, minutes: 300, hours: 100 }, shardcast_forecaster::time::Zone::utc(), 100);
        let ids = ["A", "B/x", "C"];
        let mut sent = [0f64; 3];
        for (i, &(off, iv, n, s)) in frames.iter().enumerate() {
            store.ingest(&frame("p", i as u64, T0 + off, iv, vec![sample(ids[s], n)]), (T0 + off) as i64);
            sent[s] += n as f64;
        }
        for (s, id) in ids.iter().enumerate() {
            let Some(sh) = store.shard(id) else { prop_assert_eq!(sent[s], 0.0); continue };
            let g = sh.lock();
            let h0 = (T0 / 3_600_000) as i64;
            let mut total = 0f64;
            for h in h0..h0 + 3 {
                let hour = f64::from(g.hours.get(h));
                total += hour;
                let mins: f64 = (h * 60..h * 60 + 60).map(|m| f64::from(g.minutes.get(m))).sum();
                let secs: f64 = (h * 3600..h * 3600 + 3600).map(|x| f64::from(g.seconds.get(x))).sum();
                prop_assert!((hour - mins).abs() <= 1e-3 * hour.max(1.0), "hour {} vs minutes {}", hour, mins);
                prop_assert!((hour - secs).abs() <= 1e-3 * hour.max(1.0), "hour {} vs seconds {}", hour, secs);
            }
            prop_assert!((total - sent[s]).abs() <= 1e-3 * sent[s].max(1.0), "{} vs {}", total, sent[s]);
        }
    }
}

#[test]
fn sources_add_up_and_gaps_are_counted() {
    let store = Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        100,
    );
    let now = T0 as i64 + 500;
    store.ingest(&frame("p1", 1, T0, 1000, vec![sample("S", 5)]), now);
    store.ingest(&frame("p2", 7, T0, 1000, vec![sample("S", 3)]), now);
    let o = store.ingest(&frame("p1", 4, T0 + 1000, 1000, vec![sample("S", 2)]), now);
    assert_eq!(o.seq_gap, 2, "p1 went 1 -> 4");
    let sh = store.shard("S").unwrap();
    let g = sh.lock();
    let s0 = (T0 / 1000) as i64;
    assert_eq!(g.seconds.get(s0), 8.0, "both proxies in one bucket");
    assert_eq!(g.seconds.get(s0 + 1), 2.0);
    assert_eq!(g.hours.get((T0 / 3_600_000) as i64), 10.0);
    assert_eq!(g.totals.requests, 10);
    drop(g);
    assert_eq!(
        store
            .counters
            .seq_gap_frames
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn rings_are_bounded() {
    let r = Retention {
        seconds: 60,
        minutes: 60,
        hours: 24 * 35,
    };
    let store = Store::new(r, shardcast_forecaster::time::Zone::utc(), 2);
    for i in 0..10_000u64 {
        store.ingest(
            &frame("p", i, T0 + i * 1000, 1000, vec![sample("S", 1)]),
            (T0 + i * 1000) as i64,
        );
    }
    let sh = store.shard("S").unwrap();
    let g = sh.lock();
    assert_eq!(g.seconds.len(), 60);
    assert_eq!(g.minutes.len(), 60);
    drop(g);
    // max_shards: the third shard is refused and counted
    let o = store.ingest(
        &frame("p", 10_001, T0, 1000, vec![sample("T", 1), sample("U", 1)]),
        T0 as i64,
    );
    assert_eq!(o.over_capacity, 1);
    assert_eq!(store.len(), 2);
}

#[test]
fn snapshot_round_trip_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/store.snap");
    let store = Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        100,
    );
    for i in 0..500u64 {
        store.ingest(
            &frame(
                "p",
                i,
                T0 + i * 7_000,
                7_000,
                vec![sample("UK/A", i % 13), sample("INTL/B", 1)],
            ),
            (T0 + i * 7_000) as i64,
        );
    }
    store.seed_hourly("SEEDED", 400_000, &[1.0, 2.0, 3.0]);
    persist::save(&store, &path).unwrap();
    let back = Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        100,
    );
    assert!(persist::restore(&back, &path).unwrap());
    assert_eq!(back.export().len(), 3);
    let mut a = store.export();
    let mut b = back.export();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a, b);
    assert_eq!(back.sources(), store.sources());
    // seq continues across the restart: a gap after restore is still seen
    let o = back.ingest(
        &frame("p", 502, T0 + 4_000_000, 1000, vec![sample("UK/A", 1)]),
        T0 as i64,
    );
    assert_eq!(o.seq_gap, 2);

    // corrupt: flipped byte, truncated, garbage — refused, store untouched
    let bytes = std::fs::read(&path).unwrap();
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for bad in [
        flipped,
        bytes[..bytes.len() - 9].to_vec(),
        b"not a snapshot at all, no".to_vec(),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let fresh = Store::new(
            Retention::default(),
            shardcast_forecaster::time::Zone::utc(),
            100,
        );
        let err = persist::restore(&fresh, &path).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(fresh.is_empty());
    }
    // no snapshot at all is not an error
    assert!(!persist::restore(
        &Store::new(
            Retention::default(),
            shardcast_forecaster::time::Zone::utc(),
            1
        ),
        &dir.path().join("none")
    )
    .unwrap());
}

/// Across the 2011 UK clock changes, in Europe/London: telemetry lands in
/// the real hours of the store's clock (a 23- and a 25-hour day), and the
/// sales history — civil wall-clock rows — is seeded onto the same buckets
/// (the spring-forward row that never happened adds to the hour after it;
/// the second 01:00 of the fall-back night starts empty).
#[test]
fn hours_follow_the_store_clock_across_daylight_saving_changes() {
    use shardcast_forecaster::config::{HistoryAlign, HistoryConfig};
    use shardcast_forecaster::feeds::FeedSource;
    use shardcast_forecaster::service::seed_history;
    use shardcast_forecaster::time::{parse_local, Zone};

    let z = Zone::named("Europe/London").unwrap();
    let utc = |s: &str| parse_local(s).unwrap() * 1000;
    let store = Store::new(Retention::default(), z.clone(), 10);
    // 09:00-10:00 BST on Monday 28 March 2011 is 08:00-09:00 UTC.
    let t = utc("2011-03-28 08:00:00") as u64;
    store.ingest(
        &frame("p", 1, t, 3_600_000, vec![sample("s", 7)]),
        t as i64 + 3_600_000,
    );
    let h = z.hour_of_civil(parse_local("2011-03-28 09:00").unwrap());
    let mut one = [0.0];
    store.hourly_window("s", h, &mut one);
    assert_eq!(one[0], 7.0, "the 09:00 local bucket holds it");
    assert_eq!(z.local_hour(h).hour, 9);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.csv");
    std::fs::write(
        &path,
        "shard_id,ds,lines\n\
         s2,2011-03-27 00:00:00,1\ns2,2011-03-27 01:00:00,2\ns2,2011-03-27 02:00:00,3\n\
         s3,2011-10-30 00:00:00,1\ns3,2011-10-30 01:00:00,2\ns3,2011-10-30 02:00:00,3\n",
    )
    .unwrap();
    let cfg = HistoryConfig {
        source: FeedSource::File(path),
        id_col: "shard_id".into(),
        time_col: "ds".into(),
        value_col: "lines".into(),
        align: HistoryAlign::AsIs,
    };
    let st = seed_history(&store, &cfg, utc("2012-01-01 00:00:00"));
    assert_eq!(st.rows, 6, "{}", st.detail);
    let window = |id: &str, from: &str, n: usize| {
        let mut out = vec![0.0; n];
        store.hourly_window(id, z.hour(utc(from)), &mut out);
        out
    };
    // Spring forward: 00:00 GMT, then 02:00 BST holds the 01:00 and 02:00 rows.
    assert_eq!(window("s2", "2011-03-27 00:00:00", 3), vec![1.0, 5.0, 0.0]);
    // Fall back: 00:00 BST, 01:00 BST, 01:00 GMT (empty), 02:00 GMT.
    assert_eq!(
        window("s3", "2011-10-29 23:00:00", 4),
        vec![1.0, 2.0, 0.0, 3.0]
    );
}
