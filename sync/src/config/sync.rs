//! `conf/sync.toml`: the scheduler, optionally with in-process nodes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shardmap::config::ShardFile;

use super::listener::{deadlines, limits, LimitsFile, TimeoutsFile};
use super::provider::{check_provider_url, check_read_latency, resolve_provider, ProviderFile};
use super::shards::load_shards;
use super::{
    addr, check_cache_url, d_cache, d_max_value, d_region, parse, read, resolve, ConfigError,
};
use crate::http::{ListenerConfig, CONTROL_MAX_CONNECTIONS, NODE_MAX_CONNECTIONS};
use crate::model::ShardDef;
use crate::scheduler::SchedulerConfig;
use crate::transfer::TransferParams;

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

impl SyncConfig {
    pub fn load(path: &Path) -> Result<SyncConfig, ConfigError> {
        Self::from_toml(&read(path)?, path)
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
