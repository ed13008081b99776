//! History paging. `cursor` pages back (newest first), `after` pages forward
//! (oldest first, for catching up); one extra message is read to know
//! whether `nextCursor` is due. Each message's `status` is the caller's
//! view: the aggregate of the other members for the caller's own messages,
//! the caller's own receipt for the others'.

use std::collections::HashMap;

pub use chat_core::http::StoreFailure;
use chat_core::http::{Reply, api_segments, query_pairs};
use chat_core::ids::parse_message_id;
use chat_core::receipts::{Marks, Status, aggregate};
use serde_json::{Value, json};

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub chat_id: String,
    pub sender_id: String,
    pub content: String,
    pub timestamp: i64,
    /// The message before this one in the chat (0: none).
    pub prev_id: u64,
}

/// What history needs from the host.
pub trait Platform {
    /// The chat's current members, `None` if there is no such chat.
    fn members(&self, chat: &str) -> Result<Option<Vec<String>>, StoreFailure>;
    fn page_before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreFailure>;
    fn page_after(&self, chat: &str, after: u64, limit: u32) -> Result<Vec<Message>, StoreFailure>;
    fn receipts(&self, chat: &str) -> Result<Vec<(String, Marks)>, StoreFailure>;
    fn get(&self, chat: &str, id: u64) -> Result<Option<Message>, StoreFailure>;
}

/// An HTTP request, reduced to what the core reads.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// The authenticated caller, from the gateway.
    pub user: Option<&'a str>,
}

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

enum Direction {
    Before(Option<u64>),
    After(u64),
}

struct Page {
    direction: Direction,
    limit: u32,
}

fn parse_page(query: &str) -> Result<Page, Reply> {
    let pairs = query_pairs(query).ok_or_else(|| Reply::bad_request("malformed query string"))?;
    let (mut cursor, mut after, mut limit) = (None, None, DEFAULT_LIMIT);
    for (key, value) in pairs {
        let id = || {
            parse_message_id(&value)
                .ok_or_else(|| Reply::bad_request(format!("{key} must be a message id")))
        };
        match key.as_str() {
            "cursor" => cursor = Some(id()?),
            "after" => after = Some(id()?),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| Reply::bad_request(format!("limit must be 1-{MAX_LIMIT}")))?;
            }
            _ => {}
        }
    }
    let direction = match (cursor, after) {
        (Some(_), Some(_)) => {
            return Err(Reply::bad_request("use either cursor or after, not both"));
        }
        (_, Some(after)) => Direction::After(after),
        (cursor, None) => Direction::Before(cursor),
    };
    Ok(Page { direction, limit })
}

/// Serves one request.
pub fn handle(platform: &impl Platform, request: &Request<'_>) -> Reply {
    let Some(user) = request.user else {
        return Reply::unauthorized();
    };
    let Some(segments) = api_segments(request.path) else {
        return Reply::not_found();
    };
    match segments.as_slice() {
        [chats, chat, messages] if chats == "chats" && messages == "messages" => {
            if request.method != "GET" {
                return Reply::method_not_allowed();
            }
            messages_page(platform, user, chat, request.query).unwrap_or_else(|reply| reply)
        }
        [chats, chat, messages, id, receipts]
            if chats == "chats" && messages == "messages" && receipts == "receipts" =>
        {
            if request.method != "GET" {
                return Reply::method_not_allowed();
            }
            message_receipts(platform, user, chat, id).unwrap_or_else(|reply| reply)
        }
        _ => Reply::not_found(),
    }
}

/// Per-member receipts of one message (WhatsApp's "message info"): every
/// current member but the sender, with how far they have got.
fn message_receipts(
    platform: &impl Platform,
    user: &str,
    chat: &str,
    id: &str,
) -> Result<Reply, Reply> {
    let id =
        parse_message_id(id).ok_or_else(|| Reply::bad_request("messageId must be a message id"))?;
    let members = platform.members(chat).map_err(Reply::from)?;
    let members = members
        .filter(|m| m.iter().any(|u| u == user))
        .ok_or_else(Reply::chat_not_found)?;
    let message = platform
        .get(chat, id)
        .map_err(Reply::from)?
        .ok_or_else(|| Reply::error(404, "message_not_found", "no such message in this chat"))?;
    let marks: HashMap<String, Marks> = platform
        .receipts(chat)
        .map_err(Reply::from)?
        .into_iter()
        .collect();
    let receipts: Vec<Value> = members
        .iter()
        .filter(|m| **m != message.sender_id)
        .map(|m| {
            let status = Status::of(marks.get(m).copied().unwrap_or_default(), id);
            json!({ "userId": m, "status": status.as_str() })
        })
        .collect();
    let others = members.iter().filter(|m| **m != message.sender_id);
    let status = aggregate(
        others.map(|m| marks.get(m).copied().unwrap_or_default()),
        id,
    );
    Ok(Reply::ok(json!({
        "messageId": id.to_string(),
        "chatId": chat,
        "senderId": message.sender_id,
        "status": status.as_str(),
        "receipts": receipts,
    })))
}

fn messages_page(
    platform: &impl Platform,
    user: &str,
    chat: &str,
    query: &str,
) -> Result<Reply, Reply> {
    let page = parse_page(query)?;
    let members = platform.members(chat).map_err(Reply::from)?;
    let members = members
        .filter(|m| m.iter().any(|u| u == user))
        .ok_or_else(Reply::chat_not_found)?;

    let probe = page.limit + 1;
    let mut messages = match page.direction {
        Direction::Before(cursor) => platform.page_before(chat, cursor, probe),
        Direction::After(after) => platform.page_after(chat, after, probe),
    }
    .map_err(Reply::from)?;
    let more = messages.len() > page.limit as usize;
    messages.truncate(page.limit as usize);

    let marks: HashMap<String, Marks> = platform
        .receipts(chat)
        .map_err(Reply::from)?
        .into_iter()
        .collect();
    let marks_of = |u: &str| marks.get(u).copied().unwrap_or_default();
    let others: Vec<&String> = members.iter().filter(|m| *m != user).collect();
    let items: Vec<Value> = messages
        .iter()
        .map(|m| {
            let status = if m.sender_id == user {
                aggregate(others.iter().map(|o| marks_of(o)), m.id)
            } else {
                Status::of(marks_of(user), m.id)
            };
            json!({
                "id": m.id.to_string(),
                "chatId": m.chat_id,
                "senderId": m.sender_id,
                "content": m.content,
                "timestamp": m.timestamp,
                "prevMessageId": m.prev_id.to_string(),
                "status": status.as_str(),
            })
        })
        .collect();
    let mut body = json!({ "messages": items });
    if more && let Some(last) = messages.last() {
        body["nextCursor"] = Value::from(last.id.to_string());
    }
    Ok(Reply::ok(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        members: Vec<String>,
        messages: Vec<Message>,
        receipts: Vec<(String, Marks)>,
        /// When set, reading the chat fails so.
        failure: Option<StoreFailure>,
    }

    impl Fake {
        fn new(n: u64) -> Self {
            let messages = (1..=n)
                .map(|id| Message {
                    id,
                    chat_id: "dm:alice:bob".into(),
                    sender_id: if id % 2 == 0 {
                        "alice".into()
                    } else {
                        "bob".into()
                    },
                    content: format!("m{id}"),
                    timestamp: id as i64,
                    prev_id: id - 1,
                })
                .collect();
            Self {
                members: vec!["alice".into(), "bob".into()],
                messages,
                receipts: vec![],
                failure: None,
            }
        }
    }

    impl Platform for Fake {
        fn members(&self, chat: &str) -> Result<Option<Vec<String>>, StoreFailure> {
            if let Some(failure) = self.failure {
                return Err(failure);
            }
            Ok((chat == "dm:alice:bob").then(|| self.members.clone()))
        }

        fn page_before(
            &self,
            _: &str,
            before: Option<u64>,
            limit: u32,
        ) -> Result<Vec<Message>, StoreFailure> {
            let before = before.unwrap_or(u64::MAX);
            Ok(self
                .messages
                .iter()
                .rev()
                .filter(|m| m.id < before)
                .take(limit as usize)
                .cloned()
                .collect())
        }

        fn page_after(
            &self,
            _: &str,
            after: u64,
            limit: u32,
        ) -> Result<Vec<Message>, StoreFailure> {
            Ok(self
                .messages
                .iter()
                .filter(|m| m.id > after)
                .take(limit as usize)
                .cloned()
                .collect())
        }

        fn receipts(&self, _: &str) -> Result<Vec<(String, Marks)>, StoreFailure> {
            Ok(self.receipts.clone())
        }

        fn get(&self, _: &str, id: u64) -> Result<Option<Message>, StoreFailure> {
            Ok(self.messages.iter().find(|m| m.id == id).cloned())
        }
    }

    fn get(p: &Fake, user: &str, query: &str) -> Reply {
        let request = Request {
            method: "GET",
            path: "/api/v1/chats/dm%3Aalice%3Abob/messages",
            query,
            user: Some(user),
        };
        handle(p, &request)
    }

    fn ids(reply: &Reply) -> Vec<u64> {
        reply.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Backward pages are newest first and chain through nextCursor to the end, where it is absent.
    #[test]
    fn pages_backwards_to_the_end() {
        let p = Fake::new(45);
        let first = get(&p, "alice", "limit=20");
        assert_eq!(ids(&first), (26..=45).rev().collect::<Vec<_>>());
        assert_eq!(first.body["nextCursor"], "26");
        let second = get(&p, "alice", "cursor=26&limit=20");
        assert_eq!(ids(&second), (6..=25).rev().collect::<Vec<_>>());
        let last = get(&p, "alice", "cursor=6&limit=20");
        assert_eq!(ids(&last), vec![5, 4, 3, 2, 1]);
        assert!(last.body.get("nextCursor").is_none());
    }

    /// Forward pages are oldest first; an exactly full last page has no nextCursor.
    #[test]
    fn pages_forward_for_catch_up() {
        let p = Fake::new(40);
        let first = get(&p, "bob", "after=0&limit=20");
        assert_eq!(ids(&first), (1..=20).collect::<Vec<_>>());
        assert_eq!(first.body["nextCursor"], "20");
        let second = get(&p, "bob", "after=20&limit=20");
        assert_eq!(ids(&second), (21..=40).collect::<Vec<_>>());
        assert!(second.body.get("nextCursor").is_none());
    }

    /// Bad parameters are 400s; strangers get 404; no caller is 401; an outage is 503, other backend failures 500.
    #[test]
    fn refusals() {
        let p = Fake::new(3);
        for q in [
            "limit=0",
            "limit=101",
            "limit=abc",
            "cursor=x",
            "cursor=1&after=2",
            "after=-1",
        ] {
            assert_eq!(get(&p, "alice", q).status, 400, "{q}");
        }
        assert_eq!(get(&p, "carol", "").status, 404);
        let unknown = Request {
            method: "GET",
            path: "/api/v1/chats/nope/messages",
            query: "",
            user: Some("alice"),
        };
        assert_eq!(handle(&p, &unknown).status, 404);
        let anonymous = Request {
            method: "GET",
            path: "/api/v1/chats/dm:alice:bob/messages",
            query: "",
            user: None,
        };
        assert_eq!(handle(&p, &anonymous).status, 401);
        let post = Request {
            method: "POST",
            path: "/api/v1/chats/dm:alice:bob/messages",
            query: "",
            user: Some("alice"),
        };
        assert_eq!(handle(&p, &post).status, 405);
        for (failure, status) in [
            (StoreFailure::Unavailable, 503),
            (StoreFailure::NotFound, 404),
            (StoreFailure::Failed, 500),
        ] {
            let broken = Fake {
                failure: Some(failure),
                ..Fake::new(1)
            };
            assert_eq!(get(&broken, "alice", "").status, status, "{failure:?}");
        }
    }

    /// Status is the caller's view: own messages by the slowest other member, others' by the caller's receipt.
    #[test]
    fn status_from_the_callers_view() {
        let mut p = Fake::new(4);
        p.members.push("carol".into());
        p.receipts = vec![
            (
                "bob".into(),
                Marks {
                    delivered_up_to: 4,
                    read_up_to: 2,
                },
            ),
            (
                "alice".into(),
                Marks {
                    delivered_up_to: 3,
                    read_up_to: 1,
                },
            ),
        ];
        let statuses = |reply: &Reply| -> Vec<String> {
            reply.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["status"].as_str().unwrap().to_owned())
                .collect()
        };
        // Messages 4,3,2,1: alice sent 4 and 2, bob 3 and 1; carol has no receipt.
        assert_eq!(
            statuses(&get(&p, "alice", "")),
            ["sent", "delivered", "sent", "read"]
        );
        assert_eq!(
            statuses(&get(&p, "bob", "")),
            ["delivered", "sent", "read", "sent"]
        );
        p.receipts.push((
            "carol".into(),
            Marks {
                delivered_up_to: 4,
                read_up_to: 4,
            },
        ));
        assert_eq!(
            statuses(&get(&p, "alice", "")),
            ["delivered", "delivered", "read", "read"]
        );
    }

    /// Message info lists every other member's receipt and the aggregate.
    #[test]
    fn message_info() {
        let mut p = Fake::new(4);
        p.members.push("carol".into());
        p.receipts = vec![(
            "bob".into(),
            Marks {
                delivered_up_to: 4,
                read_up_to: 4,
            },
        )];
        let request = Request {
            method: "GET",
            path: "/api/v1/chats/dm:alice:bob/messages/4/receipts",
            query: "",
            user: Some("alice"),
        };
        let reply = handle(&p, &request);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["status"], "sent");
        assert_eq!(
            reply.body["receipts"],
            json!([{"userId":"bob","status":"read"},{"userId":"carol","status":"sent"}])
        );
        let missing = Request {
            path: "/api/v1/chats/dm:alice:bob/messages/99/receipts",
            ..request.clone()
        };
        assert_eq!(handle(&p, &missing).status, 404);
        let stranger = Request {
            user: Some("mallory"),
            ..request
        };
        assert_eq!(handle(&p, &stranger).status, 404);
    }
}
