use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Turnpike counter: atomic check-and-consume of tenant quotas in Redis.
#[derive(Debug, Clone, Parser)]
#[command(name = "turnpike-counter", version)]
pub struct Cli {
    /// Address to serve HTTP/1.1 and h2c on.
    #[arg(
        long,
        env = "TURNPIKE_COUNTER_LISTEN",
        required_unless_present = "validate"
    )]
    pub listen: Option<SocketAddr>,

    /// Redis URL, e.g. redis://127.0.0.1:6379. With --redis-mode cluster: the seed
    /// nodes, comma-separated (redis://10.0.0.1:6379,redis://10.0.0.2:6379); the
    /// other nodes are learnt from the cluster.
    #[arg(long, env = "TURNPIKE_REDIS_URL", required_unless_present = "validate")]
    pub redis: Option<String>,

    /// `single` (one server, or a primary behind one address) or `cluster` (Redis
    /// Cluster: follows MOVED/ASK and failovers).
    #[arg(long, env = "TURNPIKE_REDIS_MODE", default_value = "single")]
    pub redis_mode: turnpike_redis::Mode,

    /// Plans file (TOML). Reloaded on change and on SIGHUP.
    #[arg(long, env = "TURNPIKE_PLANS")]
    pub plans: PathBuf,

    /// Check the plans file, print OK or the error, and exit 0 or 1.
    #[arg(long)]
    pub validate: bool,

    /// File holding the Redis password (or `user password` for an ACL user). The
    /// environment variable TURNPIKE_REDIS_PASSWORD also works; never on the command line.
    #[arg(long, env = "TURNPIKE_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// Upper bound on each Redis call; past it the request gets a 503.
    #[arg(long, env = "TURNPIKE_REDIS_TIMEOUT_MS", default_value_t = 100)]
    pub redis_timeout_ms: u64,

    /// Upper bound on a whole consume (Redis calls, a re-seed from the ledger). Keep it
    /// below the filter's `counter.timeout_ms` (250 by default) with a margin, so the
    /// counter answers before the proxy gives up on it.
    #[arg(long, env = "TURNPIKE_COUNTER_BUDGET_MS", default_value_t = 150,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub budget_ms: u64,

    /// How long a consume id is remembered for replays and refunds (and a refund that
    /// arrived first, to refuse its consume). Refunds come when the exchange ends:
    /// keep it above your longest request. Each record is ~200 B of Redis memory:
    /// 10 minutes at 20k requests/s is ~2.4 GB.
    #[arg(long, env = "TURNPIKE_IDEMPOTENCY_TTL_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_ttl_secs: u64,

    /// File of tokens (one per line) that may consume and refund: what the proxies
    /// send as `Authorization: Bearer`. Or TURNPIKE_SERVICE_TOKEN (comma-separated).
    #[arg(long, env = "TURNPIKE_SERVICE_TOKEN_FILE")]
    pub service_token_file: Option<PathBuf>,

    /// File of tokens (one per line) that may read usage. Or TURNPIKE_READ_TOKEN.
    #[arg(long, env = "TURNPIKE_READ_TOKEN_FILE")]
    pub read_token_file: Option<PathBuf>,

    /// Serve consume, refund and reads without credentials. For a laptop only: anyone
    /// who reaches the port could spend or refund any tenant's quota.
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// The collector (ledger) base URL, e.g. http://collector:8082. When Redis loses a
    /// tenant's counters, its hour, day and month windows come back from the ledger
    /// before the next decision. Without it, losing Redis forgives that usage.
    #[arg(long, env = "TURNPIKE_LEDGER_URL")]
    pub ledger_url: Option<String>,

    /// File with the collector's read token, for --ledger-url. Or
    /// TURNPIKE_LEDGER_TOKEN. Defaults to the first of this counter's read tokens.
    #[arg(long, env = "TURNPIKE_LEDGER_TOKEN_FILE")]
    pub ledger_token_file: Option<PathBuf>,

    /// Longest lease, seconds: what a proxy that died held comes back by then.
    #[arg(long, env = "TURNPIKE_LEASE_MAX_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(i64).range(1..=3600))]
    pub lease_max_secs: i64,

    /// Largest share (0-1] of the requests that still fit in a route's tightest window
    /// that one lease may take: near a limit grants shrink to nothing (exact consumes).
    #[arg(long, env = "TURNPIKE_LEASE_MAX_SHARE", default_value_t = 0.5)]
    pub lease_max_share: f64,

    /// Shift this process's clock (tests only: replicas with disagreeing clocks).
    #[arg(long, hide = true, default_value_t = 0, allow_hyphen_values = true)]
    pub clock_skew_ms: i64,

    /// Tokio worker threads.
    #[arg(long, env = "TURNPIKE_COUNTER_WORKERS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: u64,
}
