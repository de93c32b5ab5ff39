//! The deadlines on connections to nodes: a node that stops answering is
//! cut off at `read_ms` and charged for it, while a pooled connection
//! waiting for its next request is not — it lives until `upstream_idle_ms`.
//! The nodes here are plain TCP servers, so that they can stop mid-answer.

mod common;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers every request with a short body, keep-alive.
const ANSWER: u8 = 0;
/// Reads the request, never answers.
const SILENT: u8 = 1;
/// Sends the head and 10 of 100 body bytes, then nothing.
const STALL: u8 = 2;

/// A node speaking HTTP/1.1 by hand. Health checks are always answered.
struct RawNode {
    node: TestNode,
    mode: Arc<AtomicU8>,
    /// Connections that carried a request other than a health check.
    conns: Arc<AtomicU64>,
    /// Of those, the ones the proxy closed.
    closed: Arc<AtomicU64>,
    /// When the last of those closes was seen.
    closed_at: Arc<parking_lot::Mutex<Option<Instant>>>,
}

impl RawNode {
    async fn start(name: &str, mode: u8) -> RawNode {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // A `TestNode` only for its name and address in the proxy's config;
        // its own server is stopped and this one listens instead.
        let mut node = TestNode::start(name).await;
        node.kill();
        node.addr = l.local_addr().unwrap();
        let n = RawNode {
            node,
            mode: Arc::new(AtomicU8::new(mode)),
            conns: Arc::default(),
            closed: Arc::default(),
            closed_at: Arc::default(),
        };
        let (m, c, cl, at) = (
            n.mode.clone(),
            n.conns.clone(),
            n.closed.clone(),
            n.closed_at.clone(),
        );
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (m, c, cl, at) = (m.clone(), c.clone(), cl.clone(), at.clone());
                tokio::spawn(serve(s, m, c, cl, at));
            }
        });
        n
    }
}

async fn serve(
    mut s: TcpStream,
    mode: Arc<AtomicU8>,
    conns: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    closed_at: Arc<parking_lot::Mutex<Option<Instant>>>,
) {
    let mut buf = Vec::new();
    let mut counted = false;
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if counted {
                        closed.fetch_add(1, SeqCst);
                        *closed_at.lock() = Some(Instant::now());
                    }
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        if head.starts_with("GET /health") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            continue;
        }
        if !counted {
            counted = true;
            conns.fetch_add(1, SeqCst);
        }
        match mode.load(SeqCst) {
            ANSWER => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-cache: hit\r\n\r\nhello")
                    .await;
            }
            SILENT => {}
            _ => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
            }
        }
    }
}

fn deadlines(read_ms: u64, idle_ms: u64) -> ProxyOpts {
    let mut o = opts();
    o.extra = format!(
        "replication_factor = 1\n[health]\ninterval_ms = 200\nejection_ms = 500\neject_after_failures = 5\n\
         [retry]\nmax_retries = 0\n[timeouts]\nread_ms = {read_ms}\nupstream_idle_ms = {idle_ms}\n"
    );
    o
}

fn within(t: Duration, lo: u64, what: &str) {
    assert!(
        t >= Duration::from_millis(lo) && t < Duration::from_millis(lo + 1500),
        "{what}: took {t:?}, deadline {lo} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_answers_is_cut_off_at_read_ms_and_charged() {
    let n = RawNode::start("n1", SILENT).await;
    let p = Proxy::start(&[&n.node], deadlines(400, 60_000)).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let r = c
        .get(p.url("/inventory/A1"))
        .send()
        .await
        .expect("the proxy still waits for the silent node after 5 s");
    within(t0.elapsed(), 400, "a silent node");
    assert_eq!(r.status(), 502);
    assert_eq!(n.conns.load(SeqCst), 1);
    let errors = p.metric("shardcast_node_errors_total{node=\"n1\"}").await;
    assert_eq!(errors, Some(1.0), "the node is charged for its silence");
    // Answering again, it serves again.
    n.mode.store(ANSWER, SeqCst);
    let r = c.get(p.url("/inventory/A1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_mid_response_is_cut_off_at_read_ms_and_charged() {
    let n = RawNode::start("n1", STALL).await;
    let p = Proxy::start(&[&n.node], deadlines(400, 60_000)).await;
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"GET /inventory/A1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
            Err(_) => panic!("the client still waits after 5 s: {got:?}"),
        }
    }
    within(t0.elapsed(), 400, "a node stalled mid-response");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n0123456789"),
        "the head and what the node sent of the body, nothing appended: {text}"
    );
    let errors = p.metric("shardcast_node_errors_total{node=\"n1\"}").await;
    assert_eq!(errors, Some(1.0), "the node is charged for the stall");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_outlives_read_ms_and_closes_at_upstream_idle_ms() {
    let n = RawNode::start("n1", ANSWER).await;
    let p = Proxy::start(&[&n.node], deadlines(300, 2_000)).await;
    let c = reqwest::Client::new();
    let get = || async {
        let r = c.get(p.url("/inventory/A1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "hello");
    };
    get().await;
    assert_eq!(n.conns.load(SeqCst), 1);
    // Idle for four read deadlines: the pooled connection is still there.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        n.closed.load(SeqCst),
        0,
        "closed while idle before upstream_idle_ms"
    );
    // The idle clock starts when the proxy pools the connection, before
    // the client has read the whole answer: measure from the request.
    let t_last = Instant::now();
    get().await;
    assert_eq!(n.conns.load(SeqCst), 1, "the idle connection was reused");
    // Then closed by the proxy once idle for upstream_idle_ms.
    eventually(
        Duration::from_secs(6),
        "the idle connection closed",
        || async { (n.closed.load(SeqCst) == 1).then_some(()) },
    )
    .await;
    let at = n.closed_at.lock().unwrap();
    within(
        at.duration_since(t_last),
        2_000,
        "an idle pooled connection",
    );
    get().await;
    assert_eq!(
        n.conns.load(SeqCst),
        2,
        "a new connection after the idle close"
    );
    assert_eq!(
        p.metric("shardcast_node_errors_total{node=\"n1\"}").await,
        Some(0.0),
        "an idle close is no node error"
    );
}
