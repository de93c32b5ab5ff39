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

mod manager;

use manager::WireManager;
pub use manager::{ManagerConfig, Policy};

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
            refresh_budget_ms: 100,
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
        let manager = w
            .manager
            .as_ref()
            .map(|m| manager::validate(m, base, listen, &mut err));
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
