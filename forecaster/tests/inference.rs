//! Inference on the committed models for the 14 real shards of the Online
//! Retail panel, the fallback when the model is unavailable, and degraded
//! (but produced) forecasts when a feed is missing or malformed.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use shardcast_forecaster::config::{HistoryAlign, HistoryConfig};
use shardcast_forecaster::engine::{
    Engine, EngineConfig, ForecastHandle, Horizon, RefreshBudget, Source,
};
use shardcast_forecaster::feeds::{self, FeedSource, FeedSpec, FeedState, Signals};
use shardcast_forecaster::metrics::Metrics;
use shardcast_forecaster::service::seed_history;
use shardcast_forecaster::store::{Retention, Store};
use shardcast_forecaster::time::parse_local;

use common::{assert_valid, events_spec, hourly_model, now_ms, root, seeded_store, signals_with};

fn engine(store: Arc<Store>, signals: Signals, hourly: PathBuf) -> (Engine, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let e = common::engine_with(
        store,
        Arc::new(ArcSwap::from_pointee(signals)),
        metrics.clone(),
        hourly,
        RefreshBudget::unbounded(),
    );
    (e, metrics)
}

#[tokio::test]
async fn model_forecasts_for_the_real_shards() {
    let signals = signals_with(
        Some(events_spec(root().join("data/online_retail/events.csv"))),
        vec![],
    )
    .await;
    let (mut e, metrics) = engine(seeded_store(), signals, hourly_model());
    let set = e.cycle(now_ms());
    assert_eq!(set.origin_hour, "2011-11-10 23:00:00+00:00");
    assert_eq!(set.origin_day, "2011-11-10");
    assert!(
        set.models.iter().all(|m| m.loaded && m.rows == 14),
        "{:?}",
        set.models
    );
    assert_valid(&set);
    let ev = set.feeds.iter().find(|f| f.name == "events").unwrap();
    assert_eq!(ev.state, FeedState::Ok, "{}", ev.detail);
    for s in set.shards.values() {
        for h in &s.horizons {
            assert!(
                matches!(h.source, Source::Model { .. }),
                "{} {:?}: {:?}",
                s.shard,
                h.horizon,
                h.source
            );
        }
        // Totals over longer horizons are larger (median of 1 mo > 1 w > 1 h).
        let med = |h| s.horizon(h).unwrap().quantile(0.5).unwrap();
        assert!(med(Horizon::Month) >= med(Horizon::Week), "{}", s.shard);
        assert!(med(Horizon::Day) >= med(Horizon::Hour), "{}", s.shard);
        assert!(s.history_hours > 17_000);
    }
    // The busiest shard is forecast busier than the quietest one.
    let day = |id: &str| {
        set.shards[id]
            .horizon(Horizon::Day)
            .unwrap()
            .quantile(0.5)
            .unwrap()
    };
    let (hi, lo) = set
        .shards
        .keys()
        .fold((String::new(), String::new()), |(hi, lo), k| {
            let hi = if hi.is_empty() || day(k) > day(&hi) {
                k.clone()
            } else {
                hi
            };
            let lo = if lo.is_empty() || day(k) < day(&lo) {
                k.clone()
            } else {
                lo
            };
            (hi, lo)
        });
    assert!(
        day(&hi) > 5.0 * day(&lo).max(0.1),
        "{hi} {} vs {lo} {}",
        day(&hi),
        day(&lo)
    );
    // Same inputs: the second cycle reuses the outputs and gives the same set.
    let again = e.cycle(now_ms() + 5_000);
    assert!(again.models.iter().all(|m| m.cached));
    assert_eq!(again.shards, set.shards);
    let text = metrics.render(&Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        1,
    ));
    assert!(
        text.contains("shardcast_forecaster_forecasts{horizon=\"1w\",source=\"model\"} 14"),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_model_path_falls_back_flagged() {
    let (mut e, metrics) = engine(
        seeded_store(),
        Signals::default(),
        root().join("forecaster/models/nope.json"),
    );
    let set = e.cycle(now_ms());
    assert_valid(&set);
    assert!(!set.models[0].loaded);
    assert!(
        set.models[0].detail.contains("nope.json"),
        "{}",
        set.models[0].detail
    );
    assert!(
        set.models[1].loaded,
        "the daily model still serves 1w / 1mo"
    );
    for s in set.shards.values() {
        for h in &s.horizons {
            let fallback = matches!(h.horizon, Horizon::Hour | Horizon::NextHour | Horizon::Day);
            assert_eq!(h.is_fallback(), fallback, "{} {:?}", s.shard, h.horizon);
            if let Source::SeasonalNaive { reason } = &h.source {
                assert!(reason.contains("model unavailable"), "{reason}");
            }
        }
    }
    // Seasonal naive: the 1 d median is within the range of recent daily totals.
    let text = metrics.render(&Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        1,
    ));
    assert!(
        text.contains(
            "shardcast_forecaster_forecasts{horizon=\"1h\",source=\"seasonal_naive\"} 14"
        ),
        "{text}"
    );
    assert!(
        text.contains("shardcast_forecaster_model_loaded{model=\"hourly\",name=\"nope\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn missing_and_malformed_feeds_degrade_but_forecast() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("traffic.csv");
    std::fs::write(&bad, "series_id,ds,value\nUK/X,2011-11-10 22:00:00,lots\n").unwrap();
    let signals = signals_with(
        Some(events_spec(dir.path().join("no-such-events.csv"))),
        vec![FeedSpec {
            name: "web_traffic".into(),
            source: FeedSource::File(bad),
            max_age: Duration::from_secs(0),
        }],
    )
    .await;
    let (mut e, metrics) = engine(seeded_store(), signals, hourly_model());
    let set = e.cycle(now_ms());
    assert_valid(&set);
    let state = |n: &str| set.feeds.iter().find(|f| f.name == n).unwrap().state;
    assert_eq!(state("events"), FeedState::Missing);
    assert_eq!(state("web_traffic"), FeedState::Malformed);
    assert_eq!(state("sentiment"), FeedState::Disabled);
    assert!(set
        .shards
        .values()
        .all(|s| s.horizons.iter().all(|h| !h.is_fallback())));
    let text = metrics.render(&Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        1,
    ));
    assert!(text.contains("shardcast_forecaster_feed_state{feed=\"events\",state=\"missing\"} 1"));
    assert!(text
        .contains("shardcast_forecaster_feed_state{feed=\"web_traffic\",state=\"malformed\"} 1"));

    // A valid covariate feed is used (known flags) and changes nothing else.
    let good = dir.path().join("sentiment.csv");
    let mut csv = String::from("ds,value\n");
    for h in 0..24 {
        csv.push_str(&format!("2011-11-10 {h:02}:00:00,{}\n", 10 + h));
    }
    std::fs::write(&good, csv).unwrap();
    let signals = signals_with(
        None,
        vec![FeedSpec {
            name: "sentiment".into(),
            source: FeedSource::File(good),
            max_age: Duration::from_secs(0),
        }],
    )
    .await;
    let (mut e, _) = engine(seeded_store(), signals, hourly_model());
    let set = e.cycle(now_ms());
    assert_valid(&set);
    assert_eq!(
        set.feeds
            .iter()
            .find(|f| f.name == "sentiment")
            .unwrap()
            .state,
        FeedState::Ok
    );
    // A day later the same feed no longer reaches the origin: reported late.
    let set = e.cycle(now_ms() + 86_400_000);
    assert_eq!(
        set.feeds
            .iter()
            .find(|f| f.name == "sentiment")
            .unwrap()
            .state,
        FeedState::Late
    );
    assert_valid(&set);
}

/// An empty store (no history, no telemetry yet) cycles and publishes an
/// empty set: the models are not run on a zero-row batch, which ONNX
/// Runtime answers by aborting the process.
#[test]
fn an_empty_store_cycles_without_running_the_models() {
    let store = Arc::new(Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        1000,
    ));
    let (mut e, _) = engine(store, Signals::default(), hourly_model());
    let set = e.cycle(now_ms());
    assert!(set.shards.is_empty());
    assert!(set.generated_at_unix_ms != 0, "published");
}

/// The inference thread runs supervised: when it panics (here its first
/// engine cannot be built) the panic is counted and a new thread with a
/// fresh engine takes over, which then publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inference_thread_that_panics_is_started_again() {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    let tasks = shardcast_edge::supervise::Tasks::new();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let store = Arc::new(Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        1000,
    ));
    let handle = ForecastHandle::new();
    let starts = Arc::new(AtomicU32::new(0));
    let thread = {
        let (store, handle, starts) = (store.clone(), handle.clone(), starts.clone());
        shardcast_forecaster::engine::EngineThread::spawn(
            move || {
                assert!(starts.fetch_add(1, Relaxed) > 0, "first start fails");
                Engine::new(
                    EngineConfig {
                        hourly_contract: root().join("missing.json"),
                        daily_contract: root().join("missing.json"),
                        onnxruntime_lib: None,
                        intra_threads: 1,
                        cycle: Duration::from_secs(10),
                        retry_load: Duration::from_secs(60),
                        clock: shardcast_forecaster::time::Clock::real(),
                        refresh: RefreshBudget::unbounded(),
                    },
                    store.clone(),
                    Arc::new(ArcSwap::from_pointee(Signals::default())),
                    Arc::new(Metrics::default()),
                    handle.clone(),
                )
            },
            &tasks,
            rx,
        )
    };
    let t = std::time::Instant::now();
    while !handle.ready() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no cycle after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = &tasks.states()[0];
    assert_eq!(st.name, "inference");
    assert_eq!(st.panics.load(Relaxed), 1);
    assert_eq!(st.restarts.load(Relaxed), 1);
    assert!(tasks.all_running());
    assert_eq!(starts.load(Relaxed), 2);
    stop.send(true).unwrap();
    thread.shutdown().await;
    assert!(!tasks.all_running());
}

/// A UK store on its own clock: the sales history (wall-clock rows) seeds
/// the real hours of Europe/London, a local day's total is its 23 or 25
/// hours across the clock changes, and the models run with the origin
/// written on that clock.
#[tokio::test]
async fn london_store_days_and_origins_across_clock_changes() {
    use shardcast_forecaster::contract::Freq;
    use shardcast_forecaster::engine::{period_day, period_hours};
    use shardcast_forecaster::time::Zone;

    let zone = Zone::named("Europe/London").unwrap();
    let store = Arc::new(Store::new(Retention::default(), zone.clone(), 1000));
    let path = root().join("data/online_retail/shard_hourly.csv.gz");
    let st = seed_history(
        &store,
        &HistoryConfig {
            source: FeedSource::File(path.clone()),
            id_col: "shard_id".into(),
            time_col: "ds".into(),
            value_col: "lines".into(),
            align: HistoryAlign::AsIs,
        },
        parse_local("2012-01-01 00:00:00").unwrap() * 1000,
    );
    assert_eq!(st.state, FeedState::Ok, "{}", st.detail);
    // The same history as civil hours: a day's total is the sum of its rows.
    let civil =
        feeds::parse_history(&feeds::read_file(&path).unwrap(), "shard_id", "ds", "lines").unwrap();
    for (d, n) in [
        ("2010-03-28", 23),
        ("2011-03-27", 23),
        ("2011-10-30", 25),
        ("2011-11-14", 24),
    ] {
        let day = parse_local(d).unwrap().div_euclid(86_400);
        let (a, b) = period_hours(&zone, Freq::Daily, day);
        assert_eq!(b - a, n, "{d}");
        assert!(
            (a..b).all(|h| period_day(&zone, Freq::Hourly, h) == day),
            "{d}"
        );
        for (id, first, v) in &civil {
            let want: f64 = (0..24)
                .filter_map(|k| v.get(usize::try_from(day * 24 + k - first).ok()?))
                .sum();
            let mut got = vec![0.0; n as usize];
            store.hourly_window(id, a, &mut got);
            assert_eq!(got.iter().sum::<f64>(), want, "{id} {d}");
        }
    }
    // Monday 31 October, just after midnight GMT: the last complete day is
    // the 25-hour Sunday.
    let signals = signals_with(
        Some(events_spec(root().join("data/online_retail/events.csv"))),
        vec![],
    )
    .await;
    let (mut e, _) = engine(store, signals, hourly_model());
    let set = e.cycle(parse_local("2011-10-31 00:00:30").unwrap() * 1000);
    assert_eq!(set.origin_hour, "2011-10-30 23:00:00+00:00");
    assert_eq!(set.origin_day, "2011-10-30");
    assert!(
        set.models.iter().all(|m| m.loaded && m.rows == 14),
        "{:?}",
        set.models
    );
    assert_valid(&set);
    // Before the change the same local hour is an hour earlier in UTC.
    let set = e.cycle(parse_local("2011-10-28 09:00:30").unwrap() * 1000);
    assert_eq!(set.origin_hour, "2011-10-28 09:00:00+01:00");
}
