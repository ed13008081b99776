//! The HTTP and WebSocket front of the gateway.
//!
//! - `envelope`: the little the host reads of a frame (its `type`, for routing).
//! - `ws`: one task per WebSocket connection.
//! - `dispatch`: batching frames into component invocations, in order per chat.
//! - `rest`: HTTP API requests handed to the HTTP components.
//! - `store_api`: the internal store API for components running on Spin (off by default).

mod dispatch;
mod envelope;
mod rest;
mod store_api;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::{any, get};

use crate::auth::{Authenticator, load_or_create_secret};
use crate::backend::cassandra::{self, CassandraConfig, CassandraStore};
use crate::backend::redis::{RedisPresence, RedisRouter};
use crate::backend::{Backends, ConnectionId, embedded};
use crate::config::{BackendKind, Config};
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

/// Opens the configured backends.
async fn open_backends(config: &Config, ids: Arc<Snowflake>) -> anyhow::Result<Backends> {
    match config.backend {
        BackendKind::Embedded => {
            embedded::open(&config.data_dir, ids).context("opening the embedded store")
        }
        BackendKind::Cluster => {
            let store = Arc::new(
                CassandraStore::connect(
                    &CassandraConfig {
                        nodes: config.cassandra_nodes.clone(),
                        keyspace: config.cassandra_keyspace.clone(),
                        replication_factor: config.cassandra_replication_factor,
                        request_timeout: Duration::from_millis(config.cassandra_timeout_ms),
                        bucket_ms: cassandra::DEFAULT_BUCKET_MS,
                    },
                    ids,
                )
                .await?,
            );
            let client = ::redis::Client::open(config.redis_url.as_str())
                .with_context(|| format!("parsing the Redis URL {}", config.redis_url))?;
            let manager = crate::backend::redis::connect(&client)
                .await
                .with_context(|| format!("connecting to Redis at {}", config.redis_url))?;
            let presence = Arc::new(RedisPresence::new(manager, config.redis_prefix.clone()));
            let router = RedisRouter::start(client, config.redis_prefix.clone(), config.node_id)
                .await
                .context("starting the Redis router")?;
            Ok(Backends {
                messages: store.clone(),
                chats: store.clone(),
                presence: presence.clone(),
                router,
                probes: vec![store, presence],
            })
        }
    }
}

/// Builds the app from configuration: backends, components, dispatcher.
pub async fn build(config: &Config) -> anyhow::Result<Arc<App>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    anyhow::ensure!(
        config.backend == BackendKind::Embedded || config.jwt_secret.is_some(),
        "the cluster backend needs SWITCHBOARD_JWT_SECRET: every gateway must accept the same tokens"
    );
    let secret = load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
    let ids = Arc::new(Snowflake::new(config.node_id));
    let backends = open_backends(config, ids.clone()).await?;
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
    let dispatcher = Dispatcher::start(runtime.clone(), backends.router.clone(), config.lanes());
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
        .route("/readyz", get(readiness))
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .route("/chat/connect", get(ws::upgrade))
        .route("/api/v1/{*rest}", any(rest::handle))
        .fallback(|| async {
            rest::error(http::StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(app)
}

/// 200 when every backend server answers within a second, else 503 with
/// what failed: load balancers stop sending clients to a gateway that
/// cannot store their messages.
async fn readiness(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> (http::StatusCode, axum::Json<serde_json::Value>) {
    let checks = app.backends.probes.iter().map(|probe| async move {
        let outcome = tokio::time::timeout(Duration::from_secs(1), probe.ping()).await;
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer within 1 s".to_string()),
        };
        (probe.name(), error)
    });
    let results = futures_util::future::join_all(checks).await;
    let ready = results.iter().all(|(_, error)| error.is_none());
    let backends: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(name, error)| {
            let status = error.map_or_else(|| "ok".into(), serde_json::Value::String);
            (name.to_string(), status)
        })
        .collect();
    let status = if ready {
        http::StatusCode::OK
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "ready": ready, "backends": backends })),
    )
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = build(&config).await?;
    let mut routes = router(app.clone());
    if let Some(token) = config.store_api_token.as_deref() {
        routes = routes.merge(store_api::router(app.clone(), token)?);
        tracing::info!("internal store API enabled under /internal/v1/");
    }
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
    // Frames are small and latency-bound: without TCP_NODELAY, Nagle's
    // algorithm holds a small write back while an earlier one is unacked,
    // and the peer's delayed ack can make that tens of milliseconds.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, routes)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving")
}
