//! The end-to-end harness: starts the real `switchboard` binary on a free
//! port with its own data directory, and talks to it as clients do, over a
//! real WebSocket and real HTTP.
//!
//! Every wait is bounded: a frame that does not come fails the test after
//! [`WAIT`], it never hangs the suite.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use tokio_tungstenite::tungstenite;

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// The binary under test: `SWITCHBOARD_BIN`, or built once per test process.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SWITCHBOARD_BIN") {
            return PathBuf::from(bin);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = std::process::Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["build", "-p", "host-gateway", "--bin", "switchboard"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building switchboard failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        target.join("debug").join("switchboard")
    })
    .clone()
}

/// A running switchboard with its own data directory.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    data: tempfile::TempDir,
    secret: String,
    args: Vec<String>,
    http: reqwest::Client,
}

impl Server {
    /// Starts a server with default settings.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra `serve` flags.
    pub async fn start_with(args: &[&str]) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            child: None,
            base: String::new(),
            data,
            secret: "e2e-secret-0123456789abcdef0123456789".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            http: reqwest::Client::new(),
        };
        server.spawn().await.expect("starting switchboard");
        server
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(binary())
            .arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data.path())
            .arg(format!("--jwt-secret={}", self.secret))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning switchboard")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("switchboard did not start within 60 s")??
            .context("switchboard exited before listening")?;
        let Some(base) = line.strip_prefix("switchboard listening on ") else {
            bail!("unexpected first line: {line}");
        };
        self.base = base.trim().to_owned();
        self.child = Some(child);
        Ok(())
    }

    /// Kills the server without warning (SIGKILL) and starts it again on the same data.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("killing switchboard");
        }
        self.spawn().await.expect("restarting switchboard");
    }

    /// A token for `user`, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        self.token_for(user, 3600, &self.secret)
    }

    /// A token with `sub = user`, expiring `ttl_secs` from now (may be negative), signed with `secret`.
    pub fn token_for(&self, user: &str, ttl_secs: i64, secret: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = json!({"sub": user, "exp": now + ttl_secs});
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
            .expect("signing a token")
    }

    fn ws_url(&self, user: &str, token: &str) -> String {
        format!(
            "{}/chat/connect?userId={user}&token={token}",
            self.base.replacen("http", "ws", 1)
        )
    }

    /// Connects `user` over WebSocket.
    pub async fn connect(&self, user: &str) -> Client {
        self.try_connect(user, &self.token(user))
            .await
            .expect("connecting")
    }

    /// Attempts a WebSocket connection with an explicit token.
    pub async fn try_connect(&self, user: &str, token: &str) -> Result<Client, tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url(user, token)).await?;
        Ok(Client {
            ws,
            user: user.to_owned(),
        })
    }

    /// An HTTP request as `user` (no auth header when `user` is None).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(user) = user {
            req = req.bearer_auth(self.token(user));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("HTTP timed out")
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("HTTP body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, user: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, Some(user), None)
            .await
    }

    pub async fn post(&self, path: &str, user: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(user), Some(body))
            .await
    }

    /// Creates a chat as `user` and returns its id.
    pub async fn create_chat(&self, user: &str, body: Value) -> String {
        let (status, chat) = self.post("/api/v1/chats", user, body).await;
        assert!(
            status == 200 || status == 201,
            "creating a chat: {status} {chat}"
        );
        chat["chatId"].as_str().expect("chatId").to_owned()
    }

    /// Every message of a chat, oldest first, read through `after` pages.
    pub async fn all_messages(&self, chat: &str, user: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = "0".to_string();
        loop {
            let (status, page) = self
                .get(
                    &format!("/api/v1/chats/{chat}/messages?after={after}&limit=100"),
                    user,
                )
                .await;
            assert_eq!(status, 200, "{page}");
            out.extend(
                page["messages"]
                    .as_array()
                    .expect("messages")
                    .iter()
                    .cloned(),
            );
            match page["nextCursor"].as_str() {
                Some(next) => after = next.to_owned(),
                None => return out,
            }
        }
    }
}

/// One client connection.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub user: String,
}

impl Client {
    pub async fn send_json(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("sending a frame");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("sending a frame");
    }

    /// Sends a message and returns its `sent` ack.
    pub async fn send_message(&mut self, chat: &str, content: &str, client_msg_id: &str) -> Value {
        self.send_json(json!({"type": "sendMessage", "chatId": chat, "content": content, "timestamp": 1_764_000_000_000i64, "clientMsgId": client_msg_id}))
            .await;
        self.recv_until(|f| f["type"] == "ack" && f["clientMsgId"] == client_msg_id)
            .await
    }

    /// The next JSON frame (pings skipped); fails the test after [`WAIT`].
    pub async fn recv_json(&mut self) -> Value {
        match self.next_event(WAIT).await {
            Event::Frame(frame) => frame,
            Event::Closed(code) => panic!(
                "{}: connection closed ({code:?}) while waiting for a frame",
                self.user
            ),
            Event::Silence => panic!("{}: no frame within {WAIT:?}", self.user),
        }
    }

    /// The next frame matching `pred`, skipping others.
    pub async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Frame(frame) if pred(&frame) => return frame,
                Event::Frame(_) => continue,
                Event::Closed(code) => {
                    panic!("{}: connection closed ({code:?}) while waiting", self.user)
                }
                Event::Silence => panic!(
                    "{}: the expected frame did not come within {WAIT:?}",
                    self.user
                ),
            }
        }
    }

    /// Asserts that no frame arrives for `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) {
        if let Event::Frame(frame) = self.next_event(duration).await {
            panic!("{}: expected silence, got {frame}", self.user);
        }
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Frame(_) => continue,
                Event::Closed(code) => return code,
                Event::Silence => panic!(
                    "{}: the connection was not closed within {WAIT:?}",
                    self.user
                ),
            }
        }
    }

    async fn next_event(&mut self, within: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return Event::Silence,
                Ok(None) => return Event::Closed(None),
                Ok(Some(Err(_))) => return Event::Closed(None),
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Event::Frame(
                        serde_json::from_str(&text).expect("server frames are JSON"),
                    );
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Event::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

enum Event {
    Frame(Value),
    Closed(Option<u16>),
    Silence,
}

/// A direct chat between alice and bob, both connected.
pub async fn alice_and_bob(server: &Server) -> (String, Client, Client) {
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    (chat, alice, bob)
}
