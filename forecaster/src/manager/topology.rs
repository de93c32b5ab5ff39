//! The topology the manager plans with: nodes, shards and their configured
//! replicas, the replication factor and the metadata store, read from the
//! proxy's own config file (with the proxy's validator) and re-read when the
//! file changes. A broken edit keeps the last good topology.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tracing::{info, warn};

use super::ManagerError;

/// The proxy config parts the manager plans with.
#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: Vec<shardmap::config::NodeSpec>,
    pub shards: Vec<shardmap::config::ShardSpec>,
    pub replication_factor: usize,
    pub prefix: String,
    pub metadata: Option<String>,
    /// How often proxies send telemetry: observed load needs at least one frame.
    pub telemetry_interval: Duration,
    pub(super) modified: Option<SystemTime>,
}

impl Topology {
    pub fn load(path: &Path) -> Result<Topology, ManagerError> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let c = shardmap::Config::load(path).map_err(|e| ManagerError::ProxyConfig {
            path: path.display().to_string(),
            errors: e.to_string(),
        })?;
        Ok(Topology {
            nodes: c.nodes,
            shards: c.shards,
            replication_factor: c.replication_factor,
            prefix: c.control.prefix,
            metadata: c.control.metadata,
            telemetry_interval: c.telemetry.interval,
            modified,
        })
    }

    /// The state machine's view: node names, shards with configured replicas.
    pub fn event(&self) -> super::state::Event {
        super::state::Event::Topology {
            nodes: self.nodes.iter().map(|n| n.name.clone()).collect(),
            shards: self
                .shards
                .iter()
                .map(|s| (s.id.clone(), s.replicas.clone()))
                .collect(),
        }
    }
}

/// The proxy config file and the last good topology read from it.
pub struct Source {
    path: PathBuf,
    current: Mutex<Arc<Topology>>,
}

impl Source {
    pub fn open(path: &Path) -> Result<Source, ManagerError> {
        Ok(Source {
            current: Mutex::new(Arc::new(Topology::load(path)?)),
            path: path.to_path_buf(),
        })
    }

    pub fn get(&self) -> Arc<Topology> {
        self.current.lock().clone()
    }

    /// Re-read the file when it changed on disk: the new topology, if it
    /// is good. A broken file keeps the last good one.
    pub fn refresh(&self) -> Option<Arc<Topology>> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == self.get().modified {
            return None;
        }
        match Topology::load(&self.path) {
            Ok(t) => {
                info!(path = %self.path.display(), "proxy config re-read");
                let t = Arc::new(t);
                *self.current.lock() = t.clone();
                Some(t)
            }
            Err(e) => {
                // Keep the old topology (remembering this file version, so
                // it is not re-read every round); the next change is tried.
                let kept = Arc::new(Topology {
                    modified,
                    ..(*self.get()).clone()
                });
                *self.current.lock() = kept;
                warn!(error = %e, "proxy config unreadable; planning with the last good one");
                None
            }
        }
    }
}
