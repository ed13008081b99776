//! The `presence` component: who is online, from connections and heartbeats.
//!
//! `core` holds the rules and is tested natively; `adapter` binds it to the
//! `chat:platform` WIT imports.

pub mod core;

// wit-bindgen's generated glue is the only unsafe code, and it is generated.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod adapter;
