//! Binds `core` to the `chat:platform` WIT imports and exports `presence-handler`.

use crate::core::{self, Unavailable};

wit_bindgen::generate!({ path: "../../wit", world: "presence-component" });

use chat::platform::frames::InboundFrame;
use chat::platform::{config, delivery, presence_store};
use exports::chat::platform::presence_handler::{ConnectionEvent, Guest, Lifecycle};

struct Host;

impl core::Platform for Host {
    fn ttl_ms(&self) -> u64 {
        config::current().presence_ttl_ms
    }

    fn heartbeat(&self, user: &str, connection: u64, ttl_ms: u64) -> Result<bool, Unavailable> {
        presence_store::heartbeat(user, connection, ttl_ms).map_err(|_| Unavailable)
    }

    fn disconnect(&self, user: &str, connection: u64) -> Result<bool, Unavailable> {
        presence_store::disconnect(user, connection).map_err(|_| Unavailable)
    }

    fn send_to_connection(&self, connection: u64, frame: &str) {
        delivery::send_to_connection(connection, frame);
    }
}

struct Component;

impl Guest for Component {
    fn handle_lifecycle(events: Vec<ConnectionEvent>) {
        let events = events
            .into_iter()
            .map(|e| match e.event {
                Lifecycle::Connected => core::Lifecycle::Connected {
                    connection: e.connection,
                    user: e.user_id,
                },
                Lifecycle::Disconnected => core::Lifecycle::Disconnected {
                    connection: e.connection,
                    user: e.user_id,
                },
            })
            .collect();
        core::handle_lifecycle(&Host, events);
    }

    fn handle_frames(frames: Vec<InboundFrame>) {
        let frames = frames
            .into_iter()
            .map(|f| core::Frame {
                connection: f.connection,
                user_id: f.user_id,
                kind: f.kind,
            })
            .collect();
        core::handle_frames(&Host, frames);
    }
}

export!(Component);
