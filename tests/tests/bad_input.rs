//! Bad input gets a clear error frame, HTTP status or close code; the host and
//! the connection keep working and nothing acked is lost.

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::tungstenite::Message;
use switchboard_e2e::{Server, alice_and_bob};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Malformed frames get error frames and the same connection keeps sending.
#[tokio::test]
async fn malformed_frames_get_error_frames() {
    let server = Server::start().await;
    let (chat, mut alice, _bob) = alice_and_bob(&server).await;
    let acked = alice.send_message(&chat, "before", "c0").await;

    let cases = [
        ("{not json", "bad_json"),
        ("[1,2]", "bad_json"),
        (r#"{"chatId":"x"}"#, "bad_json"),
        (r#"{"type":"launchRockets"}"#, "unknown_type"),
    ];
    for (raw, code) in cases {
        alice.send_raw(Message::Text(raw.into())).await;
        let error = alice.recv_json().await;
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some(code)),
            "{raw}"
        );
    }

    alice
        .send_json(
            json!({"type":"sendMessage","chatId":chat,"timestamp":1,"clientMsgId":"no-content"}),
        )
        .await;
    let error = alice.recv_json().await;
    assert_eq!(error["code"], "invalid_frame");
    assert_eq!(error["clientMsgId"], "no-content");

    let big = "x".repeat(4097);
    alice.send_json(json!({"type":"sendMessage","chatId":chat,"content":big,"timestamp":1,"clientMsgId":"big"})).await;
    assert_eq!(alice.recv_json().await["code"], "content_too_large");

    alice.send_json(json!({"type":"sendMessage","chatId":"dm:bob:carol","content":"hi","timestamp":1,"clientMsgId":"x"})).await;
    assert_eq!(alice.recv_json().await["code"], "chat_not_found");
    alice.send_json(json!({"type":"sendMessage","chatId":"nope","content":"hi","timestamp":1,"clientMsgId":"y"})).await;
    assert_eq!(alice.recv_json().await["code"], "chat_not_found");

    alice
        .send_json(json!({"type":"ack","chatId":chat,"messageId":"12345","status":"read"}))
        .await;
    assert_eq!(alice.recv_json().await["code"], "message_not_found");

    alice.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(alice.recv_json().await["code"], "unsupported_frame");

    let after = alice.send_message(&chat, "after", "c1").await;
    assert_eq!(after["status"], "sent");
    let stored = server.all_messages(&chat, "alice").await;
    let ids: Vec<_> = stored.iter().map(|m| m["id"].clone()).collect();
    assert_eq!(
        ids,
        vec![acked["messageId"].clone(), after["messageId"].clone()]
    );
}

/// A frame over the size limit closes with 1009; the server still serves others.
#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let server = Server::start_with(&["--max-frame-bytes=8192"]).await;
    let (chat, mut alice, _bob) = alice_and_bob(&server).await;
    alice
        .send_raw(Message::Text("x".repeat(10_000).into()))
        .await;
    assert_eq!(alice.closed().await, Some(1009));
    let mut again = server.connect("alice").await;
    assert_eq!(
        again.send_message(&chat, "still here", "c1").await["status"],
        "sent"
    );
}

/// A text frame with invalid UTF-8 closes with 1007; the server still serves others.
#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let server = Server::start().await;
    let (chat, _alice, _bob) = alice_and_bob(&server).await;
    // WebSocket clients refuse to send invalid UTF-8 as text, so speak the
    // protocol by hand: the upgrade, then one masked text frame.
    let addr = server.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /chat/connect?userId=alice&token={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.token("alice")
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 1024];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    let payload = [0xC3u8, 0x28, 0xFF];
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    let mut reply = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(n >= 4, "expected a close frame");
    assert_eq!(reply[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), 1007);

    let mut alice = server.connect("alice").await;
    assert_eq!(
        alice.send_message(&chat, "still here", "c1").await["status"],
        "sent"
    );
}

/// Missing, forged, expired or someone else's tokens are refused with 401 before the upgrade.
#[tokio::test]
async fn bad_tokens_are_refused_before_upgrade() {
    let server = Server::start().await;
    let cases = [
        server.token_for("alice", 3600, "not-the-server-secret-0123456789"),
        server.token_for("alice", -60, "e2e-secret-0123456789abcdef0123456789"),
        server.token("bob"),
        "garbage".to_string(),
    ];
    for token in cases {
        match server.try_connect("alice", &token).await {
            Err(switchboard_e2e::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401)
            }
            Err(other) => panic!("expected a 401, got {other}"),
            Ok(_) => panic!("a bad token was accepted"),
        }
    }
    // A Bearer header works for non-browser clients.
    let url = format!(
        "{}/chat/connect?userId=alice",
        server.base.replacen("http", "ws", 1)
    );
    let mut request =
        switchboard_e2e::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", server.token("alice")).parse().unwrap(),
    );
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}

/// A token that expires during the connection ends it with 1008.
#[tokio::test]
async fn expired_token_closes_with_1008() {
    let server = Server::start().await;
    let token = server.token_for("alice", 2, "e2e-secret-0123456789abcdef0123456789");
    let mut alice = server.try_connect("alice", &token).await.unwrap();
    assert_eq!(alice.closed().await, Some(1008));
}
