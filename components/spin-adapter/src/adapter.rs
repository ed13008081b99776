//! Exports the `chat:platform` interfaces the HTTP components import, each
//! function one store API call made with spin-sdk's outbound HTTP; the URL
//! and token come from Spin variables, read on every call (a host call,
//! no state is kept between invocations).

use chat_core::store_api::{self as wire, Call};
use spin_sdk::http::{Method, Request, Response};

use crate::core::{
    self, CALLER_TOKEN_SECRET_VARIABLE, Endpoint, TOKEN_VARIABLE, Transport, TransportFailure,
    URL_VARIABLE,
};

wit_bindgen::generate!({
    inline: r#"
        package switchboard:spin-adapter;

        world adapter {
            export chat:platform/types@0.1.0;
            export chat:platform/message-store@0.1.0;
            export chat:platform/membership@0.1.0;
            export chat:platform/presence-store@0.1.0;
            export chat:platform/delivery@0.1.0;
            export chat:platform/ids@0.1.0;
            export chat:platform/config@0.1.0;
            export chat:platform/frames@0.1.0;
        }
    "#,
    path: "../../wit",
    world: "switchboard:spin-adapter/adapter",
});

use exports::chat::platform::types::{Chat, ChatKind, Message, Receipt, ReceiptKind, StoreError};
use exports::chat::platform::{config, delivery, ids, membership, message_store, presence_store};

/// Outbound HTTP through Spin (subject to `allowed_outbound_hosts`).
struct SpinHttp;

impl Transport for SpinHttp {
    fn post(
        &self,
        url: &str,
        token: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), TransportFailure> {
        let request = Request::builder()
            .method(Method::Post)
            .uri(url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body)
            .build();
        let response: Response = spin_sdk::http::run(spin_sdk::http::send(request))
            .map_err(|e| TransportFailure(e.to_string()))?;
        Ok((*response.status(), response.into_body()))
    }
}

fn endpoint() -> Result<Endpoint, wire::StoreError> {
    let read = |name: &str| {
        spin_sdk::variables::get(name)
            .map_err(|e| wire::StoreError::Invalid(format!("spin variable {name}: {e}")))
    };
    Endpoint::new(&read(URL_VARIABLE)?, &read(TOKEN_VARIABLE)?)
}

/// The secret client tokens are checked with. Without one no caller can be
/// authenticated, so there is nothing safe to answer: fail the request.
fn caller_token_secret() -> String {
    match spin_sdk::variables::get(CALLER_TOKEN_SECRET_VARIABLE) {
        Ok(secret) if !secret.is_empty() => secret,
        Ok(_) => panic!("spin variable {CALLER_TOKEN_SECRET_VARIABLE} is empty"),
        Err(e) => panic!("spin variable {CALLER_TOKEN_SECRET_VARIABLE}: {e}"),
    }
}

fn call<A: serde::Serialize, R: serde::de::DeserializeOwned>(
    call: Call,
    args: &A,
) -> Result<R, StoreError> {
    endpoint()
        .and_then(|e| e.call(&SpinHttp, call, args))
        .map_err(to_wit_error)
}

fn to_wit_error(e: wire::StoreError) -> StoreError {
    match e {
        wire::StoreError::NotFound => StoreError::NotFound,
        wire::StoreError::Conflict(why) => StoreError::Conflict(why),
        wire::StoreError::Unavailable => StoreError::Unavailable,
        wire::StoreError::Invalid(why) => StoreError::Invalid(why),
    }
}

fn message(m: wire::Message) -> Message {
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

fn chat_to_wit(c: wire::Chat) -> Chat {
    Chat {
        id: c.id,
        kind: match c.kind {
            wire::ChatKind::Direct => ChatKind::Direct,
            wire::ChatKind::Group => ChatKind::Group,
        },
        name: c.name,
        members: c.members,
        admins: c.admins,
        created_at: c.created_at,
    }
}

fn chat_to_wire(c: Chat) -> wire::Chat {
    wire::Chat {
        id: c.id,
        kind: match c.kind {
            ChatKind::Direct => wire::ChatKind::Direct,
            ChatKind::Group => wire::ChatKind::Group,
        },
        name: c.name,
        members: c.members,
        admins: c.admins,
        created_at: c.created_at,
    }
}

struct Component;

impl message_store::Guest for Component {
    fn append(
        messages: Vec<message_store::NewMessage>,
    ) -> Vec<Result<message_store::Appended, StoreError>> {
        messages
            .iter()
            .map(|_| Err(to_wit_error(core::not_on_spin("message-store.append"))))
            .collect()
    }

    fn page_before(
        chat: String,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let page: Vec<wire::Message> = call(
            Call::PageBefore,
            &wire::PageBefore {
                chat,
                before,
                limit,
            },
        )?;
        Ok(page.into_iter().map(message).collect())
    }

    fn page_after(chat: String, after: u64, limit: u32) -> Result<Vec<Message>, StoreError> {
        let page: Vec<wire::Message> =
            call(Call::PageAfter, &wire::PageAfter { chat, after, limit })?;
        Ok(page.into_iter().map(message).collect())
    }

    fn get(chat: String, id: u64) -> Result<Option<Message>, StoreError> {
        let found: Option<wire::Message> = call(Call::GetMessage, &wire::GetMessage { chat, id })?;
        Ok(found.map(message))
    }

    fn advance_receipt(
        _chat: String,
        _user: String,
        _kind: ReceiptKind,
        _up_to: u64,
    ) -> Result<(Receipt, bool), StoreError> {
        Err(to_wit_error(core::not_on_spin(
            "message-store.advance-receipt",
        )))
    }

    fn receipts(chat: String) -> Result<Vec<Receipt>, StoreError> {
        let all: Vec<wire::Receipt> = call(Call::Receipts, &wire::ChatArg { chat })?;
        Ok(all
            .into_iter()
            .map(|r| Receipt {
                user_id: r.user_id,
                delivered_up_to: r.delivered_up_to,
                read_up_to: r.read_up_to,
            })
            .collect())
    }
}

impl membership::Guest for Component {
    fn get_chat(chat: String) -> Result<Option<Chat>, StoreError> {
        let found: Option<wire::Chat> = call(Call::GetChat, &wire::ChatArg { chat })?;
        Ok(found.map(chat_to_wit))
    }

    /// One store API call per chat, one after another: only the WebSocket
    /// components ask for a batch's chats, and they do not run on Spin.
    fn get_chats(chats: Vec<String>) -> Vec<Result<Option<Chat>, StoreError>> {
        chats.into_iter().map(Self::get_chat).collect()
    }

    fn is_member(chat: String, user: String) -> Result<bool, StoreError> {
        call(Call::IsMember, &wire::IsMember { chat, user })
    }

    fn create_chat(chat: Chat) -> Result<(Chat, bool), StoreError> {
        let (stored, created): (wire::Chat, bool) = call(
            Call::CreateChat,
            &wire::CreateChat {
                chat: chat_to_wire(chat),
            },
        )?;
        Ok((chat_to_wit(stored), created))
    }

    fn chats_of(user: String) -> Result<Vec<Chat>, StoreError> {
        let chats: Vec<wire::Chat> = call(Call::ChatsOf, &wire::UserArg { user })?;
        Ok(chats.into_iter().map(chat_to_wit).collect())
    }

    fn update_members(
        chat: String,
        expected_members: Vec<String>,
        members: Vec<String>,
        admins: Vec<String>,
    ) -> Result<Chat, StoreError> {
        let updated: wire::Chat = call(
            Call::UpdateMembers,
            &wire::UpdateMembers {
                chat,
                expected_members,
                members,
                admins,
            },
        )?;
        Ok(chat_to_wit(updated))
    }
}

impl presence_store::Guest for Component {
    fn heartbeat(_user: String, _connection: u64, _ttl_ms: u64) -> Result<bool, StoreError> {
        Err(to_wit_error(core::not_on_spin("presence-store.heartbeat")))
    }

    fn disconnect(_user: String, _connection: u64) -> Result<bool, StoreError> {
        Err(to_wit_error(core::not_on_spin("presence-store.disconnect")))
    }

    fn query(users: Vec<String>) -> Result<Vec<presence_store::Presence>, StoreError> {
        let found: Vec<wire::Presence> = call(Call::QueryPresence, &wire::Users { users })?;
        Ok(found
            .into_iter()
            .map(|p| presence_store::Presence {
                user_id: p.user_id,
                online: p.online,
                last_seen: p.last_seen,
            })
            .collect())
    }

    fn throttle(_key: String, _window_ms: u64) -> Result<bool, StoreError> {
        Err(to_wit_error(core::not_on_spin("presence-store.throttle")))
    }
}

/// On Spin no WebSocket is open, so a frame reaches no connection: the
/// at-most-once contract of `delivery`, with nobody to deliver to. Clients
/// see the change from the store on their next read.
impl delivery::Guest for Component {
    fn send_to_connection(_connection: u64, _frame: String) {}

    fn send_to_users(_users: Vec<String>, _frame: String, _skip: Option<u64>) -> u32 {
        0
    }

    fn watch_presence(_connection: u64, _users: Vec<String>) {}

    fn send_to_watchers(_user: String, _frame: String) -> u32 {
        0
    }
}

/// `next-id` and `current` have no error channel in WIT: without the store
/// API there is no unique id or true setting to give, so the call traps
/// and the request fails (500) instead of going on with a made-up value.
impl ids::Guest for Component {
    fn next_id() -> u64 {
        match call::<_, u64>(Call::NextId, &wire::NoArgs {}) {
            Ok(id) => id,
            Err(e) => panic!("ids.next-id through the store API failed: {e:?}"),
        }
    }
}

impl config::Guest for Component {
    fn current() -> config::Settings {
        match call::<_, wire::Settings>(Call::Settings, &wire::NoArgs {}) {
            Ok(s) => config::Settings {
                max_content_bytes: s.max_content_bytes,
                presence_ttl_ms: s.presence_ttl_ms,
                max_group_members: s.max_group_members,
            },
            Err(e) => panic!("config.current through the store API failed: {e:?}"),
        }
    }

    /// Spin hands requests straight from clients to the components: they
    /// must check tokens themselves.
    fn caller_token_secret() -> Option<String> {
        Some(caller_token_secret())
    }
}

export!(Component);
