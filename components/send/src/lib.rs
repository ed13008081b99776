//! The `send` component: everything a client writes into a chat.
//!
//! `core` holds the rules and is tested natively against an in-memory
//! platform; `adapter` binds it to the `chat:platform` WIT imports.

pub mod core;

// wit-bindgen's generated glue is the only unsafe code, and it is generated.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod adapter;
