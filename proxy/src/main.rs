//! `shardcast-proxy -c FILE [-t]`: see the crate docs and the README.

use clap::Parser;
use shardcast_proxy::run::{self, Args};

// glibc malloc was a quarter of a minimal Pingora proxy's instructions.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
            }),
        )
        .with_target(false)
        // Colour only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    if args.test {
        match run::check(&args) {
            Ok(summary) => {
                println!("{summary}");
                std::process::exit(0)
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                eprintln!("{}: {} error(s)", args.config.display(), errors.len());
                std::process::exit(1)
            }
        }
    }
    if let Err(errors) = run::run(args) {
        for e in &errors {
            eprintln!("error: {e}");
        }
        std::process::exit(1);
    }
}
