//! The floor for shardcast's own overhead in `benches/peers`: the smallest
//! Pingora proxy that does the same routing job (hash of the path over the
//! nodes, keep-alive upstreams, one worker thread) and nothing else — no
//! catalog, retries, health checks, telemetry or framing checks.
//! `minimal_pingora [--threads N] [--timeouts] [--h2c] [--tokio-timers] [--pool N] LISTEN NODE [NODE...]`
//!
//! `--timeouts` gives the upstream peers shardcast's default timeouts
//! (connect 1 s, read and write 5 s, idle 60 s): Pingora then arms a timer
//! per upstream read and write and per pooled idle connection, which a
//! proxy without upstream deadlines does not pay.
//!
//! `--h2c` also serves cleartext HTTP/2 (prior knowledge) on the same
//! port, as shardcast does: Pingora then peeks at each new connection for
//! the HTTP/2 preface. `--tokio-timers` and `--pool N` try Pingora's
//! options (its timeouts on Tokio's timer; the upstream keep-alive pool
//! size) on the floor itself.

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
    let (mut threads, mut timeouts, mut h2c, mut tokio_timers) = (1, false, false, false);
    let mut pool = None;
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let flag = args.remove(0);
        match flag.as_str() {
            "--threads" => threads = args.remove(0).parse().expect("--threads N"),
            "--timeouts" => timeouts = true,
            "--h2c" => h2c = true,
            "--tokio-timers" => tokio_timers = true,
            "--pool" => pool = Some(args.remove(0).parse().expect("--pool N")),
            _ => panic!("unknown flag {flag}"),
        }
    }
    let (listen, nodes) = args.split_first().expect(
        "usage: minimal_pingora [--threads N] [--timeouts] [--h2c] [--tokio-timers] [--pool N] LISTEN NODE...",
    );
    let conf = ServerConf {
        threads,
        work_stealing: false,
        upgrade_sock: format!("/tmp/minimal_pingora_{}.sock", std::process::id()),
        upstream_keepalive_pool_size: pool
            .unwrap_or(ServerConf::default().upstream_keepalive_pool_size),
        // Pingora's timeouts of a second or more on Tokio's timer wheel
        // instead of its shared 10 ms timer thread.
        fast_timeout_to_tokio_threshold_seconds: if tokio_timers {
            Some(0)
        } else {
            ServerConf::default().fast_timeout_to_tokio_threshold_seconds
        },
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
    if h2c {
        let mut opts = pingora_core::apps::HttpServerOptions::default();
        opts.h2c = true;
        svc.app_logic_mut()
            .expect("a proxy service has its app")
            .server_options = Some(opts);
    }
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever();
}
