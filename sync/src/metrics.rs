//! Every metric sync exports, in one place (STYLE.md rule 13): atomic
//! counters bumped on the data path, rendered as Prometheus text on
//! `/metrics`. Label sets are fixed and small.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::model::Reject;

/// Latency histogram with fixed bucket bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds_us: &'static [u64],
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

const LATENCY_BOUNDS_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds_us: LATENCY_BOUNDS_US,
            counts: (0..=LATENCY_BOUNDS_US.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = self.bounds_us.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in self.bounds_us.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cum}",
                *b as f64 / 1e6
            );
        }
        cum += self.counts[self.bounds_us.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count.load(Relaxed));
    }
}

/// Counters shared by the scheduler and the node (each renders its part).
#[derive(Debug, Default)]
pub struct Metrics {
    // order events pushed to the managers (`crate::push`)
    pub order_events_sent: AtomicU64,
    pub order_events_retried: AtomicU64,
    pub order_events_failed: AtomicU64,
    pub order_events_dropped: AtomicU64,
    // transfer path
    pub rows_copied: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub batches_applied: AtomicU64,
    pub batches_skipped: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub rows_rejected_oversized: AtomicU64,
    pub rows_malformed: AtomicU64,
    pub provider_errors: AtomicU64,
    pub cache_errors: AtomicU64,
    pub orders_submitted: AtomicU64,
    pub orders_rejected: AtomicU64,
    pub orders_fenced: AtomicU64,
    pub orders_done: AtomicU64,
    pub orders_failed: AtomicU64,
    pub deadlines_met: AtomicU64,
    pub deadlines_missed: AtomicU64,
    pub evictions: AtomicU64,
    pub refreshes: AtomicU64,
    pub wakeups_notify: AtomicU64,
    pub budget_wait_us: AtomicU64,
    pub transfer_seconds: Histogram,
    // the state file and the control API
    pub state_writes: AtomicU64,
    pub state_write_errors: AtomicU64,
    pub state_file_corrupt: AtomicU64,
    pub orders_invalidated: AtomicU64,
    pub control_unauthorized: AtomicU64,
    // node
    pub node_hits: AtomicU64,
    pub node_misses: AtomicU64,
    pub node_not_found: AtomicU64,
    pub node_bad_requests: AtomicU64,
    pub node_errors: AtomicU64,
    pub node_fills: AtomicU64,
    pub node_latency_hit: Histogram,
    pub node_latency_miss: Histogram,
}

/// Prometheus text for one listener's connections (shardcast-edge's
/// renderer, the names every shardcast process uses): with `prefix` the
/// component's (`shardcast_sync` for the control API, `shardcast_node` for
/// a node), `{prefix}_connections_open`,
/// `{prefix}_connections_accepted_total`,
/// `{prefix}_connections_refused_total{reason="listener"|"client"}`,
/// `{prefix}_connections_closed_total{stage}` (closed by a deadline),
/// `{prefix}_accept_errors_total`, each labelled with the listener, and
/// `{prefix}_open_files_limit`.
pub fn render_listener(out: &mut String, prefix: &str, l: &shardcast_edge::ConnLimiter) {
    shardcast_edge::limit::render_metrics(prefix, &[l], out);
}

fn counter(out: &mut String, name: &str, help: &str, v: &AtomicU64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
        v.load(Relaxed)
    );
}

impl Metrics {
    pub fn row_rejected(&self, why: Reject) {
        self.rows_rejected.fetch_add(1, Relaxed);
        match why {
            Reject::Oversized => self.rows_rejected_oversized.fetch_add(1, Relaxed),
            Reject::Malformed => self.rows_malformed.fetch_add(1, Relaxed),
        };
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// The scheduler's metrics, Prometheus text.
    pub fn render_scheduler(&self, out: &mut String) {
        counter(
            out,
            "shardcast_sync_rows_copied_total",
            "Rows written into node caches.",
            &self.rows_copied,
        );
        counter(
            out,
            "shardcast_sync_bytes_copied_total",
            "Bytes written into node caches.",
            &self.bytes_copied,
        );
        counter(
            out,
            "shardcast_sync_batches_applied_total",
            "Batches applied atomically.",
            &self.batches_applied,
        );
        counter(
            out,
            "shardcast_sync_batches_skipped_total",
            "Batches a cache had already applied (idempotent replays).",
            &self.batches_skipped,
        );
        let _ = writeln!(
            out,
            "# HELP shardcast_sync_rows_rejected_total Rows not cached.\n# TYPE shardcast_sync_rows_rejected_total counter\n\
             shardcast_sync_rows_rejected_total{{reason=\"oversized\"}} {}\n\
             shardcast_sync_rows_rejected_total{{reason=\"malformed\"}} {}",
            self.rows_rejected_oversized.load(Relaxed),
            self.rows_malformed.load(Relaxed)
        );
        counter(
            out,
            "shardcast_sync_provider_errors_total",
            "Failed provider reads (retried).",
            &self.provider_errors,
        );
        counter(
            out,
            "shardcast_sync_cache_errors_total",
            "Failed cache writes (retried).",
            &self.cache_errors,
        );
        counter(
            out,
            "shardcast_sync_orders_submitted_total",
            "Pre-fetch orders accepted.",
            &self.orders_submitted,
        );
        counter(
            out,
            "shardcast_sync_orders_rejected_total",
            "Pre-fetch orders refused (4xx).",
            &self.orders_rejected,
        );
        counter(
            out,
            "shardcast_sync_orders_fenced_total",
            "Pre-fetch orders refused for a manager epoch below the highest seen (409).",
            &self.orders_fenced,
        );
        counter(
            out,
            "shardcast_sync_orders_done_total",
            "Pre-fetch orders completed.",
            &self.orders_done,
        );
        counter(
            out,
            "shardcast_sync_orders_failed_total",
            "Pre-fetch orders cancelled or failed.",
            &self.orders_failed,
        );
        let _ = writeln!(
            out,
            "# HELP shardcast_sync_deadlines_total Completed orders by deadline outcome.\n# TYPE shardcast_sync_deadlines_total counter\n\
             shardcast_sync_deadlines_total{{outcome=\"met\"}} {}\nshardcast_sync_deadlines_total{{outcome=\"missed\"}} {}",
            self.deadlines_met.load(Relaxed),
            self.deadlines_missed.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP shardcast_sync_order_events_total Finished-order events pushed to the shard managers, by outcome (per manager).\n# TYPE shardcast_sync_order_events_total counter\n\
             shardcast_sync_order_events_total{{outcome=\"sent\"}} {}\nshardcast_sync_order_events_total{{outcome=\"retried\"}} {}\n\
             shardcast_sync_order_events_total{{outcome=\"failed\"}} {}\nshardcast_sync_order_events_total{{outcome=\"dropped\"}} {}",
            self.order_events_sent.load(Relaxed),
            self.order_events_retried.load(Relaxed),
            self.order_events_failed.load(Relaxed),
            self.order_events_dropped.load(Relaxed)
        );
        counter(
            out,
            "shardcast_sync_evictions_total",
            "Shards evicted from nodes.",
            &self.evictions,
        );
        counter(
            out,
            "shardcast_sync_refreshes_total",
            "Freshness passes over hosted shards.",
            &self.refreshes,
        );
        counter(
            out,
            "shardcast_sync_notify_wakeups_total",
            "Wake-ups by provider NOTIFY.",
            &self.wakeups_notify,
        );
        let _ = writeln!(
            out,
            "# HELP shardcast_sync_budget_wait_seconds_total Time transfers waited for bandwidth.\n# TYPE shardcast_sync_budget_wait_seconds_total counter\nshardcast_sync_budget_wait_seconds_total {}",
            self.budget_wait_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP shardcast_sync_state_writes_total Writes of the scheduler state file by outcome.\n# TYPE shardcast_sync_state_writes_total counter\n\
             shardcast_sync_state_writes_total{{outcome=\"ok\"}} {}\nshardcast_sync_state_writes_total{{outcome=\"error\"}} {}",
            self.state_writes.load(Relaxed),
            self.state_write_errors.load(Relaxed)
        );
        counter(
            out,
            "shardcast_sync_state_file_corrupt_total",
            "State files found unreadable at start (moved aside).",
            &self.state_file_corrupt,
        );
        counter(
            out,
            "shardcast_sync_orders_invalidated_total",
            "Reloaded orders cancelled because their shard or node is no longer configured.",
            &self.orders_invalidated,
        );
        counter(
            out,
            "shardcast_sync_control_unauthorized_total",
            "Control API requests refused for a missing or wrong bearer token.",
            &self.control_unauthorized,
        );
        let _ = writeln!(
            out,
            "# HELP shardcast_sync_transfer_seconds Duration of completed orders.\n# TYPE shardcast_sync_transfer_seconds histogram"
        );
        self.transfer_seconds
            .render(out, "shardcast_sync_transfer_seconds", "");
    }

    /// The node's metrics, Prometheus text.
    pub fn render_node(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP shardcast_node_requests_total Inventory requests by outcome.\n# TYPE shardcast_node_requests_total counter\n\
             shardcast_node_requests_total{{outcome=\"hit\"}} {}\nshardcast_node_requests_total{{outcome=\"miss\"}} {}\n\
             shardcast_node_requests_total{{outcome=\"not_found\"}} {}\nshardcast_node_requests_total{{outcome=\"bad_request\"}} {}\n\
             shardcast_node_requests_total{{outcome=\"error\"}} {}",
            self.node_hits.load(Relaxed),
            self.node_misses.load(Relaxed),
            self.node_not_found.load(Relaxed),
            self.node_bad_requests.load(Relaxed),
            self.node_errors.load(Relaxed)
        );
        counter(
            out,
            "shardcast_node_fills_total",
            "Cache fills after a miss.",
            &self.node_fills,
        );
        counter(
            out,
            "shardcast_node_cache_errors_total",
            "Cache reads or fills that failed.",
            &self.cache_errors,
        );
        counter(
            out,
            "shardcast_node_provider_errors_total",
            "Provider reads that failed.",
            &self.provider_errors,
        );
        let _ = writeln!(
            out,
            "# HELP shardcast_node_request_seconds Inventory request latency by cache result.\n# TYPE shardcast_node_request_seconds histogram"
        );
        self.node_latency_hit
            .render(out, "shardcast_node_request_seconds", "cache=\"hit\"");
        self.node_latency_miss
            .render(out, "shardcast_node_request_seconds", "cache=\"miss\"");
    }
}
