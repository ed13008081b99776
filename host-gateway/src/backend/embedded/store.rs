//! Messages, receipts and chats in one redb file.
//!
//! redb gives ACID transactions with a single writer, so assigning a message id
//! and committing the message happen in one write transaction: id order is
//! commit order, and a reader paging by cursor never skips a message.
//! Appends from every dispatch lane meet in one writer thread that commits
//! whatever is queued as one transaction. That transaction is made durable
//! by the journal (see `journal.rs`): the group's new messages are appended
//! to it and synced, one sequential write, and the B-tree commit itself is
//! not synced; a checkpoint every 100 ms (or 4 MiB of journal) syncs the
//! tree and empties the journal. Other writes (receipts, chats) commit with
//! an fsync of their own, which also makes the writer's commits before them
//! durable.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::journal::Journal;

use crate::backend::{
    Appended, Chat, ChatDirectory, Message, MessageStore, NewMessage, Receipt, ReceiptKind,
    StoreError, StoreResult, Watermarks,
};
use crate::ids::Snowflake;

/// (chat, message id) -> message as JSON.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// (chat, sender, client-msg-id) -> message id: the idempotency index.
const SENT_BY_CLIENT_ID: TableDefinition<(&str, &str, &str), u64> =
    TableDefinition::new("client_ids_per_chat");
/// What files written before 0d98397 had: chat -> last message id.
const LEGACY_CHAT_HEADS: TableDefinition<&str, u64> = TableDefinition::new("chat_heads");
/// (chat, user) -> (delivered up to, read up to).
const RECEIPTS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("receipts");
/// chat -> chat as JSON.
const CHATS: TableDefinition<&str, &[u8]> = TableDefinition::new("chats");
/// (user, chat) -> chat creation time, for listing a user's chats.
const USER_CHATS: TableDefinition<(&str, &str), i64> = TableDefinition::new("user_chats");

/// The embedded durable store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    ids: Arc<Snowflake>,
    /// Appends go to one writer thread that commits whatever is queued in
    /// one transaction (group commit): one fsync serves every dispatch lane.
    appends: Arc<Writer>,
    /// Chats as last committed: every send and every fan-out reads its chat,
    /// and this process is the only writer, so the cache is exact.
    chats: Arc<ChatCache>,
}

/// The chats read recently. A fill holds the lock across its database read
/// and an update drops the entry after its commit, so whatever a fill put
/// back before that is gone, and any later fill reads the committed value.
#[derive(Default)]
struct ChatCache(std::sync::Mutex<std::collections::HashMap<String, Chat>>);

impl ChatCache {
    /// Beyond this many chats the cache starts over.
    const CAPACITY: usize = 100_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Chat>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fill(chats: &mut std::collections::HashMap<String, Chat>, chat: &Chat) {
        if chats.len() >= Self::CAPACITY {
            chats.clear();
        }
        chats.insert(chat.id.clone(), chat.clone());
    }
}

/// The writer thread's handle: dropping the last one stops the thread and
/// waits for it, so the database file is closed when the store is gone.
struct Writer {
    jobs: Option<std::sync::mpsc::Sender<AppendJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type AppendResult = StoreResult<Vec<StoreResult<Appended>>>;

/// A batch waiting for the writer, and where its results go.
struct AppendJob {
    batch: Vec<NewMessage>,
    reply: tokio::sync::oneshot::Sender<AppendResult>,
}

/// Journal bytes after which the writer checkpoints: half of what the
/// journal preallocates, so appends normally land in blocks that exist (a
/// big group or failing checkpoints grow the file, which is still correct).
const CHECKPOINT_BYTES: u64 = 4 << 20;
/// Age of the oldest journaled group after which the writer checkpoints,
/// busy or idle. A checkpoint holds the writer for as long as the synced
/// commit takes, which grows with the interval (median 9 ms at 250 ms, 25 ms
/// at 1 s, under `one-to-one` at half peak), so shorter is smoother; it is
/// still at most ten synced commits a second instead of one per group.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Makes every commit so far durable in the tree itself (a synced commit
/// persists the unsynced ones before it), then empties the journal.
fn checkpoint(db: &Database, journal: &mut Journal) -> StoreResult<()> {
    let txn = db.begin_write().map_err(backend_err)?;
    txn.commit().map_err(backend_err)?;
    journal.clear().map_err(backend_err)
}

/// The writer thread: takes the first queued job (waiting for it) and
/// everything queued behind it, appends them in one transaction, and
/// answers each job with its own slice of the results.
fn group_commit_writer(
    db: Arc<Database>,
    ids: Arc<Snowflake>,
    mut journal: Journal,
    jobs: std::sync::mpsc::Receiver<AppendJob>,
) {
    let mut heads = Heads::default();
    // When the oldest group in the journal was written (or the last failed
    // checkpoint tried, so that a failing one is retried at this pace).
    let mut oldest: Option<std::time::Instant> = None;
    loop {
        let due = journal.recorded_bytes() >= CHECKPOINT_BYTES
            || oldest.is_some_and(|t| t.elapsed() >= CHECKPOINT_INTERVAL);
        if journal.recorded_bytes() > 0 && due {
            // On failure the journal keeps its records and a later round tries again.
            match checkpoint(&db, &mut journal) {
                Ok(()) => oldest = None,
                Err(e) => {
                    tracing::warn!(error = %e, "store checkpoint failed");
                    oldest = Some(std::time::Instant::now());
                }
            }
        }
        let first = match jobs.recv_timeout(CHECKPOINT_INTERVAL) {
            Ok(job) => job,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        while let Ok(job) = jobs.try_recv() {
            group.push(job);
        }
        let sizes: Vec<usize> = group.iter().map(|j| j.batch.len()).collect();
        let mut replies = Vec::with_capacity(group.len());
        let mut all = Vec::with_capacity(sizes.iter().sum());
        for job in group {
            all.extend(job.batch);
            replies.push(job.reply);
        }
        let was_empty = journal.recorded_bytes() == 0;
        let appended = append_batch(&db, &ids, &mut heads, &mut journal, all);
        if was_empty && journal.recorded_bytes() > 0 {
            oldest = Some(std::time::Instant::now());
        }
        match appended {
            Ok(results) => {
                let mut results = results.into_iter();
                for (reply, size) in replies.into_iter().zip(sizes) {
                    let _ = reply.send(Ok(results.by_ref().take(size).collect()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    // A clean shutdown leaves the journal empty.
    if journal.recorded_bytes() > 0
        && let Err(e) = checkpoint(&db, &mut journal)
    {
        tracing::warn!(error = %e, "store checkpoint at shutdown failed");
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn backend_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Unavailable(format!("corrupt record: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Invalid(e.to_string()))
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`, with its journal beside
    /// it (`path` + `.journal`), and puts back what the journal holds that
    /// the file lacks.
    pub fn open(path: &Path, ids: Arc<Snowflake>) -> anyhow::Result<Self> {
        let db = Database::create(path)?;
        let mut journal_path = path.as_os_str().to_owned();
        journal_path.push(".journal");
        let (mut journal, journaled) = Journal::open(Path::new(&journal_path))?;
        // Create every table up front so read transactions never meet a missing one.
        let txn = db.begin_write()?;
        txn.open_table(MESSAGES)?;
        txn.open_table(SENT_BY_CLIENT_ID)?;
        txn.open_table(RECEIPTS)?;
        txn.open_table(CHATS)?;
        txn.open_table(USER_CHATS)?;
        // Files written before the journal kept chat heads in a table; the
        // heads now come from the messages themselves.
        txn.delete_table(LEGACY_CHAT_HEADS)?;
        txn.commit()?;
        if journal.recorded_bytes() > 0 {
            let restored = restore(&db, journaled)?;
            tracing::info!(restored, "store: messages put back from the journal");
            checkpoint(&db, &mut journal)?;
        }
        let db = Arc::new(db);
        let (sender, jobs) = std::sync::mpsc::channel();
        let (writer_db, writer_ids) = (db.clone(), ids.clone());
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || group_commit_writer(writer_db, writer_ids, journal, jobs))?;
        let appends = Arc::new(Writer {
            jobs: Some(sender),
            thread: Some(thread),
        });
        Ok(Self {
            db,
            ids,
            appends,
            chats: Arc::default(),
        })
    }

    /// Runs blocking redb work off the async workers.
    async fn blocking<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Snowflake) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        let ids = self.ids.clone();
        tokio::task::spawn_blocking(move || work(&db, &ids))
            .await
            .map_err(backend_err)?
    }
}

/// The newest message id of each chat the writer appended to lately. The
/// writer thread is the only one adding messages, so an entry stays exact;
/// a chat not in the map gets its head from its last stored message.
#[derive(Default)]
struct Heads(std::collections::HashMap<String, u64>);

impl Heads {
    /// Beyond this many chats the map starts over.
    const CAPACITY: usize = 100_000;

    fn get(
        &self,
        messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        chat: &str,
    ) -> StoreResult<u64> {
        match self.0.get(chat) {
            Some(&head) => Ok(head),
            None => newest_id(messages, chat).map_err(backend_err),
        }
    }

    /// Takes in the heads of a committed transaction.
    fn extend(&mut self, committed: std::collections::HashMap<String, u64>) {
        if self.0.len() + committed.len() > Self::CAPACITY {
            self.0.clear();
        }
        self.0.extend(committed);
    }
}

/// The id of the newest message stored in `chat` (0: none).
fn newest_id(
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    chat: &str,
) -> Result<u64, redb::StorageError> {
    let last = messages
        .range((chat, 0)..=(chat, u64::MAX))?
        .next_back()
        .transpose()?;
    Ok(last.map_or(0, |(key, _)| key.value().1))
}

/// Stores the journaled messages the file lacks (those of commits after its
/// last synced one), with their index entries; returns how many.
///
/// The journal holds committed groups in commit order and the file holds a
/// prefix of them, so every missing message is above its chat's newest
/// stored one and its client-msg-id is free. One that is not is refused
/// (and logged) rather than let it break id order or idempotency.
fn restore(db: &Database, journaled: Vec<Message>) -> anyhow::Result<usize> {
    let txn = db.begin_write()?;
    let mut restored = 0;
    {
        let mut messages = txn.open_table(MESSAGES)?;
        let mut by_client = txn.open_table(SENT_BY_CLIENT_ID)?;
        for message in journaled {
            let chat = message.chat_id.as_str();
            if messages.get((chat, message.id))?.is_some() {
                continue;
            }
            let head = newest_id(&messages, chat)?;
            let client_key = (
                chat,
                message.sender_id.as_str(),
                message.client_msg_id.as_str(),
            );
            let taken = by_client.get(client_key)?.is_some();
            if message.id <= head || taken {
                tracing::error!(
                    chat,
                    id = message.id,
                    head,
                    taken,
                    "journal: refusing a message out of order or already sent"
                );
                continue;
            }
            messages.insert((chat, message.id), encode(&message)?.as_slice())?;
            by_client.insert(client_key, message.id)?;
            restored += 1;
        }
    }
    txn.commit()?;
    Ok(restored)
}

fn append_batch(
    db: &Database,
    ids: &Snowflake,
    heads: &mut Heads,
    journal: &mut Journal,
    batch: Vec<NewMessage>,
) -> StoreResult<Vec<StoreResult<Appended>>> {
    let mut txn = db.begin_write().map_err(backend_err)?;
    // The journal append below is what makes this transaction durable.
    txn.set_durability(Durability::None).map_err(backend_err)?;
    let mut results = Vec::with_capacity(batch.len());
    // The new messages' rows, which are also what the journal records.
    let mut rows: Vec<Vec<u8>> = Vec::with_capacity(batch.len());
    // Heads moved by this transaction: they count only once it commits.
    let mut moved = std::collections::HashMap::new();
    {
        let mut messages = txn.open_table(MESSAGES).map_err(backend_err)?;
        let mut by_client = txn.open_table(SENT_BY_CLIENT_ID).map_err(backend_err)?;
        for new in batch {
            let head = match moved.get(&new.chat_id) {
                Some(&head) => head,
                None => heads.get(&messages, &new.chat_id)?,
            };
            let id = ids.next_after(head);
            let client_key = (
                new.chat_id.as_str(),
                new.sender_id.as_str(),
                new.client_msg_id.as_str(),
            );
            // One B-tree walk for the common case: the insert itself tells
            // whether the key was taken, and a repeat puts the old id back.
            let earlier = by_client
                .insert(client_key, id)
                .map_err(backend_err)?
                .map(|g| g.value());
            if let Some(earlier) = earlier {
                by_client.insert(client_key, earlier).map_err(backend_err)?;
                let stored = messages
                    .get((new.chat_id.as_str(), earlier))
                    .map_err(backend_err)?
                    .ok_or_else(|| {
                        StoreError::Unavailable(
                            "idempotency index points at a missing message".into(),
                        )
                    })?;
                results.push(Ok(Appended {
                    message: decode(stored.value())?,
                    duplicate: true,
                }));
                continue;
            }
            let message = Message {
                id,
                chat_id: new.chat_id,
                sender_id: new.sender_id,
                client_msg_id: new.client_msg_id,
                content: new.content,
                timestamp: new.timestamp,
                prev_id: head,
            };
            let row = encode(&message)?;
            messages
                .insert((message.chat_id.as_str(), id), row.as_slice())
                .map_err(backend_err)?;
            rows.push(row);
            moved.insert(message.chat_id.clone(), id);
            results.push(Ok(Appended {
                message,
                duplicate: false,
            }));
        }
    }
    // On any failure below the group is not acknowledged. A failed append
    // drops (aborts) the transaction; if the journal's sync failed, the
    // record may still be on disk and come back at the next start, which a
    // retry with the same client-msg-id then finds. A failed commit takes
    // the record back, so the journal only ever holds committed groups.
    let record = journal.end();
    if !rows.is_empty() {
        journal
            .append(rows.iter().map(Vec::as_slice))
            .map_err(backend_err)?;
    }
    if let Err(e) = txn.commit() {
        if !rows.is_empty()
            && let Err(retract) = journal.retract(record)
        {
            tracing::error!(error = %retract, "journal: could not take back an uncommitted group");
        }
        return Err(backend_err(e));
    }
    heads.extend(moved);
    Ok(results)
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn append(&self, batch: Vec<NewMessage>) -> StoreResult<Vec<StoreResult<Appended>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, result) = tokio::sync::oneshot::channel();
        let stopped = || StoreError::Unavailable("store writer stopped".into());
        let jobs = self.appends.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(AppendJob { batch, reply })
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    async fn page_before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        let chat = chat.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(backend_err)?;
            let table = txn.open_table(MESSAGES).map_err(backend_err)?;
            let end = before.unwrap_or(u64::MAX);
            let range = table
                .range((chat.as_str(), 0)..(chat.as_str(), end))
                .map_err(backend_err)?;
            let mut out = Vec::new();
            for row in range.rev().take(limit as usize) {
                let (_, value) = row.map_err(backend_err)?;
                out.push(decode(value.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn page_after(&self, chat: &str, after: u64, limit: u32) -> StoreResult<Vec<Message>> {
        let chat = chat.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(backend_err)?;
            let table = txn.open_table(MESSAGES).map_err(backend_err)?;
            let Some(start) = after.checked_add(1) else {
                return Ok(Vec::new());
            };
            let range = table
                .range((chat.as_str(), start)..=(chat.as_str(), u64::MAX))
                .map_err(backend_err)?;
            let mut out = Vec::new();
            for row in range.take(limit as usize) {
                let (_, value) = row.map_err(backend_err)?;
                out.push(decode(value.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn get(&self, chat: &str, id: u64) -> StoreResult<Option<Message>> {
        let chat = chat.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(backend_err)?;
            let table = txn.open_table(MESSAGES).map_err(backend_err)?;
            let row = table.get((chat.as_str(), id)).map_err(backend_err)?;
            row.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn advance_receipt(
        &self,
        chat: &str,
        user: &str,
        kind: ReceiptKind,
        up_to: u64,
    ) -> StoreResult<(Watermarks, bool)> {
        let (chat, user) = (chat.to_owned(), user.to_owned());
        self.blocking(move |db, _| {
            let txn = db.begin_write().map_err(backend_err)?;
            let result = {
                let mut table = txn.open_table(RECEIPTS).map_err(backend_err)?;
                let (delivered, read) = table
                    .get((chat.as_str(), user.as_str()))
                    .map_err(backend_err)?
                    .map(|g| g.value())
                    .unwrap_or((0, 0));
                let before = Watermarks {
                    delivered_up_to: delivered,
                    read_up_to: read,
                };
                let (after, moved) = before.advanced(kind, up_to);
                if after != before {
                    table
                        .insert(
                            (chat.as_str(), user.as_str()),
                            (after.delivered_up_to, after.read_up_to),
                        )
                        .map_err(backend_err)?;
                }
                (after, moved)
            };
            txn.commit().map_err(backend_err)?;
            Ok(result)
        })
        .await
    }

    async fn receipts(&self, chat: &str) -> StoreResult<Vec<Receipt>> {
        let chat = chat.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(backend_err)?;
            let table = txn.open_table(RECEIPTS).map_err(backend_err)?;
            // "" sorts before every user id and "\u{10FFFF}" after, bounding the chat's rows.
            let range = table
                .range((chat.as_str(), "")..=(chat.as_str(), "\u{10FFFF}"))
                .map_err(backend_err)?;
            let mut out = Vec::new();
            for row in range {
                let (key, value) = row.map_err(backend_err)?;
                let (_, user) = key.value();
                let (delivered, read) = value.value();
                out.push(Receipt {
                    user_id: user.to_owned(),
                    marks: Watermarks {
                        delivered_up_to: delivered,
                        read_up_to: read,
                    },
                });
            }
            Ok(out)
        })
        .await
    }
}

fn read_chat(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    chat: &str,
) -> StoreResult<Option<Chat>> {
    table
        .get(chat)
        .map_err(backend_err)?
        .map(|v| decode(v.value()))
        .transpose()
}

#[async_trait]
impl ChatDirectory for EmbeddedStore {
    async fn get_chat(&self, chat: &str) -> StoreResult<Option<Chat>> {
        if let Some(cached) = self.chats.lock().get(chat) {
            return Ok(Some(cached.clone()));
        }
        let chat = chat.to_owned();
        let cache = self.chats.clone();
        self.blocking(move |db, _| {
            let mut cached = cache.lock();
            let txn = db.begin_read().map_err(backend_err)?;
            let found = read_chat(&txn.open_table(CHATS).map_err(backend_err)?, &chat)?;
            if let Some(found) = &found {
                ChatCache::fill(&mut cached, found);
            }
            Ok(found)
        })
        .await
    }

    async fn is_member(&self, chat: &str, user: &str) -> StoreResult<bool> {
        Ok(self
            .get_chat(chat)
            .await?
            .is_some_and(|c| c.members.iter().any(|m| m == user)))
    }

    async fn create_chat(&self, chat: Chat) -> StoreResult<(Chat, bool)> {
        // Nothing to drop from the cache: it holds only chats that exist.
        self.blocking(move |db, _| {
            let txn = db.begin_write().map_err(backend_err)?;
            let result = {
                let mut chats = txn.open_table(CHATS).map_err(backend_err)?;
                if let Some(existing) = read_chat(&chats, &chat.id)? {
                    (existing, false)
                } else {
                    chats
                        .insert(chat.id.as_str(), encode(&chat)?.as_slice())
                        .map_err(backend_err)?;
                    let mut index = txn.open_table(USER_CHATS).map_err(backend_err)?;
                    for member in &chat.members {
                        index
                            .insert((member.as_str(), chat.id.as_str()), chat.created_at)
                            .map_err(backend_err)?;
                    }
                    (chat, true)
                }
            };
            txn.commit().map_err(backend_err)?;
            Ok(result)
        })
        .await
    }

    async fn chats_of(&self, user: &str) -> StoreResult<Vec<Chat>> {
        let user = user.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(backend_err)?;
            let index = txn.open_table(USER_CHATS).map_err(backend_err)?;
            let chats = txn.open_table(CHATS).map_err(backend_err)?;
            let mut out = Vec::new();
            for row in index
                .range((user.as_str(), "")..=(user.as_str(), "\u{10FFFF}"))
                .map_err(backend_err)?
            {
                let (key, _) = row.map_err(backend_err)?;
                let (_, chat_id) = key.value();
                if let Some(chat) = read_chat(&chats, chat_id)? {
                    out.push(chat);
                }
            }
            crate::backend::sort_newest_first(&mut out);
            Ok(out)
        })
        .await
    }

    async fn update_members(
        &self,
        chat_id: &str,
        expected: &[String],
        members: Vec<String>,
        admins: Vec<String>,
    ) -> StoreResult<Chat> {
        let chat_id = chat_id.to_owned();
        let expected = expected.to_vec();
        let cache = self.chats.clone();
        self.blocking(move |db, _| {
            let txn = db.begin_write().map_err(backend_err)?;
            let updated = {
                let mut chats = txn.open_table(CHATS).map_err(backend_err)?;
                let mut chat = read_chat(&chats, &chat_id)?.ok_or(StoreError::NotFound)?;
                if chat.members != expected {
                    return Err(StoreError::Conflict("members changed concurrently".into()));
                }
                let mut index = txn.open_table(USER_CHATS).map_err(backend_err)?;
                for gone in chat.members.iter().filter(|m| !members.contains(m)) {
                    index
                        .remove((gone.as_str(), chat_id.as_str()))
                        .map_err(backend_err)?;
                }
                for added in members.iter().filter(|m| !chat.members.contains(m)) {
                    index
                        .insert((added.as_str(), chat_id.as_str()), chat.created_at)
                        .map_err(backend_err)?;
                }
                chat.members = members;
                chat.admins = admins;
                chats
                    .insert(chat_id.as_str(), encode(&chat)?.as_slice())
                    .map_err(backend_err)?;
                chat
            };
            txn.commit().map_err(backend_err)?;
            cache.lock().remove(&chat_id);
            Ok(updated)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_message(chat: &str, sender: &str, client_msg_id: &str) -> NewMessage {
        NewMessage {
            chat_id: chat.into(),
            sender_id: sender.into(),
            client_msg_id: client_msg_id.into(),
            content: format!("content of {client_msg_id}"),
            timestamp: 0,
        }
    }

    /// Start-up refuses journaled messages that would break id order or
    /// idempotency (the journal cannot hold them unless it was damaged).
    #[tokio::test]
    async fn restore_refuses_what_breaks_order_or_idempotency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let ids = Arc::new(Snowflake::new(0));
        let stored = {
            let store = EmbeddedStore::open(&path, ids.clone()).unwrap();
            let mut results = store
                .append(vec![
                    new_message("c", "alice", "a"),
                    new_message("c", "alice", "b"),
                ])
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.unwrap().message);
            (results.next().unwrap(), results.next().unwrap())
        };
        let (first, newest) = stored;
        let below_head = Message {
            id: first.id - 1,
            client_msg_id: "late".into(),
            ..first.clone()
        };
        let repeat = Message {
            id: newest.id + 1,
            ..first.clone()
        };
        let fine = Message {
            id: newest.id + 2,
            client_msg_id: "c".into(),
            prev_id: newest.id,
            ..first.clone()
        };
        let (mut journal, _) = Journal::open(&dir.path().join("db.redb.journal")).unwrap();
        let rows: Vec<Vec<u8>> = [below_head, repeat, fine.clone()]
            .iter()
            .map(|m| encode(m).unwrap())
            .collect();
        journal.append(rows.iter().map(Vec::as_slice)).unwrap();
        drop(journal);

        let store = EmbeddedStore::open(&path, ids).unwrap();
        let ids: Vec<u64> = store
            .page_after("c", 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, [first.id, newest.id, fine.id]);
    }
}
