//! History over HTTP: paging both ways, parameters, access.

use serde_json::json;
use switchboard_e2e::Server;

/// 45 messages page back newest first in 20s, and forward oldest first, with nextCursor chains.
#[tokio::test]
async fn paging_both_ways() {
    let server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let mut alice = server.connect("alice").await;
    let mut ids = Vec::new();
    for i in 0..45 {
        ids.push(
            alice
                .send_message(&chat, &format!("m{i}"), &format!("c{i}"))
                .await["messageId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let page_ids = |page: &serde_json::Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let newest: Vec<String> = ids.iter().rev().cloned().collect();

    let (_, p1) = server
        .get(&format!("/api/v1/chats/{chat}/messages?limit=20"), "bob")
        .await;
    assert_eq!(page_ids(&p1), newest[0..20]);
    let (_, p2) = server
        .get(
            &format!(
                "/api/v1/chats/{chat}/messages?cursor={}&limit=20",
                p1["nextCursor"].as_str().unwrap()
            ),
            "bob",
        )
        .await;
    assert_eq!(page_ids(&p2), newest[20..40]);
    let (_, p3) = server
        .get(
            &format!(
                "/api/v1/chats/{chat}/messages?cursor={}&limit=20",
                p2["nextCursor"].as_str().unwrap()
            ),
            "bob",
        )
        .await;
    assert_eq!(page_ids(&p3), newest[40..45]);
    assert!(p3.get("nextCursor").is_none());

    let (_, f1) = server
        .get(
            &format!("/api/v1/chats/{chat}/messages?after=0&limit=20"),
            "bob",
        )
        .await;
    assert_eq!(page_ids(&f1), ids[0..20]);
    let (_, f2) = server
        .get(
            &format!(
                "/api/v1/chats/{chat}/messages?after={}&limit=20",
                f1["nextCursor"].as_str().unwrap()
            ),
            "bob",
        )
        .await;
    assert_eq!(page_ids(&f2), ids[20..40]);

    let (_, default) = server
        .get(&format!("/api/v1/chats/{chat}/messages"), "bob")
        .await;
    assert_eq!(page_ids(&default).len(), 20, "default limit");
    let message = &default["messages"][0];
    assert_eq!(message["senderId"], "alice");
    assert_eq!(message["chatId"], chat.as_str());
    assert_eq!(message["content"], "m44");
    assert_eq!(message["status"], "sent");
}

/// Bad parameters get 400, strangers 404, missing or bad tokens 401, all with a JSON error.
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
        "cursor=abc",
        "cursor=5&after=3",
    ] {
        let (status, body) = server
            .get(&format!("/api/v1/chats/{chat}/messages?{query}"), "alice")
            .await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["code"], "bad_request");
    }
    let (status, body) = server
        .get(&format!("/api/v1/chats/{chat}/messages"), "mallory")
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("chat_not_found"))
    );
    let (status, _) = server
        .get("/api/v1/chats/dm:nobody:here/messages", "alice")
        .await;
    assert_eq!(status, 404);
    let (status, body) = server
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/chats/{chat}/messages"),
            None,
            None,
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let forged = reqwest::Client::new()
        .get(format!("{}/api/v1/chats/{chat}/messages", server.base))
        .bearer_auth(server.token_for("alice", 3600, "some-other-secret-0123456789"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    let spoofed = reqwest::Client::new()
        .get(format!("{}/api/v1/chats/{chat}/messages", server.base))
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
