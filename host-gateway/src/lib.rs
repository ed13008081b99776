//! Switchboard's native host.
//!
//! A deliberately small gateway: it holds WebSockets, authenticates, turns
//! frames into batched calls of the Wasm components (which hold every chat
//! rule) and provides them storage through the `chat:platform` imports.
//!
//! - `gateway`: HTTP and WebSocket front, frame dispatch.
//! - `runtime`: the wasmtime engine, components and their imports.
//! - `backend`: storage and routing traits and their implementations.

pub mod auth;
pub mod backend;
pub mod config;
pub mod gateway;
pub mod ids;
pub mod metrics;
pub mod runtime;

pub use config::Config;
pub use gateway::run;
