//! What the forecaster answers on its read API, for the proxy's dashboard
//! and tools: `GET /forecasts` ([`ForecastsView`]), `GET /forecast/{shard}`
//! ([`ShardForecastView`]), `GET /series[/{shard}]` ([`SeriesSetView`],
//! [`SeriesView`]), `GET /clock` ([`ClockView`]) and the answer of `POST
//! /ingest` ([`IngestAnswer`]). The forecaster's own status types for
//! models and feeds are these ([`ModelStatus`], [`FeedStatus`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a forecast came from. JSON: `{"kind": "model", "model": …}` or
/// `{"kind": "seasonal_naive", "reason": …}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ForecastSource {
    Model {
        model: String,
    },
    /// The baseline, used when no model could forecast the shard (why in
    /// `reason`).
    SeasonalNaive {
        #[serde(default)]
        reason: String,
    },
}

impl ForecastSource {
    /// `model` or `seasonal_naive`.
    pub fn kind(&self) -> &'static str {
        match self {
            ForecastSource::Model { .. } => "model",
            ForecastSource::SeasonalNaive { .. } => "seasonal_naive",
        }
    }
}

/// One model as the last forecast cycle saw it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ModelStatus {
    pub name: String,
    pub contract: String,
    pub loaded: bool,
    pub detail: String,
    /// Whether this cycle served only outputs of earlier runs (it ran no
    /// row of this model).
    pub cached: bool,
    /// Rows (shards) this model re-ran in this cycle.
    pub rows: usize,
    /// Wall time of this cycle's `session.run`s (ms); `None` when the
    /// model did not run.
    pub run_ms: Option<f64>,
    /// Shards whose served answer predates their current inputs (the model
    /// re-runs them in the next cycles, within its budget).
    #[serde(default)]
    pub stale: usize,
    /// How far the oldest model answer served lags the current origin, in
    /// seconds (0: every answer is for the current origin).
    #[serde(default)]
    pub lag_s: u64,
}

/// Health of a feed as the last forecast saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedState {
    /// Loaded and current.
    Ok,
    /// Loaded, but it does not reach the forecast origin (or the last reload
    /// failed and the previous data is kept for `max_age_s`).
    Late,
    /// Not readable (no file, HTTP error).
    Missing,
    /// Readable but not valid for its schema.
    Malformed,
    /// Not configured.
    Disabled,
}

impl FeedState {
    pub const ALL: [FeedState; 5] = [
        FeedState::Ok,
        FeedState::Late,
        FeedState::Missing,
        FeedState::Malformed,
        FeedState::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedState::Ok => "ok",
            FeedState::Late => "late",
            FeedState::Missing => "missing",
            FeedState::Malformed => "malformed",
            FeedState::Disabled => "disabled",
        }
    }

    /// Whether the model may use the feed's data.
    pub fn usable(self) -> bool {
        matches!(self, FeedState::Ok | FeedState::Late)
    }
}

/// One feed as the last forecast cycle saw it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FeedStatus {
    pub name: String,
    pub state: FeedState,
    pub source: String,
    pub detail: String,
    pub rows: usize,
    pub loaded_at_unix_ms: Option<i64>,
}

/// Quantiles of one shard's demand over one horizon.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct HorizonView {
    /// Quantile levels, increasing (rounded to 6 decimals).
    pub levels: Vec<f64>,
    /// Demand (requests over the horizon) at each level.
    pub values: Vec<f32>,
    pub source: ForecastSource,
    /// The baseline stood in for the model.
    pub fallback: bool,
}

impl HorizonView {
    /// The value at quantile `level` (a served level, to within 1e-3).
    pub fn quantile(&self, level: f64) -> Option<f32> {
        let i = self.levels.iter().position(|l| (l - level).abs() < 1e-3)?;
        self.values.get(i).copied()
    }
}

/// One shard in [`ForecastsView`]: horizons by name (`1h`, `1d`, `1w`,
/// `1mo`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ShardForecasts {
    pub history_hours: usize,
    pub horizons: BTreeMap<String, HorizonView>,
}

/// `GET /forecasts`: the latest cycle for every shard.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ForecastsView {
    pub generated_at: String,
    /// Last complete store-local hour / day the forecasts start after
    /// (`YYYY-MM-DD HH:MM:SS±HH:MM`, the offset telling the two hours of a
    /// fall-back night apart / `YYYY-MM-DD`).
    pub origin_hour: String,
    pub origin_day: String,
    pub cycle_ms: f64,
    pub models: Vec<ModelStatus>,
    pub feeds: Vec<FeedStatus>,
    pub shards: BTreeMap<String, ShardForecasts>,
}

/// `GET /forecast/{shard}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ShardForecastView {
    pub shard: String,
    pub generated_at: String,
    pub origin_hour: String,
    pub history_hours: usize,
    pub horizons: BTreeMap<String, HorizonView>,
    pub models: Vec<ModelStatus>,
    pub feeds: Vec<FeedStatus>,
}

/// Consecutive buckets of actual demand (requests per bucket); the last
/// one is in progress.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SeriesRing {
    pub start_unix_ms: i64,
    pub step_ms: i64,
    pub values: Vec<f64>,
    pub last_partial: bool,
}

/// `GET /series/{shard}`: one shard's actuals, hourly and by the minute.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SeriesView {
    pub shard: String,
    pub history_hours: usize,
    pub hourly: SeriesRing,
    pub minutes: SeriesRing,
}

/// `GET /series`: every shard's actuals over `hours`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SeriesSetView {
    pub hours: usize,
    pub shards: BTreeMap<String, SeriesView>,
}

/// `GET /clock`: the forecaster's "now" (trace time when replaying).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ClockView {
    pub now_unix_ms: i64,
    /// Store-local, `YYYY-MM-DD HH:MM:SS`.
    pub now: String,
    pub replay: bool,
    pub speed: f64,
}

/// The answer of `POST /ingest`: what one telemetry frame added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct IngestAnswer {
    pub samples: u64,
    /// Samples older than every ring (counted, not stored).
    pub too_old: u64,
    /// Samples for new shards refused because the store is full.
    pub over_capacity: u64,
    /// Frames missing according to the source's `seq`.
    pub seq_gap: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forecasts_answer_round_trips() {
        // The shape the forecaster's `set_json` built by hand.
        let raw = r#"{"generated_at":"2025-01-01T10:00:00Z","origin_hour":"2025-01-01 09:00",
            "origin_day":"2024-12-31","cycle_ms":12.5,
            "models":[{"name":"lstm","contract":"m.json","loaded":true,"detail":"","cached":false,"rows":14,"run_ms":3.5,"stale":3,"lag_s":3600}],
            "feeds":[{"name":"sales_history","state":"ok","source":"f.csv","detail":"","rows":10,"loaded_at_unix_ms":1}],
            "shards":{"UK/SEASONAL":{"history_hours":72,"horizons":{
              "1h":{"levels":[0.1,0.5,0.9],"values":[10.0,30.0,50.0],"source":{"kind":"model","model":"lstm"},"fallback":false},
              "1d":{"levels":[0.1,0.5,0.9],"values":[1.0,2.0,3.0],"source":{"kind":"seasonal_naive","reason":"no model"},"fallback":true}}}}}"#;
        let v: ForecastsView = serde_json::from_str(raw).unwrap();
        let h = &v.shards["UK/SEASONAL"].horizons["1h"];
        assert_eq!(h.quantile(0.5), Some(30.0));
        assert_eq!(h.source.kind(), "model");
        let back = serde_json::to_value(&v).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(raw).unwrap()
        );
        assert_eq!((v.models[0].stale, v.models[0].lag_s), (3, 3600));
        // A forecaster from before the staggered refresh omits both: none stale.
        let old: ForecastsView =
            serde_json::from_str(&raw.replace(",\"stale\":3,\"lag_s\":3600", "")).unwrap();
        assert_eq!((old.models[0].stale, old.models[0].lag_s), (0, 0));
        assert!(serde_json::from_str::<ForecastsView>(&raw.replace("\"ok\"", "\"fine\"")).is_err());
        assert!(
            serde_json::from_str::<ForecastsView>(&raw.replace("\"horizons\"", "\"h\"")).is_err()
        );
    }
}
