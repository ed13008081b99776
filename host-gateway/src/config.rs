//! Gateway configuration, from flags or `SWITCHBOARD_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `switchboard serve` can be told.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on for WebSocket and HTTP.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where the embedded backend keeps its files (and the generated JWT secret).
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "switchboard-data")]
    pub data_dir: PathBuf,

    /// HS256 secret for client tokens (at least 16 bytes). When unset, one is
    /// generated once and kept in the data directory.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// How long a heartbeat keeps a user online.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_TTL_SECS", default_value_t = 60)]
    pub presence_ttl_secs: u64,

    /// How often clients should heartbeat; the server also pings idle sockets this often.
    #[arg(
        long,
        env = "SWITCHBOARD_HEARTBEAT_INTERVAL_SECS",
        default_value_t = 30
    )]
    pub heartbeat_interval_secs: u64,

    /// Largest WebSocket frame (and message) accepted; larger ones close the socket with 1009.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Largest message content in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_CONTENT_BYTES", default_value_t = 4096)]
    pub max_content_bytes: u32,

    /// Load `<name>.wasm` components from this directory instead of the embedded
    /// ones (`-` in a name as `_`, as cargo writes it: `presence_query.wasm`).
    #[arg(long, env = "SWITCHBOARD_COMPONENTS_DIR")]
    pub components_dir: Option<PathBuf>,

    /// Wall-time limit of one component invocation, host calls included.
    #[arg(long, env = "SWITCHBOARD_COMPONENT_TIMEOUT_MS", default_value_t = 5000)]
    pub component_timeout_ms: u64,

    /// Linear-memory limit of one component instance, in MiB.
    #[arg(long, env = "SWITCHBOARD_COMPONENT_MEMORY_MIB", default_value_t = 32)]
    pub component_memory_mib: usize,

    /// This gateway's id (0-1023), unique among gateways: it is part of every id issued here.
    #[arg(long, env = "SWITCHBOARD_NODE_ID", default_value_t = 0)]
    pub node_id: u16,

    /// Where state lives: `embedded` (one process, files in the data
    /// directory) or `cluster` (Redis + Cassandra, any number of gateways).
    #[arg(long, env = "SWITCHBOARD_BACKEND", value_enum, default_value_t = BackendKind::Embedded)]
    pub backend: BackendKind,

    /// Cluster backend: Redis for presence, the connection registry and routing.
    #[arg(
        long,
        env = "SWITCHBOARD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Cluster backend: prefix of every Redis key and channel (several deployments can share a Redis).
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = "switchboard:")]
    pub redis_prefix: String,

    /// Cluster backend: Cassandra contact points, `host:port`, comma-separated.
    #[arg(
        long,
        env = "SWITCHBOARD_CASSANDRA_NODES",
        default_value = "127.0.0.1:9042",
        value_delimiter = ','
    )]
    pub cassandra_nodes: Vec<String>,

    /// Cluster backend: the keyspace (created with SimpleStrategy if missing).
    #[arg(
        long,
        env = "SWITCHBOARD_CASSANDRA_KEYSPACE",
        default_value = "switchboard"
    )]
    pub cassandra_keyspace: String,

    /// Cluster backend: replication factor used when creating the keyspace.
    #[arg(
        long,
        env = "SWITCHBOARD_CASSANDRA_REPLICATION_FACTOR",
        default_value_t = 1
    )]
    pub cassandra_replication_factor: u32,

    /// Cluster backend: client-side timeout of one Cassandra request.
    #[arg(long, env = "SWITCHBOARD_CASSANDRA_TIMEOUT_MS", default_value_t = 3000)]
    pub cassandra_timeout_ms: u64,

    /// Parallel dispatch lanes; frames of one chat always share a lane,
    /// which keeps them in order. Default: one per two cores on the
    /// embedded backend, four on the cluster.
    #[arg(long, env = "SWITCHBOARD_DISPATCH_LANES")]
    pub dispatch_lanes: Option<usize>,

    /// Serve the internal store API (`/internal/v1/`, for HTTP components
    /// running on Spin) to callers with this bearer token, at least 32
    /// bytes. Off when unset.
    #[arg(long, env = "SWITCHBOARD_STORE_API_TOKEN", hide_env_values = true)]
    pub store_api_token: Option<String>,
}

/// Which backends a gateway runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// redb files in the data directory; presence and routing in process.
    Embedded,
    /// Redis (presence, registry, Pub/Sub) and Cassandra (messages, chats).
    Cluster,
}

impl Config {
    /// Dispatch lanes to run: as configured, else one per two cores on the
    /// embedded backend and four on the cluster.
    ///
    /// Embedded, a lane's cost is CPU: a saturated lane keeps about one
    /// core busy running `send`, the other cores go to sockets, fan-out and
    /// the store writer, and each lane pays its own invocations, wake-ups
    /// and store round trip per batch. More lanes on few cores only split
    /// the same frames into smaller batches: on two cores, four lanes used
    /// 10-30% more CPU than one at the same message rate. On the cluster a
    /// batch waits tens of milliseconds on Cassandra transactions, and
    /// lanes are what overlaps them: one lane doubled the median latency
    /// at 1,000 msg/s against four (docs/benchmarks.md).
    pub fn lanes(&self) -> usize {
        self.dispatch_lanes
            .unwrap_or_else(|| match self.backend {
                BackendKind::Embedded => {
                    std::thread::available_parallelism().map_or(1, |cores| cores.get() / 2)
                }
                BackendKind::Cluster => 4,
            })
            .max(1)
    }
}
