//! What the HTTP components share: replies, errors, paths and query strings.
//!
//! The components' cores take plain strings and return a `Reply`, so their
//! routing and rules are tested natively; the spin-sdk shell converts.

use serde_json::{Value, json};

/// The header in which the gateway names the authenticated caller.
pub const USER_HEADER: &str = "x-switchboard-user";

/// Who is calling. On host-gateway (`token_secret` unset) the gateway has
/// checked the client's token and names the caller in `USER_HEADER`. Where
/// a component answers clients directly (Spin), `token_secret` is set and
/// the caller is whoever the bearer token says: the header, which any client
/// can send, is ignored. `None` means unauthenticated (answer 401).
pub fn caller(
    user_header: Option<&str>,
    authorization: Option<&str>,
    token_secret: Option<&str>,
    now_secs: i64,
) -> Option<String> {
    match token_secret {
        None => user_header.map(str::to_owned),
        Some(secret) => {
            let token = authorization?.strip_prefix("Bearer ")?.trim();
            crate::token::verify_hs256(token, secret.as_bytes(), now_secs).ok()
        }
    }
}

/// `caller` of a request, now: `header` reads its headers by lower-case name.
pub fn caller_of<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    token_secret: Option<&str>,
) -> Option<String> {
    caller(
        header(USER_HEADER),
        header("authorization"),
        token_secret,
        unix_now_secs(),
    )
}

/// Seconds since the Unix epoch, for `caller` (Wasm reads the host's clock).
pub fn unix_now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Why a platform call failed, reduced to what an HTTP reply depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// The backend is down or slow: `503`, and the client may retry.
    Unavailable,
    /// The addressed chat does not exist (any more): `404`.
    NotFound,
    /// A conflict or a broken backend limit: `500`, since the same request
    /// would fail again, telling the client to retry would be wrong.
    Failed,
}

impl From<StoreFailure> for Reply {
    fn from(failure: StoreFailure) -> Self {
        match failure {
            StoreFailure::Unavailable => Self::unavailable(),
            StoreFailure::NotFound => Self::chat_not_found(),
            StoreFailure::Failed => Self::internal(),
        }
    }
}

/// An HTTP response: a status and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }

    pub fn created(body: Value) -> Self {
        Self { status: 201, body }
    }

    /// `{"code","message"}` with `status`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"code": code, "message": message.into()}),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::error(400, "bad_request", message)
    }

    pub fn unauthorized() -> Self {
        Self::error(401, "unauthorized", "authentication is required")
    }

    pub fn chat_not_found() -> Self {
        Self::error(
            404,
            "chat_not_found",
            "no such chat, or you are not a member of it",
        )
    }

    pub fn not_found() -> Self {
        Self::error(404, "not_found", "no such endpoint")
    }

    pub fn method_not_allowed() -> Self {
        Self::error(405, "method_not_allowed", "method not allowed here")
    }

    pub fn unavailable() -> Self {
        Self::error(503, "unavailable", "storage is unavailable; retry")
    }

    pub fn internal() -> Self {
        Self::error(500, "internal", "the server failed to handle the request")
    }
}

/// Decodes `%XX` escapes (and nothing else: `+` stays `+` in paths). `None`
/// for broken escapes or a result that is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The path's segments after `/api/v1/`, each percent-decoded; `None` for
/// other paths or undecodable segments.
pub fn api_segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix("/api/v1/")?;
    rest.split('/').map(percent_decode).collect()
}

/// Query parameters as decoded pairs (`+` is a space, as in forms).
pub fn query_pairs(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((
                percent_decode(&k.replace('+', " "))?,
                percent_decode(&v.replace('+', " "))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a token secret the header is ignored and only a valid token counts.
    #[test]
    fn caller_comes_from_the_token_when_components_check_tokens() {
        assert_eq!(caller(Some("alice"), None, None, 0), Some("alice".into()));
        assert_eq!(caller(Some("alice"), None, Some("s3cret"), 0), None);
        assert_eq!(
            caller(Some("alice"), Some("Bearer junk"), Some("s3cret"), 0),
            None
        );
    }

    /// Percent-escapes decode; broken ones are refused.
    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("dm%3Aalice%3abob").as_deref(),
            Some("dm:alice:bob")
        );
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    /// Only an outage asks the client to retry; other failures are 404 or 500.
    #[test]
    fn store_failures_map_to_statuses() {
        let status = |f| Reply::from(f).status;
        assert_eq!(status(StoreFailure::Unavailable), 503);
        assert_eq!(status(StoreFailure::NotFound), 404);
        assert_eq!(status(StoreFailure::Failed), 500);
    }

    /// API paths split into decoded segments.
    #[test]
    fn segments_and_queries() {
        assert_eq!(
            api_segments("/api/v1/chats/dm%3Aa%3Ab/messages").unwrap(),
            ["chats", "dm:a:b", "messages"]
        );
        assert_eq!(api_segments("/other"), None);
        let q = query_pairs("cursor=12&limit=5&flag").unwrap();
        assert_eq!(
            q,
            [
                ("cursor".into(), "12".into()),
                ("limit".into(), "5".into()),
                ("flag".into(), String::new())
            ]
        );
    }
}
