//! The Redis side of the cluster backend: presence with TTLs and routing
//! across gateways (connection registry and Pub/Sub).

mod presence;
mod router;

pub use presence::RedisPresence;
pub use router::{RedisRouter, gateway_of};
