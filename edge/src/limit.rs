//! Bounds on open connections: per listener and per client address.
//!
//! A listener's accept loop calls [`ConnLimiter::try_acquire`] for every
//! accepted socket before anything else is done with it (no TLS handshake,
//! no buffer, no task). Past a bound the socket is closed at once with a
//! reset, which costs the process one `accept` and one `close`. The
//! returned [`ConnGuard`] lives as long as the connection and gives its
//! place back when dropped, however the connection ends.
//!
//! Limits are atomics so a config reload changes them live; connections
//! already open above a lowered limit are not cut, new ones wait for room.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections on the listener.
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64).
    pub max_per_client: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds `max_connections`.
    Listener,
    /// The client address holds `max_per_client`.
    Client,
}

/// How a connection ended early, for counting (see [`ConnGuard::closed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Nothing arrived before the first-byte or keep-alive deadline.
    Idle,
    /// The request head did not arrive whole in time.
    Header,
    /// The request body did not arrive whole in time.
    Body,
    /// The TLS handshake did not finish in time.
    Handshake,
    /// The client did not read the response for the write deadline.
    Write,
}

/// Counters of one listener, read by `/metrics`.
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub accepted: AtomicU64,
    pub refused_listener: AtomicU64,
    pub refused_client: AtomicU64,
    pub closed_idle: AtomicU64,
    pub closed_header: AtomicU64,
    pub closed_body: AtomicU64,
    pub closed_handshake: AtomicU64,
    pub closed_write: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// The open connections of one listener and the bounds they are held to.
#[derive(Debug)]
pub struct ConnLimiter {
    /// Listener name for metrics and logs (`http`, `https`, `admin`, …).
    pub name: String,
    max_connections: AtomicUsize,
    max_per_client: AtomicUsize,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, u32>>,
    last_warn: AtomicU64,
    pub counters: ConnCounters,
}

/// A place on a listener, held for as long as the connection is open.
#[derive(Debug)]
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    client: IpAddr,
}

/// Clients are counted per address; IPv6 per /64, since one host usually
/// has the whole prefix.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl ConnLimiter {
    pub fn new(name: impl Into<String>, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            max_connections: AtomicUsize::new(limits.max_connections),
            max_per_client: AtomicUsize::new(limits.max_per_client),
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            last_warn: AtomicU64::new(0),
            counters: ConnCounters::default(),
        })
    }

    /// Change the bounds (config reload). Open connections are kept.
    pub fn set_limits(&self, limits: Limits) {
        self.max_connections.store(limits.max_connections, Relaxed);
        self.max_per_client.store(limits.max_per_client, Relaxed);
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.load(Relaxed),
            max_per_client: self.max_per_client.load(Relaxed),
        }
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Client addresses with at least one open connection.
    pub fn clients(&self) -> usize {
        self.per_client.lock().len()
    }

    /// Log a refusal: at debug level each, at warn level at most every
    /// ten seconds with the totals (a flood must not flood the log).
    pub fn log_refusal(&self, why: Refused, peer: std::net::SocketAddr) {
        tracing::debug!(listener = %self.name, %peer, ?why, "connection refused");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_warn.load(Relaxed);
        if now >= last + 10
            && self
                .last_warn
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let l = self.limits();
            tracing::warn!(
                listener = %self.name,
                open = self.open(),
                max_connections = l.max_connections,
                max_per_client = l.max_per_client,
                refused_listener = self.counters.refused_listener.load(Relaxed),
                refused_client = self.counters.refused_client.load(Relaxed),
                "connections refused: past a connection bound"
            );
        }
    }

    /// Take a place for a connection from `client`, or say which bound it
    /// is past (and count the refusal).
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr) -> Result<ConnGuard, Refused> {
        let max = self.max_connections.load(Relaxed);
        if self
            .open
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            self.counters.refused_listener.fetch_add(1, Relaxed);
            return Err(Refused::Listener);
        }
        let key = client_key(client);
        let per = self.max_per_client.load(Relaxed);
        {
            let mut m = self.per_client.lock();
            let n = m.entry(key).or_insert(0);
            if (*n as usize) >= per {
                if *n == 0 {
                    m.remove(&key);
                }
                drop(m);
                self.open.fetch_sub(1, Relaxed);
                self.counters.refused_client.fetch_add(1, Relaxed);
                return Err(Refused::Client);
            }
            *n += 1;
        }
        self.counters.accepted.fetch_add(1, Relaxed);
        Ok(ConnGuard {
            limiter: self.clone(),
            client: key,
        })
    }
}

impl ConnGuard {
    /// Count how a connection was cut short.
    pub fn closed(&self, how: Closed) {
        let c = &self.limiter.counters;
        match how {
            Closed::Idle => &c.closed_idle,
            Closed::Header => &c.closed_header,
            Closed::Body => &c.closed_body,
            Closed::Handshake => &c.closed_handshake,
            Closed::Write => &c.closed_write,
        }
        .fetch_add(1, Relaxed);
    }

    pub fn limiter(&self) -> &Arc<ConnLimiter> {
        &self.limiter
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        {
            let mut m = self.limiter.per_client.lock();
            if let Some(n) = m.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.client);
                }
            }
        }
        self.limiter.open.fetch_sub(1, Relaxed);
    }
}

/// Prometheus text for listeners: open connections, accepted, refused by
/// reason, closed by a deadline by stage, accept errors; and the process's
/// open-file limit. Metric names are `{prefix}_connections_*`.
pub fn render_metrics(prefix: &str, listeners: &[&ConnLimiter], out: &mut String) {
    use crate::metrics::{Kind, Writer};
    let mut w = Writer::new(out);
    let name = format!("{prefix}_connections_open");
    w.family(&name, Kind::Gauge, "Open client connections, per listener.");
    for l in listeners {
        w.sample(&name, &[("listener", &l.name)], l.open());
    }
    let name = format!("{prefix}_connections_accepted_total");
    w.family(
        &name,
        Kind::Counter,
        "Client connections accepted, per listener.",
    );
    for l in listeners {
        w.sample(
            &name,
            &[("listener", &l.name)],
            l.counters.accepted.load(Relaxed),
        );
    }
    let name = format!("{prefix}_connections_refused_total");
    w.family(
        &name,
        Kind::Counter,
        "Client connections reset at accept: past the listener's bound or the client address's.",
    );
    for l in listeners {
        let c = &l.counters;
        for (why, v) in [
            ("listener", &c.refused_listener),
            ("client", &c.refused_client),
        ] {
            w.sample(
                &name,
                &[("listener", &l.name), ("reason", why)],
                v.load(Relaxed),
            );
        }
    }
    let name = format!("{prefix}_connections_closed_total");
    w.family(
        &name,
        Kind::Counter,
        "Client connections closed by a deadline, by stage.",
    );
    for l in listeners {
        let c = &l.counters;
        for (stage, v) in [
            ("idle", &c.closed_idle),
            ("header", &c.closed_header),
            ("body", &c.closed_body),
            ("handshake", &c.closed_handshake),
            ("write", &c.closed_write),
        ] {
            w.sample(
                &name,
                &[("listener", &l.name), ("stage", stage)],
                v.load(Relaxed),
            );
        }
    }
    let name = format!("{prefix}_accept_errors_total");
    w.family(
        &name,
        Kind::Counter,
        "Failed accept calls (out of file descriptors and the like).",
    );
    for l in listeners {
        w.sample(
            &name,
            &[("listener", &l.name)],
            l.counters.accept_errors.load(Relaxed),
        );
    }
    w.gauge(
        &format!("{prefix}_open_files_limit"),
        "The process's soft open-file limit.",
        crate::fd::nofile(),
    );
}

/// Close a refused socket with a reset (SO_LINGER 0): no FIN handshake and
/// no TIME_WAIT left on this side, so a flood of refusals costs nothing
/// after the `close`.
/// Call it, then drop the socket.
pub fn reset<S: std::os::fd::AsFd>(stream: &S) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bounds_per_listener_and_per_client_and_places_come_back() {
        let l = ConnLimiter::new(
            "t",
            Limits {
                max_connections: 3,
                max_per_client: 2,
            },
        );
        let a1 = l.try_acquire(ip("10.0.0.1")).unwrap();
        let a2 = l.try_acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(l.try_acquire(ip("10.0.0.1")).unwrap_err(), Refused::Client);
        let b1 = l.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(
            l.try_acquire(ip("10.0.0.3")).unwrap_err(),
            Refused::Listener
        );
        assert_eq!(l.open(), 3);
        drop(a1);
        let _a3 = l.try_acquire(ip("10.0.0.1")).unwrap();
        drop((a2, b1));
        assert_eq!(l.open(), 1);
        assert_eq!(l.clients(), 1);
        assert_eq!(l.counters.refused_client.load(Relaxed), 1);
        assert_eq!(l.counters.refused_listener.load(Relaxed), 1);
        assert_eq!(l.counters.accepted.load(Relaxed), 4);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let l = ConnLimiter::new(
            "t",
            Limits {
                max_connections: 10,
                max_per_client: 1,
            },
        );
        let _a = l.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(l.try_acquire(ip("2001:db8:1:2::ffff")).is_err());
        assert!(l.try_acquire(ip("2001:db8:1:3::1")).is_ok());
        // a v4-mapped address is the v4 client
        let _b = l.try_acquire(ip("10.1.1.1")).unwrap();
        assert!(l.try_acquire(ip("::ffff:10.1.1.1")).is_err());
    }

    #[test]
    fn lowered_limits_apply_to_new_connections_only() {
        let l = ConnLimiter::new(
            "t",
            Limits {
                max_connections: 2,
                max_per_client: 2,
            },
        );
        let g = (
            l.try_acquire(ip("10.0.0.1")).unwrap(),
            l.try_acquire(ip("10.0.0.1")).unwrap(),
        );
        l.set_limits(Limits {
            max_connections: 1,
            max_per_client: 1,
        });
        assert_eq!(l.open(), 2);
        assert!(l.try_acquire(ip("10.0.0.2")).is_err());
        drop(g);
        assert!(l.try_acquire(ip("10.0.0.2")).is_ok());
    }
}
