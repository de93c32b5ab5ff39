//! Node health for the manager, from one place: the proxies' own checks.
//! The manager has no health checker of its own. Every proxy publishes what
//! its active checks and passive ejection say about each node
//! (`proxy/src/health/publish.rs`, into the metadata store's health hash);
//! without a reachable store, or when no proxy publishes there, the manager
//! reads the same states from each configured proxy's `GET /admin/table`.
//! So a node's replicas leave the table on the verdict the proxies already route by, seen from where the
//! traffic is, not from wherever the manager runs.
//!
//! A node fails when more than half of the fresh reports that name it say
//! its active checks fail (one proxy cut off from a node does not take the
//! node from every proxy; it already routes around it itself). A node no
//! fresh report names has no verdict: its state stays as it was.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use shardmap::contract::MetadataKeys;
use shardmap::control::{NodeHealth, TableView};
use shardmap::health::{HealthReport, NodeReport, REPORT_TTL_MS};
use tracing::warn;

use super::client::Client;
use super::Conn;
use shardmap::config::NodeSpec;

/// Where the manager reads node health: the metadata store's health hash,
/// or (no store connection) the proxies' `/admin/table`.
#[derive(Clone)]
pub struct Prober {
    http: Client,
    proxies: Vec<String>,
    token: Option<String>,
    timeout: Duration,
    max_age: Duration,
}

impl Prober {
    pub fn new(
        proxies: Vec<String>,
        token: Option<String>,
        timeout: Duration,
        max_age: Duration,
    ) -> Prober {
        Prober {
            http: Client::default(),
            proxies,
            token,
            timeout,
            max_age,
        }
    }

    /// The verdict on each node of `nodes` that a fresh report names; the
    /// others keep their state.
    pub async fn probe(
        &self,
        conn: Option<&mut Conn>,
        keys: &MetadataKeys,
        nodes: &[NodeSpec],
        now_ms: u64,
    ) -> Vec<(String, Result<(), String>)> {
        let mut reports = match conn {
            Some(c) => read_store(c, keys, now_ms).await.unwrap_or_else(|e| {
                warn!(error = %e, "node health unreadable from the metadata store");
                vec![]
            }),
            None => vec![],
        };
        if !any_fresh(&reports, now_ms, self.max_age) {
            // No proxy publishes there (or no store): the pushed proxies' views.
            let token = self.token.as_deref();
            reports = read_proxies(&self.http, &self.proxies, token, self.timeout, now_ms).await;
        }
        verdicts(&reports, now_ms, self.max_age)
            .into_iter()
            .filter(|(n, _)| nodes.iter().any(|k| &k.name == n))
            .collect()
    }
}

/// Per node with a verdict: `Ok` when its checks pass, `Err(why)` when
/// they fail, from the reports at most `max_age` old at `now_ms`.
pub fn verdicts(
    reports: &[HealthReport],
    now_ms: u64,
    max_age: Duration,
) -> Vec<(String, Result<(), String>)> {
    let max_age = max_age.as_millis() as u64;
    let mut tally: BTreeMap<&str, (Vec<&str>, usize)> = BTreeMap::new();
    for r in reports {
        if now_ms.saturating_sub(r.at_unix_ms) > max_age {
            continue;
        }
        for (node, n) in &r.nodes {
            let t = tally.entry(node).or_default();
            t.1 += 1;
            if !n.checks_passing {
                t.0.push(&r.proxy);
            }
        }
    }
    tally
        .into_iter()
        .map(|(node, (failing, seen))| {
            let v = if failing.len() * 2 > seen {
                Err(format!(
                    "health checks fail from {} of {seen} proxies ({})",
                    failing.len(),
                    failing.join(", ")
                ))
            } else {
                Ok(())
            };
            (node.to_string(), v)
        })
        .collect()
}

/// Whether any report is at most `max_age` old at `now_ms`.
pub fn any_fresh(reports: &[HealthReport], now_ms: u64, max_age: Duration) -> bool {
    let max_age = max_age.as_millis() as u64;
    reports
        .iter()
        .any(|r| now_ms.saturating_sub(r.at_unix_ms) <= max_age)
}

/// Every proxy's report in the store's health hash; reports older than the
/// hash's own lifetime (proxies that stopped) are removed.
pub async fn read_store(
    conn: &mut super::metadata::Conn,
    keys: &MetadataKeys,
    now_ms: u64,
) -> Result<Vec<HealthReport>, String> {
    let key = keys.node_health();
    let raw: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(|e| format!("{key}: {e}"))?;
    let mut out = vec![];
    let mut gone = vec![];
    for (proxy, body) in raw {
        match serde_json::from_slice::<HealthReport>(&body) {
            Ok(r) if now_ms.saturating_sub(r.at_unix_ms) > REPORT_TTL_MS => gone.push(proxy),
            Ok(r) => out.push(r),
            Err(e) => warn!(proxy, error = %e, "unreadable node-health report; ignored"),
        }
    }
    if !gone.is_empty() {
        let _: Result<i64, _> = redis::cmd("HDEL")
            .arg(&key)
            .arg(&gone)
            .query_async(conn)
            .await;
    }
    Ok(out)
}

/// The node states in each proxy's `GET /admin/table?shards=none`, as reports taken
/// now. That view has no separate active-check flag: a node counts as
/// failing its checks when the proxy shows it `down`.
pub async fn read_proxies(
    http: &Client,
    proxies: &[String],
    token: Option<&str>,
    timeout: Duration,
    now_ms: u64,
) -> Vec<HealthReport> {
    // Every proxy at once; the reports in the order the proxies are listed.
    let views = futures::future::join_all(proxies.iter().map(|p| async move {
        // The nodes only: the whole view is megabytes at 10k shards.
        let url = format!("{p}/admin/table?shards=none");
        (p, http.get_typed::<TableView>(&url, token, timeout).await)
    }))
    .await;
    let mut out = vec![];
    for (p, view) in views {
        match view {
            Ok(v) => out.push(HealthReport {
                proxy: p.clone(),
                at_unix_ms: now_ms,
                nodes: v
                    .nodes
                    .into_iter()
                    .map(|n| {
                        let r = NodeReport {
                            health: n.health,
                            checks_passing: n.health != NodeHealth::Down,
                        };
                        (n.name, r)
                    })
                    .collect(),
            }),
            // No report, no verdict from this proxy: its nodes keep their state.
            Err(e) => warn!(proxy = %p, error = %e, "no node health from this proxy"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(proxy: &str, at: u64, nodes: &[(&str, bool)]) -> HealthReport {
        HealthReport {
            proxy: proxy.into(),
            at_unix_ms: at,
            nodes: nodes
                .iter()
                .map(|(n, ok)| {
                    let r = NodeReport {
                        health: if *ok {
                            NodeHealth::Healthy
                        } else {
                            NodeHealth::Down
                        },
                        checks_passing: *ok,
                    };
                    (n.to_string(), r)
                })
                .collect(),
        }
    }

    #[test]
    fn a_node_fails_when_most_fresh_reports_say_its_checks_fail() {
        let age = Duration::from_secs(5);
        let rs = [
            report("p1", 10_000, &[("a", true), ("b", false), ("c", false)]),
            report("p2", 10_000, &[("a", true), ("b", false), ("c", true)]),
            report("p3", 10_000, &[("a", true), ("b", true)]),
            // stale: ignored, so `d` has no verdict
            report("old", 1_000, &[("a", false), ("d", false)]),
        ];
        let v: BTreeMap<_, _> = verdicts(&rs, 10_500, age).into_iter().collect();
        assert_eq!(v["a"], Ok(()));
        assert_eq!(
            v["b"],
            Err("health checks fail from 2 of 3 proxies (p1, p2)".into())
        );
        // one of two is not a majority: that proxy routes around it alone
        assert_eq!(v["c"], Ok(()));
        assert!(!v.contains_key("d"));
        assert!(verdicts(&[], 0, age).is_empty());
        assert!(any_fresh(&rs, 10_500, age));
        assert!(!any_fresh(&rs[3..], 10_500, age));
    }

    #[test]
    fn a_passively_ejected_node_whose_checks_pass_is_not_failing() {
        let mut r = report("p1", 5, &[("a", true)]);
        r.nodes.get_mut("a").unwrap().health = NodeHealth::Ejected;
        assert_eq!(
            verdicts(&[r], 5, Duration::from_secs(1)),
            [("a".to_string(), Ok(()))]
        );
    }
}
