//! What one component invocation's `Store` holds.

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::platform::chat::platform::config::Settings;
use crate::backend::Backends;
use crate::ids::Snowflake;

/// State shared by every invocation: built once, borrowed through an `Arc`
/// so a fresh `Store` costs one reference count, not a copy.
#[derive(Debug)]
pub struct Shared {
    pub backends: Backends,
    pub ids: Arc<Snowflake>,
    pub settings: Settings,
}

/// Per-invocation state: a fresh one for every call, so nothing a component
/// does survives it (the components are stateless by construction).
pub struct HostState {
    pub shared: Arc<Shared>,
    pub limits: StoreLimits,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    http_hooks: NoEgress,
    table: ResourceTable,
}

impl HostState {
    pub fn new(shared: Arc<Shared>, limits: StoreLimits) -> Self {
        Self {
            shared,
            limits,
            // Guests get no files, env or network; stderr is kept so a guest
            // panic message reaches the host's log.
            wasi: WasiCtx::builder().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            http_hooks: NoEgress,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Components may not make outbound HTTP requests: a deny-all policy.
#[derive(Debug, Default)]
pub struct NoEgress;

impl wasmtime_wasi_http::WasiHttpHooks for NoEgress {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<
            dyn Future<Output = wasmtime_wasi_http::Result<(), wasmtime_wasi_http::Error>> + Send,
        >,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<
                        dyn Future<
                                Output = wasmtime_wasi_http::Result<(), wasmtime_wasi_http::Error>,
                            > + Send,
                    >,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}
