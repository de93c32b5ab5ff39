//! Config files of the sync processes: `conf/sync.toml` (the scheduler,
//! optionally with in-process nodes) and `conf/node.toml` (one reference
//! node). Wire structs reject unknown fields; [`SyncConfig::load`] and
//! [`NodeConfig::load`] validate the whole file and report every problem
//! with its field. The shards come from the topology file every process
//! reads (`topology = "topology.toml"`, see [`crate::topology`]); every
//! node named must then be a topology node, and an in-process node listens
//! on its topology address unless `listen` says otherwise. Older forms
//! still work: shardmap's [`ShardFile`] inline as `[[shards]]`, or another
//! file's `[[shards]]` with `shards_file`, or, absent all three, the 14
//! `REGION/CATEGORY` shards of the Online Retail data.
//!
//! Every listener has client-connection deadlines (`[timeouts]`, shared by
//! the listeners of one process) and connection bounds (`[limits]` for the
//! control API or a standalone node, `[node.limits]` for in-process nodes);
//! see [`TimeoutsFile`] and [`LimitsFile`] for the fields and defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shardmap::config::ShardFile;

use crate::http::{ListenerConfig, CONTROL_MAX_CONNECTIONS, NODE_MAX_CONNECTIONS};
use crate::model::{check_shards, ShardDef};
use crate::scheduler::SchedulerConfig;
use crate::transfer::TransferParams;

/// Every problem found in one file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}", errors.join("; "))]
pub struct ConfigError {
    pub file: String,
    pub errors: Vec<String>,
}

/// The categories of the Online Retail data (see data/online_retail).
pub const DATA_CATEGORIES: &[&str] = &[
    "BAGS_STORAGE",
    "HOME_DECOR_OTHER",
    "JEWELLERY_FASHION",
    "KITCHEN_DINING",
    "LIGHTING",
    "PAPER_PARTY_KIDS",
    "SEASONAL",
];
pub const DATA_REGIONS: &[&str] = &["UK", "INTL"];

/// One shard per `REGION/CATEGORY` cell.
pub fn default_shards() -> Vec<ShardDef> {
    let mut v = vec![];
    for r in DATA_REGIONS {
        for c in DATA_CATEGORIES {
            v.push(ShardDef {
                id: format!("{r}/{c}"),
                cells: vec![(c.to_string(), r.to_string())],
            });
        }
    }
    v
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// `sqlite:PATH` (relative to the config file) or a PostgreSQL url.
    #[serde(default = "d_provider")]
    pub url: String,
    /// Seed an empty provider from this catalog CSV (sqlite only; relative
    /// to the config file).
    #[serde(default)]
    pub seed_catalog: Option<String>,
    #[serde(default = "d_scale")]
    pub seed_scale: u32,
    /// Added to every provider read (a delta batch, a slow-path get), ms:
    /// the wide-area round trip to a third party's database, for
    /// benchmarks on one machine. 0 (the default) adds nothing — in
    /// production the network is real.
    #[serde(default)]
    pub read_latency_ms: u64,
}

fn d_provider() -> String {
    "sqlite:../var/provider.db".into()
}
fn d_scale() -> u32 {
    1
}

impl Default for ProviderFile {
    fn default() -> Self {
        ProviderFile {
            url: d_provider(),
            seed_catalog: None,
            seed_scale: 1,
            read_latency_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferFile {
    /// Bandwidth budget over all transfers, bytes/s; 0 = unlimited.
    #[serde(default)]
    pub bandwidth_bytes_per_s: u64,
    /// Orders running at once.
    #[serde(default = "d_conc")]
    pub concurrency: usize,
    /// Rows per delta batch (one atomic cache write each).
    #[serde(default = "d_batch")]
    pub batch_rows: usize,
    /// Larger encoded items are not cached (logged, counted).
    #[serde(default = "d_max_value")]
    pub max_value_bytes: usize,
    /// Freshness poll when no NOTIFY arrives.
    #[serde(default = "d_poll")]
    pub poll_interval_ms: u64,
    /// Longest retry backoff through an outage.
    #[serde(default = "d_backoff")]
    pub max_backoff_ms: u64,
    /// Orders survive restarts here (relative to the config file).
    #[serde(default)]
    pub state_file: Option<String>,
    /// An evicted shard's copy is kept parked this long (seconds; not
    /// served, not refreshed), so a pre-fetch back onto the node within
    /// it copies only the provider's delta since the copy's cursor. 0 drops
    /// an evicted copy at once (every re-fetch is a full copy). Default:
    /// three days, so a weekend does not expire it.
    #[serde(default = "d_keep_evicted")]
    pub keep_evicted_s: f64,
}

fn d_keep_evicted() -> f64 {
    3.0 * 86_400.0
}

fn d_conc() -> usize {
    2
}
fn d_batch() -> usize {
    2000
}
fn d_max_value() -> usize {
    64 * 1024
}
fn d_poll() -> u64 {
    1000
}
fn d_backoff() -> u64 {
    5000
}

impl Default for TransferFile {
    fn default() -> Self {
        TransferFile {
            bandwidth_bytes_per_s: 0,
            concurrency: d_conc(),
            batch_rows: d_batch(),
            max_value_bytes: d_max_value(),
            poll_interval_ms: d_poll(),
            max_backoff_ms: d_backoff(),
            state_file: None,
            keep_evicted_s: d_keep_evicted(),
        }
    }
}

/// `[timeouts]`: deadlines on client connections, for every listener of
/// the process (a client that sends nothing, trickles its head or body,
/// idles between requests, or does not read, is cut off; counted in
/// `/metrics`). Each 1 ms ..= 1 hour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// Accept → first byte of a request, and first byte → end of its
    /// head. Default 10000.
    #[serde(default = "d_client_header")]
    pub client_header_ms: u64,
    /// End of the head → the whole body. Default 30000.
    #[serde(default = "d_client_body")]
    pub client_body_ms: u64,
    /// Idle time between requests on a keep-alive connection. Default
    /// 75000 (nginx's): longer than a proxy keeps an idle upstream
    /// connection in its pool (`upstream_idle_ms`, 60000 by default), so a
    /// node never closes a pooled connection just as the proxy picks it.
    #[serde(default = "d_client_keepalive")]
    pub client_keepalive_ms: u64,
    /// A response write that makes no progress (the client does not read).
    /// Default 30000.
    #[serde(default = "d_client_write")]
    pub client_write_ms: u64,
}

fn d_client_header() -> u64 {
    10_000
}
fn d_client_body() -> u64 {
    30_000
}
/// Default keep-alive idle of every sync listener, ms (see
/// [`TimeoutsFile::client_keepalive_ms`]).
pub const CLIENT_KEEPALIVE_MS: u64 = 75_000;

fn d_client_keepalive() -> u64 {
    CLIENT_KEEPALIVE_MS
}
fn d_client_write() -> u64 {
    30_000
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        TimeoutsFile {
            client_header_ms: d_client_header(),
            client_body_ms: d_client_body(),
            client_keepalive_ms: d_client_keepalive(),
            client_write_ms: d_client_write(),
        }
    }
}

/// Bounds on open client connections of one listener (`[limits]` for the
/// control API or a standalone node, `[node.limits]` for each in-process
/// node). A connection past a bound is reset at accept. Each 1 ..= 1000000,
/// and the per-client bound at most the listener's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Open connections on the listener. Default 1024 on the control API,
    /// 4096 on a node (see [`CONTROL_MAX_CONNECTIONS`],
    /// [`NODE_MAX_CONNECTIONS`]).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Open connections from one client address (IPv6: one /64). Default:
    /// the same as the listener's default (a node's clients are proxies,
    /// each with an upstream pool of up to 1024 connections).
    #[serde(default)]
    pub max_connections_per_client: Option<usize>,
}

/// Validate `[timeouts]` (errors name `timeouts.<field>`).
fn deadlines(errs: &mut Vec<String>, t: &TimeoutsFile) -> shardcast_edge::Deadlines {
    let mut ms = |name: &str, v: u64| {
        if v == 0 || v > 3_600_000 {
            errs.push(format!(
                "timeouts.{name}: {v} must be between 1 ms and 1 hour"
            ));
        }
        Duration::from_millis(v.clamp(1, 3_600_000))
    };
    shardcast_edge::Deadlines {
        header: ms("client_header_ms", t.client_header_ms),
        body: ms("client_body_ms", t.client_body_ms),
        keepalive: ms("client_keepalive_ms", t.client_keepalive_ms),
        write: ms("client_write_ms", t.client_write_ms),
    }
}

/// Validate one listener's limits table (`field` names it in errors);
/// `default_max` for a bound not set (the per-client default is never
/// above the listener's bound).
fn limits(
    errs: &mut Vec<String>,
    l: &LimitsFile,
    field: &str,
    default_max: usize,
) -> shardcast_edge::Limits {
    let max = l.max_connections.unwrap_or(default_max);
    let per = l.max_connections_per_client.unwrap_or(default_max.min(max));
    for (name, v) in [
        ("max_connections", max),
        ("max_connections_per_client", per),
    ] {
        if v == 0 || v > 1_000_000 {
            errs.push(format!("{field}.{name}: {v} must be between 1 and 1000000"));
        }
    }
    if per > max {
        errs.push(format!(
            "{field}.max_connections_per_client: {per} exceeds {field}.max_connections ({max})"
        ));
    }
    shardcast_edge::Limits {
        max_connections: max,
        max_per_client: per,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncNodeFile {
    pub name: String,
    /// `memory`, `redis://host:port/db` or a Redis Cluster's seeds,
    /// `redis+cluster://host:port,host:port` (see `cache::cluster`).
    #[serde(default = "d_cache")]
    pub cache: String,
    /// Key prefix in a shared Redis; defaults to the node name.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Serve this node in-process on this address (required for `memory`
    /// caches: nothing else can read them).
    #[serde(default)]
    pub listen: Option<String>,
}

fn d_cache() -> String {
    "memory".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncFile {
    #[serde(default)]
    pub provider: ProviderFile,
    /// Control API address.
    #[serde(default = "d_control")]
    pub control: String,
    /// Bearer token every control API request must carry
    /// (`Authorization: Bearer <token>`, the scheme in any case); required
    /// when `control` is not a loopback address. Unset or empty: no token
    /// (loopback only).
    #[serde(default)]
    pub control_token: Option<String>,
    #[serde(default)]
    pub transfer: TransferFile,
    /// `[freshness]`: how far a node's answer may lag the provider
    /// ([`crate::freshness`]).
    #[serde(default)]
    pub freshness: crate::freshness::FreshnessFile,
    /// The topology file (shards, nodes) shared with the proxy and the
    /// shard manager, relative to this file.
    #[serde(default)]
    pub topology: Option<String>,
    #[serde(default)]
    pub nodes: Vec<SyncNodeFile>,
    #[serde(default)]
    pub shards: Vec<ShardFile>,
    #[serde(default)]
    pub shards_file: Option<String>,
    /// Node settings for in-process nodes.
    #[serde(default)]
    pub node: NodeOptions,
    /// Client-connection deadlines of the control API and the in-process
    /// nodes.
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// Connection bounds of the control API (default 1024 / 1024).
    #[serde(default)]
    pub limits: LimitsFile,
    /// `[manager]`: the shard managers finished orders are pushed to.
    #[serde(default)]
    pub manager: crate::push::ManagerFile,
}

fn d_control() -> String {
    "127.0.0.1:9910".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOptions {
    #[serde(default = "d_region")]
    pub default_region: Option<String>,
    /// The older name of the fill lifetime, now `[freshness]
    /// max_staleness_s`: accepted only when equal to it.
    #[serde(default)]
    pub fill_ttl_s: Option<u64>,
    /// `[node.limits]`: connection bounds of each in-process node's
    /// listener (default 4096 / 4096).
    #[serde(default)]
    pub limits: LimitsFile,
}

fn d_region() -> Option<String> {
    Some("UK".into())
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            default_region: d_region(),
            fill_ttl_s: None,
            limits: LimitsFile::default(),
        }
    }
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct SyncNode {
    pub name: String,
    pub cache: String,
    pub prefix: String,
    pub listen: Option<SocketAddr>,
}

/// The validated scheduler config.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub provider_url: String,
    /// Added to every provider read (see [`ProviderFile::read_latency_ms`]).
    pub provider_read_latency: Duration,
    pub seed_catalog: Option<PathBuf>,
    pub seed_scale: u32,
    pub control: SocketAddr,
    /// The control API's bearer token (`None`: none asked, loopback only).
    pub control_token: Option<String>,
    pub scheduler: SchedulerConfig,
    pub nodes: Vec<SyncNode>,
    pub shards: Vec<ShardDef>,
    pub node: NodeOptions,
    /// The control API's connection deadlines and bounds.
    pub control_listener: ListenerConfig,
    /// Each in-process node's connection deadlines and bounds.
    pub node_listener: ListenerConfig,
    /// Where finished orders are pushed (no URLs: nowhere).
    pub push: crate::push::PushConfig,
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `sqlite:REL` → `sqlite:BASE/REL`; other urls unchanged.
fn resolve_provider(base: &Path, url: &str) -> String {
    match url.strip_prefix("sqlite:") {
        Some(":memory:") => url.to_string(),
        Some(p) => format!("sqlite:{}", resolve(base, p).display()),
        None => url.to_string(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .unwrap_or(0);
        ConfigError {
            file: file.into(),
            errors: vec![format!("line {line}: {}", e.message())],
        }
    })
}

#[derive(Deserialize)]
struct ShardsOnly {
    #[serde(default)]
    shards: Vec<ShardFile>,
}

fn load_shards(
    base: &Path,
    inline: &[ShardFile],
    file: Option<&str>,
    topo: Option<&shardmap::Topology>,
    errs: &mut Vec<String>,
) -> Vec<ShardDef> {
    if let Some(t) = topo {
        if !inline.is_empty() || file.is_some() {
            errs.push(
                "topology: the shards come from the topology file: remove [[shards]] and shards_file"
                    .into(),
            );
        }
        return crate::topology::shards(t);
    }
    let mut shards: Vec<ShardDef> = inline.iter().map(ShardDef::from_file).collect();
    if let Some(f) = file {
        let path = resolve(base, f);
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse::<ShardsOnly>(&text, &path.display().to_string()) {
                Ok(s) => shards.extend(s.shards.iter().map(ShardDef::from_file)),
                Err(e) => errs.push(format!("shards_file: {e}")),
            },
            Err(e) => errs.push(format!("shards_file: cannot read {}: {e}", path.display())),
        }
    }
    if shards.is_empty() && inline.is_empty() && file.is_none() {
        shards = default_shards();
    }
    if shards.is_empty() {
        errs.push("shards: no shards".into());
    }
    errs.extend(check_shards(&shards));
    shards
}

fn addr(errs: &mut Vec<String>, field: &str, s: &str) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(e) => {
            errs.push(format!("{field}: `{s}` is not an ip:port address ({e})"));
            None
        }
    }
}

fn check_cache_url(errs: &mut Vec<String>, field: &str, url: &str) {
    if let Err(e) = crate::cache::check_url(url) {
        errs.push(format!("{field}: {e}"));
    }
}

fn check_read_latency(errs: &mut Vec<String>, ms: u64) {
    if ms > 10_000 {
        errs.push(format!(
            "provider.read_latency_ms: {ms} is over 10000 (a wide-area round trip is tens of ms)"
        ));
    }
}

fn check_provider_url(errs: &mut Vec<String>, url: &str) {
    if !(url.starts_with("sqlite:") || url.starts_with("postgres") || url.contains("host=")) {
        errs.push(format!(
            "provider.url: `{url}` must be `sqlite:PATH` or a PostgreSQL url (`postgres://…`, `host=… user=…`)"
        ));
    }
}

impl SyncConfig {
    pub fn load(path: &Path) -> Result<SyncConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            errors: vec![format!("cannot read: {e}")],
        })?;
        Self::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<SyncConfig, ConfigError> {
        let file = path.display().to_string();
        let f: SyncFile = parse(text, &file)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut errs = vec![];
        check_provider_url(&mut errs, &f.provider.url);
        check_read_latency(&mut errs, f.provider.read_latency_ms);
        let control = addr(&mut errs, "control", &f.control);
        let control_token = f.control_token.clone().filter(|t| !t.is_empty());
        if let Some(a) = control {
            if !a.ip().is_loopback() && control_token.is_none() {
                errs.push(format!(
                    "control_token: required when `control` ({a}) is not a loopback address: the control API can evict any shard"
                ));
            }
        }
        let t = &f.transfer;
        if t.concurrency == 0 {
            errs.push("transfer.concurrency: must be at least 1".into());
        }
        if t.batch_rows == 0 || t.batch_rows > 100_000 {
            errs.push("transfer.batch_rows: must be 1..=100000".into());
        }
        if t.max_value_bytes < 256 {
            errs.push("transfer.max_value_bytes: must be at least 256".into());
        }
        if t.poll_interval_ms == 0 {
            errs.push("transfer.poll_interval_ms: must be positive".into());
        }
        if f.provider.seed_scale == 0 {
            errs.push("provider.seed_scale: must be at least 1".into());
        }
        let topo = f
            .topology
            .as_deref()
            .and_then(|t| crate::topology::load(base, t, &mut errs));
        let mut nodes = vec![];
        let mut names = std::collections::HashSet::new();
        for (i, n) in f.nodes.iter().enumerate() {
            let topo_addr = match topo
                .as_ref()
                .map(|t| crate::topology::node_address(t, &n.name))
            {
                Some(Ok(a)) => a,
                Some(Err(m)) => {
                    errs.push(format!("nodes[{i}].name: {m}"));
                    None
                }
                None => None,
            };
            if n.name.is_empty() || !names.insert(n.name.clone()) {
                errs.push(format!(
                    "nodes[{i}].name: `{}` is empty or used twice",
                    n.name
                ));
            }
            check_cache_url(&mut errs, &format!("nodes[{i}].cache"), &n.cache);
            let mut listen = n
                .listen
                .as_deref()
                .and_then(|l| addr(&mut errs, &format!("nodes[{i}].listen"), l));
            if n.cache == "memory" && n.listen.is_none() {
                // Served here, on the address the proxies route to.
                listen = topo_addr;
                if listen.is_none() {
                    errs.push(format!(
                        "nodes[{i}].listen: a `memory` cache lives in this process, so the node must be served here: set `listen` (or give the node an ip:port address in `topology`)"
                    ));
                }
            }
            nodes.push(SyncNode {
                name: n.name.clone(),
                cache: n.cache.clone(),
                prefix: n.prefix.clone().unwrap_or_else(|| n.name.clone()),
                listen,
            });
        }
        if nodes.is_empty() {
            errs.push("nodes: no nodes to pre-fetch into".into());
        }
        let shards = load_shards(
            base,
            &f.shards,
            f.shards_file.as_deref(),
            topo.as_ref(),
            &mut errs,
        );
        let deadlines = deadlines(&mut errs, &f.timeouts);
        let control_listener = ListenerConfig {
            deadlines,
            limits: limits(&mut errs, &f.limits, "limits", CONTROL_MAX_CONNECTIONS),
        };
        let node_listener = ListenerConfig {
            deadlines,
            limits: limits(
                &mut errs,
                &f.node.limits,
                "node.limits",
                NODE_MAX_CONNECTIONS,
            ),
        };
        if !(0.0..=30.0 * 86_400.0).contains(&t.keep_evicted_s) {
            errs.push(format!(
                "transfer.keep_evicted_s: {} must be between 0 and 2592000 (30 days)",
                t.keep_evicted_s
            ));
        }
        let push = f.manager.validate(&mut errs);
        let max_staleness = crate::freshness::bound(
            &mut errs,
            "freshness.max_staleness_s",
            f.freshness.max_staleness_s,
        );
        crate::freshness::fill_ttl(
            &mut errs,
            max_staleness,
            "freshness.max_staleness_s",
            f.node.fill_ttl_s,
            "node.fill_ttl_s",
        );
        if !errs.is_empty() {
            return Err(ConfigError { file, errors: errs });
        }
        Ok(SyncConfig {
            provider_url: resolve_provider(base, &f.provider.url),
            provider_read_latency: Duration::from_millis(f.provider.read_latency_ms),
            seed_catalog: f.provider.seed_catalog.as_deref().map(|p| resolve(base, p)),
            seed_scale: f.provider.seed_scale,
            control: control.unwrap_or_else(|| ([127, 0, 0, 1], 9910).into()),
            control_token,
            scheduler: SchedulerConfig {
                bandwidth_bytes_per_s: t.bandwidth_bytes_per_s,
                concurrency: t.concurrency,
                poll_interval: Duration::from_millis(t.poll_interval_ms),
                max_staleness,
                transfer: TransferParams {
                    batch_rows: t.batch_rows,
                    max_value_bytes: t.max_value_bytes,
                    backoff_min: Duration::from_millis(100),
                    backoff_max: Duration::from_millis(t.max_backoff_ms.max(100)),
                    ..TransferParams::default()
                },
                state_file: t.state_file.as_deref().map(|p| resolve(base, p)),
                keep_finished: 1000,
                keep_evicted: Duration::from_secs_f64(t.keep_evicted_s.clamp(0.0, 30.0 * 86_400.0)),
            },
            nodes,
            shards,
            node: f.node,
            control_listener,
            node_listener,
            push,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCacheFile {
    #[serde(default = "d_cache")]
    pub url: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

impl Default for NodeCacheFile {
    fn default() -> Self {
        NodeCacheFile {
            url: d_cache(),
            prefix: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub name: String,
    /// Default: the node's address in `topology`.
    #[serde(default)]
    pub listen: Option<String>,
    /// The topology file shared with the proxy, sync and the shard
    /// manager: the shards, and this node's address.
    #[serde(default)]
    pub topology: Option<String>,
    #[serde(default)]
    pub provider: ProviderFile,
    #[serde(default)]
    pub cache: NodeCacheFile,
    #[serde(default = "d_region")]
    pub default_region: Option<String>,
    /// How far an answer may lag the provider: the lifetime of slow-path
    /// fills of shards not hosted (the same bound as sync's `[freshness]
    /// max_staleness_s`, which keeps hosted copies within it).
    #[serde(default = "crate::freshness::d_max_staleness")]
    pub max_staleness_s: f64,
    /// The older name of `max_staleness_s`: accepted only when equal to it.
    #[serde(default)]
    pub fill_ttl_s: Option<u64>,
    #[serde(default = "d_max_value")]
    pub max_value_bytes: usize,
    #[serde(default)]
    pub shards: Vec<ShardFile>,
    #[serde(default)]
    pub shards_file: Option<String>,
    /// Client-connection deadlines of the node's listener.
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// Connection bounds of the node's listener (default 4096 / 4096).
    #[serde(default)]
    pub limits: LimitsFile,
}

/// The validated node config.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub provider_url: String,
    /// Added to every provider read (see [`ProviderFile::read_latency_ms`]).
    pub provider_read_latency: Duration,
    pub cache_url: String,
    pub prefix: String,
    pub settings: crate::node::NodeSettings,
    pub shards: Vec<ShardDef>,
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            errors: vec![format!("cannot read: {e}")],
        })?;
        Self::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let file = path.display().to_string();
        let f: NodeFile = parse(text, &file)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut errs = vec![];
        if f.name.is_empty() {
            errs.push("name: must not be empty".into());
        }
        let topo = f
            .topology
            .as_deref()
            .and_then(|t| crate::topology::load(base, t, &mut errs));
        let topo_addr = match topo
            .as_ref()
            .map(|t| crate::topology::node_address(t, &f.name))
        {
            Some(Ok(a)) => a,
            Some(Err(m)) => {
                errs.push(format!("name: {m}"));
                None
            }
            None => None,
        };
        let listen = match f.listen.as_deref() {
            Some(l) => addr(&mut errs, "listen", l),
            None if topo_addr.is_some() => topo_addr,
            None => {
                errs.push(
                    "listen: required (or set `topology`, whose address for this node is used)"
                        .into(),
                );
                None
            }
        };
        check_provider_url(&mut errs, &f.provider.url);
        check_read_latency(&mut errs, f.provider.read_latency_ms);
        check_cache_url(&mut errs, "cache.url", &f.cache.url);
        if f.max_value_bytes < 256 {
            errs.push("max_value_bytes: must be at least 256".into());
        }
        let shards = load_shards(
            base,
            &f.shards,
            f.shards_file.as_deref(),
            topo.as_ref(),
            &mut errs,
        );
        let listener = ListenerConfig {
            deadlines: deadlines(&mut errs, &f.timeouts),
            limits: limits(&mut errs, &f.limits, "limits", NODE_MAX_CONNECTIONS),
        };
        let bound = crate::freshness::bound(&mut errs, "max_staleness_s", f.max_staleness_s);
        let fill_ttl = crate::freshness::fill_ttl(
            &mut errs,
            bound,
            "max_staleness_s",
            f.fill_ttl_s,
            "fill_ttl_s",
        );
        if !errs.is_empty() {
            return Err(ConfigError { file, errors: errs });
        }
        Ok(NodeConfig {
            name: f.name.clone(),
            listen: listen.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
            provider_url: resolve_provider(base, &f.provider.url),
            provider_read_latency: Duration::from_millis(f.provider.read_latency_ms),
            cache_url: f.cache.url.clone(),
            prefix: f.cache.prefix.clone().unwrap_or_else(|| f.name.clone()),
            settings: crate::node::NodeSettings {
                name: f.name,
                default_region: f.default_region,
                fill_ttl,
                max_value_bytes: f.max_value_bytes,
                listener,
            },
            shards,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_reported_with_its_field() {
        let text = r#"
control = "nope"
[transfer]
concurrency = 0
[[nodes]]
name = "a"
cache = "memcached://x"
[[nodes]]
name = "a"
cache = "memory"
[[shards]]
id = "{bad}"
categories = ["X"]
regions = ["UK"]
"#;
        let e = SyncConfig::from_toml(text, Path::new("/tmp/sync.toml")).unwrap_err();
        let all = e.errors.join("\n");
        for want in [
            "control",
            "transfer.concurrency",
            "nodes[0].cache",
            "nodes[1].name",
            "nodes[1].listen",
            "shards[0].id",
        ] {
            assert!(all.contains(want), "missing {want} in:\n{all}");
        }
    }

    #[test]
    fn listener_deadlines_and_bounds_have_per_listener_defaults_and_are_checked() {
        let c = SyncConfig::from_toml(
            "[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.control_listener, ListenerConfig::control());
        assert_eq!(c.node_listener, ListenerConfig::node());
        assert_eq!(c.control_listener.limits.max_per_client, 1024);
        assert_eq!(c.node_listener.limits.max_per_client, 4096);
        assert_eq!(
            c.control_listener.deadlines.keepalive,
            Duration::from_secs(75)
        );
        let bad = r#"
[timeouts]
client_header_ms = 0
client_keepalive_ms = 7200000
[limits]
max_connections = 10
max_connections_per_client = 20
[node.limits]
max_connections = 0
[[nodes]]
name = "a"
listen = "127.0.0.1:0"
"#;
        let e = SyncConfig::from_toml(bad, Path::new("x.toml")).unwrap_err();
        let all = e.errors.join("\n");
        for want in [
            "timeouts.client_header_ms:",
            "timeouts.client_keepalive_ms:",
            "limits.max_connections_per_client: 20 exceeds",
            "node.limits.max_connections: 0",
        ] {
            assert!(all.contains(want), "missing {want} in:\n{all}");
        }
        // A lower listener bound lowers the per-client default with it.
        let n = NodeConfig::from_toml(
            "name = \"n\"\nlisten = \"127.0.0.1:0\"\n[timeouts]\nclient_body_ms = 500\n[limits]\nmax_connections = 100\n",
            Path::new("node.toml"),
        )
        .unwrap();
        assert_eq!(n.settings.listener.limits.max_per_client, 100);
        assert_eq!(
            n.settings.listener.deadlines.body,
            Duration::from_millis(500)
        );
        let e = NodeConfig::from_toml(
            "name = \"n\"\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_connections_per_client = 0\nbogus = 1\n",
            Path::new("node.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn a_control_api_off_loopback_needs_a_token() {
        let nodes = "[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n";
        for (head, ok) in [
            ("control = \"0.0.0.0:9910\"\n", false),
            ("control = \"10.1.2.3:9910\"\ncontrol_token = \"\"\n", false),
            ("control = \"[::]:9910\"\n", false),
            (
                "control = \"0.0.0.0:9910\"\ncontrol_token = \"s3cret\"\n",
                true,
            ),
            ("control = \"127.0.0.1:9910\"\n", true),
            ("control = \"[::1]:9910\"\n", true),
        ] {
            let r = SyncConfig::from_toml(&format!("{head}{nodes}"), Path::new("sync.toml"));
            match (r, ok) {
                (Ok(c), true) => assert_eq!(c.control_token.is_some(), head.contains("s3cret")),
                (Err(e), false) => {
                    let all = e.errors.join("\n");
                    assert!(all.contains("control_token: required"), "{head}: {all}");
                }
                (Ok(_), false) => panic!("{head}: accepted without a token"),
                (Err(e), true) => panic!("{head}: {e}"),
            }
        }
    }

    #[test]
    fn one_staleness_bound_for_hosted_copies_and_fills() {
        let nodes = "[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n";
        let c = SyncConfig::from_toml(nodes, Path::new("sync.toml")).unwrap();
        assert_eq!(c.scheduler.max_staleness, Duration::from_secs(30));
        let c = SyncConfig::from_toml(
            &format!("[freshness]\nmax_staleness_s = 0.25\n{nodes}"),
            Path::new("sync.toml"),
        )
        .unwrap();
        assert_eq!(c.scheduler.max_staleness, Duration::from_millis(250));
        // The older fill_ttl_s: accepted when it agrees, named when not.
        let ok = format!("[node]\nfill_ttl_s = 30\n{nodes}");
        assert!(SyncConfig::from_toml(&ok, Path::new("sync.toml")).is_ok());
        let bad = format!("[freshness]\nmax_staleness_s = -2\n[node]\nfill_ttl_s = 60\n{nodes}");
        let all = SyncConfig::from_toml(&bad, Path::new("sync.toml"))
            .unwrap_err()
            .errors
            .join("\n");
        assert!(all.contains("freshness.max_staleness_s: -2"), "{all}");
        assert!(all.contains("node.fill_ttl_s: 60 differs"), "{all}");
        let n = NodeConfig::from_toml(
            "name = \"n\"\nlisten = \"127.0.0.1:0\"\nmax_staleness_s = 0.5\n",
            Path::new("node.toml"),
        )
        .unwrap();
        assert_eq!(n.settings.fill_ttl, Duration::from_millis(500));
        let e = NodeConfig::from_toml(
            "name = \"n\"\nlisten = \"127.0.0.1:0\"\nfill_ttl_s = 10\n",
            Path::new("node.toml"),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("fill_ttl_s: 10 differs from max_staleness_s"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_errors() {
        let e = SyncConfig::from_toml("bandwith = 3\n", Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("bandwith"), "{e}");
    }

    #[test]
    fn defaults_are_the_fourteen_data_shards() {
        let c = SyncConfig::from_toml(
            "[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n",
            Path::new("/etc/shardcast/sync.toml"),
        )
        .unwrap();
        assert_eq!(c.shards.len(), 14);
        assert_eq!(c.provider_url, "sqlite:/etc/shardcast/../var/provider.db");
    }
}
