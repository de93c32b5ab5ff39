//! Per-node runtime state that outlives routing tables: in-flight counts,
//! passive ejection and active health, and per-node counters.
//!
//! A table swap builds a new [`crate::snapshot::Snapshot`] that points at the
//! same [`NodeRuntime`] for every node it keeps (looked up by name in the
//! [`NodeRegistry`]), so in-flight counts and ejections survive reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shardmap::NodeHealth;

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Milliseconds on a process-local monotonic clock.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at `t`: for a caller that has just read the clock (the
/// request path reads it once per request, not once per use).
pub fn ms_at(t: Instant) -> u64 {
    t.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_millis() as u64
        + 1
}

#[derive(Debug, Default)]
pub struct NodeCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub retries: AtomicU64,
    pub ejections: AtomicU64,
    pub connect_failures: AtomicU64,
}

/// Live state of one node.
#[derive(Debug)]
pub struct NodeRuntime {
    pub name: String,
    in_flight: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Monotonic ms until which the node is out of rotation (0 = not ejected).
    ejected_until: AtomicU64,
    /// Active health checks are failing.
    down: AtomicBool,
    /// The latest active health check failed (published for the shard
    /// manager; unlike `down`, not set by passive ejection).
    check_failed: AtomicBool,
    pub counters: NodeCounters,
}

impl NodeRuntime {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            in_flight: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
            check_failed: AtomicBool::new(false),
            counters: NodeCounters::default(),
        }
    }

    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Whether replica choice may pick this node now.
    #[inline]
    pub fn usable(&self, now: u64) -> bool {
        !self.down.load(Relaxed) && self.ejected_until.load(Relaxed) <= now
    }

    pub fn health(&self, now: u64) -> NodeHealth {
        if self.ejected_until.load(Relaxed) > now {
            NodeHealth::Ejected
        } else if self.down.load(Relaxed) {
            NodeHealth::Down
        } else {
            NodeHealth::Healthy
        }
    }

    /// Whether the latest active health check passed (true before the
    /// first one).
    pub fn checks_passing(&self) -> bool {
        !self.check_failed.load(Relaxed)
    }

    /// Count a request sent to this node; the guard counts it finished.
    #[inline]
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.counters.requests.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// A failed request (connect error or 5xx). Ejects the node once
    /// `eject_after` failures happen in a row; returns true when this call
    /// ejected it.
    pub fn record_failure(&self, eject_after: u32, ejection: Duration) -> bool {
        self.counters.errors.fetch_add(1, Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if n >= eject_after {
            let now = now_ms();
            let until = now + ejection.as_millis() as u64;
            let prev = self.ejected_until.load(Relaxed);
            if prev <= now
                && self
                    .ejected_until
                    .compare_exchange(prev, until, Relaxed, Relaxed)
                    .is_ok()
            {
                // After an ejection only an active health check returns the
                // node: mark it down until one succeeds.
                self.down.store(true, Relaxed);
                self.consecutive_failures.store(0, Relaxed);
                self.counters.ejections.fetch_add(1, Relaxed);
                return true;
            }
        }
        false
    }

    /// Result of an active health check.
    pub fn set_check_result(&self, ok: bool) {
        self.down.store(!ok, Relaxed);
        self.check_failed.store(!ok, Relaxed);
        if ok {
            self.consecutive_failures.store(0, Relaxed);
        }
    }
}

/// Decrements a node's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<NodeRuntime>);

impl InFlight {
    pub fn node(&self) -> &Arc<NodeRuntime> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// name → runtime state, for every node any table has named.
#[derive(Debug, Default)]
pub struct NodeRegistry {
    nodes: Mutex<HashMap<String, Arc<NodeRuntime>>>,
}

impl NodeRegistry {
    /// The runtime of `name`, created on first use.
    pub fn get(&self, name: &str) -> Arc<NodeRuntime> {
        self.nodes
            .lock()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(NodeRuntime::new(name)))
            .clone()
    }

    /// Forget nodes no longer in `keep` (their counters go with them).
    pub fn retain(&self, keep: &[&str]) {
        self.nodes.lock().retain(|k, _| keep.contains(&k.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_and_return() {
        let n = Arc::new(NodeRuntime::new("a"));
        let now = now_ms();
        assert!(n.usable(now));
        assert!(!n.record_failure(2, Duration::from_millis(50)));
        assert!(n.record_failure(2, Duration::from_millis(50)));
        assert!(!n.usable(now_ms()));
        assert_eq!(n.health(now_ms()), NodeHealth::Ejected);
        std::thread::sleep(Duration::from_millis(60));
        // ejection over, but no good health check yet
        assert_eq!(n.health(now_ms()), NodeHealth::Down);
        n.set_check_result(true);
        assert!(n.usable(now_ms()));
        {
            let _g = n.start();
            assert_eq!(n.in_flight(), 1);
        }
        assert_eq!(n.in_flight(), 0);
    }
}
