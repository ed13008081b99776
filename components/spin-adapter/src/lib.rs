//! The `spin-adapter` component: Switchboard's `chat:platform` interfaces
//! for HTTP components deployed on Spin.
//!
//! Spin cannot provide `chat:platform` itself, so each HTTP component there
//! is composed with this one (a Spin component dependency). It exports the
//! platform interfaces and serves them by calling host-gateway's internal
//! store API over outbound HTTP, with the URL and token from Spin variables.
//! `core` holds the calling and error rules and is tested natively;
//! `adapter` binds it to the WIT exports and to spin-sdk.

pub mod core;

// wit-bindgen's generated glue is the only unsafe code, and it is generated.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod adapter;
