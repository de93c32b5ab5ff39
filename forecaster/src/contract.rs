//! The model contract: the JSON sidecar the trainer writes beside each ONNX
//! graph (`forecaster/models/<name>.json`, format
//! `shardcast-forecaster-model/1`).
//!
//! The contract is read, then checked against what this crate's feature
//! builder ([`crate::features`]) produces: the input names, shapes and the
//! feature lists, in order. A contract the builder does not implement is an
//! error at load time (the model is then not used and every forecast falls
//! back, flagged), never a silently misaligned tensor.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Model period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Freq {
    /// One period = one store-local hour.
    Hourly,
    /// One period = one store-local day.
    Daily,
}

impl Freq {
    /// Hours per period.
    pub fn hours(self) -> i64 {
        match self {
            Freq::Hourly => 1,
            Freq::Daily => 24,
        }
    }
}

/// Where a named horizon is read from in the outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct HorizonSlot {
    /// `true`: `agg_quantiles`, `false`: `quantiles`.
    pub aggregate: bool,
    pub index: usize,
}

/// A validated contract.
#[derive(Debug, Clone)]
pub struct Contract {
    pub name: String,
    /// Absolute path of the ONNX graph.
    pub onnx: PathBuf,
    pub freq: Freq,
    pub context: usize,
    pub horizon: usize,
    pub periods: Vec<usize>,
    pub scale_window: usize,
    /// (start step, length) of each aggregate head.
    pub aggregates: Vec<(usize, usize)>,
    pub quantiles: Vec<f32>,
    pub covariates: Vec<String>,
    pub past_features: usize,
    pub future_features: usize,
    /// Named horizons with a single index (`1h`, `1d`, `1w`, `1mo`).
    pub horizons: Vec<(String, HorizonSlot)>,
}

/// Why a contract was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("model contract {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model contract {path}: not valid JSON for the contract schema: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("model contract {path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

#[derive(Deserialize)]
struct Wire {
    name: String,
    format: String,
    onnx: String,
    inputs: Vec<WireIo>,
    outputs: Vec<WireIo>,
    quantile_levels: Vec<f32>,
    horizons: serde_json::Map<String, serde_json::Value>,
    features: WireFeatures,
    spec: WireSpec,
}

#[derive(Deserialize)]
struct WireIo {
    name: String,
    shape: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireFeatures {
    history_needed: usize,
    past_features: Vec<WireName>,
    future_features: Vec<WireName>,
}

#[derive(Deserialize)]
struct WireName {
    name: String,
}

#[derive(Deserialize)]
struct WireSpec {
    freq: String,
    context: usize,
    horizon: usize,
    periods: Vec<usize>,
    scale_window: usize,
    aggregates: Vec<(usize, usize)>,
    quantiles: Vec<f32>,
    covariates: Vec<String>,
}

/// Calendar channel names per frequency (common.py `calendar_names`).
fn calendar_names(freq: Freq) -> &'static [&'static str] {
    match freq {
        Freq::Hourly => &[
            "hour_sin", "hour_cos", "dow_sin", "dow_cos", "doy_sin", "doy_cos",
        ],
        Freq::Daily => &["dow_sin", "dow_cos", "doy_sin", "doy_cos"],
    }
}

/// The past-feature names this crate's builder produces, in order.
pub fn past_names(freq: Freq, periods: &[usize], covariates: &[String]) -> Vec<String> {
    let mut v = vec!["y".to_string()];
    v.extend(periods.iter().map(|p| format!("y_lag{p}")));
    v.extend(calendar_names(freq).iter().map(|s| s.to_string()));
    v.extend(
        ["holiday", "closed", "event", "events_known"]
            .iter()
            .map(|s| s.to_string()),
    );
    for c in covariates {
        v.push(c.clone());
        v.push(format!("{c}_known"));
    }
    v.push("log_scale".into());
    v
}

/// The future-feature names this crate's builder produces, in order.
pub fn future_names(freq: Freq, periods: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = periods.iter().map(|p| format!("y_snaive{p}")).collect();
    v.extend(calendar_names(freq).iter().map(|s| s.to_string()));
    v.extend(
        ["holiday", "closed", "event", "events_known", "step"]
            .iter()
            .map(|s| s.to_string()),
    );
    v
}

impl Contract {
    /// Read and validate `<dir>/<name>.json`.
    pub fn load(path: &Path) -> Result<Contract, ContractError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let w: Wire = serde_json::from_str(&text).map_err(|source| ContractError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |what: String| ContractError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        if w.format != "shardcast-forecaster-model/1" {
            return Err(bad(format!("unsupported format {:?}", w.format)));
        }
        let freq = match w.spec.freq.as_str() {
            "H" => Freq::Hourly,
            "D" => Freq::Daily,
            f => return Err(bad(format!("frequency {f:?} is not served (H and D are)"))),
        };
        let s = &w.spec;
        if s.context == 0 || s.horizon == 0 || s.scale_window == 0 {
            return Err(bad(
                "context, horizon and scale_window must be positive".into()
            ));
        }
        if s.periods.contains(&0) {
            return Err(bad("seasonal periods must be positive".into()));
        }
        let need = (s.context + s.periods.iter().copied().max().unwrap_or(0)).max(s.scale_window);
        if need != w.features.history_needed {
            return Err(bad(format!(
                "history_needed {} but spec implies {need}",
                w.features.history_needed
            )));
        }
        if s.aggregates
            .iter()
            .any(|&(a, n)| n == 0 || a + n > s.horizon)
        {
            return Err(bad("an aggregate reaches past the horizon".into()));
        }
        let q = &s.quantiles;
        if q.is_empty()
            || q.windows(2).any(|p| p[0] >= p[1])
            || q.iter().any(|&x| !(x > 0.0 && x < 1.0))
            || q != &w.quantile_levels
        {
            return Err(bad(
                "quantile levels must be increasing in (0, 1) and agree".into(),
            ));
        }
        let past = past_names(freq, &s.periods, &s.covariates);
        let fut = future_names(freq, &s.periods);
        let got_past: Vec<&str> = w
            .features
            .past_features
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        let got_fut: Vec<&str> = w
            .features
            .future_features
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        if got_past != past.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(bad(format!(
                "past features {got_past:?}, this runtime builds {past:?}"
            )));
        }
        if got_fut != fut.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(bad(format!(
                "future features {got_fut:?}, this runtime builds {fut:?}"
            )));
        }
        let dims =
            |io: &WireIo| -> Vec<Option<u64>> { io.shape.iter().map(|d| d.as_u64()).collect() };
        let want_in = [
            (
                "past",
                vec![None, Some(s.context as u64), Some(past.len() as u64)],
            ),
            (
                "future",
                vec![None, Some(s.horizon as u64), Some(fut.len() as u64)],
            ),
            ("scale", vec![None, Some(1)]),
        ];
        if w.inputs.len() != want_in.len() {
            return Err(bad(format!(
                "{} inputs, expected past/future/scale",
                w.inputs.len()
            )));
        }
        for (io, (name, shape)) in w.inputs.iter().zip(want_in.iter()) {
            if io.name != *name || dims(io) != *shape {
                return Err(bad(format!(
                    "input {:?} {:?}, expected {name} {shape:?}",
                    io.name, io.shape
                )));
            }
        }
        let nq = Some(q.len() as u64);
        let want_out = [
            ("quantiles", vec![None, Some(s.horizon as u64), nq]),
            (
                "agg_quantiles",
                vec![None, Some(s.aggregates.len() as u64), nq],
            ),
        ];
        for (name, shape) in want_out {
            match w.outputs.iter().find(|o| o.name == name) {
                Some(o) if dims(o) == shape => {}
                _ => {
                    return Err(bad(format!(
                        "output {name} {shape:?} missing or of another shape"
                    )))
                }
            }
        }
        let mut horizons = Vec::new();
        for (k, v) in &w.horizons {
            let (Some(out), Some(idx)) = (
                v.get("output").and_then(|o| o.as_str()),
                v.get("index").and_then(|i| i.as_u64()),
            ) else {
                continue; // profiles and ranges are not single horizons
            };
            let idx = idx as usize;
            let slot = match out {
                "quantiles" if idx < s.horizon => HorizonSlot {
                    aggregate: false,
                    index: idx,
                },
                "agg_quantiles" if idx < s.aggregates.len() => HorizonSlot {
                    aggregate: true,
                    index: idx,
                },
                _ => {
                    return Err(bad(format!(
                        "horizon {k}: output {out}[{idx}] does not exist"
                    )))
                }
            };
            horizons.push((k.clone(), slot));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(Contract {
            name: w.name,
            onnx: dir.join(&w.onnx),
            freq,
            context: s.context,
            horizon: s.horizon,
            periods: s.periods.clone(),
            scale_window: s.scale_window,
            aggregates: s.aggregates.clone(),
            quantiles: q.clone(),
            covariates: s.covariates.clone(),
            past_features: past.len(),
            future_features: fut.len(),
            horizons,
        })
    }

    /// Raw periods needed up to and including the origin.
    pub fn history_needed(&self) -> usize {
        (self.context + self.periods.iter().copied().max().unwrap_or(0)).max(self.scale_window)
    }

    /// The output slot of a named horizon, if the model serves it.
    pub fn horizon(&self, name: &str) -> Option<&HorizonSlot> {
        self.horizons
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, s)| s)
    }
}
