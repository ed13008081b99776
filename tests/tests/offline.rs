//! Offline recipients: messages are stored, and caught up by cursor on reconnect.

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::Server;

/// Bob, offline while Alice sends, catches up with `after` and gets no live replay.
#[tokio::test]
async fn offline_messages_are_caught_up_by_cursor() {
    let server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let mut alice = server.connect("alice").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            alice
                .send_message(&chat, &format!("while away {i}"), &format!("c{i}"))
                .await["messageId"]
                .clone(),
        );
    }

    let mut bob = server.connect("bob").await;
    let (status, page) = server
        .get(&format!("/api/v1/chats/{chat}/messages?after=0"), "bob")
        .await;
    assert_eq!(status, 200);
    let got: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(got, ids, "oldest first, all of them");
    assert!(page.get("nextCursor").is_none());

    let (_, rest) = server
        .get(
            &format!(
                "/api/v1/chats/{chat}/messages?after={}",
                ids[2].as_str().unwrap()
            ),
            "bob",
        )
        .await;
    assert_eq!(rest["messages"].as_array().unwrap().len(), 2);
    bob.expect_silence(Duration::from_millis(300)).await;
}
