//! Routing across gateways with Redis: a connection registry and Pub/Sub.
//!
//! Each gateway keeps its own connections in process (an `InProcessRouter`)
//! and records in Redis which users it holds: `route:{user}`, a sorted set of
//! gateway ids scored by expiry, refreshed while the user is connected.
//!
//! Delivery to N users: local connections are served directly; then one
//! PUBLISH per *other* gateway that holds any of the users, on that gateway's
//! channel `gw:{id}` — never one per recipient, never to every gateway.
//! Remote deliveries queue in order behind one task that looks up and
//! publishes whatever is queued in two pipelined round trips, so a fan-out
//! of many messages does not wait for two round trips per message.
//! Presence changes go to every gateway (`presence` channel), since watchers
//! can be anywhere. Pub/Sub is at most once: a gateway that misses a frame
//! leaves its clients to catch up from the store by cursor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::backend::embedded::InProcessRouter;
use crate::backend::{ConnectionId, Frame, Outbox, Router};
use crate::ids::now_ms;

/// How long a registry entry lives without a refresh.
const ROUTE_TTL: Duration = Duration::from_secs(30);

/// Remote deliveries queued before senders wait (backpressure when Redis is slow).
const REMOTE_QUEUE: usize = 16_384;
/// Most queued deliveries looked up and published in one pair of round trips.
const REMOTE_BATCH: usize = 512;

/// A delivery to users on other gateways, waiting for the remote task.
struct RemoteDelivery {
    users: Vec<String>,
    frame: Frame,
    skip: Option<ConnectionId>,
}

/// What travels between gateways.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "camelCase")]
enum Envelope {
    Users {
        users: Vec<String>,
        frame: String,
        skip: Option<ConnectionId>,
    },
    Connection {
        connection: ConnectionId,
        frame: String,
    },
    Watchers {
        user: String,
        frame: String,
    },
}

/// The gateway that owns a connection id (its node id is in the top bits).
pub fn gateway_of(connection: ConnectionId) -> u16 {
    (connection >> 48) as u16
}

/// Routing through Redis.
pub struct RedisRouter {
    local: Arc<InProcessRouter>,
    redis: ConnectionManager,
    prefix: String,
    gateway: u16,
    /// In arrival order, so a chat's pushes reach other gateways in order.
    remote: tokio::sync::mpsc::Sender<RemoteDelivery>,
}

impl std::fmt::Debug for RedisRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRouter")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl RedisRouter {
    /// Connects the router and starts its subscriber and registry refresher.
    pub async fn start(
        client: redis::Client,
        prefix: impl Into<String>,
        gateway: u16,
    ) -> anyhow::Result<Arc<Self>> {
        let redis = super::connect(&client).await?;
        let (remote, queue) = tokio::sync::mpsc::channel(REMOTE_QUEUE);
        let router = Arc::new(Self {
            local: Arc::new(InProcessRouter::default()),
            redis,
            prefix: prefix.into(),
            gateway,
            remote,
        });
        tokio::spawn(remote_deliveries(Arc::downgrade(&router), queue));
        let resubscribed = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(subscriber(client, router.clone(), resubscribed.clone()));
        tokio::spawn(refresher(Arc::downgrade(&router), resubscribed));
        Ok(router)
    }

    fn route_key(&self, user: &str) -> String {
        format!("{}route:{user}", self.prefix)
    }

    fn gateway_channel(&self, gateway: u16) -> String {
        format!("{}gw:{gateway}", self.prefix)
    }

    fn presence_channel(&self) -> String {
        format!("{}presence", self.prefix)
    }

    async fn publish(&self, channel: String, envelope: &Envelope) -> bool {
        let Ok(payload) = serde_json::to_string(envelope) else {
            return false;
        };
        let mut redis = self.redis.clone();
        let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut redis)
            .await;
        if let Err(e) = &sent {
            tracing::warn!(error = %e, "publish failed; remote clients will catch up by cursor");
            crate::metrics::backend_error();
        }
        sent.is_ok()
    }

    async fn advertise(&self, users: &[String]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        let expiry = now_ms() + ROUTE_TTL.as_millis() as i64;
        for user in users {
            let key = self.route_key(user);
            pipe.zadd(&key, self.gateway, expiry).ignore();
            pipe.pexpire(&key, ROUTE_TTL.as_millis() as i64 * 2)
                .ignore();
        }
        let mut redis = self.redis.clone();
        pipe.query_async(&mut redis).await
    }

    async fn deliver(&self, envelope: Envelope) {
        match envelope {
            Envelope::Users { users, frame, skip } => {
                self.local.send_to_users(&users, frame.into(), skip).await;
            }
            Envelope::Connection { connection, frame } => {
                self.local
                    .send_to_connection(connection, frame.into())
                    .await
            }
            Envelope::Watchers { user, frame } => {
                self.local.send_to_watchers(&user, frame.into()).await;
            }
        }
    }
}

#[async_trait]
impl Router for RedisRouter {
    async fn register(&self, user: &str, connection: ConnectionId, outbox: Outbox) {
        self.local.register(user, connection, outbox).await;
        if let Err(e) = self.advertise(std::slice::from_ref(&user.to_owned())).await {
            // The refresher retries; until then remote senders miss this user live.
            tracing::warn!(error = %e, "connection registry unavailable");
        }
    }

    async fn unregister(&self, user: &str, connection: ConnectionId) {
        self.local.unregister(user, connection).await;
        if !self.local.has_user(user) {
            let mut redis = self.redis.clone();
            let removed: redis::RedisResult<i64> = redis::cmd("ZREM")
                .arg(self.route_key(user))
                .arg(self.gateway)
                .query_async(&mut redis)
                .await;
            if let Err(e) = removed {
                tracing::debug!(error = %e, "registry cleanup failed; the entry expires");
            }
        }
    }

    async fn send_to_connection(&self, connection: ConnectionId, frame: Frame) {
        let gateway = gateway_of(connection);
        if gateway == self.gateway {
            self.local.send_to_connection(connection, frame).await;
        } else {
            let envelope = Envelope::Connection {
                connection,
                frame: frame.to_string(),
            };
            self.publish(self.gateway_channel(gateway), &envelope).await;
        }
    }

    async fn send_to_users(
        &self,
        users: &[String],
        frame: Frame,
        skip: Option<ConnectionId>,
    ) -> u32 {
        let reached = self.local.send_to_users(users, frame.clone(), skip).await;
        let delivery = RemoteDelivery {
            users: users.to_vec(),
            frame,
            skip,
        };
        // Fails only when the remote task is gone, i.e. the router is.
        let _ = self.remote.send(delivery).await;
        reached
    }

    async fn watch_presence(&self, connection: ConnectionId, users: &[String]) {
        self.local.watch_presence(connection, users).await;
    }

    async fn send_to_watchers(&self, user: &str, frame: Frame) -> u32 {
        let envelope = Envelope::Watchers {
            user: user.to_owned(),
            frame: frame.to_string(),
        };
        // Every gateway, this one included, delivers to its own watchers from
        // the channel; without Redis, at least the local ones are told.
        if !self.publish(self.presence_channel(), &envelope).await {
            return self.local.send_to_watchers(user, frame).await;
        }
        0
    }
}

/// Delivers queued frames to the other gateways that hold their users, in
/// queue order, a batch at a time: one pipelined round trip reads the
/// registry for every queued recipient, one more publishes every envelope
/// (a pipeline runs in order on one connection).
async fn remote_deliveries(
    router: std::sync::Weak<RedisRouter>,
    mut queue: tokio::sync::mpsc::Receiver<RemoteDelivery>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < REMOTE_BATCH {
            match queue.try_recv() {
                Ok(delivery) => batch.push(delivery),
                Err(_) => break,
            }
        }
        let Some(router) = router.upgrade() else {
            return;
        };
        let mut recipients: Vec<&str> = batch
            .iter()
            .flat_map(|d| d.users.iter().map(String::as_str))
            .collect();
        recipients.sort_unstable();
        recipients.dedup();
        let now = now_ms();
        let mut lookup = redis::pipe();
        for user in &recipients {
            lookup
                .cmd("ZRANGEBYSCORE")
                .arg(router.route_key(user))
                .arg(now)
                .arg("+inf");
        }
        let mut redis = router.redis.clone();
        let holders: Vec<Vec<u16>> = match lookup.query_async(&mut redis).await {
            Ok(holders) => holders,
            Err(e) => {
                tracing::warn!(error = %e, "connection registry unavailable; remote clients will catch up by cursor");
                crate::metrics::backend_error();
                continue;
            }
        };
        let holders: HashMap<&str, Vec<u16>> = recipients.into_iter().zip(holders).collect();
        let mut publish = redis::pipe();
        for delivery in &batch {
            // Sorted, so envelopes of one batch go out in a fixed order.
            let mut by_gateway: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
            for user in &delivery.users {
                for &gateway in holders.get(user.as_str()).into_iter().flatten() {
                    if gateway != router.gateway {
                        by_gateway.entry(gateway).or_default().push(user.clone());
                    }
                }
            }
            for (gateway, users) in by_gateway {
                let envelope = Envelope::Users {
                    users,
                    frame: delivery.frame.to_string(),
                    skip: delivery.skip,
                };
                if let Ok(payload) = serde_json::to_string(&envelope) {
                    publish
                        .cmd("PUBLISH")
                        .arg(router.gateway_channel(gateway))
                        .arg(payload)
                        .ignore();
                }
            }
        }
        if publish.is_empty() {
            continue;
        }
        if let Err(e) = publish.query_async::<()>(&mut redis).await {
            tracing::warn!(error = %e, "publish failed; remote clients will catch up by cursor");
            crate::metrics::backend_error();
        }
    }
}

/// Receives this gateway's channel and the presence channel, reconnecting
/// after Redis restarts; each (re)subscription wakes the refresher.
async fn subscriber(
    client: redis::Client,
    router: Arc<RedisRouter>,
    resubscribed: Arc<tokio::sync::Notify>,
) {
    let channels = [
        router.gateway_channel(router.gateway),
        router.presence_channel(),
    ];
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                let mut subscribed = true;
                for channel in &channels {
                    subscribed &= pubsub.subscribe(channel).await.is_ok();
                }
                if subscribed {
                    tracing::info!(gateway = router.gateway, "subscribed to gateway channels");
                    // The Redis now answering may have lost its data (a
                    // restart): re-advertise our users at once, not at the next tick.
                    resubscribed.notify_one();
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else {
                            continue;
                        };
                        match serde_json::from_str::<Envelope>(&payload) {
                            Ok(envelope) => router.deliver(envelope).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "malformed envelope on the gateway channel")
                            }
                        }
                    }
                    tracing::warn!("lost the Redis subscription; reconnecting");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Re-advertises this gateway's users well within the registry TTL, and
/// right after a resubscription, which rebuilds the registry after Redis
/// lost its data.
async fn refresher(router: std::sync::Weak<RedisRouter>, resubscribed: Arc<tokio::sync::Notify>) {
    let mut tick = tokio::time::interval(ROUTE_TTL / 3);
    // After a failed refresh (a connection broken by the restart that
    // woke us), try again shortly rather than a whole tick later.
    let mut retry_soon = false;
    loop {
        let retry = async {
            if retry_soon {
                tokio::time::sleep(Duration::from_millis(250)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            () = resubscribed.notified() => {}
            () = retry => {}
        }
        let Some(router) = router.upgrade() else {
            return;
        };
        let failing = retry_soon;
        retry_soon = false;
        let users = router.local.users();
        for chunk in users.chunks(500) {
            if let Err(e) = router.advertise(chunk).await {
                // Once per outage at warn level; the retries stay quiet.
                if failing {
                    tracing::debug!(error = %e, "refreshing the connection registry failed again");
                } else {
                    tracing::warn!(error = %e, "refreshing the connection registry failed");
                }
                retry_soon = true;
                break;
            }
        }
    }
}
