//! The `chat:platform` imports, implemented over the backends.
//!
//! Two error levels, as at every guest boundary: a backend failure becomes a
//! typed `store-error` the component can act on (the detail is logged here,
//! not shown to the guest); nothing here traps.

use std::sync::Arc;

use super::bindings::platform::chat::platform::{
    config, delivery, frames, ids, membership, message_store, presence_store, types,
};
use super::state::HostState;
use crate::backend::{self, StoreError};

impl From<StoreError> for types::StoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            StoreError::Conflict(why) => Self::Conflict(why),
            StoreError::Invalid(why) => Self::Invalid(why),
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "backend unavailable");
                crate::metrics::backend_error();
                Self::Unavailable
            }
        }
    }
}

fn wit<T, U: From<T>>(r: Result<T, StoreError>) -> Result<U, types::StoreError> {
    r.map(U::from).map_err(Into::into)
}

/// `wit` for lists.
fn wit_list<T, U: From<T>>(r: Result<Vec<T>, StoreError>) -> Result<Vec<U>, types::StoreError> {
    r.map(|items| items.into_iter().map(U::from).collect())
        .map_err(Into::into)
}

impl From<backend::Message> for types::Message {
    fn from(m: backend::Message) -> Self {
        Self {
            id: m.id,
            chat_id: m.chat_id,
            sender_id: m.sender_id,
            client_msg_id: m.client_msg_id,
            content: m.content,
            timestamp: m.timestamp,
            prev_id: m.prev_id,
        }
    }
}

impl From<types::Message> for backend::Message {
    fn from(m: types::Message) -> Self {
        Self {
            id: m.id,
            chat_id: m.chat_id,
            sender_id: m.sender_id,
            client_msg_id: m.client_msg_id,
            content: m.content,
            timestamp: m.timestamp,
            prev_id: m.prev_id,
        }
    }
}

impl From<backend::Chat> for types::Chat {
    fn from(c: backend::Chat) -> Self {
        Self {
            id: c.id,
            kind: match c.kind {
                backend::ChatKind::Direct => types::ChatKind::Direct,
                backend::ChatKind::Group => types::ChatKind::Group,
            },
            name: c.name,
            members: c.members,
            admins: c.admins,
            created_at: c.created_at,
        }
    }
}

impl From<types::Chat> for backend::Chat {
    fn from(c: types::Chat) -> Self {
        Self {
            id: c.id,
            kind: match c.kind {
                types::ChatKind::Direct => backend::ChatKind::Direct,
                types::ChatKind::Group => backend::ChatKind::Group,
            },
            name: c.name,
            members: c.members,
            admins: c.admins,
            created_at: c.created_at,
        }
    }
}

fn receipt(user_id: String, marks: backend::Watermarks) -> types::Receipt {
    types::Receipt {
        user_id,
        delivered_up_to: marks.delivered_up_to,
        read_up_to: marks.read_up_to,
    }
}

impl types::Host for HostState {}

impl frames::Host for HostState {}

impl message_store::Host for HostState {
    async fn append(
        &mut self,
        messages: Vec<message_store::NewMessage>,
    ) -> Vec<Result<message_store::Appended, types::StoreError>> {
        let count = messages.len();
        let batch = messages
            .into_iter()
            .map(|m| backend::NewMessage {
                chat_id: m.chat_id,
                sender_id: m.sender_id,
                client_msg_id: m.client_msg_id,
                content: m.content,
                timestamp: m.timestamp,
            })
            .collect();
        let started = std::time::Instant::now();
        let appended = self.shared.backends.messages.append(batch).await;
        crate::metrics::store_appended(started);
        match appended {
            Ok(results) => results
                .into_iter()
                .map(|r| {
                    r.map(|a| message_store::Appended {
                        id: a.message.id,
                        prev_id: a.message.prev_id,
                        earlier: a.duplicate.then(|| a.message.into()),
                    })
                    .map_err(Into::into)
                })
                .collect(),
            Err(e) => {
                // The whole batch failed: every message gets the same error.
                let e = types::StoreError::from(e);
                vec![Err(e); count]
            }
        }
    }

    async fn page_before(
        &mut self,
        chat: String,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<types::Message>, types::StoreError> {
        let page = self
            .shared
            .backends
            .messages
            .page_before(&chat, before, limit.min(1000))
            .await;
        wit_list(page)
    }

    async fn page_after(
        &mut self,
        chat: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<types::Message>, types::StoreError> {
        let page = self
            .shared
            .backends
            .messages
            .page_after(&chat, after, limit.min(1000))
            .await;
        wit_list(page)
    }

    async fn get(
        &mut self,
        chat: String,
        id: u64,
    ) -> Result<Option<types::Message>, types::StoreError> {
        wit(self
            .shared
            .backends
            .messages
            .get(&chat, id)
            .await
            .map(|m| m.map(types::Message::from)))
    }

    async fn advance_receipt(
        &mut self,
        chat: String,
        user: String,
        kind: types::ReceiptKind,
        up_to: u64,
    ) -> Result<(types::Receipt, bool), types::StoreError> {
        let kind = match kind {
            types::ReceiptKind::Delivered => backend::ReceiptKind::Delivered,
            types::ReceiptKind::Read => backend::ReceiptKind::Read,
        };
        let result = self
            .shared
            .backends
            .messages
            .advance_receipt(&chat, &user, kind, up_to)
            .await;
        result
            .map(|(marks, moved)| (receipt(user, marks), moved))
            .map_err(Into::into)
    }

    async fn receipts(&mut self, chat: String) -> Result<Vec<types::Receipt>, types::StoreError> {
        let all = self.shared.backends.messages.receipts(&chat).await;
        all.map(|rs| {
            rs.into_iter()
                .map(|r| receipt(r.user_id, r.marks))
                .collect()
        })
        .map_err(Into::into)
    }
}

impl membership::Host for HostState {
    async fn get_chat(&mut self, chat: String) -> Result<Option<types::Chat>, types::StoreError> {
        wit(self
            .shared
            .backends
            .chats
            .get_chat(&chat)
            .await
            .map(|c| c.map(types::Chat::from)))
    }

    async fn get_chats(
        &mut self,
        chats: Vec<String>,
    ) -> Vec<Result<Option<types::Chat>, types::StoreError>> {
        self.shared
            .backends
            .chats
            .get_chats(&chats)
            .await
            .into_iter()
            .map(|found| wit(found.map(|c| c.map(types::Chat::from))))
            .collect()
    }

    async fn is_member(&mut self, chat: String, user: String) -> Result<bool, types::StoreError> {
        wit(self.shared.backends.chats.is_member(&chat, &user).await)
    }

    async fn create_chat(
        &mut self,
        chat: types::Chat,
    ) -> Result<(types::Chat, bool), types::StoreError> {
        let created = self.shared.backends.chats.create_chat(chat.into()).await;
        created
            .map(|(c, fresh)| (c.into(), fresh))
            .map_err(Into::into)
    }

    async fn chats_of(&mut self, user: String) -> Result<Vec<types::Chat>, types::StoreError> {
        let chats = self.shared.backends.chats.chats_of(&user).await;
        wit_list(chats)
    }

    async fn update_members(
        &mut self,
        chat: String,
        expected_members: Vec<String>,
        members: Vec<String>,
        admins: Vec<String>,
    ) -> Result<types::Chat, types::StoreError> {
        let chats = &self.shared.backends.chats;
        wit(chats
            .update_members(&chat, &expected_members, members, admins)
            .await)
    }
}

impl presence_store::Host for HostState {
    async fn heartbeat(
        &mut self,
        user: String,
        connection: u64,
        ttl_ms: u64,
    ) -> Result<bool, types::StoreError> {
        wit(self
            .shared
            .backends
            .presence
            .heartbeat(&user, connection, ttl_ms)
            .await)
    }

    async fn disconnect(
        &mut self,
        user: String,
        connection: u64,
    ) -> Result<bool, types::StoreError> {
        wit(self
            .shared
            .backends
            .presence
            .disconnect(&user, connection)
            .await)
    }

    async fn query(
        &mut self,
        users: Vec<String>,
    ) -> Result<Vec<presence_store::Presence>, types::StoreError> {
        let found = self.shared.backends.presence.query(&users).await;
        found
            .map(|ps| {
                ps.into_iter()
                    .map(|p| presence_store::Presence {
                        user_id: p.user_id,
                        online: p.online,
                        last_seen: p.last_seen,
                    })
                    .collect()
            })
            .map_err(Into::into)
    }

    async fn throttle(&mut self, key: String, window_ms: u64) -> Result<bool, types::StoreError> {
        wit(self
            .shared
            .backends
            .presence
            .throttle(&key, window_ms)
            .await)
    }
}

impl delivery::Host for HostState {
    async fn send_to_connection(&mut self, connection: u64, frame: String) {
        crate::metrics::frames_out(1);
        let frame: Arc<str> = frame.into();
        self.shared
            .backends
            .router
            .send_to_connection(connection, frame)
            .await;
    }

    async fn send_to_users(&mut self, users: Vec<String>, frame: String, skip: Option<u64>) -> u32 {
        let reached = self
            .shared
            .backends
            .router
            .send_to_users(&users, frame.into(), skip)
            .await;
        crate::metrics::frames_out(u64::from(reached));
        reached
    }

    async fn watch_presence(&mut self, connection: u64, users: Vec<String>) {
        self.shared
            .backends
            .router
            .watch_presence(connection, &users)
            .await;
    }

    async fn send_to_watchers(&mut self, user: String, frame: String) -> u32 {
        let reached = self
            .shared
            .backends
            .router
            .send_to_watchers(&user, frame.into())
            .await;
        crate::metrics::frames_out(u64::from(reached));
        reached
    }
}

impl ids::Host for HostState {
    async fn next_id(&mut self) -> u64 {
        self.shared.ids.next_id()
    }
}

impl config::Host for HostState {
    async fn current(&mut self) -> config::Settings {
        self.shared.settings
    }

    /// The gateway checks every client's token before a component runs.
    async fn caller_token_secret(&mut self) -> Option<String> {
        None
    }
}
