//! The part of a client frame the host reads: enough to route it.
//!
//! Validation of the fields is the components' business; the host only
//! needs the `type` (which component), the `chatId` (which lane, for order)
//! and the `clientMsgId` (to echo it if the component itself fails).

use serde::Deserialize;

/// Which component a frame goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `sendMessage`, `ack`, `typing`: the chat write path.
    Send,
    /// `heartbeat`, `subscribePresence`: presence.
    Presence,
}

/// A frame's routing fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub kind: String,
    pub route: Route,
    pub chat_id: Option<String>,
    pub client_msg_id: Option<String>,
}

/// Why a frame could not be routed; each maps to an `error` frame code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("frame is not a JSON object with a string \"type\"")]
    BadJson { client_msg_id: Option<String> },
    #[error("unknown frame type")]
    UnknownType {
        kind: String,
        client_msg_id: Option<String>,
    },
}

impl EnvelopeError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadJson { .. } => "bad_json",
            Self::UnknownType { .. } => "unknown_type",
        }
    }

    pub fn client_msg_id(&self) -> Option<&str> {
        match self {
            Self::BadJson { client_msg_id } | Self::UnknownType { client_msg_id, .. } => {
                client_msg_id.as_deref()
            }
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::BadJson { .. } => self.to_string(),
            Self::UnknownType { kind, .. } => format!("unknown frame type {kind:?}"),
        }
    }
}

/// Fields are typed loosely (any JSON value) so that a wrong type in one of
/// them is the component's `invalid_frame`, not the host's `bad_json`.
#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    #[serde(rename = "chatId")]
    chat_id: Option<serde_json::Value>,
    #[serde(rename = "clientMsgId")]
    client_msg_id: Option<serde_json::Value>,
}

fn string(v: Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Reads a frame's routing fields.
pub fn parse(text: &str) -> Result<Envelope, EnvelopeError> {
    // serde would also read a struct from a JSON array; frames must be objects.
    if !text.trim_start().starts_with('{') {
        return Err(EnvelopeError::BadJson {
            client_msg_id: None,
        });
    }
    let raw: Raw = serde_json::from_str(text).map_err(|_| EnvelopeError::BadJson {
        client_msg_id: None,
    })?;
    let client_msg_id = string(raw.client_msg_id);
    let Some(kind) = string(raw.kind) else {
        return Err(EnvelopeError::BadJson { client_msg_id });
    };
    let route = match kind.as_str() {
        "sendMessage" | "ack" | "typing" => Route::Send,
        "heartbeat" | "subscribePresence" => Route::Presence,
        _ => {
            return Err(EnvelopeError::UnknownType {
                kind,
                client_msg_id,
            });
        }
    };
    Ok(Envelope {
        kind,
        route,
        chat_id: string(raw.chat_id),
        client_msg_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sendMessage frame routes to the send component with its chat and client id.
    #[test]
    fn routes_send_message() {
        let e =
            parse(r#"{"type":"sendMessage","chatId":"dm:a:b","clientMsgId":"c1","content":"hi"}"#)
                .unwrap();
        assert_eq!(e.route, Route::Send);
        assert_eq!(e.chat_id.as_deref(), Some("dm:a:b"));
        assert_eq!(e.client_msg_id.as_deref(), Some("c1"));
    }

    /// Non-objects, broken JSON and a missing or non-string type are bad_json.
    #[test]
    fn rejects_non_frames() {
        for text in [
            "",
            "nope",
            "[\"sendMessage\"]",
            "{\"type\":1}",
            "{\"chatId\":\"x\"}",
            "{\"type\":\"ack\"",
        ] {
            assert_eq!(parse(text).unwrap_err().code(), "bad_json", "{text}");
        }
    }

    /// An unknown type is reported with the client's id echoed.
    #[test]
    fn unknown_type_keeps_client_msg_id() {
        let err = parse(r#"{"type":"launchRocket","clientMsgId":"x"}"#).unwrap_err();
        assert_eq!(err.code(), "unknown_type");
        assert_eq!(err.client_msg_id(), Some("x"));
    }

    /// A wrongly typed chatId is left for the component to refuse, not bad_json.
    #[test]
    fn loosely_typed_fields_still_route() {
        let e = parse(r#"{"type":"sendMessage","chatId":42}"#).unwrap();
        assert_eq!(e.chat_id, None);
    }
}
