//! The budgeted refresh on the committed models and the 14 real shards:
//! a cycle re-runs only the shards whose inputs changed, at most the
//! budget's rows, busiest first; the others keep serving their previous
//! answers until their turn; and once a refresh completes the forecasts
//! are those an unbudgeted engine makes from the same inputs — also when
//! late frames and feed changes arrive in the middle of it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use common::{assert_valid, events_signals, hourly_model, now_ms, seeded_store};
use shardcast_forecaster::engine::{Engine, ForecastSet, Horizon, RefreshBudget, Source};
use shardcast_forecaster::feeds::Signals;
use shardcast_forecaster::metrics::{Metrics, Rerun};
use shardcast_forecaster::store::Store;
use shardmap::telemetry::{Frame, ShardSample, FRAME_VERSION};

struct Rig {
    engine: Engine,
    signals: Arc<ArcSwap<Signals>>,
    metrics: Arc<Metrics>,
}

fn rig(store: Arc<Store>, signals: Signals, max_rows: Option<usize>) -> Rig {
    let signals = Arc::new(ArcSwap::from_pointee(signals));
    let metrics = Arc::new(Metrics::default());
    let engine = common::engine_with(
        store,
        signals.clone(),
        metrics.clone(),
        hourly_model(),
        RefreshBudget {
            per_cycle: None,
            max_rows,
            catch_up: Duration::from_secs(1),
        },
    );
    Rig {
        engine,
        signals,
        metrics,
    }
}

const HOUR: i64 = 3_600_000;

fn assert_same_forecasts(got: &ForecastSet, want: &ForecastSet) {
    assert_eq!(got.origin_hour, want.origin_hour);
    assert_eq!(got.shards.len(), want.shards.len());
    for (id, w) in want.shards.iter() {
        let g = &got.shards[id];
        for (gh, wh) in g.horizons.iter().zip(&w.horizons) {
            assert_eq!(gh.horizon, wh.horizon);
            assert!(
                matches!(gh.source, Source::Model { .. }),
                "{id} {:?}: {:?}",
                gh.horizon,
                gh.source
            );
            assert_eq!(gh.source, wh.source);
            for (a, b) in gh.values.iter().zip(&wh.values) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{id} {:?}: {:?} vs {:?}",
                    gh.horizon,
                    gh.values,
                    wh.values
                );
            }
        }
    }
}

/// Cycles until nothing is left to refresh; the sets they published.
fn refresh_all(e: &mut Engine, at: i64) -> Vec<Arc<ForecastSet>> {
    let mut sets = Vec::new();
    loop {
        let set = e.cycle(at);
        assert_valid(&set);
        sets.push(set);
        if e.backlog() == 0 {
            return sets;
        }
        assert!(sets.len() < 20, "the refresh does not progress");
    }
}

fn late_frame(seq: u64, id: &str, t_ms: i64, requests: u64) -> Frame {
    Frame {
        v: FRAME_VERSION,
        source: "late".into(),
        seq,
        start_unix_ms: t_ms as u64,
        interval_ms: 1000,
        shards: vec![ShardSample {
            shard: id.into(),
            requests,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn day_median(set: &ForecastSet, id: &str) -> f32 {
    set.shards[id]
        .horizon(Horizon::Day)
        .unwrap()
        .quantile(0.5)
        .unwrap()
}

#[tokio::test]
async fn a_budgeted_refresh_reaches_every_shard_busiest_first_and_matches_an_unbudgeted_one() {
    let store = seeded_store();
    let signals = events_signals().await;
    let mut full = rig(store.clone(), signals.clone(), None);
    let mut b = rig(store.clone(), signals, Some(5));

    // A new engine: 5 rows per model per cycle; the shards not reached yet
    // serve the flagged fallback.
    let first = b.engine.cycle(now_ms());
    assert_valid(&first);
    for m in &first.models {
        assert!(m.loaded && !m.cached, "{m:?}");
        assert_eq!((m.rows, m.stale), (5, 9), "{m:?}");
    }
    let queued = |set: &ForecastSet, h: Horizon| {
        set.shards
            .values()
            .filter(|s| {
                matches!(&s.horizon(h).unwrap().source,
                    Source::SeasonalNaive { reason } if reason == "model run queued")
            })
            .count()
    };
    assert_eq!(queued(&first, Horizon::Hour), 9);
    assert_eq!(queued(&first, Horizon::Month), 9);
    let rest = refresh_all(&mut b.engine, now_ms());
    let counts: Vec<(usize, usize)> = rest
        .iter()
        .map(|s| (s.models[0].rows, s.models[0].stale))
        .collect();
    assert_eq!(counts, vec![(5, 4), (4, 0)]);
    let want = full.engine.cycle(now_ms());
    assert!(want.models.iter().all(|m| m.rows == 14 && m.stale == 0));
    let done = rest.last().unwrap();
    assert_same_forecasts(done, &want);
    // Nothing changed: served from the cache, the same map.
    let again = b.engine.cycle(now_ms() + 5_000);
    assert!(again.models.iter().all(|m| m.cached && m.rows == 0));
    assert!(Arc::ptr_eq(&again.shards, &done.shards));
    assert_eq!(Rerun::of(&again), Rerun::None);

    // A new hour of the same day: only the hourly model owes runs; the
    // five busiest shards go first, the other nine keep serving the
    // previous hour's answers, untouched.
    let at = now_ms() + HOUR;
    let set = b.engine.cycle(at);
    assert_valid(&set);
    assert_eq!(Rerun::of(&set), Rerun::Hourly);
    let (h, d) = (&set.models[0], &set.models[1]);
    assert_eq!((h.rows, h.stale, h.lag_s), (5, 9, 3_600), "{h:?}");
    assert!(d.cached && d.stale == 0, "{d:?}");
    let mut by_demand: Vec<&String> = done.shards.keys().collect();
    by_demand.sort_by(|a, b| day_median(done, b).total_cmp(&day_median(done, a)));
    for (rank, id) in by_demand.iter().enumerate() {
        let kept = Arc::ptr_eq(&set.shards[*id], &done.shards[*id]);
        assert_eq!(kept, rank >= 5, "{id} (rank {rank} by 1 d demand)");
    }
    assert!(set
        .shards
        .values()
        .all(|s| s.horizons.iter().all(|h| !h.is_fallback())));
    let text = b.metrics.render(&store);
    assert!(
        text.contains("shardcast_forecaster_stale_shards{model=\"hourly\"} 9"),
        "{text}"
    );
    assert!(text.contains("shardcast_forecaster_forecast_lag_seconds{model=\"hourly\"} 3600"));
    let rest = refresh_all(&mut b.engine, at);
    assert_eq!(rest.len(), 2);
    assert_same_forecasts(rest.last().unwrap(), &full.engine.cycle(at));
    let text = b.metrics.render(&store);
    assert!(text.contains("shardcast_forecaster_stale_shards{model=\"hourly\"} 0"));
    assert!(
        text.contains("shardcast_forecaster_refresh_seconds_count{model=\"hourly\"} 2"),
        "the first refresh and this one: {text}"
    );
    assert!(text.contains("shardcast_forecaster_refresh_seconds_count{model=\"daily\"} 1"));
}

#[tokio::test]
async fn a_late_frame_re_runs_only_its_shard() {
    let store = seeded_store();
    let signals = events_signals().await;
    let mut e = rig(store.clone(), signals.clone(), None);
    let before = e.engine.cycle(now_ms());
    let id = "UK/SEASONAL";
    // 500 requests in the origin hour (23:00, closed), reported late.
    store.ingest(&late_frame(1, id, now_ms() - HOUR, 500), now_ms());
    let after = e.engine.cycle(now_ms() + 1_000);
    assert_valid(&after);
    for m in &after.models {
        assert_eq!((m.rows, m.stale, m.cached), (1, 0, false), "{m:?}");
    }
    for (k, s) in after.shards.iter() {
        assert_eq!(Arc::ptr_eq(s, &before.shards[k]), k != id, "{k}");
    }
    assert!(
        day_median(&after, id) > day_median(&before, id),
        "more demand in the last hour, more forecast"
    );
    // What a fresh engine makes of the same store.
    let mut fresh = rig(store.clone(), signals, None);
    assert_same_forecasts(&after, &fresh.engine.cycle(now_ms() + 1_000));
    // An in-progress hour's writes change no model input.
    store.ingest(&late_frame(2, id, now_ms() + 2_000, 500), now_ms() + 3_000);
    let set = e.engine.cycle(now_ms() + 4_000);
    assert!(set.models.iter().all(|m| m.cached && m.rows == 0));
}

/// Late frames and a feed change in the middle of a staggered refresh:
/// every shard ends up answered for its latest inputs.
#[tokio::test]
async fn a_staggered_refresh_follows_late_frames_and_feed_changes() {
    let store = seeded_store();
    let mut b = rig(store.clone(), Signals::default(), Some(4));
    let done = refresh_all(&mut b.engine, now_ms()).pop().unwrap();
    let at = now_ms() + HOUR;
    let set = b.engine.cycle(at);
    assert_eq!((set.models[0].rows, set.models[0].stale), (4, 10));
    // One shard already refreshed for the new hour and one still waiting
    // both get a late frame in a closed hour.
    let refreshed = |want: bool| {
        set.shards
            .iter()
            .find(|(k, s)| Arc::ptr_eq(s, &done.shards[*k]) != want)
            .map(|(k, _)| k.clone())
            .unwrap()
    };
    for (seq, id) in [(1, refreshed(true)), (2, refreshed(false))] {
        store.ingest(&late_frame(seq, &id, at - HOUR, 50), at);
    }
    let set = b.engine.cycle(at);
    assert_valid(&set);
    // The feeds change (the event calendar arrives): every shard again.
    b.signals.store(Arc::new(events_signals().await));
    let sets = refresh_all(&mut b.engine, at);
    assert!(sets.len() >= 3, "{} cycles", sets.len());
    assert!(
        sets[0].models.iter().all(|m| m.rows == 4),
        "{:?}",
        sets[0].models
    );
    let mut fresh = rig(store.clone(), events_signals().await, None);
    assert_same_forecasts(sets.last().unwrap(), &fresh.engine.cycle(at));
}
