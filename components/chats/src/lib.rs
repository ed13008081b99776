//! The `chats` component: `POST /api/v1/chats`, `GET /api/v1/chats`,
//! `GET /api/v1/chats/{chatId}`.
//!
//! A `wasi:http` handler built with spin-sdk. `core` holds the chat rules
//! (direct-chat identity, groups, the member limit) and is tested natively;
//! `adapter` binds it to the request and the `chat:platform` imports.

pub mod core;

// wit-bindgen's generated glue is the only unsafe code, and it is generated.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod adapter;
