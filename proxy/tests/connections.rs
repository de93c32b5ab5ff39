//! The connection lifecycle on the traffic listeners: a deadline at every
//! stage, bounds on open connections, and a client's failure charged to the
//! client — tried the way an attacker (or a browser) would.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Read until the proxy closes the connection; how long that took.
async fn closed_after(s: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at((t0 + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

/// A connection from a chosen loopback source address (127.0.0.0/8 is all
/// loopback, so each address is a distinct client to the proxy).
async fn connect_from(src: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(src, 0))?;
    s.connect(to).await
}

fn deadlines(header: u64, keepalive: u64, extra: &str) -> ProxyOpts {
    let mut o = opts();
    o.extra = format!(
        "replication_factor = 1\n[timeouts]\nclient_header_ms = {header}\nclient_body_ms = {header}\n\
         client_keepalive_ms = {keepalive}\nclient_h2_idle_ms = {keepalive}\nclient_handshake_ms = {header}\n{extra}"
    );
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_of_a_connection_has_a_deadline() {
    let nodes = [TestNode::start("n1").await];
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path(), "edge");
    let tls_port = free_port();
    let mut o = deadlines(600, 900, "");
    o.https = Some((tls_port, cert, key));
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let limit = Duration::from_secs(5);
    let within = |t: Duration, lo: u64, what: &str| {
        assert!(
            t >= Duration::from_millis(lo) && t < Duration::from_millis(lo + 1500),
            "{what}: closed after {t:?}, deadline {lo} ms"
        );
    };

    // Nothing sent at all.
    let mut s = TcpStream::connect(p.http).await.unwrap();
    within(closed_after(&mut s, limit).await, 550, "silent connection");
    // Fewer than 24 bytes: could still be the HTTP/2 preface.
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"PRI * HTTP/2").await.unwrap();
    within(closed_after(&mut s, limit).await, 550, "partial h2 preface");
    // A few bytes of an HTTP/1 head.
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"GET /inventory/A1 HT").await.unwrap();
    within(closed_after(&mut s, limit).await, 550, "partial head");

    // A complete request shorter than the 24-byte preface is answered at once.
    let t0 = Instant::now();
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("an 18-byte HTTP/1.0 request was not answered")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1."),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );

    // An HTTP/1 body that stops short: 408 at the body deadline.
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"PUT /inventory/A1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        .await
        .unwrap();
    let t0 = Instant::now();
    let n = tokio::time::timeout(limit, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    within(t0.elapsed(), 550, "stalled HTTP/1 body");

    // Keep-alive: open after a response, closed once idle for client_keepalive_ms.
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"GET /inventory/A1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    within(closed_after(&mut s, limit).await, 850, "idle keep-alive");

    // h2c: the preface and SETTINGS, then no stream: closed by the HTTP/2 idle deadline.
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    within(
        closed_after(&mut s, limit).await,
        850,
        "idle h2c connection",
    );

    // TLS: no ClientHello.
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    within(
        closed_after(&mut s, limit).await,
        550,
        "TLS without a handshake",
    );
    // TLS with ALPN h2, then no preface.
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    let mut cfg = cfg;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let mut s = tls
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    within(
        closed_after(&mut s, limit).await,
        550,
        "idle TLS-h2 connection",
    );

    // An HTTP/2 request whose announced body never comes: answered 408
    // at the body deadline, and the node never sees it.
    let tcp = TcpStream::connect(p.http).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (_tx, body) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>(1);
    let body = http_body_util::StreamBody::new(tokio_stream_from(body));
    let req = http::Request::post(p.url("/inventory/A1"))
        .header("content-length", "100")
        .body(body)
        .unwrap();
    let t0 = Instant::now();
    let r = tokio::time::timeout(limit, h2.send_request(req))
        .await
        .expect("h2 request with a stalled body was held past the deadline");
    match r {
        Ok(resp) => assert_eq!(resp.status(), 408),
        Err(e) => panic!("stream failed instead of a 408: {e}"),
    }
    within(t0.elapsed(), 550, "stalled h2 body");
    assert_eq!(
        nodes[0].hits.load(SeqCst),
        1,
        "only the keep-alive request reached the node"
    );

    // Every close above was counted by stage.
    let closed = |stage: &'static str| {
        let p = &p;
        async move {
            let mut sum = 0.0;
            for l in [format!("http {}", p.http), format!("https {tls_addr}")] {
                sum += p
                    .metric(&format!(
                        "shardcast_connections_closed_total{{listener=\"{l}\",stage=\"{stage}\"}}"
                    ))
                    .await
                    .unwrap_or(0.0);
            }
            sum
        }
    };
    assert!(closed("idle").await >= 3.0, "idle closes not counted");
    assert!(closed("header").await >= 2.0, "header closes not counted");
    assert!(
        closed("handshake").await >= 1.0,
        "handshake close not counted"
    );
}

/// Adapt an mpsc receiver into a `Stream` for `StreamBody`.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_stop_service_and_is_closed_by_the_deadline() {
    // The test holds thousands of sockets itself.
    shardcast_edge::fd::raise_nofile().unwrap();
    let nodes = [TestNode::start("n1").await];
    let per_client = 800;
    let p = Proxy::start(
        &nodes.iter().collect::<Vec<_>>(),
        deadlines(
            4000,
            4000,
            &format!(
                "[limits]\nmax_connections = 8000\nmax_connections_per_client = {per_client}\n"
            ),
        ),
    )
    .await;
    // 4 attacking addresses, each opening its bound and 100 more.
    let sources: Vec<IpAddr> = (2..6)
        .map(|i| format!("127.0.0.{i}").parse().unwrap())
        .collect();
    let mut idle = vec![];
    let mut reset_at_connect = 0;
    let t0 = Instant::now();
    for src in &sources {
        for _ in 0..per_client + 100 {
            match connect_from(*src, p.http).await {
                Ok(s) => idle.push(s),
                // refused and reset before the connect was seen to complete
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reset_at_connect += 1,
                Err(e) => panic!("connect from {src}: {e}"),
            }
        }
    }
    let opened = t0.elapsed();
    // A real client keeps getting answers, and the admin listener too.
    let client = reqwest::Client::new();
    for i in 0..50 {
        let r = client
            .get(p.url(&format!("/inventory/A{}", i % 100)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for path in ["/live", "/ready", "/metrics"] {
        assert_eq!(
            client.get(p.admin_url(path)).send().await.unwrap().status(),
            200,
            "{path} while flooded"
        );
    }
    let listener = format!("http {}", p.http);
    let open = p
        .metric(&format!(
            "shardcast_connections_open{{listener=\"{listener}\"}}"
        ))
        .await
        .unwrap();
    let refused = p
        .metric(&format!(
            "shardcast_connections_refused_total{{listener=\"{listener}\",reason=\"client\"}}"
        ))
        .await
        .unwrap();
    assert!(
        open >= (sources.len() * per_client) as f64 * 0.9,
        "only {open} connections held (opened in {opened:?})"
    );
    assert_eq!(
        refused,
        (sources.len() * 100) as f64,
        "refusals past the per-client bound"
    );
    // The refused sockets were reset at once; the held ones close at the deadline.
    let mut reset = reset_at_connect;
    let mut closed_late = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in &mut idle {
        let mut b = [0u8; 1];
        match tokio::time::timeout_at(deadline.into(), s.read(&mut b)).await {
            Ok(Err(_)) => reset += 1,
            Ok(Ok(0)) => closed_late += 1,
            Ok(Ok(_)) => panic!("an idle connection got data"),
            Err(_) => panic!("idle connections still open 10 s later"),
        }
    }
    assert!(reset >= 300, "only {reset} refused sockets were reset");
    assert_eq!(reset + closed_late, idle.len() + reset_at_connect);
    eventually(
        Duration::from_secs(5),
        "all idle connections gone",
        || async {
            let o = p
                .metric(&format!(
                    "shardcast_connections_open{{listener=\"{listener}\"}}"
                ))
                .await?;
            (o <= 2.0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_refuses_cheaply_and_the_admin_listener_still_answers() {
    let nodes = [TestNode::start("n1").await];
    let p = Proxy::start(
        &nodes.iter().collect::<Vec<_>>(),
        deadlines(
            5000,
            5000,
            "[limits]\nmax_connections = 40\nmax_connections_per_client = 40\n",
        ),
    )
    .await;
    let listener = format!("http {}", p.http);
    let open = || async {
        p.metric(&format!(
            "shardcast_connections_open{{listener=\"{listener}\"}}"
        ))
        .await
    };
    // The harness's readiness probe has gone.
    eventually(Duration::from_secs(3), "no connection open", || async {
        (open().await? == 0.0).then_some(())
    })
    .await;
    let mut held = vec![];
    for _ in 0..40 {
        held.push(TcpStream::connect(p.http).await.unwrap());
    }
    eventually(Duration::from_secs(3), "40 connections held", || async {
        (open().await? >= 40.0).then_some(())
    })
    .await;
    // The 41st is reset: a request on it gets nothing.
    match TcpStream::connect(p.http).await {
        Ok(mut extra) => {
            let _ = extra
                .write_all(b"GET /inventory/A1 HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                other => panic!("a connection past the bound was served: {other:?}"),
            }
        }
        // reset before the connect was seen to complete
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let refused = p
        .metric(&format!(
            "shardcast_connections_refused_total{{listener=\"{listener}\",reason=\"listener\"}}"
        ))
        .await
        .unwrap();
    assert_eq!(refused, 1.0);
    for path in ["/live", "/ready", "/metrics"] {
        let r = reqwest::get(p.admin_url(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path} with the traffic listener full");
    }
    // Once the deadline has closed them, the listener takes clients again.
    for s in &mut held {
        closed_after(s, Duration::from_secs(10)).await;
    }
    eventually(Duration::from_secs(5), "served again", || async {
        let r = reqwest::get(p.url("/inventory/A1")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert_eq!(nodes[0].hits.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hang_up_cost_no_node_a_retry_or_a_health_mark() {
    let nodes = [TestNode::start("n1").await, TestNode::start("n2").await];
    let mut o = opts();
    // Two replicas per shard; two failures would eject a node.
    o.extra = "replication_factor = 2\n[health]\ninterval_ms = 200\nejection_ms = 5000\neject_after_failures = 2\n\
               [retry]\nmax_retries = 2\nbudget_ratio = 1.0\nmin_per_second = 100\n"
        .into();
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    // "slow" in the path: the nodes take 1.5 s to answer.
    let n = 20;
    let mut aborted = 0;
    let reqs = (0..n).map(|i| {
        let (c, url) = (impatient.clone(), p.url(&format!("/inventory/slow{i}")));
        async move { c.get(url).send().await }
    });
    for r in futures::future::join_all(reqs).await {
        assert!(r.is_err(), "the client should have given up");
        aborted += 1;
    }
    assert_eq!(aborted, n);
    // Let the nodes finish what reached them (1.5 s each).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let hits: u64 = nodes.iter().map(|n| n.hits.load(SeqCst)).sum();
    assert_eq!(
        hits, n,
        "each aborted request reaches a node once, never retried"
    );
    assert_eq!(p.metric("shardcast_retries_total").await, Some(0.0));
    assert_eq!(
        p.metric("shardcast_client_aborted_total").await,
        Some(n as f64)
    );
    for node in ["n1", "n2"] {
        assert_eq!(
            p.metric(&format!(
                "shardcast_node_ejections_total{{node=\"{node}\"}}"
            ))
            .await,
            Some(0.0),
            "{node} ejected for a client's hang-up"
        );
        assert_eq!(
            p.metric(&format!("shardcast_node_errors_total{{node=\"{node}\"}}"))
                .await,
            Some(0.0),
            "{node} charged for a client's hang-up"
        );
    }
    // and normal traffic still flows on both nodes
    for i in 0..10 {
        let r = reqwest::get(p.url(&format!("/inventory/A{i}")))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
