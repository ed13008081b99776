//! Process-wide counters and latency histograms, rendered in the Prometheus
//! text format at `/metrics`.
//!
//! Plain atomics: each update is one relaxed add on the hot path, and the
//! set of series is small and fixed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::runtime::COMPONENT_NAMES as COMPONENTS;

static CONNECTIONS_OPEN: AtomicI64 = AtomicI64::new(0);
static CONNECTIONS_TOTAL: AtomicU64 = AtomicU64::new(0);
static FRAMES_IN: AtomicU64 = AtomicU64::new(0);
static FRAMES_OUT: AtomicU64 = AtomicU64::new(0);
static BACKEND_ERRORS: AtomicU64 = AtomicU64::new(0);
static COMPONENT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Upper bounds of the latency buckets, in microseconds: 1-2-5 steps from
/// 50 µs to 20 s, fine enough to tell a disk sync from a scheduling stall.
const BOUNDS_US: [u64; 18] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000,
];

/// A latency histogram: a count per bucket (the last one unbounded) and the
/// sum, each one relaxed add per observation.
struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BOUNDS_US.len() + 1],
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Appends the series of one histogram (`labels` inside braces, may be empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        use std::fmt::Write as _;
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = match BOUNDS_US.get(i) {
                Some(&us) => (us as f64 / 1e6).to_string(),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Invocation times per component, in the order of `COMPONENTS` (the order they render).
static INVOCATIONS: [Histogram; COMPONENTS.len()] = [const { Histogram::new() }; COMPONENTS.len()];
/// From a frame's arrival to the start of the invocation that takes it.
static DISPATCH_WAIT: [Histogram; 2] = [const { Histogram::new() }; 2];
/// One append of a batch of messages to the message store, any backend.
static STORE_APPEND: Histogram = Histogram::new();
/// From a batch's commit to the start of the fanout invocation that takes it.
static FANOUT_WAIT: Histogram = Histogram::new();

/// The lanes whose queue wait is measured.
#[derive(Debug, Clone, Copy)]
pub enum Lane {
    Send = 0,
    Presence = 1,
}

pub fn dispatch_waited(lane: Lane, since: Instant) {
    DISPATCH_WAIT[lane as usize].observe(since.elapsed());
}

pub fn store_appended(started: Instant) {
    STORE_APPEND.observe(started.elapsed());
}

pub fn fanout_waited(since: Instant) {
    FANOUT_WAIT.observe(since.elapsed());
}

pub fn connection_opened() {
    CONNECTIONS_OPEN.fetch_add(1, Relaxed);
    CONNECTIONS_TOTAL.fetch_add(1, Relaxed);
}

pub fn connection_closed() {
    CONNECTIONS_OPEN.fetch_sub(1, Relaxed);
}

pub fn frame_in() {
    FRAMES_IN.fetch_add(1, Relaxed);
}

pub fn frames_out(n: u64) {
    FRAMES_OUT.fetch_add(n, Relaxed);
}

pub fn backend_error() {
    BACKEND_ERRORS.fetch_add(1, Relaxed);
}

pub fn component_failure() {
    COMPONENT_FAILURES.fetch_add(1, Relaxed);
}

/// Times one invocation of `component` until dropped.
pub fn invocation(component: &'static str) -> InvocationTimer {
    InvocationTimer {
        component,
        started: Instant::now(),
    }
}

#[derive(Debug)]
pub struct InvocationTimer {
    component: &'static str,
    started: Instant,
}

impl Drop for InvocationTimer {
    fn drop(&mut self) {
        if let Some(i) = COMPONENTS.iter().position(|&c| c == self.component) {
            INVOCATIONS[i].observe(self.started.elapsed());
        }
    }
}

/// The Prometheus exposition text.
pub fn render() -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "switchboard_connections_open",
        "gauge",
        "Open WebSocket connections.",
        CONNECTIONS_OPEN.load(Relaxed).to_string(),
    );
    metric(
        "switchboard_connections_total",
        "counter",
        "WebSocket connections accepted.",
        CONNECTIONS_TOTAL.load(Relaxed).to_string(),
    );
    metric(
        "switchboard_frames_in_total",
        "counter",
        "Client frames received.",
        FRAMES_IN.load(Relaxed).to_string(),
    );
    metric(
        "switchboard_frames_out_total",
        "counter",
        "Frames queued to client connections.",
        FRAMES_OUT.load(Relaxed).to_string(),
    );
    metric(
        "switchboard_backend_errors_total",
        "counter",
        "Backend calls that failed.",
        BACKEND_ERRORS.load(Relaxed).to_string(),
    );
    metric(
        "switchboard_component_failures_total",
        "counter",
        "Component invocations that trapped or timed out.",
        COMPONENT_FAILURES.load(Relaxed).to_string(),
    );
    let mut histogram = |name: &str, help: &str, series: &[(&str, &Histogram)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (labels, h) in series {
            h.render(&mut out, name, labels);
        }
    };
    let components: Vec<_> = COMPONENTS
        .iter()
        .map(|c| format!("component=\"{c}\""))
        .collect();
    let per_component: Vec<_> = components
        .iter()
        .map(String::as_str)
        .zip(&INVOCATIONS)
        .collect();
    histogram(
        "switchboard_component_invocation_seconds",
        "Wall time of component invocations (instantiate, run, and the host calls they wait for).",
        &per_component,
    );
    histogram(
        "switchboard_dispatch_wait_seconds",
        "From a frame's arrival to the start of the invocation that takes it.",
        &[
            ("lane=\"send\"", &DISPATCH_WAIT[Lane::Send as usize]),
            ("lane=\"presence\"", &DISPATCH_WAIT[Lane::Presence as usize]),
        ],
    );
    histogram(
        "switchboard_store_append_seconds",
        "One append of a batch of messages to the message store, until it is durable.",
        &[("", &STORE_APPEND)],
    );
    histogram(
        "switchboard_fanout_wait_seconds",
        "From a batch's commit to the start of the fanout invocation that takes it.",
        &[("", &FANOUT_WAIT)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets_a_scraper_can_read() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "t", "lane=\"send\"");
        let line = |series: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {series} in\n{out}"))
                .to_owned()
        };
        // A bucket counts what is at most its bound, and every smaller one.
        assert_eq!(line("t_bucket{lane=\"send\",le=\"0.00005\"}"), "2");
        assert_eq!(line("t_bucket{lane=\"send\",le=\"0.0005\"}"), "2");
        assert_eq!(line("t_bucket{lane=\"send\",le=\"0.001\"}"), "3");
        assert_eq!(line("t_bucket{lane=\"send\",le=\"20\"}"), "3");
        assert_eq!(line("t_bucket{lane=\"send\",le=\"+Inf\"}"), "4");
        assert_eq!(line("t_count{lane=\"send\"}"), "4");
        assert_eq!(line("t_sum{lane=\"send\"}"), "60.00079");

        let mut unlabelled = String::new();
        h.render(&mut unlabelled, "u", "");
        assert!(
            unlabelled.contains("u_bucket{le=\"+Inf\"} 4\n"),
            "{unlabelled}"
        );
        assert!(unlabelled.contains("u_count 4\n"), "{unlabelled}");
    }
}
