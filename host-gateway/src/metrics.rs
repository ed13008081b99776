//! Process-wide counters, rendered in the Prometheus text format at `/metrics`.
//!
//! Plain atomics: each update is one relaxed add on the hot path, and the
//! set of series is small and fixed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

static CONNECTIONS_OPEN: AtomicI64 = AtomicI64::new(0);
static CONNECTIONS_TOTAL: AtomicU64 = AtomicU64::new(0);
static FRAMES_IN: AtomicU64 = AtomicU64::new(0);
static FRAMES_OUT: AtomicU64 = AtomicU64::new(0);
static BACKEND_ERRORS: AtomicU64 = AtomicU64::new(0);
static COMPONENT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Per component: invocations and their total wall time in microseconds.
struct Invocations {
    name: &'static str,
    count: AtomicU64,
    micros: AtomicU64,
}

static INVOCATIONS: [Invocations; 5] = {
    const fn c(name: &'static str) -> Invocations {
        Invocations {
            name,
            count: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        }
    }
    [
        c("send"),
        c("fanout"),
        c("presence"),
        c("history"),
        c("chats"),
    ]
};

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
        if let Some(slot) = INVOCATIONS.iter().find(|i| i.name == self.component) {
            slot.count.fetch_add(1, Relaxed);
            slot.micros
                .fetch_add(self.started.elapsed().as_micros() as u64, Relaxed);
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
    let _ = writeln!(
        out,
        "# HELP switchboard_component_invocations_total Component invocations.\n# TYPE switchboard_component_invocations_total counter"
    );
    for i in &INVOCATIONS {
        let _ = writeln!(
            out,
            "switchboard_component_invocations_total{{component=\"{}\"}} {}",
            i.name,
            i.count.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP switchboard_component_invocation_seconds_total Wall time spent in component invocations.\n# TYPE switchboard_component_invocation_seconds_total counter"
    );
    for i in &INVOCATIONS {
        let secs = i.micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "switchboard_component_invocation_seconds_total{{component=\"{}\"}} {secs}",
            i.name
        );
    }
    out
}
