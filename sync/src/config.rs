//! Config files of the sync processes: `conf/sync.toml` (the scheduler,
//! optionally with in-process nodes) and `conf/node.toml` (one reference
//! node). Wire structs reject unknown fields; [`SyncConfig::load`] and
//! [`NodeConfig::load`] validate the whole file and report every problem
//! with its field. The shards come from the topology file every process
//! reads (`topology = "topology.toml"`, see [`crate::topology`]); every
//! node named must then be a topology node, and an in-process node listens
//! on its topology address unless `listen` says otherwise. Older forms
//! still work: shardmap's [`ShardFile`](shardmap::config::ShardFile) inline as `[[shards]]`, or another
//! file's `[[shards]]` with `shards_file`, or, absent all three, the 14
//! `REGION/CATEGORY` shards of the Online Retail data.
//!
//! Every listener has client-connection deadlines (`[timeouts]`, shared by
//! the listeners of one process) and connection bounds (`[limits]` for the
//! control API or a standalone node, `[node.limits]` for in-process nodes);
//! see [`TimeoutsFile`] and [`LimitsFile`] for the fields and defaults.

mod listener;
mod node;
mod provider;
mod shards;
mod sync;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use listener::{LimitsFile, TimeoutsFile, CLIENT_KEEPALIVE_MS};
pub use node::{NodeCacheFile, NodeConfig, NodeFile};
pub use provider::ProviderFile;
pub use shards::{default_shards, DATA_CATEGORIES, DATA_REGIONS};
pub use sync::{NodeOptions, SyncConfig, SyncFile, SyncNode, SyncNodeFile, TransferFile};

/// Every problem found in one file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}", errors.join("; "))]
pub struct ConfigError {
    pub file: String,
    pub errors: Vec<String>,
}

/// A config file's text; one that cannot be read is the file's one error.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        errors: vec![format!("cannot read: {e}")],
    })
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
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

// Defaults both files share: a node's cache, its region, its largest item.
fn d_cache() -> String {
    "memory".into()
}
fn d_region() -> Option<String> {
    Some("UK".into())
}
fn d_max_value() -> usize {
    64 * 1024
}
