//! Snowflake-style 64-bit ids: 41 bits of milliseconds since 2025-01-01,
//! 10 bits of node id, 12 bits of sequence.
//!
//! Time-ordered ids keep a chat's messages sortable without a central
//! counter; the node id keeps gateways from colliding. The generator never
//! goes backwards: if the wall clock steps back it keeps counting from the
//! last id it issued, so restarts (which reload the per-chat high-water mark
//! from the store) and clock steps cannot reorder a chat.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2025-01-01T00:00:00Z in ms since the Unix epoch.
pub const EPOCH_MS: i64 = 1_735_689_600_000;
const NODE_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
/// The largest valid node id.
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The smallest id that can be issued at `ms` (any node, sequence 0).
pub fn floor_for_time(ms: i64) -> u64 {
    ((ms - EPOCH_MS).max(0) as u64) << (NODE_BITS + SEQUENCE_BITS)
}

/// The time encoded in an id, ms since the Unix epoch.
pub fn time_of(id: u64) -> i64 {
    (id >> (NODE_BITS + SEQUENCE_BITS)) as i64 + EPOCH_MS
}

/// Issues unique, increasing ids for one node.
#[derive(Debug)]
pub struct Snowflake {
    node: u64,
    /// The last id issued; a mutex because ids are issued from many tasks
    /// and the critical section is a few instructions.
    last: Mutex<u64>,
}

impl Snowflake {
    pub fn new(node: u16) -> Self {
        Self {
            node: u64::from(node.min(MAX_NODE_ID)),
            last: Mutex::new(0),
        }
    }

    /// The next id: the current time's first id on this node, or one more than
    /// the last id issued, whichever is greater.
    pub fn next_id(&self) -> u64 {
        self.next_after(0)
    }

    /// The next id that is also greater than `floor` (a chat's last id).
    pub fn next_after(&self, floor: u64) -> u64 {
        let from_clock = floor_for_time(now_ms()) | (self.node << SEQUENCE_BITS);
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = from_clock.max(*last + 1).max(floor + 1);
        *last = id;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids from one generator strictly increase, even when issued faster than 1 per ms.
    #[test]
    fn ids_strictly_increase() {
        let ids = Snowflake::new(3);
        let mut prev = 0;
        for _ in 0..100_000 {
            let id = ids.next_id();
            assert!(id > prev);
            prev = id;
        }
    }

    /// A floor far in the future (a clock that stepped back) still yields a larger id.
    #[test]
    fn next_after_respects_floor() {
        let ids = Snowflake::new(0);
        let future = floor_for_time(now_ms() + 3_600_000);
        assert_eq!(ids.next_after(future), future + 1);
        assert!(ids.next_id() > future + 1);
    }

    /// The encoded time is the wall clock at issue time.
    #[test]
    fn id_encodes_time() {
        let before = now_ms();
        let id = Snowflake::new(1).next_id();
        let t = time_of(id);
        assert!(t >= before && t <= now_ms());
    }
}
