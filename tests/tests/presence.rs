//! Presence: online on connect, offline on the last disconnect or when heartbeats stop.

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::{Options, Server};

/// Online while connected, offline with lastSeen after the last device leaves; strangers get 404.
#[tokio::test]
async fn presence_follows_connections() {
    let server = Server::start().await;
    server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let (status, p) = server.get("/api/v1/users/bob/presence", "alice").await;
    assert_eq!(status, 200);
    assert_eq!(
        p,
        json!({"userId":"bob","status":"offline","lastSeen":null})
    );

    let bob = server.connect("bob").await;
    let bob_phone = server.connect("bob").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.get("/api/v1/users/bob/presence", "alice").await.1["status"],
        "online"
    );
    drop(bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.get("/api/v1/users/bob/presence", "alice").await.1["status"],
        "online",
        "one device is left"
    );
    drop(bob_phone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = server.get("/api/v1/users/bob/presence", "alice").await.1;
    assert_eq!(p["status"], "offline");
    assert!(p["lastSeen"].as_i64().unwrap() > 0);

    assert_eq!(
        server.get("/api/v1/users/bob/presence", "carol").await.0,
        404
    );
}

/// Subscribers get the current state, then online, heartbeat expiry (offline at the last heartbeat), and back online.
#[tokio::test]
async fn subscribers_see_changes_and_ttl_expiry() {
    let server = Server::start_with(Options::default().presence_ttl_secs(1)).await;
    server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let mut alice = server.connect("alice").await;
    alice
        .send_json(json!({"type":"subscribePresence","userIds":["bob","stranger"]}))
        .await;
    let initial = alice.recv_json().await;
    assert_eq!(
        (
            initial["type"].as_str(),
            initial["userId"].as_str(),
            initial["status"].as_str()
        ),
        (Some("presence"), Some("bob"), Some("offline"))
    );

    let mut bob = server.connect("bob").await;
    let online = alice.recv_json().await;
    assert_eq!(
        (online["userId"].as_str(), online["status"].as_str()),
        (Some("bob"), Some("online"))
    );

    // Bob's socket stays open but he stops heartbeating: after the TTL he is offline.
    let went = alice.recv_until(|f| f["type"] == "presence").await;
    assert_eq!(went["status"], "offline");
    let last_seen = went["lastSeen"].as_i64().unwrap();
    assert!(
        last_seen >= online["lastSeen"].as_i64().unwrap() - 10,
        "last seen is the last heartbeat"
    );

    bob.send_json(json!({"type":"heartbeat"})).await;
    assert_eq!(
        alice.recv_until(|f| f["type"] == "presence").await["status"],
        "online"
    );
    // Heartbeats within the TTL keep him online.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        bob.send_json(json!({"type":"heartbeat"})).await;
    }
    alice.expect_silence(Duration::from_millis(100)).await;
    drop(bob);
    assert_eq!(
        alice.recv_until(|f| f["type"] == "presence").await["status"],
        "offline"
    );
}
