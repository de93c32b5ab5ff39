//! Slow-client deadlines for HTTP/1.x: a request head must arrive whole
//! within `client_header`, and its body within `client_body` after the head.
//!
//! Pingora's downstream read timeout restarts on every read, so a client
//! that trickles one byte at a time (slowloris, slow POST) would hold a
//! connection forever. [`Front`] wraps every accepted connection in a
//! [`DeadlineStream`] that measures from a request's first byte, and hands
//! it to the Pingora HTTP proxy unchanged otherwise. HTTP/2 connections
//! (ALPN or the h2c preface) are passed through: h2 has its own flow control
//! and Pingora's per-stream handling.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest,
};
use pingora_core::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: Pingora's keep-alive timeout applies.
    Idle,
    /// Reading a request head; `matched` bytes of CRLFCRLF seen so far.
    Head { matched: u8 },
    /// Head complete; reading the body until the response starts.
    Body,
    /// HTTP/2: no deadlines here.
    Off,
}

/// A connection with per-request read deadlines.
pub struct DeadlineStream {
    inner: Stream,
    phase: Phase,
    header: Duration,
    body: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("phase", &self.phase)
            .finish()
    }
}

impl DeadlineStream {
    pub fn new(inner: Stream, header: Duration, body: Duration) -> Self {
        let off = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        Self {
            inner,
            phase: if off { Phase::Off } else { Phase::Idle },
            header,
            body,
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        }
    }

    #[cfg(test)]
    fn observe(&mut self, data: &[u8]) {
        observe(
            &mut self.phase,
            &mut self.sleep,
            self.header,
            self.body,
            data,
        )
    }
}

/// Advance the request phase over bytes just read.
fn observe(
    phase: &mut Phase,
    sleep: &mut Pin<Box<Sleep>>,
    header: Duration,
    body: Duration,
    data: &[u8],
) {
    if data.is_empty() {
        return;
    }
    if *phase == Phase::Idle {
        if data.len() >= 3 && data.starts_with(&H2_PREFACE[..data.len().min(H2_PREFACE.len())]) {
            *phase = Phase::Off;
            return;
        }
        *phase = Phase::Head { matched: 0 };
        sleep.as_mut().reset(Instant::now() + header);
    }
    if let Phase::Head { mut matched } = *phase {
        for &b in data {
            matched = match (matched, b) {
                (0 | 2, b'\r') => matched + 1,
                (1 | 3, b'\n') => matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if matched == 4 {
                *phase = Phase::Body;
                sleep.as_mut().reset(Instant::now() + body);
                return;
            }
        }
        *phase = Phase::Head { matched };
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.phase, Phase::Head { .. } | Phase::Body)
            && this.sleep.as_mut().poll(cx).is_ready()
        {
            let what = if matches!(this.phase, Phase::Body) {
                "request body deadline"
            } else {
                "request header deadline"
            };
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if this.phase != Phase::Off {
                observe(
                    &mut this.phase,
                    &mut this.sleep,
                    this.header,
                    this.body,
                    &buf.filled()[before..],
                );
            }
        }
        r
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // The response has started: the request is no longer the client's
        // to deliver.
        if matches!(self.phase, Phase::Head { .. } | Phase::Body) {
            self.phase = Phase::Idle;
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if matches!(self.phase, Phase::Head { .. } | Phase::Body) {
            self.phase = Phase::Idle;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}
impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}
impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}
impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}
impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}
impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}
#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The traffic listener's app: deadlines around the Pingora HTTP proxy.
pub struct Front<A> {
    pub inner: Arc<A>,
    pub header: Duration,
    pub body: Duration,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Front<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut stream: Stream = if stream.as_any().is::<DeadlineStream>() {
            stream
        } else {
            Box::new(DeadlineStream::new(stream, self.header, self.body))
        };
        // Keep-alive loop here rather than in the service, so the stream is
        // wrapped once per connection.
        loop {
            match self.inner.process_new(stream, shutdown).await {
                Some(s) => stream = s,
                None => return None,
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_follow_the_request() {
        // Phase logic only; the I/O path is covered by the slow-client tests.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let s: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(c));
        let mut d = DeadlineStream::new(s, Duration::from_secs(1), Duration::from_secs(2));
        d.observe(b"GET / HTTP/1.1\r\nHost: x\r");
        assert_eq!(d.phase, Phase::Head { matched: 1 });
        d.observe(b"\n\r\n");
        assert_eq!(d.phase, Phase::Body);
        d.phase = Phase::Idle;
        d.observe(b"PRI * HTTP/2.0\r\n");
        assert_eq!(d.phase, Phase::Off);
    }
}
