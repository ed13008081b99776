//! Binds `core` to spin-sdk's request type and the `chat:platform` imports.

use chat_core::http::{Reply, caller_of};
use chat_core::receipts::Marks;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

use crate::core::{self, Message, StoreFailure};

wit_bindgen::generate!({ path: "../../wit", world: "http-platform" });

use chat::platform::{config, membership, message_store, types};

struct Host;

/// What the reply depends on; the backend's detail was logged by the host.
fn failure(e: types::StoreError) -> StoreFailure {
    match e {
        types::StoreError::Unavailable => StoreFailure::Unavailable,
        types::StoreError::NotFound => StoreFailure::NotFound,
        types::StoreError::Conflict(_) | types::StoreError::Invalid(_) => StoreFailure::Failed,
    }
}

fn message(m: types::Message) -> Message {
    Message {
        id: m.id,
        chat_id: m.chat_id,
        sender_id: m.sender_id,
        content: m.content,
        timestamp: m.timestamp,
        prev_id: m.prev_id,
    }
}

impl core::Platform for Host {
    fn members(&self, chat: &str) -> Result<Option<Vec<String>>, StoreFailure> {
        let found = membership::get_chat(chat).map_err(failure)?;
        Ok(found.map(|c| c.members))
    }

    fn page_before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreFailure> {
        let page = message_store::page_before(chat, before, limit).map_err(failure)?;
        Ok(page.into_iter().map(message).collect())
    }

    fn page_after(&self, chat: &str, after: u64, limit: u32) -> Result<Vec<Message>, StoreFailure> {
        let page = message_store::page_after(chat, after, limit).map_err(failure)?;
        Ok(page.into_iter().map(message).collect())
    }

    fn get(&self, chat: &str, id: u64) -> Result<Option<Message>, StoreFailure> {
        message_store::get(chat, id)
            .map(|m| m.map(message))
            .map_err(failure)
    }

    fn receipts(&self, chat: &str) -> Result<Vec<(String, Marks)>, StoreFailure> {
        let all = message_store::receipts(chat).map_err(failure)?;
        Ok(all
            .into_iter()
            .map(|r| {
                (
                    r.user_id,
                    Marks {
                        delivered_up_to: r.delivered_up_to,
                        read_up_to: r.read_up_to,
                    },
                )
            })
            .collect())
    }
}

fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Patch => "PATCH",
        Method::Head => "HEAD",
        Method::Options => "OPTIONS",
        _ => "OTHER",
    }
}

fn respond(reply: Reply) -> Response {
    Response::builder()
        .status(reply.status)
        .header("content-type", "application/json")
        .body(reply.body.to_string())
        .build()
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
        query: request.query(),
        user: user.as_deref(),
    };
    respond(core::handle(&Host, &core_request))
}
