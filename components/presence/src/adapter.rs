//! Binds `core` to the `chat:platform` imports and exports `presence-handler`.

use std::collections::HashSet;

use crate::core::{self, Presence, Unavailable};

wit_bindgen::generate!({ path: "../../wit", world: "presence-component" });

use chat::platform::frames::InboundFrame;
use chat::platform::{config, delivery, membership, presence_store};
use exports::chat::platform::presence_handler::{ConnectionEvent, Guest, Lifecycle};

struct Host;

impl core::Platform for Host {
    fn ttl_ms(&self) -> u64 {
        config::current().presence_ttl_ms
    }

    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn heartbeat(&self, user: &str, connection: u64, ttl_ms: u64) -> Result<bool, Unavailable> {
        presence_store::heartbeat(user, connection, ttl_ms).map_err(|_| Unavailable)
    }

    fn disconnect(&self, user: &str, connection: u64) -> Result<bool, Unavailable> {
        presence_store::disconnect(user, connection).map_err(|_| Unavailable)
    }

    fn query(&self, users: &[String]) -> Result<Vec<Presence>, Unavailable> {
        let found = presence_store::query(users).map_err(|_| Unavailable)?;
        Ok(found
            .into_iter()
            .map(|p| Presence {
                user_id: p.user_id,
                online: p.online,
                last_seen: p.last_seen,
            })
            .collect())
    }

    fn contacts(&self, user: &str) -> Result<HashSet<String>, Unavailable> {
        let chats = membership::chats_of(user).map_err(|_| Unavailable)?;
        let mut contacts: HashSet<String> = chats.into_iter().flat_map(|c| c.members).collect();
        contacts.insert(user.to_owned());
        Ok(contacts)
    }

    fn watch(&self, connection: u64, users: &[String]) {
        delivery::watch_presence(connection, users);
    }

    fn send_to_watchers(&self, user: &str, frame: &str) {
        delivery::send_to_watchers(user, frame);
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
                body: f.body,
            })
            .collect();
        core::handle_frames(&Host, frames);
    }

    fn handle_expired(users: Vec<presence_store::Presence>) {
        let users = users
            .into_iter()
            .map(|p| Presence {
                user_id: p.user_id,
                online: p.online,
                last_seen: p.last_seen,
            })
            .collect();
        core::handle_expired(&Host, users);
    }
}

export!(Component);
