//! Scenario 6: what a component invocation costs, in process: a fresh
//! instance per event, and one instance per batch of events, against calling
//! the same backend directly (no Wasm) in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use host_gateway::backend::embedded;
use host_gateway::ids::Snowflake;
use host_gateway::runtime::bindings::platform::chat::platform::config::Settings;
use host_gateway::runtime::{ComponentSource, InboundFrame, InvocationLimits, Runtime, Shared};

/// Per-event costs in µs.
#[derive(Debug)]
pub struct WasmCost {
    pub single_p50_us: f64,
    pub single_p99_us: f64,
    pub batched_us: f64,
    pub direct_us: f64,
}

fn heartbeat(connection: u64) -> InboundFrame {
    InboundFrame {
        connection,
        user_id: format!("user{}", connection % 1000),
        kind: "heartbeat".into(),
        body: r#"{"type":"heartbeat"}"#.into(),
        received_at: 0,
    }
}

pub async fn measure(events: usize, batch: usize) -> anyhow::Result<WasmCost> {
    let data = tempfile::tempdir()?;
    let ids = Arc::new(Snowflake::new(0));
    let backends = embedded::open(data.path(), ids.clone())?;
    let presence = backends.presence.clone();
    let settings = Settings {
        max_content_bytes: 4096,
        presence_ttl_ms: 60_000,
        max_group_members: 256,
    };
    let shared = Arc::new(Shared {
        backends,
        ids,
        settings,
    });
    let runtime = Runtime::new(
        &ComponentSource::Embedded,
        shared,
        InvocationLimits::default(),
    )?;

    // Warm up: page in the pooled slots and the code.
    for i in 0..1000 {
        runtime.presence_frames(&[heartbeat(i)]).await?;
    }
    let mut single = Histogram::<u64>::new(3)?;
    for i in 0..events as u64 {
        let started = Instant::now();
        runtime.presence_frames(&[heartbeat(i)]).await?;
        single.record(started.elapsed().as_nanos() as u64)?;
    }

    let frames: Vec<InboundFrame> = (0..batch as u64).map(heartbeat).collect();
    let rounds = (events / batch).max(1);
    let started = Instant::now();
    for _ in 0..rounds {
        runtime.presence_frames(&frames).await?;
    }
    let batched = started.elapsed();

    let started = Instant::now();
    for i in 0..events as u64 {
        presence
            .heartbeat(&format!("user{}", i % 1000), i, 60_000)
            .await?;
    }
    let direct = started.elapsed();

    let per = |d: Duration, n: usize| d.as_nanos() as f64 / n as f64 / 1000.0;
    Ok(WasmCost {
        single_p50_us: single.value_at_quantile(0.5) as f64 / 1000.0,
        single_p99_us: single.value_at_quantile(0.99) as f64 / 1000.0,
        batched_us: per(batched, rounds * batch),
        direct_us: per(direct, events),
    })
}
