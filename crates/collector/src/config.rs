//! Command line and environment configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Turnpike collector: exactly-once usage ledger for metered API requests.
#[derive(Debug, Clone, Parser)]
#[command(name = "turnpike-collector", version)]
pub struct Args {
    /// Address to serve HTTP/1.1 and h2c (HTTP/2 prior knowledge) on.
    #[arg(
        long,
        env = "TURNPIKE_COLLECTOR_LISTEN",
        default_value = "127.0.0.1:8082"
    )]
    pub listen: SocketAddr,

    /// Ledger database: `sqlite:///path/ledger.db` (created if missing) or `postgres://...`.
    #[arg(
        long,
        env = "TURNPIKE_DATABASE_URL",
        default_value = "sqlite://turnpike-ledger.db"
    )]
    pub database: String,

    /// Shared secret the proxies send as `Authorization: Bearer <secret>`.
    #[arg(long, env = "TURNPIKE_INGEST_SECRET", hide_env_values = true)]
    pub ingest_secret: String,

    /// Plans file (TOML), for tenants' billing-month anchors. Without it every
    /// tenant's billing month starts on day 1. Reloaded on SIGHUP.
    #[arg(long, env = "TURNPIKE_PLANS")]
    pub plans: Option<PathBuf>,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "TURNPIKE_COLLECTOR_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most events accepted in one batch.
    #[arg(
        long,
        env = "TURNPIKE_COLLECTOR_MAX_BATCH_EVENTS",
        default_value_t = 1000
    )]
    pub max_batch_events: usize,

    /// Database connection pool size.
    #[arg(long, env = "TURNPIKE_COLLECTOR_DB_CONNECTIONS", default_value_t = 8)]
    pub db_connections: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults() {
        let args = Args::try_parse_from([
            "turnpike-collector",
            "--listen",
            "127.0.0.1:9999",
            "--database",
            "sqlite:///tmp/x.db",
            "--ingest-secret",
            "s",
        ])
        .unwrap();
        assert_eq!(args.listen.port(), 9999);
        assert_eq!(args.max_body_bytes, 1 << 20);
        assert_eq!(args.max_batch_events, 1000);
        assert!(args.plans.is_none());
    }
}
