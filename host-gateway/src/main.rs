//! `switchboard`: run the gateway, or print a token for a user.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use host_gateway::{Config, auth};

// glibc's malloc showed up as ~12% of the gateway's CPU under load (the store
// writer's page buffers above all); mimalloc keeps per-thread free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time chat over Wasm components"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(Config),
    /// Print a token for a user, signed with the configured (or kept) secret.
    Token {
        /// The user id the token is for.
        user: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl_secs: u64,
        #[command(flatten)]
        config: Config,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Token {
            user,
            ttl_secs,
            config,
        } => {
            let secret =
                auth::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
            println!(
                "{}",
                auth::Authenticator::new(&secret).issue(&user, ttl_secs)?
            );
            Ok(())
        }
        Command::Serve(config) => {
            avoid_transparent_huge_pages();
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            host_gateway::run(listener, config, shutdown_signal()).await
        }
    }
}

/// Turns transparent huge pages off for this process.
///
/// mimalloc asks for huge pages on its arenas, and when it reuses memory it
/// had handed back, the fault zeroes a whole 2 MiB page (and, with the
/// kernel's usual `defrag=madvise`, may first compact memory to find one) on
/// whichever thread touched it: the store writer, the flusher or a socket
/// worker, with acknowledgements waiting. Profiled at the 1:1 peak (68k
/// msg/s), that zeroing was 8% of the gateway's CPU. Turning it off took the
/// 1:1 p99 at 28k msg/s from 30-32 ms to 16-22 ms, and at 14k from 21-81 ms
/// to 10-12 ms, at the same CPU and peak (`switchboard-bench one-to-one`,
/// three alternated runs each).
fn avoid_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "could not turn transparent huge pages off");
    }
}

/// Resolves on Ctrl-C or SIGTERM (what service managers send).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
