//! The Wasm side of the host: one `Engine`, each component compiled once and
//! pre-instantiated, a fresh `Store` per invocation.
//!
//! Containment: every invocation runs in its own `Store` with a memory cap
//! and an epoch deadline. A component that traps, loops or hogs memory fails
//! that invocation only; the `Store` is dropped with it (a trapped instance
//! is poisoned anyway) and the next call gets a clean one.
//!
//! Cost: instantiation dominates (~20 us against ~2 us for a call), so
//! callers hand a batch of events to one invocation (see `gateway::dispatch`).

pub mod bindings;
mod host_impl;
mod state;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
    Trap,
};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

pub use bindings::fanout::exports::chat::platform::fanout_handler::Stored;
pub use bindings::platform::chat::platform::frames::InboundFrame;
pub use bindings::presence::exports::chat::platform::presence_handler::{
    ConnectionEvent, Lifecycle,
};
pub use state::{HostState, Shared};

use bindings::fanout::FanoutComponentPre as FanoutPre;
use bindings::presence::PresenceComponentPre as PresencePre;
use bindings::send::SendComponentPre as SendPre;

/// Epoch tick: the granularity of invocation deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Per-invocation limits.
#[derive(Debug, Clone, Copy)]
pub struct InvocationLimits {
    /// Linear memory a component instance may grow to.
    pub memory_bytes: usize,
    /// Wall time an invocation may take, host calls included.
    pub deadline: Duration,
}

impl Default for InvocationLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 32 << 20,
            deadline: Duration::from_secs(5),
        }
    }
}

/// Why an invocation failed. Each is contained to the invocation.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("component {component} ran past its {deadline:?} deadline")]
    Timeout {
        component: &'static str,
        deadline: Duration,
    },
    #[error("component {component} trapped: {source:#}")]
    Trap {
        component: &'static str,
        source: wasmtime::Error,
    },
    #[error("component {component} sent no HTTP response")]
    NoResponse { component: &'static str },
}

/// Where the component binaries come from.
#[derive(Debug, Clone)]
pub enum ComponentSource {
    /// The components built with this binary (see `build.rs`).
    Embedded,
    /// `<dir>/<name>.wasm` (`-` in a name as `_`, as cargo writes it) where
    /// present, the embedded component otherwise:
    /// for deploying rebuilt components without rebuilding the host.
    Directory(std::path::PathBuf),
}

mod embedded_components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

/// Every component's name (`send`, `presence-query`, ...), as the build embeds them.
pub use embedded_components::NAMES as COMPONENT_NAMES;

impl ComponentSource {
    /// The bytes of component `name` (`send`, `history`, ...).
    pub fn load(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        if let Self::Directory(dir) = self {
            let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
            if path.exists() {
                return std::fs::read(&path)
                    .with_context(|| format!("reading component {}", path.display()));
            }
        }
        embedded_components::get(name)
            .map(<[u8]>::to_vec)
            .with_context(|| format!("no embedded component {name}"))
    }
}

/// The HTTP components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpComponent {
    History,
    Chats,
    /// Presence queries.
    PresenceQuery,
}

impl HttpComponent {
    fn name(self) -> &'static str {
        match self {
            Self::History => "history",
            Self::Chats => "chats",
            Self::PresenceQuery => "presence-query",
        }
    }
}

/// The compiled, pre-instantiated components and what they run against.
pub struct Runtime {
    shared: Arc<Shared>,
    limits: InvocationLimits,
    send: SendPre<HostState>,
    fanout: FanoutPre<HostState>,
    presence: PresencePre<HostState>,
    history: ProxyPre<HostState>,
    chats: ProxyPre<HostState>,
    presence_query: ProxyPre<HostState>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn engine() -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(1000)
        .total_core_instances(4000)
        .total_memories(2000)
        .total_tables(4000)
        .total_stacks(1000)
        // A fresh instance per invocation dirties a few pages of its slot.
        // Resetting them with madvise cost a TLB shootdown on every release
        // and a page fault per page on the next use (a quarter of a fresh
        // invocation's time under perf). Where the kernel has PAGEMAP_SCAN
        // (Linux 6.7+), find the dirty pages and zero just those, keeping
        // them resident, up to these budgets per slot. Without the ioctl a
        // budget would memset the lowest bytes on every release (untouched
        // stack, with Rust's stack-first layout): a loss, so it stays off.
        .pagemap_scan(wasmtime::Enabled::Auto);
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.linear_memory_keep_resident(256 << 10)
            .table_keep_resident(64 << 10);
    }
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // For `perf`: names the compiled components' functions in
    // /tmp/perf-<pid>.map, which otherwise show up as anonymous JIT code.
    if std::env::var_os("SWITCHBOARD_PERF_MAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config)?;
    // The ticker holds only a weak handle so it ends with the engine.
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(engine)
}

/// One invocation: a fresh store, instantiate, call `$call(instance, &mut store)`,
/// time it, and turn a trap into an `InvokeError`.
macro_rules! invoke {
    ($self:ident, $name:literal, $pre:expr, |$instance:ident, $store:ident| $call:expr) => {{
        let _timer = crate::metrics::invocation($name);
        let mut store = $self.store($pre.engine());
        let run = async {
            let $instance = $pre.instantiate_async(&mut store).await?;
            let $store = &mut store;
            $call.await
        };
        run.await.map_err(|e| $self.failed($name, e))
    }};
}

impl Runtime {
    /// Compiles the components and links them against the platform.
    pub fn new(
        source: &ComponentSource,
        shared: Arc<Shared>,
        limits: InvocationLimits,
    ) -> anyhow::Result<Self> {
        let engine = engine()?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        bindings::platform::Platform::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )?;

        // Compiled once, linked, and checked against the world it must export.
        let pre = |name: &str| -> anyhow::Result<_> {
            let bytes = source.load(name)?;
            let component = Component::new(&engine, &bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("compiling component {name}"))?;
            linker
                .instantiate_pre(&component)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("linking component {name}"))
        };
        let exports = |name: &'static str| {
            move |e: wasmtime::Error| {
                anyhow::Error::from(e).context(format!("component {name} lacks its export"))
            }
        };
        Ok(Self {
            shared,
            limits,
            send: SendPre::new(pre("send")?).map_err(exports("send"))?,
            fanout: FanoutPre::new(pre("fanout")?).map_err(exports("fanout"))?,
            presence: PresencePre::new(pre("presence")?).map_err(exports("presence"))?,
            presence_query: ProxyPre::new(pre("presence-query")?)
                .map_err(exports("presence-query"))?,
            history: ProxyPre::new(pre("history")?).map_err(exports("history"))?,
            chats: ProxyPre::new(pre("chats")?).map_err(exports("chats"))?,
        })
    }

    /// What the components run against (backends, ids, settings).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Loads components from `dir` when given, else the embedded ones.
    pub fn source(dir: Option<&Path>) -> ComponentSource {
        dir.map_or(ComponentSource::Embedded, |d| {
            ComponentSource::Directory(d.to_path_buf())
        })
    }

    fn store(&self, engine: &Engine) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(64)
            .build();
        let mut store = Store::new(engine, HostState::new(self.shared.clone(), limits));
        store.limiter(|s| &mut s.limits);
        let ticks = (self.limits.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }

    fn failed(&self, component: &'static str, e: wasmtime::Error) -> InvokeError {
        crate::metrics::component_failure();
        if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            InvokeError::Timeout {
                component,
                deadline: self.limits.deadline,
            }
        } else {
            InvokeError::Trap {
                component,
                source: e,
            }
        }
    }

    /// Runs the `send` component over a batch of frames; returns the newly stored messages.
    pub async fn send(
        &self,
        frames: &[InboundFrame],
    ) -> Result<Vec<bindings::Message>, InvokeError> {
        invoke!(self, "send", self.send, |i, store| i
            .chat_platform_send_handler()
            .call_handle_frames(store, frames))
    }

    /// Runs the `fanout` component over a batch of stored messages.
    pub async fn fanout(&self, messages: &[Stored]) -> Result<(), InvokeError> {
        invoke!(self, "fanout", self.fanout, |i, store| i
            .chat_platform_fanout_handler()
            .call_fanout(store, messages))
    }

    /// Runs the `presence` component over heartbeat-style frames.
    pub async fn presence_frames(&self, frames: &[InboundFrame]) -> Result<(), InvokeError> {
        invoke!(self, "presence", self.presence, |i, store| i
            .chat_platform_presence_handler()
            .call_handle_frames(store, frames))
    }

    /// Runs the `presence` component over connects and disconnects.
    pub async fn presence_lifecycle(&self, events: &[ConnectionEvent]) -> Result<(), InvokeError> {
        invoke!(self, "presence", self.presence, |i, store| i
            .chat_platform_presence_handler()
            .call_handle_lifecycle(store, events))
    }

    /// Runs the `presence` component over users whose heartbeats stopped.
    pub async fn presence_expired(
        &self,
        users: &[bindings::platform::chat::platform::presence_store::Presence],
    ) -> Result<(), InvokeError> {
        invoke!(self, "presence", self.presence, |i, store| i
            .chat_platform_presence_handler()
            .call_handle_expired(store, users))
    }

    /// Serves one HTTP request with an HTTP component; the response body is
    /// read whole (API responses are small JSON documents).
    pub async fn http(
        &self,
        which: HttpComponent,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, InvokeError> {
        let component = which.name();
        let _timer = crate::metrics::invocation(component);
        let pre = match which {
            HttpComponent::History => &self.history,
            HttpComponent::Chats => &self.chats,
            HttpComponent::PresenceQuery => &self.presence_query,
        };
        let mut store = self.store(pre.engine());
        let request = request.map(|b| {
            Full::new(b).map_err(
                |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
            )
        });
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let setup = (|| {
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, request)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok::<_, wasmtime::Error>((req, out))
        })();
        let (req, out) = setup.map_err(|e| self.failed(component, e))?;
        let pre = pre.clone();
        // The guest may keep writing the body after it sets the response, so
        // it runs in its own task while the body is read here.
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        });
        let response = match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                return Err(InvokeError::Trap {
                    component,
                    source: wasmtime::Error::msg(format!("{code:?}")),
                });
            }
            Err(_) => {
                return Err(match task.await {
                    Ok(Err(e)) => self.failed(component, e),
                    _ => InvokeError::NoResponse { component },
                });
            }
        };
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| InvokeError::Trap {
                component,
                source: wasmtime::Error::msg(format!("{e:?}")),
            })?
            .to_bytes();
        if let Ok(Err(e)) = task.await {
            tracing::warn!(component, error = %e, "http component failed after responding");
        }
        Ok(http::Response::from_parts(parts, body))
    }
}
