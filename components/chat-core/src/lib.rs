//! The chat rules and wire shapes that more than one component needs.
//!
//! Pure Rust with no bindings, so every rule here is unit-tested natively
//! and the components stay thin.

pub mod frames;
pub mod http;
pub mod ids;
pub mod presence;
pub mod receipts;
pub mod store_api;
pub mod token;

/// User ids are 1-64 of `[A-Za-z0-9_.-]`: safe inside chat ids (`dm:a:b`) and paths.
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The id of the direct chat between two users: the same whichever of them asks.
pub fn direct_chat_id(a: &str, b: &str) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{low}:{high}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct chat id does not depend on who creates it.
    #[test]
    fn direct_chat_id_is_symmetric() {
        assert_eq!(direct_chat_id("bob", "alice"), "dm:alice:bob");
        assert_eq!(direct_chat_id("alice", "bob"), "dm:alice:bob");
    }

    /// User ids outside the allowed alphabet or length are refused.
    #[test]
    fn user_id_rules() {
        assert!(valid_user_id("alice.b-1_x"));
        for bad in ["", "a:b", "a b", "ä", &"x".repeat(65)] {
            assert!(!valid_user_id(bad), "{bad}");
        }
    }
}
