//! Receipt watermarks: what a message's status is, for whom.
//!
//! Each member has a `delivered` and a `read` watermark per chat; a message
//! is delivered (read) for a member when its id is at or below the mark.

/// A member's watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Marks {
    pub delivered_up_to: u64,
    pub read_up_to: u64,
}

/// A message's status on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Sent,
    Delivered,
    Read,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }

    /// One member's status of message `id`.
    pub fn of(marks: Marks, id: u64) -> Self {
        if marks.read_up_to >= id {
            Self::Read
        } else if marks.delivered_up_to >= id {
            Self::Delivered
        } else {
            Self::Sent
        }
    }
}

/// The status of message `id` as its sender sees it: the least advanced of
/// the other members. `others` yields the watermarks of every member except
/// the sender (a member with no receipt yet counts as `Marks::default()`).
pub fn aggregate(others: impl IntoIterator<Item = Marks>, id: u64) -> Status {
    others
        .into_iter()
        .map(|m| Status::of(m, id))
        .min()
        .unwrap_or(Status::Sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn marks(delivered_up_to: u64, read_up_to: u64) -> Marks {
        Marks {
            delivered_up_to,
            read_up_to,
        }
    }

    /// A watermark covers every message at or below it.
    #[test]
    fn watermark_covers_earlier_messages() {
        assert_eq!(Status::of(marks(10, 5), 5), Status::Read);
        assert_eq!(Status::of(marks(10, 5), 6), Status::Delivered);
        assert_eq!(Status::of(marks(10, 5), 11), Status::Sent);
    }

    /// The sender sees the slowest member; with nobody else the message is just sent.
    #[test]
    fn aggregate_is_the_minimum() {
        assert_eq!(
            aggregate([marks(10, 10), marks(10, 3)], 5),
            Status::Delivered
        );
        assert_eq!(aggregate([marks(10, 10), marks(0, 0)], 5), Status::Sent);
        assert_eq!(aggregate([marks(10, 10), marks(9, 9)], 5), Status::Read);
        assert_eq!(aggregate([], 5), Status::Sent);
    }
}
