//! Durability: a killed host loses nothing it acknowledged.

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::{Options, Server, id_num, message_id};

/// After SIGKILL and restart, every acked message is in history with its id, new ids continue above the old ones, and a resend keeps its old id.
#[tokio::test]
async fn no_acked_message_is_lost_across_a_kill() {
    let mut server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    // Pipelined: all 30 in flight at once, so the kill is not preceded by an idle gap per message.
    for i in 0..30 {
        alice
            .send_json(
                json!({"type":"sendMessage","chatId":chat,"content":format!("m{i}"),
                              "timestamp":i,"clientMsgId":format!("c{i}")}),
            )
            .await;
    }
    let mut acked = vec![String::new(); 30];
    for _ in 0..30 {
        let ack = alice.recv_json().await;
        assert_eq!(ack["status"], "sent", "{ack}");
        let i: usize = ack["clientMsgId"].as_str().unwrap()[1..].parse().unwrap();
        acked[i] = message_id(&ack);
    }

    server.restart().await;
    assert_eq!(server.health().await, 200);
    // The old process is gone: its sockets are closed.
    bob.closed().await;

    let stored: Vec<String> = server
        .all_messages(&chat, "bob")
        .await
        .iter()
        .map(message_id)
        .collect();
    assert_eq!(stored, acked);
    let (status, list) = server.get("/api/v1/chats", "bob").await;
    assert_eq!(status, 200);
    assert_eq!(
        list["chats"][0]["chatId"],
        chat.as_str(),
        "the chat survived"
    );

    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let resent = alice.send_message(&chat, "m0", "c0").await;
    assert_eq!(message_id(&resent), acked[0], "a resend keeps its old id");
    let fresh = alice.send_id(&chat, "after restart", "c-new").await;
    assert!(id_num(&fresh) > id_num(acked.last().unwrap()));
    // The resend is pushed again under its old id (the first push may have
    // died with the old process), then the new message, which names the
    // last message stored before the kill as its predecessor.
    assert_eq!(message_id(&bob.recv_type("receiveMessage").await), acked[0]);
    let pushed = bob.recv_type("receiveMessage").await;
    assert_eq!(message_id(&pushed), fresh);
    assert_eq!(pushed["prevMessageId"], acked[29].as_str());
    bob.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(server.all_messages(&chat, "bob").await.len(), 31);
}

/// Ids keep increasing over several kills in a row, and each restart serves what was acked before it.
#[tokio::test]
async fn ids_increase_across_repeated_kills() {
    let mut server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let mut all = Vec::new();
    for round in 0..3 {
        let mut alice = server.connect("alice").await;
        for i in 0..3 {
            all.push(
                alice
                    .send_id(&chat, &format!("r{round} m{i}"), &format!("r{round}c{i}"))
                    .await,
            );
        }
        server.restart().await;
    }
    let nums: Vec<u64> = all.iter().map(|id| id_num(id)).collect();
    assert!(nums.windows(2).all(|w| w[0] < w[1]), "{nums:?}");
    let stored: Vec<String> = server
        .all_messages(&chat, "alice")
        .await
        .iter()
        .map(message_id)
        .collect();
    assert_eq!(stored, all);
}

/// A server without a configured secret generates one, keeps it in its data directory across a kill, and `switchboard token` signs with it.
#[tokio::test]
async fn generated_secret_survives_restart() {
    let mut server = Server::start_with(Options::default().embedded().generated_secret()).await;
    let token = server.cli_token("alice", 3600);
    let mut alice = server
        .try_connect("alice", &token)
        .await
        .expect("a token from `switchboard token` is accepted");
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    alice.send_id(&chat, "hi", "c1").await;

    server.restart().await;
    assert!(
        server.try_connect("alice", &token).await.is_ok(),
        "the token from before the restart is still accepted"
    );
    assert_eq!(server.all_messages(&chat, "bob").await.len(), 1);
}
