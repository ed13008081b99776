//! The end-to-end harness: starts the real `switchboard` binary on a free
//! port with its own data directory and secret, and talks to it as clients
//! do, over a real WebSocket and real HTTP.
//!
//! Shape:
//! - [`Server`] owns one child process. It keeps its data directory across
//!   [`Server::restart`] (a SIGKILL, then a new process on the same data and
//!   a new port) and kills the child when dropped. The child's stderr goes to
//!   a log file; when a test fails, the tail of every log of its server is
//!   printed with the failure.
//! - [`Client`] is one WebSocket connection (one device).
//! - Every wait is bounded: a frame that does not come fails the test after
//!   [`WAIT`] with a message saying what was awaited and what came instead; a
//!   server that does not start fails it after [`START_WAIT`]. Nothing hangs
//!   the suite.
//!
//! The binary is `SWITCHBOARD_BIN` when set (CI builds it once), otherwise it
//! is built once per test process with `cargo build -p host-gateway --bin
//! switchboard`.
//!
//! The child sees none of the caller's `SWITCHBOARD_*` variables: each test
//! states its whole configuration through flags, so a developer's shell
//! cannot change what a test proves.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use tokio_tungstenite::tungstenite;

/// The checkout these tests run from: the nearest directory holding
/// `Cargo.lock` above the running test's crate. Starts from the run-time
/// `CARGO_MANIFEST_DIR` (cargo sets it for test binaries; it names whichever
/// test crate is running), since a build cached from another checkout of the
/// same tree would carry that checkout's compile-time path.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map_or_else(|| start.join(".."), Path::to_path_buf)
}

/// How long a test waits for a frame, a close or an HTTP answer before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long a server may take to print its listening line (a debug build
/// compiles its components at start, and CI machines are slow).
pub const START_WAIT: Duration = Duration::from_secs(90);

/// The client timestamp [`Client::send_message`] puts on every message.
pub const TIMESTAMP: i64 = 1_764_340_000_123;

/// The first line `switchboard serve` prints to stdout once it listens.
const LISTENING: &str = "switchboard listening on ";

/// The binary under test: `SWITCHBOARD_BIN`, or built once per test process.
///
/// A failed build fails every test that needs the binary with the same
/// message, without building again.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(|| build_binary().map_err(|e| format!("{e:#}"))) {
        Ok(path) => path.clone(),
        Err(e) => panic!("no switchboard binary: {e}"),
    }
}

fn build_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SWITCHBOARD_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("SWITCHBOARD_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let root = workspace_root();
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .current_dir(&root)
        .args(["build", "-p", "host-gateway", "--bin", "switchboard"]);
    // `cargo test` gives this process the variables of the e2e package
    // (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). Build scripts such as ring's
    // rerun when those change, so passing them on would rebuild dependencies
    // here and again in the next plain `cargo build`.
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CFG_",
            "CARGO_BIN_EXE_",
        ]
        .iter()
        .any(|prefix| key_str.starts_with(prefix))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&key_str.as_ref())
        {
            cargo.env_remove(&key);
        }
    }
    let status = cargo.status().context("running cargo build")?;
    if !status.success() {
        bail!("`cargo build -p host-gateway --bin switchboard` failed ({status})");
    }
    // A relative CARGO_TARGET_DIR is relative to where cargo ran: the root.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    let bin = target
        .join("debug")
        .join(format!("switchboard{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!("cargo build succeeded but {} is missing", bin.display());
    }
    Ok(bin)
}

/// How to start a server. `Options::default()` is the server's defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--max-frame-bytes`.
    pub max_frame_bytes: Option<usize>,
    /// `--presence-ttl-secs`.
    pub presence_ttl_secs: Option<u64>,
    /// Start without `--jwt-secret`, so the server generates a secret and
    /// keeps it in its data directory; [`Server::token`] then asks
    /// `switchboard token` for tokens.
    pub generated_secret: bool,
    /// `RUST_LOG` of the child (default `info`). Its log is shown only when
    /// a test fails.
    pub log_filter: Option<String>,
    /// Further `serve` flags, appended last.
    pub extra_args: Vec<String>,
    /// Run on the cluster backend (two gateways on Redis + Cassandra)
    /// instead of the embedded one. Default: [`cluster_by_default`].
    pub cluster: Option<bool>,
    /// Cluster only: this Redis instead of `SWITCHBOARD_TEST_REDIS_URL`.
    pub redis_url: Option<String>,
}

/// Whether servers run as a cluster unless a test says otherwise:
/// `SWITCHBOARD_E2E_BACKEND=cluster` runs the whole suite on two gateways
/// sharing Redis and Cassandra, each client alternating between them.
pub fn cluster_by_default() -> bool {
    std::env::var("SWITCHBOARD_E2E_BACKEND").is_ok_and(|b| b == "cluster")
}

/// The Redis the cluster tests use (`infra/test.sh` starts it).
pub fn test_redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The Cassandra node the cluster tests use (`infra/test.sh` starts it).
pub fn test_cassandra() -> String {
    std::env::var("SWITCHBOARD_TEST_CASSANDRA").unwrap_or_else(|_| "127.0.0.1:9042".into())
}

/// Where one server's cluster state lives: its own keyspace and key prefix,
/// so tests sharing a Redis and a Cassandra never see each other.
#[derive(Debug, Clone)]
struct ClusterPlace {
    redis_url: String,
    prefix: String,
    keyspace: String,
}

impl Options {
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_frame_bytes = Some(bytes);
        self
    }

    pub fn presence_ttl_secs(mut self, secs: u64) -> Self {
        self.presence_ttl_secs = Some(secs);
        self
    }

    pub fn generated_secret(mut self) -> Self {
        self.generated_secret = true;
        self
    }

    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = Some(filter.to_owned());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// Two gateways on Redis + Cassandra, whatever the suite's default.
    pub fn cluster(mut self) -> Self {
        self.cluster = Some(true);
        self
    }

    /// The embedded backend, whatever the suite's default.
    pub fn embedded(mut self) -> Self {
        self.cluster = Some(false);
        self
    }

    /// Cluster only: use this Redis.
    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_url = Some(url.to_owned());
        self
    }
}

/// A running switchboard with its own data directory: one gateway process
/// on the embedded backend, or two on the cluster backend (then clients and
/// requests alternate between them, so every conversation crosses gateways).
pub struct Server {
    /// `http://127.0.0.1:PORT` of the first gateway (changes on restart).
    pub base: String,
    /// One per gateway; `child` is `None` while it is killed.
    gateways: Vec<Gateway>,
    /// Round robin over `gateways` for connections and requests.
    next_gateway: std::sync::atomic::AtomicUsize,
    cluster: Option<ClusterPlace>,
    /// The embedded store; kept across restarts, deleted on drop.
    data: tempfile::TempDir,
    /// One `server-N.log` (stderr, then any later stdout) per process started.
    logs: tempfile::TempDir,
    /// How many processes this server has started (names the log files).
    starts: u32,
    /// The HS256 secret passed with `--jwt-secret`; `None` with a generated one.
    secret: Option<String>,
    opts: Options,
    http: reqwest::Client,
}

impl Server {
    /// Starts a server with default settings and a random secret.
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Starts a server with `opts`.
    pub async fn start_with(opts: Options) -> Self {
        let cluster = opts.cluster.unwrap_or_else(cluster_by_default).then(|| {
            let tag = random_secret()[..12].to_owned();
            ClusterPlace {
                redis_url: opts.redis_url.clone().unwrap_or_else(test_redis_url),
                prefix: format!("e2e{tag}:"),
                keyspace: format!("e2e_{tag}"),
            }
        });
        assert!(
            cluster.is_none() || !opts.generated_secret,
            "a cluster needs one secret for all gateways"
        );
        let gateways = if cluster.is_some() { 2 } else { 1 };
        let mut server = Self {
            base: String::new(),
            gateways: (0..gateways)
                .map(|_| Gateway {
                    base: String::new(),
                    child: None,
                })
                .collect(),
            next_gateway: Default::default(),
            cluster,
            data: tempfile::Builder::new()
                .prefix("switchboard-e2e-data")
                .tempdir()
                .expect("creating a data dir"),
            logs: tempfile::Builder::new()
                .prefix("switchboard-e2e-logs")
                .tempdir()
                .expect("creating a log dir"),
            starts: 0,
            secret: (!opts.generated_secret).then(random_secret),
            opts,
            http: reqwest::Client::builder()
                .timeout(WAIT)
                .build()
                .expect("an HTTP client"),
        };
        server.spawn_all().await;
        server
    }

    /// Starts every gateway that is not running, one after the other (the
    /// first creates the cluster's schema).
    async fn spawn_all(&mut self) {
        for index in 0..self.gateways.len() {
            if self.gateways[index].child.is_none()
                && let Err(e) = self.spawn(index).await
            {
                panic!("starting switchboard gateway {index}: {e:#}");
            }
        }
    }

    async fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = std::fs::File::create(&log_path).context("creating the log file")?;
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data.path());
        if let Some(secret) = &self.secret {
            cmd.arg(format!("--jwt-secret={secret}"));
        }
        if let Some(bytes) = self.opts.max_frame_bytes {
            cmd.arg(format!("--max-frame-bytes={bytes}"));
        }
        if let Some(secs) = self.opts.presence_ttl_secs {
            cmd.arg(format!("--presence-ttl-secs={secs}"));
        }
        if let Some(place) = &self.cluster {
            cmd.args([
                "--backend=cluster".to_string(),
                format!("--node-id={}", index + 1),
                format!("--redis-url={}", place.redis_url),
                format!("--redis-prefix={}", place.prefix),
                format!("--cassandra-nodes={}", test_cassandra()),
                format!("--cassandra-keyspace={}", place.keyspace),
            ]);
        }
        cmd.args(&self.opts.extra_args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SWITCHBOARD_") {
                cmd.env_remove(key);
            }
        }
        let filter = self.opts.log_filter.as_deref().unwrap_or("info");
        let mut child = cmd
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", binary().display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut before = Vec::new();
        let found = tokio::time::timeout(START_WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(base) = line.strip_prefix(LISTENING) {
                    return Ok(Some(base.trim().to_owned()));
                }
                before.push(line);
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let base = match found {
            Ok(Ok(Some(base))) => base,
            outcome => {
                let _ = child.start_kill();
                let why = match outcome {
                    Err(_) => format!("no listening line within {START_WAIT:?}"),
                    Ok(Err(e)) => format!("reading its stdout: {e}"),
                    _ => format!("it exited ({:?}) before listening", child.wait().await),
                };
                bail!(
                    "{why}\nstdout before: {before:?}\nstderr:\n{}",
                    tail(&log_path, 80)
                );
            }
        };
        if !base.starts_with("http://") {
            bail!("the listening line names {base:?}, not an http:// address");
        }
        // Keep reading stdout: a server writing to a closed pipe would fail.
        let mut log = std::fs::OpenOptions::new().append(true).open(&log_path)?;
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                use std::io::Write as _;
                let _ = writeln!(log, "[stdout] {line}");
            }
        });
        if index == 0 {
            self.base = base.clone();
        }
        self.gateways[index] = Gateway {
            base,
            child: Some(child),
        };
        Ok(())
    }

    /// Kills the server without warning (SIGKILL, as a crash or `kill -9`)
    /// and starts a new process on the same data directory and secret. The
    /// new process listens on a new port: reconnect clients after this.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn_all().await;
    }

    /// Kills every gateway (SIGKILL) and waits until they are gone.
    pub async fn kill(&mut self) {
        for index in 0..self.gateways.len() {
            self.kill_gateway(index).await;
        }
    }

    /// Kills one gateway (SIGKILL) and waits until it is gone.
    pub async fn kill_gateway(&mut self, index: usize) {
        if let Some(mut child) = self.gateways[index].child.take() {
            child.kill().await.expect("killing switchboard");
        }
    }

    /// The process id of a running gateway.
    pub fn gateway_pid(&self, index: usize) -> u32 {
        self.gateways[index]
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the gateway is running")
    }

    /// The base URLs of the gateways, in order.
    pub fn gateway_bases(&self) -> Vec<String> {
        self.gateways.iter().map(|g| g.base.clone()).collect()
    }

    /// The next gateway's base URL, round robin.
    fn pick(&self) -> &str {
        let n = self
            .next_gateway
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.gateways[n % self.gateways.len()].base
    }

    /// The data directory, kept across restarts.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Everything every process of this server has logged so far.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect()
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.logs.path().join(format!("server-{n}.log"))
    }

    // ---- tokens ----

    /// The secret the server verifies tokens with (`None` when it generated its own).
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// A valid token for `user`, good for an hour.
    pub fn token(&self, user: &str) -> String {
        match &self.secret {
            Some(secret) => sign_token(user, 3600, secret),
            None => self.cli_token(user, 3600),
        }
    }

    /// A token for `user` signed with the server's secret that expires
    /// `ttl_secs` from now (negative: already expired).
    pub fn token_expiring(&self, user: &str, ttl_secs: i64) -> String {
        let secret = self
            .secret
            .as_deref()
            .expect("token_expiring needs a server started with a known secret");
        sign_token(user, ttl_secs, secret)
    }

    /// The token `switchboard token <user> --ttl-secs <ttl>` prints for this
    /// server's data directory and secret.
    pub fn cli_token(&self, user: &str, ttl_secs: u64) -> String {
        let mut cmd = std::process::Command::new(binary());
        cmd.args([
            "token",
            user,
            "--ttl-secs",
            &ttl_secs.to_string(),
            "--data-dir",
        ])
        .arg(self.data.path());
        if let Some(secret) = &self.secret {
            cmd.arg(format!("--jwt-secret={secret}"));
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SWITCHBOARD_") {
                cmd.env_remove(key);
            }
        }
        let out = cmd
            .env("RUST_LOG", "warn")
            .output()
            .expect("running switchboard token");
        assert!(
            out.status.success(),
            "switchboard token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).expect("the token is text");
        let token = token.trim();
        assert_eq!(
            token.lines().count(),
            1,
            "switchboard token prints one line: {token:?}"
        );
        token.to_owned()
    }

    // ---- WebSocket ----

    /// `ws://127.0.0.1:PORT/chat/connect?userId={user}&token={token}` of
    /// the next gateway.
    pub fn ws_url(&self, user: &str, token: &str) -> String {
        ws_url_at(self.pick(), user, token)
    }

    /// Connects `user` to the gateway (or load balancer) at `base`.
    pub async fn connect_at(&self, base: &str, user: &str) -> Result<Client, tungstenite::Error> {
        let request = ws_url_at(base, user, &self.token(user)).into_client_request()?;
        Client::open(user, request).await
    }

    /// Connects `user` with a valid token; fails the test if that is refused.
    pub async fn connect(&self, user: &str) -> Client {
        match self.try_connect(user, &self.token(user)).await {
            Ok(client) => client,
            Err(e) => panic!("{user}: connecting failed: {e}"),
        }
    }

    /// Attempts a WebSocket connection with the token in the query string.
    pub async fn try_connect(&self, user: &str, token: &str) -> Result<Client, tungstenite::Error> {
        let request = self.ws_url(user, token).into_client_request()?;
        Client::open(user, request).await
    }

    /// Attempts a WebSocket connection with `Authorization: Bearer {token}`
    /// (or no credentials at all when `token` is `None`).
    pub async fn try_connect_bearer(
        &self,
        user: &str,
        token: Option<&str>,
    ) -> Result<Client, tungstenite::Error> {
        let url = format!(
            "{}/chat/connect?userId={user}",
            self.pick().replacen("http", "ws", 1)
        );
        let mut request = url.into_client_request()?;
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("a header value"),
            );
        }
        Client::open(user, request).await
    }

    // ---- HTTP ----

    /// An HTTP request as `user` (a valid token), or without credentials when
    /// `user` is `None`. Returns the status and the body as JSON (a
    /// `Value::String` when the body is not JSON).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let auth = user.map(|user| format!("Bearer {}", self.token(user)));
        self.request_with_auth(method, path, auth.as_deref(), body)
            .await
    }

    /// An HTTP request with this exact `Authorization` header (none when `None`).
    pub async fn request_with_auth(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.pick());
        let mut req = self.http.request(method.clone(), &url);
        if let Some(auth) = authorization {
            req = req.header("authorization", auth);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status().as_u16();
        let text = match resp.text().await {
            Ok(text) => text,
            Err(e) => panic!("{method} {path}: reading the body: {e}"),
        };
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

    pub async fn delete(&self, path: &str, user: &str) -> (u16, Value) {
        self.request(reqwest::Method::DELETE, path, Some(user), None)
            .await
    }

    /// `GET /healthz`'s status.
    pub async fn health(&self) -> u16 {
        self.request(reqwest::Method::GET, "/healthz", None, None)
            .await
            .0
    }

    /// `POST /api/v1/chats` as `user`; fails the test unless it is 200 or
    /// 201. Returns the chat id.
    pub async fn create_chat(&self, user: &str, body: Value) -> String {
        let (status, chat) = self.post("/api/v1/chats", user, body).await;
        assert!(
            status == 200 || status == 201,
            "creating a chat: {status} {chat}"
        );
        chat["chatId"].as_str().expect("chatId").to_owned()
    }

    /// `GET /api/v1/chats/{chat}/messages?{query}` as `user` (query like
    /// `"after=0&limit=5"`, or `""`).
    pub async fn history(&self, chat: &str, user: &str, query: &str) -> (u16, Value) {
        let path = if query.is_empty() {
            format!("/api/v1/chats/{chat}/messages")
        } else {
            format!("/api/v1/chats/{chat}/messages?{query}")
        };
        self.get(&path, user).await
    }

    /// One history page that must succeed.
    pub async fn history_page(&self, chat: &str, user: &str, query: &str) -> Value {
        let (status, page) = self.history(chat, user, query).await;
        assert_eq!(status, 200, "history {chat}?{query} as {user}: {page}");
        page
    }

    /// Every message of a chat as `user` sees it, oldest first, read through
    /// `after` pages of 100.
    pub async fn all_messages(&self, chat: &str, user: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = "0".to_string();
        for _ in 0..1000 {
            let page = self
                .history_page(chat, user, &format!("after={after}&limit=100"))
                .await;
            out.extend(messages(&page).iter().cloned());
            match page.get("nextCursor") {
                None => return out,
                Some(next) => after = next.as_str().expect("nextCursor is a string").to_owned(),
            }
        }
        panic!("history of {chat} did not end after 1000 pages");
    }
}

/// One gateway process of a [`Server`].
struct Gateway {
    base: String,
    child: Option<Child>,
}

/// `ws://…/chat/connect?userId={user}&token={token}` at `base` (`http://…`).
pub fn ws_url_at(base: &str, user: &str, token: &str) -> String {
    format!(
        "{}/chat/connect?userId={user}&token={token}",
        base.replacen("http", "ws", 1)
    )
}

impl Drop for Server {
    fn drop(&mut self) {
        for gateway in &mut self.gateways {
            if let Some(child) = &mut gateway.child {
                let _ = child.start_kill();
            }
        }
        if std::thread::panicking() {
            // Shown by the test runner with the failure.
            for n in 1..=self.starts {
                eprintln!(
                    "---- switchboard process {n} of this test ({}), last lines of its log ----\n{}",
                    self.base,
                    tail(&self.log_path(n), 60)
                );
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A random 256-bit hex secret (std only: no RNG crate needed for a test key).
fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    (0..4).fold(String::new(), |mut out, _| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        let _ = write!(out, "{:016x}", h.finish());
        out
    })
}

/// An HS256 token with `sub = user` and `exp` `ttl_secs` from now, signed with `secret`.
pub fn sign_token(user: &str, ttl_secs: i64, secret: &str) -> String {
    let claims = json!({"sub": user, "exp": now_secs() + ttl_secs});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("signing a token")
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

/// The `messages` array of a history page.
pub fn messages(page: &Value) -> &Vec<Value> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("a history page has a messages array: {page}"))
}

/// The ids of a history page, in page order.
pub fn ids(page: &Value) -> Vec<String> {
    messages(page).iter().map(message_id).collect()
}

/// A history message's `id` (or a frame's `messageId`) as a string.
pub fn message_id(message: &Value) -> String {
    message
        .get("id")
        .or_else(|| message.get("messageId"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string id in {message}"))
        .to_owned()
}

/// Parses a decimal-string message id as the 64-bit integer it is.
pub fn id_num(id: &str) -> u64 {
    id.parse()
        .unwrap_or_else(|_| panic!("message ids are decimal u64 strings: {id:?}"))
}

/// One client connection (one device of `user`).
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub user: String,
}

/// What the next read from a connection brought.
enum Event {
    Frame(Value),
    /// The server closed the connection: its close code, if it sent one, and
    /// how it ended.
    Closed(Option<u16>, String),
    Silence,
}

impl Client {
    async fn open(
        user: &str,
        request: tungstenite::handshake::client::Request,
    ) -> Result<Client, tungstenite::Error> {
        let (ws, _) =
            match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
                Ok(result) => result?,
                Err(_) => panic!("{user}: the WebSocket handshake took over {WAIT:?}"),
            };
        Ok(Client {
            ws,
            user: user.to_owned(),
        })
    }

    /// Sends `frame` as a JSON text frame.
    pub async fn send_json(&mut self, frame: Value) {
        self.send_raw(Message::Text(frame.to_string().into())).await;
    }

    /// Sends any WebSocket message as is.
    pub async fn send_raw(&mut self, message: Message) {
        match tokio::time::timeout(WAIT, self.ws.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{}: sending a frame: {e}", self.user),
            Err(_) => panic!("{}: sending a frame took over {WAIT:?}", self.user),
        }
    }

    /// Sends a message (timestamp [`TIMESTAMP`]) and returns its `sent` ack;
    /// fails the test if the server answers that `clientMsgId` with anything else.
    pub async fn send_message(&mut self, chat: &str, content: &str, client_msg_id: &str) -> Value {
        self.send_json(
            json!({"type": "sendMessage", "chatId": chat, "content": content,
            "timestamp": TIMESTAMP, "clientMsgId": client_msg_id}),
        )
        .await;
        let answer = self.recv_until(|f| f["clientMsgId"] == client_msg_id).await;
        assert!(
            answer["type"] == "ack" && answer["status"] == "sent",
            "{}: sendMessage {client_msg_id} was answered with {answer}",
            self.user
        );
        answer
    }

    /// Like [`Client::send_message`], returning just the new message's id.
    pub async fn send_id(&mut self, chat: &str, content: &str, client_msg_id: &str) -> String {
        message_id(&self.send_message(chat, content, client_msg_id).await)
    }

    /// The next JSON frame (pings are answered and skipped); fails the test
    /// after [`WAIT`] or if the connection closes.
    pub async fn recv_json(&mut self) -> Value {
        match self.next_event(WAIT).await {
            Event::Frame(frame) => frame,
            Event::Closed(code, how) => panic!(
                "{}: connection closed (code {code:?}, {how}) while waiting for a frame",
                self.user
            ),
            Event::Silence => panic!("{}: no frame within {WAIT:?}", self.user),
        }
    }

    /// The next frame matching `pred`, skipping others; fails the test
    /// (listing what it skipped) after [`WAIT`] or if the connection closes.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Frame(frame) if pred(&frame) => return frame,
                Event::Frame(frame) => skipped.push(frame),
                Event::Closed(code, how) => panic!(
                    "{}: connection closed (code {code:?}, {how}) while waiting; skipped {skipped:?}",
                    self.user
                ),
                Event::Silence => panic!(
                    "{}: the expected frame did not come within {WAIT:?}; skipped {skipped:?}",
                    self.user
                ),
            }
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        self.recv_until(|f| f["type"] == kind).await
    }

    /// Asserts that no frame arrives for `duration` (and that the connection stays open).
    pub async fn expect_silence(&mut self, duration: Duration) {
        match self.next_event(duration).await {
            Event::Silence => {}
            Event::Frame(frame) => panic!("{}: expected silence, got {frame}", self.user),
            Event::Closed(code, how) => panic!(
                "{}: expected silence, but the connection closed (code {code:?}, {how})",
                self.user
            ),
        }
    }

    /// Waits for the server to close the connection, skipping frames before
    /// the close; returns the close code (`None` when the connection ended
    /// without a close frame).
    pub async fn closed(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Frame(_) => continue,
                Event::Closed(code, _) => return code,
                Event::Silence => panic!(
                    "{}: the connection was not closed within {WAIT:?}",
                    self.user
                ),
            }
        }
    }

    /// Closes the connection cleanly (close code 1000).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
        // Read until the server's close answer so the close is complete.
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }

    /// The next frame within `within`: `Ok(None)` on silence, `Err` with
    /// the reason when the connection ended. For tests that expect sockets
    /// to die (a killed gateway) and handle it themselves.
    pub async fn try_recv(&mut self, within: Duration) -> Result<Option<Value>, String> {
        match self.next_event(within).await {
            Event::Frame(frame) => Ok(Some(frame)),
            Event::Silence => Ok(None),
            Event::Closed(code, how) => Err(format!("closed ({code:?}): {how}")),
        }
    }

    /// Sends `frame`; `Err` instead of a failure when the socket is gone.
    pub async fn try_send_json(&mut self, frame: &Value) -> Result<(), String> {
        match tokio::time::timeout(WAIT, self.ws.send(Message::Text(frame.to_string().into())))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("sending took over {WAIT:?}")),
        }
    }

    async fn next_event(&mut self, within: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return Event::Silence,
                Ok(None) => return Event::Closed(None, "stream ended".into()),
                Ok(Some(Err(e))) => return Event::Closed(None, format!("error: {e}")),
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Event::Frame(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("{}: a server frame is not JSON ({e}): {text}", self.user)
                    }));
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Event::Closed(
                        frame.as_ref().map(|f| u16::from(f.code)),
                        format!("close frame {frame:?}"),
                    );
                }
                Ok(Some(Ok(Message::Binary(bytes)))) => {
                    panic!(
                        "{}: the server sent a binary frame ({} bytes); the protocol is JSON text",
                        self.user,
                        bytes.len()
                    )
                }
                Ok(Some(Ok(_))) => continue, // ping/pong
            }
        }
    }
}

/// HAProxy in front of a cluster's gateways, configured from
/// `infra/haproxy/haproxy.cfg.template` (what `infra/cluster.sh` runs).
/// Killed when dropped.
pub struct LoadBalancer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Held for `kill_on_drop`: HAProxy ends with this value.
    _child: Child,
    _dir: tempfile::TempDir,
}

impl LoadBalancer {
    /// Starts HAProxy (`SWITCHBOARD_TEST_HAPROXY`, else `haproxy` on the
    /// PATH or in /usr/sbin) on a free port in front of `gateways`, and waits
    /// until it routes to all of them.
    pub async fn start(gateways: &[String]) -> Self {
        let template = workspace_root().join("infra/haproxy/haproxy.cfg.template");
        let template = std::fs::read_to_string(&template)
            .unwrap_or_else(|e| panic!("reading {}: {e}", template.display()));
        let port = free_port();
        let servers: String = gateways
            .iter()
            .enumerate()
            .map(|(i, base)| {
                format!(
                    "    server gw{} {} check\n",
                    i + 1,
                    base.trim_start_matches("http://")
                )
            })
            .collect();
        let config = template
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@SERVERS@", &servers);
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("writing haproxy.cfg");
        let binary = std::env::var("SWITCHBOARD_TEST_HAPROXY").unwrap_or_else(|_| {
            if Path::new("/usr/sbin/haproxy").is_file() {
                "/usr/sbin/haproxy".into()
            } else {
                "haproxy".into()
            }
        });
        let child = Command::new(&binary)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("haproxy.log")).expect("a log file"),
            ))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary} (infra/test.sh installs it): {e}"));
        let lb = LoadBalancer {
            base: format!("http://127.0.0.1:{port}"),
            _child: child,
            _dir: dir,
        };
        // Ready when the health checks have found every gateway up: then
        // `gateways.len()` requests in a row land on distinct gateways' /readyz.
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ok = http
                .get(format!("{}/readyz", lb.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                // Let the first round of checks mark every server up.
                tokio::time::sleep(Duration::from_millis(1200)).await;
                return lb;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "haproxy did not route to a gateway within {WAIT:?}; its log:\n{}",
                tail(&lb._dir.path().join("haproxy.log"), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A private `redis-server` (no persistence) that a test may stop and
/// start again, losing its data as a crashed Redis would.
pub struct RedisProcess {
    pub port: u16,
    child: Option<Child>,
}

impl RedisProcess {
    pub async fn start() -> Self {
        let mut redis = RedisProcess {
            port: free_port(),
            child: None,
        };
        redis.restart().await;
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): its data is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("killing redis-server");
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server (infra/test.sh installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not listen within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A direct chat between alice and bob (created by alice), both connected.
pub async fn alice_and_bob(server: &Server) -> (String, Client, Client) {
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    assert_eq!(chat, "dm:alice:bob");
    let alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    (chat, alice, bob)
}
