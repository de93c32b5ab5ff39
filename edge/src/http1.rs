//! The one accept loop of shardcast's own HTTP APIs (the proxy's admin
//! listener, the forecaster, sync's control API and the reference node).
//!
//! HTTP/1.1 only (these APIs have no use for HTTP/2, and serving only
//! HTTP/1 means no wait for a 24-byte preface to tell the two apart). Every
//! connection takes a place from the listener's [`ConnLimiter`] before
//! anything else, runs inside a [`DeadlineIo`], and is shut down gracefully
//! (the response in progress finishes, keep-alive ends) when the server
//! stops.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::deadline::{DeadlineIo, Deadlines, Mode};
use crate::limit::{self, ConnGuard, ConnLimiter};

/// Largest request head these APIs read (hyper's buffer bound).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long a stopping server waits for its connections' requests in
/// progress to finish (each is also bounded by its own deadlines).
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Accept connections on `listener` until `shutdown` completes; every
/// request goes to `svc`. Then drain: idle connections close, requests in
/// progress finish (keep-alive ends after them), and this returns once
/// every connection is gone or [`DRAIN_GRACE`] has passed — so a process
/// that exits when its server returns does not cut an answer short.
pub async fn serve<S, B>(
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    deadlines: Deadlines,
    svc: S,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_with(listener, limiter, move || deadlines, svc, shutdown).await
}

/// [`serve`] with the deadlines read per connection from `deadlines`, so a
/// config reload applies to the connections that follow it.
pub async fn serve_with<S, B>(
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    deadlines: impl Fn() -> Deadlines,
    svc: S,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    if let Ok(a) = listener.local_addr() {
        info!(listener = %limiter.name, addr = %a, "listening");
    }
    loop {
        let (tcp, peer, guard) = tokio::select! {
            a = accept(&listener, &limiter) => a,
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let deadlines = deadlines();
        let svc = svc.clone();
        // Each connection holds a receiver: the sender sees them all gone
        // (`closed`) when the last connection ends.
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(DeadlineIo::new(tcp, Mode::Http1, deadlines, Some(guard)));
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new())
                // DeadlineIo owns the head deadline (and the first-byte and
                // keep-alive ones hyper does not have).
                .header_read_timeout(None)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(true);
            let conn = b.serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    debug!(%peer, error = %e, "connection ended");
                },
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    drop(stop_rx);
    if tokio::time::timeout(DRAIN_GRACE, stop_tx.closed())
        .await
        .is_err()
    {
        warn!(listener = %limiter.name, open = limiter.open(), grace = ?DRAIN_GRACE,
            "connections still open after the drain grace; closing them");
    }
}

/// The next connection that fits `limiter`'s bounds, with its place.
/// Connections past a bound are reset here (and logged, rate-limited);
/// failed accepts are counted and backed off. Cancel-safe.
pub async fn accept(
    listener: &TcpListener,
    limiter: &Arc<ConnLimiter>,
) -> (tokio::net::TcpStream, std::net::SocketAddr, ConnGuard) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => match limiter.try_acquire(peer.ip()) {
                Ok(guard) => return (tcp, peer, guard),
                Err(why) => {
                    limiter.log_refusal(why, peer);
                    limit::reset(&tcp);
                }
            },
            Err(e) => accept_failed(limiter, &e).await,
        }
    }
}

/// Resolves once `rx` holds `true` (or its sender is gone).
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// An `accept` that failed: out of file descriptors or memory, or a
/// connection reset before it was accepted. Back off briefly on the
/// resource errors so the loop does not spin.
pub async fn accept_failed(limiter: &ConnLimiter, e: &std::io::Error) {
    use std::sync::atomic::Ordering::Relaxed;
    limiter.counters.accept_errors.fetch_add(1, Relaxed);
    let n = limiter.counters.accept_errors.load(Relaxed);
    if n % 1000 == 1 {
        warn!(listener = %limiter.name, error = %e, errors = n, "accept failed");
    }
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    if let Some(24 | 23 | 105 | 12) = e.raw_os_error() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::Limits;
    use bytes::Bytes;
    use http_body_util::Full;
    use std::convert::Infallible;
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits, d: Deadlines) -> (std::net::SocketAddr, Arc<ConnLimiter>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limiter = ConnLimiter::new("test", limits);
        let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        tokio::spawn(serve(l, limiter.clone(), d, svc, std::future::pending()));
        (addr, limiter)
    }

    fn fast() -> Deadlines {
        Deadlines {
            header: Duration::from_millis(300),
            body: Duration::from_millis(300),
            keepalive: Duration::from_millis(300),
            write: Duration::from_millis(300),
        }
    }

    async fn until(f: impl Fn() -> bool) {
        let t0 = std::time::Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "condition not reached"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Read until the peer closes; how long it took.
    async fn closed_after(s: &mut TcpStream) -> Duration {
        let t0 = std::time::Instant::now();
        let mut buf = vec![0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("still open after 5 s"),
            }
        }
    }

    #[tokio::test]
    async fn silent_short_and_idle_connections_are_closed_by_their_deadlines() {
        let (addr, limiter) = start(
            Limits {
                max_connections: 100,
                max_per_client: 100,
            },
            fast(),
        )
        .await;
        // nothing sent
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(closed_after(&mut s).await < Duration::from_secs(2));
        // a few bytes of a head, then nothing
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HT").await.unwrap();
        assert!(closed_after(&mut s).await < Duration::from_secs(2));
        // a short complete request is answered at once, then idles out
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.0 200"), "{:?}", &buf[..n]);
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let t = closed_after(&mut s).await;
        assert!(
            t >= Duration::from_millis(250) && t < Duration::from_secs(2),
            "{t:?}"
        );
        until(|| limiter.open() == 0).await;
        assert!(limiter.counters.closed_idle.load(Relaxed) >= 2);
        assert!(limiter.counters.closed_header.load(Relaxed) >= 1);
    }

    #[tokio::test]
    async fn connections_past_the_bounds_are_refused() {
        let (addr, limiter) = start(
            Limits {
                max_connections: 4,
                max_per_client: 3,
            },
            Deadlines::default(),
        )
        .await;
        let mut held = vec![];
        for _ in 0..3 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        until(|| limiter.open() == 3).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "refused connection answered");
        assert_eq!(limiter.counters.refused_client.load(Relaxed), 1);
        drop(held);
        until(|| limiter.open() == 0).await;
    }

    /// A request in progress when the server stops is answered before
    /// `serve` returns; an idle keep-alive connection does not hold it up.
    #[tokio::test]
    async fn stopping_drains_requests_in_progress() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limiter = ConnLimiter::new(
            "test",
            Limits {
                max_connections: 8,
                max_per_client: 8,
            },
        );
        let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"late"))))
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            l,
            limiter.clone(),
            Deadlines::default(),
            svc,
            async {
                let _ = rx.await;
            },
        ));
        let _idle = TcpStream::connect(addr).await.unwrap();
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        until(|| limiter.open() == 2).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(()).unwrap();
        let t0 = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns after the drain")
            .unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t0.elapsed()
        );
        let mut buf = vec![0u8; 512];
        let mut got = Vec::new();
        while let Ok(n) = busy.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("late"), "{text}");
        assert_eq!(limiter.open(), 0);
    }
}
