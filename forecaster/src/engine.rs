//! The planning cycle: every `cycle` a dedicated thread reads the hourly
//! series of the shards whose model inputs changed, builds both models'
//! inputs per their contracts, runs each model over those shards in
//! batched chunks, replaces whatever the model could not answer with the
//! seasonal-naive fallback (flagged), and publishes a [`ForecastSet`]
//! through a [`ForecastHandle`].
//!
//! Inference is CPU-bound and blocking, so it lives on its own
//! `std::thread`, never on the tokio workers; the async side only reads the
//! published snapshot. A model's inputs only change when its period closes
//! (an hour, a day), when feeds change, or when a late frame lands in a
//! closed hour (of one shard), so each shard's answers are kept under that
//! key and a cycle re-runs only the shards whose key moved, at most as many
//! as the cycle's budget allows ([`refresh`]): the others keep serving
//! their previous answer until their turn, a few catch-up cycles later.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::contract::Freq;
use crate::feeds::{FeedState, FeedStatus, Signals};
use crate::metrics::Metrics;
use crate::model::OnnxModel;
use crate::store::Store;
use crate::time::{format_local, format_utc_ms, Zone};

pub mod refresh;

pub use refresh::RefreshBudget;
use refresh::{CycleInputs, Slot};

/// A planning cycle longer than this is logged with where its time went
/// (the target for a cycle at 10,000 shards).
const SLOW_CYCLE_MS: f64 = 200.0;

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

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
    /// Per shard, by id. The map is shared between consecutive sets when
    /// nothing changed, and each shard's entry while its forecasts did not.
    pub shards: Arc<BTreeMap<String, Arc<ShardForecast>>>,
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
    /// Model work allowed per cycle.
    pub refresh: RefreshBudget,
}

/// Shards by id, as published.
type ShardMap = Arc<BTreeMap<String, Arc<ShardForecast>>>;

/// Everything a cached cycle must match to re-publish the previous set:
/// both origins, the feeds' version, the store's change counter and size,
/// and both models' load generations.
type Fingerprint = (i64, i64, u64, u64, usize, [u64; 2]);

/// The inference engine. Owned by its thread; [`Engine::cycle`] is public
/// so tests and benches can drive it synchronously.
pub struct Engine {
    cfg: EngineConfig,
    store: Arc<Store>,
    signals: Arc<ArcSwap<Signals>>,
    metrics: Arc<Metrics>,
    handle: ForecastHandle,
    slots: [Slot; 2],
    /// What the published shards are assembled from.
    assembled: BTreeMap<String, Arc<ShardForecast>>,
    /// The last published shards and what they were made from, when
    /// nothing was left to refresh.
    last: Option<(Fingerprint, ShardMap)>,
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
            assembled: BTreeMap::new(),
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
            let started = Instant::now();
            slot.last_attempt = Some(started);
            match OnnxModel::load(
                &slot.path,
                self.cfg.onnxruntime_lib.as_deref(),
                self.cfg.intra_threads,
            ) {
                Ok(m) if m.contract.freq == slot.freq => {
                    tracing::info!(
                        model = %m.contract.name,
                        path = %slot.path.display(),
                        load_ms = format_args!("{:.1}", ms_since(started)),
                        "model loaded"
                    );
                    slot.detail = String::new();
                    slot.model = Some(m);
                    slot.generation += 1;
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

    /// Treat every model answer as out of date: the following cycles
    /// re-run both models for every shard (within the refresh budget; the
    /// answers keep serving until replaced).
    pub fn invalidate(&mut self) {
        for s in &mut self.slots {
            s.generation += 1;
        }
        self.last = None;
    }

    /// Shards still owed a model run for their current inputs after the
    /// latest cycle (both models).
    pub fn backlog(&self) -> usize {
        self.slots.iter().map(|s| s.stale).sum()
    }

    /// One planning cycle at wall time `now_unix_ms`: forecasts for every
    /// known shard, published and returned.
    pub fn cycle(&mut self, now_unix_ms: i64) -> Arc<ForecastSet> {
        // A model's load (at start, or a retry after a failure) is logged
        // with its own time; the cycle and its budget start after it.
        self.ensure_loaded();
        let t0 = Instant::now();
        let mut models_ms = 0.0;
        let signals = self.signals.load_full();
        let zone = self.store.zone().clone();
        // The last complete hour, and the last complete local day (the day
        // before the one the current hour is in).
        let origin_h = self.store.local_hour(now_unix_ms) - 1;
        let origin_d = zone.day_of_hour(origin_h + 1) - 1;
        let origins = [origin_h, origin_d];
        let need = |i: usize, default: usize| {
            self.slots[i]
                .model
                .as_ref()
                .map_or(default, |m| m.contract.history_needed())
        };
        let (hourly_need, daily_need) = (need(0, 192), need(1, 35));
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
        let fingerprint: Fingerprint = (
            origin_h,
            origin_d,
            signals.version,
            self.store.counters.changes.load(Ordering::Relaxed),
            self.store.len(),
            [self.slots[0].generation, self.slots[1].generation],
        );
        let reuse = match &self.last {
            Some((f, shards)) if *f == fingerprint => Some(shards.clone()),
            _ => None,
        };
        let cached = reuse.is_some();
        let shards = match reuse {
            Some(shards) => {
                for s in &mut self.slots {
                    s.rows = 0;
                }
                shards
            }
            None => {
                let stamps = self.store.shard_stamps();
                let (buf_start, buf_len) =
                    buffer_hours(&zone, origin_h, origin_d, hourly_need, daily_need);
                let budget = self.cfg.refresh;
                let cx = CycleInputs {
                    store: &self.store,
                    zone: &zone,
                    signals: &signals,
                    events: events.as_deref().filter(|_| events_current),
                    buf_start,
                    buf_len,
                    deadline: budget.per_cycle.map(|d| t0 + d),
                    max_rows: budget.max_rows,
                };
                let metrics = &*self.metrics;
                let [s0, s1] = &mut self.slots;
                let (c0, c1) = if s0.model.is_some() && s1.model.is_some() {
                    // Two models, two threads: their runs are independent.
                    std::thread::scope(|sc| {
                        let h = sc.spawn(|| s0.refresh(&cx, origins[0], &stamps, metrics));
                        let c1 = s1.refresh(&cx, origins[1], &stamps, metrics);
                        let c0 = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                        (c0, c1)
                    })
                } else {
                    (
                        s0.refresh(&cx, origins[0], &stamps, metrics),
                        s1.refresh(&cx, origins[1], &stamps, metrics),
                    )
                };
                models_ms = ms_since(t0);
                let changed: Vec<bool> = c0.iter().zip(&c1).map(|(a, b)| *a || *b).collect();
                let shards = self.assemble(&stamps, &changed);
                let done = self.slots.iter().all(|s| s.stale == 0);
                self.last = done.then(|| (fingerprint, shards.clone()));
                shards
            }
        };
        for s in &mut self.slots {
            match (s.stale, s.backlog_since) {
                (0, Some(since)) => {
                    self.metrics.record_refresh(s.freq, since.elapsed());
                    s.backlog_since = None;
                }
                (n, None) if n > 0 => s.backlog_since = Some(t0),
                _ => {}
            }
        }
        let models: Vec<ModelStatus> = self
            .slots
            .iter()
            .map(|s| ModelStatus {
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
                cached: cached || (s.model.is_some() && s.rows == 0),
                rows: s.rows,
                run_ms: s.run_ms,
                stale: s.stale,
                lag_s: s.lag_periods.max(0) as u64
                    * match s.freq {
                        Freq::Hourly => 3_600,
                        Freq::Daily => 86_400,
                    },
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
        if set.cycle_ms > SLOW_CYCLE_MS {
            // Where the time went, to tell the model runs (budgeted) and
            // the bookkeeping around them apart.
            let rows = |i: usize| set.models.get(i).map_or(0, |m| m.rows);
            tracing::warn!(
                cycle_ms = format_args!("{:.1}", set.cycle_ms),
                until_models_done_ms = format_args!("{models_ms:.1}"),
                hourly_rows = rows(0),
                daily_rows = rows(1),
                stale = self.backlog(),
                shards = set.shards.len(),
                "slow planning cycle"
            );
        }
        self.handle.publish(set.clone());
        set
    }

    /// The published map: every shard whose served horizons changed is
    /// rebuilt, every other entry is shared with the previous set.
    fn assemble(&mut self, stamps: &[(Arc<str>, u64, usize)], changed: &[bool]) -> ShardMap {
        if self.assembled.len() > stamps.len() {
            let ids: std::collections::HashSet<&str> = stamps.iter().map(|s| &*s.0).collect();
            self.assembled.retain(|k, _| ids.contains(k.as_str()));
        }
        for (i, (id, _, hours)) in stamps.iter().enumerate() {
            if !changed[i] && self.assembled.contains_key(&**id) {
                continue;
            }
            let horizons = self
                .slots
                .iter()
                .flat_map(|s| {
                    s.served
                        .get(id)
                        .map(|x| x.horizons.clone())
                        .unwrap_or_default()
                })
                .collect();
            self.assembled.insert(
                id.to_string(),
                Arc::new(ShardForecast {
                    shard: id.to_string(),
                    history_hours: *hours,
                    horizons,
                }),
            );
        }
        Arc::new(self.assembled.clone())
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
            backlog = engine.backlog(),
            "planning cycle"
        );
        // Shards still waiting for their refresh: come back sooner.
        let wait = if engine.backlog() > 0 {
            engine.cfg.refresh.catch_up.min(every)
        } else {
            every
        };
        next = Instant::now() + wait;
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
