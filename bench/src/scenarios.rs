//! The scenarios. Each measures Switchboard and, where the comparison means
//! something, the bare relay with the same generator in the same run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};

use crate::target::{
    ClusterServices, Sender, Socket, Target, cpu_time_of, recv_latency, send_stamped,
};

/// How big and how long.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub pairs: usize,
    pub window: usize,
    pub duration: Duration,
    pub group_size: usize,
    pub group_messages: usize,
    pub history_messages: usize,
    pub history_clients: usize,
    pub idle_connections: usize,
    pub presence_connections: usize,
    /// Also measure idle memory at the machine's connection ceiling.
    pub idle_ceiling: bool,
    /// Pair counts of the throughput sweep, each run for `sweep_duration`.
    pub sweep_pairs: Vec<usize>,
    pub sweep_duration: Duration,
    pub wasm_events: usize,
    /// Unrecorded closed-loop load on the cluster before it is measured (see `warm_up_cluster`).
    pub cluster_warm_up: Duration,
}

impl Sizes {
    pub fn full() -> Self {
        Self {
            pairs: 50,
            window: 16,
            duration: Duration::from_secs(10),
            group_size: 256,
            group_messages: 200,
            history_messages: 100_000,
            history_clients: 8,
            idle_connections: 10_000,
            presence_connections: 1_000,
            idle_ceiling: true,
            sweep_pairs: vec![1, 10, 50, 200, 1000],
            sweep_duration: Duration::from_secs(4),
            wasm_events: 100_000,
            cluster_warm_up: Duration::from_secs(60),
        }
    }

    pub fn quick() -> Self {
        Self {
            pairs: 4,
            window: 4,
            duration: Duration::from_secs(1),
            group_size: 16,
            group_messages: 10,
            history_messages: 500,
            history_clients: 2,
            idle_connections: 200,
            presence_connections: 20,
            idle_ceiling: false,
            sweep_pairs: vec![1, 4],
            sweep_duration: Duration::from_millis(500),
            wasm_events: 2_000,
            cluster_warm_up: Duration::from_secs(1),
        }
    }
}

/// One table row.
struct Row {
    scenario: String,
    metric: &'static str,
    switchboard: f64,
    baseline: Option<f64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// What a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Embedded,
    Cluster,
    Relay,
}

impl Kind {
    async fn start(self, bin: &Path, cluster: Option<&ClusterServices>) -> anyhow::Result<Target> {
        match self {
            Kind::Embedded => Target::switchboard(bin).await,
            Kind::Relay => Target::relay().await,
            Kind::Cluster => {
                Target::cluster(bin, cluster.ok_or_else(|| anyhow::anyhow!("no cluster"))?).await
            }
        }
    }

    /// Suffix of a scenario name.
    fn label(self) -> &'static str {
        match self {
            Kind::Cluster => ", cluster (2 gateways, cross-gateway)",
            _ => "",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Kind::Embedded => "switchboard",
            Kind::Cluster => "cluster",
            Kind::Relay => "relay",
        }
    }
}

/// Loads the cluster, unrecorded, before anything on it is measured.
/// On a Cassandra JVM just started the cluster's 1:1 peak measured ~4.2k
/// msg/s, and ~8.5k after a minute of load (2026-12-08; most likely the JIT
/// compiling the hot paths).
async fn warm_up_cluster(
    bin: &Path,
    cluster: &ClusterServices,
    sizes: &Sizes,
) -> anyhow::Result<()> {
    if sizes.cluster_warm_up.is_zero() {
        return Ok(());
    }
    let target = Kind::Cluster.start(bin, Some(cluster)).await?;
    let warm_up = Sizes {
        duration: sizes.cluster_warm_up,
        ..sizes.clone()
    };
    let rate = closed_loop(pairs(&target, sizes.pairs).await?, &warm_up).await?;
    eprintln!(
        "{}: warmed up for {:?} at {rate:.0} msg/s (not recorded)",
        target.name, sizes.cluster_warm_up
    );
    Ok(())
}

/// What `one_to_one_loads` offers after measuring the peak.
pub enum Offered {
    /// Fractions of the measured peak.
    FractionsOfPeak(Vec<f64>),
    /// Absolute rates, msg/s.
    Rates(Vec<f64>),
}

/// Scenario 1 alone: the closed-loop peak, then open-loop latency at each
/// offered load.
pub async fn one_to_one_loads(
    bin: &Path,
    sizes: &Sizes,
    offered: &Offered,
    relay: bool,
    cluster: Option<&ClusterServices>,
) -> anyhow::Result<()> {
    let kind = match (relay, cluster) {
        (true, _) => Kind::Relay,
        (false, Some(_)) => Kind::Cluster,
        (false, None) => Kind::Embedded,
    };
    if let (Kind::Cluster, Some(cluster)) = (kind, cluster) {
        warm_up_cluster(bin, cluster, sizes).await?;
    }
    let target = kind.start(bin, cluster).await?;
    let peak = closed_loop(pairs(&target, sizes.pairs).await?, sizes).await?;
    println!(
        "{}: peak {peak:.0} msg/s ({} pairs, window {})",
        target.name, sizes.pairs, sizes.window
    );
    println!(
        "| load | offered msg/s | delivered | p50 ms | p90 ms | p99 ms | max ms | server cores | bench cores | msgs per send call | send call us | append us | fanout call us | p99 ms: lane wait / append / send call / fanout wait |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let rates: Vec<f64> = match offered {
        Offered::FractionsOfPeak(loads) => loads.iter().map(|load| peak * load).collect(),
        Offered::Rates(rates) => rates.clone(),
    };
    for rate in rates {
        let load = rate / peak;
        let before = ServerMetrics::scrape(&target).await;
        let sockets = pairs(&target, sizes.pairs).await?;
        let cpu_before = CpuTimes::read(&target);
        let lat = open_loop(sockets, rate, sizes.duration).await?;
        let cores = cpu_before.cores_since(&target, sizes.duration);
        let during = ServerMetrics::scrape(&target).await.since(&before);
        let invocations = "switchboard_component_invocation_seconds";
        let appends = "switchboard_store_append_seconds";
        let (send, fanout) = (r#"component="send""#, r#"component="fanout""#);
        let sends = during.count(invocations, send);
        let stages = [
            ("switchboard_dispatch_wait_seconds", r#"lane="send""#),
            (appends, ""),
            (invocations, send),
            ("switchboard_fanout_wait_seconds", ""),
        ]
        .map(|(name, labels)| match during.quantile(name, labels, 0.99) {
            Some(secs) => format!("{:.1}", secs * 1e3),
            None => "-".to_owned(),
        })
        .join(" / ");
        println!(
            "| {load:.2} | {rate:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {stages} |",
            lat.len(),
            ms(&lat, 0.5),
            ms(&lat, 0.9),
            ms(&lat, 0.99),
            lat.max() as f64 / 1000.0,
            cores.server,
            cores.bench,
            if sends > 0.0 {
                lat.len() as f64 / sends
            } else {
                0.0
            },
            during.mean(invocations, send) * 1e6,
            during.mean(appends, "") * 1e6,
            during.mean(invocations, fanout) * 1e6,
        );
    }
    Ok(())
}

/// CPU time used so far by the server processes and by this process.
struct CpuTimes {
    server: Option<Duration>,
    bench: Option<Duration>,
}

/// CPU cores in use over a phase, as printed ("-" where unreadable).
struct Cores {
    server: String,
    bench: String,
}

impl CpuTimes {
    fn read(target: &Target) -> Self {
        Self {
            server: target.cpu_time(),
            bench: cpu_time_of("self"),
        }
    }

    /// Cores used since this reading, spread over `sending`: the time
    /// messages were offered (the receivers' wait for stragglers after it
    /// adds little CPU).
    fn cores_since(&self, target: &Target, sending: Duration) -> Cores {
        let now = Self::read(target);
        let wall = sending.as_secs_f64();
        let cores = |earlier: Option<Duration>, later: Option<Duration>| match (earlier, later) {
            (Some(e), Some(l)) if wall > 0.0 => {
                format!("{:.2}", l.saturating_sub(e).as_secs_f64() / wall)
            }
            _ => "-".to_owned(),
        };
        Cores {
            server: cores(self.server, now.server),
            bench: cores(self.bench, now.bench),
        }
    }
}

/// Scenario 3 alone, on the embedded backend or (with `cluster`) two
/// gateways over Redis + Cassandra.
pub async fn history_only(
    bin: &Path,
    sizes: &Sizes,
    cluster: Option<&ClusterServices>,
) -> anyhow::Result<()> {
    let kind = match cluster {
        Some(_) => Kind::Cluster,
        None => Kind::Embedded,
    };
    if let Some(cluster) = cluster {
        warm_up_cluster(bin, cluster, sizes).await?;
    }
    let target = kind.start(bin, cluster).await?;
    let (rate, lat) = history(&target, sizes).await?;
    println!(
        "{}: history, page of 50 of {}, {} clients: {rate:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
        target.name,
        sizes.history_messages,
        sizes.history_clients,
        ms(&lat, 0.5),
        ms(&lat, 0.99),
    );
    Ok(())
}

/// The server's `/metrics` as series -> value (empty for the relay, which
/// has none), or the difference of two scrapes.
#[derive(Debug, Default)]
struct ServerMetrics(std::collections::HashMap<String, f64>);

impl ServerMetrics {
    async fn scrape(target: &Target) -> Self {
        let Ok(response) = target
            .http()
            .get(format!("{}/metrics", target.base))
            .send()
            .await
        else {
            return Self::default();
        };
        let text = response.text().await.unwrap_or_default();
        Self(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| {
                    let (series, value) = line.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - earlier.0.get(k).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// Observations of the histogram `name` with `labels` (as written
    /// between its braces, without `le`; empty for none).
    fn count(&self, name: &str, labels: &str) -> f64 {
        self.buckets(name, labels).last().map_or(0.0, |&(_, n)| n)
    }

    fn mean(&self, name: &str, labels: &str) -> f64 {
        let sum = if labels.is_empty() {
            format!("{name}_sum")
        } else {
            format!("{name}_sum{{{labels}}}")
        };
        let count = self.count(name, labels);
        match self.0.get(&sum) {
            Some(sum) if count > 0.0 => sum / count,
            _ => 0.0,
        }
    }

    /// (upper bound in seconds, cumulative count) in increasing order.
    fn buckets(&self, name: &str, labels: &str) -> Vec<(f64, f64)> {
        let prefix = if labels.is_empty() {
            format!("{name}_bucket{{le=\"")
        } else {
            format!("{name}_bucket{{{labels},le=\"")
        };
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter_map(|(series, &n)| {
                let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, n))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }

    /// The `q` quantile, interpolated within its bucket as Prometheus's
    /// `histogram_quantile` does; `None` without observations.
    fn quantile(&self, name: &str, labels: &str, q: f64) -> Option<f64> {
        let buckets = self.buckets(name, labels);
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (bound, cumulative) in buckets {
            if cumulative >= rank {
                if bound.is_infinite() {
                    return Some(lower);
                }
                let within = cumulative - below;
                return Some(lower + (bound - lower) * (rank - below) / within.max(1.0));
            }
            (lower, below) = (bound, cumulative);
        }
        None
    }
}

/// Runs every scenario and prints the table. With `cluster`, scenarios 1-4
/// also run on two gateways over Redis + Cassandra.
pub async fn run_all(
    bin: &Path,
    sizes: &Sizes,
    samples: Option<&Path>,
    cluster: Option<&ClusterServices>,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    eprintln!("sizes: {sizes:?}");
    let mut switchboards = vec![Kind::Embedded];
    if cluster.is_some() {
        switchboards.push(Kind::Cluster);
    }

    // 1. 1:1 messaging: peak, then latency at half of peak. The relay is
    // measured first; each Switchboard row is compared with it.
    let mut kinds = vec![Kind::Relay];
    kinds.extend(&switchboards);
    let mut peaks = Vec::new();
    let mut latencies = Vec::new();
    for &kind in &kinds {
        // Right before the cluster's first phase, so that the other targets
        // do not share the machine with what the warm-up leaves Cassandra
        // to flush and compact.
        if let (Kind::Cluster, Some(cluster)) = (kind, cluster) {
            warm_up_cluster(bin, cluster, sizes).await?;
        }
        let target = kind.start(bin, cluster).await?;
        let sockets = pairs(&target, sizes.pairs).await?;
        let peak = closed_loop(sockets, sizes).await?;
        let sockets = pairs(&target, sizes.pairs).await?;
        let lat = open_loop(sockets, peak / 2.0, sizes.duration).await?;
        eprintln!(
            "{}: peak {peak:.0} msg/s; at half: p50 {:.2} ms p99 {:.2} ms",
            target.name,
            ms(&lat, 0.5),
            ms(&lat, 0.99)
        );
        if let Some(dir) = samples {
            write_cdf(&dir.join(format!("one_to_one_{}.csv", kind.file())), &lat)?;
        }
        peaks.push(peak);
        latencies.push(lat);
    }
    for (i, kind) in kinds.iter().enumerate().skip(1) {
        let one = format!("1:1, {} pairs{}", sizes.pairs, kind.label());
        rows.push(Row {
            scenario: one.clone(),
            metric: "peak delivered msg/s",
            switchboard: peaks[i],
            baseline: Some(peaks[0]),
        });
        for (q, metric) in [
            (0.5, "p50 ms at 50% of peak"),
            (0.9, "p90 ms"),
            (0.99, "p99 ms"),
            (0.999, "p99.9 ms"),
        ] {
            rows.push(Row {
                scenario: one.clone(),
                metric,
                switchboard: ms(&latencies[i], q),
                baseline: Some(ms(&latencies[0], q)),
            });
        }
        rows.push(Row {
            scenario: one.clone(),
            metric: "max ms",
            switchboard: latencies[i].max() as f64 / 1000.0,
            baseline: Some(latencies[0].max() as f64 / 1000.0),
        });
    }

    // 2. A group: send to the last member's receive.
    let mut group = Vec::new();
    for &kind in &kinds {
        let target = kind.start(bin, cluster).await?;
        group.push(group_fanout(&target, sizes).await?);
    }
    for (i, kind) in kinds.iter().enumerate().skip(1) {
        let scenario = format!("group of {}, last member{}", sizes.group_size, kind.label());
        for (q, metric) in [(0.5, "p50 ms"), (0.99, "p99 ms")] {
            rows.push(Row {
                scenario: scenario.clone(),
                metric,
                switchboard: ms(&group[i], q),
                baseline: Some(ms(&group[0], q)),
            });
        }
    }

    // 3. History paging (Switchboard only: the relay stores nothing).
    for &kind in &switchboards {
        let target = kind.start(bin, cluster).await?;
        let (rate, lat) = history(&target, sizes).await?;
        let scenario = format!(
            "history, page of 50 of {}{}",
            sizes.history_messages,
            kind.label()
        );
        rows.push(Row {
            scenario: scenario.clone(),
            metric: "requests/s",
            switchboard: rate,
            baseline: None,
        });
        rows.push(Row {
            scenario: scenario.clone(),
            metric: "p50 ms",
            switchboard: ms(&lat, 0.5),
            baseline: None,
        });
        rows.push(Row {
            scenario,
            metric: "p99 ms",
            switchboard: ms(&lat, 0.99),
            baseline: None,
        });
    }

    // 4. Presence: heartbeats/s sustained over many connections.
    for &kind in &switchboards {
        let target = kind.start(bin, cluster).await?;
        let rate = presence(&target, sizes).await?;
        rows.push(Row {
            scenario: format!(
                "presence, {} connections{}",
                sizes.presence_connections,
                kind.label()
            ),
            metric: "heartbeats/s sustained",
            switchboard: rate,
            baseline: None,
        });
    }

    // 5. Idle connections: memory per connection, at the configured count
    // and at this machine's ceiling (open-file limit of one process, which
    // both the server and this client must stay under).
    let ceiling = open_file_limit().saturating_sub(1_000);
    let mut counts = vec![sizes.idle_connections.min(ceiling)];
    if sizes.idle_ceiling && ceiling > counts[0] {
        counts.push(ceiling.min(50_000));
    }
    for n in counts {
        let mut per_conn = Vec::new();
        for kind in [Kind::Embedded, Kind::Relay] {
            let target = kind.start(bin, cluster).await?;
            per_conn.push(idle(&target, n).await?);
        }
        rows.push(Row {
            scenario: format!("{n} idle connections"),
            metric: "RSS KiB per connection",
            switchboard: per_conn[0],
            baseline: Some(per_conn[1]),
        });
    }

    // Throughput against the number of connections (for the plot).
    if let Some(dir) = samples {
        let mut csv = String::from("pairs,switchboard,relay\n");
        for &n in &sizes.sweep_pairs {
            let mut peak = Vec::new();
            for kind in [Kind::Embedded, Kind::Relay] {
                let target = kind.start(bin, cluster).await?;
                let sockets = pairs(&target, n).await?;
                let mut sweep = sizes.clone();
                sweep.duration = sizes.sweep_duration;
                peak.push(closed_loop(sockets, &sweep).await?);
            }
            eprintln!(
                "sweep: {n} pairs: {:.0} vs relay {:.0} msg/s",
                peak[0], peak[1]
            );
            csv.push_str(&format!("{n},{:.0},{:.0}\n", peak[0], peak[1]));
        }
        std::fs::write(dir.join("throughput.csv"), csv)?;
    }

    // 6. Wasm invocation cost, in process (baseline: the same backend call without Wasm).
    let cost = crate::wasm_cost::measure(sizes.wasm_events, 128).await?;
    eprintln!("wasm: {cost:?}");
    let scenario = "presence heartbeat, in process".to_string();
    rows.push(Row {
        scenario: scenario.clone(),
        metric: "µs/event, fresh instance each, p50",
        switchboard: cost.single_p50_us,
        baseline: Some(cost.direct_us),
    });
    rows.push(Row {
        scenario: scenario.clone(),
        metric: "µs/event, fresh instance each, p99",
        switchboard: cost.single_p99_us,
        baseline: Some(cost.direct_us),
    });
    rows.push(Row {
        scenario,
        metric: "µs/event, batches of 128",
        switchboard: cost.batched_us,
        baseline: Some(cost.direct_us),
    });

    println!("| scenario | metric | switchboard | baseline | switchboard / baseline |");
    println!("|---|---|---:|---:|---:|");
    for row in rows {
        let (baseline, ratio) = match row.baseline {
            Some(b) if b > 0.0 => (format!("{b:.2}"), format!("{:.2}", row.switchboard / b)),
            Some(b) => (format!("{b:.2}"), "-".into()),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {:.2} | {baseline} | {ratio} |",
            row.scenario, row.metric, row.switchboard
        );
    }
    Ok(())
}

fn write_cdf(path: &Path, h: &Histogram<u64>) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::from("latency_ms,quantile\n");
    for v in h.iter_quantiles(4) {
        let _ = writeln!(
            out,
            "{},{}",
            v.value_iterated_to() as f64 / 1000.0,
            v.quantile_iterated_to()
        );
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// `n` (sender, receiver, chat) triples, connected.
async fn pairs(target: &Target, n: usize) -> anyhow::Result<Vec<(Socket, Socket, String)>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        let chat = target
            .create_chat(&a, std::slice::from_ref(&b), None)
            .await?
            .unwrap_or(format!("dm:{a}:{b}"));
        let sender = target.connect(&a, 1 + (i % 50) as u8).await?;
        let receiver = target.connect(&b, 1 + (i % 50) as u8).await?;
        out.push((sender, receiver, chat));
    }
    Ok(out)
}

static CLIENT_IDS: AtomicU64 = AtomicU64::new(1);

/// A receiver whose socket closed, or sent a message it could not read,
/// stops counting: said on stderr, so a phase that delivers less than
/// offered (or nothing) is not taken for a slow server.
fn receiver_stopped() {
    eprintln!(
        "warning: a receiver's socket closed or sent an unreadable message; its pair stops counting"
    );
}

/// Each sender keeps `window` messages in flight (sent, not yet received);
/// returns delivered messages per second.
async fn closed_loop(sockets: Vec<(Socket, Socket, String)>, sizes: &Sizes) -> anyhow::Result<f64> {
    let delivered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + sizes.duration;
    let mut tasks = Vec::new();
    for (sender, mut receiver, chat) in sockets {
        let window = Arc::new(Semaphore::new(sizes.window));
        let (mut sink_ws, drain) = split_and_drain(sender);
        let w = window.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let Ok(Ok(permit)) =
                    tokio::time::timeout(Duration::from_millis(200), w.acquire()).await
                else {
                    continue;
                };
                permit.forget();
                if send_stamped(
                    &mut sink_ws,
                    &chat,
                    CLIENT_IDS.fetch_add(1, Ordering::Relaxed),
                )
                .await
                .is_err()
                {
                    break;
                }
            }
            drain.abort();
        }));
        let delivered = delivered.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(200), recv_latency(&mut receiver))
                    .await
                {
                    Ok(Some(_)) => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        window.add_permits(1);
                    }
                    Ok(None) => {
                        receiver_stopped();
                        break;
                    }
                    Err(_) => {}
                }
            }
        }));
    }
    join_all(tasks).await;
    Ok(delivered.load(Ordering::Relaxed) as f64 / sizes.duration.as_secs_f64())
}

/// A sender's read side must be drained (its acks), or the server closes it as too slow.
fn split_and_drain(ws: Socket) -> (Sender, tokio::task::JoinHandle<()>) {
    let (sink, mut stream) = ws.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    (sink, drain)
}

/// Each sender sends at `rate / pairs` per second for `duration`; returns receive latencies (µs).
///
/// The senders' ticks are spread evenly over one interval, so the offered
/// load arrives at a steady rate: started together, every sender would fire
/// in the same instant and each tick would be a burst of `pairs` messages,
/// whatever the rate.
async fn open_loop(
    sockets: Vec<(Socket, Socket, String)>,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let senders = sockets.len();
    let per_sender = (rate / senders as f64).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / per_sender);
    let start = tokio::time::Instant::now();
    let deadline = Instant::now() + duration;
    let mut receivers = Vec::new();
    for (n, (sender, mut receiver, chat)) in sockets.into_iter().enumerate() {
        let (mut ws, drain) = split_and_drain(sender);
        let phase = interval.mul_f64(n as f64 / senders as f64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start + phase, interval);
            while Instant::now() < deadline {
                tick.tick().await;
                if send_stamped(&mut ws, &chat, CLIENT_IDS.fetch_add(1, Ordering::Relaxed))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            drain.abort();
        });
        receivers.push(tokio::spawn(async move {
            let mut h = histogram();
            let until = deadline + Duration::from_secs(2);
            while Instant::now() < until {
                match tokio::time::timeout(Duration::from_millis(200), recv_latency(&mut receiver))
                    .await
                {
                    Ok(Some(latency)) => {
                        let _ = h.record(latency.max(1));
                    }
                    Ok(None) => {
                        receiver_stopped();
                        break;
                    }
                    Err(_) => {}
                }
            }
            h
        }));
    }
    let mut all = histogram();
    for h in join_all(receivers).await.into_iter().flatten() {
        let _ = all.add(h);
    }
    Ok(all)
}

async fn group_fanout(target: &Target, sizes: &Sizes) -> anyhow::Result<Histogram<u64>> {
    let members: Vec<String> = (1..sizes.group_size).map(|i| format!("g{i}")).collect();
    let chat = target
        .create_chat("g0", &members, Some("bench"))
        .await?
        .unwrap_or_else(|| "g:bench".into());
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let mut tasks = Vec::new();
    for (i, member) in members.iter().enumerate() {
        let mut ws = target.connect(member, 1 + (i % 50) as u8).await?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(latency) = recv_latency(&mut ws).await {
                if tx.send(latency).is_err() {
                    break;
                }
            }
        }));
    }
    let (mut sender, drain) = split_and_drain(target.connect("g0", 1).await?);
    let mut h = histogram();
    for n in 0..sizes.group_messages {
        send_stamped(&mut sender, &chat, 1_000_000 + n as u64).await?;
        let mut last = 0;
        for _ in 0..members.len() {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(latency)) => last = last.max(latency),
                _ => anyhow::bail!(
                    "{}: a group member did not receive a message within 10 s",
                    target.name
                ),
            }
        }
        let _ = h.record(last.max(1));
    }
    drain.abort();
    for t in tasks {
        t.abort();
    }
    eprintln!(
        "{}: group last-member p50 {:.2} ms p99 {:.2} ms",
        target.name,
        ms(&h, 0.5),
        ms(&h, 0.99)
    );
    Ok(h)
}

async fn history(target: &Target, sizes: &Sizes) -> anyhow::Result<(f64, Histogram<u64>)> {
    let chat = target
        .create_chat("h1", &["h2".to_string()], None)
        .await?
        .unwrap_or_default();
    let ws = target.connect("h1", 1).await?;
    // Seed through the protocol, keeping a window of unacked sends.
    let (mut sink, mut stream) = ws.split();
    let total = sizes.history_messages;
    let window = Arc::new(Semaphore::new(256));
    let w = window.clone();
    let chat2 = chat.clone();
    let seeding = tokio::spawn(async move {
        use futures_util::SinkExt;
        for i in 0..total {
            let Ok(permit) = w.acquire().await else { break };
            permit.forget();
            let frame = serde_json::json!({"type":"sendMessage","chatId":chat2,"content":format!("history message {i}"),"timestamp":i,"clientMsgId":format!("h{i}")});
            if sink
                .send(tokio_tungstenite::tungstenite::Message::Text(
                    frame.to_string().into(),
                ))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut ids = Vec::with_capacity(total);
    let started = Instant::now();
    while ids.len() < total && started.elapsed() < Duration::from_secs(600) {
        let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await
        else {
            anyhow::bail!("seeding history stalled at {} messages", ids.len());
        };
        let frame: serde_json::Value = serde_json::from_str(&text)?;
        if frame["type"] == "ack" {
            ids.push(frame["messageId"].as_str().unwrap_or("0").to_owned());
            window.add_permits(1);
        }
    }
    seeding.await?;
    eprintln!(
        "seeded {} messages in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    let ids = Arc::new(ids);
    let deadline = Instant::now() + sizes.duration;
    let done = Arc::new(AtomicU64::new(0));
    let clients = (0..sizes.history_clients).map(|c| {
        let (ids, done, http) = (ids.clone(), done.clone(), target.http().clone());
        let url = format!("{}/api/v1/chats/{chat}/messages", target.base);
        let token = Target::token("h2");
        async move {
            let mut h = histogram();
            let mut i = c * 7919;
            while Instant::now() < deadline {
                i = (i + 104_729) % ids.len().max(1);
                let started = Instant::now();
                let resp = http
                    .get(&url)
                    .query(&[("cursor", ids[i].as_str()), ("limit", "50")])
                    .bearer_auth(&token)
                    .send()
                    .await;
                // A page counts once its body is read: that is when a
                // client has it, and only then is the connection reused.
                let page = match resp {
                    Ok(r) if r.status().is_success() => r.bytes().await.ok(),
                    _ => None,
                };
                if page.is_some() {
                    let _ = h.record(started.elapsed().as_micros().max(1) as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            h
        }
    });
    let mut all = histogram();
    for h in join_all(clients).await {
        let _ = all.add(h);
    }
    Ok((
        done.load(Ordering::Relaxed) as f64 / sizes.duration.as_secs_f64(),
        all,
    ))
}

/// Every connection sends heartbeats in rounds of 10, each round closed by
/// a `subscribePresence` for its chat partner: the `presence` answer comes
/// after the round's heartbeats were handled (one connection's presence
/// frames are handled in order). Returns heartbeats handled per second.
async fn presence(target: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    const ROUND: u64 = 10;
    let n = sizes.presence_connections.max(2) / 2 * 2;
    let mut sockets = Vec::with_capacity(n);
    for i in (0..n).step_by(2) {
        let (a, b) = (format!("pa{i}"), format!("pb{i}"));
        target
            .create_chat(&a, std::slice::from_ref(&b), None)
            .await?;
        sockets.push((target.connect(&a, 1 + (i % 50) as u8).await?, b.clone()));
        sockets.push((target.connect(&b, 1 + (i % 50) as u8).await?, a));
    }
    let handled = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + sizes.duration;
    let tasks = sockets.into_iter().map(|(mut ws, partner)| {
        let handled = handled.clone();
        async move {
            let heartbeat = Message::Text(r#"{"type":"heartbeat"}"#.into());
            let subscribe = Message::Text(
                serde_json::json!({"type": "subscribePresence", "userIds": [partner]})
                    .to_string()
                    .into(),
            );
            while Instant::now() < deadline {
                for _ in 0..ROUND {
                    if ws.feed(heartbeat.clone()).await.is_err() {
                        return;
                    }
                }
                if ws.send(subscribe.clone()).await.is_err() {
                    return;
                }
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                        Ok(Some(Ok(Message::Text(text))))
                            if text.contains(r#""type":"presence""#) =>
                        {
                            break;
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => return,
                    }
                }
                handled.fetch_add(ROUND, Ordering::Relaxed);
            }
        }
    });
    let started = Instant::now();
    join_all(tasks).await;
    let rate = handled.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "{}: presence {rate:.0} heartbeats/s over {n} connections",
        target.name
    );
    Ok(rate)
}

/// The soft open-file limit of this process (`Max open files`), which the
/// server under test inherits.
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// RSS per idle connection of a fresh embedded server holding `n` of them.
pub async fn idle_rss(bin: &Path, n: usize) -> anyhow::Result<f64> {
    let target = Target::switchboard(bin).await?;
    idle(&target, n.min(open_file_limit().saturating_sub(1_000))).await
}

async fn idle(target: &Target, n: usize) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = target.rss_kib().unwrap_or(0);
    let mut sockets = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let opened = join_all(chunk.iter().map(|i| async move {
            let user = format!("idle{i}");
            target.connect(&user, 1 + (i % 200) as u8).await
        }))
        .await;
        for socket in opened {
            sockets.push(socket?);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = target.rss_kib().unwrap_or(0);
    let per = after.saturating_sub(before) as f64 / n as f64;
    eprintln!(
        "{}: {n} idle connections: RSS {before} -> {after} KiB ({per:.1} KiB each)",
        target.name
    );
    drop(sockets);
    Ok(per)
}

#[cfg(test)]
mod tests {
    use super::ServerMetrics;

    fn scraped(lines: &[(&str, f64)]) -> ServerMetrics {
        ServerMetrics(lines.iter().map(|&(s, v)| (s.to_owned(), v)).collect())
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_that_holds_them() {
        let before = scraped(&[
            (r#"t_bucket{lane="send",le="0.001"}"#, 10.0),
            (r#"t_bucket{lane="send",le="0.002"}"#, 10.0),
            (r#"t_bucket{lane="send",le="+Inf"}"#, 10.0),
            (r#"t_sum{lane="send"}"#, 0.005),
        ]);
        // During: 90 observations up to 1 ms, 10 between 1 and 2 ms.
        let after = scraped(&[
            (r#"t_bucket{lane="send",le="0.001"}"#, 100.0),
            (r#"t_bucket{lane="send",le="0.002"}"#, 110.0),
            (r#"t_bucket{lane="send",le="+Inf"}"#, 110.0),
            (r#"t_sum{lane="send"}"#, 0.125),
        ]);
        let during = after.since(&before);
        assert_eq!(during.count("t", r#"lane="send""#), 100.0);
        assert!((during.mean("t", r#"lane="send""#) - 0.0012).abs() < 1e-9);
        // The 50th of 90 in [0, 1 ms], the 5th of 10 in (1, 2 ms].
        let p50 = during.quantile("t", r#"lane="send""#, 0.5).unwrap();
        assert!((p50 - 0.001 * 50.0 / 90.0).abs() < 1e-9, "{p50}");
        let p95 = during.quantile("t", r#"lane="send""#, 0.95).unwrap();
        assert!((p95 - 0.0015).abs() < 1e-9, "{p95}");
        assert_eq!(during.quantile("other", "", 0.5), None);
    }
}
