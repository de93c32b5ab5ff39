//! Chunked request bodies whose chunk-size lines two parsers could read
//! differently: refused with 400, never forwarded.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `req`, read what comes back within 3 s.
async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut buf = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

const HEAD: &str = "POST /inventory/A1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_in_a_chunk_line_is_answered_400_and_never_forwarded() {
    let nodes = [TestNode::start("n1").await];
    let mut o = opts();
    o.extra = "replication_factor = 1\n".into();
    let p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    for body in [
        // nginx and HAProxy answer 400 to each
        "3;ext\nabc\r\n0\r\n\r\n",
        "1\r\na\r\n2;x=y\nbc\r\n0\r\n\r\n",
        "3;a\x01b\r\nabc\r\n0\r\n\r\n",
    ] {
        let resp = raw(p.http, format!("{HEAD}{body}").as_bytes()).await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{body:?}: expected 400 within 3 s, got {:?}",
            resp.lines().next()
        );
    }
    assert_eq!(
        nodes[0].hits.load(SeqCst),
        0,
        "a request with a bad chunk line reached the node: {:?}",
        nodes[0].paths.lock()
    );
    // chunk extensions ended by CRLF are fine
    let ok = raw(
        p.http,
        format!("{HEAD}3;name=\"v a l\"\r\nabc\r\n0\r\n\r\n")
            .replace("chunked\r\n", "chunked\r\nConnection: close\r\n")
            .as_bytes(),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}
