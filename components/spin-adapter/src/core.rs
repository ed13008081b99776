//! Calling the store API: where a call goes, what it sends, and how every
//! way it can fail becomes a `store-error` the calling component can act on.

use chat_core::store_api::{Answer, Call, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The Spin variable holding the store API's base URL, e.g. `http://gateway:8080`.
pub const URL_VARIABLE: &str = "store_api_url";
/// The Spin variable holding the store API's bearer token.
pub const TOKEN_VARIABLE: &str = "store_api_token";
/// The Spin variable holding the secret client tokens are signed with (the
/// gateway's `SWITCHBOARD_JWT_SECRET`).
pub const CALLER_TOKEN_SECRET_VARIABLE: &str = "jwt_secret";

/// The request could not be made or got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportFailure(pub String);

/// Sends one POST to the store API.
pub trait Transport {
    /// POSTs a JSON `body` to the absolute `url` with `token` as the bearer
    /// token; returns the answer's status and body.
    fn post(
        &self,
        url: &str,
        token: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), TransportFailure>;
}

/// Where the store API is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    base: String,
    token: String,
}

impl Endpoint {
    /// Checks the configured values: an `http(s)://` base URL (a trailing
    /// `/` is dropped) and a non-empty token.
    pub fn new(base: &str, token: &str) -> Result<Self, StoreError> {
        let base = base.trim().trim_end_matches('/');
        let host = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        if host.is_none_or(str::is_empty) {
            return Err(StoreError::Invalid(format!(
                "spin variable {URL_VARIABLE} must be an http(s) URL"
            )));
        }
        if token.trim().is_empty() {
            return Err(StoreError::Invalid(format!(
                "spin variable {TOKEN_VARIABLE} is empty"
            )));
        }
        Ok(Self {
            base: base.to_owned(),
            token: token.trim().to_owned(),
        })
    }

    /// The URL of `call`.
    pub fn url(&self, call: Call) -> String {
        format!("{}{}", self.base, call.path())
    }

    /// Makes `call` with `args` and decodes its answer.
    ///
    /// Failures the caller may retry (no answer, an overloaded or failing
    /// gateway) are `unavailable`; a refused token or a malformed answer are
    /// `invalid`, since retrying cannot fix a misconfiguration.
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        transport: &impl Transport,
        call: Call,
        args: &A,
    ) -> Result<R, StoreError> {
        let body = serde_json::to_vec(args)
            .map_err(|e| StoreError::Invalid(format!("encoding arguments: {e}")))?;
        let (status, answer) = transport
            .post(&self.url(call), &self.token, body)
            .map_err(|_| StoreError::Unavailable)?;
        match status {
            200 => serde_json::from_slice::<Answer<R>>(&answer)
                .map(Result::from)
                .unwrap_or_else(|e| {
                    Err(StoreError::Invalid(format!(
                        "malformed store API answer to {}: {e}",
                        call.name()
                    )))
                }),
            401 | 403 => Err(StoreError::Invalid(
                "the store API refused the token".into(),
            )),
            429 | 500..=599 => Err(StoreError::Unavailable),
            other => Err(StoreError::Invalid(format!(
                "the store API answered {other} to {}",
                call.name()
            ))),
        }
    }
}

/// What the adapter says for platform functions the store API does not
/// serve: the WebSocket write path (appends, receipts, presence leases)
/// runs in host-gateway, never on Spin.
pub fn not_on_spin(function: &str) -> StoreError {
    StoreError::Invalid(format!(
        "{function} is not available on Spin: it belongs to the WebSocket gateway"
    ))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use chat_core::store_api::{ChatArg, Message, PageBefore};

    use super::*;

    /// Answers every request with `answer` and remembers what was sent.
    struct Canned {
        answer: Result<(u16, Vec<u8>), TransportFailure>,
        sent: RefCell<Vec<(String, String, serde_json::Value)>>,
    }

    impl Canned {
        fn new(answer: Result<(u16, &str), TransportFailure>) -> Self {
            Self {
                answer: answer.map(|(s, b)| (s, b.as_bytes().to_vec())),
                sent: RefCell::new(vec![]),
            }
        }
    }

    impl Transport for Canned {
        fn post(
            &self,
            url: &str,
            token: &str,
            body: Vec<u8>,
        ) -> Result<(u16, Vec<u8>), TransportFailure> {
            let body = serde_json::from_slice(&body).unwrap();
            self.sent
                .borrow_mut()
                .push((url.to_owned(), token.to_owned(), body));
            self.answer.clone()
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint::new("http://gateway:8080/", "secret").unwrap()
    }

    fn page(transport: &Canned) -> Result<Vec<Message>, StoreError> {
        let args = PageBefore {
            chat: "g:1".into(),
            before: Some(9),
            limit: 2,
        };
        endpoint().call(transport, Call::PageBefore, &args)
    }

    /// A call goes to its path under the base URL, with the token and the arguments as JSON.
    #[test]
    fn sends_the_call() {
        let transport = Canned::new(Ok((200, r#"{"ok":[]}"#)));
        assert_eq!(page(&transport), Ok(vec![]));
        let sent = transport.sent.borrow();
        assert_eq!(
            sent[0],
            (
                "http://gateway:8080/internal/v1/message-store/page-before".to_owned(),
                "secret".to_owned(),
                serde_json::json!({"chat": "g:1", "before": 9, "limit": 2}),
            )
        );
    }

    /// Any http(s) base with a host is accepted, a one-letter host too; no host or another scheme is not.
    #[test]
    fn endpoint_needs_an_http_base_with_a_host() {
        assert!(Endpoint::new("http://g", "t").is_ok());
        assert!(Endpoint::new("https://gateway.internal:8080/", "t").is_ok());
        for bad in ["http://", "https://", "ftp://gateway", "gateway:8080", ""] {
            assert!(Endpoint::new(bad, "t").is_err(), "{bad}");
        }
        assert!(Endpoint::new("http://g", " ").is_err());
    }

    /// Answers decode into values and store errors pass through unchanged.
    #[test]
    fn decodes_answers() {
        let ok = Canned::new(Ok((
            200,
            r#"{"ok":[{"id":5,"chatId":"g:1","senderId":"bob","clientMsgId":"c","content":"hi","timestamp":1,"prevId":4}]}"#,
        )));
        assert_eq!(page(&ok).unwrap()[0].id, 5);
        let conflict = Canned::new(Ok((
            200,
            r#"{"err":{"kind":"conflict","detail":"members changed"}}"#,
        )));
        assert_eq!(
            page(&conflict),
            Err(StoreError::Conflict("members changed".into()))
        );
        let found: Result<Option<chat_core::store_api::Chat>, _> = endpoint().call(
            &Canned::new(Ok((200, r#"{"ok":null}"#))),
            Call::GetChat,
            &ChatArg { chat: "g:2".into() },
        );
        assert_eq!(found, Ok(None));
    }

    /// No answer, 5xx and 429 may be retried (unavailable); a refused token or garbage may not (invalid).
    #[test]
    fn failures() {
        let down = Canned::new(Err(TransportFailure("connection refused".into())));
        assert_eq!(page(&down), Err(StoreError::Unavailable));
        for status in [500, 502, 503, 429] {
            let busy = Canned::new(Ok((status, "")));
            assert_eq!(page(&busy), Err(StoreError::Unavailable), "{status}");
        }
        for status in [401, 403, 404, 400] {
            let refused = Canned::new(Ok((status, "{}")));
            assert!(
                matches!(page(&refused), Err(StoreError::Invalid(_))),
                "{status}"
            );
        }
        let garbage = Canned::new(Ok((200, "<html>")));
        assert!(matches!(page(&garbage), Err(StoreError::Invalid(_))));
    }

    /// Only http(s) base URLs and non-empty tokens are accepted.
    #[test]
    fn endpoint_configuration() {
        assert_eq!(
            Endpoint::new(" https://g.internal:8443/ ", "t")
                .unwrap()
                .url(Call::NextId),
            "https://g.internal:8443/internal/v1/ids/next-id"
        );
        for bad in ["", "gateway:8080", "ftp://gateway", "http://"] {
            assert!(Endpoint::new(bad, "t").is_err(), "{bad}");
        }
        assert!(Endpoint::new("http://gateway", " ").is_err());
    }
}
