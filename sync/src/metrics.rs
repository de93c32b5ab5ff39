//! Every metric sync exports, in one place (STYLE.md rule 13): atomic
//! counters bumped on the data path, rendered as Prometheus text on
//! `/metrics` by the workspace's one writer ([`shardcast_edge::metrics`]).
//! Label sets are fixed and small.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use shardcast_edge::metrics::{Kind, Writer};

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

    fn render(&self, w: &mut Writer<'_>, name: &str, labels: &[(&str, &str)]) {
        let bounds = self
            .bounds_us
            .iter()
            .map(|b| *b as f64 / 1e6)
            .chain([f64::INFINITY]);
        let counts = self.counts.iter().map(|c| c.load(Relaxed));
        w.histogram(
            name,
            labels,
            bounds.zip(counts),
            self.sum_us.load(Relaxed) as f64 / 1e6,
            self.count.load(Relaxed),
        );
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
    /// Every provider read of the process (the scheduler's deltas and the
    /// in-process nodes' slow path), with the configured wide-area latency.
    pub provider_reads: std::sync::Arc<crate::provider::reads::ProviderReads>,
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
        let l = |c: &AtomicU64| c.load(Relaxed);
        let mut w = Writer::new(out);
        w.counter(
            "shardcast_sync_rows_copied_total",
            "Rows written into node caches.",
            l(&self.rows_copied),
        )
        .counter(
            "shardcast_sync_bytes_copied_total",
            "Bytes written into node caches.",
            l(&self.bytes_copied),
        )
        .counter(
            "shardcast_sync_batches_applied_total",
            "Batches applied atomically.",
            l(&self.batches_applied),
        )
        .counter(
            "shardcast_sync_batches_skipped_total",
            "Batches a cache had already applied (idempotent replays).",
            l(&self.batches_skipped),
        )
        .by_label(
            "shardcast_sync_rows_rejected_total",
            Kind::Counter,
            "Rows not cached.",
            "reason",
            [
                ("oversized", l(&self.rows_rejected_oversized)),
                ("malformed", l(&self.rows_malformed)),
            ],
        )
        .counter(
            "shardcast_sync_provider_errors_total",
            "Failed provider reads (retried).",
            l(&self.provider_errors),
        )
        .counter(
            "shardcast_sync_cache_errors_total",
            "Failed cache writes (retried).",
            l(&self.cache_errors),
        )
        .counter(
            "shardcast_sync_orders_submitted_total",
            "Pre-fetch orders accepted.",
            l(&self.orders_submitted),
        )
        .counter(
            "shardcast_sync_orders_rejected_total",
            "Pre-fetch orders refused (4xx).",
            l(&self.orders_rejected),
        )
        .counter(
            "shardcast_sync_orders_fenced_total",
            "Pre-fetch orders refused for a manager epoch below the highest seen (409).",
            l(&self.orders_fenced),
        )
        .counter(
            "shardcast_sync_orders_done_total",
            "Pre-fetch orders completed.",
            l(&self.orders_done),
        )
        .counter(
            "shardcast_sync_orders_failed_total",
            "Pre-fetch orders cancelled or failed.",
            l(&self.orders_failed),
        )
        .by_label(
            "shardcast_sync_deadlines_total",
            Kind::Counter,
            "Completed orders by deadline outcome.",
            "outcome",
            [
                ("met", l(&self.deadlines_met)),
                ("missed", l(&self.deadlines_missed)),
            ],
        )
        .by_label(
            "shardcast_sync_order_events_total",
            Kind::Counter,
            "Finished-order events pushed to the shard managers, by outcome (per manager).",
            "outcome",
            [
                ("sent", l(&self.order_events_sent)),
                ("retried", l(&self.order_events_retried)),
                ("failed", l(&self.order_events_failed)),
                ("dropped", l(&self.order_events_dropped)),
            ],
        )
        .counter(
            "shardcast_sync_evictions_total",
            "Shards evicted from nodes.",
            l(&self.evictions),
        )
        .counter(
            "shardcast_sync_refreshes_total",
            "Freshness passes over hosted shards.",
            l(&self.refreshes),
        )
        .counter(
            "shardcast_sync_notify_wakeups_total",
            "Wake-ups by provider NOTIFY.",
            l(&self.wakeups_notify),
        )
        .counter(
            "shardcast_sync_budget_wait_seconds_total",
            "Time transfers waited for bandwidth.",
            l(&self.budget_wait_us) as f64 / 1e6,
        )
        .by_label(
            "shardcast_sync_state_writes_total",
            Kind::Counter,
            "Writes of the scheduler state file by outcome.",
            "outcome",
            [
                ("ok", l(&self.state_writes)),
                ("error", l(&self.state_write_errors)),
            ],
        )
        .counter(
            "shardcast_sync_state_file_corrupt_total",
            "State files found unreadable at start (moved aside).",
            l(&self.state_file_corrupt),
        )
        .counter(
            "shardcast_sync_orders_invalidated_total",
            "Reloaded orders cancelled because their shard or node is no longer configured.",
            l(&self.orders_invalidated),
        )
        .counter(
            "shardcast_sync_control_unauthorized_total",
            "Control API requests refused for a missing or wrong bearer token.",
            l(&self.control_unauthorized),
        )
        .family(
            "shardcast_sync_transfer_seconds",
            Kind::Histogram,
            "Duration of completed orders.",
        );
        self.transfer_seconds
            .render(&mut w, "shardcast_sync_transfer_seconds", &[]);
        self.provider_reads.render(out);
    }

    /// The node's metrics, Prometheus text.
    pub fn render_node(&self, out: &mut String) {
        let l = |c: &AtomicU64| c.load(Relaxed);
        let mut w = Writer::new(out);
        w.by_label(
            "shardcast_node_requests_total",
            Kind::Counter,
            "Inventory requests by outcome.",
            "outcome",
            [
                ("hit", l(&self.node_hits)),
                ("miss", l(&self.node_misses)),
                ("not_found", l(&self.node_not_found)),
                ("bad_request", l(&self.node_bad_requests)),
                ("error", l(&self.node_errors)),
            ],
        )
        .counter(
            "shardcast_node_fills_total",
            "Cache fills after a miss.",
            l(&self.node_fills),
        )
        .counter(
            "shardcast_node_cache_errors_total",
            "Cache reads or fills that failed.",
            l(&self.cache_errors),
        )
        .counter(
            "shardcast_node_provider_errors_total",
            "Provider reads that failed.",
            l(&self.provider_errors),
        )
        .family(
            "shardcast_node_request_seconds",
            Kind::Histogram,
            "Inventory request latency by cache result.",
        );
        self.node_latency_hit.render(
            &mut w,
            "shardcast_node_request_seconds",
            &[("cache", "hit")],
        );
        self.node_latency_miss.render(
            &mut w,
            "shardcast_node_request_seconds",
            &[("cache", "miss")],
        );
    }
}
