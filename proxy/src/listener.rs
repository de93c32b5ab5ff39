//! The traffic listeners: accept, bound, handshake, sniff, then hand the
//! connection to Pingora's HTTP server.
//!
//! Pingora's own listening service accepts without bound, gives a TLS
//! handshake a fixed 60 s, and waits for 24 bytes with no deadline to tell
//! h2c from HTTP/1, so a connection that sends nothing is held forever. This
//! service owns the connection lifecycle up to the first request and keeps
//! Pingora for everything after it (`HttpProxy::process_new`: HTTP/1
//! keep-alive, HTTP/2, the proxy phases):
//!
//! 1. accept; past the listener's or the client address's bound
//!    ([`ConnLimiter`]), reset the socket at once — no handshake, no task
//!    (`shardcast_edge::http1::accept`, shared with every other listener);
//! 2. TLS: the handshake within `timeouts.client_handshake_ms`;
//!    cleartext: read the first bytes within `timeouts.client_header_ms` and
//!    decide h2c or HTTP/1 as soon as they can no longer be the HTTP/2
//!    preface (a complete 18-byte HTTP/1.0 request is answered at once);
//! 3. wrap the connection in a [`DeadlineStream`] (head, body, keep-alive,
//!    stalled-write and HTTP/2-preface deadlines) that holds the
//!    connection's place on the listener until it closes.
//!
//! Listening sockets are shared with Pingora's graceful upgrade: they are
//! recorded in (or taken from) the server's table of listening fds, so a
//! process started with `--upgrade` takes them over without a gap.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_proxy::HttpProxy;
use shardcast_edge::limit::{Closed, ConnGuard, ConnLimiter};
use shardcast_edge::Deadlines;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::{debug, error, info};

use crate::deadline::{DeadlineStream, H2_PREFACE};
use crate::proxy::ShardProxy;
use crate::state::Shared;

/// Backlog of a listening socket (the kernel caps it at `somaxconn`).
const BACKLOG: i32 = 65_535;

/// One traffic listener.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// TLS (with ALPN as configured) or cleartext HTTP/1 and h2c.
    pub tls: Option<Arc<Acceptor>>,
    pub limiter: Arc<ConnLimiter>,
    /// Bound at start (so a busy port fails before anything runs); `None`
    /// when the socket comes from the previous process (`--upgrade`).
    pub socket: Option<std::net::TcpListener>,
}

impl Endpoint {
    /// The key of this listener in Pingora's table of listening fds.
    fn key(&self) -> String {
        self.addr.to_string()
    }
}

/// The Pingora service that runs every traffic listener.
pub struct TrafficService {
    endpoints: Vec<Endpoint>,
    keys: Vec<String>,
    app: Arc<HttpProxy<ShardProxy>>,
    shared: Arc<Shared>,
}

impl TrafficService {
    pub fn new(endpoints: Vec<Endpoint>, app: HttpProxy<ShardProxy>, shared: Arc<Shared>) -> Self {
        Self {
            keys: endpoints.iter().map(Endpoint::key).collect(),
            endpoints,
            app: Arc::new(app),
            shared,
        }
    }
}

/// Bind a listening socket the way a proxy should: SO_REUSEADDR (restart
/// without waiting out TIME_WAIT), IPv6 sockets v6-only, a deep backlog.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Take ownership of a listening socket handed over by the previous
/// process on graceful upgrade.
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> std::net::TcpListener {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is an open listening socket received over Pingora's
    // upgrade socket (SCM_RIGHTS) at bootstrap. Pingora's table only
    // records the number (to send it on at the next upgrade); nothing else
    // in this process owns or closes it, so this listener is its one owner.
    unsafe { std::net::TcpListener::from_raw_fd(fd) }
}

/// The listening socket of `ep`: handed over, bound at start, or bound now.
fn socket_of(ep: &mut Endpoint, fds: Option<&ListenFds>) -> io::Result<std::net::TcpListener> {
    let key = ep.key();
    let Some(fds) = fds else {
        return match ep.socket.take() {
            Some(s) => Ok(s),
            None => bind(ep.addr),
        };
    };
    let mut table = fds.lock();
    if let Some(&fd) = table.get(&key) {
        let l = adopt(fd);
        l.set_nonblocking(true)?;
        info!(addr = %ep.addr, "listening socket taken over from the previous process");
        return Ok(l);
    }
    let l = match ep.socket.take() {
        Some(s) => s,
        None => bind(ep.addr)?,
    };
    table.add(key, l.as_raw_fd());
    Ok(l)
}

#[async_trait]
impl pingora_core::services::Service for TrafficService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut loops = vec![];
        for mut ep in std::mem::take(&mut self.endpoints) {
            let listener = match socket_of(&mut ep, fds.as_ref())
                .and_then(tokio::net::TcpListener::from_std)
            {
                Ok(l) => l,
                Err(e) => {
                    // Nothing can serve without it; the supervisor restarts us.
                    error!(addr = %ep.addr, error = %e, "cannot listen");
                    std::process::exit(1);
                }
            };
            info!(listener = %ep.limiter.name, "listening");
            loops.push(tokio::spawn(accept_loop(
                listener,
                ep,
                self.app.clone(),
                self.shared.clone(),
                shutdown.clone(),
            )));
        }
        futures::future::join_all(loops).await;
    }

    fn name(&self) -> &str {
        "shardcast proxy"
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.keys.clone())
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    ep: Endpoint,
    app: Arc<HttpProxy<ShardProxy>>,
    shared: Arc<Shared>,
    mut shutdown: ShutdownWatch,
) {
    let limiter = ep.limiter.clone();
    loop {
        let (tcp, peer, guard) = tokio::select! {
            a = shardcast_edge::http1::accept(&listener, &limiter) => a,
            _ = shardcast_edge::http1::stopped(&mut shutdown) => break,
        };
        let (app, shared, tls, shutdown) = (
            app.clone(),
            shared.clone(),
            ep.tls.clone(),
            shutdown.clone(),
        );
        // Spread connections over the worker threads (one runtime each).
        // ~800 bytes per task until the first request (measured with
        // size_of_val): what an idle connection costs.
        pingora_runtime::current_handle().spawn(serve_connection(
            tcp, peer, guard, tls, app, shared, shutdown,
        ));
    }
    info!(listener = %limiter.name, "stopped accepting");
}

/// A Pingora stream over an accepted socket, with its peer address known
/// (for logs and `client_addr`) without another syscall.
fn l4_stream(tcp: TcpStream, peer: SocketAddr) -> L4Stream {
    let mut s = L4Stream::from(tcp);
    let digest = SocketDigest::from_raw_fd(s.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    s.set_socket_digest(digest);
    s
}

/// The first bytes of a cleartext connection: enough to tell h2c (the
/// 24-byte preface) from HTTP/1.
struct FirstBytes {
    buf: [u8; 256],
    len: usize,
    h2c: bool,
}

/// Read until the bytes either cannot be the HTTP/2 preface (HTTP/1: often
/// the first read, which usually holds the whole head) or are all of it.
/// `None`: the client closed before sending anything.
async fn sniff(tcp: &mut TcpStream) -> io::Result<Option<FirstBytes>> {
    let mut f = FirstBytes {
        buf: [0; 256],
        len: 0,
        h2c: false,
    };
    loop {
        let n = tcp.read(&mut f.buf[f.len..]).await?;
        if n == 0 {
            return Ok((f.len > 0).then_some(f));
        }
        f.len += n;
        let k = f.len.min(H2_PREFACE.len());
        if f.buf[..k] != H2_PREFACE[..k] {
            return Ok(Some(f));
        }
        if k == H2_PREFACE.len() {
            f.h2c = true;
            return Ok(Some(f));
        }
    }
}

/// How far ahead each worker's timer wheel always has a timer due (see
/// [`keep_a_timer_near`]): shorter than the upstream read and write
/// timeouts' usual seconds, long enough that its own wake is nothing.
const TIMER_PACE: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    /// This worker thread runs its [`keep_a_timer_near`] task.
    static PACED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Start this worker thread's [`keep_a_timer_near`] task, once.
fn pace_this_worker(shutdown: &ShutdownWatch) {
    if !PACED.with(|p| p.replace(true)) {
        tokio::spawn(keep_a_timer_near(shutdown.clone()));
    }
}

/// Keeps a timer due within [`TIMER_PACE`] on this worker's Tokio timer
/// wheel, waking once a pace. Tokio's timer driver, when a timer is
/// registered earlier than the wake it last planned (taken when the worker
/// last parked: the wheel's next expiration, or none), unparks the worker's
/// I/O driver, a `write` to its eventfd and one more turn of its event
/// loop, even from the worker's own thread. Pingora arms a timer on each
/// upstream read that waits (`read_ms`, 5 s) and each pooled connection's
/// idle watch; with no earlier timer on the wheel, up to a third of
/// requests at 64 connections paid that write (0.2–0.3 eventfd `write`s a
/// request, none in a Pingora proxy without timers: `benches/RESULTS.md`,
/// step 13). With a timer always due within a second, a timeout of a
/// second or more never lies before the planned wake.
async fn keep_a_timer_near(mut shutdown: ShutdownWatch) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TIMER_PACE) => {}
            _ = shardcast_edge::http1::stopped(&mut shutdown) => return,
        }
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
    tls: Option<Arc<Acceptor>>,
    app: Arc<HttpProxy<ShardProxy>>,
    shared: Arc<Shared>,
    shutdown: ShutdownWatch,
) {
    pace_this_worker(&shutdown);
    let _ = tcp.set_nodelay(true);
    // Deadlines as configured now: a reload applies to new connections.
    let t = shared.current().config.timeouts;
    let deadlines = Deadlines {
        header: t.client_header,
        body: t.client_body,
        keepalive: t.client_keepalive,
        write: t.client_write,
    };
    // The concrete stream inside the deadline wrapper (one dynamic call
    // per read and write, through the `Stream` Pingora is handed).
    let stream: Stream = match tls {
        None => {
            let mut tcp = tcp;
            let first = match tokio::time::timeout(t.client_header, sniff(&mut tcp)).await {
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "client connection failed before its first request");
                    return;
                }
                Err(_) => {
                    guard.closed(Closed::Idle);
                    return;
                }
            };
            let mut l4 = l4_stream(tcp, peer);
            l4.rewind(&first.buf[..first.len]);
            Box::new(
                DeadlineStream::new(l4, first.h2c, deadlines, Some(guard)).over_unbuffered_tcp(),
            )
        }
        Some(acceptor) => {
            let l4 = l4_stream(tcp, peer);
            // Boxed: the handshake's state is large, and inline it would be
            // part of every connection's task, TLS or not, idle or not.
            let handshake = Box::pin(acceptor.tls_handshake(l4));
            match tokio::time::timeout(t.client_handshake, handshake).await {
                Ok(Ok(s)) => Box::new(DeadlineStream::new(s, false, deadlines, Some(guard))),
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    guard.closed(Closed::Handshake);
                    return;
                }
            }
        }
    };
    // Pingora's HTTP server from here: the keep-alive loop, HTTP/2 streams,
    // the proxy phases. It returns when the connection is done.
    let _ = app.process_new(stream, &shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A worker runs one pacing task whatever its number of connections,
    /// and the task ends when the server shuts down.
    #[tokio::test]
    async fn a_worker_paces_its_timer_wheel_once_until_shutdown() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        assert_eq!(tasks(), 0);
        for _ in 0..3 {
            pace_this_worker(&rx);
        }
        assert_eq!(tasks(), 1, "one pacing task per worker thread");
        tx.send(true).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tasks() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the pacing task outlived shutdown"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // a later connection on the same worker starts none again
        pace_this_worker(&rx);
        assert_eq!(tasks(), 0);
    }
}
