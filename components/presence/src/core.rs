//! Presence rules.
//!
//! A connection holds a lease in the presence store; opening it and every
//! `heartbeat` renew the lease for the configured TTL, closing it drops it.
//! A user is online while any lease is live. Their last seen time is their
//! last heartbeat (when leases expire) or their last disconnect.
//!
//! Changes (online, offline by disconnect, offline by expiry) are pushed as
//! `{"type":"presence","userId","status","lastSeen"}` to the connections
//! that subscribed with `subscribePresence`. Only users who share a chat
//! with the subscriber can be watched (and, in `presence-query`, queried).

use std::collections::HashSet;

use chat_core::frames;
use chat_core::presence::presence_json;
pub use chat_core::presence::{Presence, Unavailable};
use serde_json::Value;

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
    pub body: String,
}

/// Most users one `subscribePresence` may name.
pub const MAX_SUBSCRIPTION: usize = 1024;

/// What presence needs from the host.
pub trait Platform {
    fn ttl_ms(&self) -> u64;
    fn now_ms(&self) -> i64;
    /// Renews a lease; true when the user just came online.
    fn heartbeat(&self, user: &str, connection: u64, ttl_ms: u64) -> Result<bool, Unavailable>;
    /// Drops a lease; true when it was the user's last.
    fn disconnect(&self, user: &str, connection: u64) -> Result<bool, Unavailable>;
    fn query(&self, users: &[String]) -> Result<Vec<Presence>, Unavailable>;
    /// Everyone `user` shares a chat with (`user` included).
    fn contacts(&self, user: &str) -> Result<HashSet<String>, Unavailable>;
    fn watch(&self, connection: u64, users: &[String]);
    fn send_to_watchers(&self, user: &str, frame: &str);
    fn send_to_connection(&self, connection: u64, frame: &str);
}

/// The `presence` frame.
pub fn presence_frame(p: &Presence) -> String {
    let mut frame = presence_json(p);
    frame["type"] = Value::from("presence");
    frame.to_string()
}

fn announce(platform: &impl Platform, user: &str, online: bool) {
    let change = Presence {
        user_id: user.to_owned(),
        online,
        last_seen: platform.now_ms(),
    };
    platform.send_to_watchers(user, &presence_frame(&change));
}

/// Applies connects and disconnects in order.
pub fn handle_lifecycle(platform: &impl Platform, events: Vec<Lifecycle>) {
    let ttl = platform.ttl_ms();
    for event in events {
        // A failed lease update heals itself: the next heartbeat renews the
        // lease, or the TTL expires it.
        match event {
            Lifecycle::Connected { connection, user } => {
                if platform.heartbeat(&user, connection, ttl) == Ok(true) {
                    announce(platform, &user, true);
                }
            }
            Lifecycle::Disconnected { connection, user } => {
                if platform.disconnect(&user, connection) == Ok(true) {
                    announce(platform, &user, false);
                }
            }
        }
    }
}

/// Tells watchers about users whose heartbeats stopped.
pub fn handle_expired(platform: &impl Platform, users: Vec<Presence>) {
    for user in users {
        let gone = Presence {
            online: false,
            ..user
        };
        platform.send_to_watchers(&gone.user_id, &presence_frame(&gone));
    }
}

/// Handles `heartbeat` and `subscribePresence` frames in order.
pub fn handle_frames(platform: &impl Platform, frames: Vec<Frame>) {
    let ttl = platform.ttl_ms();
    for frame in frames {
        let result = match frame.kind.as_str() {
            "heartbeat" => match platform.heartbeat(&frame.user_id, frame.connection, ttl) {
                Ok(came_online) => {
                    if came_online {
                        announce(platform, &frame.user_id, true);
                    }
                    Ok(())
                }
                Err(Unavailable) => Err((
                    "unavailable",
                    "presence is unavailable; keep sending heartbeats".to_owned(),
                )),
            },
            "subscribePresence" => subscribe(platform, &frame),
            other => Err(("unknown_type", format!("unknown frame type {other:?}"))),
        };
        if let Err((code, message)) = result {
            platform.send_to_connection(frame.connection, &frames::error(code, &message, None));
        }
    }
}

fn subscribe(platform: &impl Platform, frame: &Frame) -> Result<(), (&'static str, String)> {
    let invalid = |m: &str| ("invalid_frame", m.to_owned());
    let body: Value = serde_json::from_str(&frame.body)
        .map_err(|_| ("bad_json", "frame is not JSON".to_owned()))?;
    let ids = body
        .get("userIds")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("userIds must be an array of user ids"))?;
    if ids.len() > MAX_SUBSCRIPTION {
        return Err(invalid(&format!(
            "at most {MAX_SUBSCRIPTION} userIds per subscription"
        )));
    }
    let mut wanted = Vec::with_capacity(ids.len());
    for id in ids {
        let id = id
            .as_str()
            .ok_or_else(|| invalid("userIds must be strings"))?;
        if !wanted.iter().any(|w| w == id) {
            wanted.push(id.to_owned());
        }
    }
    let unavailable = |_| ("unavailable", "presence is unavailable; retry".to_owned());
    let contacts = platform.contacts(&frame.user_id).map_err(unavailable)?;
    // Users the subscriber shares no chat with are left out, silently: their
    // presence is not the subscriber's to know, nor is their existence.
    let allowed: Vec<String> = wanted
        .into_iter()
        .filter(|u| contacts.contains(u))
        .collect();
    if allowed.is_empty() {
        return Ok(());
    }
    platform.watch(frame.connection, &allowed);
    // The current state first, so the client needs no separate query.
    for p in platform.query(&allowed).map_err(unavailable)? {
        platform.send_to_connection(frame.connection, &presence_frame(&p));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    #[derive(Default)]
    struct Fake {
        leases: RefCell<HashMap<String, Vec<u64>>>,
        watches: RefCell<Vec<(u64, Vec<String>)>>,
        to_watchers: RefCell<Vec<(String, Value)>>,
        replies: RefCell<Vec<(u64, Value)>>,
        down: bool,
    }

    impl Platform for Fake {
        fn ttl_ms(&self) -> u64 {
            60_000
        }

        fn now_ms(&self) -> i64 {
            5_000
        }

        fn heartbeat(
            &self,
            user: &str,
            connection: u64,
            _ttl_ms: u64,
        ) -> Result<bool, Unavailable> {
            if self.down {
                return Err(Unavailable);
            }
            let mut leases = self.leases.borrow_mut();
            let held = leases.entry(user.into()).or_default();
            let was_offline = held.is_empty();
            if !held.contains(&connection) {
                held.push(connection);
            }
            Ok(was_offline)
        }

        fn disconnect(&self, user: &str, connection: u64) -> Result<bool, Unavailable> {
            let mut leases = self.leases.borrow_mut();
            let held = leases.entry(user.into()).or_default();
            let had = held.contains(&connection);
            held.retain(|c| *c != connection);
            Ok(had && held.is_empty())
        }

        fn query(&self, users: &[String]) -> Result<Vec<Presence>, Unavailable> {
            let leases = self.leases.borrow();
            Ok(users
                .iter()
                .map(|u| Presence {
                    user_id: u.clone(),
                    online: leases.get(u).is_some_and(|l| !l.is_empty()),
                    last_seen: if leases.contains_key(u) { 4_000 } else { 0 },
                })
                .collect())
        }

        fn contacts(&self, user: &str) -> Result<HashSet<String>, Unavailable> {
            // alice and bob share a chat; carol shares none.
            let all: &[&str] = match user {
                "alice" | "bob" => &["alice", "bob"],
                other => return Ok(HashSet::from([other.to_owned()])),
            };
            Ok(all.iter().map(|s| s.to_string()).collect())
        }

        fn watch(&self, connection: u64, users: &[String]) {
            self.watches.borrow_mut().push((connection, users.to_vec()));
        }

        fn send_to_watchers(&self, user: &str, frame: &str) {
            self.to_watchers
                .borrow_mut()
                .push((user.into(), serde_json::from_str(frame).unwrap()));
        }

        fn send_to_connection(&self, connection: u64, frame: &str) {
            self.replies
                .borrow_mut()
                .push((connection, serde_json::from_str(frame).unwrap()));
        }
    }

    fn connected(connection: u64, user: &str) -> Lifecycle {
        Lifecycle::Connected {
            connection,
            user: user.into(),
        }
    }

    fn disconnected(connection: u64, user: &str) -> Lifecycle {
        Lifecycle::Disconnected {
            connection,
            user: user.into(),
        }
    }

    /// Watchers hear "online" at the first device and "offline" only when the last one leaves.
    #[test]
    fn online_and_offline_are_announced_once() {
        let p = Fake::default();
        handle_lifecycle(
            &p,
            vec![
                connected(1, "alice"),
                connected(2, "alice"),
                disconnected(1, "alice"),
            ],
        );
        assert_eq!(p.to_watchers.borrow().len(), 1);
        handle_lifecycle(&p, vec![disconnected(2, "alice")]);
        let sent = p.to_watchers.borrow();
        assert_eq!(
            sent[0].1,
            json!({"type":"presence","userId":"alice","status":"online","lastSeen":5000})
        );
        assert_eq!(sent[1].1["status"], "offline");
    }

    /// An expiry is announced as offline since the last heartbeat.
    #[test]
    fn expiry_is_announced_with_last_heartbeat() {
        let p = Fake::default();
        handle_expired(
            &p,
            vec![Presence {
                user_id: "bob".into(),
                online: true,
                last_seen: 1234,
            }],
        );
        assert_eq!(
            p.to_watchers.borrow()[0].1,
            json!({"type":"presence","userId":"bob","status":"offline","lastSeen":1234})
        );
    }

    fn frame(user: &str, body: Value) -> Frame {
        Frame {
            connection: 9,
            user_id: user.into(),
            kind: body["type"].as_str().unwrap().into(),
            body: body.to_string(),
        }
    }

    /// Subscribing watches only users who share a chat, and replies with their current state.
    #[test]
    fn subscription_is_limited_to_contacts() {
        let p = Fake::default();
        handle_lifecycle(&p, vec![connected(1, "bob")]);
        handle_frames(
            &p,
            vec![frame(
                "alice",
                json!({"type":"subscribePresence","userIds":["bob","carol","bob"]}),
            )],
        );
        assert_eq!(
            p.watches.borrow().as_slice(),
            &[(9, vec!["bob".to_string()])]
        );
        let replies = p.replies.borrow();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].1["userId"], "bob");
        assert_eq!(replies[0].1["status"], "online");
    }

    /// A malformed subscription is an invalid_frame; a heartbeat during an outage is reported.
    #[test]
    fn refusals() {
        let p = Fake::default();
        handle_frames(
            &p,
            vec![frame(
                "alice",
                json!({"type":"subscribePresence","userIds":"bob"}),
            )],
        );
        assert_eq!(p.replies.borrow()[0].1["code"], "invalid_frame");
        let down = Fake {
            down: true,
            ..Fake::default()
        };
        handle_frames(&down, vec![frame("alice", json!({"type":"heartbeat"}))]);
        assert_eq!(down.replies.borrow()[0].1["code"], "unavailable");
    }
}
