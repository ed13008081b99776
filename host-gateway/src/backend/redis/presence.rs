//! Presence in Redis, shared by every gateway.
//!
//! Keys (all under a configurable prefix, `sb:` by default):
//! - `presence:{user}:leases`: sorted set, connection id -> lease expiry (ms).
//!   Expires as a whole (PEXPIRE) a TTL after the last heartbeat, so a
//!   vanished gateway leaves nothing behind.
//! - `presence:{user}:last`: last heartbeat or disconnect (ms).
//! - `presence:online`: sorted set, user -> latest lease expiry, for finding
//!   expiries. A user leaves it once, atomically, so exactly one gateway
//!   reports each expiry.
//! - `throttle:{key}`: `SET NX PX` marks.
//!
//! Each operation is one Lua script: atomic without locks, one round trip.
//! If Redis loses its data, presence rebuilds itself: every connected client
//! heartbeats within a TTL, and each heartbeat re-creates its lease.

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::backend::{ConnectionId, Presence, PresenceStore, StoreError, StoreResult};
use crate::ids::now_ms;

/// Presence in Redis.
#[derive(Clone)]
pub struct RedisPresence {
    redis: ConnectionManager,
    prefix: String,
    heartbeat: Script,
    disconnect: Script,
    query: Script,
    take_expired: Script,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

pub(super) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// KEYS: leases, last, online. ARGV: connection, now, ttl, user.
/// Returns 1 when the user had no live lease before.
const HEARTBEAT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local was_offline = redis.call('ZCARD', KEYS[1]) == 0
local expiry = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 'GT', expiry, ARGV[4])
if was_offline then return 1 else return 0 end
";

/// KEYS: leases, last, online. ARGV: connection, now, user.
/// Returns 1 when this was the user's last live lease.
const DISCONNECT: &str = r"
local held = redis.call('ZREM', KEYS[1], ARGV[1]) == 1
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if held then redis.call('SET', KEYS[2], ARGV[2]) end
if held and redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[3])
  return 1
end
return 0
";

/// KEYS: leases, last. ARGV: now. Returns {online 0/1, last seen or 0}.
const QUERY: &str = r"
local live = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
local last = redis.call('GET', KEYS[2])
return {live > 0 and 1 or 0, tonumber(last or '0')}
";

/// KEYS: online. ARGV: now, prefix, max. Returns {user, last seen, ...} for
/// users whose latest lease expired, removing them from `online`.
const TAKE_EXPIRED: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, user in ipairs(due) do
  local leases = ARGV[2] .. 'presence:' .. user .. ':leases'
  if redis.call('ZCOUNT', leases, '(' .. ARGV[1], '+inf') == 0 then
    redis.call('ZREM', KEYS[1], user)
    local last = redis.call('GET', ARGV[2] .. 'presence:' .. user .. ':last')
    table.insert(out, user)
    table.insert(out, tonumber(last or '0'))
  end
end
return out
";

impl RedisPresence {
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            heartbeat: Script::new(HEARTBEAT),
            disconnect: Script::new(DISCONNECT),
            query: Script::new(QUERY),
            take_expired: Script::new(TAKE_EXPIRED),
        }
    }

    fn leases(&self, user: &str) -> String {
        format!("{}presence:{user}:leases", self.prefix)
    }

    fn last(&self, user: &str) -> String {
        format!("{}presence:{user}:last", self.prefix)
    }

    fn online(&self) -> String {
        format!("{}presence:online", self.prefix)
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn heartbeat(
        &self,
        user: &str,
        connection: ConnectionId,
        ttl_ms: u64,
    ) -> StoreResult<bool> {
        let mut redis = self.redis.clone();
        let came_online: i64 = self
            .heartbeat
            .key(self.leases(user))
            .key(self.last(user))
            .key(self.online())
            .arg(connection)
            .arg(now_ms())
            .arg(ttl_ms.max(1))
            .arg(user)
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        Ok(came_online == 1)
    }

    async fn disconnect(&self, user: &str, connection: ConnectionId) -> StoreResult<bool> {
        let mut redis = self.redis.clone();
        let went_offline: i64 = self
            .disconnect
            .key(self.leases(user))
            .key(self.last(user))
            .key(self.online())
            .arg(connection)
            .arg(now_ms())
            .arg(user)
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        Ok(went_offline == 1)
    }

    async fn query(&self, users: &[String]) -> StoreResult<Vec<Presence>> {
        let mut redis = self.redis.clone();
        let now = now_ms();
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let (online, last_seen): (i64, i64) = self
                .query
                .key(self.leases(user))
                .key(self.last(user))
                .arg(now)
                .invoke_async(&mut redis)
                .await
                .map_err(unavailable)?;
            out.push(Presence {
                user_id: user.clone(),
                online: online == 1,
                last_seen,
            });
        }
        Ok(out)
    }

    async fn take_expired(&self) -> StoreResult<Vec<Presence>> {
        let mut redis = self.redis.clone();
        let flat: Vec<redis::Value> = self
            .take_expired
            .key(self.online())
            .arg(now_ms())
            .arg(&self.prefix)
            .arg(1000)
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [user, last] = pair else { break };
            let user: String = redis::from_redis_value(user.clone())
                .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
            let last_seen: i64 = redis::from_redis_value(last.clone())
                .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
            out.push(Presence {
                user_id: user,
                online: false,
                last_seen,
            });
        }
        Ok(out)
    }

    async fn throttle(&self, key: &str, window_ms: u64) -> StoreResult<bool> {
        let mut redis = self.redis.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}throttle:{key}", self.prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(window_ms.max(1))
            .query_async(&mut redis)
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }
}

#[async_trait]
impl crate::backend::Probe for RedisPresence {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut redis)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
