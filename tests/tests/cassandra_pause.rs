//! Cassandra stops answering (SIGSTOP, as a node stuck in a GC pause or a
//! frozen VM). Its own test binary: the pause would stall any test running
//! beside it, and cargo runs test binaries one at a time.

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::{Options, Server, WAIT};

/// The test Cassandra's pid: `SWITCHBOARD_TEST_CASSANDRA_PID`, else the pid
/// file `infra/cassandra/cassandra.sh` writes, else the one CassandraDaemon
/// running (started from another checkout).
fn cassandra_pid() -> String {
    if let Ok(pid) = std::env::var("SWITCHBOARD_TEST_CASSANDRA_PID") {
        return pid;
    }
    let file = switchboard_e2e::workspace_root().join("infra/.state/cassandra/cassandra.pid");
    if let Ok(pid) = std::fs::read_to_string(&file) {
        return pid.trim().to_owned();
    }
    let found = std::process::Command::new("pgrep")
        .args(["-f", "org.apache.cassandra.service.CassandraDaemon"])
        .output()
        .expect("running pgrep");
    let pids = String::from_utf8_lossy(&found.stdout);
    let pids: Vec<&str> = pids.split_whitespace().collect();
    assert_eq!(
        pids.len(),
        1,
        "expected one Cassandra (infra/cassandra/cassandra.sh start), found pids {pids:?}"
    );
    pids[0].to_owned()
}

fn signal(pid: &str, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Resumes Cassandra even when the test fails half way.
struct Paused(String);

impl Paused {
    fn new(pid: String) -> Self {
        signal(&pid, "-STOP");
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

/// While Cassandra is paused a sender gets `unavailable` errors, never a
/// `sent` ack, and the gateway reports itself not ready. Once it resumes,
/// retries with the same clientMsgIds are acked, and each message is stored
/// exactly once, even if the writes queued during the pause went through.
#[tokio::test]
async fn paused_cassandra_never_gets_a_false_ack() {
    let server = Server::start_with(
        Options::default()
            .cluster()
            .arg("--cassandra-timeout-ms=1500"),
    )
    .await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let mut alice = server.connect("alice").await;
    alice.send_message(&chat, "before", "before").await;

    let paused = Paused::new(cassandra_pid());
    for i in 0..3 {
        alice
            .send_json(
                json!({"type": "sendMessage", "chatId": chat, "content": format!("p{i}"),
                "timestamp": 1, "clientMsgId": format!("p{i}")}),
            )
            .await;
    }
    for i in 0..3 {
        let answer = alice
            .recv_until(|f| f["clientMsgId"] == format!("p{i}").as_str())
            .await;
        assert_eq!(answer["type"], "error", "p{i} while paused: {answer}");
        assert_eq!(answer["code"], "unavailable", "p{i} while paused: {answer}");
    }
    let (status, ready) = server
        .request(reqwest::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(status, 503, "not ready while Cassandra is paused: {ready}");
    assert_eq!(ready["ready"], false);
    drop(paused);

    // Resumed: the client retries until each is acked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for i in 0..3 {
        let cmid = format!("p{i}");
        loop {
            alice
                .send_json(
                    json!({"type": "sendMessage", "chatId": chat, "content": cmid,
                    "timestamp": 1, "clientMsgId": cmid}),
                )
                .await;
            let answer = alice
                .recv_until(|f| f["clientMsgId"] == cmid.as_str())
                .await;
            if answer["type"] == "ack" && answer["status"] == "sent" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{cmid} not acked within 60 s of resuming: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Writes the driver gave up on may still be applied by the node after
    // it resumes; give them time, then check nothing doubled.
    tokio::time::sleep(WAIT / 5).await;
    let all = server.all_messages(&chat, "bob").await;
    let contents: Vec<&str> = all.iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, vec!["before", "p0", "p1", "p2"]);
}
