//! Groups of up to 256: fan-out to every member's devices, membership changes, receipts.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use switchboard_e2e::{Client, Server};

fn users(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("member{i:03}")).collect()
}

/// A 256-member group: one send reaches all 255 others (and a second device); a 257th member is refused.
#[tokio::test]
async fn message_reaches_all_256_members() {
    let server = Server::start().await;
    let others = users(255);
    let (status, group) = server
        .post(
            "/api/v1/chats",
            "alice",
            json!({"members": others, "name": "everyone"}),
        )
        .await;
    assert_eq!(status, 201);
    let chat = group["chatId"].as_str().unwrap().to_owned();

    let (status, body) = server
        .post(
            &format!("/api/v1/chats/{chat}/members"),
            "alice",
            json!({"userIds": ["one-too-many"]}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("too_many_members"))
    );
    let (_, shown) = server.get(&format!("/api/v1/chats/{chat}"), "alice").await;
    assert_eq!(
        shown["members"].as_array().unwrap().len(),
        256,
        "the refused request changed nothing"
    );

    let mut clients: Vec<Client> = join_all(others.iter().map(|u| server.connect(u))).await;
    clients.push(server.connect("member001").await);
    let mut alice = server.connect("alice").await;
    let id = alice.send_message(&chat, "hello all", "c1").await["messageId"].clone();
    let received = join_all(
        clients
            .iter_mut()
            .map(|c| c.recv_until(|f| f["type"] == "receiveMessage")),
    )
    .await;
    assert_eq!(received.len(), 256);
    assert!(
        received
            .iter()
            .all(|f| f["messageId"] == id && f["senderId"] == "alice")
    );
}

/// A removed member gets the chatUpdated event, then nothing more, and loses the history.
#[tokio::test]
async fn removed_member_stops_receiving_and_loses_history() {
    let server = Server::start().await;
    let chat = server
        .create_chat(
            "alice",
            json!({"members": ["bob", "carol"], "name": "trio"}),
        )
        .await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    alice.send_message(&chat, "before", "c1").await;
    carol.recv_until(|f| f["type"] == "receiveMessage").await;

    let (status, after) = server
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/chats/{chat}/members/carol"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(after["members"], json!(["alice", "bob"]));
    let event = carol.recv_until(|f| f["type"] == "chatUpdated").await;
    assert_eq!(event["change"], "memberRemoved");
    assert_eq!(event["userIds"], json!(["carol"]));
    assert_eq!(
        bob.recv_until(|f| f["type"] == "chatUpdated").await["chatId"],
        chat.as_str()
    );

    alice.send_message(&chat, "after", "c2").await;
    assert_eq!(
        bob.recv_until(|f| f["type"] == "receiveMessage").await["content"],
        "after"
    );
    carol.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(
        server
            .get(&format!("/api/v1/chats/{chat}/messages"), "carol")
            .await
            .0,
        404
    );
    carol.send_json(json!({"type":"sendMessage","chatId":chat,"content":"let me in","timestamp":1,"clientMsgId":"x"})).await;
    assert_eq!(carol.recv_json().await["code"], "chat_not_found");

    // Only admins remove others; members may leave.
    let remove_alice = server
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/chats/{chat}/members/alice"),
            Some("bob"),
            None,
        )
        .await;
    assert_eq!(remove_alice.0, 403);
    let added = server
        .post(
            &format!("/api/v1/chats/{chat}/members"),
            "alice",
            json!({"userIds": ["dave"]}),
        )
        .await;
    assert_eq!(added.1["members"], json!(["alice", "bob", "dave"]));
}

/// Group receipts: the sender hears once when everyone has read; message info lists each member.
#[tokio::test]
async fn group_receipts_aggregate() {
    let server = Server::start().await;
    let chat = server
        .create_chat(
            "alice",
            json!({"members": ["bob", "carol"], "name": "trio"}),
        )
        .await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    let id = alice.send_message(&chat, "read me", "c1").await["messageId"]
        .as_str()
        .unwrap()
        .to_owned();

    bob.send_json(json!({"type":"ack","chatId":chat,"messageId":id,"status":"read"}))
        .await;
    alice.expect_silence(Duration::from_millis(400)).await;
    let (_, info) = server
        .get(
            &format!("/api/v1/chats/{chat}/messages/{id}/receipts"),
            "alice",
        )
        .await;
    assert_eq!(info["status"], "sent");
    assert_eq!(
        info["receipts"],
        json!([{"userId":"bob","status":"read"},{"userId":"carol","status":"sent"}])
    );

    carol
        .send_json(json!({"type":"ack","chatId":chat,"messageId":id,"status":"read"}))
        .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type":"ack","messageId":id,"chatId":chat,"status":"read"})
    );
    let (_, history) = server
        .get(&format!("/api/v1/chats/{chat}/messages"), "alice")
        .await;
    assert_eq!(history["messages"][0]["status"], "read");
    let (_, bobs_view) = server
        .get(&format!("/api/v1/chats/{chat}/messages"), "bob")
        .await;
    assert_eq!(
        bobs_view["messages"][0]["status"], "read",
        "bob's own receipt"
    );
}
