//! The `presence` component: who is online, from connections and heartbeats,
//! and who is told.
//!
//! It exports `presence-handler` (socket events, expiries) and, through
//! spin-sdk, a `wasi:http` handler for `GET /api/v1/users/{id}/presence`.
//! `core` holds the rules and is tested natively; `adapter` binds it.

pub mod core;

// wit-bindgen's generated glue is the only unsafe code, and it is generated.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod adapter;
