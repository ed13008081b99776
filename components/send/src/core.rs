//! The rules of the chat write path: `sendMessage`, `ack` (receipts) and
//! `typing`, handled for a batch of frames in arrival order.
//!
//! Every valid `sendMessage` between two other frames is appended in one
//! store call (one durable commit); its `sent` ack goes out only after the
//! store said it is durable. A batch's `ack` or `typing` frame first flushes
//! the sends queued before it, and a refused `sendMessage` waits in the same
//! queue, so effects and replies keep the order of the frames.

use std::borrow::Cow;
use std::collections::HashMap;

use chat_core::frames;
use chat_core::ids::parse_message_id;
use chat_core::receipts::{Marks, Status};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A client frame, as the host hands it over.
#[derive(Debug, Clone)]
pub struct Frame {
    pub connection: u64,
    pub user_id: String,
    pub kind: String,
    pub body: String,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub chat_id: String,
    pub sender_id: String,
    pub client_msg_id: String,
    pub content: String,
    pub timestamp: i64,
    pub prev_id: u64,
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub chat_id: String,
    pub sender_id: String,
    pub client_msg_id: String,
    pub content: String,
    pub timestamp: i64,
}

/// The store's answer to one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub message: Message,
    pub duplicate: bool,
}

/// A backend failure, as the component sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound,
    Conflict,
    Unavailable,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatKind {
    Direct,
    Group,
}

/// What the write path needs to know of a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatInfo {
    pub kind: ChatKind,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// What the component needs from the host.
pub trait Platform {
    fn max_content_bytes(&self) -> u32;
    /// Each of `chats`, in order (`None` where it does not exist). The
    /// batch's chats are asked for in one call, so a remote store reads
    /// them concurrently.
    fn get_chats(&self, chats: &[&str]) -> Vec<Result<Option<ChatInfo>, StoreError>>;
    fn append(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>>;
    fn get_message(&self, chat: &str, id: u64) -> Result<Option<Message>, StoreError>;
    fn advance_receipt(
        &self,
        chat: &str,
        user: &str,
        kind: ReceiptKind,
        up_to: u64,
    ) -> Result<(Marks, bool), StoreError>;
    fn receipts(&self, chat: &str) -> Result<Vec<(String, Marks)>, StoreError>;
    /// True (and marks `key` for `window_ms`) unless `key` is marked.
    fn throttle(&self, key: &str, window_ms: u64) -> Result<bool, StoreError>;
    fn send_to_connection(&self, connection: u64, frame: &str);
    fn send_to_users(&self, users: &[String], frame: &str, skip: Option<u64>);
}

/// A member's typing is relayed at most once per this window per chat;
/// clients repeat `typing` while the user types, and the rest are dropped.
pub const TYPING_WINDOW_MS: u64 = 2_000;

/// Why a frame was refused: the `error` frame's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_frame", message)
    }

    fn not_member() -> Self {
        Self::new(
            "chat_not_found",
            "no such chat, or you are not a member of it",
        )
    }

    fn store(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable => Self::new("unavailable", "storage is unavailable; retry"),
            _ => Self::new("internal", "the server could not handle this frame"),
        }
    }
}

/// A `sendMessage` waiting for the batch's append: either a valid message
/// to store, or a refusal held back so that it is not sent ahead of the
/// `sent` acks of earlier frames.
enum PendingSend {
    /// Its message is the next one of the batch's `to_store`.
    Store {
        connection: u64,
        client_msg_id: String,
    },
    Refused {
        connection: u64,
        reply: String,
    },
}

/// Handles a batch of frames; returns the messages to fan out: those it
/// stored, and stored ones that a sender retried (see `flush`).
pub fn handle_frames(platform: &impl Platform, frames: Vec<Frame>) -> Vec<Message> {
    let mut batch = Batch {
        platform,
        max_content_bytes: None,
        chats: HashMap::new(),
        pending: Vec::new(),
        to_store: Vec::new(),
        stored: Vec::new(),
    };
    // Every body is read first, so that the chats they name can be asked
    // for in one call; then the frames are acted on in order.
    let bodies: Vec<Body<'_>> = frames.iter().map(Body::of).collect();
    batch.read_chats(&bodies);
    for (frame, body) in frames.iter().zip(bodies) {
        batch.handle(frame, body);
    }
    batch.flush();
    batch.stored
}

/// A frame's body, read before the batch is acted on.
enum Body<'a> {
    /// A `sendMessage`'s fields (borrowed from the body), or why they are unusable.
    Send(Result<SendFields<'a>, (Refusal, Option<String>)>),
    /// An `ack` or `typing`, and the chat it seems to name. Its JSON object
    /// is built in its turn, so that a batch holds one at a time: a batch
    /// of odd bodies could otherwise outgrow the instance's memory.
    Object { chat: Option<Cow<'a, str>> },
    /// Any other type: refused, in its turn.
    Other,
}

/// Just the `chatId` of a body; everything else is skipped unparsed.
#[derive(Deserialize)]
struct ChatIdOnly<'a> {
    #[serde(borrow, rename = "chatId")]
    chat_id: Option<Cow<'a, str>>,
}

impl<'a> Body<'a> {
    fn of(frame: &'a Frame) -> Self {
        match frame.kind.as_str() {
            "sendMessage" => Self::Send(SendFields::parse(&frame.body)),
            "ack" | "typing" => Self::Object {
                chat: serde_json::from_str::<ChatIdOnly<'_>>(&frame.body)
                    .ok()
                    .and_then(|only| only.chat_id),
            },
            _ => Self::Other,
        }
    }

    /// The chat this frame names, if it names a plausible one: only a hint
    /// for the batch's read; each frame checks its own body in its turn.
    fn chat_id(&self) -> Option<&str> {
        let chat = match self {
            Self::Send(Ok(fields)) => fields.chat_id.as_ref(),
            Self::Object { chat: Some(chat) } => chat.as_ref(),
            _ => return None,
        };
        checked_chat_id(chat).ok()
    }
}

struct Batch<'p, P: Platform> {
    platform: &'p P,
    /// The content limit, asked of the host once per batch.
    max_content_bytes: Option<u32>,
    /// Chats looked up in this batch: a burst of sends to one chat reads it once.
    chats: HashMap<String, Option<ChatInfo>>,
    pending: Vec<PendingSend>,
    /// The messages of the `Store` entries of `pending`, in order.
    to_store: Vec<NewMessage>,
    stored: Vec<Message>,
}

fn object(body: &str) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_str(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Refusal::new("bad_json", "frame is not a JSON object")),
    }
}

fn string_field<'a>(frame: &'a Map<String, Value>, name: &str) -> Result<&'a str, Refusal> {
    match frame.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Refusal::invalid(format!("{name} must be a string"))),
        None => Err(Refusal::invalid(format!("{name} is required"))),
    }
}

fn chat_id_field(frame: &Map<String, Value>) -> Result<&str, Refusal> {
    checked_chat_id(string_field(frame, "chatId")?)
}

fn checked_chat_id(chat: &str) -> Result<&str, Refusal> {
    if chat.is_empty() || chat.len() > 200 {
        return Err(Refusal::invalid("chatId must be 1-200 characters"));
    }
    Ok(chat)
}

/// The fields of a `sendMessage`, before their values are checked.
///
/// A well-formed frame deserializes straight into this, borrowing its
/// strings. Anything else (a missing field, a wrong type, a repeated key)
/// fails that and is read again as a JSON object, whose refusals name the
/// field at fault: two paths, one set of answers.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendFields<'a> {
    #[serde(borrow)]
    client_msg_id: Cow<'a, str>,
    #[serde(borrow)]
    chat_id: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
    timestamp: i64,
}

impl<'a> SendFields<'a> {
    /// A well-formed frame borrows from `body`; anything else is read again
    /// as an object to name the field at fault.
    fn parse(body: &'a str) -> Result<Self, (Refusal, Option<String>)> {
        if let Ok(fields) = serde_json::from_str::<SendFields<'_>>(body) {
            return Ok(fields);
        }
        let parsed = object(body).map_err(|r| (r, None))?;
        SendFields::from_object(&parsed).map(SendFields::into_owned)
    }

    fn into_owned(self) -> SendFields<'static> {
        SendFields {
            client_msg_id: Cow::Owned(self.client_msg_id.into_owned()),
            chat_id: Cow::Owned(self.chat_id.into_owned()),
            content: Cow::Owned(self.content.into_owned()),
            timestamp: self.timestamp,
        }
    }

    fn from_object(body: &'a Map<String, Value>) -> Result<Self, (Refusal, Option<String>)> {
        // Echo the client's id in any refusal, when it sent a usable one.
        let echo = match body.get("clientMsgId") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let fail = |r: Refusal| (r, echo.clone());
        let client_msg_id = string_field(body, "clientMsgId").map_err(fail)?;
        let chat_id = string_field(body, "chatId").map_err(fail)?;
        let content = string_field(body, "content").map_err(fail)?;
        let timestamp = match body.get("timestamp") {
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| fail(Refusal::invalid("timestamp must be an integer (ms)")))?,
            Some(_) => return Err(fail(Refusal::invalid("timestamp must be an integer (ms)"))),
            None => return Err(fail(Refusal::invalid("timestamp is required"))),
        };
        Ok(Self {
            client_msg_id: Cow::Borrowed(client_msg_id),
            chat_id: Cow::Borrowed(chat_id),
            content: Cow::Borrowed(content),
            timestamp,
        })
    }
}

impl<P: Platform> Batch<'_, P> {
    /// Reads the chats `bodies` name, in one call. A chat whose read fails
    /// is read again by the first frame that needs it (see `chat_of_member`).
    fn read_chats(&mut self, bodies: &[Body<'_>]) {
        let mut seen = std::collections::HashSet::new();
        let wanted: Vec<&str> = bodies
            .iter()
            .filter_map(Body::chat_id)
            .filter(|chat| seen.insert(*chat))
            .collect();
        if wanted.is_empty() {
            return;
        }
        for (chat, found) in wanted.iter().zip(self.platform.get_chats(&wanted)) {
            if let Ok(info) = found {
                self.chats.insert((*chat).to_owned(), info);
            }
        }
    }

    fn handle(&mut self, frame: &Frame, body: Body<'_>) {
        let result = match body {
            Body::Send(fields) => fields.and_then(|fields| self.send_message(frame, fields)),
            Body::Object { .. } => {
                self.flush();
                match object(&frame.body) {
                    Err(refusal) => Err((refusal, None)),
                    Ok(body) if frame.kind == "ack" => self.receipt(frame, &body),
                    Ok(body) => self.typing(frame, &body),
                }
            }
            Body::Other => Err((
                Refusal::new(
                    "unknown_type",
                    format!("unknown frame type {:?}", frame.kind),
                ),
                None,
            )),
        };
        if let Err((refusal, client_msg_id)) = result {
            let reply = frames::error(refusal.code, &refusal.message, client_msg_id.as_deref());
            if self.pending.is_empty() {
                self.platform.send_to_connection(frame.connection, &reply);
            } else {
                // Sends are queued: this reply waits for their acks.
                self.pending.push(PendingSend::Refused {
                    connection: frame.connection,
                    reply,
                });
            }
        }
    }

    /// The chat, if `user` is a member of it.
    fn chat_of_member(&mut self, chat: &str, user: &str) -> Result<&ChatInfo, Refusal> {
        if !self.chats.contains_key(chat) {
            let info = self
                .platform
                .get_chats(&[chat])
                .into_iter()
                .next()
                .unwrap_or(Err(StoreError::Unavailable))
                .map_err(Refusal::store)?;
            self.chats.insert(chat.to_owned(), info);
        }
        match self.chats.get(chat) {
            Some(Some(info)) if info.members.iter().any(|m| m == user) => Ok(info),
            _ => Err(Refusal::not_member()),
        }
    }

    fn send_message(
        &mut self,
        frame: &Frame,
        fields: SendFields<'_>,
    ) -> Result<(), (Refusal, Option<String>)> {
        // Echo the client's id in any refusal, now that it is a string.
        let client_msg_id = fields.client_msg_id.as_ref();
        let fail = |r: Refusal| (r, Some(client_msg_id.to_owned()));
        if client_msg_id.is_empty() || client_msg_id.chars().count() > 64 {
            return Err(fail(Refusal::invalid(
                "clientMsgId must be 1-64 characters",
            )));
        }
        let chat = checked_chat_id(fields.chat_id.as_ref()).map_err(fail)?;
        let content = fields.content.as_ref();
        if content.is_empty() {
            return Err(fail(Refusal::invalid("content must not be empty")));
        }
        let limit = *self
            .max_content_bytes
            .get_or_insert_with(|| self.platform.max_content_bytes());
        if content.len() > limit as usize {
            return Err(fail(Refusal::new(
                "content_too_large",
                format!("content is over {limit} bytes"),
            )));
        }
        self.chat_of_member(chat, &frame.user_id).map_err(fail)?;
        self.pending.push(PendingSend::Store {
            connection: frame.connection,
            client_msg_id: client_msg_id.to_owned(),
        });
        self.to_store.push(NewMessage {
            chat_id: chat.to_owned(),
            sender_id: frame.user_id.clone(),
            client_msg_id: client_msg_id.to_owned(),
            content: content.to_owned(),
            timestamp: fields.timestamp,
        });
        Ok(())
    }

    /// Appends the queued sends in one store call, then answers each
    /// queued frame in order.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let messages = std::mem::take(&mut self.to_store);
        let results = if messages.is_empty() {
            Vec::new()
        } else {
            self.platform.append(messages)
        };
        // A host that answers fewer results than messages stored nothing we
        // can vouch for: the missing ones are unavailable, to be retried.
        let mut results = results.into_iter();
        for p in pending {
            let (connection, client_msg_id) = match p {
                PendingSend::Refused { connection, reply } => {
                    self.platform.send_to_connection(connection, &reply);
                    continue;
                }
                PendingSend::Store {
                    connection,
                    client_msg_id,
                } => (connection, client_msg_id),
            };
            match results.next().unwrap_or(Err(StoreError::Unavailable)) {
                Ok(appended) => {
                    let m = &appended.message;
                    self.platform.send_to_connection(
                        connection,
                        &frames::sent_ack(m.id, &m.chat_id, &client_msg_id),
                    );
                    // A retry is delivered again: the gateway that stored the
                    // original may have died before delivering it, and
                    // receivers dedupe by id. Once per batch, though.
                    if !appended.duplicate || !self.stored.iter().any(|s| s.id == m.id) {
                        self.stored.push(appended.message);
                    }
                }
                Err(e) => {
                    let r = Refusal::store(e);
                    let reply = frames::error(r.code, &r.message, Some(&client_msg_id));
                    self.platform.send_to_connection(connection, &reply);
                }
            }
        }
    }

    fn receipt(
        &mut self,
        frame: &Frame,
        body: &Map<String, Value>,
    ) -> Result<(), (Refusal, Option<String>)> {
        let fail = |r: Refusal| (r, None);
        let chat = chat_id_field(body).map_err(fail)?;
        let id = string_field(body, "messageId").map_err(fail)?;
        let id = parse_message_id(id)
            .ok_or_else(|| fail(Refusal::invalid("messageId must be a decimal string")))?;
        let kind = match string_field(body, "status").map_err(fail)? {
            "delivered" => ReceiptKind::Delivered,
            "read" => ReceiptKind::Read,
            _ => {
                return Err(fail(Refusal::invalid(
                    "status must be \"delivered\" or \"read\"",
                )));
            }
        };
        let user = frame.user_id.as_str();
        let info = self.chat_of_member(chat, user).map_err(fail)?.clone();
        let message = self
            .platform
            .get_message(chat, id)
            .map_err(|e| fail(Refusal::store(e)))?
            .ok_or_else(|| {
                fail(Refusal::new(
                    "message_not_found",
                    "no such message in this chat",
                ))
            })?;
        let notifies_sender = info.kind == ChatKind::Group && message.sender_id != user;
        // A `read` also raises `delivered`, so in a group it may complete
        // delivery too; this member's mark before the update tells whether it
        // did. Others' marks are read after it, so of two concurrent last
        // acks both notify rather than neither.
        let delivered_before = if notifies_sender && kind == ReceiptKind::Read {
            Some(self.marks_of(chat, user).map_err(fail)?.delivered_up_to)
        } else {
            None
        };
        let (_, moved) = self
            .platform
            .advance_receipt(chat, user, kind, id)
            .map_err(|e| fail(Refusal::store(e)))?;
        if !moved {
            return Ok(());
        }
        let status = match kind {
            ReceiptKind::Delivered => Status::Delivered,
            ReceiptKind::Read => Status::Read,
        };
        match info.kind {
            ChatKind::Direct => {
                // The peer learns how far this member has got.
                let peers: Vec<String> = info
                    .members
                    .iter()
                    .filter(|m| *m != user)
                    .cloned()
                    .collect();
                let ack = frames::receipt_ack(id, chat, status.as_str(), Some(user));
                self.platform.send_to_users(&peers, &ack, None);
            }
            // The sender hears once per status, when the last member gets there.
            ChatKind::Group if notifies_sender => {
                let marks: HashMap<String, Marks> = self
                    .platform
                    .receipts(chat)
                    .map_err(|e| fail(Refusal::store(e)))?
                    .into_iter()
                    .collect();
                let everyone_reached = |wanted: Status| {
                    info.members
                        .iter()
                        .filter(|m| **m != message.sender_id)
                        .all(|m| {
                            Status::of(marks.get(m).copied().unwrap_or_default(), id) >= wanted
                        })
                };
                // `read` by all implies `delivered` by all: one frame says both.
                let reached = if everyone_reached(status) {
                    Some(status)
                } else if delivered_before.is_some_and(|before| before < id)
                    && everyone_reached(Status::Delivered)
                {
                    Some(Status::Delivered)
                } else {
                    None
                };
                if let Some(reached) = reached {
                    let ack = frames::receipt_ack(id, chat, reached.as_str(), None);
                    self.platform.send_to_users(
                        std::slice::from_ref(&message.sender_id),
                        &ack,
                        None,
                    );
                }
            }
            ChatKind::Group => {}
        }
        Ok(())
    }

    /// `user`'s receipt marks in `chat` (default when it has none yet).
    fn marks_of(&self, chat: &str, user: &str) -> Result<Marks, Refusal> {
        let all = self.platform.receipts(chat).map_err(Refusal::store)?;
        Ok(all
            .into_iter()
            .find(|(u, _)| u == user)
            .map(|(_, m)| m)
            .unwrap_or_default())
    }

    fn typing(
        &mut self,
        frame: &Frame,
        body: &Map<String, Value>,
    ) -> Result<(), (Refusal, Option<String>)> {
        let fail = |r: Refusal| (r, None);
        let chat = chat_id_field(body).map_err(fail)?;
        let user = frame.user_id.as_str();
        let info = self.chat_of_member(chat, user).map_err(fail)?.clone();
        let key = format!("typing\u{0}{chat}\u{0}{user}");
        // Throttled (or the limiter is down): nothing to relay; typing is best effort.
        if self.platform.throttle(&key, TYPING_WINDOW_MS) != Ok(true) {
            return Ok(());
        }
        let others: Vec<String> = info.members.into_iter().filter(|m| m != user).collect();
        self.platform
            .send_to_users(&others, &frames::typing(chat, user), None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde_json::json;

    use super::*;

    /// An in-memory platform that records what the component sent.
    #[derive(Default)]
    struct Fake {
        chats: HashMap<String, ChatInfo>,
        messages: RefCell<Vec<Message>>,
        receipts: RefCell<HashMap<(String, String), Marks>>,
        to_connections: RefCell<Vec<(u64, Value)>>,
        to_users: RefCell<Vec<(Vec<String>, Value)>>,
        appends: RefCell<usize>,
        marks: RefCell<Vec<String>>,
        down: bool,
        /// The chats asked for, one list per `get_chats` call.
        chat_reads: RefCell<Vec<Vec<String>>>,
        /// When set, every append fails with this error.
        append_error: Option<StoreError>,
    }

    impl Fake {
        fn with_chat(mut self, id: &str, kind: ChatKind, members: &[&str]) -> Self {
            let members = members.iter().map(|m| m.to_string()).collect();
            self.chats.insert(id.into(), ChatInfo { kind, members });
            self
        }

        fn replies(&self) -> Vec<(u64, Value)> {
            self.to_connections.borrow().clone()
        }
    }

    impl Platform for Fake {
        fn max_content_bytes(&self) -> u32 {
            4096
        }

        fn get_chats(&self, chats: &[&str]) -> Vec<Result<Option<ChatInfo>, StoreError>> {
            self.chat_reads
                .borrow_mut()
                .push(chats.iter().map(|c| c.to_string()).collect());
            chats
                .iter()
                .map(|chat| {
                    if self.down {
                        return Err(StoreError::Unavailable);
                    }
                    Ok(self.chats.get(*chat).cloned())
                })
                .collect()
        }

        fn append(&self, batch: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
            *self.appends.borrow_mut() += 1;
            if let Some(e) = &self.append_error {
                return batch.iter().map(|_| Err(e.clone())).collect();
            }
            let mut messages = self.messages.borrow_mut();
            batch
                .into_iter()
                .map(|m| {
                    let existing = messages
                        .iter()
                        .find(|s| s.sender_id == m.sender_id && s.client_msg_id == m.client_msg_id);
                    if let Some(existing) = existing {
                        return Ok(Appended {
                            message: existing.clone(),
                            duplicate: true,
                        });
                    }
                    let prev_id = messages
                        .iter()
                        .rev()
                        .find(|s| s.chat_id == m.chat_id)
                        .map_or(0, |s| s.id);
                    let message = Message {
                        id: messages.len() as u64 + 100,
                        prev_id,
                        chat_id: m.chat_id,
                        sender_id: m.sender_id,
                        client_msg_id: m.client_msg_id,
                        content: m.content,
                        timestamp: m.timestamp,
                    };
                    messages.push(message.clone());
                    Ok(Appended {
                        message,
                        duplicate: false,
                    })
                })
                .collect()
        }

        fn get_message(&self, chat: &str, id: u64) -> Result<Option<Message>, StoreError> {
            Ok(self
                .messages
                .borrow()
                .iter()
                .find(|m| m.chat_id == chat && m.id == id)
                .cloned())
        }

        fn advance_receipt(
            &self,
            chat: &str,
            user: &str,
            kind: ReceiptKind,
            up_to: u64,
        ) -> Result<(Marks, bool), StoreError> {
            let mut all = self.receipts.borrow_mut();
            let marks = all.entry((chat.into(), user.into())).or_default();
            let before = *marks;
            if kind == ReceiptKind::Read {
                marks.read_up_to = marks.read_up_to.max(up_to);
            }
            marks.delivered_up_to = marks.delivered_up_to.max(up_to);
            let moved = match kind {
                ReceiptKind::Read => marks.read_up_to != before.read_up_to,
                ReceiptKind::Delivered => marks.delivered_up_to != before.delivered_up_to,
            };
            Ok((*marks, moved))
        }

        fn receipts(&self, chat: &str) -> Result<Vec<(String, Marks)>, StoreError> {
            let all = self.receipts.borrow();
            Ok(all
                .iter()
                .filter(|((c, _), _)| c == chat)
                .map(|((_, u), m)| (u.clone(), *m))
                .collect())
        }

        fn throttle(&self, key: &str, _window_ms: u64) -> Result<bool, StoreError> {
            let mut marks = self.marks.borrow_mut();
            if marks.iter().any(|k| k == key) {
                return Ok(false);
            }
            marks.push(key.to_owned());
            Ok(true)
        }

        fn send_to_connection(&self, connection: u64, frame: &str) {
            self.to_connections
                .borrow_mut()
                .push((connection, serde_json::from_str(frame).unwrap()));
        }

        fn send_to_users(&self, users: &[String], frame: &str, _skip: Option<u64>) {
            self.to_users
                .borrow_mut()
                .push((users.to_vec(), serde_json::from_str(frame).unwrap()));
        }
    }

    fn frame(connection: u64, user: &str, body: Value) -> Frame {
        Frame {
            connection,
            user_id: user.into(),
            kind: body["type"].as_str().unwrap_or("").into(),
            body: body.to_string(),
        }
    }

    fn send(user: &str, chat: &str, client_id: &str, content: &str) -> Frame {
        frame(
            1,
            user,
            json!({"type":"sendMessage","chatId":chat,"content":content,"timestamp":5,"clientMsgId":client_id}),
        )
    }

    fn direct() -> Fake {
        Fake::default().with_chat("dm:alice:bob", ChatKind::Direct, &["alice", "bob"])
    }

    /// Valid sends of a batch are stored in one append and each acked `sent` with its id.
    #[test]
    fn sends_are_stored_in_one_append_and_acked() {
        let p = direct();
        let stored = handle_frames(
            &p,
            vec![
                send("alice", "dm:alice:bob", "a", "hi"),
                send("alice", "dm:alice:bob", "b", "yo"),
            ],
        );
        assert_eq!(stored.len(), 2);
        assert_eq!(*p.appends.borrow(), 1);
        let replies = p.replies();
        assert_eq!(
            replies[0].1,
            json!({"type":"ack","messageId":"100","chatId":"dm:alice:bob","clientMsgId":"a","status":"sent"})
        );
        assert_eq!(replies[1].1["messageId"], "101");
    }

    /// A resend with the same clientMsgId is acked with the same id, stored
    /// once, and delivered again (the first delivery may have been lost with
    /// a crashed gateway), but only once per batch.
    #[test]
    fn resend_is_acked_with_same_id_and_delivered_again() {
        let p = direct();
        let first = handle_frames(&p, vec![send("alice", "dm:alice:bob", "a", "hi")]);
        let again = handle_frames(
            &p,
            vec![
                send("alice", "dm:alice:bob", "a", "hi"),
                send("alice", "dm:alice:bob", "a", "hi"),
            ],
        );
        assert_eq!(again, first);
        let replies = p.replies();
        assert_eq!(replies[0].1["messageId"], replies[1].1["messageId"]);
        assert_eq!(p.messages.borrow().len(), 1);
    }

    /// Non-members and unknown chats get chat_not_found, and nothing is stored.
    #[test]
    fn non_member_cannot_send() {
        let p = direct();
        let stored = handle_frames(
            &p,
            vec![
                send("carol", "dm:alice:bob", "c", "hi"),
                send("alice", "nope", "d", "x"),
            ],
        );
        assert!(stored.is_empty());
        for (_, reply) in p.replies() {
            assert_eq!(reply["code"], "chat_not_found");
        }
        assert_eq!(p.replies()[0].1["clientMsgId"], "c");
    }

    /// Missing or mistyped fields are invalid_frame, echoing the clientMsgId; content over the limit is content_too_large.
    /// Escaped strings are stored unescaped, and a frame the typed reading
    /// refuses but JSON allows (a repeated key) is stored as JSON reads it.
    #[test]
    fn escaped_and_repeated_fields_are_read_as_json_reads_them() {
        let p = direct();
        let escaped = frame(
            1,
            "alice",
            json!({"type":"sendMessage","chatId":"dm:alice:bob","content":"say \"hi\"\n\u{e9}","timestamp":1,"clientMsgId":"e\\1"}),
        );
        let repeated = Frame {
            connection: 1,
            user_id: "alice".into(),
            kind: "sendMessage".into(),
            body: r#"{"type":"sendMessage","chatId":"dm:alice:bob","content":"first","content":"last","timestamp":2,"clientMsgId":"r1"}"#.into(),
        };
        let stored = handle_frames(&p, vec![escaped, repeated]);
        let contents: Vec<&str> = stored.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["say \"hi\"\n\u{e9}", "last"]);
        assert_eq!(p.replies()[0].1["clientMsgId"], "e\\1");
        assert_eq!(p.replies()[1].1["status"], "sent");
    }

    #[test]
    fn validates_fields() {
        let p = direct();
        let bad = [
            json!({"type":"sendMessage","chatId":"dm:alice:bob","timestamp":1,"clientMsgId":"x1"}),
            json!({"type":"sendMessage","chatId":"dm:alice:bob","content":"","timestamp":1,"clientMsgId":"x2"}),
            json!({"type":"sendMessage","chatId":"dm:alice:bob","content":"a","timestamp":"soon","clientMsgId":"x3"}),
            json!({"type":"sendMessage","chatId":7,"content":"a","timestamp":1,"clientMsgId":"x4"}),
            json!({"type":"sendMessage","chatId":"dm:alice:bob","content":"a","timestamp":1}),
            json!({"type":"sendMessage","chatId":"dm:alice:bob","content":"a","timestamp":1.5,"clientMsgId":"x6"}),
        ];
        handle_frames(
            &p,
            bad.iter().map(|b| frame(1, "alice", b.clone())).collect(),
        );
        let codes: Vec<Value> = p.replies().iter().map(|(_, r)| r["code"].clone()).collect();
        assert!(codes.iter().all(|c| c == "invalid_frame"), "{codes:?}");
        assert_eq!(p.replies()[0].1["clientMsgId"], "x1");
        assert!(p.replies()[4].1.get("clientMsgId").is_none());

        let big = "x".repeat(4097);
        handle_frames(&p, vec![send("alice", "dm:alice:bob", "big", &big)]);
        assert_eq!(p.replies().last().unwrap().1["code"], "content_too_large");
        assert!(p.messages.borrow().is_empty());
    }

    /// A 4096-byte content (the limit, counted in UTF-8 bytes) is accepted.
    #[test]
    fn content_at_the_limit_is_accepted() {
        let p = direct();
        let stored = handle_frames(
            &p,
            vec![send("alice", "dm:alice:bob", "e", &"é".repeat(2048))],
        );
        assert_eq!(stored.len(), 1);
    }

    /// A storage outage is reported as `unavailable`, never as a `sent` ack.
    #[test]
    fn outage_is_unavailable_not_sent() {
        let p = Fake {
            down: true,
            ..direct()
        };
        let stored = handle_frames(&p, vec![send("alice", "dm:alice:bob", "a", "hi")]);
        assert!(stored.is_empty());
        assert_eq!(p.replies()[0].1["code"], "unavailable");
        assert_eq!(p.replies()[0].1["clientMsgId"], "a");
    }

    /// The chats a batch names are read in one call, each once, before any
    /// frame is acted on; bodies that name no usable chat ask for nothing.
    #[test]
    fn a_batch_reads_its_chats_in_one_call() {
        let p = direct().with_chat("g:1", ChatKind::Group, &["alice", "carol"]);
        let stored = handle_frames(
            &p,
            vec![
                send("alice", "dm:alice:bob", "a", "hi"),
                send("alice", "g:1", "b", "yo"),
                frame(1, "alice", json!({"type":"sendMessage","chatId":""})),
                ack("bob", "dm:alice:bob", 100, "delivered"),
                frame(1, "alice", json!({"type":"typing","chatId":"g:1"})),
                send("alice", "dm:alice:bob", "c", "again"),
            ],
        );
        assert_eq!(stored.len(), 3);
        assert_eq!(
            *p.chat_reads.borrow(),
            vec![vec!["dm:alice:bob".to_string(), "g:1".to_string()]]
        );
    }

    /// `ack` and `typing` frames name their chat for the batch's read too,
    /// also when it is written with escapes; a body that is not JSON asks
    /// for nothing and is refused in its turn.
    #[test]
    fn receipts_and_typing_join_the_batch_read() {
        let p = direct().with_chat("g:1", ChatKind::Group, &["alice", "carol"]);
        handle_frames(&p, vec![send("alice", "dm:alice:bob", "a", "hi")]);
        p.chat_reads.borrow_mut().clear();
        let broken = Frame {
            connection: 2,
            user_id: "bob".into(),
            kind: "ack".into(),
            body: "{not json".into(),
        };
        let escaped = Frame {
            body:
                r#"{"type":"ack","chatId":"dm:alice:b\u006fb","messageId":"100","status":"read"}"#
                    .into(),
            ..broken.clone()
        };
        handle_frames(
            &p,
            vec![
                frame(1, "alice", json!({"type":"typing","chatId":"g:1"})),
                broken,
                escaped,
            ],
        );
        assert_eq!(
            *p.chat_reads.borrow(),
            vec![vec!["g:1".to_string(), "dm:alice:bob".to_string()]]
        );
        let codes: Vec<Value> = p.replies().iter().map(|(_, r)| r["code"].clone()).collect();
        assert_eq!(codes.last(), Some(&json!("bad_json")));
        let bob = ("dm:alice:bob".to_string(), "bob".to_string());
        assert_eq!(
            p.receipts.borrow().get(&bob).map(|m| m.read_up_to),
            Some(100),
            "the escaped ack moved bob's read mark"
        );
    }

    /// A chat whose read failed is read again by each frame that needs it:
    /// once the store is back, the next frame gets through.
    #[test]
    fn a_failed_chat_read_is_retried_per_frame() {
        let p = Fake {
            down: true,
            ..direct()
        };
        handle_frames(
            &p,
            vec![
                send("alice", "dm:alice:bob", "a", "hi"),
                send("alice", "dm:alice:bob", "b", "yo"),
            ],
        );
        let codes: Vec<Value> = p.replies().iter().map(|(_, r)| r["code"].clone()).collect();
        assert_eq!(codes, vec![json!("unavailable"), json!("unavailable")]);
        // One batched read, then one read per frame.
        assert_eq!(p.chat_reads.borrow().len(), 3);
    }

    fn ack(user: &str, chat: &str, id: u64, status: &str) -> Frame {
        frame(
            2,
            user,
            json!({"type":"ack","chatId":chat,"messageId":id.to_string(),"status":status}),
        )
    }

    /// In a direct chat the sender hears each watermark move, with who moved it; stale acks are silent.
    #[test]
    fn direct_receipts_notify_the_peer() {
        let p = direct();
        handle_frames(
            &p,
            vec![
                send("alice", "dm:alice:bob", "a", "1"),
                send("alice", "dm:alice:bob", "b", "2"),
            ],
        );
        handle_frames(
            &p,
            vec![
                ack("bob", "dm:alice:bob", 101, "delivered"),
                ack("bob", "dm:alice:bob", 101, "read"),
            ],
        );
        handle_frames(&p, vec![ack("bob", "dm:alice:bob", 100, "read")]);
        let sent = p.to_users.borrow().clone();
        assert_eq!(sent.len(), 2, "the stale read of 100 notifies nobody");
        assert_eq!(sent[0].0, vec!["alice"]);
        assert_eq!(
            sent[0].1,
            json!({"type":"ack","messageId":"101","chatId":"dm:alice:bob","status":"delivered","userId":"bob"})
        );
        assert_eq!(sent[1].1["status"], "read");
    }

    /// Acking a message that is not in the chat is message_not_found; a bad status is invalid_frame.
    #[test]
    fn receipt_errors() {
        let p = direct();
        handle_frames(
            &p,
            vec![
                ack("bob", "dm:alice:bob", 999, "read"),
                ack("bob", "dm:alice:bob", 1, "seen"),
            ],
        );
        let codes: Vec<Value> = p.replies().iter().map(|(_, r)| r["code"].clone()).collect();
        assert_eq!(
            codes,
            vec![json!("message_not_found"), json!("invalid_frame")]
        );
    }

    /// In a group the sender hears once, when the last other member has read.
    #[test]
    fn group_receipts_aggregate() {
        let p = Fake::default().with_chat("g:1", ChatKind::Group, &["alice", "bob", "carol"]);
        handle_frames(&p, vec![send("alice", "g:1", "a", "hi")]);
        handle_frames(&p, vec![ack("bob", "g:1", 100, "read")]);
        assert!(p.to_users.borrow().is_empty(), "carol has not read yet");
        handle_frames(&p, vec![ack("carol", "g:1", 100, "read")]);
        let sent = p.to_users.borrow().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, vec!["alice"]);
        assert_eq!(
            sent[0].1,
            json!({"type":"ack","messageId":"100","chatId":"g:1","status":"read"})
        );
    }

    /// Typing goes to the other members only, and a non-member's typing goes nowhere.
    #[test]
    fn typing_is_relayed_to_others() {
        let p = Fake::default().with_chat("g:1", ChatKind::Group, &["alice", "bob", "carol"]);
        handle_frames(
            &p,
            vec![frame(1, "alice", json!({"type":"typing","chatId":"g:1"}))],
        );
        handle_frames(
            &p,
            vec![frame(1, "mallory", json!({"type":"typing","chatId":"g:1"}))],
        );
        let sent = p.to_users.borrow().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, vec!["bob", "carol"]);
        assert_eq!(
            sent[0].1,
            json!({"type":"typing","chatId":"g:1","userId":"alice"})
        );
        assert_eq!(p.replies()[0].1["code"], "chat_not_found");
    }

    /// Repeated typing within the window is relayed once; another chat or member is separate.
    #[test]
    fn typing_is_throttled_per_member_and_chat() {
        let p = Fake::default()
            .with_chat("g:1", ChatKind::Group, &["alice", "bob"])
            .with_chat("g:2", ChatKind::Group, &["alice", "bob"]);
        let typing =
            |user: &str, chat: &str| frame(1, user, json!({"type":"typing","chatId":chat}));
        handle_frames(
            &p,
            vec![
                typing("alice", "g:1"),
                typing("alice", "g:1"),
                typing("alice", "g:2"),
                typing("bob", "g:1"),
            ],
        );
        assert_eq!(p.to_users.borrow().len(), 3);
    }

    /// An ack after a send in the same batch sees the stored message (sends are flushed first).
    #[test]
    fn batch_keeps_frame_order() {
        let p = direct();
        handle_frames(
            &p,
            vec![
                send("alice", "dm:alice:bob", "a", "hi"),
                ack("bob", "dm:alice:bob", 100, "delivered"),
            ],
        );
        assert_eq!(p.to_users.borrow().len(), 1);
    }

    /// A refused send between two valid ones is answered between their acks, and the valid ones still share one append.
    #[test]
    fn refused_send_is_answered_in_frame_order() {
        let p = direct();
        let stored = handle_frames(
            &p,
            vec![
                send("alice", "dm:alice:bob", "a", "hi"),
                send("alice", "dm:alice:bob", "b", ""),
                send("alice", "dm:alice:bob", "c", "yo"),
            ],
        );
        assert_eq!(stored.len(), 2);
        assert_eq!(*p.appends.borrow(), 1);
        let replies: Vec<(Value, Value)> = p
            .replies()
            .into_iter()
            .map(|(_, r)| (r["clientMsgId"].clone(), r["type"].clone()))
            .collect();
        assert_eq!(
            replies,
            vec![
                (json!("a"), json!("ack")),
                (json!("b"), json!("error")),
                (json!("c"), json!("ack")),
            ]
        );
    }

    /// An append that fails is `unavailable` (retry) or `internal`, echoing the clientMsgId, and nothing is fanned out.
    #[test]
    fn append_failures_are_reported_per_message() {
        for (error, code) in [
            (StoreError::Unavailable, "unavailable"),
            (StoreError::Invalid, "internal"),
        ] {
            let p = Fake {
                append_error: Some(error),
                ..direct()
            };
            let stored = handle_frames(&p, vec![send("alice", "dm:alice:bob", "a", "hi")]);
            assert!(stored.is_empty());
            let replies = p.replies();
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0].1["code"], code);
            assert_eq!(replies[0].1["clientMsgId"], "a");
        }
    }

    /// A group sender hears `delivered` once and `read` once; stale acks and the sender's own acks add nothing.
    #[test]
    fn group_sender_hears_each_status_once() {
        let p = Fake::default().with_chat("g:1", ChatKind::Group, &["alice", "bob", "carol"]);
        handle_frames(&p, vec![send("alice", "g:1", "a", "hi")]);
        handle_frames(
            &p,
            vec![
                ack("bob", "g:1", 100, "delivered"),
                ack("carol", "g:1", 100, "delivered"),
                ack("bob", "g:1", 100, "delivered"),
                ack("alice", "g:1", 100, "read"),
                ack("bob", "g:1", 100, "read"),
                ack("carol", "g:1", 100, "read"),
            ],
        );
        let sent = p.to_users.borrow().clone();
        let statuses: Vec<Value> = sent.iter().map(|(_, f)| f["status"].clone()).collect();
        assert_eq!(statuses, vec![json!("delivered"), json!("read")]);
        assert!(
            sent.iter()
                .all(|(to, f)| to == &["alice"] && f.get("userId").is_none())
        );
    }

    /// A `read` that is also the last member's delivery tells the sender `delivered` (not yet `read`, others have not read).
    #[test]
    fn group_read_can_complete_delivery() {
        let p = Fake::default().with_chat("g:1", ChatKind::Group, &["alice", "bob", "carol"]);
        handle_frames(&p, vec![send("alice", "g:1", "a", "hi")]);
        handle_frames(
            &p,
            vec![
                ack("carol", "g:1", 100, "delivered"),
                ack("bob", "g:1", 100, "read"),
            ],
        );
        let sent = p.to_users.borrow().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].1,
            json!({"type":"ack","messageId":"100","chatId":"g:1","status":"delivered"})
        );
    }
}
