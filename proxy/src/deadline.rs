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
//!
//! Writes are buffered as Pingora's own listener buffers them: its
//! listening service gives every accepted stream a write buffer of one
//! segment ([`WRITE_BUF`]), but a stream made from a `TcpStream` outside it
//! has none (the setter is Pingora's own), so without one here a response's
//! head and body went out in two `write` calls and two segments. Small
//! writes are held until a flush or until they fill the buffer; Pingora
//! flushes at the end of every response head it sends alone and of every
//! body, as its buffered streams need.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

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

/// The write buffer of a client connection: Pingora's listener default
/// (`DEFAULT_L4_WRITE_BUFFER_SIZE`, one TCP segment).
pub const WRITE_BUF: usize = 1460;

/// A client connection with per-stage deadlines, as Pingora sees it.
pub struct DeadlineStream<S: IO> {
    io: DeadlineIo<S>,
    /// Cleartext HTTP/2 (prior knowledge), decided by the listener.
    h2c: bool,
    /// HTTP/1 only: chunk-size lines ended by CRLF alone (Pingora's parser
    /// takes a bare LF in an extension; see [`crate::chunked::ChunkedFraming`]).
    chunks: Option<crate::chunked::ChunkedFraming>,
    /// Bytes taken from writes and not yet written (made on the first
    /// small write, [`WRITE_BUF`] bytes, as Pingora's listener allocates it).
    wbuf: Vec<u8>,
    /// How much of `wbuf` a write that had to stop has already written.
    wdone: usize,
    /// The stream below holds no written bytes of its own (see
    /// [`Self::over_unbuffered_tcp`]): a flush ends with this buffer's.
    flushed_below: bool,
}

impl<S: IO> fmt::Debug for DeadlineStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("io", &self.io)
            .field("h2c", &self.h2c)
            .field("chunks", &self.chunks)
            .field("buffered", &(self.wbuf.len() - self.wdone))
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
            wbuf: Vec::new(),
            wdone: 0,
            flushed_below: false,
        }
    }

    /// The stream below is a TCP stream made from a `TcpStream`, which
    /// Pingora gives no write buffer: every byte written to it has gone to
    /// the socket, so its flush does nothing, and this one does not call it
    /// (four flushes a response). A TLS stream keeps records to flush, so it
    /// is never marked.
    pub fn over_unbuffered_tcp(mut self) -> Self {
        self.flushed_below = true;
        self
    }

    /// Write out what the buffer holds.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wdone < self.wbuf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wdone..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "client connection took no more bytes",
                    )))
                }
                Poll::Ready(Ok(n)) => self.wdone += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.wbuf.clear();
        self.wdone = 0;
        Poll::Ready(Ok(()))
    }

    /// Room for `n` more bytes in the buffer, draining it when they do not
    /// fit; `false`: `n` is too large to be buffered at all.
    fn poll_room(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<io::Result<bool>> {
        if self.wbuf.len() + n > WRITE_BUF {
            if let Err(e) = ready!(self.poll_drain(cx)) {
                return Poll::Ready(Err(e));
            }
        }
        if n >= WRITE_BUF {
            return Poll::Ready(Ok(false));
        }
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve_exact(WRITE_BUF);
        }
        // The response has started, buffered or not.
        self.io.wrote_buffered();
        Poll::Ready(Ok(true))
    }

    fn inner(&self) -> &S {
        self.io.get_ref()
    }

    /// A write that does not simply fit in the buffer: the first, one that
    /// fills it, or one too large for it.
    #[inline(never)]
    fn poll_write_room(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(c) = self.chunks.as_mut() {
            c.wrote(data);
        }
        if ready!(self.poll_room(cx, data.len()))? {
            self.wbuf.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    /// A flush with bytes held here, or with a stream below to flush.
    #[inline(never)]
    fn poll_flush_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        if self.flushed_below {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

impl<S: IO> Drop for DeadlineStream<S> {
    /// What the buffer still holds goes out if the socket takes it now, as
    /// Pingora's own streams do when dropped: a response cut short (a node
    /// that stopped mid-body) ends the connection with the bytes it had,
    /// not without them. A write that would wait is given up.
    fn drop(&mut self) {
        if self.wdone < self.wbuf.len() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = self.poll_drain(&mut cx);
        }
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
        let this = &mut *self;
        let n = data.len();
        // What [`Self::poll_room`] finds for nearly every write: room in a
        // buffer already made. The rest is out of line.
        if n < WRITE_BUF && this.wbuf.len() + n <= WRITE_BUF && this.wbuf.capacity() != 0 {
            if let Some(c) = this.chunks.as_mut() {
                c.wrote(data);
            }
            this.io.wrote_buffered();
            this.wbuf.extend_from_slice(data);
            return Poll::Ready(Ok(n));
        }
        this.poll_write_room(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Pingora flushes three or four times a response, most with nothing
        // held here and nothing below to flush: that is two loads, with the
        // draining out of line.
        if self.wbuf.is_empty() && self.flushed_below {
            return Poll::Ready(Ok(()));
        }
        self.poll_flush_held(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(c) = this.chunks.as_mut() {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                c.wrote(first);
            }
        }
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        if ready!(this.poll_room(cx, total))? {
            for b in bufs {
                this.wbuf.extend_from_slice(b);
            }
            return Poll::Ready(Ok(total));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        // Small slices are gathered into the buffer, large ones go on.
        true
    }
}

#[async_trait]
impl<S: IO> Shutdown for DeadlineStream<S> {
    async fn shutdown(&mut self) {
        // What the buffer holds goes out first (Pingora flushes before it
        // shuts a connection down; this keeps the order if it did not).
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback connection: the proxy's side wrapped, the client's raw.
    async fn pair() -> (DeadlineStream<L4Stream>, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        let s = DeadlineStream::new(L4Stream::from(server), false, Deadlines::default(), None)
            .over_unbuffered_tcp();
        (s, client)
    }

    /// Whatever arrives within `ms`.
    async fn arrived(c: &mut tokio::net::TcpStream, ms: u64) -> Vec<u8> {
        let mut got = vec![];
        let mut buf = [0u8; 8192];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(ms), c.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_and_keep_their_order() {
        let (mut s, mut c) = pair().await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        s.write_all(b"hello").await.unwrap();
        assert!(
            arrived(&mut c, 100).await.is_empty(),
            "sent before the flush"
        );
        s.flush().await.unwrap();
        assert_eq!(
            arrived(&mut c, 200).await,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
        );
        // a write the buffer cannot hold follows what it holds, in order
        let big = vec![b'x'; 3 * WRITE_BUF];
        s.write_all(b"head").await.unwrap();
        s.write_all(&big).await.unwrap();
        s.write_all(b"tail").await.unwrap();
        s.flush().await.unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        assert_eq!(arrived(&mut c, 200).await, want);
    }

    #[tokio::test]
    async fn a_stream_dropped_with_bytes_held_sends_them() {
        let (mut s, mut c) = pair().await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        assert!(
            arrived(&mut c, 100).await.is_empty(),
            "sent before the flush"
        );
        drop(s);
        assert_eq!(
            arrived(&mut c, 200).await,
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"
        );
    }

    #[tokio::test]
    async fn vectored_writes_are_gathered_and_shutdown_sends_what_is_held() {
        let (mut s, mut c) = pair().await;
        let parts = [
            io::IoSlice::new(b"abc"),
            io::IoSlice::new(b""),
            io::IoSlice::new(b"def"),
        ];
        let n = std::future::poll_fn(|cx| Pin::new(&mut s).poll_write_vectored(cx, &parts))
            .await
            .unwrap();
        assert_eq!(n, 6);
        s.write_all(b"ghi").await.unwrap();
        assert!(
            arrived(&mut c, 100).await.is_empty(),
            "sent before the flush"
        );
        Shutdown::shutdown(&mut s).await;
        assert_eq!(arrived(&mut c, 200).await, b"abcdefghi");
    }
}
