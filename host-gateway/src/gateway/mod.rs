//! The HTTP and WebSocket front of the gateway.
//!
//! - `envelope`: the little the host reads of a frame (its `type`, for routing).
//! - `ws`: one task per WebSocket connection.
//! - `dispatch`: batching frames into component invocations, in order per chat.
//! - `rest`: HTTP API requests handed to the HTTP components.

mod dispatch;
mod envelope;
mod rest;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::{any, get};

use crate::auth::{Authenticator, load_or_create_secret};
use crate::backend::{Backends, ConnectionId, embedded};
use crate::config::Config;
use crate::ids::Snowflake;
use crate::runtime::bindings::platform::chat::platform::config::Settings;
use crate::runtime::{InvocationLimits, Runtime, Shared};

pub use dispatch::Dispatcher;

/// What every request handler shares.
#[derive(Debug)]
pub struct App {
    pub auth: Authenticator,
    pub runtime: Arc<Runtime>,
    pub dispatcher: Dispatcher,
    pub backends: Backends,
    /// Connection ids: the node id in the top bits keeps them unique across gateways.
    next_connection: AtomicU64,
    node_id: u16,
    pub max_frame_bytes: usize,
    pub heartbeat_interval: Duration,
    /// Flips to true when the server shuts down: connections then close
    /// with 1001 so clients reconnect elsewhere.
    pub shutting_down: tokio::sync::watch::Receiver<bool>,
    shutdown_trigger: tokio::sync::watch::Sender<bool>,
}

impl App {
    fn next_connection_id(&self) -> ConnectionId {
        (u64::from(self.node_id) << 48) | self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

/// Builds the app from configuration: backends, components, dispatcher.
pub fn build(config: &Config) -> anyhow::Result<Arc<App>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let secret = load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
    let ids = Arc::new(Snowflake::new(config.node_id));
    let backends =
        embedded::open(&config.data_dir, ids.clone()).context("opening the embedded store")?;
    let settings = Settings {
        max_content_bytes: config.max_content_bytes,
        presence_ttl_ms: config.presence_ttl_secs * 1000,
        max_group_members: 256,
    };
    let shared = Arc::new(Shared {
        backends: backends.clone(),
        ids,
        settings,
    });
    let limits = InvocationLimits {
        memory_bytes: config.component_memory_mib << 20,
        deadline: Duration::from_millis(config.component_timeout_ms),
    };
    let source = Runtime::source(config.components_dir.as_deref());
    let runtime = Arc::new(Runtime::new(&source, shared, limits).context("loading components")?);
    let (shutdown_trigger, shutting_down) = tokio::sync::watch::channel(false);
    let dispatcher = Dispatcher::start(
        runtime.clone(),
        backends.router.clone(),
        config.dispatch_lanes.max(1),
    );
    tokio::spawn(sweep_expired_presence(
        runtime.clone(),
        backends.clone(),
        Duration::from_millis((config.presence_ttl_secs * 1000 / 4).clamp(50, 1000)),
    ));
    Ok(Arc::new(App {
        auth: Authenticator::new(&secret),
        runtime,
        dispatcher,
        backends,
        next_connection: AtomicU64::new(1),
        node_id: config.node_id,
        max_frame_bytes: config.max_frame_bytes,
        heartbeat_interval: Duration::from_secs(config.heartbeat_interval_secs.max(1)),
        shutting_down,
        shutdown_trigger,
    }))
}

/// Finds users whose heartbeats stopped and hands them to the presence
/// component, which tells their watchers. The store keeps the TTLs; this
/// only asks it, `period` apart.
async fn sweep_expired_presence(runtime: Arc<Runtime>, backends: Backends, period: Duration) {
    use crate::runtime::bindings::platform::chat::platform::presence_store::Presence;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let expired = match backends.presence.take_expired().await {
            Ok(expired) if !expired.is_empty() => expired,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "presence expiry sweep failed");
                continue;
            }
        };
        let users: Vec<Presence> = expired
            .into_iter()
            .map(|p| Presence {
                user_id: p.user_id,
                online: p.online,
                last_seen: p.last_seen,
            })
            .collect();
        if let Err(e) = runtime.presence_expired(&users).await {
            tracing::error!(error = %e, users = users.len(), "presence expiry handling failed");
        }
    }
}

/// The HTTP routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .route("/chat/connect", get(ws::upgrade))
        .route("/api/v1/{*rest}", any(rest::handle))
        .fallback(|| async {
            rest::error(http::StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(app)
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = build(&config)?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "switchboard ready");
    // The one line on stdout: scripts and tests read the bound port from it.
    println!("switchboard listening on http://{addr}");
    let closer = app.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: closing connections");
        let _ = closer.shutdown_trigger.send(true);
    };
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving")
}
