//! A component that traps, loops or hogs memory fails its own invocation
//! and nothing else: the host answers with an error and the next invocation
//! (and every other connection) works.
//!
//! Uses the `faulty-send` guest (tests/guests/faulty-send) in place of the
//! real `send` component.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use host_gateway::backend::{Outbox, embedded};
use host_gateway::ids::Snowflake;
use host_gateway::runtime::bindings::platform::chat::platform::config::Settings;
use host_gateway::runtime::{
    ComponentSource, InboundFrame, InvocationLimits, InvokeError, Runtime, Shared,
};
use tokio_tungstenite::tungstenite::Message;

/// Builds the faulty guest once and returns a directory holding it as `send.wasm`.
fn faulty_components() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Run-time value first: a build cached from another checkout would
        // carry that checkout's path.
        let root = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
            .join("..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root.join("target"), |dir| root.join(dir))
            .join("components");
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "-p",
                "faulty-send",
                "--target-dir",
            ])
            .arg(&target)
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .status()
            .expect("running cargo");
        assert!(status.success(), "building faulty-send failed");
        let dir = target.join("faulty");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            target.join("wasm32-wasip2/release/faulty_send.wasm"),
            dir.join("send.wasm"),
        )
        .unwrap();
        dir
    })
    .clone()
}

struct Fixture {
    runtime: Runtime,
    outbox: tokio::sync::mpsc::Receiver<Arc<str>>,
    _data: tempfile::TempDir,
}

async fn fixture(deadline: Duration) -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let ids = Arc::new(Snowflake::new(0));
    let backends = embedded::open(data.path(), ids.clone()).unwrap();
    let (tx, outbox) = tokio::sync::mpsc::channel(16);
    backends
        .router
        .register(
            "alice",
            1,
            Outbox {
                frames: tx,
                lagged: Default::default(),
            },
        )
        .await;
    let settings = Settings {
        max_content_bytes: 4096,
        presence_ttl_ms: 60_000,
        max_group_members: 256,
    };
    let shared = Arc::new(Shared {
        backends,
        ids,
        settings,
    });
    let limits = InvocationLimits {
        memory_bytes: 16 << 20,
        deadline,
    };
    let runtime = Runtime::new(
        &ComponentSource::Directory(faulty_components()),
        shared,
        limits,
    )
    .unwrap();
    Fixture {
        runtime,
        outbox,
        _data: data,
    }
}

fn frame(body: &str) -> InboundFrame {
    InboundFrame {
        connection: 1,
        user_id: "alice".into(),
        kind: "sendMessage".into(),
        body: body.into(),
        received_at: 0,
    }
}

/// After a component invocation fails, the next one runs normally.
async fn assert_next_call_works(f: &mut Fixture) {
    f.runtime
        .send(&[frame("hello")])
        .await
        .expect("the next invocation works");
    let reply = tokio::time::timeout(Duration::from_secs(5), f.outbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*reply, r#"{"type":"alive"}"#);
}

/// A panicking component is reported as a trap, and the next call succeeds.
#[tokio::test]
async fn trapping_component_fails_only_its_invocation() {
    let mut f = fixture(Duration::from_secs(5)).await;
    let err = f.runtime.send(&[frame("trap")]).await.unwrap_err();
    assert!(
        matches!(
            err,
            InvokeError::Trap {
                component: "send",
                ..
            }
        ),
        "{err}"
    );
    assert_next_call_works(&mut f).await;
}

/// An infinite loop is interrupted at the deadline, not left spinning.
#[tokio::test]
async fn looping_component_is_interrupted_at_its_deadline() {
    let mut f = fixture(Duration::from_millis(200)).await;
    let started = Instant::now();
    let err = f.runtime.send(&[frame("loop")]).await.unwrap_err();
    assert!(matches!(err, InvokeError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_next_call_works(&mut f).await;
}

/// A component that grows memory without bound hits its cap and fails alone.
#[tokio::test]
async fn memory_hog_is_capped() {
    let mut f = fixture(Duration::from_secs(5)).await;
    let err = f.runtime.send(&[frame("hog")]).await.unwrap_err();
    assert!(matches!(err, InvokeError::Trap { .. }), "{err}");
    assert_next_call_works(&mut f).await;
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, as JSON; fails the test after 5 s.
async fn next_text(ws: &mut Socket) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: host_gateway::Config,
}

/// Over a real socket: a frame that crashes the component gets an `internal`
/// error frame with its clientMsgId, and the same connection keeps working.
#[tokio::test]
async fn client_gets_error_frame_and_connection_survives_component_crash() {
    let data = tempfile::tempdir().unwrap();
    let secret = "containment-test-secret-0123456789";
    let components = faulty_components();
    let args = Args::parse_from([
        "switchboard".as_ref(),
        "--listen=127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data.path().as_os_str(),
        format!("--jwt-secret={secret}").as_ref(),
        "--component-timeout-ms=300".as_ref(),
        "--components-dir".as_ref(),
        components.as_os_str(),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(host_gateway::run(
        listener,
        args.config,
        std::future::pending(),
    ));

    let token = host_gateway::auth::Authenticator::new(secret.as_bytes())
        .issue("alice", 60)
        .unwrap();
    let url = format!("ws://{addr}/chat/connect?userId=alice&token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for (i, poison) in ["trap", "loop"].iter().enumerate() {
        let frame = serde_json::json!({"type": "sendMessage", "chatId": "c", "content": poison, "clientMsgId": format!("m{i}")});
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
        let reply = next_text(&mut ws).await;
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["code"], "internal");
        assert_eq!(reply["clientMsgId"], format!("m{i}"));
    }
    let ok = serde_json::json!({"type": "sendMessage", "chatId": "c", "content": "hello", "clientMsgId": "m9"});
    ws.send(Message::Text(ok.to_string().into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await["type"], "alive");
}
