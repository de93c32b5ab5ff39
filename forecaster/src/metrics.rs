//! Every metric the forecaster exports, in one place, rendered as
//! Prometheus text on `/metrics`. Labels are bounded: reasons, horizons,
//! models and feed names are fixed sets; shard ids never become labels.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

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

const BUCKETS_S: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];

/// A fixed-bucket latency histogram.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 11],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS_S.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS_S.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS_S.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let lb = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{lb} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{lb} {cum}");
    }
}

#[derive(Default)]
struct Latest {
    counts: Vec<(Horizon, bool, usize)>,
    feeds: Vec<(String, FeedState)>,
    models: Vec<(String, bool, bool)>,
    shards: usize,
    cycle_ms: f64,
}

/// Counters and gauges of the process (store counters live in the store).
#[derive(Default)]
pub struct Metrics {
    pub ingest_requests: AtomicU64,
    rejects: [AtomicU64; 5],
    pub cycles: AtomicU64,
    pub cycle_seconds: Histogram,
    run_seconds: [Histogram; 2],
    run_failures: [AtomicU64; 2],
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

    /// Called by the engine after each cycle.
    pub fn record_cycle(&self, set: &ForecastSet) {
        self.cycles.fetch_add(1, Ordering::Relaxed);
        self.cycle_seconds
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
        l.shards = set.shards.len();
        l.cycle_ms = set.cycle_ms;
    }

    /// Prometheus text exposition.
    pub fn render(&self, store: &Store) -> String {
        let mut o = String::with_capacity(8 << 10);
        let c = &store.counters;
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "shardcast_forecaster_ingest_requests_total",
            "POST /ingest requests received.",
            self.ingest_requests.load(Ordering::Relaxed),
        );
        let _ = writeln!(o, "# HELP shardcast_forecaster_frames_rejected_total Telemetry frames refused, by reason.\n# TYPE shardcast_forecaster_frames_rejected_total counter");
        for r in Reject::ALL {
            let _ = writeln!(
                o,
                "shardcast_forecaster_frames_rejected_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.rejected(r)
            );
        }
        counter(
            &mut o,
            "shardcast_forecaster_frames_accepted_total",
            "Telemetry frames accepted.",
            c.frames.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "shardcast_forecaster_samples_total",
            "Per-shard samples accepted.",
            c.samples.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "shardcast_forecaster_frames_seq_gap_total",
            "Frames missing according to per-source sequence gaps.",
            c.seq_gap_frames.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "shardcast_forecaster_frames_seq_reset_total",
            "Frames whose seq did not advance (sender restart or replay).",
            c.seq_resets.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "shardcast_forecaster_sender_dropped_frames_total",
            "Frames senders report having dropped (dropped_before).",
            c.sender_dropped.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "shardcast_forecaster_samples_too_old_total",
            "Samples older than every retained bucket.",
            c.too_old.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "shardcast_forecaster_samples_over_capacity_total",
            "Samples for new shards refused at max_shards.",
            c.over_capacity.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "shardcast_forecaster_closed_hour_writes_total",
            "Writes into hours that had already closed.",
            c.closed_hour_writes.load(Ordering::Relaxed),
        );
        let _ = writeln!(o, "# HELP shardcast_forecaster_shards Shards in the store.\n# TYPE shardcast_forecaster_shards gauge\nshardcast_forecaster_shards {}", store.len());
        counter(
            &mut o,
            "shardcast_forecaster_cycles_total",
            "Planning cycles run.",
            self.cycles.load(Ordering::Relaxed),
        );
        let _ = writeln!(o, "# HELP shardcast_forecaster_cycle_seconds Wall time of a planning cycle.\n# TYPE shardcast_forecaster_cycle_seconds histogram");
        self.cycle_seconds
            .render(&mut o, "shardcast_forecaster_cycle_seconds", "");
        let _ = writeln!(o, "# HELP shardcast_forecaster_model_run_seconds Wall time of one batched session.run.\n# TYPE shardcast_forecaster_model_run_seconds histogram");
        for (i, m) in ["hourly", "daily"].iter().enumerate() {
            self.run_seconds[i].render(
                &mut o,
                "shardcast_forecaster_model_run_seconds",
                &format!("model=\"{m}\""),
            );
        }
        let _ = writeln!(o, "# HELP shardcast_forecaster_model_run_failures_total Failed session.run calls.\n# TYPE shardcast_forecaster_model_run_failures_total counter");
        for (i, m) in ["hourly", "daily"].iter().enumerate() {
            let _ = writeln!(
                o,
                "shardcast_forecaster_model_run_failures_total{{model=\"{m}\"}} {}",
                self.run_failures[i].load(Ordering::Relaxed)
            );
        }
        let l = self.latest.lock();
        let _ = writeln!(o, "# HELP shardcast_forecaster_forecasts Forecasts in the latest set, by horizon and source (fallback = seasonal naive).\n# TYPE shardcast_forecaster_forecasts gauge");
        for (h, fb, n) in &l.counts {
            let src = if *fb { "seasonal_naive" } else { "model" };
            let _ = writeln!(
                o,
                "shardcast_forecaster_forecasts{{horizon=\"{}\",source=\"{src}\"}} {n}",
                h.name()
            );
        }
        let _ = writeln!(o, "# HELP shardcast_forecaster_model_loaded 1 when the model is loaded and used.\n# TYPE shardcast_forecaster_model_loaded gauge");
        for (i, (name, loaded, _)) in l.models.iter().enumerate() {
            let kind = ["hourly", "daily"].get(i).copied().unwrap_or("other");
            let _ = writeln!(
                o,
                "shardcast_forecaster_model_loaded{{model=\"{kind}\",name=\"{}\"}} {}",
                sanitize(name),
                u8::from(*loaded)
            );
        }
        let _ = writeln!(o, "# HELP shardcast_forecaster_feed_state 1 for the current state of each feed.\n# TYPE shardcast_forecaster_feed_state gauge");
        for (name, st) in &l.feeds {
            for s in FeedState::ALL {
                let _ = writeln!(
                    o,
                    "shardcast_forecaster_feed_state{{feed=\"{}\",state=\"{}\"}} {}",
                    sanitize(name),
                    s.as_str(),
                    u8::from(*st == s)
                );
            }
        }
        let _ = writeln!(o, "# HELP shardcast_forecaster_last_cycle_seconds Wall time of the latest cycle.\n# TYPE shardcast_forecaster_last_cycle_seconds gauge\nshardcast_forecaster_last_cycle_seconds {}", l.cycle_ms / 1e3);
        drop(l);
        counter(
            &mut o,
            "shardcast_forecaster_snapshots_written_total",
            "Store snapshots written.",
            self.snapshots_written.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "shardcast_forecaster_snapshot_failures_total",
            "Store snapshots that failed to write.",
            self.snapshot_failures.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "shardcast_forecaster_snapshot_restore_failures_total",
            "Snapshots found corrupt or unreadable at start.",
            self.snapshot_restore_failures.load(Ordering::Relaxed),
        );
        let _ = writeln!(o, "# HELP shardcast_forecaster_snapshot_seconds Time to write a snapshot.\n# TYPE shardcast_forecaster_snapshot_seconds histogram");
        self.snapshot_seconds
            .render(&mut o, "shardcast_forecaster_snapshot_seconds", "");
        o
    }
}

/// The shard manager's table publishing:
/// `shardcast_forecaster_manager_table_refusals_total{target="proxy"|"metadata"}`,
/// tables refused as not newer (a proxy's 409; a newer table, or another
/// one at the same version, in the metadata store). None of them counts as
/// delivered; see `manager::versions`.
pub fn render_manager(o: &mut String, refusals: &crate::manager::versions::Refusals) {
    let (proxy, metadata) = refusals.snapshot();
    let name = "shardcast_forecaster_manager_table_refusals_total";
    let _ = writeln!(
        o,
        "# HELP {name} Table publishes refused as not newer, by target.\n# TYPE {name} counter"
    );
    let _ = writeln!(o, "{name}{{target=\"proxy\"}} {proxy}");
    let _ = writeln!(o, "{name}{{target=\"metadata\"}} {metadata}");
}

/// Leadership (DESIGN.md, "Managers"): `shardcast_forecaster_manager_leader` (1
/// while this manager leads and may write), `shardcast_forecaster_manager_epoch`
/// (its current or last term), `shardcast_forecaster_manager_lease_renew_failures_total`,
/// `shardcast_forecaster_manager_fenced_writes_total` (writes refused because a
/// higher epoch leads), `shardcast_forecaster_manager_step_downs_total`.
pub fn render_lease(o: &mut String, lease: &crate::manager::lease::Lease) {
    use std::sync::atomic::Ordering::Relaxed;
    let v = lease.view();
    let leading = u8::from(v.leader && lease.may_write().is_some());
    let _ = writeln!(
        o,
        "# HELP shardcast_forecaster_manager_leader 1 while this manager holds the lease and writes.\n# TYPE shardcast_forecaster_manager_leader gauge\nshardcast_forecaster_manager_leader {leading}\n\
         # HELP shardcast_forecaster_manager_epoch The epoch (fencing token) of this manager's current or last term.\n# TYPE shardcast_forecaster_manager_epoch gauge\nshardcast_forecaster_manager_epoch {}\n\
         # HELP shardcast_forecaster_manager_lease_renew_failures_total Lease renewals that failed (store unreachable or erroring).\n# TYPE shardcast_forecaster_manager_lease_renew_failures_total counter\nshardcast_forecaster_manager_lease_renew_failures_total {}\n\
         # HELP shardcast_forecaster_manager_fenced_writes_total Writes refused because a higher epoch leads.\n# TYPE shardcast_forecaster_manager_fenced_writes_total counter\nshardcast_forecaster_manager_fenced_writes_total {}\n\
         # HELP shardcast_forecaster_manager_step_downs_total Terms ended: lease lost or a write fenced.\n# TYPE shardcast_forecaster_manager_step_downs_total counter\nshardcast_forecaster_manager_step_downs_total {}",
        v.epoch,
        lease.renew_failures.load(Relaxed),
        lease.fenced_writes.load(Relaxed),
        lease.step_downs.load(Relaxed),
    );
}

/// Sync's finished-order events by outcome (`POST /order-events`).
pub fn render_order_events(o: &mut String, e: &crate::order_events::OrderEvents) {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        o,
        "# HELP shardcast_forecaster_manager_order_events_total Finished-order events pushed by sync, by outcome.\n# TYPE shardcast_forecaster_manager_order_events_total counter\n\
         shardcast_forecaster_manager_order_events_total{{outcome=\"accepted\"}} {}\nshardcast_forecaster_manager_order_events_total{{outcome=\"duplicate\"}} {}\n\
         shardcast_forecaster_manager_order_events_total{{outcome=\"refused\"}} {}",
        e.accepted.load(Relaxed),
        e.duplicates.load(Relaxed),
        e.refused.load(Relaxed),
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
