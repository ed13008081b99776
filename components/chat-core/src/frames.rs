//! Server-to-client frames, built in one place so every component speaks
//! the protocol of docs/protocol.md the same way.

use serde::{Serialize, Serializer};

// Frames are typed structs, not `json!` values: building a map and
// formatting it through `Display` was most of a fan-out's time in Wasm.

/// Message ids travel as decimal strings (JavaScript numbers lose u64 precision).
struct DecimalId(u64);

impl Serialize for DecimalId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(itoa::Buffer::new().format(self.0))
    }
}

fn to_json(frame: &impl Serialize) -> String {
    // Serializing plain structs of strings and numbers into a String cannot fail.
    serde_json::to_string(frame).expect("frame serializes")
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "error", rename_all = "camelCase")]
struct ErrorFrame<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
}

/// `{"type":"error","code","message","clientMsgId"?}`.
pub fn error(code: &str, message: &str, client_msg_id: Option<&str>) -> String {
    to_json(&ErrorFrame {
        code,
        message,
        client_msg_id,
    })
}

/// A stored message as the fields the frames and the history API share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView<'a> {
    pub id: u64,
    pub chat_id: &'a str,
    pub sender_id: &'a str,
    pub content: &'a str,
    pub timestamp: i64,
    /// The message before this one in the chat (0: none): receivers detect gaps with it.
    pub prev_id: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "receiveMessage", rename_all = "camelCase")]
struct ReceiveMessageFrame<'a> {
    message_id: DecimalId,
    chat_id: &'a str,
    sender_id: &'a str,
    content: &'a str,
    timestamp: i64,
    prev_message_id: DecimalId,
}

/// `{"type":"receiveMessage",...}`.
pub fn receive_message(m: &MessageView<'_>) -> String {
    to_json(&ReceiveMessageFrame {
        message_id: DecimalId(m.id),
        chat_id: m.chat_id,
        sender_id: m.sender_id,
        content: m.content,
        timestamp: m.timestamp,
        prev_message_id: DecimalId(m.prev_id),
    })
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "ack", rename_all = "camelCase")]
struct AckFrame<'a> {
    message_id: DecimalId,
    chat_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

/// The `sent` ack: the message is durably stored under `message_id`.
pub fn sent_ack(message_id: u64, chat_id: &str, client_msg_id: &str) -> String {
    to_json(&AckFrame {
        message_id: DecimalId(message_id),
        chat_id,
        client_msg_id: Some(client_msg_id),
        status: "sent",
        user_id: None,
    })
}

/// A receipt ack: `user_id` (or, without it, every member) has reached
/// `status` up to `message_id`.
pub fn receipt_ack(message_id: u64, chat_id: &str, status: &str, user_id: Option<&str>) -> String {
    to_json(&AckFrame {
        message_id: DecimalId(message_id),
        chat_id,
        client_msg_id: None,
        status,
        user_id,
    })
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "typing", rename_all = "camelCase")]
struct TypingFrame<'a> {
    chat_id: &'a str,
    user_id: &'a str,
}

/// `{"type":"typing","chatId","userId"}`.
pub fn typing(chat_id: &str, user_id: &str) -> String {
    to_json(&TypingFrame { chat_id, user_id })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    /// Error frames echo the client's id only when there is one.
    #[test]
    fn error_frame_shape() {
        let with = parse(&error("bad_json", "nope", Some("c1")));
        assert_eq!(
            with,
            json!({"type":"error","code":"bad_json","message":"nope","clientMsgId":"c1"})
        );
        assert!(parse(&error("x", "y", None)).get("clientMsgId").is_none());
    }

    /// Message ids go out as decimal strings, timestamps as numbers.
    #[test]
    fn ids_are_strings_on_the_wire() {
        let m = MessageView {
            id: u64::MAX,
            chat_id: "c",
            sender_id: "a",
            content: "hi",
            timestamp: 5,
            prev_id: 3,
        };
        let frame = parse(&receive_message(&m));
        assert_eq!(frame["messageId"], "18446744073709551615");
        assert_eq!(frame["timestamp"], 5);
        assert_eq!(frame["prevMessageId"], "3");
        assert_eq!(parse(&sent_ack(7, "c", "x"))["messageId"], "7");
        assert_eq!(
            parse(&receipt_ack(7, "c", "read", Some("bob")))["userId"],
            "bob"
        );
    }

    /// Each frame has exactly the fields docs/protocol.md lists, optional ones
    /// only when given.
    #[test]
    fn frames_have_the_documented_fields() {
        let m = MessageView {
            id: 12,
            chat_id: "dm:a:b",
            sender_id: "a",
            content: "say \"hi\"\n",
            timestamp: -1,
            prev_id: 0,
        };
        assert_eq!(
            parse(&receive_message(&m)),
            json!({"type":"receiveMessage","messageId":"12","chatId":"dm:a:b","senderId":"a","content":"say \"hi\"\n","timestamp":-1,"prevMessageId":"0"})
        );
        assert_eq!(
            parse(&sent_ack(12, "dm:a:b", "c1")),
            json!({"type":"ack","messageId":"12","chatId":"dm:a:b","clientMsgId":"c1","status":"sent"})
        );
        assert_eq!(
            parse(&receipt_ack(12, "dm:a:b", "delivered", None)),
            json!({"type":"ack","messageId":"12","chatId":"dm:a:b","status":"delivered"})
        );
        assert_eq!(
            parse(&typing("dm:a:b", "a")),
            json!({"type":"typing","chatId":"dm:a:b","userId":"a"})
        );
    }
}
