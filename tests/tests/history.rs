//! History over HTTP: paging both ways, parameters, access control, per-caller status.

use serde_json::{Value, json};
use switchboard_e2e::{Server, TIMESTAMP, ids, messages, sign_token};

/// 45 messages page back newest first in 20s and forward oldest first, following nextCursor chains that end with no nextCursor.
#[tokio::test]
async fn paging_both_ways() {
    let server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let mut alice = server.connect("alice").await;
    let mut sent = Vec::new();
    for i in 0..45 {
        sent.push(
            alice
                .send_id(&chat, &format!("m{i}"), &format!("c{i}"))
                .await,
        );
    }
    let newest: Vec<String> = sent.iter().rev().cloned().collect();
    let cursor = |page: &Value| -> String {
        page["nextCursor"]
            .as_str()
            .unwrap_or_else(|| panic!("a nextCursor string: {page}"))
            .to_owned()
    };

    // Backwards, newest first.
    let p1 = server.history_page(&chat, "bob", "limit=20").await;
    assert_eq!(ids(&p1), newest[0..20]);
    let p2 = server
        .history_page(&chat, "bob", &format!("cursor={}&limit=20", cursor(&p1)))
        .await;
    assert_eq!(ids(&p2), newest[20..40]);
    let p3 = server
        .history_page(&chat, "bob", &format!("cursor={}&limit=20", cursor(&p2)))
        .await;
    assert_eq!(ids(&p3), newest[40..45]);
    assert!(p3.get("nextCursor").is_none(), "last page: {p3}");

    // Forwards, oldest first.
    let f1 = server.history_page(&chat, "bob", "after=0&limit=20").await;
    assert_eq!(ids(&f1), sent[0..20]);
    let f2 = server
        .history_page(&chat, "bob", &format!("after={}&limit=20", cursor(&f1)))
        .await;
    assert_eq!(ids(&f2), sent[20..40]);
    let f3 = server
        .history_page(&chat, "bob", &format!("after={}&limit=20", cursor(&f2)))
        .await;
    assert_eq!(ids(&f3), sent[40..45]);
    assert!(f3.get("nextCursor").is_none(), "last page: {f3}");

    // Default limit 20; a page holding exactly what is left has no nextCursor.
    let default = server.history_page(&chat, "bob", "").await;
    assert_eq!(ids(&default), newest[0..20]);
    assert!(default.get("nextCursor").is_some());
    let all = server.history_page(&chat, "bob", "limit=100").await;
    assert_eq!(ids(&all), newest);
    assert!(all.get("nextCursor").is_none(), "{all}");
    let exact = server
        .history_page(&chat, "bob", &format!("cursor={}&limit=5", newest[39]))
        .await;
    assert_eq!(ids(&exact), newest[40..45]);
    assert!(exact.get("nextCursor").is_none(), "{exact}");

    assert_eq!(
        default["messages"][0],
        json!({"id":newest[0],"chatId":chat,"senderId":"alice","content":"m44",
               "timestamp":TIMESTAMP,"prevMessageId":newest[1],"status":"sent"})
    );
}

/// `status` is the caller's view: for their own messages the other member's progress, for others' messages their own receipt.
#[tokio::test]
async fn status_is_from_the_callers_view() {
    let server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let b1 = bob.send_id(&chat, "from bob", "b1").await;
    let a1 = alice.send_id(&chat, "a1", "a1").await;
    let a2 = alice.send_id(&chat, "a2", "a2").await;
    let a3 = alice.send_id(&chat, "a3", "a3").await;

    alice
        .send_json(json!({"type":"ack","chatId":chat,"messageId":b1,"status":"read"}))
        .await;
    bob.recv_until(|f| f["type"] == "ack" && f["status"] == "read")
        .await;
    bob.send_json(json!({"type":"ack","chatId":chat,"messageId":a1,"status":"read"}))
        .await;
    alice
        .recv_until(|f| f["type"] == "ack" && f["status"] == "read")
        .await;
    bob.send_json(json!({"type":"ack","chatId":chat,"messageId":a2,"status":"delivered"}))
        .await;
    alice
        .recv_until(|f| f["type"] == "ack" && f["messageId"] == a2.as_str())
        .await;

    let view = |page: &Value| -> Vec<(String, String)> {
        messages(page)
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |id: &str, s: &str| (id.to_owned(), s.to_owned());
    let alices = server.history_page(&chat, "alice", "after=0").await;
    assert_eq!(
        view(&alices),
        [
            pair(&b1, "read"),
            pair(&a1, "read"),
            pair(&a2, "delivered"),
            pair(&a3, "sent"),
        ]
    );
    let bobs = server.history_page(&chat, "bob", "after=0").await;
    // Bob has no receipt of his own for a3: it is just `sent` to him.
    assert_eq!(
        view(&bobs),
        [
            pair(&b1, "read"),
            pair(&a1, "read"),
            pair(&a2, "delivered"),
            pair(&a3, "sent"),
        ]
    );
}

/// Bad parameters get 400 bad_request; non-members and unknown chats 404 chat_not_found; missing, forged, expired or malformed credentials 401 unauthorized.
#[tokio::test]
async fn refusals_have_status_and_json_body() {
    let server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "cursor=abc",
        "after=abc",
        "cursor=5&after=3",
        "cursor=5&after=0",
    ] {
        let (status, body) = server.history(&chat, "alice", query).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("bad_request")),
            "{query}: {body}"
        );
        assert!(body["message"].is_string(), "{body}");
    }
    for query in ["limit=1", "limit=100"] {
        assert_eq!(
            server.history(&chat, "alice", query).await.0,
            200,
            "{query}"
        );
    }

    let (status, body) = server.history(&chat, "mallory", "").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("chat_not_found")),
        "{body}"
    );
    let (status, body) = server.history("dm:nobody:here", "alice", "").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("chat_not_found")),
        "{body}"
    );

    let path = format!("/api/v1/chats/{chat}/messages");
    let secret = server.secret().unwrap();
    let forged = sign_token("alice", 3600, "some-other-secret-0123456789abcdef");
    let expired = sign_token("alice", -60, secret);
    let headers = [
        None,
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {expired}")),
        Some("Bearer garbage".to_owned()),
        Some("Bearer ".to_owned()),
        Some(server.token("alice")), // no scheme
        Some(format!("Basic {}", server.token("alice"))),
    ];
    for auth in headers {
        let (status, body) = server
            .request_with_auth(reqwest::Method::GET, &path, auth.as_deref(), None)
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "Authorization: {auth:?}: {body}"
        );
    }

    // Identity comes from the token alone.
    let spoofed = reqwest::Client::new()
        .get(format!("{}{path}", server.base))
        .bearer_auth(server.token("mallory"))
        .header("x-switchboard-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(
        spoofed.status().as_u16(),
        404,
        "a client cannot claim another identity by header"
    );
}
