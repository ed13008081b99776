//! Messages, receipts and chats in one redb file.
//!
//! Appends from every dispatch lane meet in one writer thread, which takes
//! whatever is queued as one group: it assigns each new message the next id
//! of its chat, appends the group's rows to the journal (see `journal.rs`)
//! and syncs it, one sequential write, and then acknowledges the group. The
//! rows wait in memory (see `unflushed.rs`), where every read finds them,
//! until a flusher thread writes everything gathered over 100 ms (or 4 MiB)
//! to the B-tree in one synced transaction (each chat's messages as runs,
//! see `runs.rs`) and the journal it came from is emptied. So the tree's
//! page writes and its fsync, which cost as much for a group of three
//! messages as for thousands, are paid ten times a second, off the path of
//! any acknowledgement. There are two journals: the
//! writer appends to one while the flusher empties the other.
//!
//! Receipts and chats are small and rarer: each commits with an fsync of its own.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::journal::Journal;
use super::runs;
use super::unflushed::{Rows, SharedUnflushed, Unflushed, client_key};

use crate::backend::{
    Appended, Chat, ChatDirectory, Message, MessageStore, NewMessage, Receipt, ReceiptKind,
    StoreError, StoreResult, Watermarks,
};
use crate::ids::Snowflake;

/// (chat, id of the last message of the run) -> a run of the chat's
/// messages, or one message as JSON (see `runs.rs`).
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
    /// Appends go to one writer thread that journals whatever is queued as
    /// one group: one fsync serves every dispatch lane.
    appends: Arc<Writer>,
    /// Acknowledged messages the tree does not hold yet.
    unflushed: SharedUnflushed,
    /// Chats as last committed: every send and every fan-out reads its chat,
    /// and this process is the only writer, so the cache is exact.
    chats: Arc<ChatCache>,
    /// Set once appends can no longer succeed until a restart.
    failure: Arc<Failure>,
}

/// Why the store stopped taking appends, for `/readyz`: after a failed
/// sync a journal refuses appends until the gateway restarts (and the
/// restart settles the groups whose sync failed), so the gateway should stop
/// getting clients rather than answer every send with an error.
#[derive(Debug, Default)]
struct Failure(std::sync::OnceLock<String>);

impl Failure {
    /// Records the first failure (later ones follow from it).
    fn set(&self, reason: impl std::fmt::Display) {
        let _ = self.0.set(reason.to_string());
    }
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

/// Journal bytes after which the writer seals its rows for the flusher:
/// half of what a journal preallocates, so appends normally land in blocks
/// that exist. While a flush runs the writer goes on appending, so a slow
/// one grows the file (still correct; each sync then updates its size too).
const FLUSH_BYTES: u64 = 4 << 20;
/// Age of the oldest unsealed group after which the writer seals its rows
/// for the flusher (or as soon as the previous flush is done, if later).
/// Each flush rewrites, per chat it touches, the last leaf of the messages
/// and of the idempotency index and their branch pages, whatever the
/// number of rows, so longer intervals write less: at 1 s the flusher wrote
/// 0.55 GB to disk in a `one-to-one --rates 14000,28000` run against 1.29 GB
/// at 100 ms. But the peak and the p99 were, if anything, a little worse
/// (peak median 57.6k against 60.6k msg/s over six alternated runs each;
/// p99 within the noise), and those are the targets, so it stays at 100 ms.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// Journal bytes at which the writer stops taking groups until the running
/// flush is done: memory and journal stay bounded when the tree falls behind.
const MAX_UNFLUSHED_BYTES: u64 = 64 << 20;
/// How long a group waits for a running flush at `MAX_UNFLUSHED_BYTES`
/// before it is refused (the client retries).
const BEHIND_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The two journal files beside a store file at `path`.
fn journal_paths(path: &Path) -> [std::path::PathBuf; 2] {
    ["0", "1"].map(|n| {
        let mut name = path.as_os_str().to_owned();
        name.push(".journal.");
        name.push(n);
        name.into()
    })
}

/// The single journal file that stores written before the flusher had.
fn legacy_journal_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".journal");
    name.into()
}

/// Rows sealed by the writer, and the journal that holds them, for the flusher.
struct FlushJob {
    rows: Arc<Rows>,
    journal: Journal,
}

/// The writer thread: takes the first queued job (waiting for it) and
/// everything queued behind it, journals them as one group, and answers
/// each job with its own slice of the results.
fn group_commit_writer(
    db: Arc<Database>,
    ids: Arc<Snowflake>,
    unflushed: SharedUnflushed,
    journals: [Journal; 2],
    flush_interval: std::time::Duration,
    jobs: std::sync::mpsc::Receiver<AppendJob>,
    failure: Arc<Failure>,
) {
    let [mut journal, spare] = journals;
    // The journal not being appended to: here when the flusher is idle.
    let mut spare = Some(spare);
    let (flush_jobs, flush_queue) = std::sync::mpsc::channel::<FlushJob>();
    let (done, emptied) = std::sync::mpsc::channel::<Journal>();
    let stopping = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (db, unflushed, stopping) = (db.clone(), unflushed.clone(), stopping.clone());
        let failure = failure.clone();
        std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || {
                flusher(
                    &db,
                    &unflushed,
                    &stopping,
                    flush_interval,
                    flush_queue,
                    done,
                    &failure,
                )
            })
    };
    let flusher = match flusher {
        Ok(thread) => thread,
        Err(e) => {
            tracing::error!(error = %e, "store: cannot start the flusher thread");
            failure.set(format_args!("cannot start the flusher thread: {e}"));
            return;
        }
    };
    let mut heads = Heads::default();
    // When the oldest unsealed group was journaled.
    let mut oldest: Option<std::time::Instant> = None;
    // Client keys of groups whose journal append failed: such a record may
    // still be on disk and come back at the next start, so storing a retry
    // under a new id now could be undone by that restore.
    let mut unsure = std::collections::HashSet::new();
    // Whether the loop ended because the flusher stopped (else the store was dropped).
    let flusher_stopped = loop {
        if spare.is_none() {
            match emptied.try_recv() {
                Ok(empty) => spare = Some(empty),
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break true,
            }
        }
        let due = journal.recorded_bytes() >= FLUSH_BYTES
            || oldest.is_some_and(|t| t.elapsed() >= flush_interval);
        if due && let Some(empty) = spare.take() {
            let rows = unflushed.write().seal();
            let full = std::mem::replace(&mut journal, empty);
            if flush_jobs
                .send(FlushJob {
                    rows,
                    journal: full,
                })
                .is_err()
            {
                break true;
            }
            oldest = None;
        }
        let first = match jobs.recv_timeout(flush_interval) {
            Ok(job) => job,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break false,
        };
        let mut group = vec![first];
        while let Ok(job) = jobs.try_recv() {
            group.push(job);
        }
        if spare.is_none() && journal.recorded_bytes() >= MAX_UNFLUSHED_BYTES {
            // Behind the disk: wait a while for the running flush, then
            // refuse rather than let memory and the journal grow unbounded.
            let refused = match emptied.recv_timeout(BEHIND_WAIT) {
                Ok(empty) => {
                    spare = Some(empty);
                    None
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Some(false),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Some(true),
            };
            if let Some(stopped) = refused {
                for job in group {
                    let _ = job.reply.send(Err(StoreError::Unavailable(
                        "the store is behind writing to disk; retry".into(),
                    )));
                }
                if stopped {
                    break true;
                }
                continue;
            }
        }
        let sizes: Vec<usize> = group.iter().map(|j| j.batch.len()).collect();
        let mut replies = Vec::with_capacity(group.len());
        let mut all = Vec::with_capacity(sizes.iter().sum());
        for job in group {
            all.extend(job.batch);
            replies.push(job.reply);
        }
        let was_empty = journal.recorded_bytes() == 0;
        let appended = append_group(
            &db,
            &ids,
            &mut heads,
            &mut unsure,
            &unflushed,
            &mut journal,
            all,
        );
        if was_empty && journal.recorded_bytes() > 0 {
            oldest = Some(std::time::Instant::now());
        }
        if journal.is_broken() {
            failure.set("a journal write or sync failed; restart the gateway");
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
    };
    if flusher_stopped {
        tracing::error!("store: the flusher stopped; appends stop too");
        failure.set("the flusher stopped");
    }
    // A clean shutdown leaves the journals empty: the running flush (if
    // any) finishes, then the rest goes in a last one. A flush that fails
    // now is not retried: the journals keep its rows for the next start.
    stopping.store(true, Ordering::Relaxed);
    if spare.is_none() {
        let _ = emptied.recv();
    }
    let last = {
        let mut recent = unflushed.write();
        // Still flushing: the flusher gave up (or died) and its journal
        // keeps those rows; this one keeps the active ones.
        (!recent.active_is_empty() && !recent.is_flushing()).then(|| recent.seal())
    };
    if let Some(rows) = last {
        let _ = flush_jobs.send(FlushJob { rows, journal });
    }
    drop(flush_jobs);
    let _ = flusher.join();
}

/// The flusher thread: writes each sealed set of rows to the tree in one
/// synced transaction, then empties the journal that held them and hands
/// it back to the writer.
fn flusher(
    db: &Database,
    unflushed: &SharedUnflushed,
    stopping: &AtomicBool,
    retry_after: std::time::Duration,
    queue: std::sync::mpsc::Receiver<FlushJob>,
    done: std::sync::mpsc::Sender<Journal>,
    failure: &Failure,
) {
    yield_to_latency_bound_threads();
    for FlushJob { rows, mut journal } in queue {
        // Until the tree has the rows, the journal must keep them: retry.
        // At shutdown, give up instead; the next start replays the journal.
        while let Err(e) = write_rows(db, &rows) {
            if stopping.load(Ordering::Relaxed) {
                tracing::warn!(error = %e, "store: the last flush failed; the journal keeps its rows");
                return;
            }
            tracing::warn!(error = %e, "store: flushing to the tree failed; retrying");
            std::thread::sleep(retry_after);
        }
        // A journal that fails to empty refuses appends from then on (see
        // `Journal`); its records are in the tree, so a restart skips them.
        if let Err(e) = journal.clear() {
            tracing::error!(error = %e, "store: emptying a journal failed");
            failure.set(format_args!(
                "emptying a journal failed ({e}); restart the gateway"
            ));
        }
        unflushed.write().flushed();
        if done.send(journal).is_err() {
            return;
        }
    }
}

/// Lowers the calling thread's scheduling priority (nice 10).
///
/// Under load a flush is tens of milliseconds of B-tree work, on as few as
/// two cores shared with the socket tasks and the writer that every ack
/// waits for; at equal priority the scheduler preempts those for slices of
/// several milliseconds. The flusher's work can wait: its journal holds the
/// rows meanwhile, and the writer stops only when 64 MiB are unflushed.
fn yield_to_latency_bound_threads() {
    // On Linux a nice value belongs to the thread whose id is given.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let this_thread = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(this_thread), 10) {
            tracing::debug!(error = %e, "store: could not lower the flusher's priority");
        }
    }
}

/// Writes flushed rows and their idempotency entries in one synced transaction.
fn write_rows(db: &Database, rows: &Rows) -> StoreResult<()> {
    let txn = db.begin_write().map_err(backend_err)?;
    {
        let mut messages = txn.open_table(MESSAGES).map_err(backend_err)?;
        for (chat, rows) in rows.chats() {
            for (last, run) in runs::runs(rows) {
                messages
                    .insert((chat, last), run.as_ref())
                    .map_err(backend_err)?;
            }
        }
        let mut by_client = txn.open_table(SENT_BY_CLIENT_ID).map_err(backend_err)?;
        for (key, id) in rows.client_ids() {
            by_client.insert(key, id).map_err(backend_err)?;
        }
    }
    txn.commit().map_err(backend_err)
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

pub(super) fn backend_err(e: impl std::fmt::Display) -> StoreError {
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
    /// Opens (or creates) the store file at `path`, with its two journals
    /// beside it (`path` + `.journal.0` and `.journal.1`), and puts back
    /// what the journals hold that the file lacks.
    pub fn open(path: &Path, ids: Arc<Snowflake>) -> anyhow::Result<Self> {
        Self::open_flushing_every(path, ids, FLUSH_INTERVAL)
    }

    /// [`Self::open`] with another flush interval (tests that must see
    /// flushes happen within a short run).
    fn open_flushing_every(
        path: &Path,
        ids: Arc<Snowflake>,
        flush_interval: std::time::Duration,
    ) -> anyhow::Result<Self> {
        Self::open_with(path, ids, flush_interval, |_| {})
    }

    /// [`Self::open_flushing_every`], with `prepare` applied to both
    /// journals before the writer takes them (tests inject I/O faults).
    fn open_with(
        path: &Path,
        ids: Arc<Snowflake>,
        flush_interval: std::time::Duration,
        prepare: impl Fn(&mut Journal),
    ) -> anyhow::Result<Self> {
        let db = Database::create(path)?;
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

        let [first, second] = journal_paths(path);
        let (mut first, mut journaled) = Journal::open(&first)?;
        let (mut second, more) = Journal::open(&second)?;
        journaled.extend(more);
        let legacy = legacy_journal_path(path);
        if legacy.exists() {
            let (_, old) = Journal::open(&legacy)?;
            journaled.extend(old);
        }
        if !journaled.is_empty() {
            let restored = restore(&db, journaled)?;
            tracing::info!(restored, "store: messages put back from the journal");
        }
        // Restored or not, what the journals held is in the tree now.
        for journal in [&mut first, &mut second] {
            if journal.recorded_bytes() > 0 {
                journal.clear()?;
            }
        }
        if legacy.exists() {
            std::fs::remove_file(&legacy)?;
        }
        prepare(&mut first);
        prepare(&mut second);

        let db = Arc::new(db);
        let unflushed = SharedUnflushed::default();
        let failure = Arc::new(Failure::default());
        let (sender, jobs) = std::sync::mpsc::channel();
        let thread = {
            let (db, ids, unflushed) = (db.clone(), ids.clone(), unflushed.clone());
            let failure = failure.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || {
                    group_commit_writer(
                        db,
                        ids,
                        unflushed,
                        [first, second],
                        flush_interval,
                        jobs,
                        failure,
                    )
                })?
        };
        let appends = Arc::new(Writer {
            jobs: Some(sender),
            thread: Some(thread),
        });
        Ok(Self {
            db,
            ids,
            appends,
            unflushed,
            chats: Arc::default(),
            failure,
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
/// a chat not in the map gets its head from its newest unflushed or stored
/// message.
#[derive(Default)]
struct Heads(std::collections::HashMap<String, u64>);

impl Heads {
    /// Beyond this many chats the map starts over.
    const CAPACITY: usize = 100_000;

    fn get(
        &self,
        unflushed: &Unflushed,
        messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        chat: &str,
    ) -> StoreResult<u64> {
        if let Some(&head) = self.0.get(chat) {
            return Ok(head);
        }
        match unflushed.newest(chat) {
            Some(head) => Ok(head),
            None => newest_id(messages, chat).map_err(backend_err),
        }
    }

    /// Takes in the heads of a journaled group.
    fn extend(&mut self, moved: std::collections::HashMap<String, u64>) {
        if self.0.len() + moved.len() > Self::CAPACITY {
            self.0.clear();
        }
        self.0.extend(moved);
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

/// Stores the journaled messages the file lacks (those acknowledged after
/// its last flush), with their index entries, in one synced transaction;
/// returns how many.
///
/// Ids grow in the order messages were journaled, and the file holds every
/// message of a chat up to some point, so every missing message is above
/// its chat's newest stored one and its client-msg-id is free. One that is
/// not is refused (and logged) rather than let it break id order or
/// idempotency.
fn restore(db: &Database, mut journaled: Vec<Message>) -> anyhow::Result<usize> {
    journaled.sort_by_key(|m| m.id);
    let txn = db.begin_write()?;
    let mut restored = 0;
    {
        let mut messages = txn.open_table(MESSAGES)?;
        let mut by_client = txn.open_table(SENT_BY_CLIENT_ID)?;
        for message in journaled {
            let chat = message.chat_id.as_str();
            if runs::get(&messages, chat, message.id)?.is_some() {
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

/// Assigns ids to a group's new messages, journals them, and makes them
/// readable; a repeated client-msg-id gets the message stored under it.
fn append_group(
    db: &Database,
    ids: &Snowflake,
    heads: &mut Heads,
    unsure: &mut std::collections::HashSet<String>,
    unflushed: &SharedUnflushed,
    journal: &mut Journal,
    batch: Vec<NewMessage>,
) -> StoreResult<Vec<StoreResult<Appended>>> {
    let mut results = Vec::with_capacity(batch.len());
    // The new messages: client key, place in `results`, row (also what the
    // journal records).
    let mut fresh: Vec<(String, usize, Vec<u8>)> = Vec::with_capacity(batch.len());
    // Heads moved by this group: they count only once it is journaled.
    let mut moved = std::collections::HashMap::new();
    // Where each new client key sits in `results`, for repeats within the group.
    let mut in_group = std::collections::HashMap::new();
    {
        // The unflushed rows before the tree (see `unflushed.rs`).
        let recent = unflushed.read();
        let txn = db.begin_read().map_err(backend_err)?;
        let messages = txn.open_table(MESSAGES).map_err(backend_err)?;
        let by_client = txn.open_table(SENT_BY_CLIENT_ID).map_err(backend_err)?;
        for new in batch {
            let key = client_key(&new.chat_id, &new.sender_id, &new.client_msg_id);
            if unsure.contains(&key) {
                results.push(Err(StoreError::Unavailable(
                    "an earlier attempt of this message may be stored; it is known after a restart"
                        .into(),
                )));
                continue;
            }
            if let Some(&at) = in_group.get(&key) {
                let first: &StoreResult<Appended> = &results[at];
                let message = first
                    .as_ref()
                    .map(|a| a.message.clone())
                    .map_err(Clone::clone)?;
                results.push(Ok(Appended {
                    message,
                    duplicate: true,
                }));
                continue;
            }
            let earlier = match recent.client_id(&key) {
                Some(id) => Some(id),
                None => by_client
                    .get((
                        new.chat_id.as_str(),
                        new.sender_id.as_str(),
                        new.client_msg_id.as_str(),
                    ))
                    .map_err(backend_err)?
                    .map(|g| g.value()),
            };
            if let Some(earlier) = earlier {
                let row = match recent.get(&new.chat_id, earlier) {
                    Some(row) => row,
                    None => runs::get(&messages, &new.chat_id, earlier)?.ok_or_else(|| {
                        StoreError::Unavailable(
                            "idempotency index points at a missing message".into(),
                        )
                    })?,
                };
                results.push(Ok(Appended {
                    message: decode(&row)?,
                    duplicate: true,
                }));
                continue;
            }
            let head = match moved.get(&new.chat_id) {
                Some(&head) => head,
                None => heads.get(&recent, &messages, &new.chat_id)?,
            };
            let id = ids.next_after(head);
            let message = Message {
                id,
                chat_id: new.chat_id,
                sender_id: new.sender_id,
                client_msg_id: new.client_msg_id,
                content: new.content,
                timestamp: new.timestamp,
                prev_id: head,
            };
            fresh.push((key.clone(), results.len(), encode(&message)?));
            in_group.insert(key, results.len());
            moved.insert(message.chat_id.clone(), id);
            results.push(Ok(Appended {
                message,
                duplicate: false,
            }));
        }
    }
    if fresh.is_empty() {
        return Ok(results);
    }
    // Not acknowledged unless synced. If the sync failed, the record may
    // still be on disk and come back at the next start, where a retry with
    // the same client-msg-id finds it (until then retries are refused).
    if let Err(e) = journal.append(fresh.iter().map(|(_, _, row)| row.as_slice())) {
        unsure.extend(fresh.into_iter().map(|(key, _, _)| key));
        return Err(backend_err(e));
    }
    {
        let mut recent = unflushed.write();
        let rows = recent.active_mut();
        for (key, at, row) in fresh {
            if let Ok(appended) = &results[at] {
                rows.insert(&appended.message.chat_id, appended.message.id, key, row);
            }
        }
    }
    heads.extend(moved);
    Ok(results)
}

#[async_trait]
impl crate::backend::Probe for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded store"
    }

    async fn ping(&self) -> StoreResult<()> {
        match self.failure.0.get() {
            Some(reason) => Err(StoreError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }
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
        let unflushed = self.unflushed.clone();
        self.blocking(move |db, _| {
            let limit = limit as usize;
            let end = before.unwrap_or(u64::MAX);
            // Unflushed rows are the chat's newest: only what they lack
            // comes from the tree (read second: see `unflushed.rs`).
            let mut rows = unflushed.read().before(&chat, end, limit);
            if rows.len() < limit {
                let end = rows.last().map_or(end, |&(id, _)| id);
                let txn = db.begin_read().map_err(backend_err)?;
                let table = txn.open_table(MESSAGES).map_err(backend_err)?;
                rows.extend(runs::before(&table, &chat, end, limit - rows.len())?);
            }
            rows.iter().map(|(_, row)| decode(row)).collect()
        })
        .await
    }

    async fn page_after(&self, chat: &str, after: u64, limit: u32) -> StoreResult<Vec<Message>> {
        let chat = chat.to_owned();
        let unflushed = self.unflushed.clone();
        self.blocking(move |db, _| {
            let limit = limit as usize;
            let Some(start) = after.checked_add(1) else {
                return Ok(Vec::new());
            };
            // The tree holds the older rows, but is read second (see
            // `unflushed.rs`); a row in both counts once.
            let recent = unflushed.read().after(&chat, after, limit);
            let txn = db.begin_read().map_err(backend_err)?;
            let table = txn.open_table(MESSAGES).map_err(backend_err)?;
            let stored_end = recent.first().map_or(u64::MAX, |&(id, _)| id);
            let mut out = Vec::new();
            for (_, row) in runs::between(&table, &chat, start, stored_end, limit)? {
                out.push(decode(&row)?);
            }
            for (_, row) in recent.iter().take(limit - out.len()) {
                out.push(decode(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn get(&self, chat: &str, id: u64) -> StoreResult<Option<Message>> {
        let chat = chat.to_owned();
        let unflushed = self.unflushed.clone();
        self.blocking(move |db, _| {
            if let Some(row) = unflushed.read().get(&chat, id) {
                return decode(&row).map(Some);
            }
            let txn = db.begin_read().map_err(backend_err)?;
            let table = txn.open_table(MESSAGES).map_err(backend_err)?;
            runs::get(&table, &chat, id)?
                .map(|row| decode(&row))
                .transpose()
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
        let (first, newest) = {
            let store = EmbeddedStore::open(&path, ids.clone()).unwrap();
            let batch = vec![
                new_message("c", "alice", "a"),
                new_message("c", "alice", "b"),
            ];
            let mut stored = append_all(&store, batch).await.into_iter();
            let mut next = || stored.next().unwrap().message;
            (next(), next())
        };
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
        // The second journal: start-up reads both.
        let (mut journal, _) = Journal::open(&journal_paths(&path)[1]).unwrap();
        let rows: Vec<Vec<u8>> = [below_head, repeat, fine.clone()]
            .iter()
            .map(|m| encode(m).unwrap())
            .collect();
        journal.append(rows.iter().map(Vec::as_slice)).unwrap();
        drop(journal);

        let store = EmbeddedStore::open(&path, ids).unwrap();
        assert_eq!(ids_in(&store, "c").await, [first.id, newest.id, fine.id]);
    }

    /// A group whose journal sync fails is not acknowledged and not
    /// readable; a retry of it is refused while the store cannot tell
    /// whether the record reached the disk, and the store reports itself
    /// not ready; after a restart the retry finds it stored, once, in its
    /// place in the chat.
    #[tokio::test]
    async fn a_failed_sync_is_neither_acknowledged_nor_stored_twice() {
        use super::super::journal::InjectedFaults;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let ids = Arc::new(Snowflake::new(0));
        let faults = Arc::new(InjectedFaults::default());
        let first = {
            let store = EmbeddedStore::open_with(&path, ids.clone(), FLUSH_INTERVAL, |journal| {
                journal.inject(faults.clone())
            })
            .unwrap();
            let first = append_one(&store, new_message("c", "alice", "a"))
                .await
                .message;
            faults
                .failing_syncs
                .store(1, std::sync::atomic::Ordering::SeqCst);
            let failed = store.append(vec![new_message("c", "alice", "b")]).await;
            assert!(
                matches!(failed, Err(StoreError::Unavailable(_))),
                "{failed:?}"
            );
            let retried = store
                .append(vec![new_message("c", "alice", "b")])
                .await
                .unwrap();
            assert!(
                matches!(&retried[..], [Err(StoreError::Unavailable(_))]),
                "{retried:?}"
            );
            assert_eq!(
                store.page_after("c", 0, 10).await.unwrap(),
                std::slice::from_ref(&first)
            );
            // `/readyz` reports it, so clients go to another gateway.
            let ping = crate::backend::Probe::ping(&store).await;
            assert!(matches!(ping, Err(StoreError::Unavailable(_))), "{ping:?}");
            first
        };
        // The record was written before its sync failed, so the file has it.
        let store = EmbeddedStore::open(&path, ids).unwrap();
        crate::backend::Probe::ping(&store).await.unwrap();
        let again = append_one(&store, new_message("c", "alice", "b")).await;
        assert!(again.duplicate);
        assert_eq!(again.message.prev_id, first.id);
        assert_eq!(
            store.page_after("c", 0, 10).await.unwrap(),
            [first, again.message]
        );
    }

    /// When the tree falls behind (a flush that does not finish) and 64 MiB
    /// wait in the journal, a send is refused after a bounded wait instead
    /// of growing memory and the journal without end; once the flush ends,
    /// the retry is stored, and nothing acknowledged before was lost.
    #[tokio::test]
    // Only the flusher thread waits on the held lock, never a task.
    #[allow(clippy::await_holding_lock)]
    async fn a_store_behind_its_disk_refuses_then_recovers() {
        use super::super::journal::InjectedFaults;
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(InjectedFaults::default());
        let store = EmbeddedStore::open_with(
            &dir.path().join("db.redb"),
            Arc::new(Snowflake::new(0)),
            FLUSH_INTERVAL,
            |journal| journal.inject(faults.clone()),
        )
        .unwrap();
        let held = faults.clearing.lock().unwrap();
        // 1 MiB messages: the first 4 MiB go to a flush that cannot end,
        // the rest fill the other journal up to its limit.
        const MIB: u64 = 1 << 20;
        let big = |n: usize| NewMessage {
            content: "x".repeat(MIB as usize),
            ..new_message("c", "alice", &format!("m{n}"))
        };
        let limit = ((MAX_UNFLUSHED_BYTES + FLUSH_BYTES) / MIB) as usize;
        let mut acked = Vec::new();
        let mut refused = None;
        for n in 0..limit + 8 {
            match store.append(vec![big(n)]).await {
                Ok(mut results) => acked.push(results.remove(0).unwrap().message.id),
                Err(e) => {
                    refused = Some((n, e));
                    break;
                }
            }
        }
        let (n, error) = refused.expect("a store 64 MiB behind took every send");
        assert!(
            matches!(&error, StoreError::Unavailable(m) if m.contains("behind")),
            "{error:?}"
        );
        assert!(
            n >= (MAX_UNFLUSHED_BYTES / MIB) as usize,
            "refused after {n} MiB"
        );
        // The flush ends: the retry is stored, after everything acked.
        drop(held);
        let retried = append_one(&store, big(n)).await;
        assert!(!retried.duplicate);
        acked.push(retried.message.id);
        assert_eq!(ids_in(&store, "c").await, acked);
    }

    /// The ids of the first thousand messages of `chat`, oldest first.
    async fn ids_in(store: &EmbeddedStore, chat: &str) -> Vec<u64> {
        let page = store.page_after(chat, 0, 1000).await.unwrap();
        page.iter().map(|m| m.id).collect()
    }

    /// Waits until the flusher has moved every row to the tree.
    async fn until_flushed(store: &EmbeddedStore) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !store.unflushed.read().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no flush in 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Appends a batch whose every message must be answered without error.
    async fn append_all(store: &EmbeddedStore, batch: Vec<NewMessage>) -> Vec<Appended> {
        let results = store.append(batch).await.unwrap();
        results.into_iter().map(Result::unwrap).collect()
    }

    async fn append_one(store: &EmbeddedStore, message: NewMessage) -> Appended {
        let mut appended = append_all(store, vec![message]).await;
        appended.remove(0)
    }

    /// A chat whose older messages were flushed to the tree and whose newer
    /// ones were not reads as one history, and repeats of either are found.
    #[tokio::test]
    async fn reads_and_repeats_span_flushed_and_unflushed_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open(&dir.path().join("db.redb"), Arc::new(Snowflake::new(0))).unwrap();
        let a = append_one(&store, new_message("c", "alice", "a"))
            .await
            .message;
        let b = append_one(&store, new_message("c", "bob", "b"))
            .await
            .message;
        until_flushed(&store).await;
        let c = append_one(&store, new_message("c", "alice", "c"))
            .await
            .message;
        assert!(!store.unflushed.read().is_empty());
        assert_eq!(c.prev_id, b.id);

        let all = vec![a.clone(), b.clone(), c.clone()];
        assert_eq!(store.page_after("c", 0, 10).await.unwrap(), all);
        assert_eq!(
            store.page_after("c", a.id, 1).await.unwrap(),
            std::slice::from_ref(&b)
        );
        assert_eq!(
            store.page_before("c", None, 2).await.unwrap(),
            [c.clone(), b.clone()]
        );
        assert_eq!(
            store.page_before("c", Some(c.id), 5).await.unwrap(),
            [b.clone(), a.clone()]
        );
        assert_eq!(store.get("c", a.id).await.unwrap(), Some(a.clone()));
        assert_eq!(store.get("c", c.id).await.unwrap(), Some(c.clone()));

        for (client_id, original) in [("a", &a), ("c", &c)] {
            let again = append_one(&store, new_message("c", "alice", client_id)).await;
            assert!(again.duplicate, "{client_id}");
            assert_eq!(&again.message, original);
        }
        // A repeat inside one group is that group's new message.
        let group = append_all(
            &store,
            vec![new_message("c", "bob", "d"), new_message("c", "bob", "d")],
        )
        .await;
        let (first, second) = (&group[0], &group[1]);
        assert!(!first.duplicate && second.duplicate);
        assert_eq!(first.message, second.message);
    }

    /// While messages are appended and flushed, a reader sees every message
    /// acknowledged before its read began, in order, with no gaps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_never_miss_an_acknowledged_message_across_flushes() {
        let dir = tempfile::tempdir().unwrap();
        // Flushing every 20 ms, whatever the default: the 500 ms below span many flushes.
        let store = EmbeddedStore::open_flushing_every(
            &dir.path().join("db.redb"),
            Arc::new(Snowflake::new(0)),
            std::time::Duration::from_millis(20),
        )
        .unwrap();
        let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = {
            let (store, acked) = (store.clone(), acked.clone());
            tokio::spawn(async move {
                let until = std::time::Instant::now() + std::time::Duration::from_millis(500);
                let mut n = 0;
                while std::time::Instant::now() < until {
                    let m = append_one(&store, new_message("c", "alice", &n.to_string())).await;
                    acked.store(m.message.id, Ordering::SeqCst);
                    n += 1;
                }
                n
            })
        };
        let mut reads = 0;
        while !writer.is_finished() {
            let newest_acked = acked.load(Ordering::SeqCst);
            let oldest_first = store.page_after("c", 0, u32::MAX).await.unwrap();
            let mut newest_first = store.page_before("c", None, u32::MAX).await.unwrap();
            newest_first.reverse();
            for page in [oldest_first, newest_first] {
                let mut prev = 0;
                for m in &page {
                    assert_eq!(m.prev_id, prev, "a gap before {}", m.id);
                    prev = m.id;
                }
                assert!(
                    prev >= newest_acked,
                    "missed acknowledged message {newest_acked}"
                );
            }
            reads += 1;
        }
        let appended = writer.await.unwrap();
        assert!(appended > 0 && reads > 0);
        assert_eq!(
            store.page_after("c", 0, u32::MAX).await.unwrap().len(),
            appended
        );
    }
}
