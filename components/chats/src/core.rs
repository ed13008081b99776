//! Chat rules.
//!
//! - The caller is always a member. Two members and no name make a direct
//!   chat whose id is derived from the pair (`dm:a:b`, sorted), so creating
//!   it twice yields the same chat (`201` the first time, `200` after).
//! - A name or more than two members make a group `g:<snowflake>` with the
//!   caller as its admin, of at most the configured number of members.
//! - Admins add members; admins remove members, and anyone may leave. A
//!   change that would pass the limit changes nothing. Every member before
//!   and after a change gets a `chatUpdated` frame.

pub use chat_core::http::StoreFailure;
use chat_core::http::{Reply, api_segments};
use chat_core::{direct_chat_id, valid_user_id};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatKind {
    Direct,
    Group,
}

/// A chat as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    pub id: String,
    pub kind: ChatKind,
    pub name: Option<String>,
    pub members: Vec<String>,
    pub admins: Vec<String>,
    pub created_at: i64,
}

/// Why a membership update was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    /// The members changed since they were read; read again and retry.
    Conflict,
    NotFound,
    Unavailable,
    /// Any other backend failure; retrying will not help.
    Failed,
}

/// What chat management needs from the host.
pub trait Platform {
    fn max_group_members(&self) -> u32;
    fn now_ms(&self) -> i64;
    fn next_id(&self) -> u64;
    fn get_chat(&self, id: &str) -> Result<Option<Chat>, StoreFailure>;
    /// Stores the chat unless its id exists; the stored chat and whether it is new.
    fn create_chat(&self, chat: Chat) -> Result<(Chat, bool), StoreFailure>;
    fn chats_of(&self, user: &str) -> Result<Vec<Chat>, StoreFailure>;
    /// Replaces members and admins if the members are still `expected`.
    fn update_members(
        &self,
        id: &str,
        expected: &[String],
        members: Vec<String>,
        admins: Vec<String>,
    ) -> Result<Chat, UpdateError>;
    fn send_to_users(&self, users: &[String], frame: &str);
}

/// An HTTP request, reduced to what the core reads.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
    /// The authenticated caller, from the gateway.
    pub user: Option<&'a str>,
}

const MAX_NAME_CHARS: usize = 100;

/// The chat as the API shows it.
pub fn chat_json(chat: &Chat) -> Value {
    let mut body = json!({
        "chatId": chat.id,
        "kind": match chat.kind { ChatKind::Direct => "direct", ChatKind::Group => "group" },
        "members": chat.members,
        "admins": chat.admins,
        "createdAt": chat.created_at,
    });
    if let Some(name) = &chat.name {
        body["name"] = Value::from(name.as_str());
    }
    body
}

/// Serves one request.
pub fn handle(platform: &impl Platform, request: &Request<'_>) -> Reply {
    let Some(user) = request.user else {
        return Reply::unauthorized();
    };
    let Some(segments) = api_segments(request.path) else {
        return Reply::not_found();
    };
    let result = match (request.method, segments.as_slice()) {
        ("POST", [chats]) if chats == "chats" => create(platform, user, request.body),
        ("GET", [chats]) if chats == "chats" => list(platform, user),
        ("GET", [chats, id]) if chats == "chats" => show(platform, user, id),
        ("POST", [chats, id, members]) if chats == "chats" && members == "members" => {
            add_members(platform, user, id, request.body)
        }
        ("DELETE", [chats, id, members, target]) if chats == "chats" && members == "members" => {
            remove_member(platform, user, id, target)
        }
        (_, [chats]) | (_, [chats, _]) if chats == "chats" => Err(Reply::method_not_allowed()),
        (_, [chats, _, members, ..]) if chats == "chats" && members == "members" => {
            Err(Reply::method_not_allowed())
        }
        _ => Err(Reply::not_found()),
    };
    result.unwrap_or_else(|reply| reply)
}

fn create(platform: &impl Platform, user: &str, body: &[u8]) -> Result<Reply, Reply> {
    let body: Value =
        serde_json::from_slice(body).map_err(|_| Reply::bad_request("body must be JSON"))?;
    let listed = body
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| Reply::bad_request("members must be an array of user ids"))?;
    let mut members = vec![user.to_owned()];
    for member in listed {
        let member = member
            .as_str()
            .filter(|m| valid_user_id(m))
            .ok_or_else(|| {
                Reply::bad_request("members must be user ids (1-64 of A-Z a-z 0-9 _ . -)")
            })?;
        if !members.iter().any(|m| m == member) {
            members.push(member.to_owned());
        }
    }
    let name = match body.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name))
            if (1..=MAX_NAME_CHARS).contains(&name.trim().chars().count()) =>
        {
            Some(name.trim().to_owned())
        }
        Some(_) => {
            return Err(Reply::bad_request(format!(
                "name must be 1-{MAX_NAME_CHARS} characters"
            )));
        }
    };
    if members.len() < 2 {
        return Err(Reply::bad_request(
            "a chat needs at least one member besides you",
        ));
    }

    let chat = if name.is_none() && members.len() == 2 {
        let mut pair = members;
        pair.sort();
        Chat {
            id: direct_chat_id(&pair[0], &pair[1]),
            kind: ChatKind::Direct,
            name: None,
            members: pair,
            admins: Vec::new(),
            created_at: platform.now_ms(),
        }
    } else {
        let limit = platform.max_group_members();
        if members.len() > limit as usize {
            return Err(Reply::error(
                422,
                "too_many_members",
                format!("a group has at most {limit} members"),
            ));
        }
        Chat {
            id: format!("g:{}", platform.next_id()),
            kind: ChatKind::Group,
            name,
            members,
            admins: vec![user.to_owned()],
            created_at: platform.now_ms(),
        }
    };
    let (chat, created) = platform.create_chat(chat).map_err(Reply::from)?;
    let body = chat_json(&chat);
    Ok(if created {
        Reply::created(body)
    } else {
        Reply::ok(body)
    })
}

fn list(platform: &impl Platform, user: &str) -> Result<Reply, Reply> {
    let chats = platform.chats_of(user).map_err(Reply::from)?;
    Ok(Reply::ok(
        json!({ "chats": chats.iter().map(chat_json).collect::<Vec<_>>() }),
    ))
}

fn show(platform: &impl Platform, user: &str, id: &str) -> Result<Reply, Reply> {
    let chat = platform.get_chat(id).map_err(Reply::from)?;
    match chat {
        Some(chat) if chat.members.iter().any(|m| m == user) => Ok(Reply::ok(chat_json(&chat))),
        _ => Err(Reply::chat_not_found()),
    }
}

/// How many times a membership change is retried after a concurrent change.
const UPDATE_ATTEMPTS: usize = 3;

/// A group the caller belongs to, or the refusal to give.
fn group_of_member(platform: &impl Platform, user: &str, id: &str) -> Result<Chat, Reply> {
    let chat = platform.get_chat(id).map_err(Reply::from)?;
    let chat = chat
        .filter(|c| c.members.iter().any(|m| m == user))
        .ok_or_else(Reply::chat_not_found)?;
    if chat.kind == ChatKind::Direct {
        return Err(Reply::error(
            409,
            "direct_chat",
            "a direct chat's members cannot change",
        ));
    }
    Ok(chat)
}

/// Applies `change` to the current chat, retrying when another change won
/// the race; tells every member before and after.
fn change_members(
    platform: &impl Platform,
    user: &str,
    id: &str,
    event: &str,
    user_ids: &[String],
    change: impl Fn(&Chat) -> Result<Option<(Vec<String>, Vec<String>)>, Reply>,
) -> Result<Reply, Reply> {
    for _ in 0..UPDATE_ATTEMPTS {
        let chat = group_of_member(platform, user, id)?;
        let Some((members, admins)) = change(&chat)? else {
            return Ok(Reply::ok(chat_json(&chat)));
        };
        match platform.update_members(id, &chat.members, members, admins) {
            Ok(updated) => {
                let mut audience = chat.members.clone();
                audience.extend(
                    updated
                        .members
                        .iter()
                        .filter(|m| !chat.members.contains(m))
                        .cloned(),
                );
                let frame = json!({
                    "type": "chatUpdated",
                    "chatId": updated.id,
                    "change": event,
                    "userIds": user_ids,
                    "by": user,
                    "chat": chat_json(&updated),
                });
                platform.send_to_users(&audience, &frame.to_string());
                return Ok(Reply::ok(chat_json(&updated)));
            }
            Err(UpdateError::Conflict) => continue,
            Err(UpdateError::NotFound) => return Err(Reply::chat_not_found()),
            Err(UpdateError::Unavailable) => return Err(Reply::unavailable()),
            Err(UpdateError::Failed) => return Err(Reply::internal()),
        }
    }
    Err(Reply::error(
        409,
        "conflict",
        "the chat is changing concurrently; retry",
    ))
}

fn add_members(
    platform: &impl Platform,
    user: &str,
    id: &str,
    body: &[u8],
) -> Result<Reply, Reply> {
    let body: Value =
        serde_json::from_slice(body).map_err(|_| Reply::bad_request("body must be JSON"))?;
    let listed = body
        .get("userIds")
        .and_then(Value::as_array)
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| Reply::bad_request("userIds must be a non-empty array of user ids"))?;
    let mut user_ids: Vec<String> = Vec::with_capacity(listed.len());
    for id in listed {
        let id = id.as_str().filter(|m| valid_user_id(m)).ok_or_else(|| {
            Reply::bad_request("userIds must be user ids (1-64 of A-Z a-z 0-9 _ . -)")
        })?;
        if !user_ids.iter().any(|u| u == id) {
            user_ids.push(id.to_owned());
        }
    }
    let limit = platform.max_group_members() as usize;
    change_members(platform, user, id, "membersAdded", &user_ids, |chat| {
        if !chat.admins.iter().any(|a| a == user) {
            return Err(Reply::error(403, "not_admin", "only admins add members"));
        }
        let mut members = chat.members.clone();
        members.extend(
            user_ids
                .iter()
                .filter(|u| !chat.members.contains(u))
                .cloned(),
        );
        if members.len() == chat.members.len() {
            return Ok(None);
        }
        if members.len() > limit {
            return Err(Reply::error(
                422,
                "too_many_members",
                format!("a group has at most {limit} members"),
            ));
        }
        Ok(Some((members, chat.admins.clone())))
    })
}

fn remove_member(
    platform: &impl Platform,
    user: &str,
    id: &str,
    target: &str,
) -> Result<Reply, Reply> {
    let target = target.to_owned();
    change_members(
        platform,
        user,
        id,
        "memberRemoved",
        std::slice::from_ref(&target),
        |chat| {
            if target != user && !chat.admins.iter().any(|a| a == user) {
                return Err(Reply::error(
                    403,
                    "not_admin",
                    "only admins remove other members",
                ));
            }
            if !chat.members.contains(&target) {
                return Err(Reply::error(
                    404,
                    "user_not_found",
                    "not a member of this chat",
                ));
            }
            let members: Vec<String> = chat
                .members
                .iter()
                .filter(|m| **m != target)
                .cloned()
                .collect();
            let mut admins: Vec<String> = chat
                .admins
                .iter()
                .filter(|a| **a != target)
                .cloned()
                .collect();
            // A group keeps an admin: the longest-standing member inherits.
            if admins.is_empty()
                && let Some(first) = members.first()
            {
                admins.push(first.clone());
            }
            Ok(Some((members, admins)))
        },
    )
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Default)]
    struct Fake {
        chats: RefCell<Vec<Chat>>,
        ids: RefCell<u64>,
        sent: RefCell<Vec<(Vec<String>, Value)>>,
        /// When set, creating a chat fails so.
        create_failure: Option<StoreFailure>,
    }

    impl Platform for Fake {
        fn max_group_members(&self) -> u32 {
            256
        }

        fn now_ms(&self) -> i64 {
            1_000
        }

        fn next_id(&self) -> u64 {
            *self.ids.borrow_mut() += 1;
            *self.ids.borrow()
        }

        fn get_chat(&self, id: &str) -> Result<Option<Chat>, StoreFailure> {
            Ok(self.chats.borrow().iter().find(|c| c.id == id).cloned())
        }

        fn create_chat(&self, chat: Chat) -> Result<(Chat, bool), StoreFailure> {
            if let Some(failure) = self.create_failure {
                return Err(failure);
            }
            if let Some(existing) = self.get_chat(&chat.id)? {
                return Ok((existing, false));
            }
            self.chats.borrow_mut().push(chat.clone());
            Ok((chat, true))
        }

        fn chats_of(&self, user: &str) -> Result<Vec<Chat>, StoreFailure> {
            Ok(self
                .chats
                .borrow()
                .iter()
                .filter(|c| c.members.iter().any(|m| m == user))
                .cloned()
                .collect())
        }

        fn update_members(
            &self,
            id: &str,
            expected: &[String],
            members: Vec<String>,
            admins: Vec<String>,
        ) -> Result<Chat, UpdateError> {
            let mut chats = self.chats.borrow_mut();
            let chat = chats
                .iter_mut()
                .find(|c| c.id == id)
                .ok_or(UpdateError::NotFound)?;
            if chat.members != expected {
                return Err(UpdateError::Conflict);
            }
            chat.members = members;
            chat.admins = admins;
            Ok(chat.clone())
        }

        fn send_to_users(&self, users: &[String], frame: &str) {
            self.sent
                .borrow_mut()
                .push((users.to_vec(), serde_json::from_str(frame).unwrap()));
        }
    }

    fn members_request(p: &Fake, user: &str, chat: &str, body: Value) -> Reply {
        let body = body.to_string();
        let path = format!("/api/v1/chats/{chat}/members");
        handle(
            p,
            &Request {
                method: "POST",
                path: &path,
                body: body.as_bytes(),
                user: Some(user),
            },
        )
    }

    fn remove(p: &Fake, user: &str, chat: &str, target: &str) -> Reply {
        let path = format!("/api/v1/chats/{chat}/members/{target}");
        handle(
            p,
            &Request {
                method: "DELETE",
                path: &path,
                body: b"",
                user: Some(user),
            },
        )
    }

    fn group(p: &Fake) -> String {
        let reply = post(p, "alice", json!({"members": ["bob"], "name": "team"}));
        reply.body["chatId"].as_str().unwrap().to_owned()
    }

    /// Admins add members; everyone before and after hears `chatUpdated`; non-admins get 403.
    #[test]
    fn admins_add_members() {
        let p = Fake::default();
        let id = group(&p);
        let added = members_request(&p, "alice", &id, json!({"userIds": ["carol", "bob"]}));
        assert_eq!(added.status, 200);
        assert_eq!(added.body["members"], json!(["alice", "bob", "carol"]));
        let (audience, frame) = p.sent.borrow()[0].clone();
        assert_eq!(audience, vec!["alice", "bob", "carol"]);
        assert_eq!(frame["type"], "chatUpdated");
        assert_eq!(frame["change"], "membersAdded");
        assert_eq!(
            members_request(&p, "bob", &id, json!({"userIds": ["dave"]})).status,
            403
        );
        assert_eq!(
            members_request(&p, "mallory", &id, json!({"userIds": ["dave"]})).status,
            404
        );
    }

    /// Adding past 256 members is refused whole with 422.
    #[test]
    fn adding_past_the_limit_changes_nothing() {
        let p = Fake::default();
        let id = group(&p);
        let many: Vec<String> = (1..=254).map(|i| format!("u{i}")).collect();
        assert_eq!(
            members_request(&p, "alice", &id, json!({"userIds": many})).status,
            200
        );
        let refused = members_request(&p, "alice", &id, json!({"userIds": ["x1", "x2"]}));
        assert_eq!(refused.status, 422);
        assert_eq!(p.chats.borrow()[0].members.len(), 256);
    }

    /// Admins remove members, members leave themselves, others cannot; an admin who leaves hands over.
    #[test]
    fn removing_members() {
        let p = Fake::default();
        let id = group(&p);
        members_request(&p, "alice", &id, json!({"userIds": ["carol", "dave"]}));
        assert_eq!(remove(&p, "bob", &id, "carol").status, 403);
        let removed = remove(&p, "alice", &id, "carol");
        assert_eq!(removed.body["members"], json!(["alice", "bob", "dave"]));
        let (audience, frame) = p.sent.borrow().last().unwrap().clone();
        assert!(
            audience.contains(&"carol".to_string()),
            "the removed member is told"
        );
        assert_eq!(frame["change"], "memberRemoved");
        assert_eq!(remove(&p, "dave", &id, "dave").status, 200);
        assert_eq!(
            remove(&p, "alice", &id, "alice").body["admins"],
            json!(["bob"])
        );
        assert_eq!(remove(&p, "bob", &id, "zed").status, 404);
    }

    /// A direct chat's members are fixed.
    #[test]
    fn direct_members_are_fixed() {
        let p = Fake::default();
        post(&p, "alice", json!({"members": ["bob"]}));
        assert_eq!(
            members_request(&p, "alice", "dm:alice:bob", json!({"userIds": ["carol"]})).status,
            409
        );
    }

    fn post(p: &Fake, user: &str, body: Value) -> Reply {
        let body = body.to_string();
        handle(
            p,
            &Request {
                method: "POST",
                path: "/api/v1/chats",
                body: body.as_bytes(),
                user: Some(user),
            },
        )
    }

    fn get(p: &Fake, user: &str, path: &str) -> Reply {
        handle(
            p,
            &Request {
                method: "GET",
                path,
                body: b"",
                user: Some(user),
            },
        )
    }

    /// A direct chat has a pair-derived id; creating it again (from either side) returns it with 200.
    #[test]
    fn direct_chat_is_created_once() {
        let p = Fake::default();
        let first = post(&p, "bob", json!({"members": ["alice"]}));
        assert_eq!(first.status, 201);
        assert_eq!(first.body["chatId"], "dm:alice:bob");
        assert_eq!(first.body["kind"], "direct");
        assert_eq!(first.body["members"], json!(["alice", "bob"]));
        let again = post(&p, "alice", json!({"members": ["alice", "bob"]}));
        assert_eq!(again.status, 200);
        assert_eq!(again.body, first.body);
    }

    /// A name or three members make a group with the caller as admin.
    #[test]
    fn groups_have_an_admin() {
        let p = Fake::default();
        let named = post(&p, "alice", json!({"members": ["bob"], "name": "Lunch"}));
        assert_eq!(named.status, 201);
        assert_eq!(named.body["kind"], "group");
        assert_eq!(named.body["name"], "Lunch");
        assert_eq!(named.body["admins"], json!(["alice"]));
        assert!(named.body["chatId"].as_str().unwrap().starts_with("g:"));
        let trio = post(&p, "alice", json!({"members": ["bob", "carol"]}));
        assert_eq!(trio.body["kind"], "group");
        assert_ne!(trio.body["chatId"], named.body["chatId"]);
    }

    /// 256 members are allowed, 257 are refused with 422 and nothing is created.
    #[test]
    fn group_size_limit() {
        let p = Fake::default();
        let members: Vec<String> = (1..=255).map(|i| format!("u{i}")).collect();
        assert_eq!(
            post(&p, "alice", json!({"members": members, "name": "big"})).status,
            201
        );
        let members: Vec<String> = (1..=256).map(|i| format!("u{i}")).collect();
        let refused = post(&p, "alice", json!({"members": members, "name": "bigger"}));
        assert_eq!(refused.status, 422);
        assert_eq!(refused.body["code"], "too_many_members");
        assert_eq!(p.chats.borrow().len(), 1);
    }

    /// Malformed requests are 400s: no other member, bad ids, bad names, not JSON.
    #[test]
    fn bad_requests() {
        let p = Fake::default();
        for body in [
            json!({"members": []}),
            json!({"members": ["alice"]}),
            json!({"members": ["bad id"]}),
            json!({"members": "bob"}),
            json!({"members": ["bob"], "name": ""}),
            json!({"members": ["bob"], "name": 5}),
        ] {
            assert_eq!(post(&p, "alice", body.clone()).status, 400, "{body}");
        }
        let raw = handle(
            &p,
            &Request {
                method: "POST",
                path: "/api/v1/chats",
                body: b"{",
                user: Some("alice"),
            },
        );
        assert_eq!(raw.status, 400);
    }

    /// Members list and read their chats; others get 404; no caller is 401.
    #[test]
    fn listing_and_showing() {
        let p = Fake::default();
        post(&p, "alice", json!({"members": ["bob"]}));
        assert_eq!(
            get(&p, "bob", "/api/v1/chats").body["chats"][0]["chatId"],
            "dm:alice:bob"
        );
        assert_eq!(get(&p, "carol", "/api/v1/chats").body["chats"], json!([]));
        assert_eq!(
            get(&p, "alice", "/api/v1/chats/dm%3Aalice%3Abob").status,
            200
        );
        assert_eq!(get(&p, "carol", "/api/v1/chats/dm:alice:bob").status, 404);
        let anonymous = handle(
            &p,
            &Request {
                method: "GET",
                path: "/api/v1/chats",
                body: b"",
                user: None,
            },
        );
        assert_eq!(anonymous.status, 401);
        let delete = handle(
            &p,
            &Request {
                method: "DELETE",
                path: "/api/v1/chats",
                body: b"",
                user: Some("alice"),
            },
        );
        assert_eq!(delete.status, 405);
    }

    /// A backend outage is 503 (retry); a backend refusal is 500, not a retry loop.
    #[test]
    fn store_failures() {
        for (failure, status) in [
            (StoreFailure::Unavailable, 503),
            (StoreFailure::Failed, 500),
        ] {
            let p = Fake {
                create_failure: Some(failure),
                ..Fake::default()
            };
            let reply = post(&p, "alice", json!({"members": ["bob"]}));
            assert_eq!(reply.status, status, "{failure:?}");
        }
    }
}
