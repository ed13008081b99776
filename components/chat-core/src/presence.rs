//! A user's presence as clients see it: shared by the `presence` component
//! (pushed `presence` frames) and `presence-query` (the HTTP query), so both
//! say the same thing in the same shape.

use serde_json::{Value, json};

/// A user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub user_id: String,
    pub online: bool,
    /// ms since the Unix epoch; 0 if never seen.
    pub last_seen: i64,
}

/// A presence or membership store failure, as a component sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// `{"userId","status","lastSeen"}`, `lastSeen` null for a user never seen.
pub fn presence_json(p: &Presence) -> Value {
    json!({
        "userId": p.user_id,
        "status": if p.online { "online" } else { "offline" },
        "lastSeen": if p.last_seen > 0 { Value::from(p.last_seen) } else { Value::Null },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status follows `online`; a user never seen has a null `lastSeen`.
    #[test]
    fn presence_json_shape() {
        let seen = Presence {
            user_id: "bob".into(),
            online: false,
            last_seen: 42,
        };
        assert_eq!(
            presence_json(&seen),
            json!({"userId": "bob", "status": "offline", "lastSeen": 42})
        );
        let never = Presence {
            user_id: "carol".into(),
            online: true,
            last_seen: 0,
        };
        assert_eq!(
            presence_json(&never),
            json!({"userId": "carol", "status": "online", "lastSeen": null})
        );
    }
}
