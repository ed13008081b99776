//! Storage and routing backends, one narrow trait per concern.
//!
//! The components see these only through the `chat:platform` WIT imports
//! (see `runtime::host_impl`), so a backend can change without touching a
//! component. Each trait documents what its methods guarantee; every
//! implementation is held to the same contract by `tests/contract.rs`.
//!
//! Implementations: `embedded` (redb on local disk, presence and routing in
//! process) is the default that needs no server.

pub mod cassandra;
pub mod embedded;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A connection's id: unique across gateways (the node id is in the high bits).
pub type ConnectionId = u64;

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: u64,
    pub chat_id: String,
    pub sender_id: String,
    pub client_msg_id: String,
    pub content: String,
    pub timestamp: i64,
    /// The message committed just before this one in the chat (0: none), so
    /// a receiver can tell that it missed some.
    #[serde(default)]
    pub prev_id: u64,
}

/// A message to append; the store assigns the id.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub chat_id: String,
    pub sender_id: String,
    pub client_msg_id: String,
    pub content: String,
    pub timestamp: i64,
}

/// The outcome of appending one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub message: Message,
    /// The (sender, client-msg-id) pair was already stored; `message` is the earlier one.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    Direct,
    Group,
}

/// A chat and its current members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    pub id: String,
    pub kind: ChatKind,
    pub name: Option<String>,
    pub members: Vec<String>,
    pub admins: Vec<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// One member's receipt watermarks in a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watermarks {
    pub delivered_up_to: u64,
    pub read_up_to: u64,
}

impl Watermarks {
    /// These watermarks raised by a `kind` receipt up to `up_to` (read also
    /// raises delivered), and whether the `kind` watermark moved: the rule
    /// every store applies.
    pub fn advanced(self, kind: ReceiptKind, up_to: u64) -> (Watermarks, bool) {
        let mut after = self;
        after.delivered_up_to = after.delivered_up_to.max(up_to);
        if kind == ReceiptKind::Read {
            after.read_up_to = after.read_up_to.max(up_to);
        }
        let moved = match kind {
            ReceiptKind::Delivered => after.delivered_up_to != self.delivered_up_to,
            ReceiptKind::Read => after.read_up_to != self.read_up_to,
        };
        (after, moved)
    }
}

/// Orders a user's chats as `chats_of` returns them: newest first, then by id.
pub fn sort_newest_first(chats: &mut [Chat]) {
    chats.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// A member's watermarks, with who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub user_id: String,
    pub marks: Watermarks,
}

/// What the presence store knows of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub user_id: String,
    pub online: bool,
    /// Last heartbeat or disconnect, ms since the Unix epoch; 0 if never seen.
    pub last_seen: i64,
}

/// Why a backend call failed. The detail of `Unavailable` is for the log;
/// components only see the variant.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Durable messages and receipt watermarks.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Appends messages durably and in order, one result per input.
    ///
    /// Guarantees: a new message's id is strictly greater than every id
    /// already in its chat (id order is commit order), and an `Ok` result is
    /// returned only once the message survives a crash of this process.
    /// (chat, sender, client-msg-id) is unique: a repeat returns the stored
    /// message with `duplicate` set and writes nothing, even when it races
    /// the original on another gateway.
    async fn append(&self, messages: Vec<NewMessage>) -> StoreResult<Vec<StoreResult<Appended>>>;

    /// Up to `limit` messages of `chat` with ids below `before` (all if none), newest first.
    async fn page_before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<Message>>;

    /// Up to `limit` messages of `chat` with ids above `after`, oldest first.
    async fn page_after(&self, chat: &str, after: u64, limit: u32) -> StoreResult<Vec<Message>>;

    /// One message of `chat`.
    async fn get(&self, chat: &str, id: u64) -> StoreResult<Option<Message>>;

    /// Raises a watermark monotonically (read also raises delivered); returns
    /// the watermarks after the call and whether the `kind` watermark moved.
    async fn advance_receipt(
        &self,
        chat: &str,
        user: &str,
        kind: ReceiptKind,
        up_to: u64,
    ) -> StoreResult<(Watermarks, bool)>;

    /// Every watermark recorded in `chat`.
    async fn receipts(&self, chat: &str) -> StoreResult<Vec<Receipt>>;
}

/// Reads one `get_chats` call keeps in flight: a batch names at most a few
/// hundred chats, and a store should not see all of them at once.
pub const CONCURRENT_CHAT_READS: usize = 64;

/// Chats and their members.
#[async_trait]
pub trait ChatDirectory: Send + Sync + 'static {
    async fn get_chat(&self, chat: &str) -> StoreResult<Option<Chat>>;

    /// Each of `chats`, in order, read concurrently (at most
    /// `CONCURRENT_CHAT_READS` at a time), so a remote store's round trips
    /// overlap instead of adding up.
    async fn get_chats(&self, chats: &[String]) -> Vec<StoreResult<Option<Chat>>> {
        use futures_util::StreamExt as _;
        let reads: Vec<_> = chats.iter().map(|chat| self.get_chat(chat)).collect();
        futures_util::stream::iter(reads)
            .buffered(CONCURRENT_CHAT_READS)
            .collect()
            .await
    }

    /// False for unknown chats.
    async fn is_member(&self, chat: &str, user: &str) -> StoreResult<bool>;

    /// Stores `chat` unless its id exists; returns the stored chat and whether it was created.
    async fn create_chat(&self, chat: Chat) -> StoreResult<(Chat, bool)>;

    /// The chats `user` belongs to, newest first.
    async fn chats_of(&self, user: &str) -> StoreResult<Vec<Chat>>;

    /// Replaces members and admins atomically if the members are still
    /// `expected` (else `Conflict`); `NotFound` for unknown chats.
    async fn update_members(
        &self,
        chat: &str,
        expected: &[String],
        members: Vec<String>,
        admins: Vec<String>,
    ) -> StoreResult<Chat>;
}

/// Online state with expiry.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Keeps `connection` of `user` alive for `ttl_ms`; true if the user was offline.
    async fn heartbeat(
        &self,
        user: &str,
        connection: ConnectionId,
        ttl_ms: u64,
    ) -> StoreResult<bool>;

    /// Forgets `connection`; true if it was the user's last live connection.
    async fn disconnect(&self, user: &str, connection: ConnectionId) -> StoreResult<bool>;

    /// Presence of each user, in order.
    async fn query(&self, users: &[String]) -> StoreResult<Vec<Presence>>;

    /// Users whose last lease expired (no disconnect) since the previous
    /// call, each reported once, with their last heartbeat as `last_seen`.
    async fn take_expired(&self) -> StoreResult<Vec<Presence>>;

    /// Marks `key` for `window_ms` unless it is marked: true if it was not.
    async fn throttle(&self, key: &str, window_ms: u64) -> StoreResult<bool>;
}

/// A frame on its way to a client socket. Shared, because one group message
/// goes to many connections.
pub type Frame = Arc<str>;

/// Pushing frames to connected clients, at most once.
#[async_trait]
pub trait Router: Send + Sync + 'static {
    /// Registers a local connection of `user`; frames for it go to `outbox`.
    async fn register(&self, user: &str, connection: ConnectionId, outbox: Outbox);

    /// Forgets a local connection.
    async fn unregister(&self, user: &str, connection: ConnectionId);

    /// Sends to one connection if it is open. Never blocks on a slow client.
    async fn send_to_connection(&self, connection: ConnectionId, frame: Frame);

    /// Sends to every connection of every user in `users` except `skip`;
    /// returns how many connections it reached.
    async fn send_to_users(
        &self,
        users: &[String],
        frame: Frame,
        skip: Option<ConnectionId>,
    ) -> u32;

    /// Subscribes a connection to presence changes of `users`; ends with the connection.
    async fn watch_presence(&self, connection: ConnectionId, users: &[String]);

    /// Sends to every connection watching `user`; returns how many it reached.
    async fn send_to_watchers(&self, user: &str, frame: Frame) -> u32;
}

/// The sending side of one connection's outbound queue.
///
/// Bounded: a client that does not read is not allowed to grow server
/// memory. When its queue is full the connection is told to close (it will
/// reconnect and catch up from the store) instead of silently losing frames.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub frames: tokio::sync::mpsc::Sender<Frame>,
    pub lagged: Arc<tokio::sync::Notify>,
}

impl Outbox {
    /// Queues a frame; returns false (and flags the connection) when it is full or closed.
    pub fn push(&self, frame: Frame) -> bool {
        match self.frames.try_send(frame) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.lagged.notify_one();
                false
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// A server a backend depends on (or an embedded store), checked by `/readyz`.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// What it is, for the readiness report.
    fn name(&self) -> &'static str;

    /// One cheap round trip.
    async fn ping(&self) -> StoreResult<()>;
}

/// The backends one gateway runs on.
#[derive(Clone)]
pub struct Backends {
    pub messages: Arc<dyn MessageStore>,
    pub chats: Arc<dyn ChatDirectory>,
    pub presence: Arc<dyn PresenceStore>,
    pub router: Arc<dyn Router>,
    /// What `/readyz` checks: the servers these depend on, or for the
    /// embedded backend its store (which stops taking appends after an I/O error).
    pub probes: Vec<Arc<dyn Probe>>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}
