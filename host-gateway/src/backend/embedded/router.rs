//! Routing in process: every connection of every user is local.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use async_trait::async_trait;

use crate::backend::{ConnectionId, Frame, Outbox, Router};

#[derive(Debug, Default)]
struct Registry {
    by_user: HashMap<String, Vec<ConnectionId>>,
    outboxes: HashMap<ConnectionId, Outbox>,
    /// Watched user -> watching connections.
    watchers: HashMap<String, HashSet<ConnectionId>>,
    /// Watching connection -> watched users, to drop its watches when it closes.
    watching: HashMap<ConnectionId, HashSet<String>>,
}

/// In-process router. A read-write lock: deliveries (reads) vastly outnumber
/// connects and disconnects, and pushing to an outbox never blocks.
#[derive(Debug, Default)]
pub struct InProcessRouter {
    registry: RwLock<Registry>,
}

impl InProcessRouter {
    /// Whether `user` has a connection here.
    pub fn has_user(&self, user: &str) -> bool {
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        reg.by_user.contains_key(user)
    }

    /// The users with a connection here.
    pub fn users(&self) -> Vec<String> {
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        reg.by_user.keys().cloned().collect()
    }
}

#[async_trait]
impl Router for InProcessRouter {
    async fn register(&self, user: &str, connection: ConnectionId, outbox: Outbox) {
        let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
        reg.by_user
            .entry(user.to_owned())
            .or_default()
            .push(connection);
        reg.outboxes.insert(connection, outbox);
    }

    async fn unregister(&self, user: &str, connection: ConnectionId) {
        let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = reg.by_user.get_mut(user) {
            conns.retain(|c| *c != connection);
            if conns.is_empty() {
                reg.by_user.remove(user);
            }
        }
        reg.outboxes.remove(&connection);
        for watched in reg.watching.remove(&connection).unwrap_or_default() {
            if let Some(set) = reg.watchers.get_mut(&watched) {
                set.remove(&connection);
                if set.is_empty() {
                    reg.watchers.remove(&watched);
                }
            }
        }
    }

    async fn send_to_connection(&self, connection: ConnectionId, frame: Frame) {
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        if let Some(outbox) = reg.outboxes.get(&connection) {
            outbox.push(frame);
        }
    }

    async fn send_to_users(
        &self,
        users: &[String],
        frame: Frame,
        skip: Option<ConnectionId>,
    ) -> u32 {
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        let mut reached = 0;
        for user in users {
            for conn in reg.by_user.get(user).into_iter().flatten() {
                if Some(*conn) == skip {
                    continue;
                }
                if let Some(outbox) = reg.outboxes.get(conn)
                    && outbox.push(frame.clone())
                {
                    reached += 1;
                }
            }
        }
        reached
    }

    async fn watch_presence(&self, connection: ConnectionId, users: &[String]) {
        let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
        if !reg.outboxes.contains_key(&connection) {
            return;
        }
        for user in users {
            reg.watchers
                .entry(user.clone())
                .or_default()
                .insert(connection);
            reg.watching
                .entry(connection)
                .or_default()
                .insert(user.clone());
        }
    }

    async fn send_to_watchers(&self, user: &str, frame: Frame) -> u32 {
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        let mut reached = 0;
        for conn in reg.watchers.get(user).into_iter().flatten() {
            if let Some(outbox) = reg.outboxes.get(conn)
                && outbox.push(frame.clone())
            {
                reached += 1;
            }
        }
        reached
    }
}
