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

    /// Redis URL, e.g. redis://127.0.0.1:6379.
    #[arg(long, env = "TURNPIKE_REDIS_URL", required_unless_present = "validate")]
    pub redis: Option<String>,

    /// Plans file (TOML). Reloaded on change and on SIGHUP.
    #[arg(long, env = "TURNPIKE_PLANS")]
    pub plans: PathBuf,

    /// Check the plans file, print OK or the error, and exit 0 or 1.
    #[arg(long)]
    pub validate: bool,

    /// Upper bound on each Redis call; past it the request gets a 503.
    #[arg(long, env = "TURNPIKE_REDIS_TIMEOUT_MS", default_value_t = 250)]
    pub redis_timeout_ms: u64,

    /// How long a consume id is remembered for replays and refunds. Retried callouts
    /// and refunds come within seconds; each record costs ~420 B of Redis memory, so a
    /// day at 20k requests/s would be ~700 GB. An hour is ample and bounded.
    #[arg(long, env = "TURNPIKE_IDEMPOTENCY_TTL_SECS", default_value_t = 3_600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_ttl_secs: u64,

    /// Tokio worker threads.
    #[arg(long, env = "TURNPIKE_COUNTER_WORKERS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: u64,
}
