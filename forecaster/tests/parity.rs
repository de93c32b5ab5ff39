//! Parity with the trainer: the committed `forecaster/models/*.parity.json`
//! fixtures run through this crate's feature builder and through ONNX
//! Runtime (the venv's `libonnxruntime`), and must agree with the recorded
//! tensors and JAX outputs within the fixture's tolerance (1e-4).
//!
//! Needs `.venv` from `scripts/setup`; without it this test fails and says so.

use std::path::{Path, PathBuf};

use serde_json::Value;
use shardcast_forecaster::contract::{Contract, Freq};
use shardcast_forecaster::features::{Batch, CalendarRows, SeriesInput};
use shardcast_forecaster::feeds::Events;
use shardcast_forecaster::model::OnnxModel;
use shardcast_forecaster::time::{parse_local, Zone};

fn models_dir() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("models")
}

fn floats(v: &Value) -> Vec<f64> {
    fn walk(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Number(n) => out.push(n.as_f64().unwrap_or(f64::NAN)),
            _ => out.push(f64::NAN),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

fn fixture(name: &str) -> (Contract, Value) {
    let c = Contract::load(&models_dir().join(format!("{name}.json"))).expect("contract");
    let fx: Value = serde_json::from_slice(
        &std::fs::read(models_dir().join(format!("{name}.parity.json"))).expect("fixture"),
    )
    .expect("fixture json");
    (c, fx)
}

/// The fixture's store zone (UTC for fixtures that name none).
fn zone_of(fx: &Value) -> Zone {
    fx["timezone"]
        .as_str()
        .map_or_else(Zone::utc, |n| Zone::named(n).expect("fixture zone"))
}

/// The feature builder reproduces the recorded tensors from the raw fields.
fn check_features(name: &str) {
    let (c, fx) = fixture(name);
    check_cases(name, &c, &fx);
}

fn check_cases(name: &str, c: &Contract, fx: &Value) {
    let c = c.clone();
    let zone = zone_of(fx);
    let past_want = floats(&fx["inputs"]["past"]);
    let fut_want = floats(&fx["inputs"]["future"]);
    let scale_want = floats(&fx["inputs"]["scale"]);
    let cases = fx["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let pn = c.context * c.past_features;
    let fnn = c.horizon * c.future_features;
    for (b, case) in cases.iter().enumerate() {
        let secs = parse_local(case["origin"].as_str().unwrap()).unwrap();
        let origin = match (c.freq, case["origin_unix_ms"].as_i64()) {
            (Freq::Hourly, Some(ms)) => zone.hour(ms),
            (Freq::Hourly, None) => zone.hour_of_civil(secs),
            (Freq::Daily, _) => secs.div_euclid(86_400),
        };
        let y = floats(&case["y_history"]);
        let mut events = Vec::new();
        for part in ["past_events", "future_events"] {
            let ch: Vec<Vec<f64>> = ["holiday", "closed", "event"]
                .iter()
                .map(|k| floats(&case[part][k]))
                .collect();
            for ((h, c), e) in ch[0].iter().zip(&ch[1]).zip(&ch[2]) {
                events.push([*h, *c, *e]);
            }
        }
        let cal = CalendarRows::new(&c, &zone, origin);
        let cov: Vec<Option<Vec<f64>>> = vec![None; c.covariates.len()];
        let mut batch = Batch::with_capacity(&c, 1);
        assert!(batch.push(
            &c,
            &cal,
            &SeriesInput {
                y: &y,
                events: &events,
                events_known: case["events_known"].as_f64().unwrap() > 0.5,
                covariates: &cov,
            }
        ));
        for (i, (g, w)) in batch
            .past
            .iter()
            .zip(&past_want[b * pn..(b + 1) * pn])
            .enumerate()
        {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-5,
                "{name} case {b} past[{}][{}]: {g} vs {w}",
                i / c.past_features,
                i % c.past_features
            );
        }
        for (i, (g, w)) in batch
            .future
            .iter()
            .zip(&fut_want[b * fnn..(b + 1) * fnn])
            .enumerate()
        {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-5,
                "{name} case {b} future[{}][{}]: {g} vs {w}",
                i / c.future_features,
                i % c.future_features
            );
        }
        let s = f64::from(batch.scale[0]);
        assert!(
            (s - scale_want[b]).abs() <= 1e-6 * scale_want[b].abs(),
            "{name} case {b} scale {s} vs {}",
            scale_want[b]
        );
    }
}

/// ONNX Runtime on the recorded tensors reproduces the recorded JAX outputs.
fn check_outputs(name: &str) {
    let (c, fx) = fixture(name);
    let mut m = match OnnxModel::load(&models_dir().join(format!("{name}.json")), None, 1) {
        Ok(m) => m,
        Err(e) => panic!(
            "parity test needs ONNX Runtime from the project venv: {e}\n\
             -> run scripts/setup (or forecaster/train/setup_venv.sh) first"
        ),
    };
    let past: Vec<f32> = floats(&fx["inputs"]["past"])
        .iter()
        .map(|&x| x as f32)
        .collect();
    let future: Vec<f32> = floats(&fx["inputs"]["future"])
        .iter()
        .map(|&x| x as f32)
        .collect();
    let scale: Vec<f32> = floats(&fx["inputs"]["scale"])
        .iter()
        .map(|&x| x as f32)
        .collect();
    let rows = scale.len();
    let out = m
        .run(Batch {
            rows,
            past,
            future,
            scale: scale.clone(),
        })
        .expect("run");
    let tol = fx["tolerance"].as_f64().unwrap();
    assert!(tol <= 1e-4);
    let nq = c.quantiles.len();
    let lens: Vec<f64> = c.aggregates.iter().map(|&(_, n)| n as f64).collect();
    for (key, got, per_row, agg) in [
        ("quantiles", &out.quantiles, c.horizon, false),
        (
            "agg_quantiles",
            &out.agg_quantiles,
            c.aggregates.len(),
            true,
        ),
    ] {
        let want = floats(&fx["expected"][key]);
        assert_eq!(got.len(), want.len(), "{name} {key} length");
        let mut worst = 0f64;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let b = i / (per_row * nq);
            let j = (i / nq) % per_row;
            let mult = f64::from(scale[b]) * if agg { lens[j] } else { 1.0 };
            let denom = 1f64.max(w.abs()).max(mult);
            worst = worst.max((f64::from(*g) - w).abs() / denom);
        }
        assert!(worst <= tol, "{name} {key}: max error {worst:.2e} > {tol}");
    }
}

#[test]
fn hourly_features_match_fixture() {
    check_features("shardcast_hourly");
}

#[test]
fn daily_features_match_fixture() {
    check_features("shardcast_daily");
}

/// Across both 2011 UK clock changes (a 23- and a 25-hour day): the hour of
/// day, weekday and event day of every hour, and so the whole feature rows,
/// are the trainer's. The events are also re-derived here from the
/// fixture's calendar, through the zone's local day of each hour.
#[test]
fn hourly_features_match_across_daylight_saving_changes() {
    let (c, _) = fixture("shardcast_hourly");
    let fx: Value = serde_json::from_slice(
        &std::fs::read(models_dir().join("shardcast_hourly.dst.parity.json")).expect("fixture"),
    )
    .expect("fixture json");
    let zone = zone_of(&fx);
    assert_eq!(zone.name(), "Europe/London");
    check_cases("shardcast_hourly (DST)", &c, &fx);
    let events = Events::parse(fx["events_csv"].as_str().unwrap().as_bytes()).unwrap();
    let mut lengths = std::collections::BTreeSet::new();
    for case in fx["cases"].as_array().unwrap() {
        let origin = zone.hour(case["origin_unix_ms"].as_i64().unwrap());
        let id = case["series_id"].as_str().unwrap();
        let first = origin - (c.context as i64 - 1);
        let want: Vec<[f64; 3]> = ["past_events", "future_events"]
            .iter()
            .flat_map(|part| {
                let ch: Vec<Vec<f64>> = ["holiday", "closed", "event"]
                    .iter()
                    .map(|k| floats(&case[*part][*k]))
                    .collect();
                (0..ch[0].len())
                    .map(|i| [ch[0][i], ch[1][i], ch[2][i]])
                    .collect::<Vec<_>>()
            })
            .collect();
        for (k, w) in want.iter().enumerate() {
            let h = first + k as i64;
            let day = zone.day_of_hour(h);
            assert_eq!(
                events.window(day, day).channels(id, day),
                *w,
                "{id} hour {} (origin {})",
                zone.format_hour(h),
                case["origin"]
            );
            lengths.insert(zone.first_hour(day + 1) - zone.first_hour(day));
        }
    }
    assert_eq!(
        lengths.into_iter().collect::<Vec<_>>(),
        vec![23, 24, 25],
        "the windows cover both changes"
    );
}

#[test]
fn hourly_onnx_matches_fixture() {
    check_outputs("shardcast_hourly");
}

#[test]
fn daily_onnx_matches_fixture() {
    check_outputs("shardcast_daily");
}
