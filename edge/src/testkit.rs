//! Probes for the tests of a listener built from this crate (feature
//! `testkit`): what a client that sends nothing, a partial head, or idles
//! after an answer sees, whether a connection past a bound is refused, and
//! a bare HTTP/1.0 request to read `/metrics` with. Real sockets; every
//! wait is bounded, so a listener without the deadline fails the test
//! instead of hanging it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any probe waits for the server to act.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// A connection that holds a place: a connect reset because the listener
/// has not yet seen an earlier probe close (its place not yet given back)
/// is tried again, within [`PATIENCE`].
async fn connect(addr: SocketAddr) -> TcpStream {
    let t0 = Instant::now();
    loop {
        match tokio::time::timeout(PATIENCE, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return s,
            Ok(Err(e))
                if e.kind() == std::io::ErrorKind::ConnectionReset && t0.elapsed() < PATIENCE =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(Err(e)) => panic!("{addr}: connect: {e}"),
            Err(_) => panic!("{addr}: connect timed out"),
        }
    }
}

/// Read until the server closes (end of stream or reset); how long that
/// took. Panics when still open after [`PATIENCE`].
pub async fn closed_after(s: &mut TcpStream) -> Duration {
    let t0 = Instant::now();
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + PATIENCE).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("connection still open after {PATIENCE:?}"),
        }
    }
}

/// Connect and send nothing: time until the server closes.
pub async fn silent(addr: SocketAddr) -> Duration {
    let mut s = connect(addr).await;
    closed_after(&mut s).await
}

/// Send the start of a request head and stop: time until the server
/// closes (from the last byte sent).
pub async fn partial_head(addr: SocketAddr) -> Duration {
    let mut s = connect(addr).await;
    s.write_all(b"GET /live HT").await.unwrap();
    closed_after(&mut s).await
}

/// Send `request` whole; the first bytes of the answer and how long they
/// took to come. Panics when nothing comes within [`PATIENCE`].
pub async fn first_answer(addr: SocketAddr, request: &[u8]) -> (Duration, Vec<u8>) {
    let mut s = connect(addr).await;
    let t0 = Instant::now();
    s.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("no answer")
        .expect("read");
    buf.truncate(n);
    (t0.elapsed(), buf)
}

/// A keep-alive request to `path`, answered; then nothing: time from the
/// answer until the server closes.
pub async fn idle_after_answer(addr: SocketAddr, path: &str) -> Duration {
    let mut s = connect(addr).await;
    answered(&mut s, path).await;
    closed_after(&mut s).await
}

/// Send one HTTP/1.1 keep-alive request on `s` and read its answer head.
async fn answered(s: &mut TcpStream, path: &str) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("no answer")
            .expect("read");
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

/// `n` connections, each with one keep-alive request to `path` answered,
/// so each is known to hold a place on the listener.
pub async fn hold(addr: SocketAddr, n: usize, path: &str) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = connect(addr).await;
        answered(&mut s, path).await;
        v.push(s);
    }
    v
}

/// Connect and send a request to `path`: true when the server closes or
/// resets the connection without answering.
pub async fn refused(addr: SocketAddr, path: &str) -> bool {
    // The reset can come before the connect has been seen to complete.
    let mut s = match tokio::time::timeout(PATIENCE, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
        Ok(Err(e)) => panic!("{addr}: connect: {e}"),
        Err(_) => panic!("{addr}: connect timed out"),
    };
    // The reset may already be there: a failed write is a refusal too.
    if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .is_err()
    {
        return true;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("neither answered nor closed within {PATIENCE:?}"),
    }
}

/// A bare HTTP/1.0 request (the server closes after the answer), with
/// extra header lines (`"Name: value"`): the status and the whole answer.
/// Panics when there is none; see [`try_request`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String) {
    try_request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`request`], with a refused or reset connection as an error (to poll
/// with while a listener is full).
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = tokio::time::timeout(PATIENCE, TcpStream::connect(addr)).await??;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: t\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).await?;
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    Ok((status, text))
}

/// Assert a listener whose deadlines are all `deadline` (hundreds of ms):
/// a silent connection, a partial head and an idle keep-alive connection
/// are closed about `deadline` later (on `path`, which must answer 200),
/// and a short complete request (`GET {path} HTTP/1.0`, fewer bytes than
/// an HTTP/2 preface when `path` is short) is answered before it.
pub async fn assert_deadlines(addr: SocketAddr, deadline: Duration, path: &str) {
    let late = deadline + Duration::from_secs(2);
    let early = deadline.saturating_sub(Duration::from_millis(100));
    let short = format!("GET {path} HTTP/1.0\r\n\r\n");
    let (silent, partial, idle, short) = tokio::join!(
        silent(addr),
        partial_head(addr),
        idle_after_answer(addr, path),
        first_answer(addr, short.as_bytes()),
    );
    for (what, t) in [
        ("silent", silent),
        ("partial head", partial),
        ("idle keep-alive", idle),
    ] {
        assert!(t >= early && t < late, "{addr}: {what} closed after {t:?}");
    }
    let (t, answer) = short;
    assert!(
        answer.starts_with(b"HTTP/1.0 200"),
        "{addr}: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(t < deadline, "{addr}: short request answered after {t:?}");
}

/// Assert that with `per_client` connections held (each with a request to
/// `path` answered), one more from the same address is refused; the held
/// ones are closed on return.
pub async fn assert_bound(addr: SocketAddr, per_client: usize, path: &str) {
    let held = hold(addr, per_client, path).await;
    assert!(
        refused(addr, path).await,
        "{addr}: connection past the per-client bound answered"
    );
    drop(held);
}

/// The value of the sample `name` (with its labels, exactly as rendered)
/// in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
