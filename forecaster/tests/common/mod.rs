//! What the engine tests share: the repository's real data and committed
//! models, a store seeded with the 14 real shards, an engine over them, and
//! the checks every published set must pass.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use shardcast_forecaster::config::{HistoryAlign, HistoryConfig};
use shardcast_forecaster::engine::{
    Engine, EngineConfig, ForecastHandle, ForecastSet, Horizon, RefreshBudget,
};
use shardcast_forecaster::feeds::{self, FeedSource, FeedSpec, FeedState, Signals};
use shardcast_forecaster::metrics::Metrics;
use shardcast_forecaster::service::seed_history;
use shardcast_forecaster::store::{Retention, Store};
use shardcast_forecaster::time::parse_local;

pub fn root() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn hourly_model() -> PathBuf {
    root().join("forecaster/models/shardcast_hourly.json")
}

/// A store holding the real hourly history of the 14 shards.
pub fn seeded_store() -> Arc<Store> {
    let store = Arc::new(Store::new(
        Retention::default(),
        shardcast_forecaster::time::Zone::utc(),
        1000,
    ));
    let st = seed_history(
        &store,
        &HistoryConfig {
            source: FeedSource::File(root().join("data/online_retail/shard_hourly.csv.gz")),
            id_col: "shard_id".into(),
            time_col: "ds".into(),
            value_col: "lines".into(),
            align: HistoryAlign::AsIs,
        },
        // after the data ends: seeding keeps only hours before "now"
        parse_local("2012-01-01 00:00:00").unwrap() * 1000,
    );
    assert_eq!(st.state, FeedState::Ok, "{}", st.detail);
    assert_eq!(store.len(), 14);
    store
}

/// Wall time just after 2011-11-11 00:00 (the held-out period begins), so
/// the origin is 2011-11-10 23:00, the last hour the models trained on.
pub fn now_ms() -> i64 {
    parse_local("2011-11-11 00:00:30").unwrap() * 1000
}

pub fn events_spec(p: PathBuf) -> FeedSpec {
    FeedSpec {
        name: "events".into(),
        source: FeedSource::File(p),
        max_age: Duration::from_secs(0),
    }
}

pub async fn signals_with(events: Option<FeedSpec>, covs: Vec<FeedSpec>) -> Signals {
    feeds::reload(
        &Signals::default(),
        events.as_ref(),
        &covs,
        Duration::from_secs(5),
    )
    .await
}

/// The real event calendar and no covariates.
pub async fn events_signals() -> Signals {
    signals_with(
        Some(events_spec(root().join("data/online_retail/events.csv"))),
        vec![],
    )
    .await
}

/// The engine on the committed daily model, `hourly` as its hourly model.
pub fn engine_with(
    store: Arc<Store>,
    signals: Arc<ArcSwap<Signals>>,
    metrics: Arc<Metrics>,
    hourly: PathBuf,
    refresh: RefreshBudget,
) -> Engine {
    Engine::new(
        EngineConfig {
            hourly_contract: hourly,
            daily_contract: root().join("forecaster/models/shardcast_daily.json"),
            onnxruntime_lib: None,
            intra_threads: 1,
            cycle: Duration::from_secs(10),
            retry_load: Duration::from_secs(60),
            clock: shardcast_forecaster::time::Clock::real(),
            refresh,
        },
        store,
        signals,
        metrics,
        ForecastHandle::new(),
    )
}

/// Every shard has every horizon in order, with finite, non-negative quantiles that
/// rise with their levels.
pub fn assert_valid(set: &ForecastSet) {
    assert_eq!(set.shards.len(), 14);
    for (id, s) in set.shards.iter() {
        let got: Vec<Horizon> = s.horizons.iter().map(|h| h.horizon).collect();
        assert_eq!(got, Horizon::ALL.to_vec(), "{id}");
        for h in &s.horizons {
            assert_eq!(h.values.len(), h.levels.len());
            assert!(h.levels.windows(2).all(|p| p[0] < p[1]));
            assert!(
                h.values.iter().all(|v| v.is_finite() && *v >= 0.0),
                "{id} {:?}: {:?}",
                h.horizon,
                h.values
            );
            assert!(
                h.values.windows(2).all(|p| p[0] <= p[1]),
                "{id} {:?} not monotone: {:?}",
                h.horizon,
                h.values
            );
        }
    }
}
