//! The servers under test, each a separate process, and clients for them.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// The sending half of a socket whose reads are drained elsewhere.
pub type Sender = futures_util::stream::SplitSink<Socket, Message>;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

/// A server under test: Switchboard (one process, or two gateways of a
/// cluster), or the baseline relay.
pub struct Target {
    pub name: &'static str,
    /// The first process's `http://127.0.0.1:PORT`.
    pub base: String,
    /// Every process's base; connections alternate between them, so on a
    /// cluster a sender and its receiver sit on different gateways.
    bases: Vec<String>,
    next: std::sync::atomic::AtomicUsize,
    children: Vec<Child>,
    _data: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

/// Where a cluster's shared services are.
#[derive(Debug, Clone)]
pub struct ClusterServices {
    pub redis_url: String,
    pub cassandra: String,
}

impl Target {
    /// Switchboard on the embedded backend, with a fresh data directory.
    pub async fn switchboard(bin: &Path) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let cmd = serve(bin, data.path());
        Self::spawn("switchboard", cmd, Some(data)).await
    }

    /// Two Switchboard gateways on Redis + Cassandra, in a fresh keyspace
    /// and key prefix.
    pub async fn cluster(bin: &Path, services: &ClusterServices) -> anyhow::Result<Self> {
        drop_bench_keyspaces(&services.cassandra).await?;
        let data = tempfile::tempdir()?;
        let tag = format!("{:08x}", now_micros() as u32);
        let mut children = Vec::new();
        let mut bases = Vec::new();
        // One after the other: the first creates the schema.
        for node in 1..=2 {
            let mut cmd = serve(bin, data.path());
            cmd.args([
                "--backend=cluster".to_string(),
                format!("--node-id={node}"),
                format!("--redis-url={}", services.redis_url),
                format!("--redis-prefix=bench{tag}:"),
                format!("--cassandra-nodes={}", services.cassandra),
                format!("--cassandra-keyspace=bench_{tag}"),
            ]);
            let (child, base) = Self::spawn_process(cmd).await?;
            children.push(child);
            bases.push(base);
        }
        Ok(Self::new(
            "switchboard cluster",
            children,
            bases,
            Some(data),
        ))
    }

    /// The bare relay (this binary's `relay` subcommand).
    pub async fn relay() -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("relay");
        Self::spawn("bare relay", cmd, None).await
    }

    fn new(
        name: &'static str,
        children: Vec<Child>,
        bases: Vec<String>,
        data: Option<tempfile::TempDir>,
    ) -> Self {
        Self {
            name,
            base: bases[0].clone(),
            bases,
            next: Default::default(),
            children,
            _data: data,
            http: reqwest::Client::new(),
        }
    }

    async fn spawn(
        name: &'static str,
        cmd: Command,
        data: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Self> {
        let (child, base) = Self::spawn_process(cmd).await?;
        Ok(Self::new(name, vec![child], vec![base], data))
    }

    async fn spawn_process(mut cmd: Command) -> anyhow::Result<(Child, String)> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let line = tokio::time::timeout(
            Duration::from_secs(60),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .context("server start timed out")??
        .context("server exited")?;
        let base = line
            .strip_prefix("switchboard listening on ")
            .context("unexpected first line")?
            .trim()
            .to_owned();
        Ok((child, base))
    }

    /// The first process's id.
    pub fn pid(&self) -> Option<u32> {
        self.children.first()?.id()
    }

    pub fn token(user: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600;
        let claims = json!({"sub": user, "exp": exp});
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap_or_default()
    }

    /// Opens a WebSocket for `user` from local address `127.0.0.<source>`,
    /// so thousands of connections do not exhaust one address's ports.
    pub async fn connect(&self, user: &str, source: u8) -> anyhow::Result<Socket> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = &self.bases[n % self.bases.len()];
        let url = format!(
            "{}/chat/connect?userId={user}&token={}",
            base.replacen("http", "ws", 1),
            Self::token(user)
        );
        let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse()?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::from(([127, 0, 0, source.max(1)], 0)))?;
        let stream = socket.connect(addr).await?;
        // As browsers and mobile WebSocket clients do.
        stream.set_nodelay(true)?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(stream),
            Some(crate::relay::small_buffers()),
        )
        .await?;
        Ok(ws)
    }

    /// Creates a chat (a no-op answer from the relay is fine: it has no chats).
    pub async fn create_chat(
        &self,
        creator: &str,
        members: &[String],
        name: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        let mut body = json!({"members": members});
        if let Some(name) = name {
            body["name"] = name.into();
        }
        let resp = self
            .http
            .post(format!("{}/api/v1/chats", self.base))
            .bearer_auth(Self::token(creator))
            .json(&body)
            .send()
            .await;
        match resp {
            Ok(resp) if resp.status().is_success() => Ok(resp.json::<Value>().await?["chatId"]
                .as_str()
                .map(str::to_owned)),
            _ => Ok(None),
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Resident memory of the server process, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// CPU time (user + system) the server processes have used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.children
            .iter()
            .map(|c| cpu_time_of(&c.id()?.to_string()))
            .sum()
    }
}

/// CPU time (user + system) process `pid` (or `self`) has used so far,
/// from `/proc/<pid>/stat`.
pub fn cpu_time_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces, end with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of the whole line, in clock ticks.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ: the unit the kernel reports these in, 100 on every Linux
    // architecture this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Drops the keyspaces that earlier cluster targets seeded (each has its
/// own). Left behind they fill the disk, and Cassandra compacts them at
/// start-up, at ~150% CPU, during the next run's measurements.
async fn drop_bench_keyspaces(cassandra: &str) -> anyhow::Result<()> {
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(cassandra)
        .build()
        .await
        .context("connecting to Cassandra")?;
    let keyspaces = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", &[])
        .await?
        .into_rows_result()?;
    let stale: Vec<String> = keyspaces
        .rows::<(String,)>()?
        .filter_map(|row| row.ok().map(|(name,)| name))
        .filter(|name| name.starts_with("bench_"))
        .collect();
    for name in stale {
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), &[])
            .await
            .with_context(|| format!("dropping keyspace {name}"))?;
    }
    Ok(())
}

/// `switchboard serve` on a free port with the bench secret, quiet.
fn serve(bin: &Path, data: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--listen=127.0.0.1:0")
        .arg("--data-dir")
        .arg(data)
        .arg(format!("--jwt-secret={SECRET}"))
        .env("RUST_LOG", "error");
    cmd
}

/// Sends one chat message whose content is its send time (µs since the Unix epoch).
pub async fn send_stamped(ws: &mut Sender, chat: &str, client_id: u64) -> anyhow::Result<()> {
    let frame = json!({"type":"sendMessage","chatId":chat,"content":now_micros().to_string(),"timestamp":0,"clientMsgId":client_id.to_string()});
    ws.send(Message::Text(frame.to_string().into())).await?;
    Ok(())
}

pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The next `receiveMessage`'s latency in µs (from its stamped content), skipping other frames.
pub async fn recv_latency(ws: &mut Socket) -> Option<u64> {
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if frame["type"] == "receiveMessage" {
            let sent: u64 = frame["content"].as_str()?.parse().ok()?;
            return Some(now_micros().saturating_sub(sent));
        }
    }
    None
}
