//! Fan-out: one delivery call per message, addressed to every member of the
//! chat at delivery time, every device included. The sender is a recipient
//! too (their other devices need the message); only the connection it came
//! from is skipped, since it already has it through its `sent` ack.

use std::collections::{HashMap, HashSet};

use chat_core::frames::{self, MessageView};

/// A stored message to deliver, and the connection it came from.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: u64,
    pub chat_id: String,
    pub sender_id: String,
    pub content: String,
    pub timestamp: i64,
    pub prev_id: u64,
    pub origin: Option<u64>,
}

/// What fan-out needs from the host.
pub trait Platform {
    /// Current members of each chat, in order; `None` for one that does
    /// not exist or cannot be read. One call per batch: a remote store
    /// reads them concurrently.
    fn members_of(&self, chats: &[&str]) -> Vec<Option<Vec<String>>>;
    fn send_to_users(&self, users: &[String], frame: &str, skip: Option<u64>);
}

/// Delivers each message; the members of the batch's chats are read once,
/// in one call.
pub fn fanout(platform: &impl Platform, messages: Vec<Stored>) {
    let mut seen = HashSet::new();
    let chats: Vec<&str> = messages
        .iter()
        .map(|m| m.chat_id.as_str())
        .filter(|chat| seen.insert(*chat))
        .collect();
    let members: HashMap<&str, Option<Vec<String>>> = chats
        .iter()
        .copied()
        .zip(platform.members_of(&chats))
        .collect();
    for m in &messages {
        // A chat we cannot read now (or a host that answered short): its
        // members catch up from the store.
        let Some(Some(recipients)) = members.get(m.chat_id.as_str()) else {
            continue;
        };
        let view = MessageView {
            id: m.id,
            chat_id: &m.chat_id,
            sender_id: &m.sender_id,
            content: &m.content,
            timestamp: m.timestamp,
            prev_id: m.prev_id,
        };
        platform.send_to_users(recipients, &frames::receive_message(&view), m.origin);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// One recorded delivery: recipients, frame, skipped connection.
    type Delivery = (Vec<String>, serde_json::Value, Option<u64>);

    #[derive(Default)]
    struct Fake {
        chats: HashMap<String, Vec<String>>,
        /// The chats asked for, one list per call.
        lookups: RefCell<Vec<Vec<String>>>,
        sent: RefCell<Vec<Delivery>>,
    }

    impl Platform for Fake {
        fn members_of(&self, chats: &[&str]) -> Vec<Option<Vec<String>>> {
            self.lookups
                .borrow_mut()
                .push(chats.iter().map(|c| c.to_string()).collect());
            chats.iter().map(|c| self.chats.get(*c).cloned()).collect()
        }

        fn send_to_users(&self, users: &[String], frame: &str, skip: Option<u64>) {
            self.sent.borrow_mut().push((
                users.to_vec(),
                serde_json::from_str(frame).unwrap(),
                skip,
            ));
        }
    }

    fn stored(id: u64, chat: &str) -> Stored {
        Stored {
            id,
            chat_id: chat.into(),
            sender_id: "alice".into(),
            content: "hi".into(),
            timestamp: 7,
            prev_id: id - 1,
            origin: Some(3),
        }
    }

    /// Each message goes to all members (sender included) in one call, skipping the origin connection.
    #[test]
    fn delivers_to_every_member_once() {
        let mut p = Fake::default();
        p.chats.insert(
            "g:1".into(),
            vec!["alice".into(), "bob".into(), "carol".into()],
        );
        fanout(&p, vec![stored(10, "g:1"), stored(11, "g:1")]);
        let sent = p.sent.borrow();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].0, vec!["alice", "bob", "carol"]);
        assert_eq!(sent[0].2, Some(3));
        assert_eq!(
            sent[0].1,
            serde_json::json!({"type":"receiveMessage","messageId":"10","chatId":"g:1","senderId":"alice","content":"hi","timestamp":7,"prevMessageId":"9"})
        );
        assert_eq!(
            *p.lookups.borrow(),
            vec![vec!["g:1".to_string()]],
            "members are read once per chat per batch"
        );
    }

    /// A message of an unreadable chat is skipped without failing the others.
    #[test]
    fn unknown_chat_is_skipped() {
        let mut p = Fake::default();
        p.chats.insert("g:1".into(), vec!["bob".into()]);
        fanout(&p, vec![stored(1, "gone"), stored(2, "g:1")]);
        let sent = p.sent.borrow();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1["messageId"], "2");
    }

    /// A host that answers fewer chats than asked: what it answered for is
    /// delivered, the rest is skipped rather than misrouted.
    #[test]
    fn a_short_answer_skips_the_chats_left_out() {
        #[derive(Default)]
        struct Short(RefCell<Vec<(Vec<String>, String)>>);
        impl Platform for Short {
            fn members_of(&self, _chats: &[&str]) -> Vec<Option<Vec<String>>> {
                vec![Some(vec!["bob".into()])]
            }
            fn send_to_users(&self, users: &[String], frame: &str, _skip: Option<u64>) {
                let frame: serde_json::Value = serde_json::from_str(frame).unwrap();
                let id = frame["messageId"].as_str().unwrap().to_string();
                self.0.borrow_mut().push((users.to_vec(), id));
            }
        }
        let p = Short::default();
        fanout(&p, vec![stored(1, "a"), stored(2, "b"), stored(3, "a")]);
        let bob = vec!["bob".to_string()];
        assert_eq!(
            *p.0.borrow(),
            vec![(bob.clone(), "1".to_string()), (bob, "3".to_string())]
        );
    }

    /// In a batch spanning chats, each message reaches its own chat's members, each chat is read once, and a message with no origin skips no connection.
    #[test]
    fn mixed_batch_routes_per_chat() {
        let mut p = Fake::default();
        p.chats
            .insert("dm:alice:bob".into(), vec!["alice".into(), "bob".into()]);
        p.chats
            .insert("g:1".into(), vec!["alice".into(), "carol".into()]);
        let no_origin = Stored {
            origin: None,
            ..stored(3, "dm:alice:bob")
        };
        fanout(
            &p,
            vec![
                stored(1, "dm:alice:bob"),
                stored(2, "g:1"),
                no_origin,
                stored(4, "g:1"),
            ],
        );
        let sent = p.sent.borrow();
        let routes: Vec<(Vec<String>, String, Option<u64>)> = sent
            .iter()
            .map(|(to, f, skip)| (to.clone(), f["messageId"].as_str().unwrap().into(), *skip))
            .collect();
        let members = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            routes,
            vec![
                (members(&["alice", "bob"]), "1".into(), Some(3)),
                (members(&["alice", "carol"]), "2".into(), Some(3)),
                (members(&["alice", "bob"]), "3".into(), None),
                (members(&["alice", "carol"]), "4".into(), Some(3)),
            ]
        );
        assert_eq!(
            *p.lookups.borrow(),
            vec![vec!["dm:alice:bob".to_string(), "g:1".to_string()]],
            "the batch's chats are read in one call, each once"
        );
    }
}
