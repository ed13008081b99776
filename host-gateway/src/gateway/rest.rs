//! The HTTP API: authenticate, then hand the request to an HTTP component.
//!
//! The components are `wasi:http` handlers (built with spin-sdk, so the same
//! files run on Spin). The host tells them who is calling with the
//! `x-switchboard-user` header, after removing any copy a client sent.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::App;
use crate::runtime::{HttpComponent, InvokeError};

/// The header carrying the authenticated caller to HTTP components.
pub const USER_HEADER: &str = "x-switchboard-user";
/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Which component serves a path under `/api/v1/`.
fn route(path: &str) -> Option<HttpComponent> {
    let segments: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    match segments.as_slice() {
        ["chats", _, "messages", ..] => Some(HttpComponent::History),
        ["chats"] | ["chats", _] | ["chats", _, "members", ..] => Some(HttpComponent::Chats),
        ["users", _, "presence"] => Some(HttpComponent::PresenceQuery),
        _ => None,
    }
}

/// `/api/v1/*`.
pub async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let Some(token) = bearer_token(request.headers()) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an Authorization: Bearer token is required",
        );
    };
    let identity = match app.auth.verify(token, None) {
        Ok(identity) => identity,
        Err(e) => return error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()),
    };
    let Some(component) = route(request.uri().path()) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    };

    let (mut parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                "request body too large",
            );
        }
    };
    parts.headers.remove(USER_HEADER);
    parts.headers.remove(http::header::AUTHORIZATION);
    match HeaderValue::from_str(&identity.user_id) {
        Ok(user) => parts.headers.insert(USER_HEADER, user),
        Err(_) => return error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid user id"),
    };
    // wasi:http wants an absolute URI.
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("http://switchboard{path_and_query}").parse() {
        Ok(uri) => uri,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid request URI",
            );
        }
    };

    match app
        .runtime
        .http(component, http::Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response.map(Body::from),
        Err(e @ InvokeError::Timeout { .. }) => {
            tracing::error!(error = %e, "http component timed out");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server took too long; retry",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "http component failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server failed to handle the request",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Message paths go to history, chat paths to chats, anything else nowhere.
    #[test]
    fn routes_by_path() {
        assert_eq!(
            route("/api/v1/chats/dm:a:b/messages"),
            Some(HttpComponent::History)
        );
        assert_eq!(route("/api/v1/chats"), Some(HttpComponent::Chats));
        assert_eq!(route("/api/v1/chats/g:1"), Some(HttpComponent::Chats));
        assert_eq!(
            route("/api/v1/users/bob/presence"),
            Some(HttpComponent::PresenceQuery)
        );
        assert_eq!(route("/api/v1/users"), None);
    }

    /// Bearer tokens are read case-insensitively; other schemes are not tokens.
    #[test]
    fn reads_bearer_tokens() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic abc"),
        );
        assert_eq!(bearer_token(&headers), None);
    }
}
