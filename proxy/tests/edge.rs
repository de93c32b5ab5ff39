//! The edges a real proxy is judged on: hostile framing, slow clients, TLS
//! versions and certificate reload, HTTP/2.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut buf = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_framing_is_answered_400_and_never_forwarded() {
    let nodes = [TestNode::start("n1").await];
    let mut o = opts();
    o.extra = "replication_factor = 1\nmax_header_bytes = 8192\n".into();
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let big = format!(
        "GET /inventory/A1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("CL with TE", b"GET /inventory/A1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), &["400"]),
        ("duplicate CL", b"GET /inventory/A1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), &["400"]),
        ("malformed CL", b"GET /inventory/A1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\na".to_vec(), &["400"]),
        ("negative CL", b"GET /inventory/A1 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), &["400"]),
        ("bad chunk size", b"GET /inventory/A1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n".to_vec(), &["400"]),
        ("chunked twice", b"GET /inventory/A1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n".to_vec(), &["400"]),
        ("oversized headers", big.into_bytes(), &["431", "400"]),
        ("missing Host", b"GET /inventory/A1 HTTP/1.1\r\n\r\n".to_vec(), &["400"]),
        ("two Hosts", b"GET /inventory/A1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), &["400"]),
    ];
    for (name, req, want) in &cases {
        let resp = raw(p.http, req).await;
        let status = resp.get(9..12).unwrap_or("");
        assert!(
            want.contains(&status),
            "{name}: expected {want:?}, got {:?}",
            resp.lines().next()
        );
    }
    assert_eq!(
        nodes[0].hits.load(SeqCst),
        0,
        "a hostile request reached the node: {:?}",
        nodes[0].paths.lock()
    );
    // and a well-formed chunked request still works
    let ok = raw(p.http, b"GET /inventory/A1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// Write `head` then one byte of `rest` every `every`, until the peer
/// closes; returns how long the connection stayed open.
async fn trickle(
    addr: std::net::SocketAddr,
    head: &[u8],
    rest: &[u8],
    every: Duration,
) -> Duration {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let rest = rest.to_vec();
    let writer = tokio::spawn(async move {
        for b in rest {
            tokio::time::sleep(every).await;
            if w.write_all(&[b]).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => continue,
        }
    }
    writer.abort();
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_by_header_and_body_deadlines() {
    let nodes = [TestNode::start("n1").await];
    let mut o = opts();
    o.extra =
        "replication_factor = 1\n[timeouts]\nclient_header_ms = 600\nclient_body_ms = 600\n".into();
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    // slowloris: a header line every 100 ms — each read is quick, the head never ends
    let filler = "X-Slow: yes\r\n".repeat(40);
    let held = trickle(
        p.http,
        b"GET /inventory/A1 HTTP/1.1\r\nHost: x\r\n",
        filler.as_bytes(),
        Duration::from_millis(20),
    )
    .await;
    assert!(
        held < Duration::from_millis(2500),
        "slow header held the connection {held:?}"
    );
    assert!(
        held >= Duration::from_millis(500),
        "cut before the deadline: {held:?}"
    );
    // slow body: 40 bytes announced, one every 100 ms
    let held = trickle(
        p.http,
        b"PUT /inventory/A1 HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n",
        &[b'x'; 40],
        Duration::from_millis(100),
    )
    .await;
    assert!(
        held < Duration::from_millis(2500),
        "slow body held the connection {held:?}"
    );
    assert_eq!(
        nodes[0].hits.load(SeqCst),
        0,
        "a slow request was forwarded"
    );
    // a normal request is unaffected
    let r = reqwest::get(p.url("/inventory/A1")).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Handshake with one protocol version; (version, suite, server cert DER).
async fn handshake(
    addr: std::net::SocketAddr,
    v: &'static rustls::SupportedProtocolVersion,
) -> (
    rustls::ProtocolVersion,
    rustls::SupportedCipherSuite,
    Vec<u8>,
) {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[v])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let s = conn
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("handshake");
    let (_, c) = s.get_ref();
    (
        c.protocol_version().unwrap(),
        c.negotiated_cipher_suite().unwrap(),
        c.peer_certificates().unwrap()[0].to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_offers_1_2_and_1_3_with_aead_only_and_reloads_the_certificate() {
    let nodes = [TestNode::start("n1").await];
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der1) = self_signed(dir.path(), "a");
    let tls_port = free_port();
    let mut o = opts();
    o.extra = "replication_factor = 1\n".into();
    o.https = Some((tls_port, cert.clone(), key.clone()));
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let (got, suite, der) = handshake(addr, v).await;
        assert_eq!(got, v.version);
        let name = format!("{:?}", suite.suite());
        assert!(
            name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
            "non-AEAD suite {name}"
        );
        assert_eq!(der, der1);
    }
    // Old protocol versions and CBC suites are refused (openssl as the peer).
    for flag in ["-tls1", "-tls1_1"] {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                flag,
                "-cipher",
                "ALL:@SECLEVEL=0",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl is part of the base system");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("Cipher is ") || text.contains("Cipher is (NONE)"),
            "{flag} negotiated: {text}"
        );
    }
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-tls1_2",
            "-cipher",
            "AES128-SHA:AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !text.contains("Cipher is ") || text.contains("Cipher is (NONE)"),
        "CBC suite negotiated: {text}"
    );

    // HTTPS with HTTP/2 by ALPN
    let c = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let r = c
        .get(format!("https://localhost:{tls_port}/inventory/A1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);

    // New certificate, reload: new handshakes see it.
    let (_c2, _k2, der2) = self_signed(dir.path(), "b");
    std::fs::copy(dir.path().join("b.crt"), &cert).unwrap();
    std::fs::copy(dir.path().join("b.key"), &key).unwrap();
    let r = reqwest::Client::new()
        .post(p.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, _, der) = handshake(addr, &rustls::version::TLS13).await;
    assert_eq!(der, der2, "certificate reloaded");
    // A broken key is rejected; the old certificate keeps serving.
    std::fs::write(&key, "not a key").unwrap();
    let r = reqwest::Client::new()
        .post(p.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let (_, _, der) = handshake(addr, &rustls::version::TLS12).await;
    assert_eq!(der, der2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_is_served() {
    let nodes = [TestNode::start("n1").await];
    let mut o = opts();
    o.extra = "replication_factor = 1\n".into();
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for i in 0..10 {
        let r = c
            .get(p.url(&format!("/inventory/B{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-shardcast-shard"], "UK/BETA");
    }
}
