//! The internal store API: the `chat:platform` reads (and chat management)
//! as JSON over HTTP, for HTTP components that run outside this host — on
//! Spin, where the `spin-adapter` component turns their platform imports
//! into calls of this API.
//!
//! Off unless `SWITCHBOARD_STORE_API_TOKEN` is set. Every request must carry
//! that token as `Authorization: Bearer`; it is a service credential, not a
//! user's: the caller (the adapter) is trusted to have checked the user, as
//! the components are inside this host. The wire shapes live in
//! `chat_core::store_api`, shared with the adapter. Backend detail is logged
//! here and never sent: callers get the same `store-error` variants a
//! component gets in-process.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chat_core::store_api::{self as wire, Answer, Call};
use http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::App;
use super::rest::{bearer_token, error};
use crate::backend::{self, StoreError, StoreResult};

/// The shortest token accepted: 32 bytes, so a random token cannot be guessed.
pub const MIN_TOKEN_BYTES: usize = 32;

/// The largest page a caller may ask for (components ask for at most 101).
const MAX_PAGE: u32 = 1000;

/// The largest request body: a 256-member chat is well under it.
const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreApiError {
    #[error("the store API token must be at least {MIN_TOKEN_BYTES} bytes")]
    TokenTooShort,
    /// Callers send the token in a header, where surrounding whitespace is
    /// dropped: such a token could never match, so it is refused up front.
    #[error("the store API token must not contain whitespace")]
    TokenHasWhitespace,
}

struct StoreApi {
    app: Arc<App>,
    token: Vec<u8>,
}

/// The routes under `/internal/v1/`, answering only to `token`.
pub fn router(app: Arc<App>, token: &str) -> Result<Router, StoreApiError> {
    if token.chars().any(char::is_whitespace) {
        return Err(StoreApiError::TokenHasWhitespace);
    }
    if token.len() < MIN_TOKEN_BYTES {
        return Err(StoreApiError::TokenTooShort);
    }
    let api = Arc::new(StoreApi {
        app,
        token: token.as_bytes().to_vec(),
    });
    Ok(Router::new()
        .route(
            &format!("{}/{{interface}}/{{function}}", wire::PREFIX),
            post(handle),
        )
        // The token is checked before a body is read; bodies are bounded.
        .route_layer(middleware::from_fn_with_state(api.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api))
}

async fn require_token(State(api): State<Arc<StoreApi>>, request: Request, next: Next) -> Response {
    let authorised =
        bearer_token(request.headers()).is_some_and(|t| same_secret(t.as_bytes(), &api.token));
    if !authorised {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the store API token is missing or wrong",
        );
    }
    next.run(request).await
}

/// Compares without stopping at the first differing byte, so a caller
/// cannot find the token byte by byte from response times.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(expected).into()
}

async fn handle(
    State(api): State<Arc<StoreApi>>,
    Path((interface, function)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(call) = Call::from_name(&format!("{interface}/{function}")) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such store call");
    };
    match dispatch(&api.app, call, &body).await {
        Ok((status, answer)) => (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            answer,
        )
            .into_response(),
        Err(why) => error(StatusCode::BAD_REQUEST, "bad_request", &why),
    }
}

fn args<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad arguments: {e}"))
}

fn page_limit(limit: u32) -> Result<u32, String> {
    if limit > MAX_PAGE {
        return Err(format!("limit must be at most {MAX_PAGE}"));
    }
    Ok(limit)
}

fn store_error(e: StoreError) -> wire::StoreError {
    match e {
        StoreError::NotFound => wire::StoreError::NotFound,
        StoreError::Conflict(why) => wire::StoreError::Conflict(why),
        StoreError::Invalid(why) => wire::StoreError::Invalid(why),
        StoreError::Unavailable(detail) => {
            tracing::warn!(%detail, "backend unavailable (store API)");
            crate::metrics::backend_error();
            wire::StoreError::Unavailable
        }
    }
}

/// The status and JSON body of an answer: 503 when the backend is down, so
/// proxies, retries and metrics see the failure; 200 for the rest (a
/// `not-found` or `conflict` is a valid answer to the call).
fn answer<T: Serialize>(result: StoreResult<T>) -> (StatusCode, String) {
    let status = match &result {
        Err(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    let answer = Answer::from(result.map_err(store_error));
    // Plain data (strings, numbers, lists) always serialises.
    (status, serde_json::to_string(&answer).unwrap_or_default())
}

fn message(m: backend::Message) -> wire::Message {
    wire::Message {
        id: m.id,
        chat_id: m.chat_id,
        sender_id: m.sender_id,
        client_msg_id: m.client_msg_id,
        content: m.content,
        timestamp: m.timestamp,
        prev_id: m.prev_id,
    }
}

fn messages(page: StoreResult<Vec<backend::Message>>) -> StoreResult<Vec<wire::Message>> {
    page.map(|ms| ms.into_iter().map(message).collect())
}

fn chat_to_wire(c: backend::Chat) -> wire::Chat {
    wire::Chat {
        id: c.id,
        kind: match c.kind {
            backend::ChatKind::Direct => wire::ChatKind::Direct,
            backend::ChatKind::Group => wire::ChatKind::Group,
        },
        name: c.name,
        members: c.members,
        admins: c.admins,
        created_at: c.created_at,
    }
}

fn chat_from_wire(c: wire::Chat) -> backend::Chat {
    backend::Chat {
        id: c.id,
        kind: match c.kind {
            wire::ChatKind::Direct => backend::ChatKind::Direct,
            wire::ChatKind::Group => backend::ChatKind::Group,
        },
        name: c.name,
        members: c.members,
        admins: c.admins,
        created_at: c.created_at,
    }
}

/// Runs one call; `Err` is a malformed request (400), store failures are answers.
async fn dispatch(app: &App, call: Call, body: &[u8]) -> Result<(StatusCode, String), String> {
    let b = &app.backends;
    Ok(match call {
        Call::PageBefore => {
            let a: wire::PageBefore = args(body)?;
            let limit = page_limit(a.limit)?;
            answer(messages(
                b.messages.page_before(&a.chat, a.before, limit).await,
            ))
        }
        Call::PageAfter => {
            let a: wire::PageAfter = args(body)?;
            let limit = page_limit(a.limit)?;
            answer(messages(
                b.messages.page_after(&a.chat, a.after, limit).await,
            ))
        }
        Call::GetMessage => {
            let a: wire::GetMessage = args(body)?;
            answer(b.messages.get(&a.chat, a.id).await.map(|m| m.map(message)))
        }
        Call::Receipts => {
            let a: wire::ChatArg = args(body)?;
            answer(b.messages.receipts(&a.chat).await.map(|rs| {
                rs.into_iter()
                    .map(|r| wire::Receipt {
                        user_id: r.user_id,
                        delivered_up_to: r.marks.delivered_up_to,
                        read_up_to: r.marks.read_up_to,
                    })
                    .collect::<Vec<_>>()
            }))
        }
        Call::GetChat => {
            let a: wire::ChatArg = args(body)?;
            answer(b.chats.get_chat(&a.chat).await.map(|c| c.map(chat_to_wire)))
        }
        Call::IsMember => {
            let a: wire::IsMember = args(body)?;
            answer(b.chats.is_member(&a.chat, &a.user).await)
        }
        Call::CreateChat => {
            let a: wire::CreateChat = args(body)?;
            answer(
                b.chats
                    .create_chat(chat_from_wire(a.chat))
                    .await
                    .map(|(c, created)| (chat_to_wire(c), created)),
            )
        }
        Call::ChatsOf => {
            let a: wire::UserArg = args(body)?;
            answer(
                b.chats
                    .chats_of(&a.user)
                    .await
                    .map(|cs| cs.into_iter().map(chat_to_wire).collect::<Vec<_>>()),
            )
        }
        Call::UpdateMembers => {
            let a: wire::UpdateMembers = args(body)?;
            answer(
                b.chats
                    .update_members(&a.chat, &a.expected_members, a.members, a.admins)
                    .await
                    .map(chat_to_wire),
            )
        }
        Call::QueryPresence => {
            let a: wire::Users = args(body)?;
            answer(b.presence.query(&a.users).await.map(|ps| {
                ps.into_iter()
                    .map(|p| wire::Presence {
                        user_id: p.user_id,
                        online: p.online,
                        last_seen: p.last_seen,
                    })
                    .collect::<Vec<_>>()
            }))
        }
        Call::NextId => {
            let _: wire::NoArgs = args(body)?;
            answer(Ok(app.runtime.shared().ids.next_id()))
        }
        Call::Settings => {
            let _: wire::NoArgs = args(body)?;
            let s = app.runtime.shared().settings;
            answer(Ok(wire::Settings {
                max_content_bytes: s.max_content_bytes,
                presence_ttl_ms: s.presence_ttl_ms,
                max_group_members: s.max_group_members,
            }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the exact token matches; a prefix, an extension or a one-byte change does not.
    #[test]
    fn token_comparison() {
        let token = b"0123456789abcdef0123456789abcdef";
        assert!(same_secret(token, token));
        assert!(!same_secret(&token[..31], token));
        let mut longer = token.to_vec();
        longer.push(b'x');
        assert!(!same_secret(&longer, token));
        let mut changed = token.to_vec();
        changed[31] = b'g';
        assert!(!same_secret(&changed, token));
        assert!(!same_secret(b"", token));
    }

    /// Backend detail stays in the log: callers see the bare variant.
    #[test]
    fn unavailable_hides_detail() {
        let (status, body) = answer::<u64>(Err(StoreError::Unavailable(
            "redis at 10.0.0.1 down".into(),
        )));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, r#"{"err":{"kind":"unavailable"}}"#);
        let (status, body) = answer::<u64>(Err(StoreError::Conflict("members changed".into())));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            r#"{"err":{"kind":"conflict","detail":"members changed"}}"#
        );
    }
}
