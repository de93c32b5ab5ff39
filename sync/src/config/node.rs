//! `conf/node.toml`: one reference node.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use shardmap::config::ShardFile;

use super::listener::{deadlines, limits, LimitsFile, TimeoutsFile};
use super::provider::{check_provider_url, check_read_latency, resolve_provider, ProviderFile};
use super::shards::load_shards;
use super::{addr, check_cache_url, d_cache, d_max_value, d_region, parse, read, ConfigError};
use crate::http::{ListenerConfig, NODE_MAX_CONNECTIONS};
use crate::model::ShardDef;

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
        Self::from_toml(&read(path)?, path)
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
