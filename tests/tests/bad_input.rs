//! Bad input gets a clear error frame, HTTP status or close code; the host and
//! the connection keep working and nothing acked is lost.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_e2e::tungstenite::{self, Message};
use switchboard_e2e::{Client, Options, Server, WAIT, alice_and_bob, message_id, sign_token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw` as a text frame and returns the error frame it gets, checking its shape.
async fn refused(client: &mut Client, raw: &str) -> Value {
    client.send_raw(Message::Text(raw.into())).await;
    let error = client.recv_json().await;
    assert_eq!(error["type"], "error", "{raw} -> {error}");
    assert!(error["code"].is_string(), "{error}");
    assert!(error["message"].is_string(), "{error}");
    error
}

/// Not JSON, not an object or no string `type` is `bad_json`, and the same connection then sends and gets its ack.
#[tokio::test]
async fn malformed_json_is_bad_json() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    for raw in [
        "{not json",
        "",
        "[1,2]",
        "\"sendMessage\"",
        "null",
        r#"{"chatId":"x"}"#,
        r#"{"type":5}"#,
        r#"{"type":null,"clientMsgId":"z"}"#,
    ] {
        let error = refused(&mut alice, raw).await;
        assert_eq!(error["code"], "bad_json", "{raw} -> {error}");
        let ack = alice
            .send_message(&chat, "still works", &format!("after {raw}"))
            .await;
        assert_eq!(ack["status"], "sent");
    }
    assert_eq!(
        bob.recv_type("receiveMessage").await["content"],
        "still works"
    );
}

/// An unknown `type` is `unknown_type`.
#[tokio::test]
async fn unknown_type() {
    let server = Server::start().await;
    let (_chat, mut alice, _bob) = alice_and_bob(&server).await;
    for raw in [
        r#"{"type":"launchRockets"}"#,
        r#"{"type":"SendMessage"}"#,
        r#"{"type":"receiveMessage","chatId":"dm:alice:bob"}"#,
        r#"{"type":""}"#,
    ] {
        assert_eq!(
            refused(&mut alice, raw).await["code"],
            "unknown_type",
            "{raw}"
        );
    }
}

/// Missing or mistyped fields are `invalid_frame`, with the frame's clientMsgId echoed; nothing is stored or delivered.
#[tokio::test]
async fn invalid_frames() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let send = |fields: Value| {
        let mut frame = json!({"type":"sendMessage","chatId":chat,"content":"hi","timestamp":1,"clientMsgId":"m1"});
        for (k, v) in fields.as_object().unwrap() {
            if v.is_null() {
                frame.as_object_mut().unwrap().remove(k);
            } else {
                frame[k] = v.clone();
            }
        }
        frame
    };
    // Refused sendMessage frames that carry a usable clientMsgId echo it.
    for (i, fields) in [
        json!({"content": null}),
        json!({"chatId": null}),
        json!({"timestamp": null}),
        json!({"content": 5}),
        json!({"content": ""}),
        json!({"chatId": 7}),
        json!({"timestamp": "yesterday"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut frame = send(fields.clone());
        frame["clientMsgId"] = json!(format!("bad{i}"));
        let error = refused(&mut alice, &frame.to_string()).await;
        assert_eq!(
            (error["code"].as_str(), error["clientMsgId"].as_str()),
            (Some("invalid_frame"), Some(format!("bad{i}").as_str())),
            "{fields} -> {error}"
        );
    }
    // No (usable) clientMsgId: refused, nothing to echo.
    let error = refused(&mut alice, &send(json!({"clientMsgId": null})).to_string()).await;
    assert_eq!(error["code"], "invalid_frame", "{error}");
    assert!(error.get("clientMsgId").is_none(), "{error}");
    for fields in [
        json!({"clientMsgId": ""}),
        json!({"clientMsgId": "x".repeat(65)}),
        json!({"clientMsgId": 12}),
    ] {
        let error = refused(&mut alice, &send(fields.clone()).to_string()).await;
        assert_eq!(error["code"], "invalid_frame", "{fields} -> {error}");
    }
    // The other frame types.
    let id = alice.send_id(&chat, "real", "real").await;
    assert_eq!(
        bob.recv_type("receiveMessage").await["messageId"],
        id.as_str()
    );
    for frame in [
        json!({"type":"ack","chatId":chat,"status":"read"}),
        json!({"type":"ack","chatId":chat,"messageId":id}),
        json!({"type":"ack","chatId":chat,"messageId":id,"status":"sent"}),
        json!({"type":"ack","chatId":chat,"messageId":"abc","status":"read"}),
        json!({"type":"ack","messageId":id,"status":"read"}),
        json!({"type":"typing"}),
        json!({"type":"typing","chatId":5}),
        json!({"type":"subscribePresence","userIds":"bob"}),
        json!({"type":"subscribePresence"}),
    ] {
        let error = refused(&mut bob, &frame.to_string()).await;
        assert_eq!(error["code"], "invalid_frame", "{frame} -> {error}");
    }
    // Only the one valid message was stored, and bob got only that.
    bob.expect_silence(Duration::from_millis(200)).await;
    let stored = server.all_messages(&chat, "alice").await;
    assert_eq!(stored.iter().map(message_id).collect::<Vec<_>>(), [id]);
}

/// Content is limited to 4096 bytes (not characters): 4096 is stored, 4097 is `content_too_large` with the clientMsgId echoed.
#[tokio::test]
async fn content_limit_is_4096_bytes() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let fits = "é".repeat(2048); // 4096 bytes, 2048 characters
    alice.send_message(&chat, &fits, "fits").await;
    assert_eq!(
        bob.recv_type("receiveMessage").await["content"],
        fits.as_str()
    );
    for (content, cmid) in [("x".repeat(4097), "ascii"), ("é".repeat(2049), "two-byte")] {
        let frame = json!({"type":"sendMessage","chatId":chat,"content":content,"timestamp":1,"clientMsgId":cmid});
        let error = refused(&mut alice, &frame.to_string()).await;
        assert_eq!(
            (error["code"].as_str(), error["clientMsgId"].as_str()),
            (Some("content_too_large"), Some(cmid))
        );
    }
    bob.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(server.all_messages(&chat, "bob").await.len(), 1);
}

/// Chats that do not exist and chats you are not in are both `chat_not_found`; acks of messages not in the chat are `message_not_found`.
#[tokio::test]
async fn unknown_chats_and_messages() {
    let server = Server::start().await;
    let (chat, mut alice, _bob) = alice_and_bob(&server).await;
    let other = server
        .create_chat("bob", json!({"members": ["carol"]}))
        .await;
    let mut carol = server.connect("carol").await;
    let elsewhere = carol.send_id(&other, "not for alice", "c1").await;

    for target in [other.as_str(), "dm:alice:nobody", "g:123", "nope"] {
        let frame = json!({"type":"sendMessage","chatId":target,"content":"hi","timestamp":1,"clientMsgId":"x"});
        let error = refused(&mut alice, &frame.to_string()).await;
        assert_eq!(
            (error["code"].as_str(), error["clientMsgId"].as_str()),
            (Some("chat_not_found"), Some("x")),
            "{target}"
        );
        let ack = json!({"type":"ack","chatId":target,"messageId":elsewhere,"status":"read"});
        assert_eq!(
            refused(&mut alice, &ack.to_string()).await["code"],
            "chat_not_found",
            "ack in {target}"
        );
        let typing = json!({"type":"typing","chatId":target});
        assert_eq!(
            refused(&mut alice, &typing.to_string()).await["code"],
            "chat_not_found",
            "typing in {target}"
        );
    }
    carol.expect_silence(Duration::from_millis(200)).await;

    // A message id that does not exist, and one that exists in another chat.
    for id in ["12345", elsewhere.as_str()] {
        let ack = json!({"type":"ack","chatId":chat,"messageId":id,"status":"read"});
        assert_eq!(
            refused(&mut alice, &ack.to_string()).await["code"],
            "message_not_found",
            "{id}"
        );
    }
}

/// A binary frame is `unsupported_frame`, and the connection stays usable.
#[tokio::test]
async fn binary_frames_are_unsupported() {
    let server = Server::start().await;
    let (chat, mut alice, _bob) = alice_and_bob(&server).await;
    let text = json!({"type":"sendMessage","chatId":chat,"content":"hi","timestamp":1,"clientMsgId":"bin"});
    alice
        .send_raw(Message::Binary(text.to_string().into_bytes().into()))
        .await;
    let error = alice.recv_json().await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("unsupported_frame"))
    );
    assert!(server.all_messages(&chat, "alice").await.is_empty());
    alice.send_message(&chat, "as text", "txt").await;
}

/// After every kind of refused frame, the connection still sends and everything acked before is still in history.
#[tokio::test]
async fn bad_input_loses_nothing() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;
    let before = alice.send_id(&chat, "before", "c0").await;
    for raw in [
        "{not json".to_owned(),
        r#"{"type":"launchRockets"}"#.to_owned(),
        json!({"type":"sendMessage","chatId":chat,"timestamp":1,"clientMsgId":"no-content"}).to_string(),
        json!({"type":"sendMessage","chatId":chat,"content":"x".repeat(5000),"timestamp":1,"clientMsgId":"big"}).to_string(),
        json!({"type":"sendMessage","chatId":"dm:bob:carol","content":"hi","timestamp":1,"clientMsgId":"x"}).to_string(),
        json!({"type":"ack","chatId":chat,"messageId":"12345","status":"read"}).to_string(),
    ] {
        refused(&mut alice, &raw).await;
    }
    alice.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(alice.recv_json().await["code"], "unsupported_frame");

    let after = alice.send_id(&chat, "after", "c1").await;
    let stored: Vec<String> = server
        .all_messages(&chat, "bob")
        .await
        .iter()
        .map(message_id)
        .collect();
    assert_eq!(stored, [before.clone(), after.clone()]);
    for id in [before, after] {
        assert_eq!(
            bob.recv_type("receiveMessage").await["messageId"],
            id.as_str()
        );
    }
}

/// A frame over --max-frame-bytes closes that connection with 1009; a frame under it is judged by content; other connections and new ones keep working.
#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let server = Server::start_with(Options::default().max_frame_bytes(8192)).await;
    let (chat, mut alice, mut bob) = alice_and_bob(&server).await;

    // Under the frame limit but over the content limit: an error frame, not a close.
    let frame = json!({"type":"sendMessage","chatId":chat,"content":"x".repeat(8000),"timestamp":1,"clientMsgId":"c"});
    assert!(frame.to_string().len() < 8192);
    assert_eq!(
        refused(&mut alice, &frame.to_string()).await["code"],
        "content_too_large"
    );

    alice
        .send_raw(Message::Text("x".repeat(10_000).into()))
        .await;
    assert_eq!(alice.closed().await, Some(1009));

    let sent = bob.send_id(&chat, "bob is fine", "b1").await;
    let mut again = server.connect("alice").await;
    let reply = again.send_id(&chat, "back", "a1").await;
    assert_eq!(
        bob.recv_type("receiveMessage").await["messageId"],
        reply.as_str()
    );
    let stored: Vec<String> = server
        .all_messages(&chat, "bob")
        .await
        .iter()
        .map(message_id)
        .collect();
    assert_eq!(stored, [sent, reply]);
}

/// A text frame with invalid UTF-8 closes with 1007; the server still serves others.
#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let server = Server::start().await;
    let (chat, _alice, _bob) = alice_and_bob(&server).await;
    let mut tcp = raw_upgrade(&server, "alice").await;
    // WebSocket clients refuse to send invalid UTF-8 as text, so build the
    // frame by hand: FIN + text opcode, masked, 3 bytes that are not UTF-8.
    let payload = [0xC3u8, 0x28, 0xFF];
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    assert_eq!(read_close_code(&mut tcp).await, 1007);

    let mut alice = server.connect("alice").await;
    assert_eq!(
        alice.send_message(&chat, "still here", "c1").await["status"],
        "sent"
    );
}

/// Missing, malformed, expired, forged or someone else's tokens get 401 with a JSON body before any upgrade; a Bearer header works like the query parameter.
#[tokio::test]
async fn bad_tokens_are_refused_before_upgrade() {
    let server = Server::start().await;
    let secret = server.secret().unwrap().to_owned();
    let cases = [
        (
            "forged",
            sign_token("alice", 3600, "not-the-server-secret-0123456789"),
        ),
        ("expired", sign_token("alice", -60, &secret)),
        ("someone else's", server.token("bob")),
        ("garbage", "garbage".to_string()),
        ("empty", String::new()),
    ];
    for (what, token) in &cases {
        assert_eq!(
            upgrade_refusal(server.try_connect("alice", token).await),
            401,
            "{what}"
        );
        assert_eq!(
            upgrade_refusal(server.try_connect_bearer("alice", Some(token)).await),
            401,
            "{what}, as Bearer"
        );
    }
    assert_eq!(
        upgrade_refusal(server.try_connect_bearer("alice", None).await),
        401,
        "no token"
    );

    // The refusal is JSON.
    let resp = reqwest::Client::new()
        .get(
            server
                .ws_url("alice", &cases[0].1)
                .replacen("ws", "http", 1),
        )
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("a JSON error body");
    assert_eq!(body["code"], "unauthorized", "{body}");

    // Good tokens, both ways, including one printed by `switchboard token`.
    let token = server.token("alice");
    assert!(
        server
            .try_connect_bearer("alice", Some(&token))
            .await
            .is_ok()
    );
    assert!(
        server
            .try_connect("alice", &server.cli_token("alice", 60))
            .await
            .is_ok()
    );
}

/// A token that expires during the connection ends it with close code 1008.
#[tokio::test]
async fn expired_token_closes_with_1008() {
    let server = Server::start().await;
    let token = server.token_expiring("alice", 2);
    let mut alice = server.try_connect("alice", &token).await.unwrap();
    assert_eq!(alice.closed().await, Some(1008));
}

/// The server never logs tokens, good or bad, even at debug level.
#[tokio::test]
async fn tokens_are_never_logged() {
    let server = Server::start_with(
        Options::default().log_filter("debug,wasmtime=info,cranelift=info,cranelift_codegen=info"),
    )
    .await;
    let (chat, mut alice, _bob) = alice_and_bob(&server).await;
    alice.send_message(&chat, "hi", "c1").await;
    let good = server.token("alice");
    let forged = sign_token("alice", 3600, "not-the-server-secret-0123456789");
    server.try_connect("alice", &good).await.unwrap();
    assert!(server.try_connect("alice", &forged).await.is_err());
    assert!(
        server
            .try_connect_bearer("alice", Some(&forged))
            .await
            .is_err()
    );
    server
        .request_with_auth(
            reqwest::Method::GET,
            &format!("/api/v1/chats/{chat}/messages"),
            Some(&format!("Bearer {forged}")),
            None,
        )
        .await;
    server.get("/api/v1/chats", "alice").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = server.logs();
    assert!(!logs.is_empty(), "debug logging produced output");
    // A JWT's signature part is what makes it a credential.
    for token in [&good, &forged, &server.token("bob")] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(signature),
            "a token's signature appears in the logs"
        );
    }
}

/// The status of a refused WebSocket upgrade.
fn upgrade_refusal(result: Result<Client, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

/// Opens a WebSocket by hand over TCP: the upgrade request, then the 101 response read up to the blank line.
async fn raw_upgrade(server: &Server, user: &str) -> TcpStream {
    let addr = server.base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /chat/connect?userId={user}&token={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.token(user)
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                tcp.read(&mut byte).await.unwrap(),
                1,
                "connection closed in the handshake"
            );
            head.push(byte[0]);
        }
    })
    .await
    .expect("the upgrade response");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// Reads frames until a close frame and returns its code (skipping others, e.g. pings).
async fn read_close_code(tcp: &mut TcpStream) -> u16 {
    tokio::time::timeout(WAIT, async {
        loop {
            let mut header = [0u8; 2];
            tcp.read_exact(&mut header).await.expect("a frame header");
            let len = match header[1] & 0x7f {
                126 => {
                    let mut ext = [0u8; 2];
                    tcp.read_exact(&mut ext).await.unwrap();
                    u64::from(u16::from_be_bytes(ext))
                }
                127 => {
                    let mut ext = [0u8; 8];
                    tcp.read_exact(&mut ext).await.unwrap();
                    u64::from_be_bytes(ext)
                }
                n => u64::from(n),
            };
            assert_eq!(header[1] & 0x80, 0, "server frames are not masked");
            let mut payload = vec![0u8; len as usize];
            tcp.read_exact(&mut payload).await.unwrap();
            if header[0] & 0x0f == 0x8 {
                assert!(payload.len() >= 2, "a close frame with a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    })
    .await
    .expect("a close frame")
}
