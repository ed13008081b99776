//! 1:1 messaging over real sockets: live delivery, acks, typing, devices, idempotency, order.

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::{Server, alice_and_bob};

/// Bob receives Alice's message live, with the id her `sent` ack carried.
#[tokio::test]
async fn live_delivery_with_sent_ack() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let ack = alice.send_message(&chat, "hello bob", "c1").await;
    assert_eq!(ack["status"], "sent");
    assert_eq!(ack["chatId"], chat.as_str());
    let id = ack["messageId"].as_str().unwrap();
    assert!(id.parse::<u64>().is_ok(), "ids are decimal strings: {id}");
    let got = bob.recv_json().await;
    assert_eq!(
        got,
        json!({"type":"receiveMessage","messageId":id,"chatId":chat,"senderId":"alice","content":"hello bob","timestamp":1_764_000_000_000i64})
    );
}

/// The sender sees delivered, then read, each naming who; an older ack later notifies nobody.
#[tokio::test]
async fn delivered_and_read_receipts_reach_the_sender() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let first = alice.send_message(&chat, "one", "c1").await["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = alice.send_message(&chat, "two", "c2").await["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.recv_json().await;
    bob.recv_json().await;

    bob.send_json(json!({"type":"ack","chatId":chat,"messageId":second,"status":"delivered"}))
        .await;
    let delivered = alice.recv_json().await;
    assert_eq!(
        delivered,
        json!({"type":"ack","messageId":second,"chatId":chat,"status":"delivered","userId":"bob"})
    );

    bob.send_json(json!({"type":"ack","chatId":chat,"messageId":second,"status":"read"}))
        .await;
    assert_eq!(alice.recv_json().await["status"], "read");

    // Read up to `second` already covers `first`: a late ack moves nothing.
    bob.send_json(json!({"type":"ack","chatId":chat,"messageId":first,"status":"read"}))
        .await;
    alice.expect_silence(Duration::from_millis(500)).await;

    let history = server.all_messages(&chat, "alice").await;
    assert!(history.iter().all(|m| m["status"] == "read"), "{history:?}");
}

/// Typing reaches the other member, not the typer, and repeats within the window are dropped.
#[tokio::test]
async fn typing_is_relayed_and_throttled() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    for _ in 0..3 {
        alice
            .send_json(json!({"type":"typing","chatId":chat}))
            .await;
    }
    assert_eq!(
        bob.recv_json().await,
        json!({"type":"typing","chatId":chat,"userId":"alice"})
    );
    bob.expect_silence(Duration::from_millis(500)).await;
    alice.expect_silence(Duration::from_millis(100)).await;
}

/// Every device of the recipient gets the message; the sender's other device does too, the sending one does not.
#[tokio::test]
async fn every_device_receives() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let mut bob_tablet = server.connect("bob").await;
    let mut alice_laptop = server.connect("alice").await;
    let id = alice.send_message(&chat, "to all", "c1").await["messageId"].clone();
    for device in [&mut bob, &mut bob_tablet, &mut alice_laptop] {
        let got = device.recv_json().await;
        assert_eq!(got["type"], "receiveMessage");
        assert_eq!(got["messageId"], id);
    }
    alice.expect_silence(Duration::from_millis(300)).await;
}

/// Resending the same clientMsgId returns the same id; the message is stored and delivered once.
#[tokio::test]
async fn resend_is_idempotent() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let first = alice.send_message(&chat, "once", "same").await;
    let again = alice.send_message(&chat, "once", "same").await;
    assert_eq!(first["messageId"], again["messageId"]);
    assert_eq!(bob.recv_json().await["messageId"], first["messageId"]);
    bob.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(server.all_messages(&chat, "bob").await.len(), 1);
}

/// Ids increase in send order, and history lists the messages in that order.
#[tokio::test]
async fn ids_increase_in_send_order() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    for i in 0..20 {
        alice
            .send_json(json!({"type":"sendMessage","chatId":chat,"content":format!("m{i}"),"timestamp":i,"clientMsgId":format!("c{i}")}))
            .await;
    }
    let mut ids = Vec::new();
    for i in 0..20 {
        let got = bob.recv_json().await;
        assert_eq!(got["content"], format!("m{i}"), "delivered in order");
        ids.push(got["messageId"].as_str().unwrap().parse::<u64>().unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let stored: Vec<String> = server
        .all_messages(&chat, "alice")
        .await
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
}
