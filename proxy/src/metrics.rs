//! Every metric the proxy exports, by name, rendered as Prometheus text.
//! Labels are bounded: node names and shard ids come from config. The
//! per-shard families name only the shards that have seen a request since
//! start (a shard absent from them has every counter at 0): at 10k shards
//! a line for every shard would be ~17 MB of zeros per scrape, where this
//! follows the shards that take traffic.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use shardcast_edge::metrics::{Kind, Writer};

use crate::node::{now_ms, NodeRuntime};
use crate::state::Shared;
use crate::telemetry::ShardStats;

pub const REQUESTS: &str = "shardcast_requests_total";
pub const REJECTED: &str = "shardcast_rejected_total";
pub const RETRIES: &str = "shardcast_retries_total";
pub const RETRIES_DENIED: &str = "shardcast_retries_denied_total";
pub const NO_REPLICA: &str = "shardcast_no_replica_total";
pub const CLIENT_ABORTED: &str = "shardcast_client_aborted_total";
/// Prefix of the listener families (`shardcast_connections_*`, see
/// `shardcast_edge::limit::render_metrics`) and of the background loops'
/// (`shardcast_task_*`).
pub const PREFIX: &str = "shardcast";
pub const NODE_REQUESTS: &str = "shardcast_node_requests_total";
pub const NODE_ERRORS: &str = "shardcast_node_errors_total";
pub const NODE_CONNECT_FAILURES: &str = "shardcast_node_connect_failures_total";
pub const NODE_RETRIES: &str = "shardcast_node_retries_total";
pub const NODE_EJECTIONS: &str = "shardcast_node_ejections_total";
pub const NODE_IN_FLIGHT: &str = "shardcast_node_in_flight";
pub const NODE_HEALTHY: &str = "shardcast_node_healthy";
pub const SHARD_REQUESTS: &str = "shardcast_shard_requests_total";
pub const SHARD_ERRORS: &str = "shardcast_shard_errors_total";
pub const SHARD_CACHE: &str = "shardcast_shard_cache_total";
pub const SHARD_BYTES: &str = "shardcast_shard_response_bytes_total";
pub const SHARD_LATENCY: &str = "shardcast_shard_latency_seconds";
pub const TABLE_ASSIGNMENT_EPOCH: &str = "shardcast_table_assignment_epoch";
pub const TABLE_ASSIGNMENT_COUNTER: &str = "shardcast_table_assignment_counter";
pub const CONFIG_GENERATION: &str = "shardcast_config_generation";
pub const TABLE_SKUS: &str = "shardcast_table_skus";
pub const RELOADS: &str = "shardcast_config_reloads_total";
pub const UPDATES: &str = "shardcast_table_updates_total";
pub const UPDATE_APPLY: &str = "shardcast_table_update_apply_seconds";
pub const TELEMETRY_FRAMES: &str = "shardcast_telemetry_frames_total";
pub const METADATA: &str = "shardcast_metadata_total";

/// Latency histogram bounds, µs.
const BOUNDS_US: [u64; 14] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// Time to apply a table update from the shard manager: from the decoded
/// update to the new snapshot serving (the table built against the running
/// config, the snapshot built, the swap). Buckets as the request latency's.
#[derive(Debug, Default)]
pub struct ApplyTimes {
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl ApplyTimes {
    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let i = BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BOUNDS_US.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, w: &mut Writer) {
        let own: Vec<(f64, u64)> = BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        let n = own.iter().map(|(_, c)| c).sum();
        w.family(
            UPDATE_APPLY,
            Kind::Histogram,
            "Applying a table update: from the decoded update to the new snapshot serving.",
        );
        w.histogram(
            UPDATE_APPLY,
            &[],
            own,
            self.sum_us.load(Relaxed) as f64 / 1e6,
            n,
        );
    }
}

/// A counter family: one line per `(label value, counter)`; an empty label
/// name writes the bare metric.
fn family(w: &mut Writer, name: &str, help: &str, label: &str, values: &[(&str, &AtomicU64)]) {
    w.family(name, Kind::Counter, help);
    for (v, c) in values {
        if label.is_empty() {
            w.sample(name, &[], c.load(Relaxed));
        } else {
            w.sample(name, &[(label, v)], c.load(Relaxed));
        }
    }
}

/// Counter values with the label value each is written under.
type Labelled<'a> = &'a [(&'a str, &'a AtomicU64)];
/// (name, help, label name, values) of a counter family.
type CounterFamily<'a> = (&'a str, &'a str, &'a str, Labelled<'a>);
/// (name, kind, help, value) of a per-node or per-shard family.
type Family<T> = (&'static str, Kind, &'static str, T);
type NodeValue = fn(&NodeRuntime, u64) -> u64;
type ShardValue = fn(&ShardStats) -> u64;

/// The shards of `snap` that have seen a request (the per-shard series).
fn seen(snap: &crate::snapshot::Snapshot) -> impl Iterator<Item = &ShardStats> {
    snap.stats.iter().map(|s| &**s).filter(|s| s.seen())
}

/// Render all metrics.
pub fn render(shared: &Shared) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let c = &shared.counters;
    let snap = shared.current();

    let counters: [CounterFamily; 6] = [
        (REQUESTS, "Requests received.", "", &[("", &c.requests)]),
        (
            REJECTED,
            "Requests answered by the proxy itself, by reason.",
            "reason",
            &[
                ("no_key", &c.rejected_no_key),
                ("bad_request", &c.rejected_bad_request),
            ],
        ),
        (
            RETRIES,
            "Requests retried on another replica.",
            "",
            &[("", &c.retries)],
        ),
        (
            RETRIES_DENIED,
            "Retries refused by the retry budget.",
            "",
            &[("", &c.retries_denied)],
        ),
        (
            NO_REPLICA,
            "Requests with no replica left to try.",
            "",
            &[("", &c.no_replica)],
        ),
        (
            CLIENT_ABORTED,
            "Requests whose client hung up or failed before the answer was delivered (never retried, never charged to a node).",
            "",
            &[("", &c.client_aborted)],
        ),
    ];
    let mut w = Writer::new(&mut o);
    for (name, help, label, values) in counters {
        family(&mut w, name, help, label, values);
    }

    let mut listeners: Vec<&shardcast_edge::ConnLimiter> =
        shared.edge.traffic.iter().map(|l| &**l).collect();
    listeners.push(&shared.edge.admin);
    shardcast_edge::limit::render_metrics(PREFIX, &listeners, &mut o);
    shared.tasks.render_metrics(PREFIX, &mut o);

    let now = now_ms();
    let nodes = &snap.nodes;
    let node_families: [Family<NodeValue>; 7] = [
        (
            NODE_REQUESTS,
            Kind::Counter,
            "Requests sent to a node (attempts).",
            |n, _| n.counters.requests.load(Relaxed),
        ),
        (
            NODE_ERRORS,
            Kind::Counter,
            "Failed attempts on a node (connect errors, 502/503/504, broken connections).",
            |n, _| n.counters.errors.load(Relaxed),
        ),
        (
            NODE_CONNECT_FAILURES,
            Kind::Counter,
            "Connect failures to a node.",
            |n, _| n.counters.connect_failures.load(Relaxed),
        ),
        (
            NODE_RETRIES,
            Kind::Counter,
            "Retries that moved away from a node.",
            |n, _| n.counters.retries.load(Relaxed),
        ),
        (
            NODE_EJECTIONS,
            Kind::Counter,
            "Passive ejections of a node.",
            |n, _| n.counters.ejections.load(Relaxed),
        ),
        (
            NODE_IN_FLIGHT,
            Kind::Gauge,
            "Requests in flight to a node.",
            |n, _| n.in_flight(),
        ),
        (
            NODE_HEALTHY,
            Kind::Gauge,
            "1 when the node is in rotation.",
            |n, now| u64::from(n.usable(now)),
        ),
    ];
    let mut w = Writer::new(&mut o);
    for (name, kind, help, value) in node_families {
        w.by_label(
            name,
            kind,
            help,
            "node",
            nodes.iter().map(|n| (&n.name, value(n, now))),
        );
    }

    let shard_families: [Family<ShardValue>; 3] = [
        (
            SHARD_REQUESTS,
            Kind::Counter,
            "Requests routed to a shard.",
            |s| s.requests.load(Relaxed),
        ),
        (
            SHARD_ERRORS,
            Kind::Counter,
            "Requests to a shard that failed (5xx or no response).",
            |s| s.errors.load(Relaxed),
        ),
        (
            SHARD_BYTES,
            Kind::Counter,
            "Response body bytes sent, per shard.",
            |s| s.bytes.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in shard_families {
        w.by_label(
            name,
            kind,
            help,
            "shard",
            seen(&snap).map(|s| (&s.id, value(s))),
        );
    }
    w.family(
        SHARD_CACHE,
        Kind::Counter,
        "Node cache results reported by x-cache, per shard.",
    );
    for s in seen(&snap) {
        for (result, v) in [("hit", &s.cache_hits), ("miss", &s.cache_misses)] {
            w.sample(
                SHARD_CACHE,
                &[("shard", &s.id), ("result", result)],
                v.load(Relaxed),
            );
        }
    }
    w.family(
        SHARD_LATENCY,
        Kind::Histogram,
        "Request latency per shard (as of the last telemetry interval).",
    );
    for s in seen(&snap) {
        let (cumulative, n, sum_us) = s.cumulative_buckets(&BOUNDS_US);
        // The writer takes each bucket's own count and adds them up again.
        let mut below = 0;
        let mut own: Vec<(f64, u64)> = Vec::with_capacity(BOUNDS_US.len() + 1);
        for (b, c) in BOUNDS_US.iter().zip(cumulative) {
            own.push((*b as f64 / 1e6, c - below));
            below = c;
        }
        own.push((f64::INFINITY, n - below));
        w.histogram(SHARD_LATENCY, &[("shard", &s.id)], own, sum_us / 1e6, n);
    }

    let v = snap.table.assignment_version;
    w.gauge(
        TABLE_ASSIGNMENT_EPOCH,
        "Epoch of the shard manager's assignment in the table (0 before the first).",
        v.epoch,
    )
    .gauge(
        TABLE_ASSIGNMENT_COUNTER,
        "Counter of the shard manager's assignment in the table, within its epoch.",
        v.counter,
    )
    .gauge(
        CONFIG_GENERATION,
        "Config generation of the table: 1 at start, one more per applied reload.",
        snap.table.config_generation,
    )
    .gauge(
        TABLE_SKUS,
        "Skus in the catalog in use.",
        snap.table.catalog.len(),
    );
    let (e, m) = (&shared.export, &shared.metadata);
    let by_result: [(&str, &str, Labelled); 4] = [
        (
            RELOADS,
            "Config reloads by result.",
            &[("ok", &c.reloads_ok), ("failed", &c.reloads_failed)],
        ),
        (
            UPDATES,
            "Table updates from the shard manager by result.",
            &[("ok", &c.updates_ok), ("rejected", &c.updates_rejected)],
        ),
        (
            TELEMETRY_FRAMES,
            "Telemetry frames by result.",
            &[
                ("sent", &e.frames_sent),
                ("dropped", &e.frames_dropped),
                ("send_error", &e.send_errors),
            ],
        ),
        (
            METADATA,
            "Metadata store: tables applied and errors.",
            &[("applied", &m.applied), ("error", &m.errors)],
        ),
    ];
    for (name, help, values) in by_result {
        family(&mut w, name, help, "result", values);
    }
    c.update_apply.render(&mut w);
    o
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::Ordering::Relaxed;

    use shardcast_edge::metrics::parse_strict;

    use crate::telemetry::Outcome;

    /// The proxy's `/metrics` over a fixed state, as rendered before every
    /// line went through the one writer. The process's open-file limit is
    /// the machine's, so its value is left out.
    const GOLDEN: &str = include_str!("../tests/data/metrics.prom");

    const CONFIG: &str = "replication_factor = 1\n[listen]\nhttp = [\"127.0.0.1:1\"]\n\
        [[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[nodes]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n\
        [[shards]]\nid = \"UK/SEASONAL\"\ncategories = [\"SEASONAL\"]\nregions = [\"UK\"]\nreplicas = [\"a\"]\n\
        [[shards]]\nid = \"UK/LIGHTING\"\ncategories = [\"LIGHTING\"]\nregions = [\"UK\"]\nreplicas = [\"b\"]\n\
        [[routes]]\nname = \"r\"\npath = \"/i/{sku}\"\n";

    fn fixed_state() -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let s = crate::run::shared_for_tests(Path::new(&path)).unwrap();
        let c = &s.counters;
        for (i, n) in [
            &c.requests,
            &c.rejected_no_key,
            &c.rejected_bad_request,
            &c.retries,
            &c.retries_denied,
            &c.no_replica,
            &c.client_aborted,
            &c.reloads_ok,
            &c.reloads_failed,
            &c.updates_ok,
            &c.updates_rejected,
            &s.export.frames_sent,
            &s.export.frames_dropped,
            &s.export.send_errors,
            &s.metadata.applied,
            &s.metadata.errors,
        ]
        .into_iter()
        .enumerate()
        {
            n.fetch_add(i as u64 + 1, Relaxed);
        }
        for us in [700, 3_000, 40_000] {
            c.update_apply.observe(std::time::Duration::from_micros(us));
        }
        let l = &s.edge.traffic[0].counters;
        for (i, n) in [
            &l.accepted,
            &l.refused_listener,
            &l.refused_client,
            &l.closed_idle,
            &l.closed_header,
            &l.closed_body,
            &l.closed_handshake,
            &l.closed_write,
            &l.accept_errors,
        ]
        .into_iter()
        .enumerate()
        {
            n.fetch_add(100 + i as u64, Relaxed);
        }
        let snap = s.current();
        for (i, n) in snap.nodes.iter().enumerate() {
            let k = 10 * (i as u64 + 1);
            n.counters.requests.fetch_add(k + 1, Relaxed);
            n.counters.errors.fetch_add(k + 2, Relaxed);
            n.counters.connect_failures.fetch_add(k + 3, Relaxed);
            n.counters.retries.fetch_add(k + 4, Relaxed);
            n.counters.ejections.fetch_add(k + 5, Relaxed);
        }
        for (i, st) in snap.stats.iter().enumerate() {
            for (j, us) in [100u64, 700, 3_000, 40_000, 2_000_000, 20_000_000]
                .into_iter()
                .enumerate()
            {
                st.record(Outcome {
                    sku: b"X1",
                    error: j % 3 == i,
                    cache_hit: [Some(true), Some(false), None][(i + j) % 3],
                    bytes: 1000 * (j as u64 + 1) + i as u64,
                    latency_us: us * (i as u64 + 1),
                });
            }
            // The latency histogram is as of the last telemetry export.
            let _ = st.take_sample(4);
        }
        super::render(&s)
    }

    fn without_fd_limit(text: &str) -> Vec<String> {
        let mut v: Vec<String> = parse_strict(text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
            .into_iter()
            .filter(|(name, _, _)| !name.ends_with("_open_files_limit"))
            .map(|(name, labels, value)| format!("{name} {labels:?} {value}"))
            .collect();
        v.sort();
        v
    }

    /// A shard without requests has no per-shard series; its first request
    /// brings them.
    #[test]
    fn only_shards_with_traffic_have_per_shard_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let s = crate::run::shared_for_tests(Path::new(&path)).unwrap();
        let text = super::render(&s);
        parse_strict(&text).unwrap();
        assert!(!text.contains("shard=\""), "{text}");
        let snap = s.current();
        let lighting = snap.stats.iter().find(|st| st.id == "UK/LIGHTING").unwrap();
        lighting.record(Outcome {
            sku: b"X1",
            error: false,
            cache_hit: Some(true),
            bytes: 10,
            latency_us: 800,
        });
        let _ = lighting.take_sample(4);
        let text = super::render(&s);
        parse_strict(&text).unwrap();
        for series in [
            "shardcast_shard_requests_total{shard=\"UK/LIGHTING\"} 1",
            "shardcast_shard_latency_seconds_bucket{shard=\"UK/LIGHTING\",le=\"0.001\"} 1",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        assert!(!text.contains("UK/SEASONAL"), "{text}");
    }

    #[test]
    fn metrics_over_a_fixed_state_are_the_golden_samples_and_strict_prometheus_text() {
        let text = fixed_state();
        if std::env::var_os("SHARDCAST_WRITE_GOLDEN").is_some() {
            std::fs::write(
                std::path::Path::new(
                    &std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"),
                )
                .join("tests/data/metrics.prom"),
                &text,
            )
            .unwrap();
        }
        assert_eq!(without_fd_limit(&text), without_fd_limit(GOLDEN));
        // Some of every kind of family are there, with non-zero values.
        for series in [
            "shardcast_requests_total 1",
            "shardcast_node_ejections_total{node=\"b\"} 25",
            "shardcast_shard_cache_total{shard=\"UK/LIGHTING\",result=\"miss\"}",
            "shardcast_shard_latency_seconds_bucket{shard=\"UK/SEASONAL\",le=\"+Inf\"} 6",
            "shardcast_connections_closed_total{listener=\"http 127.0.0.1:1\",stage=\"write\"} 107",
            "shardcast_metadata_total{result=\"error\"} 16",
            "shardcast_table_update_apply_seconds_bucket{le=\"0.005\"} 2",
            "shardcast_table_update_apply_seconds_count 3",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }
}
