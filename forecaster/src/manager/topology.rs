//! The topology the manager plans with: nodes, shards and their configured
//! replicas and the replication factor from the topology file every process
//! reads (`[manager] topology`, validated by `shardmap::topology`), the
//! metadata store and key prefix from the manager's own config; the file is
//! re-read when it changes. A broken edit keeps the last good topology.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use shardmap::contract::MetadataKeys;
use tracing::{info, warn};

use super::ManagerError;
use crate::config::ManagerConfig;

/// What the manager plans with.
#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: Vec<shardmap::config::NodeSpec>,
    pub shards: Vec<shardmap::config::ShardSpec>,
    pub replication_factor: usize,
    /// The metadata store's key names, under `[manager] prefix`.
    pub keys: MetadataKeys,
    pub metadata: Option<String>,
    /// How often proxies send telemetry: observed load needs at least one frame.
    pub telemetry_interval: Duration,
    pub(super) modified: Option<SystemTime>,
}

impl Topology {
    /// Read the topology file `cfg` names; the rest from `cfg` itself.
    pub fn load(cfg: &ManagerConfig) -> Result<Topology, ManagerError> {
        let path = cfg.topology.as_path();
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let t = shardmap::Topology::load(path).map_err(|e| ManagerError::Topology {
            path: path.display().to_string(),
            errors: e.to_string(),
        })?;
        Ok(Topology {
            nodes: t.nodes,
            shards: t.shards,
            replication_factor: t.replication_factor,
            keys: MetadataKeys::for_url(&cfg.prefix, cfg.metadata.as_deref().unwrap_or_default()),
            metadata: cfg.metadata.clone(),
            telemetry_interval: cfg.telemetry_interval,
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

/// The topology file and the last good topology read from it.
pub struct Source {
    cfg: ManagerConfig,
    path: PathBuf,
    current: Mutex<Arc<Topology>>,
}

impl Source {
    pub fn open(cfg: &ManagerConfig) -> Result<Source, ManagerError> {
        Ok(Source {
            current: Mutex::new(Arc::new(Topology::load(cfg)?)),
            path: cfg.topology.clone(),
            cfg: cfg.clone(),
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
        match Topology::load(&self.cfg) {
            Ok(t) => {
                info!(path = %self.path.display(), "topology re-read");
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
                warn!(error = %e, "topology unreadable; planning with the last good one");
                None
            }
        }
    }
}
