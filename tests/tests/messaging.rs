//! 1:1 messaging over real sockets: live delivery, receipts, typing, devices,
//! idempotent resend and ordering.

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::{Server, TIMESTAMP, alice_and_bob, id_num, message_id};

/// Bob receives Alice's message live, with the id her `sent` ack carried, her id, the content and her timestamp.
#[tokio::test]
async fn live_delivery_with_sent_ack() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let ack = alice.send_message(&chat, "hello bob", "c1").await;
    let id = message_id(&ack);
    id_num(&id);
    assert_eq!(
        ack,
        json!({"type":"ack","messageId":id,"chatId":chat,"clientMsgId":"c1","status":"sent"})
    );
    assert_eq!(
        bob.recv_json().await,
        json!({"type":"receiveMessage","messageId":id,"chatId":chat,"senderId":"alice",
               "content":"hello bob","timestamp":TIMESTAMP,"prevMessageId":"0"})
    );
    // The sending device gets the ack only, never its own message back.
    alice.expect_silence(Duration::from_millis(300)).await;
    bob.expect_silence(Duration::from_millis(100)).await;
}

/// Every device of the recipient gets the message; the sender's other device does too, the sending one does not; receipts reach all the sender's devices.
#[tokio::test]
async fn every_device_receives() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let mut bob_tablet = server.connect("bob").await;
    let mut alice_laptop = server.connect("alice").await;
    let id = alice.send_id(&chat, "to all", "c1").await;
    let expected = json!({"type":"receiveMessage","messageId":id,"chatId":chat,"senderId":"alice",
                          "content":"to all","timestamp":TIMESTAMP,"prevMessageId":"0"});
    for device in [&mut bob, &mut bob_tablet, &mut alice_laptop] {
        assert_eq!(device.recv_json().await, expected, "{}", device.user);
    }
    alice.expect_silence(Duration::from_millis(300)).await;

    bob_tablet
        .send_json(json!({"type":"ack","chatId":chat,"messageId":id,"status":"delivered"}))
        .await;
    let receipt =
        json!({"type":"ack","messageId":id,"chatId":chat,"status":"delivered","userId":"bob"});
    assert_eq!(alice.recv_json().await, receipt);
    assert_eq!(alice_laptop.recv_json().await, receipt);
}

/// The sender sees `delivered`, then `read`, each naming the reader; an older or repeated ack afterwards notifies nobody.
#[tokio::test]
async fn delivered_then_read_receipts_reach_the_sender() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let first = alice.send_id(&chat, "one", "c1").await;
    let second = alice.send_id(&chat, "two", "c2").await;
    assert_eq!(message_id(&bob.recv_json().await), first);
    assert_eq!(message_id(&bob.recv_json().await), second);

    bob.send_json(json!({"type":"ack","chatId":chat,"messageId":second,"status":"delivered"}))
        .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type":"ack","messageId":second,"chatId":chat,"status":"delivered","userId":"bob"})
    );
    bob.send_json(json!({"type":"ack","chatId":chat,"messageId":second,"status":"read"}))
        .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type":"ack","messageId":second,"chatId":chat,"status":"read","userId":"bob"})
    );

    // Read up to `second` already covers `first` and every delivered ack.
    for (id, status) in [
        (&first, "read"),
        (&first, "delivered"),
        (&second, "read"),
        (&second, "delivered"),
    ] {
        bob.send_json(json!({"type":"ack","chatId":chat,"messageId":id,"status":status}))
            .await;
    }
    alice.expect_silence(Duration::from_millis(500)).await;
    // Accepted silently: no error either.
    bob.expect_silence(Duration::from_millis(100)).await;

    let history = server.all_messages(&chat, "alice").await;
    let statuses: Vec<_> = history.iter().map(|m| m["status"].clone()).collect();
    assert_eq!(statuses, [json!("read"), json!("read")]);
}

/// A `read` ack alone moves the delivered watermark too: a later `delivered` ack of the same or an older message notifies nobody, a newer one does.
#[tokio::test]
async fn read_implies_delivered() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let first = alice.send_id(&chat, "one", "c1").await;
    let second = alice.send_id(&chat, "two", "c2").await;

    bob.send_json(json!({"type":"ack","chatId":chat,"messageId":second,"status":"read"}))
        .await;
    // The server may or may not announce the implied delivered step first;
    // the read must come, and nothing else.
    let mut before_read = Vec::new();
    let read = alice
        .recv_until(|f| {
            let done = f["status"] == "read";
            if !done {
                before_read.push(f.clone());
            }
            done
        })
        .await;
    assert_eq!(
        read,
        json!({"type":"ack","messageId":second,"chatId":chat,"status":"read","userId":"bob"})
    );
    for frame in before_read {
        assert_eq!(
            frame,
            json!({"type":"ack","messageId":second,"chatId":chat,"status":"delivered","userId":"bob"})
        );
    }

    for id in [&first, &second] {
        bob.send_json(json!({"type":"ack","chatId":chat,"messageId":id,"status":"delivered"}))
            .await;
    }
    alice.expect_silence(Duration::from_millis(500)).await;

    let third = alice.send_id(&chat, "three", "c3").await;
    bob.send_json(json!({"type":"ack","chatId":chat,"messageId":third,"status":"delivered"}))
        .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type":"ack","messageId":third,"chatId":chat,"status":"delivered","userId":"bob"})
    );
    let statuses: Vec<_> = server
        .all_messages(&chat, "alice")
        .await
        .iter()
        .map(|m| m["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("read"), json!("read"), json!("delivered")]);
}

/// Typing reaches the other member (not the typer); repeats within 2 s are dropped, and typing after the window is relayed again.
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

    tokio::time::sleep(Duration::from_millis(1700)).await;
    alice
        .send_json(json!({"type":"typing","chatId":chat}))
        .await;
    assert_eq!(
        bob.recv_json().await,
        json!({"type":"typing","chatId":chat,"userId":"alice"})
    );

    // Typing is not stored.
    assert!(server.all_messages(&chat, "bob").await.is_empty());
}

/// Resending the same clientMsgId (on the same or a new connection) returns the same id and stores nothing new; the retry is pushed again under the same id (its first push may have died with a gateway), so a client deduping by id shows it once; clientMsgIds are per sender.
#[tokio::test]
async fn resend_is_idempotent() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let first = alice.send_message(&chat, "once", "same").await;
    let again = alice.send_message(&chat, "once", "same").await;
    assert_eq!(again, first, "the same ack, same messageId");
    let pushed = bob.recv_json().await;
    assert_eq!(message_id(&pushed), message_id(&first));
    assert_eq!(
        bob.recv_json().await,
        pushed,
        "the retry is pushed again, identical"
    );
    bob.expect_silence(Duration::from_millis(500)).await;

    // A retry after a lost connection is the same message too.
    drop(alice);
    let mut alice = server.connect("alice").await;
    let retried = alice.send_message(&chat, "once", "same").await;
    assert_eq!(message_id(&retried), message_id(&first));
    assert_eq!(bob.recv_json().await, pushed);
    bob.expect_silence(Duration::from_millis(300)).await;

    // Bob's "same" is his own message.
    let bobs = bob.send_id(&chat, "mine", "same").await;
    assert_ne!(bobs, message_id(&first));

    let stored: Vec<_> = server
        .all_messages(&chat, "bob")
        .await
        .iter()
        .map(|m| (m["senderId"].clone(), m["content"].clone()))
        .collect();
    assert_eq!(
        stored,
        [
            (json!("alice"), json!("once")),
            (json!("bob"), json!("mine"))
        ]
    );
}

/// Ids increase in send order whatever the client timestamps say; messages arrive and are listed in that order with the timestamps as sent.
#[tokio::test]
async fn ids_increase_in_send_order() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    // Timestamps run backwards: the server orders by id, never by timestamp.
    for i in 0..20i64 {
        alice
            .send_json(
                json!({"type":"sendMessage","chatId":chat,"content":format!("m{i}"),
                              "timestamp":1_000_000 - i,"clientMsgId":format!("c{i}")}),
            )
            .await;
    }
    let mut by_client_id = std::collections::HashMap::new();
    for _ in 0..20 {
        let ack = alice.recv_json().await;
        assert_eq!(ack["status"], "sent", "{ack}");
        by_client_id.insert(
            ack["clientMsgId"].as_str().unwrap().to_owned(),
            message_id(&ack),
        );
    }
    let acked: Vec<String> = (0..20)
        .map(|i| by_client_id[&format!("c{i}")].clone())
        .collect();
    let mut received = Vec::new();
    let mut previous = "0".to_string();
    for i in 0..20i64 {
        let got = bob.recv_json().await;
        assert_eq!(got["content"], format!("m{i}"), "delivered in order");
        assert_eq!(got["timestamp"], 1_000_000 - i);
        // Each push names the message before it, so a gap would show.
        assert_eq!(got["prevMessageId"], previous.as_str(), "{got}");
        previous = message_id(&got);
        received.push(previous.clone());
    }
    assert_eq!(received, acked);
    let nums: Vec<u64> = acked.iter().map(|id| id_num(id)).collect();
    assert!(nums.windows(2).all(|w| w[0] < w[1]), "{nums:?}");

    let stored: Vec<String> = server
        .all_messages(&chat, "alice")
        .await
        .iter()
        .map(|m| {
            assert_eq!(
                m["prevMessageId"],
                previous_of(&acked, &message_id(m)),
                "{m}"
            );
            message_id(m)
        })
        .collect();
    assert_eq!(stored, acked);
}

/// The id before `id` in `ids`, or "0" for the first.
fn previous_of(ids: &[String], id: &str) -> String {
    let at = ids.iter().position(|i| i == id).expect("a known id");
    if at == 0 {
        "0".into()
    } else {
        ids[at - 1].clone()
    }
}
