//! Configuration: serde wire structs (what the TOML file says) and the
//! validated model (what the rest of shardcast is built from).
//!
//! Three layers, as in STYLE.md rule 5: [`ConfigFile`] mirrors the file and
//! rejects unknown fields; [`Config::from_toml`] checks it whole, collecting
//! every problem with its field path into [`ConfigErrors`]; the proxy then
//! builds runtime objects (the routing table, listeners) from [`Config`].
//! Nothing here reads files except through the `load_*` helpers, which take
//! the directory relative paths are resolved against.
//!
//! Nodes, shards and the replication factor are the topology
//! ([`crate::topology`]): read from the file `topology` names (the one
//! sync and the shard manager read too), or inline in older configs; the
//! same validator either way, its results in [`Config::nodes`],
//! [`Config::shards`] and [`Config::replication_factor`].

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::key::{KeySource, PathPattern, RegionSource};
pub(crate) use crate::topology::default_replication_factor;
pub use crate::topology::{
    auto_assign, NodeFile, NodeSpec, ShardFile, ShardRuleFile, ShardSpec, Topology, TopologyFile,
    Volatility,
};

/// One problem found in a config, named by its field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `shards[2].regions[0]`.
    pub field: String,
    pub message: String,
}

/// Every problem found in one config file; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file the errors are about (or `<inline>`).
    pub file: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} error(s)", self.file, self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  {}: {}: {}", self.file, e.field, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// A config file's text, or the error that it cannot be read.
    pub fn read(path: &Path) -> Result<String, ConfigErrors> {
        std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.display().to_string(),
            errors: vec![FieldError {
                field: "<file>".into(),
                message: format!("cannot read: {e}"),
            }],
        })
    }

    /// The errors as `field: message` lines, for JSON admin responses.
    pub fn lines(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|e| format!("{}: {}: {}", self.file, e.field, e.message))
            .collect()
    }
}

#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------
// Wire structs
// ---------------------------------------------------------------------------

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

/// Where the shard manager publishes table updates (the metadata store).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlFile {
    /// `redis://host:port/db` or `redis+cluster://host:port,host:port…`:
    /// follow the table published there (every proxy converges on the same
    /// version). Absent: config and `PUT /admin/table` only.
    #[serde(default)]
    pub metadata: Option<String>,
    /// Key prefix: the table lives at `<prefix>:table`, change
    /// notifications on channel `<prefix>:table:changed`. On a cluster the
    /// prefix is put in a hash tag (`{shardcast}`) unless it holds one.
    #[serde(default = "d_prefix")]
    pub prefix: String,
    /// Re-read the table this often even without a notification (a proxy
    /// that missed a message catches up).
    #[serde(default = "d_poll")]
    pub poll_ms: u64,
}

fn d_prefix() -> String {
    "shardcast".into()
}
fn d_poll() -> u64 {
    1000
}

impl Default for ControlFile {
    fn default() -> Self {
        Self {
            metadata: None,
            prefix: d_prefix(),
            poll_ms: d_poll(),
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

// ---------------------------------------------------------------------------
// Validated model
// ---------------------------------------------------------------------------

/// A validated configuration. Built only by [`Config::from_toml`] (or
/// [`Config::load`]), so every field is known to be consistent.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages and reload).
    pub source: PathBuf,
    pub listen: Listen,
    /// The topology file, when `topology` names one (watched for reloads).
    pub topology: Option<PathBuf>,
    pub nodes: Vec<NodeSpec>,
    pub shards: Vec<ShardSpec>,
    pub replication_factor: usize,
    pub routes: Vec<Route>,
    pub catalog: CatalogSource,
    pub timeouts: Timeouts,
    pub limits: LimitsFile,
    pub retry: RetryFile,
    pub health: Health,
    pub telemetry: Telemetry,
    pub control: ControlFile,
    pub dashboard: Dashboard,
    pub response_headers: bool,
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub http: Vec<SocketAddr>,
    pub https: Vec<Https>,
    pub admin: SocketAddr,
    pub admin_token: Option<String>,
    pub threads: usize,
    pub grace_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Https {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub h2: bool,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub pattern: PathPattern,
    pub sku: KeySource,
    pub region: RegionSource,
    pub default_region: Option<String>,
    pub on_missing_key: MissingKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingKey {
    Reject,
    /// Node names.
    DefaultPool(Vec<String>),
}

#[derive(Debug, Clone, Default)]
pub struct CatalogSource {
    pub csv: Option<PathBuf>,
    pub sku_column: String,
    pub category_column: String,
    pub inline: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub upstream_idle: Duration,
    pub client_handshake: Duration,
    pub client_header: Duration,
    pub client_body: Duration,
    pub client_keepalive: Duration,
    pub client_h2_idle: Duration,
    pub client_write: Duration,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub eject_after_failures: u32,
    pub ejection: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelemetrySink {
    None,
    Http(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dashboard {
    /// Forecaster base URL without a trailing `/` (`http://host:port`).
    pub forecaster: Option<String>,
    pub forecaster_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Telemetry {
    pub sink: TelemetrySink,
    pub interval: Duration,
    pub top_k: usize,
    pub queue: usize,
}

impl Config {
    /// Read, parse and validate a config file; relative paths in it are
    /// resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = ConfigErrors::read(path)?;
        Self::from_toml(&text, path)
    }

    /// Parse and validate config text as if read from `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let file_name = path.display().to_string();
        let wire: ConfigFile = parse_toml(text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        wire.validate(base)
            .map_err(|errors| ConfigErrors {
                file: file_name.clone(),
                errors,
            })
            .map(|mut c| {
                c.source = path.to_path_buf();
                c
            })
    }

    /// Index of a node by name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

/// Parse TOML into a wire struct; a syntax error or unknown field is one
/// error naming its line.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        let field = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!("line {line}")
            })
            .unwrap_or_else(|| "<toml>".into());
        ConfigErrors {
            file: path.display().to_string(),
            errors: vec![FieldError {
                field,
                message: e.message().to_string(),
            }],
        }
    })
}

fn parse_addr(errs: &mut Errors, field: &str, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(e) => {
            errs.push(field, format!("`{s}` is not an ip:port address ({e})"));
            None
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl ConfigFile {
    /// Check the whole file, collecting every error.
    pub fn validate(self, base: &Path) -> Result<Config, Vec<FieldError>> {
        let mut errs = Errors::default();
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        // listeners
        let http: Vec<SocketAddr> = self
            .listen
            .http
            .iter()
            .enumerate()
            .filter_map(|(i, a)| parse_addr(&mut errs, &format!("listen.http[{i}]"), a))
            .collect();
        let mut https = vec![];
        for (i, h) in self.listen.https.iter().enumerate() {
            if let Some(addr) = parse_addr(&mut errs, &format!("listen.https[{i}].addr"), &h.addr) {
                https.push(Https {
                    addr,
                    cert: resolve(&h.cert),
                    key: resolve(&h.key),
                    h2: h.h2,
                });
            }
        }
        if http.is_empty() && https.is_empty() {
            errs.push(
                "listen",
                "no `http` or `https` listener: nothing would serve traffic",
            );
        }
        let mut seen_addr = HashSet::new();
        for a in http.iter().chain(https.iter().map(|h| &h.addr)) {
            if !seen_addr.insert(*a) {
                errs.push("listen", format!("address {a} is used twice"));
            }
        }
        let admin = parse_addr(&mut errs, "listen.admin", &self.listen.admin);
        if let Some(a) = admin {
            if !a.ip().is_loopback() && self.listen.admin_token.as_deref().unwrap_or("").is_empty()
            {
                errs.push(
                    "listen.admin_token",
                    format!("admin listener {a} is not loopback: a bearer token is required"),
                );
            }
            if seen_addr.contains(&a) {
                errs.push(
                    "listen.admin",
                    format!("address {a} is also a traffic listener"),
                );
            }
        }
        if self.listen.threads == 0 || self.listen.threads > 256 {
            errs.push("listen.threads", "must be between 1 and 256");
        }

        // topology: nodes, shards, replication factor — from the file
        // `topology` names, or inline (one validator either way)
        let inline =
            !self.nodes.is_empty() || !self.shards.is_empty() || self.replication_factor.is_some();
        let (topology, topology_file) = match &self.topology {
            Some(t) => {
                if inline {
                    errs.push(
                        "topology",
                        "nodes, shards and replication_factor come from the topology file: \
                         remove the inline [[nodes]], [[shards]] and replication_factor, or `topology`",
                    );
                }
                let p = resolve(t);
                match Topology::load(&p) {
                    Ok(t) => (t, Some(p)),
                    Err(e) => {
                        for line in e.lines() {
                            errs.push("topology", line);
                        }
                        (Topology::empty(), Some(p))
                    }
                }
            }
            None => {
                let file = TopologyFile {
                    replication_factor: self
                        .replication_factor
                        .unwrap_or_else(default_replication_factor),
                    nodes: self.nodes.clone(),
                    shards: self.shards.clone(),
                    shard_rules: vec![],
                };
                (file.check(&mut errs), None)
            }
        };
        let node_names: HashSet<&str> = topology.nodes.iter().map(|n| n.name.as_str()).collect();

        // routes
        let mut routes = vec![];
        let mut route_names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let f = format!("routes[{i}]");
            if !route_names.insert(r.name.as_str()) {
                errs.push(
                    format!("{f}.name"),
                    format!("route `{}` is defined twice", r.name),
                );
            }
            let pattern = match PathPattern::parse(&r.path) {
                Ok(p) => Some(p),
                Err(m) => {
                    errs.push(format!("{f}.path"), m);
                    None
                }
            };
            let sku_sources = [r.sku_query.is_some(), r.sku_header.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            let path_has_sku = pattern.as_ref().is_some_and(|p| p.has_sku());
            if sku_sources > 1 || (sku_sources == 1 && path_has_sku) {
                errs.push(
                    f.clone(),
                    "take the sku from one place only: `{sku}` in path, `sku_query` or `sku_header`",
                );
            }
            if sku_sources == 0 && !path_has_sku && pattern.is_some() {
                errs.push(
                    format!("{f}.path"),
                    "no sku source: put `{sku}` in the path or set `sku_query` / `sku_header`",
                );
            }
            let sku = if let Some(q) = &r.sku_query {
                KeySource::Query(q.clone())
            } else if let Some(h) = &r.sku_header {
                KeySource::Header(h.to_ascii_lowercase())
            } else {
                KeySource::Path
            };
            let path_has_region = pattern.as_ref().is_some_and(|p| p.has_region());
            let region_sources = [
                r.region_query.is_some(),
                r.region_header.is_some(),
                path_has_region,
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if region_sources > 1 {
                errs.push(
                    f.clone(),
                    "take the region from one place only: `{region}` in path, `region_query` or `region_header`",
                );
            }
            let region = if let Some(q) = &r.region_query {
                RegionSource::Query(q.clone())
            } else if let Some(h) = &r.region_header {
                RegionSource::Header(h.to_ascii_lowercase())
            } else if path_has_region {
                RegionSource::Path
            } else {
                RegionSource::None
            };
            let on_missing_key = match r.on_missing_key {
                MissingKeyFile::Reject => {
                    if !r.default_pool.is_empty() {
                        errs.push(
                            format!("{f}.default_pool"),
                            "set `on_missing_key = \"default_pool\"` to use a default pool",
                        );
                    }
                    MissingKey::Reject
                }
                MissingKeyFile::DefaultPool => {
                    if r.default_pool.is_empty() {
                        errs.push(format!("{f}.default_pool"), "must name at least one node");
                    }
                    for (pi, n) in r.default_pool.iter().enumerate() {
                        if !node_names.contains(n.as_str()) {
                            errs.push(
                                format!("{f}.default_pool[{pi}]"),
                                format!("unknown node `{n}`"),
                            );
                        }
                    }
                    MissingKey::DefaultPool(r.default_pool.clone())
                }
            };
            if let Some(p) = pattern {
                routes.push(Route {
                    name: r.name.clone(),
                    pattern: p,
                    sku,
                    region,
                    default_region: r.default_region.clone(),
                    on_missing_key,
                });
            }
        }
        if self.routes.is_empty() {
            errs.push("routes", "at least one route is required");
        }

        // catalog
        if self.catalog.sku_column.is_empty() {
            errs.push("catalog.sku_column", "must not be empty");
        }
        let catalog = CatalogSource {
            csv: self.catalog.csv.as_deref().map(resolve),
            sku_column: self.catalog.sku_column.clone(),
            category_column: self.catalog.category_column.clone(),
            inline: self.catalog.skus.clone(),
        };
        if let Some(p) = &catalog.csv {
            if !p.is_file() {
                errs.push("catalog.csv", format!("{} does not exist", p.display()));
            }
        }

        // timeouts, retry, health
        let t = &self.timeouts;
        for (name, v) in [
            ("connect_ms", t.connect_ms),
            ("read_ms", t.read_ms),
            ("write_ms", t.write_ms),
            ("upstream_idle_ms", t.upstream_idle_ms),
            ("client_handshake_ms", t.client_handshake_ms),
            ("client_header_ms", t.client_header_ms),
            ("client_body_ms", t.client_body_ms),
            ("client_keepalive_ms", t.client_keepalive_ms),
            ("client_h2_idle_ms", t.client_h2_idle_ms),
            ("client_write_ms", t.client_write_ms),
        ] {
            if v == 0 || v > 3_600_000 {
                errs.push(
                    format!("timeouts.{name}"),
                    "must be between 1 ms and 1 hour",
                );
            }
        }
        let l = &self.limits;
        for (name, v) in [
            ("max_connections", l.max_connections),
            ("max_connections_per_client", l.max_connections_per_client),
            ("admin_max_connections", l.admin_max_connections),
        ] {
            if v == 0 || v > 1_000_000 {
                errs.push(format!("limits.{name}"), "must be between 1 and 1000000");
            }
        }
        if l.max_connections_per_client > l.max_connections {
            errs.push(
                "limits.max_connections_per_client",
                "cannot exceed limits.max_connections",
            );
        }
        if !(0.0..=1.0).contains(&self.retry.budget_ratio) {
            errs.push("retry.budget_ratio", "must be between 0 and 1");
        }
        if self.retry.max_retries > 10 {
            errs.push("retry.max_retries", "at most 10");
        }
        if !self.health.path.starts_with('/') {
            errs.push("health.path", "must start with `/`");
        }
        if self.health.interval_ms == 0 || self.health.timeout_ms == 0 {
            errs.push("health", "interval_ms and timeout_ms must be positive");
        }
        if self.health.eject_after_failures == 0 {
            errs.push("health.eject_after_failures", "must be at least 1");
        }

        // telemetry
        let sink = match self.telemetry.sink.as_deref() {
            None | Some("") => TelemetrySink::None,
            Some(s) if s.starts_with("http://") => TelemetrySink::Http(s.to_string()),
            Some(s) if s.starts_with("file:") => TelemetrySink::File(resolve(&s[5..])),
            Some(s) => {
                errs.push(
                    "telemetry.sink",
                    format!("`{s}`: expected `http://host:port/path` or `file:PATH`"),
                );
                TelemetrySink::None
            }
        };
        if self.telemetry.interval_s == 0 || self.telemetry.interval_s > 3600 {
            errs.push("telemetry.interval_s", "must be between 1 and 3600");
        }
        if self.telemetry.top_k > 1000 {
            errs.push("telemetry.top_k", "at most 1000");
        }
        if self.telemetry.queue == 0 {
            errs.push("telemetry.queue", "must be at least 1");
        }
        if let Some(m) = &self.control.metadata {
            if let Err(e) = crate::contract::store_url::StoreUrl::parse(m) {
                errs.push("control.metadata", e);
            }
        }
        if self.control.prefix.is_empty() || self.control.prefix.contains(char::is_whitespace) {
            errs.push("control.prefix", "must be non-empty without spaces");
        }
        if self.control.poll_ms < 50 {
            errs.push("control.poll_ms", "at least 50");
        }
        let forecaster = match self.dashboard.forecaster.as_deref() {
            None | Some("") => None,
            Some(u) => match check_base_url(u) {
                Ok(base) => Some(base),
                Err(m) => {
                    errs.push("dashboard.forecaster", m);
                    None
                }
            },
        };
        if self.dashboard.forecaster_timeout_ms == 0 || self.dashboard.forecaster_timeout_ms > 300 {
            errs.push(
                "dashboard.forecaster_timeout_ms",
                "must be between 1 and 300: a dashboard refresh must not hang on the forecaster",
            );
        }
        if self.max_header_bytes < 1024 || self.max_header_bytes > 1 << 20 {
            errs.push("max_header_bytes", "must be between 1024 and 1048576");
        }

        if !errs.0.is_empty() {
            return Err(errs.0);
        }
        Ok(Config {
            source: PathBuf::new(),
            listen: Listen {
                http,
                https,
                admin: admin.unwrap_or_else(|| ([127, 0, 0, 1], 9901).into()),
                admin_token: self.listen.admin_token.filter(|t| !t.is_empty()),
                threads: self.listen.threads,
                grace_period: Duration::from_secs(self.listen.grace_period_s),
            },
            topology: topology_file,
            nodes: topology.nodes.clone(),
            shards: topology.shards.clone(),
            replication_factor: topology.replication_factor,
            routes,
            catalog,
            timeouts: Timeouts {
                connect: ms(t.connect_ms),
                read: ms(t.read_ms),
                write: ms(t.write_ms),
                upstream_idle: ms(t.upstream_idle_ms),
                client_handshake: ms(t.client_handshake_ms),
                client_header: ms(t.client_header_ms),
                client_body: ms(t.client_body_ms),
                client_keepalive: ms(t.client_keepalive_ms),
                client_h2_idle: ms(t.client_h2_idle_ms),
                client_write: ms(t.client_write_ms),
            },
            limits: self.limits,
            retry: self.retry,
            health: Health {
                path: self.health.path,
                interval: ms(self.health.interval_ms),
                timeout: ms(self.health.timeout_ms),
                eject_after_failures: self.health.eject_after_failures,
                ejection: ms(self.health.ejection_ms),
            },
            telemetry: Telemetry {
                sink,
                interval: Duration::from_secs(self.telemetry.interval_s),
                top_k: self.telemetry.top_k,
                queue: self.telemetry.queue,
            },
            control: self.control,
            dashboard: Dashboard {
                forecaster,
                forecaster_timeout: ms(self.dashboard.forecaster_timeout_ms),
            },
            response_headers: self.response_headers,
            max_header_bytes: self.max_header_bytes,
        })
    }
}

pub(crate) fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'
}

pub(crate) fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}`: expected host:port"))?;
    if host.is_empty() {
        return Err(format!("`{s}`: empty host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{s}`: `{port}` is not a port")),
    }
}

/// A base URL `http://host:port` (an optional trailing `/` is dropped; no
/// path, query or credentials, since paths are appended to it).
fn check_base_url(u: &str) -> Result<String, String> {
    let rest = u
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{u}`: expected http://host:port"))?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains(['/', '?', '#', '@']) || hostport.contains(char::is_whitespace) {
        return Err(format!(
            "`{u}`: expected http://host:port with no path, query or user"
        ));
    }
    check_host_port(hostport)?;
    Ok(format!("http://{hostport}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[listen]
http = ["127.0.0.1:0"]
[[nodes]]
name = "a"
address = "127.0.0.1:1"
[[nodes]]
name = "b"
address = "127.0.0.1:2"
[[shards]]
id = "s1"
categories = ["X"]
regions = ["UK"]
[[routes]]
name = "inv"
path = "/inventory/{sku}"
"#;

    #[test]
    fn minimal_config_validates_and_assigns() {
        let c = Config::from_toml(MIN, Path::new("t.toml")).unwrap();
        assert_eq!(c.shards[0].replicas.len(), 2);
        assert_ne!(c.shards[0].replicas[0], c.shards[0].replicas[1]);
    }

    #[test]
    fn every_error_is_reported_with_its_field() {
        let bad = r#"
replication_factor = 5
[listen]
http = ["nope"]
admin = "0.0.0.0:9901"
[[nodes]]
name = "a"
address = "127.0.0.1"
capacity = -1
[[shards]]
id = "s1"
categories = ["X"]
regions = ["UK"]
replicas = ["zz"]
[[shards]]
id = "s2"
categories = ["X"]
regions = ["UK"]
[[routes]]
name = "r"
path = "inventory"
"#;
        let e = Config::from_toml(bad, Path::new("bad.toml")).unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "listen.http[0]",
            "listen.admin_token",
            "nodes[0].address",
            "nodes[0].capacity",
            "replication_factor",
            "shards[0].replicas[0]",
            "shards[1].categories[0]",
            "routes[0].path",
        ] {
            assert!(fields.contains(&want), "missing {want} in {fields:?}");
        }
        assert!(e.to_string().starts_with("bad.toml: "));
    }

    #[test]
    fn dashboard_forecaster_is_optional_and_checked() {
        let c = Config::from_toml(MIN, Path::new("t.toml")).unwrap();
        assert_eq!(c.dashboard.forecaster, None);
        assert_eq!(c.dashboard.forecaster_timeout, Duration::from_millis(250));
        let ok = format!("{MIN}\n[dashboard]\nforecaster = \"http://127.0.0.1:9300/\"\n");
        let c = Config::from_toml(&ok, Path::new("t.toml")).unwrap();
        assert_eq!(
            c.dashboard.forecaster.as_deref(),
            Some("http://127.0.0.1:9300")
        );
        let bad = format!(
            "{MIN}\n[dashboard]\nforecaster = \"https://f:9300/x\"\nforecaster_timeout_ms = 5000\n"
        );
        let e = Config::from_toml(&bad, Path::new("t.toml")).unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["dashboard.forecaster", "dashboard.forecaster_timeout_ms"],
            "{e}"
        );
        for u in [
            "http://f:9300/forecasts",
            "http://f",
            "http://:1",
            "http://u@f:1",
        ] {
            assert!(check_base_url(u).is_err(), "{u} accepted");
        }
        let typo = format!("{MIN}\n[dashboard]\nforcaster = \"http://f:1\"\n");
        assert!(Config::from_toml(&typo, Path::new("t.toml")).is_err());
    }

    #[test]
    fn unknown_field_is_an_error_with_a_line() {
        let e = Config::from_toml(
            &format!("{MIN}\nreplicaton_factor = 2\n"),
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(e.errors[0].message.contains("unknown field"), "{e}");
        assert!(e.errors[0].field.starts_with("line "), "{e}");
    }
}
