//! Messages and receipts in Cassandra. See `mod.rs` for the layout.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use futures_util::future::join_all;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;

use super::{CassandraStore, applied, unavailable};
use crate::backend::{
    Appended, Message, MessageStore, NewMessage, Receipt, ReceiptKind, StoreError, StoreResult,
    Watermarks,
};
use crate::ids::{EPOCH_MS, floor_for_time, time_of};

/// One day per bucket: a chat's partition holds at most a day of messages.
pub const DEFAULT_BUCKET_MS: i64 = 24 * 3600 * 1000;

/// `head` of a bucket that a newer bucket has taken over from.
const SEALED: i64 = -1;

/// How many rounds one append may lose to other writers (their commit or
/// seal landing first) before giving up under contention.
const MAX_ROUNDS: usize = 32;

/// How many rounds one append may take in all. Rounds that are not lost
/// make progress (a commit, retries found) or follow the clock into a new
/// bucket, so this only guards against a bug looping forever; short
/// buckets under a slow cluster can spend several rounds per message on
/// bucket moves.
const MAX_ROUNDS_IN_ALL: usize = 8 * MAX_ROUNDS;

/// Limits of one transaction: half of Cassandra's default batch size
/// failure threshold (`batch_size_fail_threshold`: 50 KiB), counting row
/// overhead generously. Larger batches only warn (above 5 KiB).
const MAX_MESSAGES_PER_COMMIT: usize = 64;
const MAX_BYTES_PER_COMMIT: usize = 24 * 1024;

/// What this gateway last learned about a chat's newest bucket. Only a hint:
/// each commit is a transaction conditioned on `last`, and a failed one
/// refreshes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    bucket: i32,
    /// The last id committed in `bucket`; `None` while it has none.
    last: Option<i64>,
    /// The bucket before, if any (its claims are checked for retries).
    previous: Option<i32>,
}

/// Heads of the chats this gateway wrote to recently.
#[derive(Debug, Default)]
pub(super) struct HeadCache(Mutex<HashMap<String, Head>>);

impl HeadCache {
    /// Beyond this many chats the cache starts over; it is only a hint.
    const CAPACITY: usize = 100_000;

    fn get(&self, chat: &str) -> Option<Head> {
        self.lock().get(chat).copied()
    }

    fn put(&self, chat: &str, head: Head) {
        let mut heads = self.lock();
        if heads.len() >= Self::CAPACITY && !heads.contains_key(chat) {
            heads.clear();
        }
        heads.insert(chat.to_owned(), head);
    }

    fn forget(&self, chat: &str) {
        self.lock().remove(chat);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Head>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The claim key of a (sender, client msg id): user ids never contain `\n`.
fn client_key(message: &NewMessage) -> String {
    format!("{}\n{}", message.sender_id, message.client_msg_id)
}

type MessageRow = (i64, String, String, String, i64, Option<i64>);

fn message_of(
    chat: &str,
    (id, sender_id, client_msg_id, content, sent_at, prev_id): MessageRow,
) -> Message {
    Message {
        id: id as u64,
        chat_id: chat.to_owned(),
        sender_id,
        client_msg_id,
        content,
        timestamp: sent_at,
        prev_id: prev_id.unwrap_or(0) as u64,
    }
}

impl CassandraStore {
    /// The bucket an id belongs to.
    fn bucket_of(&self, id: i64) -> i32 {
        ((time_of(id as u64) - EPOCH_MS) / self.bucket_ms).clamp(0, i64::from(i32::MAX)) as i32
    }

    /// The smallest id that falls in `bucket`.
    fn bucket_floor(&self, bucket: i32) -> i64 {
        floor_for_time(EPOCH_MS + i64::from(bucket) * self.bucket_ms) as i64
    }

    async fn read_head(&self, chat: &str, bucket: i32) -> StoreResult<Option<i64>> {
        let rows = self
            .session
            .execute_unpaged(&self.statements.head, (chat, bucket))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        let row = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(unavailable)?;
        Ok(row.and_then(|(head,)| head))
    }

    /// Reads a chat's newest bucket and its head; `None` for a chat with no messages.
    async fn load_head(&self, chat: &str) -> StoreResult<Option<Head>> {
        let rows = self
            .session
            .execute_unpaged(&self.statements.newest_buckets, (chat,))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        let buckets: Vec<i32> = rows
            .rows::<(i32,)>()
            .map_err(unavailable)?
            .map(|row| row.map(|(b,)| b))
            .collect::<Result<_, _>>()
            .map_err(unavailable)?;
        let Some(&bucket) = buckets.first() else {
            return Ok(None);
        };
        let last = self.read_head(chat, bucket).await?;
        // Retries are checked against the newest bucket below that holds a
        // message: a bucket listed just before time moved on can be empty.
        // (Once `bucket` has a commit, everything below it is sealed.)
        let previous = match last {
            Some(id) if id != SEALED => self
                .newest_message_below(chat, bucket, false)
                .await?
                .map(|(_, older)| older),
            _ => buckets.get(1).copied(),
        };
        Ok(Some(Head {
            bucket,
            last,
            previous,
        }))
    }

    /// The newest message in a bucket below `bucket`, and that bucket,
    /// looking from the nearest bucket down. With `sealing`, each bucket is
    /// sealed before it is read (see `settle_below`).
    async fn newest_message_below(
        &self,
        chat: &str,
        bucket: i32,
        sealing: bool,
    ) -> StoreResult<Option<(i64, i32)>> {
        for older in self.buckets(chat, bucket - 1, true).await? {
            if sealing {
                self.seal_whatever_head(chat, older).await?;
            }
            if let Some(newest) = self
                .page_in_bucket(chat, older, i64::MAX, 1, true)
                .await?
                .first()
            {
                return Ok(Some((newest.id as i64, older)));
            }
        }
        Ok(None)
    }

    /// Seals `bucket` whatever its head is now; a commit (or another
    /// gateway's seal) that lands first moves the head the seal is
    /// conditioned on, so it is re-read and the loop sees which.
    async fn seal_whatever_head(&self, chat: &str, bucket: i32) -> StoreResult<()> {
        for _ in 0..MAX_ROUNDS {
            let head = self.read_head(chat, bucket).await?;
            if head == Some(SEALED) || self.seal(chat, bucket, head).await? {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "cassandra: bucket {bucket} of {chat} too contended to seal"
        )))
    }

    /// Readies `bucket` for its first commit. Every bucket below it is
    /// sealed, from the nearest down to the newest one holding a message:
    /// that one's own first commit sealed everything under it, so nothing
    /// can land late anywhere below `bucket` (a gateway that read an old
    /// head and committed slowly would otherwise put messages behind ours).
    /// Returns the id the first commit follows (the newest message below,
    /// 0 for a chat's first) and the bucket that message is in, whose
    /// claims a retry is checked against (not merely the nearest bucket
    /// below: one listed just before time moved past it stays empty);
    /// `None` when a newer bucket exists, so commits belong there (a late
    /// clock opened this one).
    async fn settle_below(
        &self,
        chat: &str,
        bucket: i32,
    ) -> StoreResult<Option<(i64, Option<i32>)>> {
        if !self
            .buckets(chat, bucket.saturating_add(1), false)
            .await?
            .is_empty()
        {
            return Ok(None);
        }
        // No message below means no claims below either.
        Ok(Some(
            match self.newest_message_below(chat, bucket, true).await? {
                Some((id, older)) => (id, Some(older)),
                None => (0, None),
            },
        ))
    }

    /// Seals `bucket` (no commit can land there any more) if its head is
    /// still `expected`; true when this call sealed it.
    async fn seal(&self, chat: &str, bucket: i32, expected: Option<i64>) -> StoreResult<bool> {
        let result = self
            .session
            .execute_unpaged(&self.statements.seal, (chat, bucket, expected))
            .await
            .map_err(unavailable)?;
        applied(result)
    }

    /// The messages that `keys` were claimed for in `bucket`.
    async fn claimed(
        &self,
        chat: &str,
        bucket: i32,
        keys: Vec<String>,
    ) -> StoreResult<HashMap<String, i64>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self
            .session
            .execute_unpaged(&self.statements.claims, (chat, bucket, keys))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        rows.rows::<(String, Option<i64>)>()
            .map_err(unavailable)?
            .filter_map(|row| match row {
                Ok((key, Some(id))) => Some(Ok((key, id))),
                Ok((_, None)) => None,
                Err(e) => Some(Err(unavailable(e))),
            })
            .collect()
    }

    async fn get_message(&self, chat: &str, id: i64) -> StoreResult<Option<Message>> {
        let rows = self
            .session
            .execute_unpaged(&self.statements.get_message, (chat, self.bucket_of(id), id))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        Ok(rows
            .maybe_first_row::<MessageRow>()
            .map_err(unavailable)?
            .map(|row| message_of(chat, row)))
    }

    /// The message a claim names, as a duplicate.
    async fn duplicate_of(&self, chat: &str, id: i64) -> StoreResult<Appended> {
        match self.get_message(chat, id).await? {
            Some(message) => Ok(Appended {
                message,
                duplicate: true,
            }),
            None => Err(StoreError::Unavailable(format!(
                "cassandra: claim in {chat} names missing message {id}"
            ))),
        }
    }

    /// Commits one chat's messages, in order. See the module docs for the protocol.
    async fn append_to_chat(
        &self,
        chat: &str,
        messages: Vec<NewMessage>,
    ) -> StoreResult<Vec<Appended>> {
        let mut results: Vec<Option<Appended>> = vec![None; messages.len()];
        // A key repeated within the batch resolves to its first occurrence.
        let mut first_of: HashMap<String, usize> = HashMap::new();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        let mut pending: Vec<usize> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            match first_of.entry(client_key(message)) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    repeats.push((i, *first.get()))
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(i);
                    pending.push(i);
                }
            }
        }

        let mut rounds = 0;
        let mut lost = 0;
        while !pending.is_empty() {
            rounds += 1;
            if lost >= MAX_ROUNDS || rounds > MAX_ROUNDS_IN_ALL {
                return Err(StoreError::Unavailable(format!(
                    "cassandra: chat {chat} too contended to commit"
                )));
            }
            let head = match self.heads.get(chat) {
                Some(head) => head,
                None => match self.load_head(chat).await? {
                    Some(head) => head,
                    None => {
                        // The chat's first message opens its first bucket.
                        let bucket = self.bucket_of(self.ids.next_id() as i64);
                        self.add_bucket(chat, bucket).await?;
                        Head {
                            bucket,
                            last: None,
                            previous: None,
                        }
                    }
                },
            };
            let floor = head
                .last
                .unwrap_or_else(|| self.bucket_floor(head.bucket) - 1);
            let first_id = self.ids.next_after(floor as u64) as i64;
            let target = self.bucket_of(first_id);
            if target > head.bucket {
                // Time moved into a new bucket: list it first, so that a
                // slower gateway still opening an older one sees it (see
                // `settle_below`, which seals the buckets below).
                self.add_bucket(chat, target).await?;
                self.heads.put(
                    chat,
                    Head {
                        bucket: target,
                        last: None,
                        previous: Some(head.bucket),
                    },
                );
                continue;
            }
            if head.last == Some(SEALED) {
                // Another writer opened a newer bucket.
                lost += 1;
                self.heads.forget(chat);
                continue;
            }
            let mut head = head;

            // The message these follow: the bucket's last, or for a bucket's
            // first commit the newest of the (now sealed) buckets before.
            let chain_start = match head.last {
                Some(last) => last,
                None => match self.settle_below(chat, head.bucket).await? {
                    Some((start, previous)) => {
                        head.previous = previous;
                        start
                    }
                    None => {
                        lost += 1;
                        self.heads.forget(chat);
                        continue;
                    }
                },
            };

            // A retry of a message committed in the (sealed, so settled)
            // bucket before this one.
            if let Some(previous) = head.previous {
                let keys = pending.iter().map(|&i| client_key(&messages[i])).collect();
                let earlier = self.claimed(chat, previous, keys).await?;
                if !earlier.is_empty() {
                    for &i in &pending {
                        if let Some(&id) = earlier.get(&client_key(&messages[i])) {
                            results[i] = Some(self.duplicate_of(chat, id).await?);
                        }
                    }
                    pending.retain(|&i| results[i].is_none());
                    continue;
                }
            }

            // Ids for as many pending messages as fit one commit in this bucket.
            let mut ids = Vec::new();
            let mut bytes = 0;
            let mut previous_id = floor;
            for &i in &pending {
                let id = if ids.is_empty() {
                    first_id
                } else {
                    self.ids.next_after(previous_id as u64) as i64
                };
                let m = &messages[i];
                bytes += m.content.len() + 2 * (m.client_msg_id.len() + m.sender_id.len()) + 128;
                if self.bucket_of(id) != head.bucket
                    || ids.len() == MAX_MESSAGES_PER_COMMIT
                    || (!ids.is_empty() && bytes > MAX_BYTES_PER_COMMIT)
                {
                    break;
                }
                ids.push((
                    i,
                    id,
                    if ids.is_empty() {
                        chain_start
                    } else {
                        previous_id
                    },
                ));
                previous_id = id;
            }

            let mut batch = Batch::new(BatchType::Logged);
            batch.append_statement(self.statements.move_head.clone());
            let mut values: Vec<Vec<Option<CqlValue>>> = Vec::with_capacity(1 + 2 * ids.len());
            let text = |s: &str| Some(CqlValue::Text(s.to_owned()));
            let chat_value = text(chat);
            let bucket_value = Some(CqlValue::Int(head.bucket));
            values.push(vec![
                Some(CqlValue::BigInt(previous_id)),
                chat_value.clone(),
                bucket_value.clone(),
                head.last.map(CqlValue::BigInt),
            ]);
            for &(i, id, prev_id) in &ids {
                let m = &messages[i];
                batch.append_statement(self.statements.insert_message.clone());
                values.push(vec![
                    chat_value.clone(),
                    bucket_value.clone(),
                    Some(CqlValue::BigInt(id)),
                    text(&m.sender_id),
                    text(&m.client_msg_id),
                    text(&m.content),
                    Some(CqlValue::BigInt(m.timestamp)),
                    Some(CqlValue::BigInt(prev_id)),
                ]);
                batch.append_statement(self.statements.insert_claim.clone());
                values.push(vec![
                    chat_value.clone(),
                    bucket_value.clone(),
                    text(&client_key(m)),
                    Some(CqlValue::BigInt(id)),
                ]);
            }
            let outcome = match self.session.batch(&batch, values).await {
                Ok(result) => applied(result),
                Err(e) => Err(unavailable(e)),
            };
            match outcome {
                Ok(true) => {
                    head.last = Some(previous_id);
                    self.heads.put(chat, head);
                    for (i, id, prev_id) in ids {
                        let m = &messages[i];
                        results[i] = Some(Appended {
                            message: Message {
                                id: id as u64,
                                chat_id: chat.to_owned(),
                                sender_id: m.sender_id.clone(),
                                client_msg_id: m.client_msg_id.clone(),
                                content: m.content.clone(),
                                timestamp: m.timestamp,
                                prev_id: prev_id as u64,
                            },
                            duplicate: false,
                        });
                    }
                }
                Ok(false) => {
                    // Another commit won the race, or some of these are
                    // retries of committed messages: learn which, then retry.
                    let keys = ids
                        .iter()
                        .map(|&(i, _, _)| client_key(&messages[i]))
                        .collect();
                    let claimed = self.claimed(chat, head.bucket, keys).await?;
                    if claimed.is_empty() {
                        lost += 1;
                    }
                    for &(i, _, _) in &ids {
                        if let Some(&id) = claimed.get(&client_key(&messages[i])) {
                            results[i] = Some(self.duplicate_of(chat, id).await?);
                        }
                    }
                    self.heads.forget(chat);
                }
                Err(e) => {
                    // Unknown outcome: the sender retries, and the claim
                    // makes the retry land once.
                    self.heads.forget(chat);
                    return Err(e);
                }
            }
            pending.retain(|&i| results[i].is_none());
        }

        for (i, first) in repeats {
            let mut appended = results[first].clone();
            if let Some(appended) = appended.as_mut() {
                appended.duplicate = true;
            }
            results[i] = appended;
        }
        results
            .into_iter()
            .map(|r| {
                r.ok_or_else(|| {
                    StoreError::Unavailable("cassandra: message left unresolved".into())
                })
            })
            .collect()
    }

    async fn add_bucket(&self, chat: &str, bucket: i32) -> StoreResult<()> {
        self.session
            .execute_unpaged(&self.statements.add_bucket, (chat, bucket))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// A chat's buckets from `from` downwards (newest first) or upwards.
    async fn buckets(&self, chat: &str, from: i32, downwards: bool) -> StoreResult<Vec<i32>> {
        let statement = if downwards {
            &self.statements.buckets_down_from
        } else {
            &self.statements.buckets_up_from
        };
        let rows = self
            .session
            .execute_unpaged(statement, (chat, from))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        rows.rows::<(i32,)>()
            .map_err(unavailable)?
            .map(|row| row.map(|(b,)| b).map_err(unavailable))
            .collect()
    }

    async fn page_in_bucket(
        &self,
        chat: &str,
        bucket: i32,
        cursor: i64,
        limit: i32,
        downwards: bool,
    ) -> StoreResult<Vec<Message>> {
        let statement = if downwards {
            &self.statements.page_down
        } else {
            &self.statements.page_up
        };
        let rows = self
            .session
            .execute_unpaged(statement, (chat, bucket, cursor, limit))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        rows.rows::<MessageRow>()
            .map_err(unavailable)?
            .map(|row| row.map(|row| message_of(chat, row)).map_err(unavailable))
            .collect()
    }

    /// Walks buckets from `cursor` in one direction until `limit` messages are found.
    async fn page(
        &self,
        chat: &str,
        cursor: i64,
        limit: u32,
        downwards: bool,
    ) -> StoreResult<Vec<Message>> {
        let mut page = Vec::new();
        if limit == 0 {
            return Ok(page);
        }
        for bucket in self
            .buckets(chat, self.bucket_of(cursor), downwards)
            .await?
        {
            let wanted = (limit as usize - page.len()) as i32;
            page.extend(
                self.page_in_bucket(chat, bucket, cursor, wanted, downwards)
                    .await?,
            );
            if page.len() >= limit as usize {
                break;
            }
        }
        Ok(page)
    }

    async fn read_marks(&self, chat: &str, user: &str) -> StoreResult<Watermarks> {
        let rows = self
            .session
            .execute_unpaged(&self.statements.receipt, (chat, user))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        let row = rows
            .maybe_first_row::<(Option<i64>, Option<i64>)>()
            .map_err(unavailable)?;
        let (delivered, read) = row.unwrap_or((None, None));
        Ok(Watermarks {
            delivered_up_to: delivered.unwrap_or(0) as u64,
            read_up_to: read.unwrap_or(0) as u64,
        })
    }
}

#[async_trait]
impl MessageStore for CassandraStore {
    async fn append(&self, messages: Vec<NewMessage>) -> StoreResult<Vec<StoreResult<Appended>>> {
        // Chats commit independently and concurrently; within a chat, in order.
        let mut by_chat: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, message) in messages.iter().enumerate() {
            by_chat.entry(message.chat_id.clone()).or_default().push(i);
        }
        let mut slots: Vec<Option<NewMessage>> = messages.into_iter().map(Some).collect();
        let groups: Vec<(String, Vec<usize>, Vec<NewMessage>)> = by_chat
            .into_iter()
            .map(|(chat, indices)| {
                let batch = indices.iter().filter_map(|&i| slots[i].take()).collect();
                (chat, indices, batch)
            })
            .collect();
        let outcomes = join_all(groups.into_iter().map(|(chat, indices, batch)| async move {
            let outcome = self.append_to_chat(&chat, batch).await;
            if let Err(e) = &outcome {
                tracing::warn!(chat, error = %e, "append failed");
            }
            (indices, outcome)
        }))
        .await;
        let mut results: Vec<Option<StoreResult<Appended>>> = vec![None; slots.len()];
        for (indices, outcome) in outcomes {
            match outcome {
                Ok(appended) => {
                    for (i, a) in indices.into_iter().zip(appended) {
                        results[i] = Some(Ok(a));
                    }
                }
                Err(e) => {
                    for i in indices {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Unavailable("lost result".into()))))
            .collect())
    }

    async fn page_before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        let cursor = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        self.page(chat, cursor, limit, true).await
    }

    async fn page_after(&self, chat: &str, after: u64, limit: u32) -> StoreResult<Vec<Message>> {
        let cursor = after.min(i64::MAX as u64) as i64;
        self.page(chat, cursor, limit, false).await
    }

    async fn get(&self, chat: &str, id: u64) -> StoreResult<Option<Message>> {
        if id > i64::MAX as u64 {
            return Ok(None);
        }
        self.get_message(chat, id as i64).await
    }

    async fn advance_receipt(
        &self,
        chat: &str,
        user: &str,
        kind: ReceiptKind,
        up_to: u64,
    ) -> StoreResult<(Watermarks, bool)> {
        let up_to = up_to.min(i64::MAX as u64);
        let current = self.read_marks(chat, user).await?;
        let (next, moved) = current.advanced(kind, up_to);
        if next == current {
            return Ok((current, false));
        }
        // The write timestamp is the watermark: concurrent advances from
        // several gateways settle on the highest, never on the last written.
        let mark = up_to as i64;
        let write = match kind {
            ReceiptKind::Delivered => {
                self.session
                    .execute_unpaged(&self.statements.mark_delivered, (mark, mark, chat, user))
                    .await
            }
            ReceiptKind::Read => {
                self.session
                    .execute_unpaged(&self.statements.mark_read, (mark, mark, mark, chat, user))
                    .await
            }
        };
        write.map_err(unavailable)?;
        Ok((next, moved))
    }

    async fn receipts(&self, chat: &str) -> StoreResult<Vec<Receipt>> {
        let rows = self
            .session
            .execute_unpaged(&self.statements.receipts, (chat,))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        rows.rows::<(String, Option<i64>, Option<i64>)>()
            .map_err(unavailable)?
            .map(|row| {
                row.map(|(user_id, delivered, read)| Receipt {
                    user_id,
                    marks: Watermarks {
                        delivered_up_to: delivered.unwrap_or(0) as u64,
                        read_up_to: read.unwrap_or(0) as u64,
                    },
                })
                .map_err(unavailable)
            })
            .collect()
    }
}
