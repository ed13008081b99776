//! Binds `core` to the `chat:platform` WIT imports and exports `fanout-handler`.

use crate::core;

wit_bindgen::generate!({ path: "../../wit", world: "fanout-component" });

use chat::platform::{delivery, membership};
use exports::chat::platform::fanout_handler::{Guest, Stored};

struct Host;

impl core::Platform for Host {
    fn members_of(&self, chats: &[&str]) -> Vec<Option<Vec<String>>> {
        let chats: Vec<String> = chats.iter().map(|c| c.to_string()).collect();
        membership::get_chats(&chats)
            .into_iter()
            .map(|found| found.ok().flatten().map(|c| c.members))
            .collect()
    }

    fn send_to_users(&self, users: &[String], frame: &str, skip: Option<u64>) {
        delivery::send_to_users(users, frame, skip);
    }
}

struct Component;

impl Guest for Component {
    fn fanout(messages: Vec<Stored>) {
        let messages = messages
            .into_iter()
            .map(|s| core::Stored {
                id: s.message.id,
                chat_id: s.message.chat_id,
                sender_id: s.message.sender_id,
                content: s.message.content,
                timestamp: s.message.timestamp,
                prev_id: s.message.prev_id,
                origin: s.origin,
            })
            .collect();
        core::fanout(&Host, messages);
    }
}

export!(Component);
