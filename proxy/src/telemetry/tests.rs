use std::time::Duration;

use super::*;

#[test]
fn samples_are_deltas_and_topk_is_bounded() {
    let s = ShardStats::new("UK/X", 2);
    for i in 0..800u64 {
        s.record(Outcome {
            sku: if i % 2 == 0 { b"hot" } else { b"cold" },
            error: i % 100 == 0,
            cache_hit: Some(i % 4 != 0),
            bytes: 10,
            latency_us: 100 + i,
        });
    }
    let a = s.take_sample(2).unwrap();
    assert_eq!(a.requests, 800);
    assert_eq!(a.errors, 8);
    assert_eq!(a.cache_hits, 600);
    assert_eq!(a.bytes, 8000);
    assert_eq!(a.latency.count, 800);
    assert!(
        a.latency.p50_us >= 450 && a.latency.p50_us <= 550,
        "{:?}",
        a.latency
    );
    assert_eq!(a.top_skus.first().map(|t| t.0.as_str()), Some("hot"));
    assert!(s.take_sample(2).is_none(), "idle window reports nothing");
    let (b, n, _) = s.cumulative_buckets(&[1_000_000]);
    assert_eq!((b[0], n), (800, 800));
}

#[test]
fn recent_window_rates_and_latency() {
    let s = ShardStats::new("UK/X", 2);
    assert_eq!(s.recent(None), Recent::default());
    s.tick(1_000);
    for i in 0..100u64 {
        s.record(Outcome {
            sku: b"a",
            error: false,
            cache_hit: Some(i % 4 != 0),
            bytes: 1,
            latency_us: if i < 98 { 1_000 } else { 50_000 },
        });
    }
    s.tick(3_000);
    let mut h = latency_histogram();
    let r = s.recent(Some(&mut h));
    assert_eq!((r.window_s, r.requests, r.cache_hits), (2.0, 100, 75));
    assert_eq!(r.requests_per_s(), Some(50.0));
    assert_eq!(r.hit_rate(), Some(0.75));
    assert_eq!(h.len(), 100);
    let p99 = h.value_at_quantile(0.99);
    assert!((49_000..=51_000).contains(&p99), "{p99}");
    // the export window still sees every request
    assert_eq!(s.take_sample(2).unwrap().latency.count, 100);
    // old ticks fall out: an idle shard goes back to zero
    for t in 0..RECENT_TICKS as u64 {
        s.tick(4_000 + t * 1_000);
    }
    let mut h = latency_histogram();
    let r = s.recent(Some(&mut h));
    assert_eq!((r.requests, h.len()), (0, 0));
    assert_eq!(r.requests_per_s(), Some(0.0));
    assert_eq!(r.hit_rate(), None);
}

fn outcome(i: u64) -> Outcome<'static> {
    Outcome {
        sku: ["hot", "warm", "cold"][(i % 7).min(2) as usize].as_bytes(),
        error: i % 50 == 0,
        cache_hit: Some(i % 4 != 0),
        bytes: 10 + i % 3,
        latency_us: 100 + (i * 37) % 5_000,
    }
}

/// The per-worker windows, merged at export, give what one worker
/// recording everything gives.
#[test]
fn windows_of_many_threads_merge_to_the_same_counts() {
    const N: u64 = 8_000;
    let one = ShardStats::new("UK/X", 3);
    for i in 0..N {
        one.record(outcome(i));
    }
    let many = Arc::new(ShardStats::new("UK/X", 3));
    many.tick(0);
    // more threads than slots: shared slots must merge right too
    let threads = SLOTS as u64 + 3;
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let m = many.clone();
            std::thread::spawn(move || {
                for i in (t..N).step_by(threads as usize) {
                    m.record(outcome(i));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // the dashboard's window sees every latency
    many.tick(1_000);
    let mut h = latency_histogram();
    let r = many.recent(Some(&mut h));
    assert_eq!((r.requests, h.len()), (N, N));
    let (a, b) = (one.take_sample(3).unwrap(), many.take_sample(3).unwrap());
    assert_eq!(
        (a.requests, a.errors, a.cache_hits, a.cache_misses, a.bytes),
        (b.requests, b.errors, b.cache_hits, b.cache_misses, b.bytes)
    );
    assert_eq!(a.latency, b.latency);
    assert_eq!(b.latency.count, N);
    // sampled skus: which record a sample lands on depends on the
    // interleaving, but the totals and the hottest do not
    let total = |v: &[(String, u64)]| v.iter().map(|t| t.1).sum::<u64>();
    assert_eq!(total(&a.top_skus), total(&b.top_skus));
    assert_eq!(b.top_skus[0].0, "cold");
    let (_, lifetime, _) = many.cumulative_buckets(&[1_000_000]);
    assert_eq!(lifetime, N);
}

/// Memory follows traffic: a shard without requests holds no
/// histogram through ticks and exports; its first request makes them.
#[test]
fn histograms_are_made_on_a_shards_first_request() {
    let s = ShardStats::new("UK/IDLE", 2);
    s.tick(1_000);
    assert!(s.take_sample(2).is_none());
    s.tick(2_000);
    assert_eq!(s.cumulative_buckets(&[1_000]), (vec![0], 0, 0.0));
    assert!(!s.holds_histograms() && !s.seen());
    s.record(outcome(1));
    assert!(s.holds_histograms() && s.seen());
    s.tick(3_000);
    let a = s.take_sample(2).unwrap();
    assert_eq!((a.requests, a.latency.count), (1, 1));
    assert_eq!(s.cumulative_buckets(&[1_000_000]).1, 1);
}

#[test]
fn full_queue_drops_oldest_and_counts() {
    let c = ExportCounters::default();
    let mut e = Exporter::new("p".into());
    for _ in 0..5 {
        e.collect(&[], Duration::from_secs(1), 4, 1, 3, &c);
    }
    assert_eq!(e.queue.len(), 3);
    assert_eq!(c.frames_dropped.load(Relaxed), 2);
    assert_eq!(e.queue.front().map(|f| f.seq), Some(3));
}
