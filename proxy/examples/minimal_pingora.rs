//! The floor for shardcast's own overhead in `benches/peers`: the smallest
//! Pingora proxy that does the same routing job (hash of the path over the
//! nodes, keep-alive upstreams, one worker thread) and nothing else — no
//! catalog, retries, health checks, telemetry or framing checks.
//! `minimal_pingora [--threads N] [--timeouts] LISTEN NODE [NODE...]`
//!
//! `--timeouts` gives the upstream peers shardcast's default timeouts
//! (connect 1 s, read and write 5 s, idle 60 s): Pingora then arms a timer
//! per upstream read and write and per pooled idle connection, which a
//! proxy without upstream deadlines does not pay.

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Minimal {
    peers: Vec<HttpPeer>,
}

#[async_trait]
impl ProxyHttp for Minimal {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        s: &mut Session,
        _: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        let h = s
            .req_header()
            .uri
            .path()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        Ok(Box::new(
            self.peers[(h % self.peers.len() as u64) as usize].clone(),
        ))
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut threads = 1;
    if args.first().map(String::as_str) == Some("--threads") && args.len() > 1 {
        threads = args[1].parse().expect("--threads N");
        args.drain(..2);
    }
    let timeouts = args.first().map(String::as_str) == Some("--timeouts");
    if timeouts {
        args.remove(0);
    }
    let (listen, nodes) = args
        .split_first()
        .expect("usage: minimal_pingora [--threads N] LISTEN NODE...");
    let conf = ServerConf {
        threads,
        work_stealing: false,
        upgrade_sock: format!("/tmp/minimal_pingora_{}.sock", std::process::id()),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let peers = nodes
        .iter()
        .map(|n| {
            let mut p = HttpPeer::new(n.as_str(), false, String::new());
            if timeouts {
                use std::time::Duration;
                p.options.connection_timeout = Some(Duration::from_secs(1));
                p.options.total_connection_timeout = Some(Duration::from_secs(1));
                p.options.read_timeout = Some(Duration::from_secs(5));
                p.options.write_timeout = Some(Duration::from_secs(5));
                p.options.idle_timeout = Some(Duration::from_secs(60));
            }
            p
        })
        .collect();
    let mut svc = pingora_proxy::http_proxy_service(&server.configuration, Minimal { peers });
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever();
}
