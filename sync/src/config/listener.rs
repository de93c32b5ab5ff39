//! `[timeouts]` and `[limits]`: client-connection deadlines and bounds of
//! every listener, and their validation.

use std::time::Duration;

use serde::Deserialize;

/// `[timeouts]`: deadlines on client connections, for every listener of
/// the process (a client that sends nothing, trickles its head or body,
/// idles between requests, or does not read, is cut off; counted in
/// `/metrics`). Each 1 ms ..= 1 hour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// Accept → first byte of a request, and first byte → end of its
    /// head. Default 10000.
    #[serde(default = "d_client_header")]
    pub client_header_ms: u64,
    /// End of the head → the whole body. Default 30000.
    #[serde(default = "d_client_body")]
    pub client_body_ms: u64,
    /// Idle time between requests on a keep-alive connection. Default
    /// 75000 (nginx's): longer than a proxy keeps an idle upstream
    /// connection in its pool (`upstream_idle_ms`, 60000 by default), so a
    /// node never closes a pooled connection just as the proxy picks it.
    #[serde(default = "d_client_keepalive")]
    pub client_keepalive_ms: u64,
    /// A response write that makes no progress (the client does not read).
    /// Default 30000.
    #[serde(default = "d_client_write")]
    pub client_write_ms: u64,
}

fn d_client_header() -> u64 {
    10_000
}
fn d_client_body() -> u64 {
    30_000
}
/// Default keep-alive idle of every sync listener, ms (see
/// [`TimeoutsFile::client_keepalive_ms`]).
pub const CLIENT_KEEPALIVE_MS: u64 = 75_000;

fn d_client_keepalive() -> u64 {
    CLIENT_KEEPALIVE_MS
}
fn d_client_write() -> u64 {
    30_000
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        TimeoutsFile {
            client_header_ms: d_client_header(),
            client_body_ms: d_client_body(),
            client_keepalive_ms: d_client_keepalive(),
            client_write_ms: d_client_write(),
        }
    }
}

/// Bounds on open client connections of one listener (`[limits]` for the
/// control API or a standalone node, `[node.limits]` for each in-process
/// node). A connection past a bound is reset at accept. Each 1 ..= 1000000,
/// and the per-client bound at most the listener's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Open connections on the listener. Default 1024 on the control API,
    /// 4096 on a node (see [`CONTROL_MAX_CONNECTIONS`](crate::http::CONTROL_MAX_CONNECTIONS),
    /// [`NODE_MAX_CONNECTIONS`](crate::http::NODE_MAX_CONNECTIONS)).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Open connections from one client address (IPv6: one /64). Default:
    /// the same as the listener's default (a node's clients are proxies,
    /// each with an upstream pool of up to 1024 connections).
    #[serde(default)]
    pub max_connections_per_client: Option<usize>,
}

/// Validate `[timeouts]` (errors name `timeouts.<field>`).
pub(super) fn deadlines(errs: &mut Vec<String>, t: &TimeoutsFile) -> shardcast_edge::Deadlines {
    let mut ms = |name: &str, v: u64| {
        if v == 0 || v > 3_600_000 {
            errs.push(format!(
                "timeouts.{name}: {v} must be between 1 ms and 1 hour"
            ));
        }
        Duration::from_millis(v.clamp(1, 3_600_000))
    };
    shardcast_edge::Deadlines {
        header: ms("client_header_ms", t.client_header_ms),
        body: ms("client_body_ms", t.client_body_ms),
        keepalive: ms("client_keepalive_ms", t.client_keepalive_ms),
        write: ms("client_write_ms", t.client_write_ms),
    }
}

/// Validate one listener's limits table (`field` names it in errors);
/// `default_max` for a bound not set (the per-client default is never
/// above the listener's bound).
pub(super) fn limits(
    errs: &mut Vec<String>,
    l: &LimitsFile,
    field: &str,
    default_max: usize,
) -> shardcast_edge::Limits {
    let max = l.max_connections.unwrap_or(default_max);
    let per = l.max_connections_per_client.unwrap_or(default_max.min(max));
    for (name, v) in [
        ("max_connections", max),
        ("max_connections_per_client", per),
    ] {
        if v == 0 || v > 1_000_000 {
            errs.push(format!("{field}.{name}: {v} must be between 1 and 1000000"));
        }
    }
    if per > max {
        errs.push(format!(
            "{field}.max_connections_per_client: {per} exceeds {field}.max_connections ({max})"
        ));
    }
    shardcast_edge::Limits {
        max_connections: max,
        max_per_client: per,
    }
}
