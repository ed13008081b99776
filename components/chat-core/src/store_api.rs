//! The wire contract of host-gateway's internal store API: the
//! `chat:platform` imports as JSON over HTTP, for components that run
//! outside host-gateway (on Spin, through the `spin-adapter` component).
//!
//! One `POST {PREFIX}/{interface}/{function}` per WIT function, the
//! arguments as a JSON object, the answer as [`Answer`]. Both sides use
//! these types, so the contract is written once.

use serde::{Deserialize, Serialize};

/// Where the API is mounted.
pub const PREFIX: &str = "/internal/v1";

/// The calls the store API serves: the platform functions the HTTP
/// components use. The write path (`append`, receipts, presence leases)
/// stays with the WebSocket gateway and is not exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    PageBefore,
    PageAfter,
    GetMessage,
    Receipts,
    GetChat,
    IsMember,
    CreateChat,
    ChatsOf,
    UpdateMembers,
    QueryPresence,
    NextId,
    Settings,
}

impl Call {
    pub const ALL: [Call; 12] = [
        Call::PageBefore,
        Call::PageAfter,
        Call::GetMessage,
        Call::Receipts,
        Call::GetChat,
        Call::IsMember,
        Call::CreateChat,
        Call::ChatsOf,
        Call::UpdateMembers,
        Call::QueryPresence,
        Call::NextId,
        Call::Settings,
    ];

    /// `{interface}/{function}`, as named in `wit/platform.wit`.
    pub fn name(self) -> &'static str {
        match self {
            Call::PageBefore => "message-store/page-before",
            Call::PageAfter => "message-store/page-after",
            Call::GetMessage => "message-store/get",
            Call::Receipts => "message-store/receipts",
            Call::GetChat => "membership/get-chat",
            Call::IsMember => "membership/is-member",
            Call::CreateChat => "membership/create-chat",
            Call::ChatsOf => "membership/chats-of",
            Call::UpdateMembers => "membership/update-members",
            Call::QueryPresence => "presence-store/query",
            Call::NextId => "ids/next-id",
            Call::Settings => "config/current",
        }
    }

    /// The call named by `{interface}/{function}`.
    pub fn from_name(name: &str) -> Option<Call> {
        Call::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The request path.
    pub fn path(self) -> String {
        format!("{PREFIX}/{}", self.name())
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: u64,
    pub chat_id: String,
    pub sender_id: String,
    pub client_msg_id: String,
    pub content: String,
    pub timestamp: i64,
    /// The chat's message stored just before this one (0: none).
    pub prev_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    Direct,
    Group,
}

/// A chat and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chat {
    pub id: String,
    pub kind: ChatKind,
    pub name: Option<String>,
    pub members: Vec<String>,
    pub admins: Vec<String>,
    pub created_at: i64,
}

/// One member's receipt watermarks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub user_id: String,
    pub delivered_up_to: u64,
    pub read_up_to: u64,
}

/// What the presence store knows of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub user_id: String,
    pub online: bool,
    pub last_seen: i64,
}

/// The host's limits and timings (`config.current`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub max_content_bytes: u32,
    pub presence_ttl_ms: u64,
    pub max_group_members: u32,
}

/// `store-error`, as the component sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum StoreError {
    NotFound,
    Conflict(String),
    Unavailable,
    Invalid(String),
}

/// The body of every `200` answer: the WIT function's `result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer<T> {
    Ok(T),
    Err(StoreError),
}

impl<T> From<Answer<T>> for Result<T, StoreError> {
    fn from(answer: Answer<T>) -> Self {
        match answer {
            Answer::Ok(value) => Ok(value),
            Answer::Err(e) => Err(e),
        }
    }
}

impl<T> From<Result<T, StoreError>> for Answer<T> {
    fn from(result: Result<T, StoreError>) -> Self {
        match result {
            Ok(value) => Answer::Ok(value),
            Err(e) => Answer::Err(e),
        }
    }
}

/// Arguments of `page-before`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageBefore {
    pub chat: String,
    pub before: Option<u64>,
    pub limit: u32,
}

/// Arguments of `page-after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageAfter {
    pub chat: String,
    pub after: u64,
    pub limit: u32,
}

/// Arguments of `get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetMessage {
    pub chat: String,
    pub id: u64,
}

/// Arguments of the calls that name only a chat (`receipts`, `get-chat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatArg {
    pub chat: String,
}

/// Arguments of `is-member`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsMember {
    pub chat: String,
    pub user: String,
}

/// Arguments of `create-chat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateChat {
    pub chat: Chat,
}

/// Arguments of `chats-of`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserArg {
    pub user: String,
}

/// Arguments of `update-members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateMembers {
    pub chat: String,
    pub expected_members: Vec<String>,
    pub members: Vec<String>,
    pub admins: Vec<String>,
}

/// Arguments of presence `query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    pub users: Vec<String>,
}

/// Arguments of the calls that take none (`next-id`, `current`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every call's name round-trips, and unknown names are no call.
    #[test]
    fn call_names_round_trip() {
        for call in Call::ALL {
            assert_eq!(Call::from_name(call.name()), Some(call));
            assert!(call.path().starts_with("/internal/v1/"));
        }
        assert_eq!(Call::from_name("message-store/append"), None);
    }

    /// Answers are `{"ok":…}` or `{"err":{"kind","detail"?}}`. Arguments with
    /// unknown fields are refused; answers tolerate fields a newer gateway
    /// adds, so the gateway can be upgraded before the Spin app.
    #[test]
    fn answer_shapes() {
        let ok: Answer<Option<u64>> = Answer::Ok(Some(7));
        assert_eq!(serde_json::to_value(&ok).unwrap(), json!({"ok": 7}));
        let err: Answer<u64> = Answer::Err(StoreError::Conflict("changed".into()));
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"err": {"kind": "conflict", "detail": "changed"}})
        );
        let unavailable: Answer<u64> =
            serde_json::from_value(json!({"err": {"kind": "unavailable"}})).unwrap();
        assert_eq!(
            Result::from(unavailable),
            Err::<u64, _>(StoreError::Unavailable)
        );
        let extra = json!({"chat": "g:1", "before": null, "limit": 5, "evil": true});
        assert!(serde_json::from_value::<PageBefore>(extra).is_err());
        let newer = json!({"id": 5, "chatId": "c", "senderId": "a", "clientMsgId": "x",
            "content": "hi", "timestamp": 1, "prevId": 4, "editedAt": 9});
        assert_eq!(serde_json::from_value::<Message>(newer).unwrap().prev_id, 4);
    }
}
