//! The embedded backend: no server needed. Messages, receipts and chats are
//! durable in a redb file under the data directory; presence and routing
//! live in this process (one gateway has every connection).

mod journal;
mod presence;
mod router;
mod runs;
mod store;
mod unflushed;

pub use presence::InProcessPresence;
pub use router::InProcessRouter;
pub use store::EmbeddedStore;

use std::path::Path;
use std::sync::Arc;

use crate::backend::Backends;
use crate::ids::Snowflake;

/// Opens the embedded backends with their files under `data_dir`.
pub fn open(data_dir: &Path, ids: Arc<Snowflake>) -> anyhow::Result<Backends> {
    let store = Arc::new(EmbeddedStore::open(
        &data_dir.join("switchboard.redb"),
        ids,
    )?);
    Ok(Backends {
        messages: store.clone(),
        chats: store.clone(),
        presence: Arc::new(InProcessPresence::default()),
        router: Arc::new(InProcessRouter::default()),
        probes: vec![store],
    })
}
