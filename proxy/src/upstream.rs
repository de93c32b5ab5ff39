//! Connections to nodes, with their deadlines on one timer per connection.
//!
//! Pingora bounds each upstream read and write with a timer of its own
//! (`read_timeout`, `write_timeout`: a Tokio timer registered and cancelled
//! for every read that waits) and watches each pooled connection with
//! another (`idle_timeout`). Here the node's TCP stream is wrapped instead
//! ([`PeerOptions::custom_l4`](pingora_core::upstreams::peer::PeerOptions)),
//! and the wrapper keeps every one of those deadlines on one timer, moved
//! lazily as the client side's `DeadlineIo` does:
//!
//! | wait | deadline | on expiry |
//! |---|---|---|
//! | a read of the exchange in progress that has to wait | `read_ms` from the start of the wait | `TimedOut` error (charged to the node) |
//! | a write of the exchange that cannot progress | `write_ms` from the start of the wait | `TimedOut` error |
//! | the pool's watch over an idle connection | `upstream_idle_ms` from the start of the watch | end of stream (the pool drops it) |
//!
//! Which wait is which follows from who waits: an exchange begins with the
//! request's write, so the task that wrote last owns the exchange, and a
//! read by any other task is the pool's watcher (Pingora watches an idle
//! connection from a task of its own, and takes it back before the next
//! request is written). A wait stores its deadline (one clock read); the
//! timer is reset only when that deadline is earlier than the one it is
//! set for, and one that fires early is pushed out to the earliest wait
//! still open, by at most the shorter of the read and write deadlines (so
//! the next exchange's deadline, later than that, does not move it). Under
//! steady traffic a connection's timer moves about once per `read_ms`.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The deadlines of the connections to nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamDeadlines {
    /// A read of a response that waits this long with no byte fails.
    pub read: Duration,
    /// A write of a request that makes no progress this long fails.
    pub write: Duration,
    /// A pooled connection unused this long is closed.
    pub idle: Duration,
}

/// Opens connections to nodes wrapped in [`UpstreamIo`]; given to Pingora
/// as the peers' `custom_l4`. The connect deadline is the peer's
/// `total_connection_timeout`, which Pingora keeps around this.
#[derive(Debug)]
pub struct UpstreamConnect {
    pub deadlines: UpstreamDeadlines,
}

#[async_trait]
impl L4Connect for UpstreamConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(
                ErrorType::ConnectError,
                format!("node address {addr} is not an IP address"),
            );
        };
        let tcp = TcpStream::connect(*inet).await.map_err(|e| {
            let etype = match e.kind() {
                io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                io::ErrorKind::TimedOut => ErrorType::ConnectTimedout,
                io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                    ErrorType::ConnectNoRoute
                }
                _ => ErrorType::ConnectError,
            };
            Error::because(etype, format!("Fail to connect to {addr}"), e)
        })?;
        let io = UpstreamIo::new(tcp, self.deadlines);
        Ok(VirtualSocketStream::new(Box::new(io)).into())
    }
}

/// A connection to a node with its deadlines; see the module docs.
pub struct UpstreamIo {
    inner: TcpStream,
    d: UpstreamDeadlines,
    /// The shorter of the read and write deadlines: how far a timer that
    /// fires early is pushed out at most.
    step: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The waker the timer was last polled with, until it is reset.
    timer_waker: Option<Waker>,
    /// The task of the exchange in progress: the last one to write.
    owner: Option<Waker>,
    /// Deadline of the exchange's read that waits.
    read_wait: Option<Instant>,
    /// Deadline of the exchange's write that waits.
    write_wait: Option<Instant>,
    /// Deadline of the pool's watch over the idle connection.
    idle_wait: Option<Instant>,
    expired: Option<Expired>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Read,
    Write,
    Idle,
}

impl fmt::Debug for UpstreamIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamIo")
            .field("inner", &self.inner)
            .field("expired", &self.expired)
            .finish()
    }
}

impl UpstreamIo {
    pub fn new(inner: TcpStream, d: UpstreamDeadlines) -> Self {
        let step = d.read.min(d.write);
        Self {
            inner,
            d,
            step,
            sleep: Box::pin(tokio::time::sleep_until(Instant::now() + step)),
            timer_waker: None,
            owner: None,
            read_wait: None,
            write_wait: None,
            idle_wait: None,
            expired: None,
        }
    }

    fn earliest(&self) -> Option<Instant> {
        [self.read_wait, self.write_wait, self.idle_wait]
            .into_iter()
            .flatten()
            .min()
    }

    /// A wait that ends at `at` begins: the timer is reset only when it is
    /// set for later.
    fn arm(&mut self, at: Instant) {
        if at < self.sleep.deadline() {
            self.reset_timer(at);
        }
    }

    fn reset_timer(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.timer_waker = None;
    }

    fn is_owner(&self, cx: &Context<'_>) -> bool {
        self.owner.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
    }

    /// The first wait whose deadline has passed, if any; otherwise the
    /// timer wakes this task at the earliest open wait's deadline (or
    /// sooner, then to be pushed out).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        if !self.sleep.is_elapsed()
            && self
                .timer_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return None;
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                if !self
                    .timer_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    self.timer_waker = Some(cx.waker().clone());
                }
                return None;
            }
            let now = Instant::now();
            let past = |w: Option<Instant>| w.is_some_and(|at| at <= now);
            if past(self.read_wait) {
                return Some(Expired::Read);
            }
            if past(self.write_wait) {
                return Some(Expired::Write);
            }
            if past(self.idle_wait) {
                return Some(Expired::Idle);
            }
            let next = self.earliest().unwrap_or(now + self.step);
            self.reset_timer(next.min(now + self.step));
        }
    }

    fn error(&self, what: Expired) -> io::Error {
        let msg = match what {
            Expired::Read => format!(
                "node read deadline: no byte from the node within {} ms",
                self.d.read.as_millis()
            ),
            Expired::Write => format!(
                "node write deadline: the node took nothing within {} ms",
                self.d.write.as_millis()
            ),
            Expired::Idle => "idle connection closed".to_string(),
        };
        io::Error::new(io::ErrorKind::TimedOut, msg)
    }

    /// Before a write: this task owns the exchange, the connection is not
    /// idle.
    fn on_write(&mut self, cx: &Context<'_>) {
        if !self.is_owner(cx) {
            self.owner = Some(cx.waker().clone());
        }
        self.idle_wait = None;
    }

    /// After a write: `pending` when it could not progress. `Some` when its
    /// deadline has passed.
    fn after_write(&mut self, cx: &mut Context<'_>, pending: bool) -> Option<io::Error> {
        if !pending {
            self.write_wait = None;
            return None;
        }
        if self.write_wait.is_none() {
            let at = Instant::now() + self.d.write;
            self.write_wait = Some(at);
            self.arm(at);
        }
        match self.poll_expired(cx) {
            Some(Expired::Write) => {
                self.expired = Some(Expired::Write);
                Some(self.error(Expired::Write))
            }
            _ => None,
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.expired {
            None => {}
            Some(Expired::Idle) => return Poll::Ready(Ok(())),
            Some(e) => return Poll::Ready(Err(this.error(e))),
        }
        // Read first: the deadline matters only to a read that waits.
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {}
            ready => {
                this.read_wait = None;
                return ready;
            }
        }
        if this.is_owner(cx) {
            if this.read_wait.is_none() {
                let at = Instant::now() + this.d.read;
                this.read_wait = Some(at);
                this.arm(at);
            }
        } else if this.idle_wait.is_none() {
            // The pool watches the connection: the exchange is over, and a
            // read or write of it left waiting has nothing to time out.
            this.read_wait = None;
            this.write_wait = None;
            let at = Instant::now() + this.d.idle;
            this.idle_wait = Some(at);
            this.arm(at);
        }
        match this.poll_expired(cx) {
            None | Some(Expired::Write) => Poll::Pending,
            Some(Expired::Idle) => {
                this.expired = Some(Expired::Idle);
                Poll::Ready(Ok(()))
            }
            Some(Expired::Read) => {
                this.expired = Some(Expired::Read);
                Poll::Ready(Err(this.error(Expired::Read)))
            }
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(e) = this.expired {
            return Poll::Ready(Err(this.error(e)));
        }
        this.on_write(cx);
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        match this.after_write(cx, r.is_pending()) {
            Some(e) => Poll::Ready(Err(e)),
            None => r,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(e) = this.expired {
            return Poll::Ready(Err(this.error(e)));
        }
        this.on_write(cx);
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        match this.after_write(cx, r.is_pending()) {
            Some(e) => Poll::Ready(Err(e)),
            None => r,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl VirtualSocket for UpstreamIo {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.inner.set_nodelay(true),
            VirtualSockOpt::KeepAlive(ka) => {
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(ka.idle)
                    .with_interval(ka.interval)
                    .with_retries(ka.count as u32);
                socket2::SockRef::from(&self.inner).set_tcp_keepalive(&keepalive)
            }
            _ => Ok(()),
        }
    }
}
