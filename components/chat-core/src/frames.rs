//! Server-to-client frames, built in one place so every component speaks
//! the protocol of docs/protocol.md the same way.

use serde_json::{Value, json};

/// `{"type":"error","code","message","clientMsgId"?}`.
pub fn error(code: &str, message: &str, client_msg_id: Option<&str>) -> String {
    let mut frame = json!({"type": "error", "code": code, "message": message});
    if let Some(id) = client_msg_id {
        frame["clientMsgId"] = Value::from(id);
    }
    frame.to_string()
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

/// `{"type":"receiveMessage",...}`.
pub fn receive_message(m: &MessageView<'_>) -> String {
    json!({
        "type": "receiveMessage",
        "messageId": m.id.to_string(),
        "chatId": m.chat_id,
        "senderId": m.sender_id,
        "content": m.content,
        "timestamp": m.timestamp,
        "prevMessageId": m.prev_id.to_string(),
    })
    .to_string()
}

/// The `sent` ack: the message is durably stored under `message_id`.
pub fn sent_ack(message_id: u64, chat_id: &str, client_msg_id: &str) -> String {
    json!({
        "type": "ack",
        "messageId": message_id.to_string(),
        "chatId": chat_id,
        "clientMsgId": client_msg_id,
        "status": "sent",
    })
    .to_string()
}

/// A receipt ack: `user_id` (or, without it, every member) has reached
/// `status` up to `message_id`.
pub fn receipt_ack(message_id: u64, chat_id: &str, status: &str, user_id: Option<&str>) -> String {
    let mut frame = json!({
        "type": "ack",
        "messageId": message_id.to_string(),
        "chatId": chat_id,
        "status": status,
    });
    if let Some(user) = user_id {
        frame["userId"] = Value::from(user);
    }
    frame.to_string()
}

/// `{"type":"typing","chatId","userId"}`.
pub fn typing(chat_id: &str, user_id: &str) -> String {
    json!({"type": "typing", "chatId": chat_id, "userId": user_id}).to_string()
}

#[cfg(test)]
mod tests {
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
}
