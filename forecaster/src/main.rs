//! `shardcast-forecaster`: parse flags, load config, start, wait for a
//! signal, stop with a final snapshot.

use std::path::PathBuf;

use clap::Parser;
use shardcast_forecaster::config::Config;
use shardcast_forecaster::service::Service;

// The manager's rounds build and drop tens of thousands of small values
// (plan inputs, actions, answers from sync); glibc malloc was a quarter
// of a 10k-shard round.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "shardcast forecaster sidecar: telemetry ingest, per-shard demand forecasts"
)]
struct Args {
    /// Configuration file (see conf/forecaster.toml).
    #[arg(long, default_value = "conf/forecaster.toml")]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colour only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration:\n{e}");
            std::process::exit(2);
        }
    };
    if args.check {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    // Every connection is a file descriptor: take the hard limit.
    match shardcast_edge::fd::raise_nofile() {
        Ok(n) => {
            tracing::info!(limit = n, "open-file limit");
            if n < cfg.limits.max_connections as u64 {
                tracing::warn!(limit = n, max_connections = cfg.limits.max_connections, "open-file limit below limits.max_connections: accepts will fail before the bound is reached");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, limit = shardcast_edge::fd::nofile(), "cannot raise the open-file limit")
        }
    }
    let svc = Service::start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: snapshot and exit"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: snapshot and exit"),
    }
    svc.shutdown().await;
    Ok(())
}
