//! `[manager]`: the shard manager's settings, as written and validated.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::resolve;

/// `[manager]`: the shard manager. Absent → forecasts only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireManager {
    /// The topology file (nodes, shards, thresholds, replication factor)
    /// the proxies and sync read too: one source, one validator
    /// (`shardmap::topology`). Re-read when it changes.
    #[serde(default)]
    topology: Option<String>,
    /// Replaced by `topology`: the manager no longer reads the proxy's
    /// config. Kept only to say so.
    #[serde(default)]
    proxy_config: Option<String>,
    /// Key prefix in the metadata store; the proxies' `[control] prefix`.
    #[serde(default = "d_prefix")]
    prefix: String,
    /// How often the proxies send telemetry (their `[telemetry]
    /// interval_s`): observed load needs at least one frame.
    #[serde(default = "d_telemetry_s")]
    telemetry_interval_s: u64,
    /// The sync scheduler's control API, e.g. `http://127.0.0.1:9910`.
    sync: String,
    /// Bearer token for sync's control API (its `control_token`), sent
    /// with every call to `sync`.
    #[serde(default)]
    sync_token: Option<String>,
    /// Metadata store (`redis://…`), the proxies' `[control] metadata`:
    /// tables, the lease and the proxies' node-health reports.
    #[serde(default)]
    metadata: Option<String>,
    /// Proxy admin URLs that also get each table update by `PUT /admin/table`
    /// (for setups without a metadata store).
    #[serde(default)]
    proxies: Vec<String>,
    #[serde(default)]
    proxy_token: Option<String>,
    #[serde(default = "d_interval_ms")]
    interval_ms: u64,
    /// The leadership lease in the metadata store (DESIGN.md, "Managers"):
    /// renewed every third of it; a leader that cannot renew stops writing
    /// before it ends.
    #[serde(default = "d_lease_ms")]
    lease_ms: u64,
    #[serde(default = "d_churn")]
    churn_budget: usize,
    #[serde(default = "d_quantile")]
    quantile: f32,
    /// What a request served by the provider instead of a cache costs the
    /// storefront, ms: the provider's read latency.
    #[serde(default = "d_miss_cost")]
    miss_cost_ms: f64,
    /// Storefront ms one MB of cache must save per hour to be worth holding
    /// (the price of memory). A forecast copy is held while P(demand
    /// crosses the threshold) × the requests of an hour at it × miss_cost_ms
    /// is at least this × its size; 0 uses the planning quantile instead.
    /// P is the hour in progress's, or the next hour's once an order placed
    /// a round later would be late (planner `Economics::priced`).
    #[serde(default = "d_memory_cost")]
    memory_cost_ms_per_mb_hour: f64,
    #[serde(default = "d_util")]
    max_utilization: f64,
    #[serde(default = "d_ratio")]
    scale_in_ratio: f64,
    /// Requests/s; shards without a threshold in the topology use it.
    /// Default: half the median node capacity.
    #[serde(default)]
    default_threshold_rps: Option<f64>,
    #[serde(default = "d_observe_s")]
    observe_window_s: usize,
    #[serde(default = "d_drain_ms")]
    drain_ms: u64,
    /// An order running this long at sync without finishing, or queued
    /// there while sync moves none of the manager's orders this long, is
    /// cancelled (its warming replica withdrawn).
    #[serde(default = "d_order_timeout_ms")]
    order_timeout_ms: u64,
    /// Pre-fetch orders open at sync at most; the manager holds the rest
    /// back and orders them as room frees, most urgent first. The limit is
    /// lower while sync's measured rate could not finish this many within
    /// half `order_timeout_ms`.
    #[serde(default = "d_orders_in_flight_max")]
    orders_in_flight_max: usize,
    #[serde(default = "d_bandwidth")]
    bandwidth_bytes_per_s: f64,
    /// Ignored: the manager has no health checker of its own; node health
    /// comes from the proxies' checks (their `[health] path`).
    #[serde(default)]
    health_path: Option<String>,
    /// How long reading one proxy's `GET /admin/table` for node health may
    /// take (when there is no metadata store).
    #[serde(default = "d_health_timeout")]
    health_timeout_ms: u64,
    /// A proxy's node-health report older than this is ignored.
    #[serde(default = "d_health_max_age")]
    health_max_age_ms: u64,
    /// Rounds in a row the proxies must report a node failing before its
    /// replicas leave the table.
    #[serde(default = "d_fail_after")]
    fail_after: u32,
    #[serde(default)]
    dry_run: bool,
    /// What predicts demand: `forecast` (the model), `reactive` (observed
    /// demand only), `oracle` (the actual demand in `oracle`, for
    /// benchmarks), `none` (never pre-fetch).
    #[serde(default)]
    policy: Policy,
    /// `shard_id,ds,lines` hourly actuals the oracle policy reads.
    #[serde(default)]
    oracle: Option<String>,
    /// Pre-fetch every replica in the table (true), or only while a shard is
    /// hot, evicting it when it cools (false: nodes fill on miss otherwise).
    #[serde(default = "yes")]
    host_baseline: bool,
    /// Bearer token for the operator endpoints (required when `listen` is
    /// not loopback).
    #[serde(default)]
    admin_token: Option<String>,
}

fn yes() -> bool {
    true
}

/// Where the manager's demand prediction comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    #[default]
    Forecast,
    Reactive,
    Oracle,
    None,
}

fn d_interval_ms() -> u64 {
    2000
}
fn d_lease_ms() -> u64 {
    3000
}
fn d_churn() -> usize {
    2
}
fn d_miss_cost() -> f64 {
    30.0
}
fn d_memory_cost() -> f64 {
    MEMORY_COST_DEFAULT
}
/// Chosen on the replay (benches/replay) over three start weeks
/// (2011-11-07, -14, -21) from 150, 300, 500 and 1000: the price that met
/// the most of "≥ 0.95 of the oracle's warm hit rate in spikes" and "≤ 1.2×
/// its hosted copies" (benches/RESULTS.md).
const MEMORY_COST_DEFAULT: f64 = 150.0;
fn d_quantile() -> f32 {
    0.9
}
fn d_util() -> f64 {
    0.8
}
fn d_ratio() -> f64 {
    0.5
}
fn d_observe_s() -> usize {
    60
}
fn d_drain_ms() -> u64 {
    5000
}
fn d_order_timeout_ms() -> u64 {
    120_000
}
/// One `GET /orders?ids=` call follows them all each round.
fn d_orders_in_flight_max() -> usize {
    shardmap::contract::MAX_BATCH
}
fn d_bandwidth() -> f64 {
    50e6
}
fn d_prefix() -> String {
    "shardcast".into()
}
fn d_telemetry_s() -> u64 {
    1
}
fn d_health_max_age() -> u64 {
    5000
}
fn d_health_timeout() -> u64 {
    500
}
fn d_fail_after() -> u32 {
    2
}

/// The shard manager's settings (validated).
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The topology file (validated at load; re-read by the manager).
    pub topology: PathBuf,
    pub prefix: String,
    pub telemetry_interval: Duration,
    pub sync: String,
    /// The token sync's control API asks for (`None`: none).
    pub sync_token: Option<String>,
    pub metadata: Option<String>,
    pub proxies: Vec<String>,
    pub proxy_token: Option<String>,
    pub interval: Duration,
    pub lease: Duration,
    pub churn_budget: usize,
    pub quantile: f32,
    pub miss_cost_ms: f64,
    pub memory_cost_ms_per_mb_hour: f64,
    pub max_utilization: f64,
    pub scale_in_ratio: f64,
    pub default_threshold_rps: Option<f64>,
    pub observe_window_s: usize,
    pub drain: Duration,
    pub order_timeout: Duration,
    pub orders_in_flight_max: usize,
    pub bandwidth_bytes_per_s: f64,
    pub health_timeout: Duration,
    pub health_max_age: Duration,
    pub fail_after: u32,
    pub dry_run: bool,
    pub policy: Policy,
    pub oracle: Option<PathBuf>,
    pub host_baseline: bool,
    pub admin_token: Option<String>,
}

/// Validate `[manager]`; every problem goes to `err` with its field.
pub(super) fn validate(
    m: &WireManager,
    base: &Path,
    listen: SocketAddr,
    err: &mut impl FnMut(&str, String),
) -> ManagerConfig {
    let http = |v: &str| v.starts_with("http://");
    if !http(&m.sync) {
        err(
            "manager.sync",
            format!("{:?}: expected an http:// URL", m.sync),
        );
    }
    for (i, p) in m.proxies.iter().enumerate() {
        if !http(p) {
            err(
                &format!("manager.proxies[{i}]"),
                format!("{p:?}: expected an http:// URL"),
            );
        }
    }
    if let Some(u) = &m.metadata {
        if let Err(e) = shardmap::contract::store_url::StoreUrl::parse(u) {
            err("manager.metadata", e);
        }
    }
    if m.lease_ms < 300 {
        err("manager.lease_ms", format!("{} is below 300", m.lease_ms));
    }
    if m.interval_ms < 50 {
        err(
            "manager.interval_ms",
            format!("{} is below 50", m.interval_ms),
        );
    }
    for (k, v) in [
        ("manager.miss_cost_ms", m.miss_cost_ms),
        (
            "manager.memory_cost_ms_per_mb_hour",
            m.memory_cost_ms_per_mb_hour,
        ),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            err(k, format!("{v} must be a finite number ≥ 0"));
        }
    }
    if !(m.quantile > 0.0 && m.quantile < 1.0) {
        err("manager.quantile", format!("{} not in (0, 1)", m.quantile));
    }
    if !(m.max_utilization > 0.0 && m.max_utilization <= 1.0) {
        err(
            "manager.max_utilization",
            format!("{} not in (0, 1]", m.max_utilization),
        );
    }
    if !(0.0..=1.0).contains(&m.scale_in_ratio) {
        err(
            "manager.scale_in_ratio",
            format!("{} not in [0, 1]", m.scale_in_ratio),
        );
    }
    if let Some(t) = m.default_threshold_rps {
        if !(t.is_finite() && t > 0.0) {
            err(
                "manager.default_threshold_rps",
                "must be a positive number".into(),
            );
        }
    }
    if !(m.bandwidth_bytes_per_s.is_finite() && m.bandwidth_bytes_per_s > 0.0) {
        err(
            "manager.bandwidth_bytes_per_s",
            "must be a positive number".into(),
        );
    }
    if m.observe_window_s == 0 || m.observe_window_s > 3600 {
        err(
            "manager.observe_window_s",
            format!("{} not in 1..=3600", m.observe_window_s),
        );
    }
    let topology = match (&m.topology, &m.proxy_config) {
        (Some(t), _) => {
            let p = resolve(base, t);
            if let Err(e) = shardmap::Topology::load(&p) {
                for line in e.lines() {
                    err("manager.topology", line);
                }
            }
            p
        }
        (None, Some(_)) => {
            err(
                "manager.proxy_config",
                "replaced by `topology`: name the topology file the proxies' `topology` key names (nodes, shards, replication factor); set `prefix` and `metadata` here".into(),
            );
            PathBuf::new()
        }
        (None, None) => {
            err(
                "manager.topology",
                "required: the topology file (nodes, shards, replication factor) the proxies and sync read".into(),
            );
            PathBuf::new()
        }
    };
    if m.prefix.is_empty() || m.prefix.contains(char::is_whitespace) {
        err("manager.prefix", "must be non-empty without spaces".into());
    }
    if m.telemetry_interval_s == 0 || m.telemetry_interval_s > 3600 {
        err(
            "manager.telemetry_interval_s",
            format!("{} not in 1..=3600", m.telemetry_interval_s),
        );
    }
    if m.health_max_age_ms < 100 {
        err(
            "manager.health_max_age_ms",
            format!("{} is below 100", m.health_max_age_ms),
        );
    }
    if m.health_path.is_some() {
        tracing::warn!(
            "manager.health_path is ignored: node health comes from the proxies' checks"
        );
    }
    if m.policy == Policy::Oracle && m.oracle.is_none() {
        err(
            "manager.oracle",
            "the oracle policy needs the actual demand file".into(),
        );
    }
    if m.fail_after == 0 {
        err("manager.fail_after", "must be at least 1".into());
    }
    if m.orders_in_flight_max == 0 {
        err(
            "manager.orders_in_flight_max",
            "must be at least 1 (orders open at sync at once)".into(),
        );
    }
    if m.order_timeout_ms == 0 {
        err("manager.order_timeout_ms", "must be at least 1".into());
    }
    if !listen.ip().is_loopback() && m.admin_token.as_deref().unwrap_or("").is_empty() {
        err(
            "manager.admin_token",
            "required when `listen` is not a loopback address".into(),
        );
    }
    ManagerConfig {
        topology,
        prefix: m.prefix.clone(),
        telemetry_interval: Duration::from_secs(m.telemetry_interval_s),
        sync: m.sync.trim_end_matches('/').to_string(),
        sync_token: m.sync_token.clone().filter(|t| !t.is_empty()),
        metadata: m.metadata.clone(),
        proxies: m
            .proxies
            .iter()
            .map(|p| p.trim_end_matches('/').to_string())
            .collect(),
        proxy_token: m.proxy_token.clone(),
        interval: Duration::from_millis(m.interval_ms),
        lease: Duration::from_millis(m.lease_ms),
        churn_budget: m.churn_budget,
        quantile: m.quantile,
        miss_cost_ms: m.miss_cost_ms,
        memory_cost_ms_per_mb_hour: m.memory_cost_ms_per_mb_hour,
        max_utilization: m.max_utilization,
        scale_in_ratio: m.scale_in_ratio,
        default_threshold_rps: m.default_threshold_rps,
        observe_window_s: m.observe_window_s,
        drain: Duration::from_millis(m.drain_ms),
        order_timeout: Duration::from_millis(m.order_timeout_ms),
        orders_in_flight_max: m.orders_in_flight_max,
        bandwidth_bytes_per_s: m.bandwidth_bytes_per_s,
        health_timeout: Duration::from_millis(m.health_timeout_ms),
        health_max_age: Duration::from_millis(m.health_max_age_ms),
        fail_after: m.fail_after,
        dry_run: m.dry_run,
        policy: m.policy,
        oracle: m.oracle.as_deref().map(|p| resolve(base, p)),
        host_baseline: m.host_baseline,
        admin_token: m.admin_token.clone().filter(|t| !t.is_empty()),
    }
}
