//! The URL of a Redis the project writes to: one Redis (`redis://…`,
//! `rediss://…`) or a Redis Cluster named by its seed nodes:
//!
//! ```text
//! redis+cluster://[user[:password]@]host:port[,host:port…][?wait_replicas=N&wait_timeout_ms=M]
//! ```
//!
//! Node caches and the metadata store take the same form. Any reachable
//! seed is enough: the client reads the slot map from it and follows
//! `MOVED`/`ASK`. `wait_replicas` (default 1) and `wait_timeout_ms`
//! (default 1000) say how many replicas must hold a write before it
//! counts as done (`WAIT`), so a failover cannot lose it.

use std::time::Duration;

/// The scheme of a cluster URL.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// A parsed `redis+cluster://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// `redis://[auth@]host:port` of every seed node.
    pub seeds: Vec<String>,
    /// Replicas that must hold a write before it counts as written.
    pub wait_replicas: u32,
    /// How long a write waits for them.
    pub wait_timeout: Duration,
}

impl ClusterUrl {
    /// Parse a cluster URL; the error names what is wrong with it.
    pub fn parse(url: &str) -> Result<ClusterUrl, String> {
        let rest = url
            .strip_prefix(CLUSTER_SCHEME)
            .ok_or_else(|| format!("`{url}`: a cluster URL starts with `{CLUSTER_SCHEME}`"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let mut seeds = vec![];
        for h in hosts.split(',') {
            let ok = h.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(format!(
                    "`{url}`: seed `{h}` is not host:port (a cluster has no database number)"
                ));
            }
            seeds.push(match auth {
                Some(a) => format!("redis://{a}@{h}"),
                None => format!("redis://{h}"),
            });
        }
        let mut out = ClusterUrl {
            seeds,
            wait_replicas: 1,
            wait_timeout: Duration::from_millis(1000),
        };
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "wait_replicas" => {
                    out.wait_replicas = v.parse().map_err(|_| {
                        format!("`{url}`: wait_replicas `{v}` is not a whole number")
                    })?;
                }
                "wait_timeout_ms" => {
                    let ms: u64 = v.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                        format!("`{url}`: wait_timeout_ms `{v}` is not a positive number")
                    })?;
                    out.wait_timeout = Duration::from_millis(ms);
                }
                _ => {
                    return Err(format!(
                        "`{url}`: unknown option `{k}` (expected wait_replicas, wait_timeout_ms)"
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// One Redis or a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `redis://…` or `rediss://…`, as the redis client takes it.
    Single(String),
    Cluster(ClusterUrl),
}

impl StoreUrl {
    /// Parse a store URL; the error names the forms accepted.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        if url.starts_with(CLUSTER_SCHEME) {
            ClusterUrl::parse(url).map(StoreUrl::Cluster)
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(StoreUrl::Single(url.to_string()))
        } else {
            Err(format!(
                "`{url}`: expected redis://host:port[/db] or {CLUSTER_SCHEME}host:port[,host:port…]"
            ))
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, StoreUrl::Cluster(_))
    }
}

/// True when `url` names a cluster (whether or not it parses).
pub fn is_cluster_url(url: &str) -> bool {
    url.starts_with(CLUSTER_SCHEME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_auth_and_options() {
        let u = ClusterUrl::parse(
            "redis+cluster://u:p%40ss@h1:7000,10.0.0.2:7001/?wait_replicas=2&wait_timeout_ms=250",
        )
        .unwrap();
        assert_eq!(
            u.seeds,
            ["redis://u:p%40ss@h1:7000", "redis://u:p%40ss@10.0.0.2:7001"]
        );
        assert_eq!(u.wait_replicas, 2);
        assert_eq!(u.wait_timeout, Duration::from_millis(250));
        let d = ClusterUrl::parse("redis+cluster://127.0.0.1:7000").unwrap();
        assert_eq!((d.wait_replicas, d.wait_timeout.as_millis()), (1, 1000));
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("redis://h:1", "starts with"),
            ("redis+cluster://h1", "not host:port"),
            ("redis+cluster://h1:7000,", "not host:port"),
            ("redis+cluster://h1:7000/2", "no database"),
            ("redis+cluster://h1:0", "not host:port"),
            ("redis+cluster://h1:7000?wait=1", "unknown option"),
            ("redis+cluster://h1:7000?wait_replicas=x", "wait_replicas"),
            (
                "redis+cluster://h1:7000?wait_timeout_ms=0",
                "wait_timeout_ms",
            ),
        ] {
            let e = ClusterUrl::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn store_urls_of_both_kinds() {
        assert_eq!(
            StoreUrl::parse("redis://127.0.0.1:6379/2").unwrap(),
            StoreUrl::Single("redis://127.0.0.1:6379/2".into())
        );
        assert!(StoreUrl::parse("redis+cluster://a:1,b:2")
            .unwrap()
            .is_cluster());
        let e = StoreUrl::parse("memcached://x").unwrap_err();
        assert!(e.contains("redis+cluster://"), "{e}");
        assert!(StoreUrl::parse("redis+cluster://a").is_err());
    }
}
