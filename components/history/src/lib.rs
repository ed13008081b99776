//! The `history` component: `GET /api/v1/chats/{chatId}/messages`.
//!
//! A `wasi:http` handler built with spin-sdk, so the same file runs in
//! host-gateway and on Spin. `core` holds paging and status rules and is
//! tested natively; `adapter` binds it to the request and the
//! `chat:platform` imports.

pub mod core;

// wit-bindgen's generated glue is the only unsafe code, and it is generated.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod adapter;
