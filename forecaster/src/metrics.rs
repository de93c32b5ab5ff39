//! Every metric the forecaster exports, in one place, rendered as
//! Prometheus text on `/metrics` by the workspace's one writer
//! ([`shardcast_edge::metrics`]), all named `shardcast_forecaster_*`. Labels are bounded: reasons, horizons,
//! models and feed names are fixed sets; shard ids never become labels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use shardcast_edge::metrics::{Kind, Writer};

use crate::engine::{ForecastSet, Horizon};
use crate::feeds::FeedState;
use crate::store::Store;

/// Why an ingest request was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    TooLarge,
    Json,
    Version,
    Invalid,
    Body,
}

impl Reject {
    const ALL: [Reject; 5] = [
        Reject::TooLarge,
        Reject::Json,
        Reject::Version,
        Reject::Invalid,
        Reject::Body,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::Json => "json",
            Reject::Version => "version",
            Reject::Invalid => "invalid",
            Reject::Body => "body",
        }
    }
}

/// Which models a planning cycle re-ran (the `rerun` label): `both` on a
/// cold start or a new day, `hourly` on a new hour, `none` when every
/// output came from the cache (`daily` alone happens after a daily-only
/// input change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rerun {
    None,
    Hourly,
    Daily,
    Both,
}

impl Rerun {
    const ALL: [Rerun; 4] = [Rerun::None, Rerun::Hourly, Rerun::Daily, Rerun::Both];

    pub fn as_str(self) -> &'static str {
        match self {
            Rerun::None => "none",
            Rerun::Hourly => "hourly",
            Rerun::Daily => "daily",
            Rerun::Both => "both",
        }
    }

    /// From the cycle's model statuses (the engine lists the hourly model
    /// first, then the daily): a loaded model not served from its cache ran.
    pub fn of(set: &ForecastSet) -> Rerun {
        let ran = |i: usize| set.models.get(i).is_some_and(|m| m.loaded && !m.cached);
        match (ran(0), ran(1)) {
            (true, true) => Rerun::Both,
            (true, false) => Rerun::Hourly,
            (false, true) => Rerun::Daily,
            (false, false) => Rerun::None,
        }
    }
}

const BUCKETS_S: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];

/// A fixed-bucket latency histogram.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 11],
    sum_us: AtomicU64,
    /// The longest observation since start: a bucket bound says only
    /// "under 500 ms"; this says how far under.
    max_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS_S.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let us = d.as_micros() as u64;
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The longest observation since start, in seconds.
    fn max_s(&self) -> f64 {
        self.max_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    fn render(&self, w: &mut Writer<'_>, name: &str, labels: &[(&str, &str)]) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let count = counts.iter().sum();
        let bounds = BUCKETS_S.iter().copied().chain([f64::INFINITY]);
        w.histogram(
            name,
            labels,
            bounds.zip(counts),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count,
        );
    }
}

#[derive(Default)]
struct Latest {
    counts: Vec<(Horizon, bool, usize)>,
    feeds: Vec<(String, FeedState)>,
    models: Vec<(String, bool, bool)>,
    /// Per model (hourly, daily): stale shards, lag of the oldest answer.
    refresh: Vec<(usize, u64)>,
    shards: usize,
    cycle_ms: f64,
}

/// Counters and gauges of the process (store counters live in the store).
#[derive(Default)]
pub struct Metrics {
    pub ingest_requests: AtomicU64,
    rejects: [AtomicU64; 5],
    pub cycles: AtomicU64,
    /// By [`Rerun`]: a cycle that re-ran a model costs what the model
    /// costs; one served from cached outputs costs the assembly.
    cycle_seconds: [Histogram; 4],
    run_seconds: [Histogram; 2],
    run_failures: [AtomicU64; 2],
    /// Per model: from the first cycle that found shards with changed
    /// inputs to the cycle that had re-run them all.
    refresh_seconds: [Histogram; 2],
    pub snapshots_written: AtomicU64,
    pub snapshot_failures: AtomicU64,
    pub snapshot_restore_failures: AtomicU64,
    pub snapshot_seconds: Histogram,
    latest: Mutex<Latest>,
}

impl Metrics {
    pub fn reject(&self, r: Reject) {
        self.rejects[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejects[r as usize].load(Ordering::Relaxed)
    }

    /// Called by the engine after each model run.
    pub fn record_run(&self, model: &str, d: Duration, ok: bool) {
        let i = usize::from(!model.contains("hourly"));
        self.run_seconds[i].observe(d);
        if !ok {
            self.run_failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Called by the engine when a model's backlog of changed shards is
    /// cleared, with how long that took.
    pub fn record_refresh(&self, freq: crate::contract::Freq, d: Duration) {
        let i = usize::from(freq == crate::contract::Freq::Daily);
        self.refresh_seconds[i].observe(d);
    }

    /// Called by the engine after each cycle.
    pub fn record_cycle(&self, set: &ForecastSet) {
        self.cycles.fetch_add(1, Ordering::Relaxed);
        self.cycle_seconds[Rerun::of(set) as usize]
            .observe(Duration::from_secs_f64(set.cycle_ms / 1e3));
        let counts = set.counts();
        let mut l = self.latest.lock();
        l.counts = Horizon::ALL
            .iter()
            .flat_map(|&h| {
                [false, true].map(|fb| (h, fb, counts.get(&(h, fb)).copied().unwrap_or(0)))
            })
            .collect();
        l.feeds = set
            .feeds
            .iter()
            .map(|f| (f.name.clone(), f.state))
            .collect();
        l.models = set
            .models
            .iter()
            .map(|m| (m.name.clone(), m.loaded, m.cached))
            .collect();
        l.refresh = set.models.iter().map(|m| (m.stale, m.lag_s)).collect();
        l.shards = set.shards.len();
        l.cycle_ms = set.cycle_ms;
    }

    /// Prometheus text exposition.
    pub fn render(&self, store: &Store) -> String {
        let mut o = String::with_capacity(8 << 10);
        let c = &store.counters;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut w = Writer::new(&mut o);
        w.counter(
            "shardcast_forecaster_ingest_requests_total",
            "POST /ingest requests received.",
            l(&self.ingest_requests),
        )
        .by_label(
            "shardcast_forecaster_frames_rejected_total",
            Kind::Counter,
            "Telemetry frames refused, by reason.",
            "reason",
            Reject::ALL.map(|r| (r.as_str(), self.rejected(r))),
        )
        .counter(
            "shardcast_forecaster_frames_accepted_total",
            "Telemetry frames accepted.",
            l(&c.frames),
        )
        .counter(
            "shardcast_forecaster_samples_total",
            "Per-shard samples accepted.",
            l(&c.samples),
        )
        .counter(
            "shardcast_forecaster_frames_seq_gap_total",
            "Frames missing according to per-source sequence gaps.",
            l(&c.seq_gap_frames),
        )
        .counter(
            "shardcast_forecaster_frames_seq_reset_total",
            "Frames whose seq did not advance (sender restart or replay).",
            l(&c.seq_resets),
        )
        .counter(
            "shardcast_forecaster_sender_dropped_frames_total",
            "Frames senders report having dropped (dropped_before).",
            l(&c.sender_dropped),
        )
        .counter(
            "shardcast_forecaster_samples_too_old_total",
            "Samples older than every retained bucket.",
            l(&c.too_old),
        )
        .counter(
            "shardcast_forecaster_samples_over_capacity_total",
            "Samples for new shards refused at max_shards.",
            l(&c.over_capacity),
        )
        .counter(
            "shardcast_forecaster_closed_hour_writes_total",
            "Writes into hours that had already closed.",
            l(&c.closed_hour_writes),
        )
        .gauge(
            "shardcast_forecaster_shards",
            "Shards in the store.",
            store.len(),
        )
        .counter(
            "shardcast_forecaster_cycles_total",
            "Planning cycles run.",
            l(&self.cycles),
        )
        .family(
            "shardcast_forecaster_cycle_seconds",
            Kind::Histogram,
            "Wall time of a planning cycle, by the models it re-ran (for some or all shards).",
        );
        for r in Rerun::ALL {
            self.cycle_seconds[r as usize].render(
                &mut w,
                "shardcast_forecaster_cycle_seconds",
                &[("rerun", r.as_str())],
            );
        }
        w.family(
            "shardcast_forecaster_cycle_max_seconds",
            Kind::Gauge,
            "Longest planning cycle since start, by the models it re-ran (0 when none ran).",
        );
        for r in Rerun::ALL {
            w.sample(
                "shardcast_forecaster_cycle_max_seconds",
                &[("rerun", r.as_str())],
                self.cycle_seconds[r as usize].max_s(),
            );
        }
        w.family(
            "shardcast_forecaster_model_run_seconds",
            Kind::Histogram,
            "Wall time of one batched session.run.",
        );
        for (i, m) in ["hourly", "daily"].iter().enumerate() {
            self.run_seconds[i].render(
                &mut w,
                "shardcast_forecaster_model_run_seconds",
                &[("model", m)],
            );
        }
        w.family(
            "shardcast_forecaster_refresh_seconds",
            Kind::Histogram,
            "From the cycle that found shards with changed model inputs to the one that had re-run them all.",
        );
        for (i, m) in ["hourly", "daily"].iter().enumerate() {
            self.refresh_seconds[i].render(
                &mut w,
                "shardcast_forecaster_refresh_seconds",
                &[("model", m)],
            );
        }
        w.by_label(
            "shardcast_forecaster_model_run_failures_total",
            Kind::Counter,
            "Failed session.run calls.",
            "model",
            [
                ("hourly", l(&self.run_failures[0])),
                ("daily", l(&self.run_failures[1])),
            ],
        );
        let latest = self.latest.lock();
        w.family(
            "shardcast_forecaster_forecasts",
            Kind::Gauge,
            "Forecasts in the latest set, by horizon and source (fallback = seasonal naive).",
        );
        for (h, fb, n) in &latest.counts {
            let src = if *fb { "seasonal_naive" } else { "model" };
            w.sample(
                "shardcast_forecaster_forecasts",
                &[("horizon", h.name()), ("source", src)],
                *n,
            );
        }
        w.family(
            "shardcast_forecaster_model_loaded",
            Kind::Gauge,
            "1 when the model is loaded and used.",
        );
        for (i, (name, loaded, _)) in latest.models.iter().enumerate() {
            let kind = ["hourly", "daily"].get(i).copied().unwrap_or("other");
            w.sample(
                "shardcast_forecaster_model_loaded",
                &[("model", kind), ("name", &sanitize(name))],
                *loaded,
            );
        }
        let refresh = |f: fn(&(usize, u64)) -> u64| {
            ["hourly", "daily"]
                .into_iter()
                .zip(latest.refresh.iter().map(f).chain(std::iter::repeat(0)))
        };
        w.by_label(
            "shardcast_forecaster_stale_shards",
            Kind::Gauge,
            "Shards serving a forecast older than their inputs (re-run within the next cycles), by model.",
            "model",
            refresh(|r| r.0 as u64),
        )
        .by_label(
            "shardcast_forecaster_forecast_lag_seconds",
            Kind::Gauge,
            "How far the oldest model forecast served lags the current origin, by model.",
            "model",
            refresh(|r| r.1),
        );
        w.family(
            "shardcast_forecaster_feed_state",
            Kind::Gauge,
            "1 for the current state of each feed.",
        );
        for (name, st) in &latest.feeds {
            for s in FeedState::ALL {
                w.sample(
                    "shardcast_forecaster_feed_state",
                    &[("feed", &sanitize(name)), ("state", s.as_str())],
                    *st == s,
                );
            }
        }
        w.gauge(
            "shardcast_forecaster_last_cycle_seconds",
            "Wall time of the latest cycle.",
            latest.cycle_ms / 1e3,
        );
        drop(latest);
        w.counter(
            "shardcast_forecaster_snapshots_written_total",
            "Store snapshots written.",
            l(&self.snapshots_written),
        )
        .counter(
            "shardcast_forecaster_snapshot_failures_total",
            "Store snapshots that failed to write.",
            l(&self.snapshot_failures),
        )
        .counter(
            "shardcast_forecaster_snapshot_restore_failures_total",
            "Snapshots found corrupt or unreadable at start.",
            l(&self.snapshot_restore_failures),
        )
        .family(
            "shardcast_forecaster_snapshot_seconds",
            Kind::Histogram,
            "Time to write a snapshot.",
        );
        self.snapshot_seconds
            .render(&mut w, "shardcast_forecaster_snapshot_seconds", &[]);
        o
    }
}

/// The shard manager's table publishing:
/// `shardcast_manager_table_refusals_total{target="proxy"|"metadata"}`,
/// tables refused as not newer (a proxy's 409; a newer table, or another
/// one at the same version, in the metadata store). None of them counts as
/// delivered; see `manager::versions`.
pub fn render_manager(o: &mut String, refusals: &crate::manager::versions::Refusals) {
    let (proxy, metadata) = refusals.snapshot();
    Writer::new(o).by_label(
        "shardcast_manager_table_refusals_total",
        Kind::Counter,
        "Table publishes refused as not newer, by target.",
        "target",
        [("proxy", proxy), ("metadata", metadata)],
    );
}

/// The shard manager's rounds, decisions, orders, publishes and leadership
/// (`shardcast_manager_*`, named in `manager::metrics`).
pub fn render_manager_state(o: &mut String, m: &crate::manager::Manager) {
    crate::manager::metrics::render(o, m);
}

/// The lease's counters: `shardcast_manager_lease_renew_failures_total`,
/// `shardcast_manager_fenced_writes_total` (writes refused because a higher
/// epoch leads), `shardcast_manager_step_downs_total`. Whether this manager
/// leads, and its epoch, are `shardcast_manager_leader` and
/// `shardcast_manager_epoch` ([`crate::manager::metrics`]).
pub fn render_lease(o: &mut String, lease: &crate::manager::lease::Lease) {
    let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Writer::new(o)
        .counter(
            "shardcast_manager_lease_renew_failures_total",
            "Lease renewals that failed (store unreachable or erroring).",
            l(&lease.renew_failures),
        )
        .counter(
            "shardcast_manager_fenced_writes_total",
            "Writes refused because a higher epoch leads.",
            l(&lease.fenced_writes),
        )
        .counter(
            "shardcast_manager_step_downs_total",
            "Terms ended: lease lost or a write fenced.",
            l(&lease.step_downs),
        );
}

/// Sync's finished-order events by outcome (`POST /order-events`).
pub fn render_order_events(o: &mut String, e: &crate::order_events::OrderEvents) {
    let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Writer::new(o).by_label(
        "shardcast_manager_order_events_total",
        Kind::Counter,
        "Finished-order events pushed by sync, by outcome.",
        "outcome",
        [
            ("accepted", l(&e.accepted)),
            ("duplicate", l(&e.duplicates)),
            ("refused", l(&e.refused)),
        ],
    );
}

/// The API listener's connections (shardcast-edge's renderer, the names
/// every shardcast process uses) and the supervised background loops:
/// `shardcast_forecaster_connections_open`, `shardcast_forecaster_connections_accepted_total`,
/// `shardcast_forecaster_connections_refused_total{reason="listener"|"client"}`,
/// `shardcast_forecaster_connections_closed_total{stage}` (closed by a deadline),
/// `shardcast_forecaster_accept_errors_total`, each labelled with the listener;
/// `shardcast_forecaster_open_files_limit`; and `shardcast_forecaster_task_running`,
/// `shardcast_forecaster_task_restarts_total`, `shardcast_forecaster_task_panics_total` by task.
pub fn render_edge(
    o: &mut String,
    conns: &shardcast_edge::ConnLimiter,
    tasks: &shardcast_edge::supervise::Tasks,
) {
    shardcast_edge::limit::render_metrics("shardcast_forecaster", &[conns], o);
    tasks.render_metrics("shardcast_forecaster", o);
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ModelStatus;

    fn set(ms: f64, models: [(bool, bool); 2]) -> ForecastSet {
        ForecastSet {
            cycle_ms: ms,
            models: models
                .iter()
                .enumerate()
                .map(|(i, &(loaded, cached))| ModelStatus {
                    name: format!("m{i}"),
                    contract: String::new(),
                    loaded,
                    detail: String::new(),
                    cached,
                    rows: 0,
                    run_ms: None,
                    stale: 0,
                    lag_s: 0,
                })
                .collect(),
            ..ForecastSet::default()
        }
    }

    #[test]
    fn cycles_are_counted_by_the_models_they_re_ran() {
        let m = Metrics::default();
        m.record_cycle(&set(700.0, [(true, false), (true, false)]));
        m.record_cycle(&set(300.0, [(true, false), (true, true)]));
        m.record_cycle(&set(320.0, [(true, false), (true, true)]));
        m.record_cycle(&set(9.0, [(true, true), (true, true)]));
        // A model that is not loaded did not run, cached or not.
        m.record_cycle(&set(2.0, [(false, false), (false, false)]));
        let text = m.render(&Store::new(
            crate::store::Retention::default(),
            crate::time::Zone::utc(),
            10,
        ));
        let at = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.trim().parse::<f64>().ok()))
                .unwrap_or_else(|| panic!("{k} missing in\n{text}"))
        };
        let c = "shardcast_forecaster_cycle_seconds";
        assert_eq!(at(&format!("{c}_count{{rerun=\"both\"}}")), 1.0);
        assert_eq!(at(&format!("{c}_count{{rerun=\"hourly\"}}")), 2.0);
        assert_eq!(at(&format!("{c}_count{{rerun=\"daily\"}}")), 0.0);
        assert_eq!(at(&format!("{c}_count{{rerun=\"none\"}}")), 2.0);
        assert!((at(&format!("{c}_sum{{rerun=\"hourly\"}}")) - 0.62).abs() < 1e-6);
        assert!((at(&format!("{c}_sum{{rerun=\"both\"}}")) - 0.7).abs() < 1e-6);
        let max = "shardcast_forecaster_cycle_max_seconds";
        assert!((at(&format!("{max}{{rerun=\"hourly\"}}")) - 0.32).abs() < 1e-6);
        assert!((at(&format!("{max}{{rerun=\"both\"}}")) - 0.7).abs() < 1e-6);
        assert_eq!(at(&format!("{max}{{rerun=\"daily\"}}")), 0.0);
    }
}
