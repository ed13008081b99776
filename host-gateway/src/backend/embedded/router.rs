//! Routing in process: every connection of every user is local.

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;

use crate::backend::{ConnectionId, Frame, Outbox, Router};

#[derive(Debug, Default)]
struct Registry {
    by_user: HashMap<String, Vec<ConnectionId>>,
    outboxes: HashMap<ConnectionId, Outbox>,
}

/// In-process router. A read-write lock: deliveries (reads) vastly outnumber
/// connects and disconnects, and pushing to an outbox never blocks.
#[derive(Debug, Default)]
pub struct InProcessRouter {
    registry: RwLock<Registry>,
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
}
