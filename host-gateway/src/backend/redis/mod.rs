//! The Redis side of the cluster backend: presence with TTLs and routing
//! across gateways (connection registry and Pub/Sub).

mod presence;
mod router;

pub use presence::RedisPresence;
pub use router::{RedisRouter, gateway_of};

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A connection for commands that fails fast while Redis is down. Presence
/// and routing are best effort (delivery is at most once; clients catch up
/// by cursor), so a Redis outage must not hold a dispatch lane: the
/// default reconnect schedule (6 retries, exponential) stalled each send
/// ~9 s in the Redis-restart fault test.
pub async fn connect(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    client.get_connection_manager_with_config(config).await
}
