//! The backend contract: what every implementation of the storage traits
//! must do, written once and run against each implementation.
//!
//! Each `*_contract` function takes a fresh backend; the `embedded` module
//! at the bottom instantiates them for the embedded backend (Redis and
//! Cassandra implementations join here).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use host_gateway::backend::{
    Appended, Chat, ChatDirectory, ChatKind, Message, MessageStore, NewMessage, Outbox,
    PresenceStore, ReceiptKind, Router,
};

fn new_message(chat: &str, sender: &str, client_id: &str) -> NewMessage {
    NewMessage {
        chat_id: chat.into(),
        sender_id: sender.into(),
        client_msg_id: client_id.into(),
        content: format!("content of {client_id}"),
        timestamp: 1_764_000_000_000,
    }
}

/// A chat's whole history, oldest first, links each message to the one
/// before it: what receivers rely on to notice a message they missed.
fn assert_chained(history: &[Message]) {
    let mut prev = 0;
    for m in history {
        assert_eq!(
            m.prev_id, prev,
            "message {} must name {prev} as its predecessor",
            m.id
        );
        prev = m.id;
    }
}

/// Appends get increasing ids within a chat, in input order, each linked
/// to the message before it.
/// Appends one message, which must succeed.
async fn append_one(store: &dyn MessageStore, message: NewMessage) -> Appended {
    store
        .append(vec![message])
        .await
        .unwrap()
        .remove(0)
        .unwrap()
}

async fn append_assigns_increasing_ids(store: &dyn MessageStore) {
    let batch = (0..50)
        .map(|i| new_message("c1", "alice", &format!("m{i}")))
        .collect();
    let results = store.append(batch).await.unwrap();
    let ids: Vec<u64> = results.into_iter().map(|r| r.unwrap().message.id).collect();
    assert_eq!(ids.len(), 50);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids must increase: {ids:?}"
    );
    let more = store
        .append(vec![new_message("c1", "bob", "b1")])
        .await
        .unwrap();
    let more = &more[0].as_ref().unwrap().message;
    assert!(more.id > ids[49]);
    assert_eq!(
        more.prev_id, ids[49],
        "the ack's message names its predecessor"
    );
    let history = store.page_after("c1", 0, 100).await.unwrap();
    assert_eq!(history.len(), 51);
    assert_chained(&history);
}

/// A repeated (chat, sender, clientMsgId) returns the first message and stores nothing new.
async fn append_is_idempotent(store: &dyn MessageStore) {
    let first = append_one(store, new_message("c2", "alice", "x")).await;
    assert!(!first.duplicate);
    let mut again = new_message("c2", "alice", "x");
    again.content = "different content".into();
    let batch = vec![again, new_message("c2", "alice", "x")];
    for result in store.append(batch).await.unwrap() {
        let result = result.unwrap();
        assert!(result.duplicate);
        assert_eq!(result.message, first.message);
    }
    // Another sender may use the same client id.
    let other = append_one(store, new_message("c2", "bob", "x")).await;
    assert!(!other.duplicate);
    assert_eq!(store.page_after("c2", 0, 100).await.unwrap().len(), 2);
    // Client ids are scoped to a chat: the same one elsewhere is a new message.
    let elsewhere = append_one(store, new_message("c2b", "alice", "x")).await;
    assert!(!elsewhere.duplicate);
    assert_eq!(elsewhere.message.chat_id, "c2b");
    // A repeat inside the batch that first stores the message.
    let batch = vec![
        new_message("c2c", "alice", "y"),
        new_message("c2c", "alice", "y"),
    ];
    let results: Vec<_> = store
        .append(batch)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(!results[0].duplicate);
    assert!(results[1].duplicate);
    assert_eq!(results[1].message, results[0].message);
    assert_eq!(store.page_after("c2c", 0, 100).await.unwrap().len(), 1);
}

/// Paging backwards is newest first and exclusive of the cursor; forwards is oldest first.
async fn paging_both_ways(store: &dyn MessageStore) {
    let batch = (0..10)
        .map(|i| new_message("c3", "alice", &format!("p{i}")))
        .collect();
    let ids: Vec<u64> = store
        .append(batch)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().message.id)
        .collect();
    // Another chat's messages never show up.
    store
        .append(vec![new_message("c3x", "alice", "other")])
        .await
        .unwrap();

    let newest = store.page_before("c3", None, 4).await.unwrap();
    assert_eq!(
        newest.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![ids[9], ids[8], ids[7], ids[6]]
    );
    let older = store.page_before("c3", Some(ids[6]), 100).await.unwrap();
    assert_eq!(older.len(), 6);
    assert_eq!(older[0].id, ids[5]);
    assert_eq!(older[5].id, ids[0]);

    let first = store.page_after("c3", 0, 3).await.unwrap();
    assert_eq!(
        first.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![ids[0], ids[1], ids[2]]
    );
    let rest = store.page_after("c3", ids[2], 100).await.unwrap();
    assert_eq!(rest.len(), 7);
    assert!(store.page_after("c3", ids[9], 10).await.unwrap().is_empty());
    assert_eq!(
        store
            .get("c3", ids[4])
            .await
            .unwrap()
            .unwrap()
            .client_msg_id,
        "p4"
    );
    assert_eq!(store.get("c3x", ids[4]).await.unwrap(), None);
}

/// Watermarks only rise; read raises delivered; `moved` says whether this call changed it.
async fn receipts_are_monotone_watermarks(store: &dyn MessageStore) {
    let (marks, moved) = store
        .advance_receipt("c4", "bob", ReceiptKind::Delivered, 10)
        .await
        .unwrap();
    assert!(moved);
    assert_eq!((marks.delivered_up_to, marks.read_up_to), (10, 0));
    let (_, moved) = store
        .advance_receipt("c4", "bob", ReceiptKind::Delivered, 5)
        .await
        .unwrap();
    assert!(!moved, "a lower watermark does not move it");
    let (marks, moved) = store
        .advance_receipt("c4", "bob", ReceiptKind::Read, 20)
        .await
        .unwrap();
    assert!(moved);
    assert_eq!((marks.delivered_up_to, marks.read_up_to), (20, 20));
    store
        .advance_receipt("c4", "carol", ReceiptKind::Delivered, 3)
        .await
        .unwrap();
    store
        .advance_receipt("c4x", "dave", ReceiptKind::Delivered, 3)
        .await
        .unwrap();
    let mut all = store.receipts("c4").await.unwrap();
    all.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].user_id.as_str(), all[0].marks.read_up_to),
        ("bob", 20)
    );
    assert_eq!(
        (all[1].user_id.as_str(), all[1].marks.delivered_up_to),
        ("carol", 3)
    );
}

fn chat(id: &str, members: &[&str], created_at: i64) -> Chat {
    Chat {
        id: id.into(),
        kind: if members.len() == 2 {
            ChatKind::Direct
        } else {
            ChatKind::Group
        },
        name: None,
        members: members.iter().map(|m| m.to_string()).collect(),
        admins: vec![],
        created_at,
    }
}

/// Creating an existing chat returns the stored one; members, listing and updates agree.
async fn chat_directory_contract(chats: &dyn ChatDirectory) {
    let (created, fresh) = chats
        .create_chat(chat("dm:alice:bob", &["alice", "bob"], 1))
        .await
        .unwrap();
    assert!(fresh);
    let (again, fresh) = chats
        .create_chat(chat("dm:alice:bob", &["alice", "bob"], 2))
        .await
        .unwrap();
    assert!(!fresh);
    assert_eq!(again, created);
    chats
        .create_chat(chat("g:1", &["alice", "carol", "dave"], 5))
        .await
        .unwrap();

    assert!(chats.is_member("dm:alice:bob", "bob").await.unwrap());
    assert!(!chats.is_member("dm:alice:bob", "carol").await.unwrap());
    assert!(!chats.is_member("nope", "alice").await.unwrap());
    let listed: Vec<String> = chats
        .chats_of("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, vec!["g:1", "dm:alice:bob"], "newest first");

    let members = vec!["alice".to_string(), "carol".into(), "dave".into()];
    assert!(chats.is_member("g:1", "carol").await.unwrap());
    let updated = chats
        .update_members(
            "g:1",
            &members,
            vec!["alice".into(), "erin".into()],
            vec!["alice".into()],
        )
        .await
        .unwrap();
    assert_eq!(updated.members, vec!["alice", "erin"]);
    // Reads after an update see it, though the chat was read before (a
    // store may cache the chats it reads).
    assert!(!chats.is_member("g:1", "carol").await.unwrap());
    assert!(chats.is_member("g:1", "erin").await.unwrap());
    assert_eq!(
        chats.get_chat("g:1").await.unwrap().unwrap().members,
        vec!["alice", "erin"]
    );
    assert!(chats.chats_of("carol").await.unwrap().is_empty());
    assert_eq!(chats.chats_of("erin").await.unwrap().len(), 1);
    // Many chats in one call come back in the order asked, a missing one
    // as none, a repeated one twice, each as a single read would see it.
    let asked: Vec<String> = ["g:1", "nope", "dm:alice:bob", "g:1"]
        .into_iter()
        .map(String::from)
        .collect();
    let found: Vec<Option<Vec<String>>> = chats
        .get_chats(&asked)
        .await
        .into_iter()
        .map(|c| c.unwrap().map(|c| c.members))
        .collect();
    let of = |m: &[&str]| Some(m.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        found,
        vec![
            of(&["alice", "erin"]),
            None,
            of(&["alice", "bob"]),
            of(&["alice", "erin"]),
        ]
    );
    assert!(chats.get_chats(&[]).await.is_empty());
    let stale = chats.update_members("g:1", &members, vec![], vec![]).await;
    assert!(
        stale.is_err(),
        "an update from a stale member list is refused"
    );
}

/// A heartbeat makes a user online until its TTL; the last disconnect makes them offline.
async fn presence_contract(presence: &dyn PresenceStore) {
    assert!(
        presence.heartbeat("alice", 1, 60_000).await.unwrap(),
        "first heartbeat: came online"
    );
    assert!(
        !presence.heartbeat("alice", 2, 60_000).await.unwrap(),
        "second device: already online"
    );
    assert!(
        !presence.disconnect("alice", 1).await.unwrap(),
        "another device is still connected"
    );
    assert!(
        presence.disconnect("alice", 2).await.unwrap(),
        "last device left"
    );
    let p = presence
        .query(&["alice".into(), "nobody".into()])
        .await
        .unwrap();
    assert!(!p[0].online && p[0].last_seen > 0);
    assert!(!p[1].online && p[1].last_seen == 0);

    presence.heartbeat("bob", 3, 150).await.unwrap();
    assert!(presence.query(&["bob".into()]).await.unwrap()[0].online);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bob = &presence.query(&["bob".into()]).await.unwrap()[0];
    assert!(!bob.online, "the lease expired");
    assert!(bob.last_seen > 0);
    assert!(
        presence.heartbeat("bob", 3, 150).await.unwrap(),
        "back online after expiry"
    );
}

/// An expiry is reported once, with the last heartbeat; a disconnect is not an expiry.
async fn expiry_contract(presence: &dyn PresenceStore) {
    presence.take_expired().await.unwrap();
    presence.heartbeat("carol", 7, 100).await.unwrap();
    presence.heartbeat("dave", 8, 100).await.unwrap();
    presence.disconnect("dave", 8).await.unwrap();
    presence.heartbeat("erin", 9, 60_000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let expired = presence.take_expired().await.unwrap();
    let users: Vec<&str> = expired.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(users, vec!["carol"]);
    assert!(!expired[0].online && expired[0].last_seen > 0);
    assert!(
        presence.take_expired().await.unwrap().is_empty(),
        "reported once"
    );
}

/// A throttle key passes once per window.
async fn throttle_contract(presence: &dyn PresenceStore) {
    assert!(presence.throttle("k", 200).await.unwrap());
    assert!(!presence.throttle("k", 200).await.unwrap());
    assert!(presence.throttle("other", 200).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(presence.throttle("k", 200).await.unwrap());
}

/// The next frame on an outbox, failing after 5 s.
async fn recv_within(rx: &mut tokio::sync::mpsc::Receiver<Arc<str>>) -> Arc<str> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
}

fn outbox() -> (Outbox, tokio::sync::mpsc::Receiver<Arc<str>>) {
    let (frames, rx) = tokio::sync::mpsc::channel(8);
    (
        Outbox {
            frames,
            lagged: Default::default(),
        },
        rx,
    )
}

/// Delivery reaches every connection of every listed user except the skipped one.
async fn router_contract(router: &dyn Router) {
    let (a1, mut a1_rx) = outbox();
    let (a2, mut a2_rx) = outbox();
    let (b1, mut b1_rx) = outbox();
    router.register("alice", 1, a1).await;
    router.register("alice", 2, a2).await;
    router.register("bob", 3, b1).await;

    let reached = router
        .send_to_users(&["alice".into(), "bob".into()], "hi".into(), Some(1))
        .await;
    assert_eq!(reached, 2);
    assert_eq!(&*a2_rx.recv().await.unwrap(), "hi");
    assert_eq!(&*b1_rx.recv().await.unwrap(), "hi");
    assert!(
        a1_rx.try_recv().is_err(),
        "the skipped connection gets nothing"
    );

    router.send_to_connection(1, "direct".into()).await;
    assert_eq!(&*a1_rx.recv().await.unwrap(), "direct");

    router.unregister("bob", 3).await;
    assert_eq!(
        router
            .send_to_users(&["bob".into()], "gone".into(), None)
            .await,
        0
    );
}

mod embedded {
    use super::*;
    use host_gateway::backend::embedded::{EmbeddedStore, InProcessPresence, InProcessRouter};
    use host_gateway::ids::Snowflake;

    fn store(dir: &tempfile::TempDir) -> EmbeddedStore {
        EmbeddedStore::open(&dir.path().join("db.redb"), Arc::new(Snowflake::new(0))).unwrap()
    }

    /// Message store contract on redb.
    #[tokio::test]
    async fn message_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        append_assigns_increasing_ids(&s).await;
        append_is_idempotent(&s).await;
        paging_both_ways(&s).await;
        receipts_are_monotone_watermarks(&s).await;
    }

    /// Chat directory contract on redb.
    #[tokio::test]
    async fn chat_directory() {
        let dir = tempfile::tempdir().unwrap();
        chat_directory_contract(&store(&dir)).await;
    }

    /// Presence contract in process.
    #[tokio::test]
    async fn presence() {
        presence_contract(&InProcessPresence::default()).await;
        expiry_contract(&InProcessPresence::default()).await;
        throttle_contract(&InProcessPresence::default()).await;
    }

    /// Router contract in process.
    #[tokio::test]
    async fn router() {
        router_contract(&InProcessRouter::default()).await;
    }

    /// Messages, the idempotency index and chat heads survive reopening the file:
    /// new ids stay above old ones even when the clock is behind them.
    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let s = store(&dir);
            append_one(&s, new_message("c", "alice", "a")).await.message
        };
        let s = store(&dir);
        assert_eq!(s.get("c", before.id).await.unwrap().as_ref(), Some(&before));
        let again = append_one(&s, new_message("c", "alice", "a")).await;
        assert!(again.duplicate);
        assert_eq!(again.message.id, before.id);
        let next = append_one(&s, new_message("c", "alice", "b")).await;
        assert!(next.message.id > before.id);
    }

    /// What a crash leaves (the files as they are while the store runs) opens
    /// with every acknowledged message: appends are durable through the
    /// journal, before any flush writes them to the file itself.
    #[tokio::test]
    async fn survives_a_crash_through_its_journal() {
        let live = tempfile::tempdir().unwrap();
        let s = store(&live);
        let acked = s
            .append(vec![
                new_message("c", "alice", "a"),
                new_message("c", "bob", "b"),
            ])
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().message)
            .collect::<Vec<_>>();
        let crashed = tempfile::tempdir().unwrap();
        // The journals first: a flush between the copies then only means
        // the file copy already holds what a journal copy lost.
        for name in ["db.redb.journal.0", "db.redb.journal.1", "db.redb"] {
            std::fs::copy(live.path().join(name), crashed.path().join(name)).unwrap();
        }
        drop(s);

        let s = store(&crashed);
        assert_eq!(s.page_after("c", 0, 10).await.unwrap(), acked);
        let again = append_one(&s, new_message("c", "alice", "a")).await;
        assert!(again.duplicate);
        assert_eq!(again.message, acked[0]);
        let next = append_one(&s, new_message("c", "alice", "c")).await;
        assert_eq!(next.message.prev_id, acked[1].id);
    }
}

/// The Redis implementations, against the Redis at `SWITCHBOARD_TEST_REDIS_URL`
/// (default `redis://127.0.0.1:6379`; `infra/test.sh` starts one). Each test
/// works under its own key prefix.
mod redis_backend {
    use super::*;
    use host_gateway::backend::redis::{RedisPresence, RedisRouter};

    fn client() -> redis::Client {
        let url = std::env::var("SWITCHBOARD_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        redis::Client::open(url).unwrap()
    }

    fn prefix() -> String {
        format!("test{}:", rand::random::<u64>())
    }

    async fn presence() -> RedisPresence {
        let manager = client().get_connection_manager().await.expect(
            "no Redis at SWITCHBOARD_TEST_REDIS_URL: run infra/test.sh, or infra/redis.sh start",
        );
        RedisPresence::new(manager, prefix())
    }

    /// Presence contract on Redis.
    #[tokio::test]
    async fn presence_on_redis() {
        presence_contract(&presence().await).await;
        expiry_contract(&presence().await).await;
        throttle_contract(&presence().await).await;
    }

    /// Router contract on Redis (one gateway).
    #[tokio::test]
    async fn router_on_redis() {
        let router = RedisRouter::start(client(), prefix(), 0).await.unwrap();
        router_contract(&*router).await;
    }

    /// Two gateways: a delivery reaches users on both, with one publish per remote gateway.
    #[tokio::test]
    async fn delivery_crosses_gateways() {
        let prefix = prefix();
        let a = RedisRouter::start(client(), prefix.clone(), 1)
            .await
            .unwrap();
        let b = RedisRouter::start(client(), prefix, 2).await.unwrap();
        // Let both subscriptions settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (alice, mut alice_rx) = outbox();
        let (bob, mut bob_rx) = outbox();
        let (bob2, mut bob2_rx) = outbox();
        a.register("alice", (1 << 48) | 1, alice).await;
        b.register("bob", (2 << 48) | 1, bob).await;
        b.register("bob", (2 << 48) | 2, bob2).await;

        a.send_to_users(
            &["alice".into(), "bob".into()],
            "hello".into(),
            Some((2 << 48) | 2),
        )
        .await;
        assert_eq!(&*recv_within(&mut alice_rx).await, "hello");
        assert_eq!(&*recv_within(&mut bob_rx).await, "hello");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            bob2_rx.try_recv().is_err(),
            "the skipped device on the other gateway gets nothing"
        );

        // A connection on the other gateway, addressed directly.
        a.send_to_connection((2 << 48) | 2, "direct".into()).await;
        assert_eq!(&*recv_within(&mut bob2_rx).await, "direct");

        // Presence watchers anywhere hear about changes from anywhere.
        b.watch_presence((2 << 48) | 1, &["alice".into()]).await;
        a.send_to_watchers("alice", "alice is online".into()).await;
        assert_eq!(&*recv_within(&mut bob_rx).await, "alice is online");
    }
}

/// The Cassandra store, against the node at `SWITCHBOARD_TEST_CASSANDRA`
/// (default `127.0.0.1:9042`; `infra/test.sh` starts one). Each test works
/// in its own keyspace.
mod cassandra_backend {
    use super::*;
    use host_gateway::backend::cassandra::{CassandraConfig, CassandraStore, DEFAULT_BUCKET_MS};
    use host_gateway::ids::Snowflake;

    fn config(keyspace: &str, bucket_ms: i64) -> CassandraConfig {
        CassandraConfig {
            nodes: vec![
                std::env::var("SWITCHBOARD_TEST_CASSANDRA")
                    .unwrap_or_else(|_| "127.0.0.1:9042".into()),
            ],
            keyspace: keyspace.into(),
            replication_factor: 1,
            request_timeout: Duration::from_secs(10),
            bucket_ms,
        }
    }

    fn keyspace() -> String {
        format!("test_{}", rand::random::<u32>())
    }

    /// A store in `keyspace` acting as gateway `node`.
    async fn store_in(keyspace: &str, node: u16, bucket_ms: i64) -> CassandraStore {
        CassandraStore::connect(&config(keyspace, bucket_ms), Arc::new(Snowflake::new(node)))
            .await
            .expect("no Cassandra at SWITCHBOARD_TEST_CASSANDRA: run infra/test.sh, or infra/cassandra/cassandra.sh start")
    }

    /// Message store contract on Cassandra.
    #[tokio::test]
    async fn message_store() {
        let s = store_in(&keyspace(), 1, DEFAULT_BUCKET_MS).await;
        append_assigns_increasing_ids(&s).await;
        append_is_idempotent(&s).await;
        paging_both_ways(&s).await;
        receipts_are_monotone_watermarks(&s).await;
    }

    /// Chat directory contract on Cassandra.
    #[tokio::test]
    async fn chat_directory() {
        chat_directory_contract(&store_in(&keyspace(), 1, DEFAULT_BUCKET_MS).await).await;
    }

    /// With 50 ms buckets a chat spans many partitions: ids still increase,
    /// paging walks the buckets both ways, and a retry of a message from an
    /// earlier bucket is still recognised. (Buckets are numbered from the id
    /// epoch and clamped to i32: much narrower ones would all be the last.)
    #[tokio::test]
    async fn paging_walks_buckets() {
        const BUCKET_MS: i64 = 50;
        let s = store_in(&keyspace(), 1, BUCKET_MS).await;
        let mut ids = Vec::new();
        for i in 0..12 {
            let appended = append_one(&s, new_message("b", "alice", &format!("m{i}"))).await;
            ids.push(appended.message.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let mut buckets: Vec<i64> = ids
            .iter()
            .map(|&id| (host_gateway::ids::time_of(id) - host_gateway::ids::EPOCH_MS) / BUCKET_MS)
            .collect();
        buckets.dedup();
        assert!(
            buckets.len() >= 3,
            "the messages must span buckets: {buckets:?}"
        );
        let newest: Vec<u64> = s
            .page_before("b", None, 5)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(
            newest,
            ids.iter().rev().take(5).copied().collect::<Vec<_>>()
        );
        let older: Vec<u64> = s
            .page_before("b", Some(newest[4]), 100)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(older, ids.iter().rev().skip(5).copied().collect::<Vec<_>>());
        let forward: Vec<u64> = s
            .page_after("b", ids[2], 100)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(forward, ids[3..].to_vec());
        // The chain runs across buckets: a bucket's first message names the
        // last one of the bucket before.
        assert_chained(&s.page_after("b", 0, 100).await.unwrap());
        // The first message's bucket is long sealed; a retry of the last one
        // from the previous bucket is found there.
        let retry = append_one(&s, new_message("b", "alice", "m11")).await;
        assert!(retry.duplicate);
        assert_eq!(retry.message.id, ids[11]);
    }

    /// Two gateways writing one chat concurrently: every id is unique and
    /// increasing in commit order, so a reader following the chat by cursor
    /// while they write sees every message, none twice. Buckets of 200 ms
    /// make the writers cross several while racing. With 50 ms ones, an
    /// append took up to 14 rounds on a warm node, about half of them
    /// following the clock into a new bucket, and once on a just-started
    /// node in CI one ran out of rounds.
    #[tokio::test]
    async fn gateways_share_a_chat_in_commit_order() {
        let ks = keyspace();
        let a = Arc::new(store_in(&ks, 1, 200).await);
        let b = Arc::new(store_in(&ks, 2, 200).await);
        let reader = store_in(&ks, 3, 200).await;
        let writer = |store: Arc<CassandraStore>, who: &'static str| {
            tokio::spawn(async move {
                for i in 0..60 {
                    let batch = (0..(i % 3 + 1))
                        .map(|j| new_message("shared", who, &format!("{who}-{i}-{j}")))
                        .collect();
                    for result in store.append(batch).await.unwrap() {
                        assert!(!result.unwrap().duplicate);
                    }
                }
            })
        };
        let writers = [writer(a.clone(), "alice"), writer(b.clone(), "bob")];
        let mut seen = Vec::new();
        let mut cursor = 0;
        loop {
            let done = writers.iter().all(|w| w.is_finished());
            let page = reader.page_after("shared", cursor, 50).await.unwrap();
            if let Some(last) = page.last() {
                cursor = last.id;
            }
            seen.extend(page.into_iter().map(|m| m.client_msg_id));
            if done
                && reader
                    .page_after("shared", cursor, 1)
                    .await
                    .unwrap()
                    .is_empty()
            {
                break;
            }
        }
        for w in writers {
            w.await.unwrap();
        }
        let all = reader.page_after("shared", 0, 10_000).await.unwrap();
        assert_eq!(all.len(), 2 * (20 * (1 + 2 + 3)));
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        assert_chained(&all);
        let stored: Vec<String> = all.into_iter().map(|m| m.client_msg_id).collect();
        assert_eq!(
            seen, stored,
            "the follower saw every message once, in id order"
        );
    }

    /// The same message sent through two gateways at once is stored once;
    /// both get the same id back.
    #[tokio::test]
    async fn racing_retries_land_once() {
        let ks = keyspace();
        let a = store_in(&ks, 1, DEFAULT_BUCKET_MS).await;
        let b = store_in(&ks, 2, DEFAULT_BUCKET_MS).await;
        for i in 0..20 {
            let id = format!("r{i}");
            let (x, y) = tokio::join!(
                a.append(vec![new_message("race", "alice", &id)]),
                b.append(vec![new_message("race", "alice", &id)]),
            );
            let x = x.unwrap().remove(0).unwrap();
            let y = y.unwrap().remove(0).unwrap();
            assert_eq!(x.message.id, y.message.id);
            assert!(x.duplicate != y.duplicate, "exactly one of them stored it");
        }
        assert_eq!(a.page_after("race", 0, 100).await.unwrap().len(), 20);
    }
}
