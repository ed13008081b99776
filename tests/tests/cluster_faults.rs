//! Faults of a two-gateway cluster behind HAProxy: a gateway killed under
//! traffic, and Redis lost and restarted. Clients here behave as the
//! protocol asks real ones to: reconnect through the load balancer, retry
//! unacknowledged messages with the same `clientMsgId`, catch up from
//! history by cursor, page the hole when a push's `prevMessageId` is newer
//! than the last message they hold, and dedupe by `messageId`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_e2e::{Client, LoadBalancer, Options, RedisProcess, Server, WAIT};

/// Connects `user` through `base`, retrying while gateways come and go.
async fn connect_retrying(server: &Server, base: &str, user: &str) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match server.connect_at(base, user).await {
            Ok(client) => return client,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{user}: no connection through {base} within 30 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `(messageId, content)` of every message in `chat` after `after`,
/// oldest first, read as `user` through `base`.
async fn history_after(
    server: &Server,
    base: &str,
    chat: &str,
    user: &str,
    mut after: String,
) -> Vec<(String, String)> {
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let mut out = Vec::new();
    for _ in 0..1000 {
        let url = format!("{base}/api/v1/chats/{chat}/messages?after={after}&limit=100");
        let response = http
            .get(&url)
            .bearer_auth(server.token(user))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status(), 200, "GET {url}");
        let page: Value = response.json().await.unwrap();
        for m in page["messages"].as_array().unwrap() {
            out.push((
                m["id"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            ));
        }
        match page.get("nextCursor").and_then(Value::as_str) {
            Some(next) => after = next.to_owned(),
            None => return out,
        }
    }
    panic!("history of {chat} did not end");
}

/// Sends `count` messages one after the other, each until it is acked
/// `sent`: on a dead socket it reconnects through `base` and resends the
/// same `clientMsgId`. Returns clientMsgId -> acked messageId, and how many
/// times it reconnected.
async fn steady_sender(
    server: Arc<Server>,
    base: String,
    user: String,
    chat: String,
    count: usize,
) -> (HashMap<String, String>, usize) {
    let mut client = connect_retrying(&server, &base, &user).await;
    let mut acked = HashMap::new();
    let mut reconnects = 0;
    for k in 0..count {
        let cmid = format!("{user}-{k}");
        let frame = json!({"type": "sendMessage", "chatId": chat, "content": cmid,
            "timestamp": 1, "clientMsgId": cmid});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        'attempts: loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{cmid} not acked within 60 s"
            );
            if client.try_send_json(&frame).await.is_err() {
                client = connect_retrying(&server, &base, &user).await;
                reconnects += 1;
                continue;
            }
            loop {
                match client.try_recv(WAIT).await {
                    Ok(Some(f)) if f["clientMsgId"] == cmid.as_str() => {
                        if f["type"] == "ack" && f["status"] == "sent" {
                            acked.insert(cmid.clone(), f["messageId"].as_str().unwrap().to_owned());
                            break 'attempts;
                        }
                        // Refused for now (e.g. unavailable): retry shortly.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'attempts;
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => {
                        client = connect_retrying(&server, &base, &user).await;
                        reconnects += 1;
                        continue 'attempts;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.close().await;
    (acked, reconnects)
}

/// What one receiver saw: messages pushed in real time (id and content, in
/// arrival order), and the ones it caught up on after each reconnect or gap.
#[derive(Default)]
struct ReceiverView {
    pushed: Vec<(String, String)>,
    caught_up: Vec<String>,
    reconnects: usize,
    gaps: usize,
}

/// Reads `chat` as `user` until `stop`; after a dead socket, reconnects
/// through `base` and catches up from history after the last id it has;
/// a push naming a predecessor newer than that id is a gap, paged too.
async fn steady_receiver(
    server: Arc<Server>,
    base: String,
    user: String,
    chat: String,
    stop: Arc<AtomicBool>,
) -> ReceiverView {
    let mut view = ReceiverView::default();
    let mut cursor = "0".to_string();
    let mut client = connect_retrying(&server, &base, &user).await;
    let advance = |cursor: &mut String, id: &str| {
        if id.parse::<u64>().unwrap() > cursor.parse::<u64>().unwrap() {
            *cursor = id.to_owned();
        }
    };
    loop {
        match client.try_recv(Duration::from_millis(200)).await {
            Ok(Some(f)) if f["type"] == "receiveMessage" && f["chatId"] == chat.as_str() => {
                let id = f["messageId"].as_str().unwrap().to_owned();
                let prev: u64 = f["prevMessageId"].as_str().unwrap().parse().unwrap();
                if prev > cursor.parse::<u64>().unwrap() {
                    view.gaps += 1;
                    for (id, _) in history_after(&server, &base, &chat, &user, cursor.clone()).await
                    {
                        advance(&mut cursor, &id);
                        view.caught_up.push(id);
                    }
                }
                advance(&mut cursor, &id);
                view.pushed
                    .push((id, f["content"].as_str().unwrap().to_owned()));
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            Err(_) => {
                client = connect_retrying(&server, &base, &user).await;
                view.reconnects += 1;
                for (id, _) in history_after(&server, &base, &chat, &user, cursor.clone()).await {
                    advance(&mut cursor, &id);
                    view.caught_up.push(id);
                }
            }
        }
    }
    // A last catch-up, as a client does when it comes to the foreground.
    for (id, _) in history_after(&server, &base, &chat, &user, cursor.clone()).await {
        view.caught_up.push(id);
    }
    client.close().await;
    view
}

/// Three senders and three receivers talk through the load balancer while
/// one gateway is killed with SIGKILL. Its clients reconnect through the
/// load balancer to the other gateway and carry on. Afterwards every
/// message is stored exactly once, in order, under the id its sender was
/// acked with; every receiver has every message, and only stored ones; a
/// message pushed again (a sender's retry) is the same message.
#[tokio::test]
async fn a_killed_gateway_loses_no_acked_message() {
    const PAIRS: usize = 3;
    const MESSAGES: usize = 150;
    let server = Arc::new(Server::start_with(Options::default().cluster()).await);
    let lb = LoadBalancer::start(&server.gateway_bases()).await;
    let mut chats = Vec::new();
    for p in 0..PAIRS {
        let chat = server
            .create_chat(&format!("s{p}"), json!({"members": [format!("r{p}")]}))
            .await;
        chats.push(chat);
    }
    let server_arc = server.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = (0..PAIRS)
        .map(|p| {
            tokio::spawn(steady_receiver(
                server_arc.clone(),
                lb.base.clone(),
                format!("r{p}"),
                chats[p].clone(),
                stop.clone(),
            ))
        })
        .collect();
    // Receivers connect first, so each gateway holds some of them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let senders: Vec<_> = (0..PAIRS)
        .map(|p| {
            tokio::spawn(steady_sender(
                server_arc.clone(),
                lb.base.clone(),
                format!("s{p}"),
                chats[p].clone(),
                MESSAGES,
            ))
        })
        .collect();

    // Traffic flows; then gateway 1 dies.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        senders.iter().all(|s| !s.is_finished()),
        "the kill must land while every sender is still sending"
    );
    kill_9(server.gateway_pid(0)).await;

    let mut acks = Vec::new();
    let mut reconnects = 0;
    for sender in senders {
        let (acked, n) = sender.await.unwrap();
        reconnects += n;
        acks.push(acked);
    }
    stop.store(true, Ordering::SeqCst);
    let mut views = Vec::new();
    for receiver in receivers {
        views.push(receiver.await.unwrap());
    }
    reconnects += views.iter().map(|v| v.reconnects).sum::<usize>();
    assert!(reconnects > 0, "killing a gateway disconnected nobody");
    let gaps: usize = views.iter().map(|v| v.gaps).sum();
    eprintln!(
        "clients reconnected {reconnects} times after the kill; receivers paged {gaps} gap(s)"
    );

    for p in 0..PAIRS {
        let stored = history_after(
            &server_arc,
            &lb.base,
            &chats[p],
            &format!("r{p}"),
            "0".into(),
        )
        .await;
        // Each message's content is its clientMsgId.
        let cmids: Vec<&str> = stored.iter().map(|(_, c)| c.as_str()).collect();
        let unique: HashSet<&str> = cmids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            cmids.len(),
            "a message stored twice in {}",
            chats[p]
        );
        assert_eq!(cmids.len(), MESSAGES, "every message of s{p} is stored");
        let ids: Vec<u64> = stored.iter().map(|(id, _)| id.parse().unwrap()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "history is in id order"
        );
        let by_cmid: BTreeMap<&str, &str> = stored
            .iter()
            .map(|(id, c)| (c.as_str(), id.as_str()))
            .collect();
        for (cmid, id) in &acks[p] {
            assert_eq!(
                by_cmid.get(cmid.as_str()),
                Some(&id.as_str()),
                "{cmid} acked as {id}"
            );
        }
        let view = &views[p];
        let stored_content: HashMap<&str, &str> = stored
            .iter()
            .map(|(id, c)| (id.as_str(), c.as_str()))
            .collect();
        // A push names a stored message and carries its stored content, so
        // one pushed again is the same message, shown once by id.
        for (id, content) in &view.pushed {
            assert_eq!(
                stored_content.get(id.as_str()),
                Some(&content.as_str()),
                "r{p} was pushed {id} as {content:?}"
            );
        }
        let seen: HashSet<&str> = view
            .pushed
            .iter()
            .map(|(id, _)| id)
            .chain(view.caught_up.iter())
            .map(String::as_str)
            .collect();
        let expected: HashSet<&str> = stored_content.keys().copied().collect();
        assert_eq!(
            seen, expected,
            "r{p} has every stored message (by push, reconnect catch-up or gap paging)"
        );
    }
    drop(lb);
}

/// `kill -9 pid`: a gateway crash (the `Server` shares it with client
/// tasks, so it cannot be killed through `&mut`).
async fn kill_9(pid: u32) {
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .expect("running kill");
    assert!(status.success(), "kill -9 {pid}");
}

/// Redis dies (losing everything) and comes back empty. Meanwhile sends are
/// still stored and acked; afterwards routing and presence rebuild by
/// themselves: messages are pushed across gateways again, and a user who
/// heartbeats is online again.
#[tokio::test]
async fn redis_lost_and_restarted() {
    let mut redis = RedisProcess::start().await;
    let server = Server::start_with(Options::default().cluster().redis_url(&redis.url())).await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    // Round robin: alice on gateway 1, bob on gateway 2.
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.send_message(&chat, "before", "before").await;
    bob.recv_until(|f| f["type"] == "receiveMessage" && f["content"] == "before")
        .await;

    redis.kill().await;
    for i in 0..5 {
        let ack = alice
            .send_message(&chat, &format!("during-{i}"), &format!("during-{i}"))
            .await;
        assert_eq!(ack["status"], "sent", "stored while Redis is down");
    }

    redis.restart().await;
    // Presence: alice heartbeats; she is online again, seen from the other gateway.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        alice.send_json(json!({"type": "heartbeat"})).await;
        let (status, presence) = server.get("/api/v1/users/alice/presence", "bob").await;
        if status == 200 && presence["status"] == "online" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice is not online again after Redis came back: {status} {presence}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Routing: a new message reaches bob on the other gateway in real time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cmid = format!("after-{attempt}");
        alice.send_message(&chat, &cmid, &cmid).await;
        match bob.try_recv(Duration::from_millis(500)).await {
            Ok(Some(f)) if f["type"] == "receiveMessage" && f["content"] == cmid.as_str() => break,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no real-time delivery across gateways after Redis came back"
        );
    }
    // Bob recovers what was not pushed while Redis was down, by cursor.
    let all = server.all_messages(&chat, "bob").await;
    let contents: Vec<&str> = all.iter().map(|m| m["content"].as_str().unwrap()).collect();
    for i in 0..5 {
        assert_eq!(
            contents
                .iter()
                .filter(|c| **c == format!("during-{i}"))
                .count(),
            1,
            "during-{i} is stored once: {contents:?}"
        );
    }
}
