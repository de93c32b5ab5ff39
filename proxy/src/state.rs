//! State shared by the proxy's request path and its background services.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

use shardcast_edge::limit::{ConnLimiter, Limits};

use crate::node::{now_ms, NodeRegistry};
use crate::restart::RestartOnly;
use crate::snapshot::Snapshot;
use crate::telemetry::{ExportCounters, StatsRegistry};
use crate::tls::CertResolver;

/// One entry of the table version history (shown by the admin API and the
/// dashboard): both of the table's numbers after the event.
#[derive(Debug, Clone, Serialize)]
pub struct VersionEvent {
    /// The manager's assignment in the table (moved by `update`).
    pub assignment_version: shardmap::AssignmentVersion,
    /// The config generation (moved by `reload:*`).
    pub config_generation: u64,
    pub unix_ms: u64,
    /// `start`, `reload:<trigger>` or `update`.
    pub cause: String,
}

/// Process-wide counters that are not per node or per shard.
#[derive(Debug, Default)]
pub struct GlobalCounters {
    pub requests: AtomicU64,
    pub rejected_no_key: AtomicU64,
    pub rejected_bad_request: AtomicU64,
    pub no_replica: AtomicU64,
    pub retries: AtomicU64,
    pub retries_denied: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub updates_ok: AtomicU64,
    pub updates_rejected: AtomicU64,
    /// How long the last applied table update took (table, snapshot,
    /// swap), and the longest one, in microseconds.
    pub update_apply_last_us: AtomicU64,
    pub update_apply_max_us: AtomicU64,
    /// Requests whose client hung up (or failed to read or write) before
    /// the answer was delivered: never retried, never charged to a node.
    pub client_aborted: AtomicU64,
}

impl GlobalCounters {
    pub fn record_update_apply(&self, took: std::time::Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.update_apply_last_us.store(us, Relaxed);
        self.update_apply_max_us.fetch_max(us, Relaxed);
    }
}

/// Retries allowed per one-second window: `min_per_second` plus
/// `ratio` × requests seen in the window. Keeps an outage from multiplying
/// load by the retry count.
#[derive(Debug, Default)]
pub struct RetryBudget {
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    #[inline]
    fn roll(&self, now_ms: u64) {
        let w = now_ms / 1000;
        let cur = self.window.load(Relaxed);
        if cur != w
            && self
                .window
                .compare_exchange(cur, w, Relaxed, Relaxed)
                .is_ok()
        {
            self.requests.store(0, Relaxed);
            self.retries.store(0, Relaxed);
        }
    }

    #[inline]
    pub fn on_request(&self) {
        self.on_request_at(now_ms());
    }

    /// [`RetryBudget::on_request`] at `now_ms` ([`crate::node::now_ms`]).
    #[inline]
    pub fn on_request_at(&self, now_ms: u64) {
        self.roll(now_ms);
        self.requests.fetch_add(1, Relaxed);
    }

    /// Take one retry from the budget, if any is left.
    pub fn try_retry(&self, ratio: f64, min_per_second: u32) -> bool {
        self.roll(now_ms());
        let allowed = min_per_second as u64 + (self.requests.load(Relaxed) as f64 * ratio) as u64;
        let used = self.retries.fetch_add(1, Relaxed);
        if used < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Relaxed);
            false
        }
    }
}

pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    pub nodes: NodeRegistry,
    pub stats: StatsRegistry,
    pub counters: GlobalCounters,
    pub export: ExportCounters,
    pub metadata: crate::metadata::MetadataCounters,
    pub retry_budget: RetryBudget,
    /// One reload or update at a time; async because a reload awaits its
    /// blocking build.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Per HTTPS listener, in config order.
    pub certs: Vec<Arc<CertResolver>>,
    pub history: Mutex<VecDeque<VersionEvent>>,
    pub ready: AtomicBool,
    /// Name this proxy reports itself as (telemetry source).
    pub instance: String,
    /// The dashboard's cached read of the forecaster.
    pub dashboard: crate::dashboard::DashState,
    /// Open-connection bounds and counters of every listener.
    pub edge: Edge,
    /// The supervised background loops; `/ready` waits for them.
    pub tasks: Arc<shardcast_edge::supervise::Tasks>,
}

/// The connection bounds of the proxy's listeners. Built once at start
/// (listeners are fixed for the life of the process); their limits follow
/// config reloads.
pub struct Edge {
    /// One per traffic listener, in config order: every `listen.http`
    /// address, then every `listen.https`.
    pub traffic: Vec<Arc<ConnLimiter>>,
    pub admin: Arc<ConnLimiter>,
    /// Open connections per traffic listener the open-file limit leaves
    /// room for (see [`Edge::fit_to_open_files`]); caps `max_connections`.
    fd_cap: AtomicUsize,
    /// The restart-only settings of the config the process started with:
    /// what it runs, whatever later reloads say (`GET /admin/config`).
    pub started: RestartOnly,
}

/// File descriptors kept back from client connections: the upstream
/// keep-alive pool, the admin listener, config, catalog and log files.
const FD_RESERVE: usize = 1024 + 512;

impl Edge {
    pub fn new(cfg: &shardmap::Config) -> Self {
        let fd_cap = AtomicUsize::new(usize::MAX);
        let (traffic_limits, admin_limits) = limits_of(cfg, &fd_cap);
        let mut traffic = vec![];
        for a in &cfg.listen.http {
            traffic.push(ConnLimiter::new(format!("http {a}"), traffic_limits));
        }
        for h in &cfg.listen.https {
            traffic.push(ConnLimiter::new(
                format!("https {}", h.addr),
                traffic_limits,
            ));
        }
        Self {
            traffic,
            admin: ConnLimiter::new("admin", admin_limits),
            fd_cap,
            started: RestartOnly::of(cfg),
        }
    }

    /// Cap the traffic listeners' bounds to what `nofile` open files leave
    /// room for: each client connection may need an upstream connection
    /// too, so half of what is left after [`FD_RESERVE`] and the admin
    /// listener, shared among the traffic listeners. Returns the cap.
    pub fn fit_to_open_files(&self, cfg: &shardmap::Config, nofile: u64) -> usize {
        let n = self.traffic.len().max(1);
        let left = usize::try_from(nofile)
            .unwrap_or(usize::MAX)
            .saturating_sub(FD_RESERVE + cfg.limits.admin_max_connections);
        let cap = (left / 2 / n).max(1);
        self.fd_cap.store(cap, Relaxed);
        self.set_limits(cfg);
        cap
    }

    /// Apply the limits of a reloaded config to the running listeners.
    pub fn set_limits(&self, cfg: &shardmap::Config) {
        let (t, a) = limits_of(cfg, &self.fd_cap);
        for l in &self.traffic {
            l.set_limits(t);
        }
        self.admin.set_limits(a);
    }
}

fn limits_of(cfg: &shardmap::Config, fd_cap: &AtomicUsize) -> (Limits, Limits) {
    let l = &cfg.limits;
    let cap = fd_cap.load(Relaxed);
    (
        Limits {
            max_connections: l.max_connections.min(cap),
            max_per_client: l.max_connections_per_client.min(cap),
        },
        Limits {
            max_connections: l.admin_max_connections,
            max_per_client: l.admin_max_connections,
        },
    )
}

impl Shared {
    /// Note the versions of `table`, now serving because of `cause`.
    pub fn record_version(&self, table: &shardmap::RoutingTable, cause: &str) {
        let mut h = self.history.lock();
        if h.len() >= 256 {
            h.pop_front();
        }
        h.push_back(VersionEvent {
            assignment_version: table.assignment_version,
            config_generation: table.config_generation,
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            cause: cause.to_string(),
        });
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_caps_retries() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.on_request();
        }
        let granted = (0..100).filter(|_| b.try_retry(0.2, 5)).count();
        assert_eq!(granted, 25);
    }
}
