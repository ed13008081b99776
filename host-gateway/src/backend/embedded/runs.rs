//! How the tree stores a chat's messages: in runs.
//!
//! The flusher writes each chat's messages of a flush as runs of up to
//! [`RUN_MESSAGES`] consecutive messages, one B-tree entry per run, keyed by
//! (chat, id of the run's last message). With one entry per message, a build
//! that skipped those inserts had a 14% higher peak (docs/benchmarks.md);
//! with runs a busy chat pays one insert per flush.
//!
//! A value that starts with `{` is a single message as JSON, whose id is the
//! key's: what files written before runs hold, and what restores and flushes
//! of one message write. Anything else is a run (see [`encode`]).
//!
//! Every id of a run is above the ids of the chat's earlier entries: a flush
//! holds all of a chat's unflushed messages, which are newer than everything
//! in the tree. So the entry holding id `x` is the first one keyed at or
//! above `x`, if its first id is not above `x`.

use std::borrow::Cow;

use redb::ReadableTable;

use super::store::backend_err;
use crate::backend::{StoreError, StoreResult};

/// Most messages in one run.
pub(super) const RUN_MESSAGES: usize = 256;
/// A run ends with the message that takes its rows past this many bytes,
/// so one read of a few messages does not copy a large value.
pub(super) const RUN_BYTES: usize = 64 << 10;
/// First byte of a run; a single message starts with `{`.
const RUN_TAG: u8 = 1;
/// Tag and message count.
const HEADER: usize = 1 + 4;

/// A run's bytes: [`RUN_TAG`], the message count `n` (u32), the `n` ids
/// (u64, ascending), the `n` end offsets of the rows in the payload (u32),
/// and the payload: the rows (each message's JSON) back to back. Ids and
/// offsets come first so a reader finds one message without reading others.
pub(super) fn encode(rows: &[(u64, &[u8])]) -> Vec<u8> {
    let payload: usize = rows.iter().map(|(_, row)| row.len()).sum();
    let mut out = Vec::with_capacity(HEADER + rows.len() * 12 + payload);
    out.push(RUN_TAG);
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for (id, _) in rows {
        out.extend_from_slice(&id.to_le_bytes());
    }
    let mut end = 0u32;
    for (_, row) in rows {
        end += row.len() as u32;
        out.extend_from_slice(&end.to_le_bytes());
    }
    for (_, row) in rows {
        out.extend_from_slice(row);
    }
    out
}

/// Cuts a chat's rows, in id order, into the runs a flush writes: each is
/// (id of its last message, value). A lone message is its own row, not copied.
pub(super) fn runs<'a>(
    rows: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> impl Iterator<Item = (u64, Cow<'a, [u8]>)> {
    let mut rows = rows.into_iter().peekable();
    std::iter::from_fn(move || {
        let mut run = Vec::new();
        let mut bytes = 0;
        while run.len() < RUN_MESSAGES && bytes < RUN_BYTES {
            let Some(row) = rows.next() else { break };
            bytes += row.1.len();
            run.push(row);
        }
        let &(last, _) = run.last()?;
        Some(match run.as_slice() {
            [(_, row)] => (last, Cow::Borrowed(*row)),
            _ => (last, Cow::Owned(encode(&run))),
        })
    })
}

/// One stored entry, read: a single message or a run.
pub(super) struct Entry<'a> {
    ids: Ids<'a>,
    /// The end offset of each row in `payload` (absent for a single message).
    ends: &'a [[u8; 4]],
    payload: &'a [u8],
}

enum Ids<'a> {
    Single(u64),
    Run(&'a [[u8; 8]]),
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Unavailable(format!("corrupt record: {what}"))
}

impl<'a> Entry<'a> {
    /// Reads the entry stored under `(chat, key_id)`, checking that its
    /// offsets stay within it and its ids ascend up to `key_id`.
    pub fn parse(key_id: u64, value: &'a [u8]) -> StoreResult<Self> {
        match value.first() {
            Some(b'{') => Ok(Self {
                ids: Ids::Single(key_id),
                ends: &[],
                payload: value,
            }),
            Some(&RUN_TAG) if value.len() >= HEADER => {
                let (count, rest) = value[1..].split_at(4);
                let n = u32::from_le_bytes(count.try_into().expect("four bytes")) as usize;
                if n == 0 || rest.len() < n * 12 {
                    return Err(corrupt("run header"));
                }
                let (ids, rest) = rest.split_at(n * 8);
                let (ends, payload) = rest.split_at(n * 4);
                let entry = Self {
                    ids: Ids::Run(ids.as_chunks().0),
                    ends: ends.as_chunks().0,
                    payload,
                };
                let ascending = (1..n).all(|i| entry.id(i - 1) < entry.id(i));
                let ordered = (0..n).all(|i| entry.start(i) <= entry.end(i));
                if !ascending || entry.id(n - 1) != key_id {
                    return Err(corrupt("run ids"));
                }
                if !ordered || entry.end(n - 1) != entry.payload.len() {
                    return Err(corrupt("run offsets"));
                }
                Ok(entry)
            }
            _ => Err(corrupt("unknown entry")),
        }
    }

    pub fn len(&self) -> usize {
        match self.ids {
            Ids::Single(_) => 1,
            Ids::Run(ids) => ids.len(),
        }
    }

    pub fn id(&self, i: usize) -> u64 {
        match self.ids {
            Ids::Single(id) => id,
            Ids::Run(ids) => u64::from_le_bytes(ids[i]),
        }
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.end(i - 1) }
    }

    fn end(&self, i: usize) -> usize {
        match self.ids {
            Ids::Single(_) => self.payload.len(),
            Ids::Run(_) => u32::from_le_bytes(self.ends[i]) as usize,
        }
    }

    /// The JSON of the `i`th message.
    pub fn row(&self, i: usize) -> &'a [u8] {
        &self.payload[self.start(i)..self.end(i)]
    }

    /// Where message `id` is, or where it would go.
    pub fn position(&self, id: u64) -> Result<usize, usize> {
        match self.ids {
            Ids::Single(only) => std::slice::from_ref(&only).binary_search(&id),
            Ids::Run(ids) => ids.binary_search_by(|stored| u64::from_le_bytes(*stored).cmp(&id)),
        }
    }
}

type Key = (&'static str, u64);
type Value = &'static [u8];

/// The row of message `id` of `chat`.
pub(super) fn get(
    table: &impl ReadableTable<Key, Value>,
    chat: &str,
    id: u64,
) -> StoreResult<Option<Vec<u8>>> {
    let Some(found) = table
        .range((chat, id)..=(chat, u64::MAX))
        .map_err(backend_err)?
        .next()
    else {
        return Ok(None);
    };
    let (key, value) = found.map_err(backend_err)?;
    let entry = Entry::parse(key.value().1, value.value())?;
    Ok(entry.position(id).ok().map(|i| entry.row(i).to_vec()))
}

/// Up to `limit` rows of `chat` with ids below `end`, newest first.
pub(super) fn before(
    table: &impl ReadableTable<Key, Value>,
    chat: &str,
    end: u64,
    limit: usize,
) -> StoreResult<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let mut take = |key_id: u64, value: &[u8]| -> StoreResult<bool> {
        let entry = Entry::parse(key_id, value)?;
        let below = entry.position(end).unwrap_or_else(|at| at);
        for i in (0..below).rev() {
            out.push((entry.id(i), entry.row(i).to_vec()));
            if out.len() == limit {
                return Ok(false);
            }
        }
        Ok(true)
    };
    // The entry keyed at or above `end` may begin below it.
    if let Some(found) = table
        .range((chat, end)..=(chat, u64::MAX))
        .map_err(backend_err)?
        .next()
    {
        let (key, value) = found.map_err(backend_err)?;
        if !take(key.value().1, value.value())? {
            return Ok(out);
        }
    }
    for found in table
        .range((chat, 0)..(chat, end))
        .map_err(backend_err)?
        .rev()
    {
        let (key, value) = found.map_err(backend_err)?;
        if !take(key.value().1, value.value())? {
            break;
        }
    }
    Ok(out)
}

/// Up to `limit` rows of `chat` with ids from `start` up to (not including)
/// `end`, oldest first.
pub(super) fn between(
    table: &impl ReadableTable<Key, Value>,
    chat: &str,
    start: u64,
    end: u64,
    limit: usize,
) -> StoreResult<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    if limit == 0 || start >= end {
        return Ok(out);
    }
    for found in table
        .range((chat, start)..=(chat, u64::MAX))
        .map_err(backend_err)?
    {
        let (key, value) = found.map_err(backend_err)?;
        let entry = Entry::parse(key.value().1, value.value())?;
        let from = entry.position(start).unwrap_or_else(|at| at);
        for i in from..entry.len() {
            let id = entry.id(i);
            if id >= end {
                return Ok(out);
            }
            out.push((id, entry.row(i).to_vec()));
            if out.len() == limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase, TableDefinition};

    use super::*;

    const TABLE: TableDefinition<Key, Value> = TableDefinition::new("messages");

    fn row(id: u64) -> Vec<u8> {
        format!("{{\"id\":{id}}}").into_bytes()
    }

    /// A database with chat "c" stored as: single messages 1 and 2 (as files
    /// before runs have them), then runs of `per_run` over 3..=`last` with
    /// the odd ids only, and chat "d" around it.
    fn store(per_run: usize, last: u64) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("runs.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(TABLE).unwrap();
            for id in [1, 2] {
                table.insert(("c", id), row(id).as_slice()).unwrap();
            }
            let odd: Vec<(u64, Vec<u8>)> = (3..=last).step_by(2).map(|id| (id, row(id))).collect();
            for chunk in odd.chunks(per_run) {
                let rows: Vec<(u64, &[u8])> =
                    chunk.iter().map(|(id, r)| (*id, r.as_slice())).collect();
                for (last, value) in runs(rows) {
                    table.insert(("c", last), value.as_ref()).unwrap();
                }
            }
            table.insert(("b", 5), row(5).as_slice()).unwrap();
            table.insert(("d", 4), row(4).as_slice()).unwrap();
        }
        txn.commit().unwrap();
        (dir, db)
    }

    fn ids(rows: &[(u64, Vec<u8>)]) -> Vec<u64> {
        for (id, r) in rows {
            assert_eq!(r, &row(*id), "each id comes with its own row");
        }
        rows.iter().map(|(id, _)| *id).collect()
    }

    /// Reads find every message and only the chat's, whether it sits alone
    /// or inside a run, at either edge of a run or between runs.
    #[test]
    fn reads_see_single_messages_and_runs_as_one_history() {
        let (_dir, db) = store(4, 21);
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(TABLE).unwrap();
        for id in [1, 2, 3, 7, 9, 11, 21] {
            assert_eq!(get(&t, "c", id).unwrap(), Some(row(id)), "message {id}");
        }
        for id in [0, 4, 10, 20, 22, u64::MAX] {
            assert_eq!(get(&t, "c", id).unwrap(), None, "no message {id}");
        }
        let all: Vec<u64> = [1, 2].into_iter().chain((3..=21).step_by(2)).collect();
        let newest_first: Vec<u64> = all.iter().rev().copied().collect();
        assert_eq!(ids(&before(&t, "c", u64::MAX, 100).unwrap()), newest_first);
        assert_eq!(ids(&before(&t, "c", 12, 3).unwrap()), [11, 9, 7]);
        assert_eq!(ids(&before(&t, "c", 11, 3).unwrap()), [9, 7, 5]);
        assert_eq!(ids(&before(&t, "c", 3, 5).unwrap()), [2, 1]);
        assert_eq!(ids(&before(&t, "c", 1, 5).unwrap()), Vec::<u64>::new());
        assert_eq!(ids(&between(&t, "c", 0, u64::MAX, 100).unwrap()), all);
        assert_eq!(ids(&between(&t, "c", 2, 10, 100).unwrap()), [2, 3, 5, 7, 9]);
        assert_eq!(ids(&between(&t, "c", 4, 12, 2).unwrap()), [5, 7]);
        assert_eq!(
            ids(&between(&t, "c", 22, u64::MAX, 5).unwrap()),
            Vec::<u64>::new()
        );
        assert_eq!(ids(&between(&t, "c", 9, 9, 5).unwrap()), Vec::<u64>::new());
        assert_eq!(ids(&before(&t, "d", u64::MAX, 5).unwrap()), [4]);
        assert_eq!(ids(&between(&t, "b", 0, u64::MAX, 5).unwrap()), [5]);
    }

    /// Runs end at the message count, or once past the byte budget; one
    /// message is stored as itself.
    #[test]
    fn runs_are_bounded_in_messages_and_bytes() {
        let small: Vec<(u64, Vec<u8>)> = (1..=600).map(|id| (id, row(id))).collect();
        let cut: Vec<(u64, Cow<[u8]>)> =
            runs(small.iter().map(|(id, r)| (*id, r.as_slice()))).collect();
        let lasts: Vec<u64> = cut.iter().map(|(last, _)| *last).collect();
        assert_eq!(lasts, [256, 512, 600]);
        for (last, value) in &cut {
            let entry = Entry::parse(*last, value).unwrap();
            assert_eq!(entry.id(entry.len() - 1), *last);
            assert_eq!(entry.row(0), row(entry.id(0)).as_slice());
        }

        let big = vec![b'x'; 40 << 10];
        let large: Vec<(u64, &[u8])> = (1..=3).map(|id| (id, big.as_slice())).collect();
        let lasts: Vec<u64> = runs(large).map(|(last, _)| last).collect();
        assert_eq!(lasts, [2, 3], "the run that passed 64 KiB ends there");

        let one = row(9);
        let single: Vec<(u64, Cow<[u8]>)> = runs([(9, one.as_slice())]).collect();
        assert_eq!(single, [(9, Cow::Borrowed(one.as_slice()))]);
        assert!(
            matches!(single[0].1, Cow::Borrowed(_)),
            "a lone row is not copied"
        );
    }

    /// A damaged entry is an error, not a panic or a wrong message.
    #[test]
    fn damaged_entries_are_refused() {
        let (a, b) = (row(1), row(2));
        let good = encode(&[(1, a.as_slice()), (2, b.as_slice())]);
        assert!(Entry::parse(2, &good).is_ok());
        assert!(Entry::parse(3, &good).is_err(), "key and last id differ");
        for len in 0..good.len() {
            assert!(Entry::parse(2, &good[..len]).is_err(), "cut at {len}");
        }
        let mut descending = encode(&[(2, a.as_slice()), (1, b.as_slice())]);
        assert!(Entry::parse(1, &descending).is_err());
        descending[0] = b'x';
        assert!(Entry::parse(1, &descending).is_err());
        assert!(Entry::parse(1, &encode(&[])).is_err(), "an empty run");
    }
}
