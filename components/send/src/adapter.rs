//! Binds `core` to the `chat:platform` WIT imports and exports `send-handler`.

use chat_core::receipts::Marks;

use crate::core::{
    self, Appended, ChatInfo, ChatKind, Message, NewMessage, ReceiptKind, StoreError,
};

wit_bindgen::generate!({ path: "../../wit", world: "send-component" });

use chat::platform::{config, delivery, membership, message_store, presence_store, types};
use exports::chat::platform::send_handler::Guest;

struct Host;

fn store_error(e: types::StoreError) -> StoreError {
    match e {
        types::StoreError::NotFound => StoreError::NotFound,
        types::StoreError::Conflict(_) => StoreError::Conflict,
        types::StoreError::Unavailable => StoreError::Unavailable,
        types::StoreError::Invalid(_) => StoreError::Invalid,
    }
}

fn message(m: types::Message) -> Message {
    Message {
        id: m.id,
        chat_id: m.chat_id,
        sender_id: m.sender_id,
        client_msg_id: m.client_msg_id,
        content: m.content,
        timestamp: m.timestamp,
        prev_id: m.prev_id,
    }
}

fn marks(r: &types::Receipt) -> Marks {
    Marks {
        delivered_up_to: r.delivered_up_to,
        read_up_to: r.read_up_to,
    }
}

impl core::Platform for Host {
    fn max_content_bytes(&self) -> u32 {
        config::current().max_content_bytes
    }

    fn get_chats(&self, chats: &[&str]) -> Vec<Result<Option<ChatInfo>, StoreError>> {
        let chats: Vec<String> = chats.iter().map(|c| c.to_string()).collect();
        membership::get_chats(&chats)
            .into_iter()
            .map(|found| {
                let found = found.map_err(store_error)?;
                Ok(found.map(|c| ChatInfo {
                    kind: match c.kind {
                        types::ChatKind::Direct => ChatKind::Direct,
                        types::ChatKind::Group => ChatKind::Group,
                    },
                    members: c.members,
                }))
            })
            .collect()
    }

    fn append(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        let batch: Vec<message_store::NewMessage> = messages
            .into_iter()
            .map(|m| message_store::NewMessage {
                chat_id: m.chat_id,
                sender_id: m.sender_id,
                client_msg_id: m.client_msg_id,
                content: m.content,
                timestamp: m.timestamp,
            })
            .collect();
        let results = message_store::append(&batch);
        // A new message comes back as its id: the rest is what was sent.
        results
            .into_iter()
            .zip(batch)
            .map(|(r, sent)| {
                r.map(|a| match a.earlier {
                    Some(earlier) => Appended {
                        message: message(earlier),
                        duplicate: true,
                    },
                    None => Appended {
                        message: Message {
                            id: a.id,
                            chat_id: sent.chat_id,
                            sender_id: sent.sender_id,
                            client_msg_id: sent.client_msg_id,
                            content: sent.content,
                            timestamp: sent.timestamp,
                            prev_id: a.prev_id,
                        },
                        duplicate: false,
                    },
                })
                .map_err(store_error)
            })
            .collect()
    }

    fn get_message(&self, chat: &str, id: u64) -> Result<Option<Message>, StoreError> {
        message_store::get(chat, id)
            .map(|m| m.map(message))
            .map_err(store_error)
    }

    fn advance_receipt(
        &self,
        chat: &str,
        user: &str,
        kind: ReceiptKind,
        up_to: u64,
    ) -> Result<(Marks, bool), StoreError> {
        let kind = match kind {
            ReceiptKind::Delivered => types::ReceiptKind::Delivered,
            ReceiptKind::Read => types::ReceiptKind::Read,
        };
        let (receipt, moved) =
            message_store::advance_receipt(chat, user, kind, up_to).map_err(store_error)?;
        Ok((marks(&receipt), moved))
    }

    fn receipts(&self, chat: &str) -> Result<Vec<(String, Marks)>, StoreError> {
        let all = message_store::receipts(chat).map_err(store_error)?;
        Ok(all.iter().map(|r| (r.user_id.clone(), marks(r))).collect())
    }

    fn throttle(&self, key: &str, window_ms: u64) -> Result<bool, StoreError> {
        presence_store::throttle(key, window_ms).map_err(store_error)
    }

    fn send_to_connection(&self, connection: u64, frame: &str) {
        delivery::send_to_connection(connection, frame);
    }

    fn send_to_users(&self, users: &[String], frame: &str, skip: Option<u64>) {
        delivery::send_to_users(users, frame, skip);
    }
}

struct Component;

impl Guest for Component {
    fn handle_frames(frames: Vec<chat::platform::frames::InboundFrame>) -> Vec<types::Message> {
        let frames = frames
            .into_iter()
            .map(|f| core::Frame {
                connection: f.connection,
                user_id: f.user_id,
                kind: f.kind,
                body: f.body,
            })
            .collect();
        core::handle_frames(&Host, frames)
            .into_iter()
            .map(|m| types::Message {
                id: m.id,
                chat_id: m.chat_id,
                sender_id: m.sender_id,
                client_msg_id: m.client_msg_id,
                content: m.content,
                timestamp: m.timestamp,
                prev_id: m.prev_id,
            })
            .collect()
    }
}

export!(Component);
