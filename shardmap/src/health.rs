//! Node health from one place: each proxy's own checks (active health
//! checks and passive ejection, `proxy/src/health.rs`), published into the
//! metadata store for the shard manager, which has no checker of its own.
//! One wire type on both sides.
//!
//! Stored as one hash, [`health_key`], one field per proxy (its instance
//! name) holding that proxy's latest [`HealthReport`] as JSON. The hash
//! expires when no proxy has written it for [`REPORT_TTL_MS`], so a fleet
//! that stopped leaves no stale verdicts behind; readers also ignore single
//! reports older than their own bound.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control::NodeHealth;

/// How long the health hash outlives its last write.
pub const REPORT_TTL_MS: u64 = 60_000;

/// The metadata key of the proxies' health reports.
pub fn health_key(prefix: &str) -> String {
    format!("{prefix}:node-health")
}

/// One proxy's view of every node in its table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct HealthReport {
    /// The proxy's instance name (`--instance`, default host name and pid).
    pub proxy: String,
    /// When the proxy sampled its node states (its wall clock, unix ms).
    pub at_unix_ms: u64,
    pub nodes: BTreeMap<String, NodeReport>,
}

/// One node in a [`HealthReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct NodeReport {
    /// What replica choice does with it now (healthy, ejected, down).
    pub health: NodeHealth,
    /// The proxy's latest active health check of the node passed. A node
    /// that is only passively ejected (a burst of failed requests) still
    /// passes; the shard manager moves replicas off nodes that do not.
    pub checks_passing: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_round_trips_through_json() {
        let r = HealthReport {
            proxy: "p1".into(),
            at_unix_ms: 42,
            nodes: BTreeMap::from([(
                "a".to_string(),
                NodeReport {
                    health: NodeHealth::Ejected,
                    checks_passing: true,
                },
            )]),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"proxy":"p1","at_unix_ms":42,"nodes":{"a":{"health":"ejected","checks_passing":true}}}"#
        );
        assert_eq!(serde_json::from_str::<HealthReport>(&text).unwrap(), r);
        assert_eq!(health_key("sc"), "sc:node-health");
    }
}
