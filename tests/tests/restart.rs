//! Durability: a killed host loses nothing it acknowledged.

use serde_json::json;
use switchboard_e2e::Server;

/// After SIGKILL and restart, every acked message is in history with its id,
/// new ids continue above the old ones, and a resend keeps its old id.
#[tokio::test]
async fn no_acked_message_is_lost_across_a_kill() {
    let mut server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let mut alice = server.connect("alice").await;
    let mut acked = Vec::new();
    for i in 0..30 {
        acked.push(
            alice
                .send_message(&chat, &format!("m{i}"), &format!("c{i}"))
                .await["messageId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    drop(alice);

    server.restart().await;

    let stored: Vec<String> = server
        .all_messages(&chat, "bob")
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, acked);

    let mut alice = server.connect("alice").await;
    let resent = alice.send_message(&chat, "m0", "c0").await;
    assert_eq!(resent["messageId"], acked[0].as_str());
    let fresh = alice.send_message(&chat, "after restart", "c-new").await;
    let fresh_id: u64 = fresh["messageId"].as_str().unwrap().parse().unwrap();
    assert!(fresh_id > acked.last().unwrap().parse::<u64>().unwrap());
    assert_eq!(server.all_messages(&chat, "bob").await.len(), 31);
}
