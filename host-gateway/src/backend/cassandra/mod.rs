//! The Cassandra side of the cluster backend: messages, receipts and chats
//! in Apache Cassandra 5.0 or ScyllaDB, through the `scylla` driver (CQL v4).
//!
//! The schema and why it looks the way it does are in docs/cassandra.md;
//! in short:
//! - `chat_log` holds a chat's messages in one partition per (chat, time
//!   bucket), newest first, plus the bucket's `head` (a static column: the
//!   last id committed there) and one claim row per (sender, client msg id).
//!   A batch of messages is committed by one lightweight transaction on that
//!   partition that moves `head`, writes the rows and the claims together:
//!   ids are issued by the chat's partition itself, so id order is commit
//!   order across any number of gateways, and a retry (even one racing the
//!   original) lands exactly once.
//! - `chat_buckets` lists a chat's buckets, so paging walks them.
//! - `receipts` holds monotone watermarks written `USING TIMESTAMP` equal to
//!   the watermark: the highest mark wins however writes interleave.
//! - `chats` and `user_chats` hold chats and the per-user index.
//!
//! Every statement is prepared once at start-up. Consistency is
//! LOCAL_QUORUM, and LOCAL_SERIAL for the transactions.

mod chats;
mod messages;

use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

use crate::backend::{StoreError, StoreResult};
use crate::ids::Snowflake;

pub use messages::DEFAULT_BUCKET_MS;

/// How to reach Cassandra and where the data lives.
#[derive(Debug, Clone)]
pub struct CassandraConfig {
    /// `host:port` of one or more contact points.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// Used only when the keyspace does not exist yet (SimpleStrategy);
    /// production clusters create it themselves, per data centre.
    pub replication_factor: u32,
    /// Client-side limit of one request; a paused or dead node surfaces as
    /// an error to the sender after this long, never as a false ack.
    pub request_timeout: Duration,
    /// Width of a message bucket: a chat's partition holds this much time.
    pub bucket_ms: i64,
}

/// The Cassandra store; implements `MessageStore` and `ChatDirectory`.
pub struct CassandraStore {
    session: Arc<Session>,
    ids: Arc<Snowflake>,
    statements: Statements,
    bucket_ms: i64,
    heads: messages::HeadCache,
}

impl std::fmt::Debug for CassandraStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraStore")
            .field("bucket_ms", &self.bucket_ms)
            .finish_non_exhaustive()
    }
}

impl CassandraStore {
    /// Connects, creates the schema if missing, and prepares every statement.
    pub async fn connect(config: &CassandraConfig, ids: Arc<Snowflake>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(config.request_timeout))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .connection_timeout(Duration::from_secs(5))
            .build()
            .await
            .with_context(|| format!("connecting to Cassandra at {}", config.nodes.join(",")))?;
        migrate(&session, &config.keyspace, config.replication_factor)
            .await
            .context("creating the Cassandra schema")?;
        let statements = Statements::prepare(&session, &config.keyspace)
            .await
            .context("preparing Cassandra statements")?;
        Ok(Self {
            session: Arc::new(session),
            ids,
            statements,
            bucket_ms: config.bucket_ms.max(1),
            heads: messages::HeadCache::default(),
        })
    }
}

#[async_trait::async_trait]
impl crate::backend::Probe for CassandraStore {
    fn name(&self) -> &'static str {
        "cassandra"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.statements.ping, ())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// The schema, created idempotently. Names and layout are documented in
/// docs/cassandra.md; change both together.
fn schema(keyspace: &str, replication_factor: u32) -> Vec<String> {
    vec![
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
        ),
        // entry 0: a message at (message_id, ''); entry 1: a claim at
        // (0, client_key) naming the message (claimed_id) that a
        // (sender, client msg id) produced.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.chat_log (\
               chat_id text, bucket int, entry tinyint, message_id bigint, client_key text, \
               sender_id text, client_msg_id text, content text, sent_at bigint, \
               prev_id bigint, claimed_id bigint, head bigint static, \
               PRIMARY KEY ((chat_id, bucket), entry, message_id, client_key)) \
             WITH CLUSTERING ORDER BY (entry ASC, message_id DESC, client_key ASC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.chat_buckets (\
               chat_id text, bucket int, PRIMARY KEY (chat_id, bucket)) \
             WITH CLUSTERING ORDER BY (bucket DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.receipts (\
               chat_id text, user_id text, delivered_up_to bigint, read_up_to bigint, \
               PRIMARY KEY (chat_id, user_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.chats (\
               chat_id text PRIMARY KEY, kind text, name text, members list<text>, \
               admins list<text>, created_at bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.user_chats (\
               user_id text, chat_id text, PRIMARY KEY (user_id, chat_id))"
        ),
    ]
}

/// How long one schema statement may take.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

async fn migrate(session: &Session, keyspace: &str, replication_factor: u32) -> anyhow::Result<()> {
    anyhow::ensure!(
        !keyspace.is_empty()
            && keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "keyspace name {keyspace:?} must be letters, digits and _"
    );
    for ddl in schema(keyspace, replication_factor) {
        // Schema changes take far longer than reads and writes (seconds on a
        // busy node with many tables): not bound by the request timeout.
        let mut statement = scylla::statement::Statement::new(ddl);
        statement.set_request_timeout(Some(DDL_TIMEOUT));
        session.query_unpaged(statement, ()).await?;
    }
    session.await_schema_agreement().await?;
    Ok(())
}

/// Every statement the store runs, prepared once.
struct Statements {
    ping: PreparedStatement,
    // chat_log and chat_buckets
    head: PreparedStatement,
    newest_buckets: PreparedStatement,
    add_bucket: PreparedStatement,
    buckets_down_from: PreparedStatement,
    buckets_up_from: PreparedStatement,
    seal: PreparedStatement,
    move_head: PreparedStatement,
    insert_message: PreparedStatement,
    insert_claim: PreparedStatement,
    claims: PreparedStatement,
    get_message: PreparedStatement,
    page_down: PreparedStatement,
    page_up: PreparedStatement,
    // receipts
    receipt: PreparedStatement,
    receipts: PreparedStatement,
    mark_delivered: PreparedStatement,
    mark_read: PreparedStatement,
    // chats
    get_chat: PreparedStatement,
    create_chat: PreparedStatement,
    update_members: PreparedStatement,
    index_chat: PreparedStatement,
    unindex_chat: PreparedStatement,
    chats_of: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Self, scylla::errors::PrepareError> {
        let p = |cql: String| async move { session.prepare(cql).await };
        const MESSAGE_COLUMNS: &str =
            "message_id, sender_id, client_msg_id, content, sent_at, prev_id";
        Ok(Self {
            ping: p("SELECT release_version FROM system.local".into()).await?,
            head: p(format!(
                "SELECT head FROM {ks}.chat_log WHERE chat_id = ? AND bucket = ? LIMIT 1"
            ))
            .await?,
            newest_buckets: p(format!(
                "SELECT bucket FROM {ks}.chat_buckets WHERE chat_id = ? LIMIT 2"
            ))
            .await?,
            add_bucket: p(format!(
                "INSERT INTO {ks}.chat_buckets (chat_id, bucket) VALUES (?, ?)"
            ))
            .await?,
            buckets_down_from: p(format!(
                "SELECT bucket FROM {ks}.chat_buckets WHERE chat_id = ? AND bucket <= ?"
            ))
            .await?,
            buckets_up_from: p(format!(
                "SELECT bucket FROM {ks}.chat_buckets WHERE chat_id = ? AND bucket >= ? \
                 ORDER BY bucket ASC"
            ))
            .await?,
            seal: p(format!(
                "UPDATE {ks}.chat_log SET head = -1 WHERE chat_id = ? AND bucket = ? IF head = ?"
            ))
            .await?,
            move_head: p(format!(
                "UPDATE {ks}.chat_log SET head = ? WHERE chat_id = ? AND bucket = ? IF head = ?"
            ))
            .await?,
            insert_message: p(format!(
                "INSERT INTO {ks}.chat_log (chat_id, bucket, entry, message_id, client_key, \
                 sender_id, client_msg_id, content, sent_at, prev_id) \
                 VALUES (?, ?, 0, ?, '', ?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_claim: p(format!(
                "INSERT INTO {ks}.chat_log (chat_id, bucket, entry, message_id, client_key, \
                 claimed_id) VALUES (?, ?, 1, 0, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            claims: p(format!(
                "SELECT client_key, claimed_id FROM {ks}.chat_log WHERE chat_id = ? AND \
                 bucket = ? AND entry = 1 AND message_id = 0 AND client_key IN ?"
            ))
            .await?,
            get_message: p(format!(
                "SELECT {MESSAGE_COLUMNS} FROM {ks}.chat_log WHERE chat_id = ? AND bucket = ? \
                 AND entry = 0 AND message_id = ? AND client_key = ''"
            ))
            .await?,
            page_down: p(format!(
                "SELECT {MESSAGE_COLUMNS} FROM {ks}.chat_log WHERE chat_id = ? AND bucket = ? \
                 AND entry = 0 AND message_id < ? LIMIT ?"
            ))
            .await?,
            page_up: p(format!(
                "SELECT {MESSAGE_COLUMNS} FROM {ks}.chat_log WHERE chat_id = ? AND bucket = ? \
                 AND entry = 0 AND message_id > ? ORDER BY entry DESC, message_id ASC LIMIT ?"
            ))
            .await?,
            receipt: p(format!(
                "SELECT delivered_up_to, read_up_to FROM {ks}.receipts \
                 WHERE chat_id = ? AND user_id = ?"
            ))
            .await?,
            receipts: p(format!(
                "SELECT user_id, delivered_up_to, read_up_to FROM {ks}.receipts WHERE chat_id = ?"
            ))
            .await?,
            mark_delivered: p(format!(
                "UPDATE {ks}.receipts USING TIMESTAMP ? SET delivered_up_to = ? \
                 WHERE chat_id = ? AND user_id = ?"
            ))
            .await?,
            mark_read: p(format!(
                "UPDATE {ks}.receipts USING TIMESTAMP ? SET delivered_up_to = ?, read_up_to = ? \
                 WHERE chat_id = ? AND user_id = ?"
            ))
            .await?,
            get_chat: p(format!(
                "SELECT chat_id, kind, name, members, admins, created_at FROM {ks}.chats \
                 WHERE chat_id = ?"
            ))
            .await?,
            create_chat: p(format!(
                "INSERT INTO {ks}.chats (chat_id, kind, name, members, admins, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            update_members: p(format!(
                "UPDATE {ks}.chats SET members = ?, admins = ? WHERE chat_id = ? IF members = ?"
            ))
            .await?,
            index_chat: p(format!(
                "INSERT INTO {ks}.user_chats (user_id, chat_id) VALUES (?, ?)"
            ))
            .await?,
            unindex_chat: p(format!(
                "DELETE FROM {ks}.user_chats WHERE user_id = ? AND chat_id = ?"
            ))
            .await?,
            chats_of: p(format!(
                "SELECT chat_id FROM {ks}.user_chats WHERE user_id = ?"
            ))
            .await?,
        })
    }
}

/// Whether a lightweight transaction applied.
fn applied(result: QueryResult) -> StoreResult<bool> {
    let rows = result.into_rows_result().map_err(unavailable)?;
    let Some((index, _)) = rows.column_specs().get_by_name("[applied]") else {
        return Err(unavailable("transaction result without [applied]"));
    };
    let first = rows.maybe_first_row::<Row>().map_err(unavailable)?;
    Ok(matches!(
        first.and_then(|row| row.columns.into_iter().nth(index).flatten()),
        Some(CqlValue::Boolean(true))
    ))
}

/// A driver error: the backend did not answer as it should. Counted, and
/// logged by the caller with context.
fn unavailable(error: impl std::fmt::Display) -> StoreError {
    crate::metrics::backend_error();
    StoreError::Unavailable(format!("cassandra: {error}"))
}
