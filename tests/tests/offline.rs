//! Offline recipients: messages are stored, and caught up by cursor on reconnect.

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::{Client, Server, TIMESTAMP, ids, messages};

/// Waits until the recipient's device that stayed online, on another
/// gateway than the sender's (see [`sender_and_online_recipient`]), has
/// received `ids`: their live fan-out to that user is then over everywhere,
/// so a device connecting afterwards must not get them. A device on the
/// sender's gateway would not do: its copy is delivered at once, while the
/// other gateways' connections are looked up after it.
async fn fanned_out(online_device: &mut Client, ids: &[String]) {
    for id in ids {
        let got = online_device.recv_type("receiveMessage").await;
        assert_eq!(got["messageId"], id.as_str());
    }
}

/// Alice on the first gateway and a device of Bob's on the last one (the
/// same one when the server is a single gateway).
async fn sender_and_online_recipient(server: &Server) -> (Client, Client) {
    let bases = server.gateway_bases();
    let alice = server.connect_at(&bases[0], "alice").await;
    let bob = server.connect_at(&bases[bases.len() - 1], "bob").await;
    (alice.expect("alice connects"), bob.expect("bob connects"))
}

/// Bob's laptop, offline while Alice sends 5, catches up with `after=0` and `after=<id>` oldest first, and gets no live replay of them.
#[tokio::test]
async fn offline_messages_are_caught_up_by_cursor() {
    let server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let (mut alice, mut bob_phone) = sender_and_online_recipient(&server).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            alice
                .send_id(&chat, &format!("while away {i}"), &format!("c{i}"))
                .await,
        );
    }
    fanned_out(&mut bob_phone, &sent).await;

    let mut bob = server.connect("bob").await;
    let page = server.history_page(&chat, "bob", "after=0").await;
    assert_eq!(ids(&page), sent, "all of them, oldest first");
    assert!(page.get("nextCursor").is_none(), "{page}");
    for (i, message) in messages(&page).iter().enumerate() {
        assert_eq!(message["chatId"], chat.as_str());
        assert_eq!(message["senderId"], "alice");
        assert_eq!(message["content"], format!("while away {i}"));
        assert_eq!(message["timestamp"], TIMESTAMP);
    }

    let rest = server
        .history_page(&chat, "bob", &format!("after={}", sent[2]))
        .await;
    assert_eq!(ids(&rest), sent[3..]);
    assert!(rest.get("nextCursor").is_none(), "{rest}");
    let none = server
        .history_page(&chat, "bob", &format!("after={}", sent[4]))
        .await;
    assert_eq!(ids(&none), Vec::<String>::new());
    assert!(none.get("nextCursor").is_none(), "{none}");

    // Connecting replays nothing: the store, not the socket, holds the backlog.
    bob.expect_silence(Duration::from_millis(500)).await;

    // Live from now on.
    let live = alice.send_id(&chat, "now live", "c5").await;
    assert_eq!(
        bob.recv_type("receiveMessage").await["messageId"],
        live.as_str()
    );
    bob.expect_silence(Duration::from_millis(200)).await;
}

/// A reconnecting device catches up from the last id it has: exactly what it missed, and nothing twice.
#[tokio::test]
async fn reconnect_catches_up_from_the_last_id() {
    let server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let (mut alice, mut bob_phone) = sender_and_online_recipient(&server).await;
    let mut bob = server.connect("bob").await;
    alice.send_id(&chat, "seen live", "c0").await;
    let last_seen = bob.recv_type("receiveMessage").await["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    fanned_out(&mut bob_phone, std::slice::from_ref(&last_seen)).await;
    bob.close().await;

    let mut missed = Vec::new();
    for i in 1..=3 {
        missed.push(
            alice
                .send_id(&chat, &format!("missed {i}"), &format!("c{i}"))
                .await,
        );
    }
    fanned_out(&mut bob_phone, &missed).await;
    let mut bob = server.connect("bob").await;
    let page = server
        .history_page(&chat, "bob", &format!("after={last_seen}"))
        .await;
    assert_eq!(ids(&page), missed);
    bob.expect_silence(Duration::from_millis(300)).await;
}

/// A device is reachable once its handshake completes: a message sent right after it connects is pushed to it, every time (on a cluster, from another gateway).
#[tokio::test]
async fn a_device_is_reachable_once_its_handshake_completes() {
    let server = Server::start().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let bases = server.gateway_bases();
    let mut alice = server
        .connect_at(&bases[0], "alice")
        .await
        .expect("alice connects");
    for round in 0..20 {
        let mut bob = server
            .connect_at(&bases[bases.len() - 1], "bob")
            .await
            .expect("bob connects");
        let sent = alice
            .send_id(&chat, &format!("right after {round}"), &format!("c{round}"))
            .await;
        let got = bob.recv_type("receiveMessage").await;
        assert_eq!(got["messageId"], sent.as_str(), "round {round}");
        bob.close().await;
    }
}
