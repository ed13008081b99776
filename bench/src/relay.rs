//! The baseline: the least a server must do to relay chat frames over
//! WebSockets with tokio — parse the frame, ack it, push it to the peer's
//! sockets. No Wasm, no storage, no auth. Whatever Switchboard costs beyond
//! this is the price of its components and its durability.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Peers = Arc<RwLock<HashMap<String, Vec<mpsc::UnboundedSender<Message>>>>>;

/// Serves until killed; prints the listening line the harness reads.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("switchboard listening on http://{}", listener.local_addr()?);
    let peers: Peers = Arc::default();
    let ids = Arc::new(AtomicU64::new(1));
    loop {
        let (stream, _) = listener.accept().await?;
        // As the gateway does.
        stream.set_nodelay(true)?;
        tokio::spawn(connection(stream, peers.clone(), ids.clone()));
    }
}

/// Socket buffers as the gateway sizes them (2 KiB read; writes gathered up
/// to 4 KiB, and only while queued frames are written together), for the
/// relay and for the generator's own sockets. tungstenite's default
/// 128 KiB read buffer is zero-filled before every read: a memset of up to
/// 128 KiB per frame, which took ~8% of this machine's CPU in the generator
/// and gave the relay 135 KiB per idle socket.
pub fn small_buffers() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(4 * 1024)
}

// The handshake callback's error type is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, peers: Peers, ids: Arc<AtomicU64>) {
    let mut user = String::new();
    let callback = |req: &Request, resp: Response| {
        if let Some(query) = req.uri().query() {
            user = query
                .split('&')
                .find_map(|p| p.strip_prefix("userId="))
                .unwrap_or_default()
                .to_owned();
        }
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(small_buffers()))
            .await
    else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    peers
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(user.clone())
        .or_default()
        .push(tx.clone());
    // Frames queued together go out in one write, as the gateway does.
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let write = async {
                sink.feed(message).await?;
                for _ in 1..64 {
                    let Ok(more) = rx.try_recv() else { break };
                    sink.feed(more).await?;
                }
                sink.flush().await
            };
            if write.await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = source.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if frame["type"] != "sendMessage" {
            continue;
        }
        let chat = frame["chatId"].as_str().unwrap_or_default();
        let id = ids.fetch_add(1, Ordering::Relaxed).to_string();
        let ack = json!({"type":"ack","messageId":id,"chatId":chat,"clientMsgId":frame["clientMsgId"],"status":"sent"});
        let _ = tx.send(Message::Text(ack.to_string().into()));
        let out = json!({"type":"receiveMessage","messageId":id,"chatId":chat,"senderId":user,"content":frame["content"],"timestamp":frame["timestamp"]});
        let out = Message::Text(out.to_string().into());
        let peers = peers.read().unwrap_or_else(|p| p.into_inner());
        // `dm:a:b` goes to the other of the pair; any other chat to everyone else.
        let recipients: Vec<&String> =
            match chat.strip_prefix("dm:").and_then(|r| r.split_once(':')) {
                Some((a, b)) => [a, b]
                    .into_iter()
                    .filter(|u| *u != user)
                    .filter_map(|u| peers.get_key_value(u).map(|(k, _)| k))
                    .collect(),
                None => peers.keys().filter(|u| **u != user).collect(),
            };
        for recipient in recipients {
            for peer in &peers[recipient] {
                let _ = peer.send(out.clone());
            }
        }
    }
    writer.abort();
}
