//! Presence rules. A connection holds a lease in the presence store; opening
//! it and every `heartbeat` renew the lease for the configured TTL, closing
//! it drops the lease. A user is online while any lease is live, and their
//! last seen time is their last heartbeat or disconnect.

use chat_core::frames;

/// A connection opened or closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    Connected { connection: u64, user: String },
    Disconnected { connection: u64, user: String },
}

/// A client frame routed to presence.
#[derive(Debug, Clone)]
pub struct Frame {
    pub connection: u64,
    pub user_id: String,
    pub kind: String,
}

/// A presence store failure, as the component sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// What presence needs from the host.
pub trait Platform {
    fn ttl_ms(&self) -> u64;
    /// Renews a lease; true when the user just came online.
    fn heartbeat(&self, user: &str, connection: u64, ttl_ms: u64) -> Result<bool, Unavailable>;
    /// Drops a lease; true when it was the user's last.
    fn disconnect(&self, user: &str, connection: u64) -> Result<bool, Unavailable>;
    fn send_to_connection(&self, connection: u64, frame: &str);
}

/// Applies connects and disconnects in order.
pub fn handle_lifecycle(platform: &impl Platform, events: Vec<Lifecycle>) {
    let ttl = platform.ttl_ms();
    for event in events {
        // A lost lease update heals itself: the next heartbeat renews it, or
        // the TTL expires it.
        let _ = match event {
            Lifecycle::Connected { connection, user } => platform.heartbeat(&user, connection, ttl),
            Lifecycle::Disconnected { connection, user } => platform.disconnect(&user, connection),
        };
    }
}

/// Handles `heartbeat` frames in order.
pub fn handle_frames(platform: &impl Platform, frames: Vec<Frame>) {
    let ttl = platform.ttl_ms();
    for frame in frames {
        let reply = match frame.kind.as_str() {
            "heartbeat" => match platform.heartbeat(&frame.user_id, frame.connection, ttl) {
                Ok(_) => None,
                Err(Unavailable) => Some(frames::error(
                    "unavailable",
                    "presence is unavailable; keep sending heartbeats",
                    None,
                )),
            },
            other => Some(frames::error(
                "unknown_type",
                &format!("unknown frame type {other:?}"),
                None,
            )),
        };
        if let Some(reply) = reply {
            platform.send_to_connection(frame.connection, &reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Fake {
        leases: RefCell<HashMap<String, Vec<(u64, u64)>>>,
        replies: RefCell<Vec<(u64, String)>>,
        down: bool,
    }

    impl Platform for Fake {
        fn ttl_ms(&self) -> u64 {
            60_000
        }

        fn heartbeat(&self, user: &str, connection: u64, ttl_ms: u64) -> Result<bool, Unavailable> {
            if self.down {
                return Err(Unavailable);
            }
            let mut leases = self.leases.borrow_mut();
            let held = leases.entry(user.into()).or_default();
            let was_offline = held.is_empty();
            held.retain(|(c, _)| *c != connection);
            held.push((connection, ttl_ms));
            Ok(was_offline)
        }

        fn disconnect(&self, user: &str, connection: u64) -> Result<bool, Unavailable> {
            let mut leases = self.leases.borrow_mut();
            let held = leases.entry(user.into()).or_default();
            held.retain(|(c, _)| *c != connection);
            Ok(held.is_empty())
        }

        fn send_to_connection(&self, connection: u64, frame: &str) {
            self.replies.borrow_mut().push((connection, frame.into()));
        }
    }

    /// Connecting takes a lease with the configured TTL; disconnecting gives it back.
    #[test]
    fn connect_and_disconnect_manage_leases() {
        let p = Fake::default();
        handle_lifecycle(
            &p,
            vec![
                Lifecycle::Connected {
                    connection: 1,
                    user: "alice".into(),
                },
                Lifecycle::Connected {
                    connection: 2,
                    user: "alice".into(),
                },
                Lifecycle::Disconnected {
                    connection: 1,
                    user: "alice".into(),
                },
            ],
        );
        assert_eq!(p.leases.borrow()["alice"], vec![(2, 60_000)]);
    }

    /// A heartbeat renews the connection's lease and needs no reply.
    #[test]
    fn heartbeat_renews_lease_silently() {
        let p = Fake::default();
        handle_frames(
            &p,
            vec![Frame {
                connection: 4,
                user_id: "bob".into(),
                kind: "heartbeat".into(),
            }],
        );
        assert_eq!(p.leases.borrow()["bob"], vec![(4, 60_000)]);
        assert!(p.replies.borrow().is_empty());
    }

    /// When presence storage is down the client hears about it.
    #[test]
    fn outage_is_reported() {
        let p = Fake {
            down: true,
            ..Fake::default()
        };
        handle_frames(
            &p,
            vec![Frame {
                connection: 4,
                user_id: "bob".into(),
                kind: "heartbeat".into(),
            }],
        );
        assert!(p.replies.borrow()[0].1.contains("\"unavailable\""));
    }
}
