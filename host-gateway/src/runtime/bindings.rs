//! Rust bindings of the `chat:platform` WIT package.
//!
//! The imports (what the host provides) are generated once, for the
//! `platform` world; each component world reuses them through `with`, so the
//! host implements every interface once (see `host_impl`).

/// The host-provided interfaces.
pub mod platform {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "platform",
        imports: { default: async },
    });
}

/// Every component world imports the platform; these map it to `platform`.
macro_rules! component_world {
    ($module:ident, $world:literal) => {
        pub mod $module {
            wasmtime::component::bindgen!({
                path: "../wit",
                world: $world,
                imports: { default: async },
                exports: { default: async },
                with: {
                    "chat:platform/types": super::platform::chat::platform::types,
                    "chat:platform/message-store": super::platform::chat::platform::message_store,
                    "chat:platform/membership": super::platform::chat::platform::membership,
                    "chat:platform/presence-store": super::platform::chat::platform::presence_store,
                    "chat:platform/delivery": super::platform::chat::platform::delivery,
                    "chat:platform/ids": super::platform::chat::platform::ids,
                    "chat:platform/config": super::platform::chat::platform::config,
                    "chat:platform/frames": super::platform::chat::platform::frames,
                },
            });
        }
    };
}

component_world!(send, "send-component");
component_world!(fanout, "fanout-component");
component_world!(presence, "presence-component");

pub use platform::chat::platform::types::{
    Chat, ChatKind, Message, Receipt, ReceiptKind, StoreError,
};
