//! The `presence-query` component: `GET /api/v1/users/{userId}/presence`.
//!
//! A `wasi:http` handler built with spin-sdk, apart from the `presence`
//! component (heartbeats and pushed changes) so that the socket path's
//! instances do not carry the HTTP imports. `core` holds the rule (only a
//! user who shares a chat with the caller can be looked up) and is tested
//! natively; `adapter` binds it to the request and the `chat:platform`
//! imports.

pub mod core;

// wit-bindgen's generated glue is the only unsafe code, and it is generated.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod adapter;
