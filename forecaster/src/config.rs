//! Configuration: serde wire structs (`deny_unknown_fields`, documented
//! defaults) → [`Config`], validated whole (every error collected, each
//! naming the file and field). Relative paths are resolved against the
//! directory of the config file, so the binary runs from anywhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::feeds::{FeedSource, FeedSpec};
use crate::store::Retention;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    listen: String,
    #[serde(default)]
    store: WireStore,
    #[serde(default)]
    persist: Option<WirePersist>,
    model: WireModel,
    #[serde(default)]
    planner: WirePlanner,
    #[serde(default)]
    feeds: WireFeeds,
    #[serde(default)]
    manager: Option<WireManager>,
    #[serde(default)]
    clock: Option<WireClock>,
    #[serde(default)]
    timeouts: WireTimeouts,
    #[serde(default)]
    limits: WireLimits,
}

/// `[timeouts]`: deadlines on the API's client connections. A client that
/// sends nothing, trickles its head or body, idles between requests or
/// does not read is cut off (counted in `/metrics`). Each 1 ms ..= 1 hour.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WireTimeouts {
    /// Accept → first byte of a request, and first byte → end of its head.
    /// Default 10000.
    client_header_ms: u64,
    /// End of the head → the whole body (a telemetry frame). Default 30000.
    client_body_ms: u64,
    /// Idle time between requests on a keep-alive connection. Default 10000.
    client_keepalive_ms: u64,
    /// A response write that makes no progress (the client does not read).
    /// Default 30000.
    client_write_ms: u64,
}

impl Default for WireTimeouts {
    fn default() -> Self {
        WireTimeouts {
            client_header_ms: 10_000,
            client_body_ms: 30_000,
            client_keepalive_ms: 10_000,
            client_write_ms: 30_000,
        }
    }
}

/// `[limits]`: bounds on the API's open client connections; one past a
/// bound is reset at accept. The clients are a few hosts: the proxies'
/// telemetry senders (one keep-alive connection each), their dashboards,
/// operators and Prometheus. 1024 is far above what they hold and still
/// bounds a leak or a flood; per client the same, since one host may run
/// several proxies and refusing it would only hide where a leak is.
/// Each 1 ..= 1000000; per client at most the listener's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WireLimits {
    /// Open connections on the API listener. Default 1024.
    max_connections: usize,
    /// Open connections from one client address (IPv6: one /64). Default 1024.
    max_connections_per_client: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_connections: 1024,
            max_connections_per_client: 1024,
        }
    }
}

/// `[clock]`: replay a recorded trace in compressed time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireClock {
    /// Trace time when the forecaster starts, store-local `YYYY-MM-DD HH:MM:SS`.
    start: String,
    /// Trace seconds per real second.
    speed: f64,
}

/// Replay settings (validated); the clock itself starts with the service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockConfig {
    /// Trace time at start, unix ms (`start` read in `store.timezone`).
    pub start_ms: i64,
    pub speed: f64,
}

/// `[manager]`: the shard manager. Absent → forecasts only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireManager {
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
    #[serde(default = "d_order_timeout_ms")]
    order_timeout_ms: u64,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WireStore {
    second_buckets: usize,
    minute_buckets: usize,
    hour_buckets: usize,
    timezone: String,
    /// Replaced by `timezone`; refused with a message saying so.
    utc_offset_minutes: Option<i32>,
    max_shards: usize,
}

impl Default for WireStore {
    fn default() -> Self {
        let r = Retention::default();
        WireStore {
            second_buckets: r.seconds,
            minute_buckets: r.minutes,
            hour_buckets: r.hours,
            timezone: "UTC".into(),
            utc_offset_minutes: None,
            max_shards: 100_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePersist {
    path: String,
    #[serde(default = "default_snapshot_s")]
    interval_s: u64,
}

fn default_snapshot_s() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireModel {
    hourly: String,
    daily: String,
    #[serde(default)]
    onnxruntime_lib: Option<String>,
    #[serde(default = "one")]
    intra_threads: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WirePlanner {
    cycle_s: f64,
    retry_model_s: u64,
    refresh_budget_ms: u64,
    refresh_catch_up_s: f64,
}

impl Default for WirePlanner {
    fn default() -> Self {
        WirePlanner {
            cycle_s: 10.0,
            retry_model_s: 60,
            refresh_budget_ms: 120,
            refresh_catch_up_s: 1.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireFeeds {
    #[serde(default = "default_refresh")]
    refresh_s: u64,
    history: Option<WireHistory>,
    events: Option<WireFeed>,
    web_traffic: Option<WireFeed>,
    sentiment: Option<WireFeed>,
}

fn default_refresh() -> u64 {
    60
}

// Written out: a derived Default would make a config without `[feeds]`
// fail validation with `refresh_s = 0`.
impl Default for WireFeeds {
    fn default() -> Self {
        WireFeeds {
            refresh_s: default_refresh(),
            history: None,
            events: None,
            web_traffic: None,
            sentiment: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireFeed {
    source: String,
    #[serde(default = "default_max_age")]
    max_age_s: u64,
}

fn default_max_age() -> u64 {
    3600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHistory {
    source: String,
    #[serde(default = "d_id")]
    id_col: String,
    #[serde(default = "d_ds")]
    time_col: String,
    #[serde(default = "d_y")]
    value_col: String,
    #[serde(default)]
    align: HistoryAlign,
}

fn d_id() -> String {
    "series_id".into()
}
fn d_ds() -> String {
    "ds".into()
}
fn d_y() -> String {
    "y".into()
}

/// How seeded history is placed in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryAlign {
    /// Timestamps as written.
    #[default]
    AsIs,
    /// Shifted by whole weeks so the history ends just before now (keeps
    /// hour-of-day and weekday; for demos on old data).
    Now,
}

/// Sales-history seeding.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    pub source: FeedSource,
    pub id_col: String,
    pub time_col: String,
    pub value_col: String,
    pub align: HistoryAlign,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub retention: Retention,
    /// The store's time zone (`store.timezone`): its hours and days are the
    /// series' buckets and the models' calendar.
    pub timezone: crate::time::Zone,
    pub max_shards: usize,
    pub snapshot: Option<(PathBuf, Duration)>,
    pub hourly_contract: PathBuf,
    pub daily_contract: PathBuf,
    pub onnxruntime_lib: Option<PathBuf>,
    pub intra_threads: usize,
    pub cycle: Duration,
    /// Model work per cycle (`planner.refresh_budget_ms`, `refresh_catch_up_s`).
    pub model_budget: crate::engine::RefreshBudget,
    pub retry_model: Duration,
    pub refresh: Duration,
    pub history: Option<HistoryConfig>,
    pub events: Option<FeedSpec>,
    pub covariates: Vec<FeedSpec>,
    pub manager: Option<ManagerConfig>,
    pub clock: Option<ClockConfig>,
    /// Deadlines of the API's client connections (`[timeouts]`).
    pub deadlines: shardcast_edge::Deadlines,
    /// Bounds on the API's open connections (`[limits]`).
    pub limits: shardcast_edge::Limits,
}

/// All problems found in a config file.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn source(base: &Path, s: &str) -> FeedSource {
    if s.starts_with("http://") || s.starts_with("https://") {
        FeedSource::Http(s.to_string())
    } else {
        FeedSource::File(resolve(base, s))
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base, &path.display().to_string())
    }

    /// Validate config text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path, file: &str) -> Result<Config, ConfigErrors> {
        let w: Wire =
            toml::from_str(text).map_err(|e| ConfigErrors(vec![format!("{file}: {e}")]))?;
        let mut errs = Vec::new();
        let mut err = |field: &str, msg: String| errs.push(format!("{file}: {field}: {msg}"));
        let listen = match w.listen.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(e) => {
                err("listen", format!("{:?}: {e}", w.listen));
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let s = &w.store;
        for (f, v, lo, hi) in [
            ("store.second_buckets", s.second_buckets, 60, 86_400),
            ("store.minute_buckets", s.minute_buckets, 60, 366 * 24 * 60),
            ("store.hour_buckets", s.hour_buckets, 24 * 35, 20 * 366 * 24),
            ("store.max_shards", s.max_shards, 1, 10_000_000),
        ] {
            if !(lo..=hi).contains(&v) {
                err(f, format!("{v} not in {lo}..={hi}"));
            }
        }
        if let Some(m) = s.utc_offset_minutes {
            // A fixed offset is an hour off for half the year wherever
            // clocks change; the zone's name carries its rules.
            err(
                "store.utc_offset_minutes",
                format!(
                    "{m}: replaced by store.timezone, an IANA time zone name with its daylight-saving rules (e.g. timezone = \"Europe/London\"; \"UTC\" for none)"
                ),
            );
        }
        let timezone = crate::time::Zone::named(&s.timezone).unwrap_or_else(|e| {
            err("store.timezone", e);
            crate::time::Zone::utc()
        });
        let snapshot = w.persist.as_ref().map(|p| {
            if p.interval_s == 0 {
                err("persist.interval_s", "must be > 0".into());
            }
            if p.path.is_empty() {
                err("persist.path", "empty".into());
            }
            (
                resolve(base, &p.path),
                Duration::from_secs(p.interval_s.max(1)),
            )
        });
        if w.model.intra_threads == 0 || w.model.intra_threads > 64 {
            err(
                "model.intra_threads",
                format!("{} not in 1..=64", w.model.intra_threads),
            );
        }
        if w.planner.refresh_budget_ms > 60_000 {
            err(
                "planner.refresh_budget_ms",
                format!(
                    "{} not in 0..=60000 (0 = no budget: re-run every changed shard at once)",
                    w.planner.refresh_budget_ms
                ),
            );
        }
        if !(w.planner.refresh_catch_up_s >= 0.05 && w.planner.refresh_catch_up_s <= 3600.0) {
            err(
                "planner.refresh_catch_up_s",
                format!("{} not in 0.05..=3600", w.planner.refresh_catch_up_s),
            );
        }
        if !(w.planner.cycle_s >= 0.1 && w.planner.cycle_s <= 3600.0) {
            err(
                "planner.cycle_s",
                format!("{} not in 0.1..=3600", w.planner.cycle_s),
            );
        }
        if w.feeds.refresh_s == 0 {
            err("feeds.refresh_s", "must be > 0".into());
        }
        for (name, f) in [
            ("events", &w.feeds.events),
            ("web_traffic", &w.feeds.web_traffic),
            ("sentiment", &w.feeds.sentiment),
        ] {
            if let Some(f) = f {
                if f.source.is_empty() {
                    err(&format!("feeds.{name}.source"), "empty".into());
                }
                if f.source.starts_with("https://") {
                    err(&format!("feeds.{name}.source"), "https feeds are not supported; use http:// behind a local TLS terminator or a file".into());
                }
            }
        }
        if let Some(h) = &w.feeds.history {
            if h.source.starts_with("http") {
                err(
                    "feeds.history.source",
                    "history seeding reads a file".into(),
                );
            }
        }
        let manager = w.manager.as_ref().map(|m| {
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
                ("manager.memory_cost_ms_per_mb_hour", m.memory_cost_ms_per_mb_hour),
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
                tracing::warn!("manager.health_path is ignored: node health comes from the proxies' checks");
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
        });
        let clock = w.clock.as_ref().and_then(|c| {
            if !(c.speed.is_finite() && c.speed > 0.0 && c.speed <= 1e7) {
                err("clock.speed", format!("{} not in (0, 1e7]", c.speed));
            }
            match crate::time::parse_local(&c.start) {
                Some(local_s) => Some(ClockConfig {
                    start_ms: timezone.instant_ms(local_s),
                    speed: c.speed,
                }),
                None => {
                    err(
                        "clock.start",
                        format!("{:?}: expected YYYY-MM-DD HH:MM:SS", c.start),
                    );
                    None
                }
            }
        });
        let t = &w.timeouts;
        let mut ms = |field: &str, v: u64| {
            if v == 0 || v > 3_600_000 {
                err(
                    &format!("timeouts.{field}"),
                    format!("{v} not between 1 ms and 1 hour"),
                );
            }
            Duration::from_millis(v.clamp(1, 3_600_000))
        };
        let deadlines = shardcast_edge::Deadlines {
            header: ms("client_header_ms", t.client_header_ms),
            body: ms("client_body_ms", t.client_body_ms),
            keepalive: ms("client_keepalive_ms", t.client_keepalive_ms),
            write: ms("client_write_ms", t.client_write_ms),
        };
        let l = &w.limits;
        for (f, v) in [
            ("limits.max_connections", l.max_connections),
            (
                "limits.max_connections_per_client",
                l.max_connections_per_client,
            ),
        ] {
            if v == 0 || v > 1_000_000 {
                err(f, format!("{v} not in 1..=1000000"));
            }
        }
        if l.max_connections_per_client > l.max_connections {
            err(
                "limits.max_connections_per_client",
                format!(
                    "{} exceeds limits.max_connections ({})",
                    l.max_connections_per_client, l.max_connections
                ),
            );
        }
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        let spec = |name: &str, f: &WireFeed| FeedSpec {
            name: name.to_string(),
            source: source(base, &f.source),
            max_age: Duration::from_secs(f.max_age_s),
        };
        Ok(Config {
            listen,
            retention: Retention {
                seconds: s.second_buckets,
                minutes: s.minute_buckets,
                hours: s.hour_buckets,
            },
            timezone,
            max_shards: s.max_shards,
            snapshot,
            hourly_contract: resolve(base, &w.model.hourly),
            daily_contract: resolve(base, &w.model.daily),
            onnxruntime_lib: w
                .model
                .onnxruntime_lib
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|p| resolve(base, p)),
            intra_threads: w.model.intra_threads,
            cycle: Duration::from_secs_f64(w.planner.cycle_s),
            model_budget: crate::engine::RefreshBudget {
                per_cycle: (w.planner.refresh_budget_ms > 0)
                    .then(|| Duration::from_millis(w.planner.refresh_budget_ms)),
                max_rows: None,
                catch_up: Duration::from_secs_f64(w.planner.refresh_catch_up_s),
            },
            retry_model: Duration::from_secs(w.planner.retry_model_s),
            refresh: Duration::from_secs(w.feeds.refresh_s),
            history: w.feeds.history.as_ref().map(|h| HistoryConfig {
                source: source(base, &h.source),
                id_col: h.id_col.clone(),
                time_col: h.time_col.clone(),
                value_col: h.value_col.clone(),
                align: h.align,
            }),
            events: w.feeds.events.as_ref().map(|f| spec("events", f)),
            covariates: [
                ("web_traffic", &w.feeds.web_traffic),
                ("sentiment", &w.feeds.sentiment),
            ]
            .into_iter()
            .filter_map(|(n, f)| f.as_ref().map(|f| spec(n, f)))
            .collect(),
            manager,
            clock,
            deadlines,
            limits: shardcast_edge::Limits {
                max_connections: l.max_connections,
                max_per_client: l.max_connections_per_client,
            },
        })
    }
}
