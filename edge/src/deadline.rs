//! A deadline at every stage of a client connection.
//!
//! A server's own read timeouts restart on every read, so a client that
//! trickles one byte at a time (slowloris, slow POST) or that connects and
//! sends nothing would hold a connection forever. [`DeadlineIo`] wraps an
//! accepted connection and follows the request phases from the bytes read
//! and written, each with its own deadline:
//!
//! | phase | starts | deadline | on expiry |
//! |---|---|---|---|
//! | idle, first request | accept | `header` | end of stream (the server closes quietly) |
//! | head | first byte of a request | `header` | `TimedOut` error |
//! | body | end of the head | `body` | `TimedOut` error |
//! | idle, between requests | last response byte written | `keepalive` | end of stream |
//! | HTTP/2 preface | accept / TLS handshake | `header` | `TimedOut` error |
//! | stalled write | a write that cannot progress | `write` | `TimedOut` error |
//!
//! After the HTTP/2 preface, HTTP/2's own idle timeout (no open stream)
//! and per-stream body deadlines apply; they belong to the HTTP/2 server.
//! The body phase ends when the response starts, so a server that answers
//! before reading the whole body is not cut off by it.
//!
//! Cost: one timer per connection. A phase change stores its deadline (a
//! clock read) and touches the timer only when the new deadline is earlier
//! than the one the timer is set for; a timer that fires before the stored
//! deadline is pushed out to it then. Writes between requests only set a
//! flag (the idle deadline is pushed out lazily when it fires). So a
//! keep-alive request under steady traffic costs no timer operation: the
//! timer moves about once per deadline period. The timer is polled only by
//! a read that has to wait: a deadline is enforced at the connection's next
//! wait, not at every read.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::limit::{Closed, ConnGuard};

/// The deadlines of one listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Accept → first byte, and first byte → end of the request head.
    pub header: Duration,
    /// End of the head → the whole body (until the response starts).
    pub body: Duration,
    /// End of a response → first byte of the next request.
    pub keepalive: Duration,
    /// A write that makes no progress (a client that does not read).
    pub write: Duration,
}

impl Default for Deadlines {
    /// nginx's and HAProxy's usual edge: 10 s to send a head, 10 s idle.
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            keepalive: Duration::from_secs(10),
            write: Duration::from_secs(30),
        }
    }
}

/// The protocol a connection speaks, known before its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http1,
    /// HTTP/2: only the preface has a deadline here.
    H2,
}

const H2_PREFACE_LEN: u32 = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in progress.
    Idle,
    /// Reading a request head; the state of the end-of-head scanner.
    Head(u8),
    /// Head complete; reading the body until the response starts.
    Body,
    /// HTTP/2 preface bytes still to come.
    Preface(u32),
    /// HTTP/2 after the preface: no read deadline here.
    Off,
    /// A deadline fired; the connection is done.
    Expired(Closed),
}

/// A connection with per-stage deadlines; see the module docs.
pub struct DeadlineIo<T> {
    inner: T,
    phase: Phase,
    d: Deadlines,
    /// When the current phase ends; the timer is set for this or earlier.
    deadline: Instant,
    sleep: Pin<Box<Sleep>>,
    /// The waker the timer was last polled with, until it is reset: while
    /// it has not fired, it wakes that task, and polling it again with the
    /// same waker would only register it again.
    timer_waker: Option<Waker>,
    /// Written to since the idle timer was armed: push it out rather than
    /// fire.
    wrote: bool,
    write_sleep: Option<Pin<Box<Sleep>>>,
    write_armed: bool,
    guard: Option<ConnGuard>,
}

impl<T> fmt::Debug for DeadlineIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineIo")
            .field("phase", &self.phase)
            .finish()
    }
}

impl<T> DeadlineIo<T> {
    /// Wrap a connection just accepted (or just out of its TLS handshake).
    /// `guard` is the connection's place on its listener; it is given back
    /// when this is dropped, and counts the deadlines that fire.
    pub fn new(inner: T, mode: Mode, d: Deadlines, guard: Option<ConnGuard>) -> Self {
        let phase = match mode {
            Mode::Http1 => Phase::Idle,
            Mode::H2 => Phase::Preface(H2_PREFACE_LEN),
        };
        let deadline = Instant::now() + d.header;
        Self {
            inner,
            phase,
            d,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timer_waker: None,
            wrote: false,
            write_sleep: None,
            write_armed: false,
            guard,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The connection's place on its listener.
    pub fn guard(&self) -> Option<&ConnGuard> {
        self.guard.as_ref()
    }

    /// Response bytes were taken into a write buffer above this stream, to
    /// be written here at its next flush: the request's phases move on now,
    /// as they would for bytes written (the response has started).
    pub fn wrote_buffered(&mut self) {
        self.on_write();
    }

    /// The current phase ends at `at`. The timer is reset only when `at`
    /// is earlier than the time it is set for; otherwise it fires early and
    /// [`Self::poll_deadline`] pushes it out.
    fn set_deadline(&mut self, at: Instant) {
        self.deadline = at;
        if at < self.sleep.deadline() {
            self.reset_timer(at);
        }
    }

    fn reset_timer(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.timer_waker = None;
    }

    /// The timer has not fired and would wake this task: a wait that needs
    /// no timer operation (nearly every read that waits). Inline, so that
    /// a read that waits costs no call for it.
    #[inline(always)]
    fn timer_set_for(&self, cx: &Context<'_>) -> bool {
        self.timer_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
            && !self.sleep.is_elapsed()
    }

    /// Ready once the stored deadline has passed (the timer, set for it or
    /// earlier, is pushed out to it when it fires early).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer_set_for(cx) {
            return Poll::Pending;
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
                return Poll::Pending;
            }
            if self.sleep.deadline() >= self.deadline {
                return Poll::Ready(());
            }
            let at = self.deadline;
            self.reset_timer(at);
        }
    }

    fn expire(&mut self, how: Closed) {
        if let Some(g) = &self.guard {
            g.closed(how);
        }
        self.phase = Phase::Expired(how);
    }

    /// Advance the phase over bytes just read. The timer is reset once,
    /// for the phase the bytes end in (a head that arrives whole goes from
    /// idle to body with one reset). Out of line: one read in four or five
    /// brings bytes, and the rest stay small without it.
    #[inline(never)]
    fn observe(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.phase {
            Phase::Idle => {
                self.phase = Phase::Head(0);
                let d = if self.scan_head(data) {
                    self.d.body
                } else {
                    self.d.header
                };
                self.set_deadline(Instant::now() + d);
            }
            Phase::Head(_) => {
                if self.scan_head(data) {
                    self.set_deadline(Instant::now() + self.d.body);
                }
            }
            Phase::Preface(left) => {
                let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                self.phase = if n >= left {
                    Phase::Off
                } else {
                    Phase::Preface(left - n)
                };
            }
            Phase::Body | Phase::Off | Phase::Expired(_) => {}
        }
    }

    /// Find the end of a request head: an empty line, CRLF or bare LF.
    /// `true` when the head ended (the phase is then `Body`).
    fn scan_head(&mut self, data: &[u8]) -> bool {
        let Phase::Head(mut s) = self.phase else {
            return false;
        };
        // A read that ends with an empty line holds the end of a head
        // (the first empty line in it, at the latest), whatever the state
        // it starts in: most heads arrive whole in one read, so most need
        // no scan.
        if data.ends_with(b"\r\n\r\n") {
            self.phase = Phase::Body;
            return true;
        }
        // s: 0 inside a line, 1 just after a line end, 2 after LF then CR.
        let mut i = 0;
        while i < data.len() {
            if s == 0 {
                // Inside a line only its end matters: jump to it.
                match memchr::memchr(b'\n', &data[i..]) {
                    Some(j) => {
                        i += j + 1;
                        s = 1;
                        continue;
                    }
                    None => break,
                }
            }
            let b = data[i];
            i += 1;
            s = match (s, b) {
                (1 | 2, b'\n') => {
                    self.phase = Phase::Body;
                    return true;
                }
                (_, b'\n') => 1,
                (1, b'\r') => 2,
                _ => 0,
            };
        }
        self.phase = Phase::Head(s);
        false
    }

    /// The response is being written.
    fn on_write(&mut self) {
        match self.phase {
            Phase::Head(_) | Phase::Body => {
                self.phase = Phase::Idle;
                self.wrote = false;
                self.set_deadline(Instant::now() + self.d.keepalive);
            }
            Phase::Idle => self.wrote = true,
            _ => {}
        }
    }

    /// Track a write that cannot progress. A write that did progress
    /// (nearly every one) costs a store, inline.
    #[inline]
    fn write_stalled(&mut self, cx: &mut Context<'_>, pending: bool) -> Option<io::Error> {
        if !pending {
            self.write_armed = false;
            return None;
        }
        self.write_waits(cx)
    }

    /// A write that has to wait: its deadline, armed on the first wait.
    #[cold]
    fn write_waits(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let at = Instant::now() + self.d.write;
        let s = self
            .write_sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if !self.write_armed {
            s.as_mut().reset(at);
            self.write_armed = true;
        }
        if s.as_mut().poll(cx).is_ready() {
            self.write_armed = false;
            self.expire(Closed::Write);
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "client write deadline: the client does not read",
            ));
        }
        None
    }
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl<T: AsyncRead + Unpin> DeadlineIo<T> {
    /// A read that has to wait, and the timer needs polling: a deadline may
    /// have passed, or the timer is to be armed for this task.
    #[inline(never)]
    fn poll_read_wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.phase {
            Phase::Idle => {
                while self.poll_deadline(cx).is_ready() {
                    if self.wrote {
                        // Still answering, or just done: idle from now.
                        self.wrote = false;
                        self.set_deadline(Instant::now() + self.d.keepalive);
                        continue;
                    }
                    // Nothing to read for the whole idle time: end of
                    // stream, which every server takes as a quiet close.
                    self.expire(Closed::Idle);
                    return Poll::Ready(Ok(()));
                }
            }
            Phase::Head(_) | Phase::Body | Phase::Preface(_) => {
                if self.poll_deadline(cx).is_ready() {
                    let (how, what) = match self.phase {
                        Phase::Body => (Closed::Body, "request body deadline"),
                        _ => (Closed::Header, "request header deadline"),
                    };
                    self.expire(how);
                    return Poll::Ready(Err(timed_out(what)));
                }
            }
            Phase::Off | Phase::Expired(_) => {}
        }
        Poll::Pending
    }
}

/// What a read of a connection whose deadline fired returns.
#[cold]
fn expired_read(how: Closed) -> io::Result<()> {
    match how {
        Closed::Idle => Ok(()),
        Closed::Write => Err(timed_out("client write deadline")),
        _ => Err(timed_out("request deadline")),
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    /// Inline into the stream above (a client connection is read four or
    /// five times a request, most reads finding nothing yet): the phases'
    /// work is out of line (`observe`, `poll_read_wait`), so what is left
    /// here is the read, a phase test and, for a read that waits on a
    /// timer already set for this task, two loads.
    #[inline(always)]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.phase {
            Phase::Off => return Pin::new(&mut this.inner).poll_read(cx, buf),
            Phase::Expired(how) => return Poll::Ready(expired_read(how)),
            Phase::Idle | Phase::Head(_) | Phase::Body | Phase::Preface(_) => {}
        }
        // Read first: bytes that are there are taken (and move the phase
        // on); the deadline matters only when the read has to wait, so the
        // timer is polled (its waker registered) only then. A connection
        // past its deadline is still cut at its next wait — before the
        // client can send more.
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                if filled.len() > before {
                    this.observe(&filled[before..]);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        // Every phase that gets here polls the timer first; when it is set
        // for this task and has not fired, that poll is `Pending`.
        if this.timer_set_for(cx) {
            return Poll::Pending;
        }
        this.poll_read_wait(cx)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Phase::Expired(Closed::Write) = this.phase {
            return Poll::Ready(Err(timed_out("client write deadline")));
        }
        this.on_write();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        match this.write_stalled(cx, r.is_pending()) {
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
        if let Phase::Expired(Closed::Write) = this.phase {
            return Poll::Ready(Err(timed_out("client write deadline")));
        }
        this.on_write();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        match this.write_stalled(cx, r.is_pending()) {
            Some(e) => Poll::Ready(Err(e)),
            None => r,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        match this.write_stalled(cx, r.is_pending()) {
            Some(e) => Poll::Ready(Err(e)),
            None => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn d(ms: u64) -> Deadlines {
        Deadlines {
            header: Duration::from_millis(ms),
            body: Duration::from_millis(ms * 2),
            keepalive: Duration::from_millis(ms * 3),
            write: Duration::from_millis(ms),
        }
    }

    #[tokio::test]
    async fn phases_follow_the_request() {
        let (a, _b) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(a, Mode::Http1, d(100), None);
        assert_eq!(io.phase, Phase::Idle);
        io.observe(b"GET / HTTP/1.1\r\nHost: x\r");
        assert_eq!(io.phase, Phase::Head(0));
        io.observe(b"\n\r");
        assert_eq!(io.phase, Phase::Head(2));
        io.observe(b"\n");
        assert_eq!(io.phase, Phase::Body);
        io.on_write();
        assert_eq!(io.phase, Phase::Idle);
        // bare LF line ends end a head too
        io.observe(b"GET / HTTP/1.1\nHost: x\n\n");
        assert_eq!(io.phase, Phase::Body);
        let mut h2 = DeadlineIo::new(tokio::io::duplex(8).0, Mode::H2, d(100), None);
        h2.observe(b"PRI * HTTP/2.0\r\n");
        assert_eq!(h2.phase, Phase::Preface(8));
        h2.observe(b"\r\nSM\r\n\r\n\0\0");
        assert_eq!(h2.phase, Phase::Off);
    }

    /// However the bytes are cut into reads, the phase they end in is the
    /// one a byte at a time gives (the whole-read shortcut included).
    #[tokio::test]
    async fn the_head_end_does_not_depend_on_how_reads_cut_it() {
        let inputs: [&[u8]; 7] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: \r\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r",
        ];
        for input in inputs {
            let mut bytewise = DeadlineIo::new(tokio::io::duplex(8).0, Mode::Http1, d(100), None);
            let mut phases = vec![];
            for b in input {
                bytewise.observe(std::slice::from_ref(b));
                phases.push(bytewise.phase);
            }
            for cut in 0..=input.len() {
                let mut io = DeadlineIo::new(tokio::io::duplex(8).0, Mode::Http1, d(100), None);
                io.observe(&input[..cut]);
                if cut > 0 {
                    assert_eq!(io.phase, phases[cut - 1], "{input:?} cut at {cut}");
                }
                io.observe(&input[cut..]);
                assert_eq!(io.phase, bytewise.phase, "{input:?} cut at {cut}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_ends_at_the_first_byte_deadline() {
        let (a, _b) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(a, Mode::Http1, d(100), None);
        let t0 = Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert_eq!(io.phase, Phase::Expired(Closed::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_is_cut_at_the_header_deadline() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(a, Mode::Http1, d(100), None);
        let feeder = tokio::spawn(async move {
            for c in b"GET / HTTP/1.1\r\n" {
                tokio::time::sleep(Duration::from_millis(30)).await;
                if b.write_all(&[*c]).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = [0u8; 64];
        let t0 = Instant::now();
        let err = loop {
            match io.read(&mut buf).await {
                Ok(n) => assert!(n > 0),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // 30 ms to the first byte, then 100 ms for the head
        assert_eq!(t0.elapsed(), Duration::from_millis(130));
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_holds_when_the_timer_was_set_earlier() {
        // The first-byte timer (100) is set when the head arrives at 90; the
        // body deadline (90 + 200) is stored, and the timer that fires at
        // 100 is pushed out to it rather than cutting the body short.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut io = DeadlineIo::new(a, Mode::Http1, d(100), None);
        let t0 = Instant::now();
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(90)).await;
            b.write_all(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(b);
        });
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        assert_eq!(io.phase, Phase::Body);
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_millis(290));
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_idle_counts_from_the_last_write() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut io = DeadlineIo::new(a, Mode::Http1, d(100), None);
        b.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        tokio::time::sleep(Duration::from_millis(150)).await; // slow answer: within body (200)
        io.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        io.write_all(b"\r\n").await.unwrap(); // still answering at 250 of 300
        let t0 = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        // armed at the first write (150 + 300 = 450), pushed out once when it
        // fired after the second write (450 + 300): at least `keepalive`
        // after the last write, at most twice that
        assert_eq!(t0.elapsed(), Duration::from_millis(350));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_cut_at_the_write_deadline() {
        let (a, _b) = tokio::io::duplex(16);
        let mut io = DeadlineIo::new(a, Mode::Http1, d(100), None);
        let big = vec![b'x'; 1024];
        let t0 = Instant::now();
        let err = io.write_all(&big).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
    }
}
