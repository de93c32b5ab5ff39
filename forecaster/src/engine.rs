//! The planning cycle: every `cycle` a dedicated thread snapshots the hourly
//! series of all shards, builds both models' inputs per their contracts,
//! runs each model once over the whole batch, replaces whatever the model
//! could not answer with the seasonal-naive fallback (flagged), and
//! publishes a [`ForecastSet`] through a [`ForecastHandle`].
//!
//! Inference is CPU-bound and blocking, so it lives on its own
//! `std::thread`, never on the tokio workers; the async side only reads the
//! published snapshot. A model's inputs only change when its period closes
//! (an hour, a day), when feeds change, or when a late frame lands in a
//! closed hour, so its outputs are cached under that key and a cycle re-runs
//! only the model whose inputs changed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::contract::Freq;
use crate::fallback::{seasonal_naive, seasonal_naive_ahead};
use crate::features::{Batch, CalendarRows, EventChannels, SeriesInput};
use crate::feeds::{FeedState, FeedStatus, Signals};
use crate::metrics::Metrics;
use crate::model::OnnxModel;
use crate::store::Store;
use crate::time::{format_local, format_utc_ms, Zone};

/// Quantile levels used when no model contract could be read.
pub const DEFAULT_LEVELS: [f32; 9] = [0.01, 0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975, 0.99];

/// The forecast horizons served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Horizon {
    /// Demand of the next hour (the hour in progress: the origin is the
    /// last complete hour).
    #[serde(rename = "1h")]
    Hour,
    /// Demand of the hour after that: the lead a pre-fetch needs.
    #[serde(rename = "next_1h")]
    NextHour,
    /// Total demand of the next 24 hours.
    #[serde(rename = "1d")]
    Day,
    /// Total demand of the next 7 days.
    #[serde(rename = "1w")]
    Week,
    /// Total demand of the next 28 days (four whole weeks).
    #[serde(rename = "1mo")]
    Month,
}

impl Horizon {
    pub const ALL: [Horizon; 5] = [
        Horizon::Hour,
        Horizon::NextHour,
        Horizon::Day,
        Horizon::Week,
        Horizon::Month,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Horizon::Hour => "1h",
            Horizon::NextHour => "next_1h",
            Horizon::Day => "1d",
            Horizon::Week => "1w",
            Horizon::Month => "1mo",
        }
    }

    /// Length in hours.
    pub fn hours(self) -> usize {
        match self {
            Horizon::Hour | Horizon::NextHour => 1,
            Horizon::Day => 24,
            Horizon::Week => 168,
            Horizon::Month => 672,
        }
    }
}

/// Where a forecast came from (the read API's type).
pub use shardmap::contract::forecast::ForecastSource as Source;

/// Quantiles of one shard's demand over one horizon.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HorizonForecast {
    pub horizon: Horizon,
    /// Quantile levels, increasing.
    pub levels: Vec<f32>,
    /// Demand (requests) at each level, non-decreasing and >= 0.
    pub values: Vec<f32>,
    pub source: Source,
}

impl HorizonForecast {
    /// The value at `level` (exact match of a served level).
    pub fn quantile(&self, level: f32) -> Option<f32> {
        self.levels
            .iter()
            .position(|&l| (l - level).abs() < 1e-6)
            .map(|i| self.values[i])
    }

    pub fn is_fallback(&self) -> bool {
        matches!(self.source, Source::SeasonalNaive { .. })
    }
}

/// All horizons of one shard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardForecast {
    pub shard: String,
    /// Hours of history held for the shard (incl. seeded history).
    pub history_hours: usize,
    pub horizons: Vec<HorizonForecast>,
}

impl ShardForecast {
    pub fn horizon(&self, h: Horizon) -> Option<&HorizonForecast> {
        self.horizons.iter().find(|f| f.horizon == h)
    }
}

pub use shardmap::contract::forecast::ModelStatus;

/// Everything one planning cycle produced. Immutable once published.
#[derive(Debug, Clone, Default)]
pub struct ForecastSet {
    pub generated_at_unix_ms: i64,
    pub generated_at: String,
    /// Last complete store-local hour / day the forecasts start after
    /// (`YYYY-MM-DD HH:MM:SS±HH:MM` / `YYYY-MM-DD`).
    pub origin_hour: String,
    pub origin_day: String,
    pub cycle_ms: f64,
    pub models: Vec<ModelStatus>,
    pub feeds: Vec<FeedStatus>,
    /// Per shard, by id. Shared between consecutive sets when nothing changed.
    pub shards: Arc<BTreeMap<String, ShardForecast>>,
}

impl ForecastSet {
    /// Count of (shard, horizon) forecasts by (horizon, fallback?).
    pub fn counts(&self) -> HashMap<(Horizon, bool), usize> {
        let mut m = HashMap::new();
        for s in self.shards.values() {
            for h in &s.horizons {
                *m.entry((h.horizon, h.is_fallback())).or_default() += 1;
            }
        }
        m
    }
}

/// The latest forecasts: what the API serves and the planner reads.
/// Cheap to clone; readers never block the inference thread.
#[derive(Clone)]
pub struct ForecastHandle {
    current: Arc<ArcSwap<ForecastSet>>,
    tx: Arc<watch::Sender<Arc<ForecastSet>>>,
}

impl Default for ForecastHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl ForecastHandle {
    pub fn new() -> ForecastHandle {
        let empty = Arc::new(ForecastSet::default());
        let (tx, _) = watch::channel(empty.clone());
        ForecastHandle {
            current: Arc::new(ArcSwap::new(empty)),
            tx: Arc::new(tx),
        }
    }

    /// The latest published set (empty before the first cycle).
    pub fn latest(&self) -> Arc<ForecastSet> {
        self.current.load_full()
    }

    /// A receiver that wakes on every new set.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ForecastSet>> {
        self.tx.subscribe()
    }

    /// Whether at least one cycle has completed.
    pub fn ready(&self) -> bool {
        self.current.load().generated_at_unix_ms != 0
    }

    pub fn publish(&self, set: Arc<ForecastSet>) {
        self.current.store(set.clone());
        self.tx.send_replace(set);
    }
}

/// What the engine needs to know.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub hourly_contract: PathBuf,
    pub daily_contract: PathBuf,
    pub onnxruntime_lib: Option<PathBuf>,
    pub intra_threads: usize,
    pub cycle: Duration,
    /// How often a model that failed to load is retried.
    pub retry_load: Duration,
    /// Real time, or trace time when replaying.
    pub clock: crate::time::Clock,
}

type CacheKey = (i64, u64, u64, usize);
/// Per served horizon: the model's quantiles, or why there are none.
type Answers = Vec<Result<Vec<f32>, Arc<str>>>;
/// Shards by id, as published.
type ShardMap = Arc<BTreeMap<String, ShardForecast>>;

struct Slot {
    freq: Freq,
    path: PathBuf,
    /// Horizons this model answers: (our horizon, contract horizon key).
    serves: Vec<(Horizon, &'static str)>,
    model: Option<OnnxModel>,
    detail: String,
    last_attempt: Option<Instant>,
    cache_key: Option<CacheKey>,
    /// Per shard, per served horizon: model values, or why not.
    cache: HashMap<Arc<str>, Answers>,
    run_ms: Option<f64>,
    rows: usize,
}

impl Slot {
    fn new(freq: Freq, path: PathBuf) -> Slot {
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
            cache_key: None,
            cache: HashMap::new(),
            run_ms: None,
            rows: 0,
        }
    }

    fn levels(&self) -> Vec<f32> {
        self.model
            .as_ref()
            .map(|m| m.contract.quantiles.clone())
            .unwrap_or_else(|| DEFAULT_LEVELS.to_vec())
    }
}

/// The inference engine. Owned by its thread; [`Engine::cycle`] is public
/// so tests and benches can drive it synchronously.
pub struct Engine {
    cfg: EngineConfig,
    store: Arc<Store>,
    signals: Arc<ArcSwap<Signals>>,
    metrics: Arc<Metrics>,
    handle: ForecastHandle,
    slots: [Slot; 2],
    buf: Vec<f64>,
    /// The last assembled shards and the model cache keys they came from.
    last: Option<([CacheKey; 2], ShardMap)>,
}

/// Hours of history kept per shard for one cycle: enough for the daily
/// model's 35 days plus the partial origin day, and for the fallback.
fn buffer_hours(
    zone: &Zone,
    origin_h: i64,
    origin_d: i64,
    hourly_need: usize,
    daily_need: usize,
) -> (i64, usize) {
    let start = (origin_h - hourly_need as i64 + 1)
        .min(zone.first_hour(origin_d - daily_need as i64 + 1))
        .min(origin_h - 672 - 168 + 1);
    (start, (origin_h - start + 1) as usize)
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        store: Arc<Store>,
        signals: Arc<ArcSwap<Signals>>,
        metrics: Arc<Metrics>,
        handle: ForecastHandle,
    ) -> Engine {
        let slots = [
            Slot::new(Freq::Hourly, cfg.hourly_contract.clone()),
            Slot::new(Freq::Daily, cfg.daily_contract.clone()),
        ];
        Engine {
            cfg,
            store,
            signals,
            metrics,
            handle,
            slots,
            buf: Vec::new(),
            last: None,
        }
    }

    fn ensure_loaded(&mut self) {
        for slot in &mut self.slots {
            if slot.model.is_some() {
                continue;
            }
            if slot
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.cfg.retry_load)
            {
                continue;
            }
            slot.last_attempt = Some(Instant::now());
            match OnnxModel::load(
                &slot.path,
                self.cfg.onnxruntime_lib.as_deref(),
                self.cfg.intra_threads,
            ) {
                Ok(m) if m.contract.freq == slot.freq => {
                    tracing::info!(model = %m.contract.name, path = %slot.path.display(), "model loaded");
                    slot.detail = String::new();
                    slot.model = Some(m);
                    slot.cache_key = None;
                }
                Ok(m) => {
                    slot.detail = format!(
                        "{}: frequency {:?}, expected {:?}",
                        slot.path.display(),
                        m.contract.freq,
                        slot.freq
                    );
                }
                Err(e) => {
                    tracing::warn!(path = %slot.path.display(), error = %e, "model unavailable; seasonal-naive fallback");
                    slot.detail = e.to_string();
                }
            }
        }
    }

    /// Forget cached model outputs: the next cycle re-runs both models.
    pub fn invalidate(&mut self) {
        for s in &mut self.slots {
            s.cache_key = None;
        }
        self.last = None;
    }

    /// One planning cycle at wall time `now_unix_ms`: forecasts for every
    /// known shard, published and returned.
    pub fn cycle(&mut self, now_unix_ms: i64) -> Arc<ForecastSet> {
        let t0 = Instant::now();
        self.ensure_loaded();
        let signals = self.signals.load_full();
        let ids = self.store.shard_ids();
        let zone = self.store.zone().clone();
        // The last complete hour, and the last complete local day (the day
        // before the one the current hour is in).
        let origin_h = self.store.local_hour(now_unix_ms) - 1;
        let origin_d = zone.day_of_hour(origin_h + 1) - 1;
        let hourly_need = self.slots[0]
            .model
            .as_ref()
            .map_or(192, |m| m.contract.history_needed());
        let daily_need = self.slots[1]
            .model
            .as_ref()
            .map_or(35, |m| m.contract.history_needed());
        // Feed states as this origin sees them.
        let events = signals
            .events
            .data
            .clone()
            .filter(|_| signals.events.status.state.usable());
        let events_current = events.as_ref().is_some_and(|e| e.last_day > origin_d);
        let mut feeds = signals.statuses();
        for f in &mut feeds {
            if f.state == FeedState::Ok {
                let late = if f.name == "events" {
                    !events_current
                } else if let Some(c) = signals.covariate(&f.name) {
                    c.latest < zone.local_hour(origin_h).civil_s
                } else {
                    false
                };
                if late {
                    f.state = FeedState::Late;
                    f.detail = "does not reach the forecast origin".into();
                }
            }
        }
        let key_base = (
            signals.version,
            self.store.counters.changes.load(Ordering::Relaxed),
            ids.len(),
        );
        let keys: [CacheKey; 2] =
            [origin_h, origin_d].map(|o| (o, key_base.0, key_base.1, key_base.2));
        let cached: [bool; 2] = [0, 1]
            .map(|i| self.slots[i].model.is_some() && self.slots[i].cache_key == Some(keys[i]));
        let reuse = match &self.last {
            Some((k, shards)) if cached == [true, true] && *k == keys => Some(shards.clone()),
            _ => None,
        };
        let shards = match reuse {
            Some(shards) => shards,
            None => {
                let (buf_start, buf_len) =
                    buffer_hours(&zone, origin_h, origin_d, hourly_need, daily_need);
                // Snapshot the hourly history of every shard (one short lock each).
                self.buf.clear();
                self.buf.resize(ids.len() * buf_len, 0.0);
                let mut hist = Vec::with_capacity(ids.len());
                for (i, id) in ids.iter().enumerate() {
                    let out = &mut self.buf[i * buf_len..(i + 1) * buf_len];
                    hist.push(self.store.hourly_window(id, buf_start, out));
                }
                let ev = events.as_deref().filter(|_| events_current);
                let (buf, metrics) = (&self.buf, &*self.metrics);
                let [s0, s1] = &mut self.slots;
                let runs = [!cached[0], !cached[1]];
                let run = |slot: &mut Slot, key: CacheKey| {
                    run_slot(
                        slot, metrics, buf, &ids, &zone, buf_start, buf_len, key.0, ev, &signals,
                    );
                    slot.cache_key = slot.model.as_ref().map(|_| key);
                };
                match runs {
                    // Two models, two threads: their runs are independent.
                    [true, true] if s0.model.is_some() && s1.model.is_some() => {
                        std::thread::scope(|sc| {
                            let h = sc.spawn(|| run(s0, keys[0]));
                            run(s1, keys[1]);
                            let _ = h.join();
                        });
                    }
                    _ => {
                        if runs[0] {
                            run(s0, keys[0]);
                        }
                        if runs[1] {
                            run(s1, keys[1]);
                        }
                    }
                }
                let shards = Arc::new(self.assemble(&ids, &hist, buf_len));
                let all_loaded = self.slots.iter().all(|s| s.model.is_some());
                self.last = all_loaded.then(|| (keys, shards.clone()));
                shards
            }
        };
        let models: Vec<ModelStatus> = self
            .slots
            .iter()
            .zip(cached)
            .map(|(s, cached)| ModelStatus {
                name: s.model.as_ref().map_or_else(
                    || {
                        s.path
                            .file_stem()
                            .map(|x| x.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    },
                    |m| m.contract.name.clone(),
                ),
                contract: s.path.display().to_string(),
                loaded: s.model.is_some(),
                detail: s.detail.clone(),
                cached,
                rows: s.rows,
                run_ms: s.run_ms,
            })
            .collect();
        let set = Arc::new(ForecastSet {
            generated_at_unix_ms: now_unix_ms.max(1),
            generated_at: format_utc_ms(now_unix_ms),
            origin_hour: zone.format_hour(origin_h),
            origin_day: format_local(origin_d * 86_400)[..10].to_string(),
            cycle_ms: t0.elapsed().as_secs_f64() * 1e3,
            models,
            feeds,
            shards,
        });
        self.metrics.record_cycle(&set);
        self.handle.publish(set.clone());
        set
    }

    /// Per shard, the model's answer or the seasonal-naive fallback.
    fn assemble(
        &self,
        ids: &[Arc<str>],
        hist: &[usize],
        buf_len: usize,
    ) -> BTreeMap<String, ShardForecast> {
        let mut shards = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            let y = &self.buf[i * buf_len..(i + 1) * buf_len];
            let mut horizons = Vec::with_capacity(4);
            for s in &self.slots {
                let levels = s.levels();
                let name = s.model.as_ref().map(|m| m.contract.name.clone());
                for (j, (h, _)) in s.serves.iter().enumerate() {
                    let got = match (s.model.is_some(), s.cache.get(id)) {
                        (true, Some(r)) => r[j].clone(),
                        (true, None) => Err(Arc::from("shard not in the model batch")),
                        (false, _) => Err(Arc::from(format!("model unavailable: {}", s.detail))),
                    };
                    let f = match got {
                        Ok(values) => HorizonForecast {
                            horizon: *h,
                            levels: levels.clone(),
                            values,
                            source: Source::Model {
                                model: name.clone().unwrap_or_default(),
                            },
                        },
                        Err(reason) => HorizonForecast {
                            horizon: *h,
                            levels: levels.clone(),
                            values: match h {
                                Horizon::NextHour => seasonal_naive_ahead(y, 2, &levels),
                                _ => seasonal_naive(y, h.hours(), &levels),
                            },
                            source: Source::SeasonalNaive {
                                reason: reason.to_string(),
                            },
                        },
                    };
                    horizons.push(f);
                }
            }
            shards.insert(
                id.to_string(),
                ShardForecast {
                    shard: id.to_string(),
                    history_hours: hist[i],
                    horizons,
                },
            );
        }
        shards
    }
}

/// A model period as the store's hour buckets `[start, end)`: an hour is
/// one bucket, a day its local day's 23, 24 or 25.
pub fn period_hours(zone: &Zone, freq: Freq, p: i64) -> (i64, i64) {
    match freq {
        Freq::Hourly => (p, p + 1),
        Freq::Daily => (zone.first_hour(p), zone.first_hour(p + 1)),
    }
}

/// The civil day of a model period (for the event calendar).
pub fn period_day(zone: &Zone, freq: Freq, p: i64) -> i64 {
    match freq {
        Freq::Hourly => zone.day_of_hour(p),
        Freq::Daily => p,
    }
}

#[allow(clippy::too_many_arguments)]
/// Build one model's batch over all shards, run it once, and cache each
/// shard's answer (or why there is none).
fn run_slot(
    slot: &mut Slot,
    metrics: &Metrics,
    buf: &[f64],
    ids: &[Arc<str>],
    zone: &Zone,
    buf_start: i64,
    buf_len: usize,
    origin: i64,
    events: Option<&crate::feeds::Events>,
    signals: &Signals,
) {
    slot.cache.clear();
    slot.rows = 0;
    let Some(model) = slot.model.as_mut() else {
        return;
    };
    let c = model.contract.clone();
    let need = c.history_needed();
    let cal = CalendarRows::new(&c, zone, origin);
    let first_period = origin - (c.context as i64 - 1);
    let last_period = origin + c.horizon as i64;
    let hours_of = |p: i64| period_hours(zone, c.freq, p);
    let day_of = |p: i64| period_day(zone, c.freq, p);
    let civil_start = |p: i64| match c.freq {
        Freq::Hourly => zone.local_hour(p).civil_s,
        Freq::Daily => p * 86_400,
    };
    let window = events.map(|e| e.window(day_of(first_period), day_of(last_period)));
    let covs: Vec<Option<&Arc<crate::feeds::Covariate>>> =
        c.covariates.iter().map(|n| signals.covariate(n)).collect();
    let mut batch = Batch::with_capacity(&c, ids.len());
    let mut y = vec![0.0f64; need];
    let mut ev: Vec<EventChannels> = Vec::with_capacity(c.context + c.horizon);
    let mut order = Vec::with_capacity(ids.len());
    // Per period: the buffer's hour range, and the feeds' keys (the same
    // for every shard).
    let y_hours: Vec<(i64, i64)> = (0..need as i64)
        .map(|k| {
            let (a, b) = hours_of(origin - need as i64 + 1 + k);
            (a - buf_start, b - buf_start)
        })
        .collect();
    let ev_days: Vec<i64> = (first_period..=last_period).map(day_of).collect();
    let cov_secs: Vec<i64> = (0..c.context as i64)
        .map(|k| civil_start(first_period + k))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let hours = &buf[i * buf_len..(i + 1) * buf_len];
        // Periods origin-need+1 ..= origin, from the hourly buffer.
        for (slot_y, &(h0, h1)) in y.iter_mut().zip(&y_hours) {
            *slot_y = (h0..h1)
                .filter(|&h| h >= 0 && (h as usize) < buf_len)
                .map(|h| hours[h as usize])
                .sum();
        }
        ev.clear();
        if let Some(w) = window.as_ref().filter(|w| w.any_for(id)) {
            for &d in &ev_days {
                ev.push(w.channels(id, d));
            }
        }
        let cov: Vec<Option<Vec<f64>>> = covs
            .iter()
            .map(|f| {
                f.map(|f| {
                    cov_secs
                        .iter()
                        .map(|&t| f.value(id, t).unwrap_or(f64::NAN))
                        .collect()
                })
            })
            .collect();
        let input = SeriesInput {
            y: &y,
            events: &ev,
            events_known: window.is_some(),
            covariates: &cov,
        };
        if batch.push(&c, &cal, &input) {
            order.push(id.clone());
        }
    }
    let rows = batch.rows;
    if rows == 0 {
        // No shard to forecast (an empty store): ONNX Runtime aborts the
        // process on a zero-row batch, and there is nothing to answer.
        return;
    }
    let t = Instant::now();
    let res = model.run(batch);
    slot.run_ms = Some(t.elapsed().as_secs_f64() * 1e3);
    slot.rows = rows;
    metrics.record_run(&c.name, t.elapsed(), res.is_ok());
    let out = match res {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(model = %c.name, error = %e, "model run failed; seasonal-naive fallback");
            let reason: Arc<str> = Arc::from(format!("model run failed: {e}"));
            for id in order {
                slot.cache
                    .insert(id, vec![Err(reason.clone()); slot.serves.len()]);
            }
            return;
        }
    };
    let nq = c.quantiles.len();
    let slots: Vec<Option<crate::contract::HorizonSlot>> = slot
        .serves
        .iter()
        .map(|(_, k)| match k.strip_suffix("+1") {
            // one step further along the same output
            Some(base) => {
                c.horizon(base)
                    .filter(|s| !s.aggregate)
                    .map(|s| crate::contract::HorizonSlot {
                        aggregate: false,
                        index: s.index + 1,
                    })
            }
            None => c.horizon(k).cloned(),
        })
        .collect();
    for (b, id) in order.into_iter().enumerate() {
        let pick = |j: usize| -> Result<Vec<f32>, Arc<str>> {
            let Some(hs) = &slots[j] else {
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
        };
        let answers = (0..slots.len()).map(pick).collect();
        slot.cache.insert(id, answers);
    }
}

/// Commands to the inference thread.
pub enum Command {
    /// Run a cycle now.
    RunNow,
    Shutdown,
}

/// The running inference thread, supervised (task `inference`): a panic
/// in a cycle ends the thread, and the supervisor logs it, counts it and,
/// after a backoff, starts a fresh engine (models loaded again) on a new
/// thread; the last published forecasts keep serving meanwhile.
pub struct EngineThread {
    tx: std::sync::mpsc::Sender<Command>,
    join: Option<tokio::task::JoinHandle<()>>,
}

/// The thread's loop: a cycle at once, then every `cfg.cycle` (or when
/// asked); returns on `Shutdown` or when every sender is gone.
fn run_thread(mut engine: Engine, rx: &std::sync::mpsc::Receiver<Command>) {
    let every = engine.cfg.cycle;
    let mut next = Instant::now();
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Command::Shutdown) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(Command::RunNow) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        let set = engine.cycle(engine.cfg.clock.now_ms());
        tracing::debug!(
            shards = set.shards.len(),
            ms = set.cycle_ms,
            "planning cycle"
        );
        next = Instant::now() + every;
    }
}

impl EngineThread {
    /// Start the thread under `tasks`; `make` builds the engine for each
    /// start. It runs until [`EngineThread::shutdown`] (with `shutdown`
    /// already `true`, so that end is not taken for a failure).
    pub fn spawn<F>(
        make: F,
        tasks: &shardcast_edge::supervise::Tasks,
        shutdown: watch::Receiver<bool>,
    ) -> EngineThread
    where
        F: Fn() -> Engine + Send + Sync + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        // One receiver for every run: commands sent while a thread is being
        // replaced wait for the next one.
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        let make = Arc::new(make);
        let join = tasks.spawn("inference", shutdown, move || {
            let (make, rx) = (make.clone(), rx.clone());
            async move {
                let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                let started = std::thread::Builder::new()
                    .name("forecaster-inference".into())
                    .spawn(move || {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            run_thread(make(), &rx.lock())
                        }));
                        let _ = done_tx.send(r);
                    });
                if let Err(e) = started {
                    tracing::error!(error = %e, "cannot start the inference thread");
                    return;
                }
                // Hand a panic on to the supervisor, which logs and counts it.
                if let Ok(Err(panic)) = done_rx.await {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        EngineThread {
            tx,
            join: Some(join),
        }
    }

    /// Ask for a cycle now (e.g. after feeds changed).
    pub fn run_now(&self) {
        let _ = self.tx.send(Command::RunNow);
    }

    /// Stop the thread and wait for it (the cycle in progress finishes).
    pub async fn shutdown(mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(j) = self.join.take() {
            let _ = j.await;
        }
    }
}
