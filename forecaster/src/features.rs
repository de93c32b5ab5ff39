//! The feature builder: raw per-shard history, calendar, event calendar and
//! covariate feeds → the `past` / `future` / `scale` tensors of a model, as
//! the contract (`forecaster/models/<name>.json`, `features`) defines them.
//!
//! It mirrors `FeatureSpec.build` in `forecaster/train/common.py`, the
//! reference implementation; the parity fixtures record that function's
//! inputs and outputs and `tests/parity.rs` checks this one against them.
//! Arithmetic is done in `f64` and cast to `f32` at the end, as numpy does.

use crate::contract::{Contract, Freq};
use crate::time::{day_of_year, weekday, Zone};

/// Event channels of one period: holiday, closed, other event.
pub type EventChannels = [f64; 3];

/// Everything about one series the builder needs.
pub struct SeriesInput<'a> {
    /// Raw demand of the `history_needed` periods ending at the origin,
    /// oldest first; periods before the series began are 0 (contract
    /// `short_history`).
    pub y: &'a [f64],
    /// Event channels of the `context` past periods (oldest first) then the
    /// `horizon` future periods; ignored when `events_known` is false.
    pub events: &'a [EventChannels],
    pub events_known: bool,
    /// Per covariate of the contract, its values over the `context` past
    /// periods (NaN = unknown); `None` = the feed is missing altogether.
    pub covariates: &'a [Option<Vec<f64>>],
}

/// Calendar encodings of the past and future periods of one origin; the same
/// for every series, so computed once per batch.
pub struct CalendarRows {
    channels: usize,
    past: Vec<f64>,
    future: Vec<f64>,
}

/// Hourly periods are the store's hour buckets, read in its zone (so the
/// hour of day and the weekday follow its clock across daylight-saving
/// changes); daily periods are civil day indices.
fn calendar_row(freq: Freq, zone: &Zone, period: i64, out: &mut Vec<f64>) {
    use std::f64::consts::PI;
    let (day, hour) = match freq {
        Freq::Hourly => {
            let l = zone.local_hour(period);
            (l.day, Some(f64::from(l.hour)))
        }
        Freq::Daily => (period, None),
    };
    if let Some(h) = hour {
        out.push((2.0 * PI * h / 24.0).sin());
        out.push((2.0 * PI * h / 24.0).cos());
    }
    let d = f64::from(weekday(day));
    out.push((2.0 * PI * d / 7.0).sin());
    out.push((2.0 * PI * d / 7.0).cos());
    let doy = f64::from(day_of_year(day)) - 1.0;
    out.push((2.0 * PI * doy / 365.25).sin());
    out.push((2.0 * PI * doy / 365.25).cos());
}

impl CalendarRows {
    /// Calendar of the periods `origin - context + 1 ..= origin + horizon`:
    /// for an hourly contract hour buckets of `zone`, for a daily one civil
    /// days since 1970-01-01.
    pub fn new(c: &Contract, zone: &Zone, origin: i64) -> CalendarRows {
        let mut past = Vec::new();
        let mut future = Vec::new();
        for i in 0..c.context as i64 {
            calendar_row(c.freq, zone, origin - (c.context as i64 - 1) + i, &mut past);
        }
        for k in 1..=c.horizon as i64 {
            calendar_row(c.freq, zone, origin + k, &mut future);
        }
        let channels = past.len() / c.context;
        CalendarRows {
            channels,
            past,
            future,
        }
    }
}

/// Write one series' rows of `past` ([context × past_features]) and `future`
/// ([horizon × future_features]); returns its `scale`.
///
/// Panics never: slice lengths are checked by the caller through
/// [`Batch::push`].
pub fn build_into(
    c: &Contract,
    cal: &CalendarRows,
    s: &SeriesInput<'_>,
    past: &mut [f32],
    future: &mut [f32],
) -> f32 {
    let h = c.history_needed();
    let l = c.context;
    let k_max = c.horizon;
    let y = s.y;
    let o = h - 1; // index of the origin in y
    let scale = 1.0 + y[h - c.scale_window..].iter().sum::<f64>() / c.scale_window as f64;
    let tr = |v: f64| (v / scale).ln_1p();
    let evk = if s.events_known { 1.0 } else { 0.0 };
    let log_scale = scale.ln_1p();
    // Covariates: value transform per the contract, with the mean over the
    // known values in the context window.
    let cov_cols: Vec<Option<(Vec<f64>, Vec<f64>)>> = c
        .covariates
        .iter()
        .enumerate()
        .map(|(j, _)| {
            let v = s.covariates.get(j).and_then(|v| v.as_ref())?;
            let known: Vec<bool> = (0..l)
                .map(|i| v.get(i).is_some_and(|x| !x.is_nan()))
                .collect();
            let vz: Vec<f64> = (0..l)
                .map(|i| if known[i] { v[i].max(0.0) } else { 0.0 })
                .collect();
            let n = known.iter().filter(|&&b| b).count().max(1) as f64;
            let mean = vz.iter().sum::<f64>() / n;
            let vals = (0..l)
                .map(|i| {
                    if known[i] {
                        (vz[i] / (1.0 + mean)).ln_1p()
                    } else {
                        0.0
                    }
                })
                .collect();
            let flags = known.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
            Some((vals, flags))
        })
        .collect();
    let fp = c.past_features;
    for i in 0..l {
        let row = &mut past[i * fp..(i + 1) * fp];
        let t = o - (l - 1) + i;
        let mut j = 0;
        let mut put = |x: f64| {
            row[j] = x as f32;
            j += 1;
        };
        put(tr(y[t]));
        for &p in &c.periods {
            put(tr(y[t - p]));
        }
        for &x in &cal.past[i * cal.channels..(i + 1) * cal.channels] {
            put(x);
        }
        let ev = s.events.get(i).copied().unwrap_or_default();
        for x in ev {
            put(x * evk);
        }
        put(evk);
        for col in &cov_cols {
            match col {
                Some((vals, flags)) => {
                    put(vals[i]);
                    put(flags[i]);
                }
                None => {
                    put(0.0);
                    put(0.0);
                }
            }
        }
        put(log_scale);
    }
    let ff = c.future_features;
    for k in 1..=k_max {
        let row = &mut future[(k - 1) * ff..k * ff];
        let mut j = 0;
        let mut put = |x: f64| {
            row[j] = x as f32;
            j += 1;
        };
        for &p in &c.periods {
            let back = p * k.div_ceil(p) - k; // origin + k - p*ceil(k/p) = origin - back
            put(tr(y[o - back]));
        }
        for &x in &cal.future[(k - 1) * cal.channels..k * cal.channels] {
            put(x);
        }
        let ev = s.events.get(l + k - 1).copied().unwrap_or_default();
        for x in ev {
            put(x * evk);
        }
        put(evk);
        put(k as f64 / k_max as f64);
    }
    scale as f32
}

/// The three input tensors of a batch, row-major, ready for `session.run`.
pub struct Batch {
    pub rows: usize,
    pub past: Vec<f32>,
    pub future: Vec<f32>,
    pub scale: Vec<f32>,
}

impl Batch {
    pub fn with_capacity(c: &Contract, rows: usize) -> Batch {
        Batch {
            rows: 0,
            past: Vec::with_capacity(rows * c.context * c.past_features),
            future: Vec::with_capacity(rows * c.horizon * c.future_features),
            scale: Vec::with_capacity(rows),
        }
    }

    /// Append one series. `s.y` must hold exactly `history_needed` values
    /// and `s.events` `context + horizon` rows (or be empty).
    pub fn push(&mut self, c: &Contract, cal: &CalendarRows, s: &SeriesInput<'_>) -> bool {
        if s.y.len() != c.history_needed()
            || !(s.events.is_empty() || s.events.len() == c.context + c.horizon)
        {
            return false;
        }
        let pn = c.context * c.past_features;
        let fnn = c.horizon * c.future_features;
        let p0 = self.past.len();
        let f0 = self.future.len();
        self.past.resize(p0 + pn, 0.0);
        self.future.resize(f0 + fnn, 0.0);
        let sc = build_into(c, cal, s, &mut self.past[p0..], &mut self.future[f0..]);
        self.scale.push(sc);
        self.rows += 1;
        true
    }
}
