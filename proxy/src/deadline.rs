//! Pingora's view of a client connection with deadlines.
//!
//! [`DeadlineStream`] is `shardcast_edge`'s [`DeadlineIo`] (a deadline at
//! every stage of a connection: first byte, head, body, keep-alive idle,
//! stalled writes, the HTTP/2 preface) around a Pingora stream, with the
//! traits Pingora's HTTP server needs passed through. It wraps the concrete
//! stream (the TCP stream, or TLS over it), not a boxed [`Stream`]: Pingora
//! calls the connection through one `dyn` (the `Stream` it is handed), and a
//! boxed stream inside would add a second dynamic call to every read and
//! write. It also answers
//! Pingora's h2c sniff: the listener has already told HTTP/1 from h2c
//! (within the header deadline, and without waiting for 24 bytes when the
//! first bytes cannot be the preface), so [`Peek::try_peek`] reports that
//! decision instead of blocking on a 24-byte read.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::TlsRef;
#[cfg(doc)]
use pingora_core::protocols::Stream;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest,
};
use pingora_core::protocols::{Peek, Shutdown, Ssl, UniqueID, UniqueIDType, ALPN, IO};
use shardcast_edge::{ConnGuard, DeadlineIo, Deadlines, Mode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client connection with per-stage deadlines, as Pingora sees it.
pub struct DeadlineStream<S> {
    io: DeadlineIo<S>,
    /// Cleartext HTTP/2 (prior knowledge), decided by the listener.
    h2c: bool,
    /// HTTP/1 only: chunk-size lines ended by CRLF alone (Pingora's parser
    /// takes a bare LF in an extension; see [`crate::chunked::ChunkedFraming`]).
    chunks: Option<crate::chunked::ChunkedFraming>,
}

impl<S> fmt::Debug for DeadlineStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("io", &self.io)
            .field("h2c", &self.h2c)
            .field("chunks", &self.chunks)
            .finish()
    }
}

impl<S: IO> DeadlineStream<S> {
    /// `h2c`: a cleartext connection that opened with the HTTP/2 preface.
    /// A TLS connection speaks HTTP/2 when ALPN chose it.
    pub fn new(inner: S, h2c: bool, d: Deadlines, guard: Option<ConnGuard>) -> Self {
        let h2 = h2c || matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        let mode = if h2 { Mode::H2 } else { Mode::Http1 };
        Self {
            io: DeadlineIo::new(inner, mode, d, guard),
            h2c,
            chunks: (!h2).then(crate::chunked::ChunkedFraming::new),
        }
    }

    fn inner(&self) -> &S {
        self.io.get_ref()
    }
}

impl<S: IO> AsyncRead for DeadlineStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        crate::chunked::poll_read_checked(this.chunks.as_mut(), Pin::new(&mut this.io), cx, buf)
    }
}

impl<S: IO> AsyncWrite for DeadlineStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(c) = self.chunks.as_mut() {
            c.wrote(data);
        }
        Pin::new(&mut self.io).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(c) = self.chunks.as_mut() {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                c.wrote(first);
            }
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[async_trait]
impl<S: IO> Shutdown for DeadlineStream<S> {
    async fn shutdown(&mut self) {
        self.io.get_mut().shutdown().await
    }
}
impl<S: IO> UniqueID for DeadlineStream<S> {
    fn id(&self) -> UniqueIDType {
        self.inner().id()
    }
}
impl<S: IO> Ssl for DeadlineStream<S> {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner().get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner().get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner().selected_alpn_proto()
    }
}
impl<S: IO> GetTimingDigest for DeadlineStream<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner().get_timing_digest()
    }
}
impl<S: IO> GetProxyDigest for DeadlineStream<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner().get_proxy_digest()
    }
}
impl<S: IO> GetSocketDigest for DeadlineStream<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner().get_socket_digest()
    }
}
#[async_trait]
impl<S: IO> Peek for DeadlineStream<S> {
    /// Pingora peeks 24 bytes to tell h2c from HTTP/1; the listener already
    /// knows. Reports "peeked" with the preface for h2c and with bytes that
    /// are not the preface otherwise; nothing is consumed either way.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        buf.fill(0);
        if self.h2c {
            let n = buf.len().min(H2_PREFACE.len());
            buf[..n].copy_from_slice(&H2_PREFACE[..n]);
        }
        Ok(true)
    }
}
