//! Binds `core` to spin-sdk's request type and the `chat:platform` imports.

use std::collections::HashSet;

use chat_core::http::caller_of;
use chat_core::presence::{Presence, Unavailable};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

use crate::core;

wit_bindgen::generate!({ path: "../../wit", world: "http-platform" });

use chat::platform::{config, membership, presence_store};

struct Host;

impl core::Platform for Host {
    fn contacts(&self, user: &str) -> Result<HashSet<String>, Unavailable> {
        let chats = membership::chats_of(user).map_err(|_| Unavailable)?;
        let mut contacts: HashSet<String> = chats.into_iter().flat_map(|c| c.members).collect();
        contacts.insert(user.to_owned());
        Ok(contacts)
    }

    fn query(&self, user: &str) -> Result<Option<Presence>, Unavailable> {
        let found = presence_store::query(&[user.to_owned()]).map_err(|_| Unavailable)?;
        Ok(found.into_iter().next().map(|p| Presence {
            user_id: p.user_id,
            online: p.online,
            last_seen: p.last_seen,
        }))
    }
}

#[http_component]
fn handle(request: Request) -> Response {
    let user = caller_of(
        |name| request.header(name).and_then(|v| v.as_str()),
        config::caller_token_secret().as_deref(),
    );
    let method = if matches!(request.method(), Method::Get) {
        "GET"
    } else {
        "OTHER"
    };
    let reply = core::handle_http(&Host, method, request.path(), user.as_deref());
    Response::builder()
        .status(reply.status)
        .header("content-type", "application/json")
        .body(reply.body.to_string())
        .build()
}
