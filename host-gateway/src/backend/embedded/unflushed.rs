//! Messages that are durable in the journal but not yet in the B-tree.
//!
//! The store's writer acknowledges a group once its journal record is
//! synced, and keeps the group's rows here; a flusher writes them to the
//! B-tree later, many groups in one transaction. Every read of messages
//! looks here first and then in the tree, in that order: the flusher only
//! drops rows from here after the tree has committed them, so a row is
//! always in at least one of the two places the reader looks (possibly in
//! both, which the reader dedupes by id).
//!
//! Within a chat every row here is newer than every row in the tree, except
//! the flushed rows themselves between the tree's commit and their removal
//! from here: the writer assigns ids in increasing order, and rows reach the
//! tree in the order they were written. Readers bound their tree range by
//! the rows found here, so those few count once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The rows of groups written since the last seal.
#[derive(Debug, Default)]
pub(super) struct Rows {
    /// chat -> message id -> the message as the tree stores it (JSON).
    by_chat: HashMap<String, BTreeMap<u64, Vec<u8>>>,
    /// [`client_key`] -> message id: the idempotency index of these rows.
    by_client: HashMap<String, u64>,
}

impl Rows {
    pub fn is_empty(&self) -> bool {
        self.by_chat.is_empty()
    }

    pub fn insert(&mut self, chat: &str, id: u64, client_key: String, row: Vec<u8>) {
        match self.by_chat.get_mut(chat) {
            Some(rows) => {
                rows.insert(id, row);
            }
            None => {
                self.by_chat
                    .insert(chat.to_owned(), BTreeMap::from([(id, row)]));
            }
        }
        self.by_client.insert(client_key, id);
    }

    /// Each chat with its rows in id order: what the flusher writes.
    pub fn chats(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = (u64, &[u8])>)> {
        self.by_chat.iter().map(|(chat, rows)| {
            let rows = rows.iter().map(|(&id, row)| (id, row.as_slice()));
            (chat.as_str(), rows)
        })
    }

    /// Every idempotency entry as (chat, sender, client-msg-id, id).
    pub fn client_ids(&self) -> impl Iterator<Item = ((&str, &str, &str), u64)> {
        self.by_client
            .iter()
            .map(|(key, &id)| (split_client_key(key), id))
    }
}

/// The rows being written and, while a flush runs, the rows it writes.
#[derive(Debug, Default)]
pub(super) struct Unflushed {
    active: Rows,
    flushing: Option<Arc<Rows>>,
}

/// Shared between the writer (which adds), the flusher (which drops what
/// the tree committed) and readers.
#[derive(Debug, Default, Clone)]
pub(super) struct SharedUnflushed(Arc<RwLock<Unflushed>>);

impl SharedUnflushed {
    pub fn read(&self) -> RwLockReadGuard<'_, Unflushed> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Unflushed> {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Unflushed {
    /// Adds a group's rows, once its journal record is synced.
    pub fn active_mut(&mut self) -> &mut Rows {
        &mut self.active
    }

    pub fn active_is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Whether sealed rows wait for (or are being written by) the flusher.
    pub fn is_flushing(&self) -> bool {
        self.flushing.is_some()
    }

    /// Whether the tree holds every row.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.flushing.is_none()
    }

    /// Moves the active rows to the flusher's side (they stay readable) and
    /// returns them for it. Only while no flush is running.
    pub fn seal(&mut self) -> Arc<Rows> {
        debug_assert!(self.flushing.is_none(), "one flush at a time");
        let sealed = Arc::new(std::mem::take(&mut self.active));
        self.flushing = Some(sealed.clone());
        sealed
    }

    /// Forgets the flushed rows: the tree has committed them.
    pub fn flushed(&mut self) -> Option<Arc<Rows>> {
        self.flushing.take()
    }

    /// The two sets of rows, newest first.
    fn sets(&self) -> impl Iterator<Item = &Rows> {
        std::iter::once(&self.active).chain(self.flushing.as_deref())
    }

    /// Up to `limit` rows of `chat` with ids below `before`, newest first.
    pub fn before(&self, chat: &str, before: u64, limit: usize) -> Vec<(u64, Vec<u8>)> {
        self.sets()
            .filter_map(|set| set.by_chat.get(chat))
            .flat_map(|rows| rows.range(..before).rev())
            .take(limit)
            .map(|(&id, row)| (id, row.clone()))
            .collect()
    }

    /// Up to `limit` rows of `chat` with ids above `after`, oldest first.
    pub fn after(&self, chat: &str, after: u64, limit: usize) -> Vec<(u64, Vec<u8>)> {
        let Some(start) = after.checked_add(1) else {
            return Vec::new();
        };
        let mut sets: Vec<&Rows> = self.sets().collect();
        sets.reverse();
        sets.into_iter()
            .filter_map(|set| set.by_chat.get(chat))
            .flat_map(|rows| rows.range(start..))
            .take(limit)
            .map(|(&id, row)| (id, row.clone()))
            .collect()
    }

    pub fn get(&self, chat: &str, id: u64) -> Option<Vec<u8>> {
        self.sets()
            .find_map(|set| set.by_chat.get(chat)?.get(&id))
            .cloned()
    }

    /// The newest id of `chat` held here.
    pub fn newest(&self, chat: &str) -> Option<u64> {
        self.sets()
            .find_map(|set| set.by_chat.get(chat)?.keys().next_back())
            .copied()
    }

    /// The id stored under a [`client_key`].
    pub fn client_id(&self, key: &str) -> Option<u64> {
        self.sets().find_map(|set| set.by_client.get(key)).copied()
    }
}

/// One string for (chat, sender, client-msg-id), unambiguous whatever the
/// parts contain: their lengths come first.
pub(super) fn client_key(chat: &str, sender: &str, client_msg_id: &str) -> String {
    format!(
        "{}:{}:{chat}{sender}{client_msg_id}",
        chat.len(),
        sender.len()
    )
}

fn split_client_key(key: &str) -> (&str, &str, &str) {
    let mut parts = key.splitn(3, ':');
    let mut length = || -> usize {
        parts
            .next()
            .and_then(|n| n.parse().ok())
            .expect("client keys are built by client_key")
    };
    let (chat_len, sender_len) = (length(), length());
    let rest = parts.next().expect("client keys are built by client_key");
    let (chat, rest) = rest.split_at(chat_len);
    let (sender, client_msg_id) = rest.split_at(sender_len);
    (chat, sender, client_msg_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(chat: &str, ids: &[u64]) -> Rows {
        let mut rows = Rows::default();
        for &id in ids {
            rows.insert(
                chat,
                id,
                client_key(chat, "alice", &id.to_string()),
                vec![id as u8],
            );
        }
        rows
    }

    fn ids(rows: Vec<(u64, Vec<u8>)>) -> Vec<u64> {
        rows.into_iter().map(|(id, _)| id).collect()
    }

    /// Client keys come apart into the parts they were made of, colons and all.
    #[test]
    fn client_keys_round_trip() {
        for parts in [("c", "alice", "m1"), ("a:1", ":b", "2:"), ("", "", "")] {
            let key = client_key(parts.0, parts.1, parts.2);
            assert_eq!(split_client_key(&key), parts);
        }
        assert_ne!(client_key("a", "bc", "d"), client_key("ab", "c", "d"));
    }

    /// Reads see the sealed rows and the active ones as one chat history.
    #[test]
    fn reads_span_the_sealed_and_the_active_rows() {
        let mut unflushed = Unflushed {
            active: rows("c", &[1, 2, 3]),
            flushing: None,
        };
        unflushed.seal();
        unflushed.active = rows("c", &[4, 5]);
        assert_eq!(ids(unflushed.before("c", u64::MAX, 3)), [5, 4, 3]);
        assert_eq!(ids(unflushed.before("c", 4, 10)), [3, 2, 1]);
        assert_eq!(ids(unflushed.after("c", 1, 3)), [2, 3, 4]);
        assert_eq!(ids(unflushed.after("c", u64::MAX, 3)), Vec::<u64>::new());
        assert_eq!(unflushed.newest("c"), Some(5));
        assert_eq!(unflushed.get("c", 2), Some(vec![2]));
        assert_eq!(unflushed.client_id(&client_key("c", "alice", "2")), Some(2));
        assert_eq!(unflushed.newest("other"), None);

        let flushed = unflushed.flushed().unwrap();
        assert_eq!(flushed.chats().flat_map(|(_, rows)| rows).count(), 3);
        assert_eq!(ids(unflushed.after("c", 0, 10)), [4, 5]);
        assert_eq!(unflushed.client_id(&client_key("c", "alice", "2")), None);
    }
}
