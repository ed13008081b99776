//! The presence query.

use std::collections::HashSet;

use chat_core::http::{Reply, api_segments};
use chat_core::presence::{Presence, Unavailable, presence_json};

/// What the query needs from the host.
pub trait Platform {
    /// Everyone `user` shares a chat with (`user` included).
    fn contacts(&self, user: &str) -> Result<HashSet<String>, Unavailable>;
    fn query(&self, user: &str) -> Result<Option<Presence>, Unavailable>;
}

/// `GET /api/v1/users/{userId}/presence`: the user's presence, if they share
/// a chat with the caller; 404 otherwise, whether or not they exist.
pub fn handle_http(
    platform: &impl Platform,
    method: &str,
    path: &str,
    caller: Option<&str>,
) -> Reply {
    let Some(caller) = caller else {
        return Reply::unauthorized();
    };
    let Some(segments) = api_segments(path) else {
        return Reply::not_found();
    };
    let [users, user, presence] = segments.as_slice() else {
        return Reply::not_found();
    };
    if users != "users" || presence != "presence" {
        return Reply::not_found();
    }
    if method != "GET" {
        return Reply::method_not_allowed();
    }
    let not_found = || Reply::error(404, "user_not_found", "no such user among your chats");
    match platform.contacts(caller) {
        Ok(contacts) if contacts.contains(user.as_str()) => {}
        Ok(_) => return not_found(),
        Err(Unavailable) => return Reply::unavailable(),
    }
    match platform.query(user) {
        Ok(Some(p)) => Reply::ok(presence_json(&p)),
        Ok(None) => not_found(),
        Err(Unavailable) => Reply::unavailable(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    /// Alice and Bob share a chat; Carol shares none with either.
    struct Fake {
        seen: HashMap<&'static str, Presence>,
        down: bool,
    }

    impl Fake {
        fn new() -> Self {
            let bob = Presence {
                user_id: "bob".into(),
                online: true,
                last_seen: 4000,
            };
            Self {
                seen: HashMap::from([("bob", bob)]),
                down: false,
            }
        }
    }

    impl Platform for Fake {
        fn contacts(&self, user: &str) -> Result<HashSet<String>, Unavailable> {
            if self.down {
                return Err(Unavailable);
            }
            Ok(match user {
                "alice" | "bob" => ["alice", "bob"].map(String::from).into(),
                other => [other.to_owned()].into(),
            })
        }

        fn query(&self, user: &str) -> Result<Option<Presence>, Unavailable> {
            if self.down {
                return Err(Unavailable);
            }
            Ok(self.seen.get(user).cloned())
        }
    }

    const BOB: &str = "/api/v1/users/bob/presence";

    /// A contact's presence is answered; anyone else's is 404, as is a path
    /// that is not a presence query.
    #[test]
    fn contacts_only() {
        let p = Fake::new();
        let ok = handle_http(&p, "GET", BOB, Some("alice"));
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.body,
            json!({"userId":"bob","status":"online","lastSeen":4000})
        );
        assert_eq!(handle_http(&p, "GET", BOB, Some("carol")).status, 404);
        assert_eq!(
            handle_http(&p, "GET", "/api/v1/users/bob/status", Some("alice")).status,
            404
        );
    }

    /// No caller is 401, another method 405, a store down 503.
    #[test]
    fn refusals() {
        let p = Fake::new();
        assert_eq!(handle_http(&p, "GET", BOB, None).status, 401);
        assert_eq!(handle_http(&p, "POST", BOB, Some("alice")).status, 405);
        let down = Fake {
            down: true,
            ..Fake::new()
        };
        assert_eq!(handle_http(&down, "GET", BOB, Some("alice")).status, 503);
    }
}
