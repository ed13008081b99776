//! The embedded store's journal: where a group commit becomes durable.
//!
//! A synced redb commit writes every B-tree page it touched and then calls
//! `fdatasync`; on the test machine a `send` call of under three messages,
//! which waits for it, took ~1.3 ms: the floor under every message's latency. The store's
//! writer instead appends the group's new messages to a journal and syncs it
//! (one sequential write). A flusher writes many groups to the tree at once
//! every so often, and then empties the journal they came from. On open,
//! whatever a journal holds that the tree lacks is put back.
//!
//! The file starts with its generation (u64 LE), then records:
//! `[payload length: u32 LE][CRC-32 of generation, length and payload: u32 LE][payload]`,
//! the payload being the messages as JSON. Reading stops at the first record
//! that is short or fails its checksum: a crash in the middle of an append
//! leaves such a tail, and that append was never acknowledged.
//!
//! The file is written full of zeros once, and emptied by moving to the next
//! generation rather than by truncating it: appends then overwrite blocks
//! that already exist, so their `fdatasync` has no file size or block map
//! to write as well. Records of an older generation fail the checksum.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::backend::Message;

/// A record's length and checksum.
const RECORD_HEADER_BYTES: usize = 8;
/// The file's header, its generation: records start after it.
const FILE_HEADER_BYTES: u64 = 8;
/// Size the file is zero-filled to when opened (a larger one is kept).
const PREALLOCATED: u64 = 8 << 20;

/// An append-only file of message batches.
#[derive(Debug)]
pub struct Journal {
    file: File,
    /// Records of other generations are stale.
    generation: u64,
    /// End of the whole, synced records: where the next one goes.
    end: u64,
    /// Set when a write or sync failed and the file could not be put back
    /// as it was: after a failed `fsync` the kernel's view of the file
    /// cannot be trusted, so nothing more is appended until a restart.
    broken: bool,
    #[cfg(test)]
    faults: Option<std::sync::Arc<InjectedFaults>>,
}

/// Failures a test makes a journal meet: the seam through which the store's
/// tests reach its rare paths (a failed sync must turn into neither an
/// acknowledged message that is lost nor one stored twice).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct InjectedFaults {
    /// Appends whose sync is still to fail (after their record is written,
    /// as when `fdatasync` reports an I/O error).
    pub failing_syncs: std::sync::atomic::AtomicUsize,
    /// Held by a test to keep [`Journal::clear`] waiting: a flush that does
    /// not finish, as on a disk that has fallen behind.
    pub clearing: std::sync::Mutex<()>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and returns it with the
    /// messages of every whole record of its generation, oldest first. A
    /// torn or stale tail is ignored, and overwritten by the next append.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<Message>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let size = bytes.len() as u64;
        if size < PREALLOCATED {
            file.write_all(&vec![0; (PREALLOCATED - size) as usize])?;
            file.sync_all()?;
            if size == 0 {
                // A new file: its directory entry must survive a power loss too.
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    File::open(dir)?.sync_all()?;
                }
            }
        }
        let generation = bytes
            .get(..FILE_HEADER_BYTES as usize)
            .map_or(0, |g| u64::from_le_bytes(g.try_into().expect("8 bytes")));
        let (messages, end) = parse(&bytes, generation);
        file.seek(SeekFrom::Start(end))?;
        Ok((
            Self {
                file,
                generation,
                end,
                broken: false,
                #[cfg(test)]
                faults: None,
            },
            messages,
        ))
    }

    /// Appends one record of `messages`, each already encoded as JSON (the
    /// store's row bytes, so nothing is serialized twice), and waits until
    /// it is on disk.
    pub fn append<'a>(&mut self, messages: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "journal unusable after an earlier I/O error",
            ));
        }
        // The payload is a JSON array of the messages, written straight
        // after a header filled in once its length is known.
        let mut record = vec![0; RECORD_HEADER_BYTES];
        record.push(b'[');
        for (i, message) in messages.into_iter().enumerate() {
            if i > 0 {
                record.push(b',');
            }
            record.extend_from_slice(message);
        }
        record.push(b']');
        let payload = &record[RECORD_HEADER_BYTES..];
        let length = u32::try_from(payload.len())
            .map_err(|_| io::Error::other("journal record over 4 GiB"))?;
        let crc = checksum(self.generation, length, payload);
        record[..4].copy_from_slice(&length.to_le_bytes());
        record[4..RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        if let Err(e) = self.file.write_all(&record) {
            // A partial record would hide every later one from `open`.
            self.broken = self.file.seek(SeekFrom::Start(self.end)).is_err();
            return Err(e);
        }
        if let Err(e) = self.sync() {
            // After a failed fsync the kernel may have dropped the dirty
            // pages: what is on disk is unknown from here on.
            self.broken = true;
            return Err(e);
        }
        self.end += record.len() as u64;
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        #[cfg(test)]
        if let Some(faults) = &self.faults {
            use std::sync::atomic::Ordering::SeqCst;
            if faults
                .failing_syncs
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(io::Error::other("injected sync failure"));
            }
        }
        self.file.sync_data()
    }

    /// Makes this journal meet `faults` from now on.
    #[cfg(test)]
    pub fn inject(&mut self, faults: std::sync::Arc<InjectedFaults>) {
        self.faults = Some(faults);
    }

    /// Whether an I/O error has made this journal refuse appends until a restart.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Bytes of records since the last [`Self::clear`].
    pub fn recorded_bytes(&self) -> u64 {
        self.end - FILE_HEADER_BYTES
    }

    /// Drops every record (call once the store holds all of them durably)
    /// by moving to the next generation.
    pub fn clear(&mut self) -> io::Result<()> {
        #[cfg(test)]
        let _held = self
            .faults
            .as_ref()
            .map(|f| f.clearing.lock().unwrap_or_else(|p| p.into_inner()));
        if self.broken {
            return Err(io::Error::other(
                "journal unusable after an earlier I/O error",
            ));
        }
        let next = self.generation + 1;
        self.file.seek(SeekFrom::Start(0))?;
        let written = self
            .file
            .write_all(&next.to_le_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.broken = true;
            return Err(e);
        }
        self.generation = next;
        self.end = FILE_HEADER_BYTES;
        self.file.seek(SeekFrom::Start(FILE_HEADER_BYTES))?;
        Ok(())
    }
}

fn checksum(generation: u64, length: u32, payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&generation.to_le_bytes());
    crc.update(&length.to_le_bytes());
    crc.update(payload);
    crc.finalize()
}

/// The messages of every whole record of `generation` from the start of
/// `bytes`, and where those records end.
fn parse(bytes: &[u8], generation: u64) -> (Vec<Message>, u64) {
    let mut messages = Vec::new();
    let mut at = FILE_HEADER_BYTES as usize;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER_BYTES) {
        let (length, crc) = header.split_at(4);
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        let start = at + RECORD_HEADER_BYTES;
        // Zeros (a never written block) are not a record.
        let Some(payload) = bytes.get(start..start + length as usize) else {
            break;
        };
        if length == 0 || checksum(generation, length, payload) != crc {
            break;
        }
        let Ok(batch) = serde_json::from_slice::<Vec<Message>>(payload) else {
            break;
        };
        messages.extend(batch);
        at = start + payload.len();
    }
    (messages, at as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64) -> Message {
        Message {
            id,
            chat_id: "c".into(),
            sender_id: "alice".into(),
            client_msg_id: format!("m{id}"),
            content: "hello".into(),
            timestamp: 0,
            prev_id: id.saturating_sub(1),
        }
    }

    /// Appends `ids` as one record, encoded as the store encodes rows.
    fn append(journal: &mut Journal, ids: &[u64]) {
        let rows: Vec<Vec<u8>> = ids
            .iter()
            .map(|&id| serde_json::to_vec(&message(id)).unwrap())
            .collect();
        journal.append(rows.iter().map(Vec::as_slice)).unwrap();
    }

    /// The ids of the messages `path` gives back when opened.
    fn ids_in(path: &Path) -> Vec<u64> {
        Journal::open(path)
            .unwrap()
            .1
            .iter()
            .map(|m| m.id)
            .collect()
    }

    /// A journal at `path` holding messages 1 and 2, one record each, and
    /// where the second record starts.
    fn two_records(path: &Path) -> (Journal, u64) {
        let (mut journal, _) = Journal::open(path).unwrap();
        append(&mut journal, &[1]);
        let second = journal.end;
        append(&mut journal, &[2]);
        (journal, second)
    }

    /// Records survive reopening, in order.
    #[test]
    fn records_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert!(found.is_empty());
        append(&mut journal, &[1, 2]);
        append(&mut journal, &[3]);
        drop(journal);
        assert_eq!(ids_in(&path), [1, 2, 3]);
    }

    /// A torn last record (a crash mid-append) is ignored, and appends after
    /// reopening are readable again.
    #[test]
    fn torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (journal, second) = two_records(&path);
        drop(journal);
        // The second append only partly reached the disk.
        let mut bytes = std::fs::read(&path).unwrap();
        let torn = second as usize + 12;
        bytes[torn..torn + 20].fill(0);
        std::fs::write(&path, bytes).unwrap();

        let (mut journal, found) = Journal::open(&path).unwrap();
        assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), [1]);
        assert_eq!(journal.end, second);
        append(&mut journal, &[3]);
        drop(journal);
        assert_eq!(ids_in(&path), [1, 3]);
    }

    /// A record whose bytes changed is not trusted, nor anything after it.
    #[test]
    fn corrupt_record_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (journal, second) = two_records(&path);
        let last = journal.end as usize - 3;
        drop(journal);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (journal, found) = Journal::open(&path).unwrap();
        assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), [1]);
        assert_eq!(journal.end, second);
    }

    /// After `clear` the journal reopens empty.
    #[test]
    fn clear_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = Journal::open(&path).unwrap();
        append(&mut journal, &[1]);
        append(&mut journal, &[2]);
        journal.clear().unwrap();
        assert_eq!(journal.recorded_bytes(), 0);
        drop(journal);
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert!(found.is_empty());
        // The older generation's second record is still in the file, past
        // the new first one: it must not come back.
        append(&mut journal, &[3]);
        drop(journal);
        assert_eq!(ids_in(&path), [3]);
    }
}
