//! `shardcast-sync`: flags → config → build → run → wait for a signal.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use shardcast_sync::config::{default_shards, NodeConfig, SyncConfig};
use shardcast_sync::metrics::Metrics;
use shardcast_sync::node::{Node, NodeSettings};
use shardcast_sync::provider::{self, ProviderFull};
use shardcast_sync::scheduler::Scheduler;
use shardcast_sync::{api, cache, load, node};
use tokio_util::sync::CancellationToken;

// glibc malloc, unlike the proxy and the forecaster: on mimalloc the
// 10k-shard scale run's sync (in-process node caches) peaked at 15 % more
// memory for about 7 % less CPU (benches/RESULTS.md, 2026-12-04).

#[derive(Parser)]
#[command(
    name = "shardcast-sync",
    about = "shardcast data path: provider → node caches, and the reference node"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the transfer scheduler and its control API (and in-process
    /// nodes for `memory` caches).
    Serve {
        #[arg(long, default_value = "conf/sync.toml")]
        config: PathBuf,
    },
    /// Run one reference node. Flags override the config file; with no
    /// config file the flags alone describe the node.
    Node {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        name: Option<String>,
        /// Address to listen on (port 0 picks one; the bound address is printed).
        #[arg(long)]
        listen: Option<String>,
        /// Provider url: `sqlite:PATH` or a PostgreSQL url.
        #[arg(long)]
        provider: Option<String>,
        /// Cache url: `memory`, `redis://host:port/db` or
        /// `redis+cluster://host:port,host:port`.
        #[arg(long)]
        cache: Option<String>,
        /// Key prefix in Redis (default: the node name).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Seed the provider from the catalog at a scale factor.
    Load {
        #[arg(long, default_value = "sqlite:var/provider.db")]
        provider: String,
        #[arg(long, default_value = "data/online_retail/catalog.csv.gz")]
        catalog: PathBuf,
        #[arg(long, default_value_t = 1)]
        scale: u32,
        #[arg(long, default_value_t = 20_000)]
        chunk: usize,
    },
    /// Replay invoice lines as stock and price changes.
    Changes {
        #[arg(long, default_value = "sqlite:var/provider.db")]
        provider: String,
        #[arg(long, default_value = "data/online_retail/catalog.csv.gz")]
        catalog: PathBuf,
        #[arg(long, default_value = "data/online_retail/lines.csv.gz")]
        lines: PathBuf,
        #[arg(long, default_value_t = 1)]
        scale: u32,
        /// Changes per second (0 = as fast as possible).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Stop after this many lines (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        #[arg(long, default_value_t = 50)]
        txn: usize,
    },
}

fn signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install SIGTERM handler");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: exiting"),
        }
        shutdown.cancel();
    });
}

async fn open_provider(url: &str, shutdown: &CancellationToken) -> Result<Arc<dyn ProviderFull>> {
    let mut delay = Duration::from_millis(200);
    loop {
        match provider::open(url).await {
            Ok(p) => return Ok(p),
            Err(provider::ProviderError::Unavailable(e)) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "provider unreachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => bail!("shut down before the provider came up"),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("opening the provider"),
        }
    }
}

/// Raise the open-file limit to its hard limit (every connection is a
/// descriptor) and say what it is; warn when it is below the connection
/// bounds of the process's listeners.
fn raise_nofile(max_connections: usize) {
    match shardcast_edge::fd::raise_nofile() {
        Ok(n) => {
            tracing::info!(limit = n, "open-file limit");
            if n < max_connections as u64 {
                tracing::warn!(limit = n, max_connections, "open-file limit below the connection bounds: accepts will fail before the bounds are reached");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, limit = shardcast_edge::fd::nofile(), "cannot raise the open-file limit")
        }
    }
}

/// Every read of `provider` counted into `metrics`, each after `latency`.
fn counted(
    provider: Arc<dyn ProviderFull>,
    latency: Duration,
    metrics: &Arc<Metrics>,
) -> Arc<dyn provider::Provider> {
    if !latency.is_zero() {
        tracing::info!(
            latency_ms = latency.as_millis() as u64,
            "every provider read waits a simulated wide-area round trip ([provider] read_latency_ms)"
        );
    }
    Arc::new(provider::reads::Counted::new(
        provider,
        latency,
        metrics.provider_reads.clone(),
    ))
}

async fn serve(config: PathBuf) -> Result<()> {
    let cfg = SyncConfig::load(&config)?;
    let in_process = cfg.nodes.iter().filter(|n| n.listen.is_some()).count();
    raise_nofile(
        cfg.control_listener.limits.max_connections
            + in_process * cfg.node_listener.limits.max_connections,
    );
    let shutdown = CancellationToken::new();
    signals(shutdown.clone());
    let provider = open_provider(&cfg.provider_url, &shutdown).await?;
    if let Some(cat) = &cfg.seed_catalog {
        if provider.count().await? == 0 {
            tracing::info!(catalog = %cat.display(), scale = cfg.seed_scale, "provider empty: seeding");
            load::load(provider.as_ref(), cat, cfg.seed_scale, 20_000).await?;
        }
    }
    let metrics = Arc::new(Metrics::default());
    let reader = counted(provider.clone(), cfg.provider_read_latency, &metrics);
    let mut caches = BTreeMap::new();
    // One catalog for every in-process node (they serve the same shards).
    let catalog = node::SharedCatalog::new();
    for n in &cfg.nodes {
        let c = cache::open(&n.cache, &n.prefix)
            .await
            .with_context(|| format!("node `{}` cache", n.name))?;
        if let Some(addr) = n.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("node `{}`: bind {addr}", n.name))?;
            println!("node {} listening on {}", n.name, listener.local_addr()?);
            let settings = NodeSettings {
                name: n.name.clone(),
                default_region: cfg.node.default_region.clone(),
                fill_ttl: cfg.scheduler.max_staleness,
                max_value_bytes: cfg.scheduler.transfer.max_value_bytes,
                listener: cfg.node_listener,
            };
            // The node's own counters; provider reads are the process's.
            let node_metrics = Arc::new(Metrics {
                provider_reads: metrics.provider_reads.clone(),
                ..Metrics::default()
            });
            let nd = Node::sharing(
                reader.clone(),
                c.clone(),
                cfg.shards.clone(),
                settings,
                node_metrics,
                catalog.clone(),
            );
            tokio::spawn(node::run(listener, nd, shutdown.clone()));
        }
        caches.insert(n.name.clone(), c);
    }
    let sched = Scheduler::start(
        reader.clone(),
        caches,
        cfg.shards.clone(),
        cfg.scheduler.clone(),
        metrics,
        shutdown.clone(),
    );
    shardcast_sync::push::start(cfg.push.clone(), &sched, shutdown.clone());
    if !cfg.push.urls.is_empty() {
        tracing::info!(managers = ?cfg.push.urls, "finished orders are pushed to the shard managers");
    }
    let listener = tokio::net::TcpListener::bind(cfg.control)
        .await
        .with_context(|| format!("control: bind {}", cfg.control))?;
    println!("control listening on {}", listener.local_addr()?);
    tracing::info!(addr = %listener.local_addr()?, nodes = cfg.nodes.len(), shards = cfg.shards.len(), provider = provider.kind(), "scheduler up");
    if cfg.control_token.is_some() {
        tracing::info!("control API: bearer token required");
    }
    api::run(
        listener,
        sched.clone(),
        cfg.control_listener,
        cfg.control_token.clone(),
        shutdown.clone(),
    )
    .await;
    // The last changes (orders queued again at shutdown) reach the file.
    if !sched.flush(Duration::from_secs(5)).await {
        tracing::warn!("scheduler state not written within 5 s of shutdown");
    }
    Ok(())
}

async fn run_node(
    config: Option<PathBuf>,
    name: Option<String>,
    listen: Option<String>,
    provider_url: Option<String>,
    cache_url: Option<String>,
    prefix: Option<String>,
) -> Result<()> {
    let mut cfg = match config {
        Some(p) => NodeConfig::load(&p)?,
        None => NodeConfig {
            name: "node".into(),
            listen: ([127, 0, 0, 1], 9081).into(),
            provider_url: "sqlite:var/provider.db".into(),
            provider_read_latency: Duration::ZERO,
            cache_url: "memory".into(),
            prefix: String::new(),
            settings: NodeSettings::default(),
            shards: default_shards(),
        },
    };
    if let Some(n) = name {
        cfg.settings.name = n.clone();
        cfg.name = n;
    }
    if let Some(l) = listen {
        cfg.listen = l.parse().with_context(|| format!("--listen `{l}`"))?;
    }
    if let Some(p) = provider_url {
        cfg.provider_url = p;
    }
    if let Some(c) = cache_url {
        cfg.cache_url = c;
    }
    cfg.prefix = prefix.unwrap_or(if cfg.prefix.is_empty() {
        cfg.name.clone()
    } else {
        cfg.prefix
    });
    raise_nofile(cfg.settings.listener.limits.max_connections);
    let shutdown = CancellationToken::new();
    signals(shutdown.clone());
    let provider = open_provider(&cfg.provider_url, &shutdown).await?;
    let metrics = Arc::new(Metrics::default());
    let reader = counted(provider.clone(), cfg.provider_read_latency, &metrics);
    let cache = cache::open(&cfg.cache_url, &cfg.prefix).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("bind {}", cfg.listen))?;
    println!("node {} listening on {}", cfg.name, listener.local_addr()?);
    tracing::info!(node = %cfg.name, addr = %listener.local_addr()?, cache = cache.kind(), provider = provider.kind(), "node up");
    let nd = Node::new(reader, cache, cfg.shards, cfg.settings, metrics);
    node::run(listener, nd, shutdown).await;
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve { config } => serve(config).await,
            Cmd::Node {
                config,
                name,
                listen,
                provider,
                cache,
                prefix,
            } => run_node(config, name, listen, provider, cache, prefix).await,
            Cmd::Load {
                provider,
                catalog,
                scale,
                chunk,
            } => {
                let p = provider::open(&provider).await?;
                let n = load::load(p.as_ref(), &catalog, scale, chunk).await?;
                println!("loaded {n} rows");
                Ok(())
            }
            Cmd::Changes {
                provider,
                catalog,
                lines,
                scale,
                rate,
                limit,
                txn,
            } => {
                let p = provider::open(&provider).await?;
                let opts = load::ReplayOptions {
                    scale,
                    rate,
                    limit,
                    txn,
                };
                let n = load::replay(p.as_ref(), &catalog, &lines, &opts).await?;
                println!("applied {n} changes");
                Ok(())
            }
        }
    })
}
