//! Binds `core` to spin-sdk's request type and the `chat:platform` imports.

use chat_core::http::caller_of;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

use crate::core::{self, Chat, ChatKind, StoreFailure, UpdateError};

wit_bindgen::generate!({ path: "../../wit", world: "http-platform" });

use chat::platform::{config, delivery, ids, membership, types};

struct Host;

/// What the reply depends on; the backend's detail was logged by the host.
fn failure(e: types::StoreError) -> StoreFailure {
    match e {
        types::StoreError::Unavailable => StoreFailure::Unavailable,
        types::StoreError::NotFound => StoreFailure::NotFound,
        types::StoreError::Conflict(_) | types::StoreError::Invalid(_) => StoreFailure::Failed,
    }
}

fn from_wit(c: types::Chat) -> Chat {
    Chat {
        id: c.id,
        kind: match c.kind {
            types::ChatKind::Direct => ChatKind::Direct,
            types::ChatKind::Group => ChatKind::Group,
        },
        name: c.name,
        members: c.members,
        admins: c.admins,
        created_at: c.created_at,
    }
}

fn to_wit(c: Chat) -> types::Chat {
    types::Chat {
        id: c.id,
        kind: match c.kind {
            ChatKind::Direct => types::ChatKind::Direct,
            ChatKind::Group => types::ChatKind::Group,
        },
        name: c.name,
        members: c.members,
        admins: c.admins,
        created_at: c.created_at,
    }
}

impl core::Platform for Host {
    fn max_group_members(&self) -> u32 {
        config::current().max_group_members
    }

    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn next_id(&self) -> u64 {
        ids::next_id()
    }

    fn get_chat(&self, id: &str) -> Result<Option<Chat>, StoreFailure> {
        membership::get_chat(id)
            .map(|c| c.map(from_wit))
            .map_err(failure)
    }

    fn create_chat(&self, chat: Chat) -> Result<(Chat, bool), StoreFailure> {
        let (chat, created) = membership::create_chat(&to_wit(chat)).map_err(failure)?;
        Ok((from_wit(chat), created))
    }

    fn update_members(
        &self,
        id: &str,
        expected: &[String],
        members: Vec<String>,
        admins: Vec<String>,
    ) -> Result<Chat, UpdateError> {
        membership::update_members(id, expected, &members, &admins)
            .map(from_wit)
            .map_err(|e| match e {
                types::StoreError::Conflict(_) => UpdateError::Conflict,
                types::StoreError::NotFound => UpdateError::NotFound,
                types::StoreError::Unavailable => UpdateError::Unavailable,
                types::StoreError::Invalid(_) => UpdateError::Failed,
            })
    }

    fn send_to_users(&self, users: &[String], frame: &str) {
        delivery::send_to_users(users, frame, None);
    }

    fn chats_of(&self, user: &str) -> Result<Vec<Chat>, StoreFailure> {
        membership::chats_of(user)
            .map(|cs| cs.into_iter().map(from_wit).collect())
            .map_err(failure)
    }
}

fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Patch => "PATCH",
        _ => "OTHER",
    }
}

#[http_component]
fn handle(request: Request) -> Response {
    let user = caller_of(
        |name| request.header(name).and_then(|v| v.as_str()),
        config::caller_token_secret().as_deref(),
    );
    let core_request = core::Request {
        method: method_name(request.method()),
        path: request.path(),
        body: request.body(),
        user: user.as_deref(),
    };
    let reply = core::handle(&Host, &core_request);
    Response::builder()
        .status(reply.status)
        .header("content-type", "application/json")
        .body(reply.body.to_string())
        .build()
}
