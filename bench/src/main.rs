//! `switchboard-bench`: drives Switchboard over its real protocol (WebSocket
//! and HTTP) and prints a table, each row beside a bare WebSocket relay (no
//! Wasm, no storage) measured in the same run with the same generator.
//!
//! Every loop is bounded in count and time; only loopback is targeted.

mod relay;
mod scenarios;
mod target;
mod wasm_cost;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-bench",
    about = "Benchmarks for Switchboard, against a bare relay baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Tiny sizes and short runs: a smoke test of the whole harness.
    #[arg(long)]
    quick: bool,
    /// The switchboard binary (default: target/release/switchboard).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Also write raw latency samples (CSV) here, for plots.
    #[arg(long)]
    samples_dir: Option<PathBuf>,
    /// Also run scenarios 1-4 on two gateways over Redis + Cassandra
    /// (`infra/redis.sh start`, `infra/cassandra/cassandra.sh start`).
    #[arg(long)]
    cluster: bool,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, default_value = "127.0.0.1:9042")]
    cassandra: String,
    /// Seconds of unrecorded load on the cluster before it is measured, so
    /// that Cassandra's JVM has compiled its hot code [default: 60; 1 with
    /// `--quick` and no subcommand].
    #[arg(long)]
    cluster_warm_up: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the baseline: a bare WebSocket relay speaking the same frames.
    Relay {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Only scenario 6 (in process, seconds): for iterating on invocation cost.
    WasmCost {
        #[arg(long, default_value_t = 100_000)]
        events: usize,
    },
    /// Only scenario 5's memory figure (embedded backend, seconds): for
    /// iterating on per-connection memory.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// Only scenario 1 on one target (embedded, the relay with `--relay`, or
    /// two gateways over Redis + Cassandra with `--cluster`):
    /// closed-loop peak, then latency at each fraction of it (or at each
    /// rate of `--rates`). For iterating on the send path, and for comparing
    /// two targets at the same offered rates.
    OneToOne {
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Offered loads, as fractions of the measured peak.
        #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75")]
        loads: Vec<f64>,
        /// Offered rates in msg/s, instead of `--loads`: the same rates can
        /// be offered to Switchboard and to the relay.
        #[arg(long, value_delimiter = ',')]
        rates: Vec<f64>,
        #[arg(long)]
        relay: bool,
    },
    /// Only scenario 3 (embedded, or two gateways over Redis + Cassandra
    /// with `--cluster`): seeds one chat, then pages through it from
    /// concurrent clients. For iterating on the read path.
    History {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Relay { listen }) => return relay::serve(listen).await,
        Some(Command::WasmCost { events }) => {
            println!("{:?}", wasm_cost::measure(events, 128).await?);
            return Ok(());
        }
        Some(Command::Idle { .. } | Command::OneToOne { .. } | Command::History { .. }) | None => {}
    }
    let bin = cli
        .bin
        .unwrap_or_else(|| PathBuf::from("target/release/switchboard"));
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p host-gateway`",
        bin.display()
    );
    if let Some(Command::Idle { connections }) = cli.command {
        let per = scenarios::idle_rss(&bin, connections).await?;
        println!("{connections} idle connections: {per:.2} KiB RSS each");
        return Ok(());
    }
    let warm_up = cli.cluster_warm_up.map(std::time::Duration::from_secs);
    let with_warm_up = |sizes: scenarios::Sizes| scenarios::Sizes {
        cluster_warm_up: warm_up.unwrap_or(sizes.cluster_warm_up),
        ..sizes
    };
    let cluster = cli.cluster.then(|| target::ClusterServices {
        redis_url: cli.redis_url.clone(),
        cassandra: cli.cassandra.clone(),
    });
    if let Some(Command::History {
        messages,
        clients,
        secs,
    }) = cli.command
    {
        let sizes = with_warm_up(scenarios::Sizes {
            history_messages: messages,
            history_clients: clients,
            duration: std::time::Duration::from_secs(secs),
            ..scenarios::Sizes::full()
        });
        return scenarios::history_only(&bin, &sizes, cluster.as_ref()).await;
    }
    if let Some(Command::OneToOne {
        pairs,
        window,
        secs,
        loads,
        rates,
        relay,
    }) = cli.command
    {
        let sizes = with_warm_up(scenarios::Sizes {
            pairs,
            window,
            duration: std::time::Duration::from_secs(secs),
            ..scenarios::Sizes::full()
        });
        let offered = if rates.is_empty() {
            scenarios::Offered::FractionsOfPeak(loads)
        } else {
            scenarios::Offered::Rates(rates)
        };
        return scenarios::one_to_one_loads(&bin, &sizes, &offered, relay, cluster.as_ref()).await;
    }
    let sizes = with_warm_up(if cli.quick {
        scenarios::Sizes::quick()
    } else {
        scenarios::Sizes::full()
    });
    scenarios::run_all(&bin, &sizes, cli.samples_dir.as_deref(), cluster.as_ref()).await
}
