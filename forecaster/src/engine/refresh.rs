//! Keeping every shard's model answers current within a per-cycle budget.
//!
//! Each model keeps, per shard, the horizons it last served and the inputs
//! they answer ([`InputKey`]: the origin, the feeds' version, the model's
//! load generation and the shard's change stamp in the store). A cycle
//! re-runs only the shards whose key moved — all of them when a period
//! closes or a feed changes, one when a late frame lands in one shard's
//! closed hour — in chunks, in priority order (shards without any model
//! answer first, then the busiest by their last forecast), and stops
//! between chunks when the cycle's budget is spent. The shards left over
//! keep serving their previous model answer (counted as stale, with its
//! lag) or, if they never had one, the flagged seasonal-naive fallback,
//! until a later cycle reaches them; the engine runs those catch-up cycles
//! sooner than the normal interval, so a period's refresh completes within
//! `ceil(shards / rows per cycle)` catch-up intervals of its close.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{period_day, period_hours, Horizon, HorizonForecast, Source, DEFAULT_LEVELS};
use crate::contract::{Contract, Freq, HorizonSlot};
use crate::fallback::{seasonal_naive, seasonal_naive_ahead};
use crate::features::{Batch, CalendarRows, EventChannels, SeriesInput};
use crate::feeds::{Events, Signals};
use crate::metrics::Metrics;
use crate::model::OnnxModel;
use crate::store::Store;
use crate::time::Zone;

/// Most rows per `session.run`. ONNX Runtime's LSTM and heads spend ~20 %
/// less CPU per row on chunks of 1–2.5k rows than on one batch of 10k
/// (their working set stays in cache), and a chunk is the unit the budget
/// is checked against.
pub const CHUNK_ROWS: usize = 1024;

/// Fewest rows per chunk when a budget applies: the first chunk of a cycle
/// always runs (a refresh always progresses), later ones only when the
/// budget left fits this many at the measured cost per row.
const MIN_CHUNK_ROWS: usize = 64;

/// The first chunk of a model with no measured cost yet.
const PROBE_ROWS: usize = 256;

/// How much model work one planning cycle may do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshBudget {
    /// Wall time a cycle may spend re-running models, checked between
    /// chunks (each model runs at least one chunk per cycle, so a refresh
    /// always progresses). `None`: every shard whose inputs changed is
    /// re-run in the cycle that sees the change.
    pub per_cycle: Option<Duration>,
    /// At most this many rows per model per cycle (`None`: no cap).
    pub max_rows: Option<usize>,
    /// While shards wait for a refresh, the next cycle starts after this
    /// instead of the full cycle interval.
    pub catch_up: Duration,
}

impl RefreshBudget {
    /// No budget: a changed input re-runs every affected shard at once.
    pub fn unbounded() -> RefreshBudget {
        RefreshBudget {
            per_cycle: None,
            max_rows: None,
            catch_up: Duration::from_secs(1),
        }
    }
}

/// What a shard's served horizons answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InputKey {
    /// The model's origin period (hour or day).
    pub origin: i64,
    /// `Signals::version`.
    pub feeds: u64,
    /// The slot's load generation.
    pub model: u64,
    /// The shard's change stamp in the store.
    pub stamp: u64,
}

/// One shard's horizons as one model serves them.
pub(super) struct Served {
    pub key: InputKey,
    /// `false`: a placeholder (seasonal naive) while the model run for
    /// `key` waits its turn.
    pub done: bool,
    /// Whether any horizon came from the model.
    pub from_model: bool,
    pub horizons: Vec<HorizonForecast>,
    /// Refresh priority among shards that have a model answer: the
    /// median of the first aggregate horizon served (expected demand).
    pub weight: f32,
}

/// Per-cycle inputs shared by both models.
pub(super) struct CycleInputs<'a> {
    pub store: &'a Store,
    pub zone: &'a Zone,
    pub signals: &'a Signals,
    /// The event calendar when it is usable and reaches the origin.
    pub events: Option<&'a Events>,
    pub buf_start: i64,
    pub buf_len: usize,
    pub deadline: Option<Instant>,
    pub max_rows: Option<usize>,
}

pub(super) struct Slot {
    pub freq: Freq,
    pub path: PathBuf,
    /// Horizons this model answers: (our horizon, contract horizon key).
    pub serves: Vec<(Horizon, &'static str)>,
    pub model: Option<OnnxModel>,
    pub detail: String,
    pub last_attempt: Option<Instant>,
    /// Bumped on every (re)load and on invalidation: answers of an older
    /// generation are stale.
    pub generation: u64,
    pub served: HashMap<Arc<str>, Served>,
    /// Rows re-run in the latest cycle, and their `session.run` time.
    pub rows: usize,
    pub run_ms: Option<f64>,
    /// After the latest cycle: shards not yet answered for their current
    /// inputs, and how many periods the oldest model answer served lags.
    pub stale: usize,
    pub lag_periods: i64,
    /// When the current backlog began (for the refresh-time metric).
    pub backlog_since: Option<Instant>,
    /// Wall seconds per row of the latest chunks (features + run), as this
    /// machine runs them now: sizes chunks to the budget left.
    row_cost: Option<f64>,
}

impl Slot {
    pub fn new(freq: Freq, path: PathBuf) -> Slot {
        let serves = match freq {
            // The next hour is step 2 of the hourly profile ("1h" is step 1).
            Freq::Hourly => vec![
                (Horizon::Hour, "1h"),
                (Horizon::NextHour, "1h+1"),
                (Horizon::Day, "1d"),
            ],
            Freq::Daily => vec![(Horizon::Week, "1w"), (Horizon::Month, "1mo")],
        };
        Slot {
            freq,
            path,
            serves,
            model: None,
            detail: "not loaded yet".into(),
            last_attempt: None,
            generation: 0,
            served: HashMap::new(),
            rows: 0,
            run_ms: None,
            stale: 0,
            lag_periods: 0,
            backlog_since: None,
            row_cost: None,
        }
    }

    pub fn levels(&self) -> Vec<f32> {
        self.model
            .as_ref()
            .map(|m| m.contract.quantiles.clone())
            .unwrap_or_else(|| DEFAULT_LEVELS.to_vec())
    }

    fn key(&self, origin: i64, feeds: u64, stamp: u64) -> InputKey {
        InputKey {
            origin,
            feeds,
            model: self.generation,
            stamp,
        }
    }

    /// Whether a shard's served answer is current for `key`.
    fn current(&self, id: &str, key: InputKey) -> bool {
        self.served.get(id).is_some_and(|s| s.done && s.key == key)
    }

    /// Seasonal-naive horizons (flagged with `reason`) from hourly `y`.
    fn fallback(&self, y: &[f64], levels: &[f32], reason: &str) -> Vec<HorizonForecast> {
        self.serves
            .iter()
            .map(|(h, _)| HorizonForecast {
                horizon: *h,
                levels: levels.to_vec(),
                values: match h {
                    Horizon::NextHour => seasonal_naive_ahead(y, 2, levels),
                    _ => seasonal_naive(y, h.hours(), levels),
                },
                source: Source::SeasonalNaive {
                    reason: reason.to_string(),
                },
            })
            .collect()
    }

    fn insert(&mut self, id: &Arc<str>, key: InputKey, done: bool, h: Vec<HorizonForecast>) {
        let from_model = h.iter().any(|f| !f.is_fallback());
        let weight = h
            .iter()
            .find(|f| f.horizon.hours() > 1)
            .and_then(|f| f.quantile(0.5))
            .unwrap_or(0.0);
        self.served.insert(
            id.clone(),
            Served {
                key,
                done,
                from_model,
                horizons: h,
                weight,
            },
        );
    }

    /// Bring every shard's answer up to date as far as the budget allows.
    /// `shards` are (id, change stamp) sorted by id; returns, per shard,
    /// whether what this model serves for it changed.
    pub fn refresh(
        &mut self,
        cx: &CycleInputs<'_>,
        origin: i64,
        shards: &[(Arc<str>, u64, usize)],
        metrics: &Metrics,
    ) -> Vec<bool> {
        let feeds = cx.signals.version;
        let mut changed = vec![false; shards.len()];
        self.rows = 0;
        self.run_ms = None;
        if self.served.len() > shards.len() {
            let ids: HashSet<&str> = shards.iter().map(|s| &*s.0).collect();
            self.served.retain(|k, _| ids.contains(&**k));
        }
        let levels = self.levels();
        let mut y = vec![0.0; cx.buf_len];
        if self.model.is_none() {
            // Unavailable: every shard whose inputs changed gets the fallback.
            let reason = format!("model unavailable: {}", self.detail);
            for (i, (id, stamp, _)) in shards.iter().enumerate() {
                if self.current(id, self.key(origin, feeds, *stamp)) {
                    continue;
                }
                let (_, stamp) = cx.store.hourly_snapshot(id, cx.buf_start, &mut y);
                let h = self.fallback(&y, &levels, &reason);
                self.insert(id, self.key(origin, feeds, stamp), true, h);
                changed[i] = true;
            }
            self.stale = 0;
            self.lag_periods = 0;
            return changed;
        }
        // Shards owed a run, without a model answer first, then the busiest
        // (ranked once: a comparator that looked shards up would cost more
        // than the rest of the bookkeeping at 10k shards).
        let mut queue: Vec<(bool, f32, usize)> = Vec::new();
        for (i, (id, stamp, _)) in shards.iter().enumerate() {
            let key = self.key(origin, feeds, *stamp);
            match self.served.get(id) {
                Some(s) if s.done && s.key == key => {}
                Some(s) => queue.push((s.from_model, s.weight, i)),
                None => queue.push((false, 0.0, i)),
            }
        }
        queue.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
        let queue: Vec<usize> = queue.into_iter().map(|q| q.2).collect();
        let mut next = 0;
        let mut run_s = 0.0;
        while next < queue.len() {
            let cap = cx
                .max_rows
                .map_or(usize::MAX, |m| m.saturating_sub(self.rows));
            let mut n = CHUNK_ROWS.min(cap).min(queue.len() - next);
            if let Some(d) = cx.deadline {
                // As many rows as the budget left fits at the cost measured.
                let left = d.saturating_duration_since(Instant::now()).as_secs_f64();
                let fit = self.row_cost.map_or(PROBE_ROWS, |c| (left / c) as usize);
                if self.rows > 0 && fit < MIN_CHUNK_ROWS {
                    break;
                }
                n = n.min(fit.max(MIN_CHUNK_ROWS));
            }
            if n == 0 {
                break;
            }
            let chunk: Vec<&(Arc<str>, u64, usize)> =
                queue[next..next + n].iter().map(|&i| &shards[i]).collect();
            let t = Instant::now();
            let out = self.run_chunk(cx, origin, &chunk, metrics, &levels);
            let per_row = t.elapsed().as_secs_f64() / n as f64;
            self.row_cost = Some(self.row_cost.map_or(per_row, |c| (c + per_row) / 2.0));
            run_s += out.run_s;
            for (j, (horizons, stamp)) in out.answers.into_iter().enumerate() {
                let key = self.key(origin, feeds, stamp);
                self.insert(&chunk[j].0, key, true, horizons);
                changed[queue[next + j]] = true;
            }
            self.rows += n;
            next += n;
        }
        if self.rows > 0 {
            self.run_ms = Some(run_s * 1e3);
        }
        // The rest wait: a previous model answer keeps serving; a shard
        // without one serves the fallback, recomputed when its inputs move.
        let mut lag = 0;
        for &i in &queue[next..] {
            let (id, stamp, _) = &shards[i];
            let key = self.key(origin, feeds, *stamp);
            match self.served.get(id) {
                Some(s) if s.from_model => lag = lag.max(origin - s.key.origin),
                Some(s) if !s.done && s.key == key => {}
                _ => {
                    let (_, stamp) = cx.store.hourly_snapshot(id, cx.buf_start, &mut y);
                    let h = self.fallback(&y, &levels, "model run queued");
                    self.insert(id, self.key(origin, feeds, stamp), false, h);
                    changed[i] = true;
                }
            }
        }
        self.stale = queue.len() - next;
        self.lag_periods = lag;
        changed
    }

    /// Build one chunk's batch, run it once, and answer every row (the
    /// model's values, or the fallback where it cannot answer).
    fn run_chunk(
        &mut self,
        cx: &CycleInputs<'_>,
        origin: i64,
        chunk: &[&(Arc<str>, u64, usize)],
        metrics: &Metrics,
        levels: &[f32],
    ) -> ChunkOut {
        let Some(model) = self.model.as_mut() else {
            return ChunkOut::default();
        };
        let c = model.contract.clone();
        let name = c.name.clone();
        let plan = Plan::new(&c, cx, origin);
        let bl = cx.buf_len;
        let mut buf = vec![0.0f64; chunk.len() * bl];
        let mut stamps = Vec::with_capacity(chunk.len());
        for (i, (id, _, _)) in chunk.iter().enumerate() {
            let (_, stamp) =
                cx.store
                    .hourly_snapshot(id, cx.buf_start, &mut buf[i * bl..(i + 1) * bl]);
            stamps.push(stamp);
        }
        let mut batch = Batch::with_capacity(&c, chunk.len());
        let mut in_batch = Vec::with_capacity(chunk.len());
        let mut y = vec![0.0f64; c.history_needed()];
        let mut ev: Vec<EventChannels> = Vec::with_capacity(c.context + c.horizon);
        for (i, (id, _, _)) in chunk.iter().enumerate() {
            let hours = &buf[i * bl..(i + 1) * bl];
            in_batch.push(plan.push(&c, cx, id, hours, &mut y, &mut ev, &mut batch));
        }
        let rows = batch.rows;
        let mut run_s = 0.0;
        let res = if rows == 0 {
            // ONNX Runtime aborts the process on a zero-row batch.
            Err(Arc::<str>::from("shard not in the model batch"))
        } else {
            let t = Instant::now();
            let r = model.run(batch);
            run_s = t.elapsed().as_secs_f64();
            metrics.record_run(&name, t.elapsed(), r.is_ok());
            r.map_err(|e| {
                tracing::warn!(model = %name, error = %e, "model run failed; seasonal-naive fallback");
                Arc::from(format!("model run failed: {e}"))
            })
        };
        let slots = self.horizon_slots(&c);
        let nq = c.quantiles.len();
        let mut b = 0;
        let answers = chunk
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let hours = &buf[i * bl..(i + 1) * bl];
                let row = in_batch[i].then(|| {
                    b += 1;
                    b - 1
                });
                let horizons = self
                    .serves
                    .iter()
                    .enumerate()
                    .map(|(j, (h, _))| {
                        let got = match (&res, row) {
                            (Ok(out), Some(r)) => pick(&c, out, &slots[j], r, nq),
                            (Err(e), Some(_)) => Err(e.clone()),
                            (_, None) => Err(Arc::from("shard not in the model batch")),
                        };
                        match got {
                            Ok(values) => HorizonForecast {
                                horizon: *h,
                                levels: levels.to_vec(),
                                values,
                                source: Source::Model {
                                    model: name.clone(),
                                },
                            },
                            Err(reason) => HorizonForecast {
                                horizon: *h,
                                levels: levels.to_vec(),
                                values: match h {
                                    Horizon::NextHour => seasonal_naive_ahead(hours, 2, levels),
                                    _ => seasonal_naive(hours, h.hours(), levels),
                                },
                                source: Source::SeasonalNaive {
                                    reason: reason.to_string(),
                                },
                            },
                        }
                    })
                    .collect();
                (horizons, stamps[i])
            })
            .collect();
        ChunkOut { answers, run_s }
    }

    fn horizon_slots(&self, c: &Contract) -> Vec<Option<HorizonSlot>> {
        self.serves
            .iter()
            .map(|(_, k)| match k.strip_suffix("+1") {
                // one step further along the same output
                Some(base) => c
                    .horizon(base)
                    .filter(|s| !s.aggregate)
                    .map(|s| HorizonSlot {
                        aggregate: false,
                        index: s.index + 1,
                    }),
                None => c.horizon(k).cloned(),
            })
            .collect()
    }
}

#[derive(Default)]
struct ChunkOut {
    /// Per chunk row: the horizons, and the change stamp of the history read.
    answers: Vec<(Vec<HorizonForecast>, u64)>,
    run_s: f64,
}

/// One row's quantiles of one horizon, checked.
fn pick(
    c: &Contract,
    out: &crate::model::Outputs,
    slot: &Option<HorizonSlot>,
    b: usize,
    nq: usize,
) -> Result<Vec<f32>, Arc<str>> {
    let Some(hs) = slot else {
        return Err(Arc::from("model contract has no such horizon"));
    };
    let (data, per_row) = if hs.aggregate {
        (&out.agg_quantiles, c.aggregates.len())
    } else {
        (&out.quantiles, c.horizon)
    };
    if hs.index >= per_row {
        return Err(Arc::from("model output has no such step"));
    }
    let at = (b * per_row + hs.index) * nq;
    let v = &data[at..at + nq];
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Arc::from("model output not finite"));
    }
    if v.iter().any(|&x| x < 0.0) {
        return Err(Arc::from("model output negative"));
    }
    if v.windows(2).any(|p| p[1] < p[0]) {
        return Err(Arc::from("model quantiles cross"));
    }
    Ok(v.to_vec())
}

/// What is the same for every row of one model at one origin: the
/// calendar, the buffer ranges of its periods, the feeds' keys.
struct Plan<'a> {
    cal: CalendarRows,
    y_hours: Vec<(i64, i64)>,
    ev_days: Vec<i64>,
    cov_secs: Vec<i64>,
    window: Option<crate::feeds::EventWindow<'a>>,
    covs: Vec<Option<&'a Arc<crate::feeds::Covariate>>>,
}

impl<'a> Plan<'a> {
    fn new(c: &Contract, cx: &CycleInputs<'a>, origin: i64) -> Plan<'a> {
        let zone = cx.zone;
        let need = c.history_needed();
        let first_period = origin - (c.context as i64 - 1);
        let last_period = origin + c.horizon as i64;
        let day_of = |p: i64| period_day(zone, c.freq, p);
        let civil_start = |p: i64| match c.freq {
            Freq::Hourly => zone.local_hour(p).civil_s,
            Freq::Daily => p * 86_400,
        };
        Plan {
            cal: CalendarRows::new(c, zone, origin),
            y_hours: (0..need as i64)
                .map(|k| {
                    let (a, b) = period_hours(zone, c.freq, origin - need as i64 + 1 + k);
                    (a - cx.buf_start, b - cx.buf_start)
                })
                .collect(),
            ev_days: (first_period..=last_period).map(day_of).collect(),
            cov_secs: (0..c.context as i64)
                .map(|k| civil_start(first_period + k))
                .collect(),
            window: cx
                .events
                .map(|e| e.window(day_of(first_period), day_of(last_period))),
            covs: c
                .covariates
                .iter()
                .map(|n| cx.signals.covariate(n))
                .collect(),
        }
    }

    /// Append one shard's row; `false` when its inputs do not fit the
    /// contract (it is then answered by the fallback).
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        c: &Contract,
        cx: &CycleInputs<'_>,
        id: &str,
        hours: &[f64],
        y: &mut [f64],
        ev: &mut Vec<EventChannels>,
        batch: &mut Batch,
    ) -> bool {
        // Periods origin-need+1 ..= origin, from the hourly buffer.
        for (slot_y, &(h0, h1)) in y.iter_mut().zip(&self.y_hours) {
            *slot_y = (h0.max(0)..h1.min(cx.buf_len as i64))
                .map(|h| hours[h as usize])
                .sum();
        }
        ev.clear();
        if let Some(w) = self.window.as_ref().filter(|w| w.any_for(id)) {
            for &d in &self.ev_days {
                ev.push(w.channels(id, d));
            }
        }
        let cov: Vec<Option<Vec<f64>>> = self
            .covs
            .iter()
            .map(|f| {
                f.map(|f| {
                    self.cov_secs
                        .iter()
                        .map(|&t| f.value(id, t).unwrap_or(f64::NAN))
                        .collect()
                })
            })
            .collect();
        let input = SeriesInput {
            y,
            events: ev,
            events_known: self.window.is_some(),
            covariates: &cov,
        };
        batch.push(c, &self.cal, &input)
    }
}
