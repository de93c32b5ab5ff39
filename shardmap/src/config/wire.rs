//! The wire structs: the config file as written, every table rejecting
//! unknown fields, with its documented defaults. (`[control]`'s
//! [`ControlFile`] is in the parent module, beside its validation.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::topology::{NodeFile, ShardFile};

use super::ControlFile;

/// The config file as written. Every table rejects unknown fields so a typo
/// is an error, not a silently ignored setting.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub listen: ListenFile,
    /// The topology file (nodes, shards, replication factor) every process
    /// reads, relative to this file. Without it, `nodes`, `shards` and
    /// `replication_factor` are read inline (older setups).
    #[serde(default)]
    pub topology: Option<String>,
    #[serde(default)]
    pub nodes: Vec<NodeFile>,
    #[serde(default)]
    pub shards: Vec<ShardFile>,
    /// Replicas per shard when a shard does not list its own (default 2).
    #[serde(default)]
    pub replication_factor: Option<usize>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    #[serde(default)]
    pub catalog: CatalogFile,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub retry: RetryFile,
    #[serde(default)]
    pub health: HealthFile,
    #[serde(default)]
    pub telemetry: TelemetryFile,
    #[serde(default)]
    pub control: ControlFile,
    #[serde(default)]
    pub dashboard: DashboardFile,
    /// Add `x-shardcast-shard` and `x-shardcast-node` to responses.
    #[serde(default)]
    pub response_headers: bool,
    /// Upper bound on the size of request headers, bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Plain HTTP listeners (HTTP/1.1 and h2c).
    #[serde(default)]
    pub http: Vec<String>,
    #[serde(default)]
    pub https: Vec<HttpsFile>,
    /// Admin listener: health, metrics, table, reload.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// Bearer token for the admin API; required when `admin` is not loopback.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Worker threads for the data plane.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Seconds SIGTERM waits for in-flight requests before exiting.
    #[serde(default = "default_grace")]
    pub grace_period_s: u64,
}

impl Default for ListenFile {
    fn default() -> Self {
        Self {
            http: vec![],
            https: vec![],
            admin: default_admin(),
            admin_token: None,
            threads: default_threads(),
            grace_period_s: default_grace(),
        }
    }
}

fn default_admin() -> String {
    "127.0.0.1:9901".into()
}
fn default_threads() -> usize {
    1
}
fn default_grace() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsFile {
    pub addr: String,
    /// PEM certificate chain, relative to the config file.
    pub cert: String,
    /// PEM private key, relative to the config file.
    pub key: String,
    /// Offer HTTP/2 by ALPN.
    #[serde(default = "yes")]
    pub h2: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: String,
    /// Path pattern, e.g. `/inventory/{sku}`; `{sku}` and `{region}` capture
    /// one segment, a trailing `*` matches any rest. Literal prefix matching
    /// decides which route a request takes (first match wins).
    pub path: String,
    /// Take the sku from this query parameter instead of the path.
    #[serde(default)]
    pub sku_query: Option<String>,
    /// Take the sku from this header instead of the path.
    #[serde(default)]
    pub sku_header: Option<String>,
    #[serde(default)]
    pub region_query: Option<String>,
    #[serde(default)]
    pub region_header: Option<String>,
    #[serde(default)]
    pub default_region: Option<String>,
    /// What a request without a key gets: `reject` (400) or `default_pool`.
    #[serde(default)]
    pub on_missing_key: MissingKeyFile,
    /// Node names serving keyless requests when `on_missing_key = "default_pool"`.
    #[serde(default)]
    pub default_pool: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingKeyFile {
    #[default]
    Reject,
    DefaultPool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// CSV with a header row; may be gzip-compressed (`.gz`). Relative to
    /// the config file.
    #[serde(default)]
    pub csv: Option<String>,
    #[serde(default = "default_sku_column")]
    pub sku_column: String,
    #[serde(default = "default_category_column")]
    pub category_column: String,
    /// Inline entries, sku → category (small setups and tests).
    #[serde(default)]
    pub skus: BTreeMap<String, String>,
}

impl Default for CatalogFile {
    fn default() -> Self {
        Self {
            csv: None,
            sku_column: default_sku_column(),
            category_column: default_category_column(),
            skus: BTreeMap::new(),
        }
    }
}

fn default_sku_column() -> String {
    "sku".into()
}
fn default_category_column() -> String {
    "category".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    #[serde(default = "d_connect")]
    pub connect_ms: u64,
    #[serde(default = "d_read")]
    pub read_ms: u64,
    #[serde(default = "d_write")]
    pub write_ms: u64,
    /// Idle keep-alive connections to nodes are closed after this.
    #[serde(default = "d_idle")]
    pub upstream_idle_ms: u64,
    /// A TLS client must finish its handshake within this of connecting.
    #[serde(default = "d_handshake")]
    pub client_handshake_ms: u64,
    /// A client must send the first byte of its first request within this
    /// of connecting (or of its TLS handshake), and then the whole request
    /// head within this of its first byte. Also bounds the wait for the
    /// HTTP/2 preface on a new connection.
    #[serde(default = "d_header")]
    pub client_header_ms: u64,
    /// A client must send its complete request body within this of the end
    /// of the head (HTTP/1 and each HTTP/2 stream).
    #[serde(default = "d_body")]
    pub client_body_ms: u64,
    /// Idle time allowed between requests on an HTTP/1 client connection.
    #[serde(default = "d_keepalive")]
    pub client_keepalive_ms: u64,
    /// Idle time allowed on an HTTP/2 client connection with no open stream.
    #[serde(default = "d_keepalive")]
    pub client_h2_idle_ms: u64,
    /// A write to a client that makes no progress (the client does not
    /// read) for this long ends the connection.
    #[serde(default = "d_client_write")]
    pub client_write_ms: u64,
}

fn d_connect() -> u64 {
    1000
}
fn d_read() -> u64 {
    5000
}
fn d_write() -> u64 {
    5000
}
fn d_idle() -> u64 {
    60_000
}
fn d_handshake() -> u64 {
    10_000
}
fn d_header() -> u64 {
    10_000
}
fn d_client_write() -> u64 {
    30_000
}
fn d_body() -> u64 {
    30_000
}
fn d_keepalive() -> u64 {
    10_000
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        Self {
            connect_ms: d_connect(),
            read_ms: d_read(),
            write_ms: d_write(),
            upstream_idle_ms: d_idle(),
            client_handshake_ms: d_handshake(),
            client_header_ms: d_header(),
            client_body_ms: d_body(),
            client_keepalive_ms: d_keepalive(),
            client_h2_idle_ms: d_keepalive(),
            client_write_ms: d_client_write(),
        }
    }
}

/// Bounds on open client connections. A connection past a bound is
/// closed at accept (a TCP reset), before any handshake or buffer.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Open connections per traffic listener (each `listen.http` address and
    /// each `listen.https`). Capped at start to what the open-file limit
    /// leaves room for.
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64) on each traffic
    /// listener. Behind a CDN or an L4 balancer that does not pass client
    /// addresses, raise it to `max_connections`.
    #[serde(default = "d_max_per_client")]
    pub max_connections_per_client: usize,
    /// Open connections on the admin listener (kept apart, so `/live`,
    /// `/ready` and `/metrics` answer while the traffic listeners are full).
    #[serde(default = "d_admin_max_connections")]
    pub admin_max_connections: usize,
}

fn d_max_connections() -> usize {
    10_000
}
fn d_max_per_client() -> usize {
    512
}
fn d_admin_max_connections() -> usize {
    128
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_connections: d_max_connections(),
            max_connections_per_client: d_max_per_client(),
            admin_max_connections: d_admin_max_connections(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Retries per request, each on a different replica.
    #[serde(default = "d_max_retries")]
    pub max_retries: u32,
    /// Retries allowed as a fraction of recent requests (a budget that keeps
    /// retries from multiplying load during an outage).
    #[serde(default = "d_retry_ratio")]
    pub budget_ratio: f64,
    /// Retries always allowed per second regardless of the ratio.
    #[serde(default = "d_retry_min")]
    pub min_per_second: u32,
}

fn d_max_retries() -> u32 {
    2
}
fn d_retry_ratio() -> f64 {
    0.2
}
fn d_retry_min() -> u32 {
    10
}

impl Default for RetryFile {
    fn default() -> Self {
        Self {
            max_retries: d_max_retries(),
            budget_ratio: d_retry_ratio(),
            min_per_second: d_retry_min(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// Path of the active HTTP health check on every node.
    #[serde(default = "d_health_path")]
    pub path: String,
    #[serde(default = "d_health_interval")]
    pub interval_ms: u64,
    #[serde(default = "d_health_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failed requests that eject a node (passive detection).
    #[serde(default = "d_eject_after")]
    pub eject_after_failures: u32,
    /// How long an ejected node stays out before a health check may return it.
    #[serde(default = "d_eject_ms")]
    pub ejection_ms: u64,
}

fn d_health_path() -> String {
    "/health".into()
}
fn d_health_interval() -> u64 {
    1000
}
fn d_health_timeout() -> u64 {
    500
}
fn d_eject_after() -> u32 {
    3
}
fn d_eject_ms() -> u64 {
    2000
}

impl Default for HealthFile {
    fn default() -> Self {
        Self {
            path: d_health_path(),
            interval_ms: d_health_interval(),
            timeout_ms: d_health_timeout(),
            eject_after_failures: d_eject_after(),
            ejection_ms: d_eject_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    /// `http://host:port/path` (the forecaster's ingest endpoint),
    /// `file:PATH` (JSON lines), or absent (telemetry kept for /metrics only).
    #[serde(default)]
    pub sink: Option<String>,
    /// Seconds per frame.
    #[serde(default = "d_tele_interval")]
    pub interval_s: u64,
    /// Hot skus reported per shard per frame.
    #[serde(default = "d_top_k")]
    pub top_k: usize,
    /// Frames buffered while the sink is down; older ones are dropped.
    #[serde(default = "d_tele_queue")]
    pub queue: usize,
}

fn d_tele_interval() -> u64 {
    1
}
fn d_top_k() -> usize {
    8
}
fn d_tele_queue() -> usize {
    64
}

impl Default for TelemetryFile {
    fn default() -> Self {
        Self {
            sink: None,
            interval_s: d_tele_interval(),
            top_k: d_top_k(),
            queue: d_tele_queue(),
        }
    }
}

/// The operator dashboard on the admin listener (`GET /dashboard`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardFile {
    /// Base URL of the forecaster sidecar, `http://host:port`: the dashboard
    /// shows its forecasts, actual demand, pre-fetch orders and placement
    /// decisions. Absent: the dashboard shows the proxy's own view only.
    #[serde(default)]
    pub forecaster: Option<String>,
    /// How long one dashboard refresh waits for the forecaster before
    /// showing it as unreachable.
    #[serde(default = "d_dash_timeout")]
    pub forecaster_timeout_ms: u64,
}

fn d_dash_timeout() -> u64 {
    250
}

impl Default for DashboardFile {
    fn default() -> Self {
        Self {
            forecaster: None,
            forecaster_timeout_ms: d_dash_timeout(),
        }
    }
}
