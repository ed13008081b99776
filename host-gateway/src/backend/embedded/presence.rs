//! Presence in process: each connection of a user holds a lease that a
//! heartbeat renews; the user is online while any lease is unexpired.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::backend::{ConnectionId, Presence, PresenceStore, StoreResult};
use crate::ids::now_ms;

#[derive(Debug, Default)]
struct UserPresence {
    /// connection -> lease expiry (ms since the Unix epoch).
    leases: HashMap<ConnectionId, i64>,
    last_seen: i64,
    /// Online as far as anyone was told: set when a heartbeat brings the
    /// user online, cleared when going offline is reported (by the last
    /// disconnect, or by `take_expired`), so each expiry is reported once.
    online: bool,
}

impl UserPresence {
    fn prune(&mut self, now: i64) {
        self.leases.retain(|_, expires| *expires > now);
    }
}

/// In-process presence. Plain mutexes: every operation is a few map updates.
#[derive(Debug, Default)]
pub struct InProcessPresence {
    users: Mutex<HashMap<String, UserPresence>>,
    /// Throttle key -> mark expiry (ms since the Unix epoch).
    marks: Mutex<HashMap<String, i64>>,
}

impl InProcessPresence {
    fn with_users<T>(&self, f: impl FnOnce(&mut HashMap<String, UserPresence>) -> T) -> T {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut users)
    }
}

#[async_trait]
impl PresenceStore for InProcessPresence {
    async fn heartbeat(
        &self,
        user: &str,
        connection: ConnectionId,
        ttl_ms: u64,
    ) -> StoreResult<bool> {
        let now = now_ms();
        Ok(self.with_users(|users| {
            let entry = users.entry(user.to_owned()).or_default();
            entry.prune(now);
            let was_offline = entry.leases.is_empty();
            entry.leases.insert(connection, now + ttl_ms as i64);
            entry.last_seen = now;
            entry.online = true;
            was_offline
        }))
    }

    async fn disconnect(&self, user: &str, connection: ConnectionId) -> StoreResult<bool> {
        let now = now_ms();
        Ok(self.with_users(|users| {
            let Some(entry) = users.get_mut(user) else {
                return false;
            };
            entry.prune(now);
            let held = entry.leases.remove(&connection).is_some();
            if held {
                entry.last_seen = now;
            }
            let went_offline = held && entry.leases.is_empty();
            if went_offline {
                entry.online = false;
            }
            went_offline
        }))
    }

    async fn query(&self, wanted: &[String]) -> StoreResult<Vec<Presence>> {
        let now = now_ms();
        Ok(self.with_users(|users| {
            wanted
                .iter()
                .map(|user| {
                    let (online, last_seen) = users.get(user).map_or((false, 0), |p| {
                        let online = p.leases.values().any(|expires| *expires > now);
                        // An expired lease's holder was last seen at its last heartbeat.
                        (online, p.last_seen)
                    });
                    Presence {
                        user_id: user.clone(),
                        online,
                        last_seen,
                    }
                })
                .collect()
        }))
    }

    async fn take_expired(&self) -> StoreResult<Vec<Presence>> {
        let now = now_ms();
        Ok(self.with_users(|users| {
            let mut expired = Vec::new();
            for (user, entry) in users.iter_mut().filter(|(_, p)| p.online) {
                entry.prune(now);
                if entry.leases.is_empty() {
                    entry.online = false;
                    expired.push(Presence {
                        user_id: user.clone(),
                        online: false,
                        last_seen: entry.last_seen,
                    });
                }
            }
            expired
        }))
    }

    async fn throttle(&self, key: &str, window_ms: u64) -> StoreResult<bool> {
        let now = now_ms();
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        // Drop stale marks now and then so the map stays the size of the live ones.
        if marks.len() > 10_000 {
            marks.retain(|_, until| *until > now);
        }
        match marks.get(key) {
            Some(until) if *until > now => Ok(false),
            _ => {
                marks.insert(key.to_owned(), now + window_ms as i64);
                Ok(true)
            }
        }
    }
}
