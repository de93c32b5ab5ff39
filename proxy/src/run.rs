//! Start-up: config → first snapshot → Pingora server with the proxy
//! service and the control background service → run until a signal.
//! Pingora owns the signals that end the process: SIGTERM drains in-flight
//! requests for the grace period then exits, SIGINT exits fast, SIGQUIT
//! hands the listeners to a new process started with `--upgrade`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;

use crate::listener::{Endpoint, TrafficService};
use crate::node::NodeRegistry;
use crate::proxy::ShardProxy;
use crate::reload;
use crate::services::Control;
use crate::state::{GlobalCounters, RetryBudget, Shared};
use crate::telemetry::{ExportCounters, StatsRegistry};
use crate::tls::CertResolver;

/// Command-line options of `shardcast-proxy`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "shardcast-proxy",
    version,
    about = "Shard-aware HTTP proxy with forecast-driven pre-fetch"
)]
pub struct Args {
    /// Config file (TOML).
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
    /// Validate the config (and the catalog and certificates it names), print
    /// every error, and exit: 0 when valid.
    #[arg(short = 't', long = "test")]
    pub test: bool,
    /// Take the listening sockets over from a running instance (graceful
    /// upgrade; send the old one SIGQUIT).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
    /// Socket through which listeners are handed over on upgrade.
    #[arg(long, default_value = "/tmp/shardcast_upgrade.sock")]
    pub upgrade_sock: String,
    /// Name reported in telemetry frames (default: host name and pid).
    #[arg(long)]
    pub instance: Option<String>,
}

/// Validate only (for `-t`): Ok(summary) or every error. A valid file is
/// then compared with the instance running on the admin listener it names:
/// the summary lists each restart-only setting the file changes
/// (`needs_restart: <field> (running X, file Y)`), or says that no instance
/// answers and which settings apply only at start. Either way the file is
/// valid (exit 0).
pub fn check(args: &Args) -> Result<String, Vec<String>> {
    let p = reload::prepare(&args.config, None)?;
    // What serving would build and resolve, without the per-shard telemetry
    // a running proxy keeps (histograms for every shard).
    let table = shardmap::RoutingTable::build(&p.config, p.catalog.clone(), 1);
    crate::snapshot::resolve_peers(&p.config, &table).map_err(|e| vec![e])?;
    let mut out = format!(
        "{}: ok: {} nodes, {} shards, {} routes, {} skus in {} categories",
        args.config.display(),
        table.nodes.len(),
        table.shards.len(),
        p.config.routes.len(),
        table.catalog.len(),
        table.catalog.categories.len()
    );
    for line in crate::restart::compare_with_running(&p.config) {
        out.push('\n');
        out.push_str(&line);
    }
    Ok(out)
}

/// The shared state `run` builds, without starting anything (for tests).
pub fn shared_for_tests(config: &std::path::Path) -> Result<Arc<Shared>, Vec<String>> {
    let prepared = reload::prepare(config, None)?;
    let (nodes, stats) = (NodeRegistry::default(), StatsRegistry::default());
    let snap = reload::initial(&prepared, &nodes, &stats)?;
    let edge = crate::state::Edge::new(&snap.config);
    Ok(Arc::new(Shared {
        snapshot: arc_swap::ArcSwap::from_pointee(snap),
        config_path: config.to_path_buf(),
        nodes,
        stats,
        counters: GlobalCounters::default(),
        export: ExportCounters::default(),
        metadata: Default::default(),
        retry_budget: RetryBudget::default(),
        reload_lock: tokio::sync::Mutex::new(()),
        certs: vec![],
        history: Default::default(),
        ready: AtomicBool::new(false),
        instance: "test".into(),
        dashboard: Default::default(),
        edge,
        tasks: shardcast_edge::supervise::Tasks::new(),
    }))
}

/// Build everything and run until a terminating signal. Returns only on a
/// start-up error (with every problem listed).
pub fn run(args: Args) -> Result<(), Vec<String>> {
    let prepared = reload::prepare(&args.config, None)?;
    let nodes = NodeRegistry::default();
    let stats = StatsRegistry::default();
    let snap = reload::initial(&prepared, &nodes, &stats)?;
    let cfg = prepared.config.clone();
    let admin = bind_admin(cfg.listen.admin)
        .map_err(|e| vec![format!("listen.admin {}: {e}", cfg.listen.admin)])?;
    let certs: Vec<Arc<CertResolver>> = prepared
        .certs
        .into_iter()
        .map(|k| Arc::new(CertResolver::new(k)))
        .collect();
    let instance = args
        .instance
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let shared = Arc::new(Shared {
        snapshot: arc_swap::ArcSwap::from_pointee(snap),
        config_path: args.config.clone(),
        nodes,
        stats,
        counters: GlobalCounters::default(),
        export: ExportCounters::default(),
        metadata: Default::default(),
        retry_budget: RetryBudget::default(),
        reload_lock: tokio::sync::Mutex::new(()),
        certs: certs.clone(),
        history: Default::default(),
        ready: AtomicBool::new(false),
        instance,
        dashboard: Default::default(),
        edge: crate::state::Edge::new(&cfg),
        tasks: shardcast_edge::supervise::Tasks::new(),
    });
    shared.record_version(&shared.current().table, "start");
    // Every connection is a file descriptor: take all the kernel allows,
    // then fit the connection bounds into it.
    let nofile = shardcast_edge::fd::raise_nofile().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
        shardcast_edge::fd::nofile()
    });
    let cap = shared.edge.fit_to_open_files(&cfg, nofile);
    if cap < cfg.limits.max_connections {
        tracing::warn!(
            open_files = nofile,
            max_connections = cfg.limits.max_connections,
            effective = cap,
            "limits.max_connections is more than the open-file limit leaves room for; using the lower bound (raise `ulimit -Hn` / LimitNOFILE)"
        );
    }
    tracing::info!(
        open_files = nofile,
        max_connections = cfg.limits.max_connections.min(cap),
        max_connections_per_client = cfg.limits.max_connections_per_client.min(cap),
        "connection bounds per traffic listener"
    );

    let opt = Opt {
        upgrade: args.upgrade,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let conf = ServerConf {
        threads: cfg.listen.threads,
        // One current-thread runtime per worker: no cross-thread task
        // stealing on the request path (connections are spread by the
        // listeners).
        work_stealing: false,
        grace_period_seconds: Some(cfg.listen.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.listen.grace_period.as_secs().max(1)),
        // The proxy enforces its own, reloadable retry limit; this is the cap.
        max_retries: 11,
        upstream_keepalive_pool_size: 1024,
        // Pingora's upstream read, write, connect and pooled-idle timeouts
        // on each worker's Tokio timer wheel rather than its shared timer
        // (a read-write lock, a B-tree of 10 ms ticks and a notify per
        // timeout, and a thread that wakes every 10 ms).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        upgrade_sock: args.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let sconf = server.configuration.clone();

    let mut proxy = pingora_proxy::http_proxy(&sconf, ShardProxy::new(shared.clone()));
    let mut opts = HttpServerOptions::default();
    opts.h2c = true;
    // An HTTP/2 connection with no open stream is closed after this.
    opts.h2_idle_timeout = Some(cfg.timeouts.client_h2_idle);
    proxy.server_options = Some(opts);
    let mut endpoints = vec![];
    let mut limiters = shared.edge.traffic.iter();
    for a in &cfg.listen.http {
        endpoints.push(Endpoint {
            addr: *a,
            tls: None,
            limiter: limiters
                .next()
                .cloned()
                .ok_or_else(|| vec!["listener bounds".to_string()])?,
            socket: None,
        });
    }
    for (h, resolver) in cfg.listen.https.iter().zip(&certs) {
        let mut tls = TlsSettings::intermediate("", "").map_err(|e| vec![format!("tls: {e}")])?;
        tls.set_cert_resolver(resolver.clone());
        if h.h2 {
            tls.enable_h2();
        }
        endpoints.push(Endpoint {
            addr: h.addr,
            tls: Some(Arc::new(tls.build())),
            limiter: limiters
                .next()
                .cloned()
                .ok_or_else(|| vec!["listener bounds".to_string()])?,
            socket: None,
        });
    }
    // Bind now, so a busy port is a start-up error; on upgrade the
    // sockets come from the previous process instead.
    if !args.upgrade {
        for ep in &mut endpoints {
            ep.socket = Some(
                crate::listener::bind(ep.addr)
                    .map_err(|e| vec![format!("listen {}: {e}", ep.addr)])?,
            );
        }
    }
    server.add_service(TrafficService::new(endpoints, proxy, shared.clone()));
    server.add_service(background_service(
        "control",
        Control {
            shared: shared.clone(),
            admin: parking_lot::Mutex::new(Some(admin)),
        },
    ));
    tracing::info!(
        http = ?cfg.listen.http,
        https = ?cfg.listen.https.iter().map(|h| h.addr).collect::<Vec<_>>(),
        admin = %cfg.listen.admin,
        skus = shared.current().table.catalog.len(),
        "shardcast-proxy starting"
    );
    server.run_forever()
}

/// The admin socket, with SO_REUSEPORT so a process started with
/// `--upgrade` can bind it while the old one is still draining.
fn bind_admin(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "proxy".into())
}
