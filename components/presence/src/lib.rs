//! The `presence` component: who is online, from connections and heartbeats,
//! and who is told.
//!
//! It exports `presence-handler` (socket events, expiries) and nothing else:
//! it is instantiated afresh for every batch of heartbeats, and what a
//! component imports is paid for on every instantiation, so the HTTP query
//! (`GET /api/v1/users/{id}/presence`) is a component of its own,
//! `presence-query`. `core` holds the rules and is tested natively;
//! `adapter` binds it.

pub mod core;

// wit-bindgen's generated glue is the only unsafe code, and it is generated.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod adapter;
