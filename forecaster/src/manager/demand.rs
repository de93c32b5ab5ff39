//! Demand: what the planner is told each shard will need. A policy is a
//! type behind [`DemandPolicy`] (the `[manager] policy` setting picks one):
//!
//! | policy | predicted demand | the planner sees |
//! |---|---|---|
//! | [`Forecast`] | the planning quantile of the forecasts, highest over the horizons | predicted and observed |
//! | [`Reactive`] | none | observed only |
//! | [`Oracle`] | the actual demand of this hour and the next (a file) | predicted and observed |
//! | [`NoDemand`] | none | nothing: no pre-fetch, every shard not hot is cold |
//!
//! Forecast skill (the median hour forecast against what the hour brought)
//! weights pre-fetch priority; it is tracked here for any policy that
//! gives an hour median.

mod model;
#[cfg(test)]
mod model_tests;

use std::collections::BTreeMap;

use crate::config::{ManagerConfig, Policy};
use crate::engine::{Horizon, ShardForecast};
use crate::planner::{self, Demand};

use super::ManagerError;

pub use model::{plan_input, DemandModel, Inputs};

/// Where one shard's prediction is made.
pub struct At<'a> {
    pub shard: &'a str,
    /// Clock time, Unix ms.
    pub now: i64,
    /// The store-local hour index of `now`.
    pub store_hour: i64,
    /// The shard's threshold, requests/s.
    pub threshold: f64,
    /// The shard's forecast in the latest set, found by the caller's walk
    /// over the set (not searched again per shard).
    pub forecast: Option<&'a ShardForecast>,
}

/// One shard's predicted demand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub predicted_rps: f64,
    /// When it starts (clock time); `None`: the next hour.
    pub rise_at_ms: Option<i64>,
    /// The median forecast of the hour in progress (for skill).
    pub p50_hour: Option<f64>,
    /// P(the hour in progress crosses the threshold), from the forecast's
    /// quantiles.
    pub p_exceed: Option<f64>,
    /// P(the next hour crosses it): the planner prices a copy by it once a
    /// copy ordered later would land in that hour.
    pub p_exceed_next: Option<f64>,
}

/// How the manager predicts demand.
pub trait DemandPolicy: Send + Sync {
    /// A shard's prediction. It may depend on the shard's forecast in
    /// `at.forecasts`, its threshold and the store hour, and on `at.now`
    /// only as the rise time of a rise under way (`rise_at_ms`): the
    /// manager predicts again only when one of those changed, and carries
    /// the last prediction over otherwise ([`DemandModel`]).
    fn predict(&self, at: &At) -> Prediction;
    /// What the planner is shown of a shard's demand.
    fn planned(&self, d: &Demand) -> Demand {
        d.clone()
    }
    /// False: demand never keeps a shard hot (every shard not hot is cold).
    fn plans_demand(&self) -> bool {
        true
    }
}

const NOTHING: Prediction = Prediction {
    predicted_rps: 0.0,
    rise_at_ms: None,
    p50_hour: None,
    p_exceed: None,
    p_exceed_next: None,
};

/// Forecasts at the planning quantile.
pub struct Forecast {
    pub quantile: f32,
}

impl DemandPolicy for Forecast {
    fn predict(&self, at: &At) -> Prediction {
        let mut p = NOTHING;
        let Some(f) = at.forecast else {
            return p;
        };
        for h in Horizon::ALL {
            let Some(hf) = f.horizon(h) else { continue };
            let q = quantile_at(&hf.levels, &hf.values, self.quantile);
            let rate = f64::from(q) / (h.hours() as f64 * 3600.0);
            let pe = || planner::value::p_exceed(&hf.levels, &hf.values, at.threshold * 3600.0);
            match h {
                Horizon::Hour => p.p_exceed = Some(pe()),
                Horizon::NextHour => p.p_exceed_next = Some(pe()),
                _ => {}
            }
            if h == Horizon::Hour {
                p.p50_hour = Some(f64::from(quantile_at(&hf.levels, &hf.values, 0.5)));
                if rate > at.threshold {
                    // the hour forecast is for the hour in progress (else
                    // the rise is the next hour's, the default)
                    p.rise_at_ms = Some(at.now);
                }
            }
            p.predicted_rps = p.predicted_rps.max(rate);
        }
        p
    }
}

/// Observed load only: replicas follow demand once it is there.
pub struct Reactive;

impl DemandPolicy for Reactive {
    fn predict(&self, _: &At) -> Prediction {
        NOTHING
    }
}

/// Perfect foresight from a file of actual hourly demand.
pub struct Oracle {
    /// Per shard: the first store-local hour, and the hourly values.
    pub actual: BTreeMap<String, (i64, Vec<f64>)>,
}

impl DemandPolicy for Oracle {
    fn predict(&self, at: &At) -> Prediction {
        let mut p = NOTHING;
        if let Some((first, v)) = self.actual.get(at.shard) {
            let rate = |h: i64| {
                usize::try_from(h - first)
                    .ok()
                    .and_then(|i| v.get(i).copied())
                    .unwrap_or(0.0)
                    / 3600.0
            };
            let (this, next) = (rate(at.store_hour), rate(at.store_hour + 1));
            p.predicted_rps = this.max(next);
            if this > at.threshold {
                p.rise_at_ms = Some(at.now);
            }
        }
        p
    }
}

/// Never pre-fetch: the planner sees no demand at all.
pub struct NoDemand;

impl DemandPolicy for NoDemand {
    fn predict(&self, _: &At) -> Prediction {
        NOTHING
    }
    fn planned(&self, d: &Demand) -> Demand {
        Demand {
            predicted_rps: 0.0,
            observed_rps: 0.0,
            p_exceed: None,
            p_exceed_next: None,
            ..d.clone()
        }
    }
    fn plans_demand(&self) -> bool {
        false
    }
}

/// The configured policy (the oracle reads its file now).
pub fn policy(cfg: &ManagerConfig) -> Result<Box<dyn DemandPolicy>, ManagerError> {
    Ok(match (&cfg.policy, &cfg.oracle) {
        (Policy::Forecast, _) => Box::new(Forecast {
            quantile: cfg.quantile,
        }),
        (Policy::Reactive, _) => Box::new(Reactive),
        (Policy::None, _) => Box::new(NoDemand),
        (Policy::Oracle, path) => Box::new(Oracle {
            actual: match path {
                Some(p) => crate::feeds::read_file(p)
                    .and_then(|b| crate::feeds::parse_history(&b, "shard_id", "ds", "lines"))
                    .map_err(|e| ManagerError::Oracle(e.to_string()))?
                    .into_iter()
                    .map(|(id, first, v)| (id, (first, v)))
                    .collect(),
                None => BTreeMap::new(),
            },
        }),
    })
}

/// The value at the smallest served level ≥ `level` (the top one if none).
fn quantile_at(levels: &[f32], values: &[f32], level: f32) -> f32 {
    levels
        .iter()
        .position(|&l| l + 1e-6 >= level)
        .or(levels.len().checked_sub(1))
        .and_then(|i| values.get(i).copied())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ForecastSet;

    #[test]
    fn quantile_picks_the_served_level_at_or_above() {
        let l = [0.1, 0.5, 0.9];
        let v = [1.0, 2.0, 3.0];
        assert_eq!(quantile_at(&l, &v, 0.9), 3.0);
        assert_eq!(quantile_at(&l, &v, 0.8), 3.0);
        assert_eq!(quantile_at(&l, &v, 0.5), 2.0);
        assert_eq!(quantile_at(&l, &v, 0.99), 3.0);
        assert_eq!(quantile_at(&[], &[], 0.5), 0.0);
    }

    #[test]
    fn no_demand_shows_the_planner_nothing_and_keeps_nothing_hot() {
        let d = Demand {
            predicted_rps: 5.0,
            rise_at_ms: 7,
            observed_rps: 3.0,
            skill: 0.9,
            p_exceed: None,
            p_exceed_next: None,
            next_hour_ms: 0,
        };
        let p = NoDemand.planned(&d);
        assert_eq!((p.predicted_rps, p.observed_rps), (0.0, 0.0));
        assert_eq!((p.rise_at_ms, p.skill), (7, 0.9));
        assert!(!NoDemand.plans_demand());
        assert_eq!(Reactive.planned(&d), d);
        assert!(Reactive.plans_demand());
    }

    #[test]
    fn the_forecast_gives_the_hour_in_progress_and_the_next_apart() {
        use crate::engine::{HorizonForecast, Source};
        let levels = vec![0.1, 0.5, 0.9];
        let hf = |horizon, values: [f32; 3]| HorizonForecast {
            horizon,
            levels: levels.clone(),
            values: values.to_vec(),
            source: Source::Model { model: "m".into() },
        };
        let set = |this: [f32; 3], next: [f32; 3]| ForecastSet {
            shards: std::sync::Arc::new(
                [(
                    "s".to_string(),
                    std::sync::Arc::new(ShardForecast {
                        shard: "s".into(),
                        history_hours: 0,
                        horizons: vec![hf(Horizon::Hour, this), hf(Horizon::NextHour, next)],
                    }),
                )]
                .into(),
            ),
            ..ForecastSet::default()
        };
        let policy = Forecast { quantile: 0.9 };
        // Threshold 100 requests an hour: quiet now, a spike the next hour.
        let quiet_then_spike = set([1.0, 2.0, 3.0], [150.0, 200.0, 300.0]);
        fn at(forecasts: &ForecastSet) -> At<'_> {
            At {
                shard: "s",
                now: 7,
                store_hour: 10,
                threshold: 100.0 / 3600.0,
                forecast: forecasts.shards.get("s").map(|f| &**f),
            }
        }
        let p = policy.predict(&at(&quiet_then_spike));
        let (this, next) = (p.p_exceed.unwrap(), p.p_exceed_next.unwrap());
        assert!(this < 0.01, "the hour in progress is quiet: {this}");
        assert!(next > 0.9, "the next hour's spike: {next}");
        assert_eq!(p.rise_at_ms, None, "the rise is the next hour's");
        let spike_now = set([150.0, 200.0, 300.0], [1.0, 2.0, 3.0]);
        let p = policy.predict(&at(&spike_now));
        assert!(p.p_exceed.unwrap() > 0.9);
        assert!(p.p_exceed_next.unwrap() < 0.01);
        assert_eq!(p.rise_at_ms, Some(7), "the hour in progress rises now");
        let quiet = set([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]);
        let p = policy.predict(&at(&quiet));
        assert!(p.p_exceed.unwrap() < 0.01 && p.p_exceed_next.unwrap() < 0.01);
    }

    #[test]
    fn the_oracle_rises_now_when_this_hour_is_over_the_threshold() {
        let o = Oracle {
            actual: [("s".to_string(), (10, vec![3600.0, 36_000.0]))].into(),
        };
        let set = ForecastSet::default();
        let at = |store_hour, threshold| At {
            shard: "s",
            now: 99,
            store_hour,
            threshold,
            forecast: set.shards.get("s").map(|f| &**f),
        };
        let p = o.predict(&at(10, 0.5));
        assert_eq!(
            p.predicted_rps, 10.0,
            "the higher of this hour and the next"
        );
        assert_eq!(p.rise_at_ms, Some(99));
        assert_eq!(o.predict(&at(10, 2.0)).rise_at_ms, None);
        assert_eq!(o.predict(&at(50, 0.5)).predicted_rps, 0.0);
    }
}
