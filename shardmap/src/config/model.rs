//! The validated model: what the rest of shardcast is built from. Built
//! only by [`Config::from_toml`] (or [`Config::load`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::key::{KeySource, PathPattern, RegionSource};
use crate::topology::{NodeSpec, ShardSpec, TopologyFile};

use super::wire::{LimitsFile, RetryFile};
use super::ControlFile;

/// A validated configuration. Built only by [`Config::from_toml`] (or
/// [`Config::load`]), so every field is known to be consistent.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages and reload).
    pub source: PathBuf,
    pub listen: Listen,
    /// The topology file, when `topology` names one (watched for reloads).
    pub topology: Option<PathBuf>,
    /// The topology as written (file or inline), which `nodes`, `shards`
    /// and `replication_factor` were validated from: what the next load
    /// compares with to reuse them ([`Config::from_toml_reusing`]).
    pub(crate) topology_input: Option<Arc<TopologyFile>>,
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
