//! A client that stops reading cannot make the server buffer without bound:
//! it is disconnected, and catches up from the store when it comes back.

use serde_json::json;
use switchboard_e2e::{Server, alice_and_bob};

/// Bob stops reading while Alice sends ~16 MB (more than his outbox of 1024
/// frames plus what the kernel buffers on both ends absorb); the server closes Bob's socket
/// (1013, or a dropped socket if even the close cannot be written), keeps
/// serving Alice, and Bob finds every message in history afterwards.
#[tokio::test]
async fn a_reader_that_stalls_is_disconnected_and_catches_up() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let content = "x".repeat(4000);
    let total = 4000;
    for chunk in 0..total / 500 {
        for i in 0..500 {
            let id = format!("c{}", chunk * 500 + i);
            alice
                .send_json(json!({"type":"sendMessage","chatId":chat,"content":content,"timestamp":1,"clientMsgId":id}))
                .await;
        }
        for _ in 0..500 {
            alice
                .recv_until(|f| f["type"] == "ack" && f["status"] == "sent")
                .await;
        }
    }
    let code = bob.closed().await;
    assert!(
        matches!(code, Some(1013) | None),
        "bob's stalled socket is closed as lagging, got {code:?}"
    );
    assert_eq!(
        alice.send_message(&chat, "still serving", "after").await["status"],
        "sent"
    );
    assert_eq!(server.all_messages(&chat, "bob").await.len(), total + 1);
}
