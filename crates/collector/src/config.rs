//! Command line and environment configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Turnpike collector: exactly-once usage ledger for metered API requests.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "turnpike-collector",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Compare what the counter admitted with what the ledger bills, per tenant and
    /// window, and list the differences by consume id.
    Reconcile(crate::reconcile::ReconcileArgs),
    /// Replay the anomaly detector over the ledger's history and print every anomaly
    /// it would have raised, in time order.
    Anomalies(crate::anomalies::replay::ReplayArgs),
    /// Billing sync with Stripe: status, a sync run, credits.
    Billing(crate::billing::cli::BillingCommand),
}

/// The ledger database and the usage stream, shared by the server and the commands.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Ledger database: `sqlite:///path/ledger.db` (file and directory created if
    /// missing) or `postgres://...`.
    #[arg(
        long,
        env = "TURNPIKE_DATABASE_URL",
        default_value = "sqlite://turnpike-ledger.db"
    )]
    pub database: String,

    /// Database connection pool size. With SQLite, ledger writes go through one more
    /// connection of their own (one writer at a time; its page cache stays warm).
    #[arg(long, env = "TURNPIKE_COLLECTOR_DB_CONNECTIONS", default_value_t = 8)]
    pub db_connections: u32,

    /// The counter's Redis: every admitted consume is read from its usage streams
    /// into the ledger, so none is lost even when a proxy's events are. Without it
    /// the ledger bills from the proxies' usage events alone.
    /// With --redis-mode cluster: the seed nodes, comma-separated.
    #[arg(long, env = "TURNPIKE_REDIS_URL")]
    pub redis: Option<String>,

    /// `single` (one server) or `cluster` (Redis Cluster): as the counter's.
    #[arg(long, env = "TURNPIKE_REDIS_MODE", default_value = "single")]
    pub redis_mode: turnpike_redis::Mode,

    /// File with the Redis password (or `user password`). Or TURNPIKE_REDIS_PASSWORD.
    #[arg(long, env = "TURNPIKE_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// Plans file (TOML), for tenants' billing-month anchors and plan limits. Without
    /// it every tenant's billing month starts on day 1. Reloaded when it changes.
    #[arg(long, env = "TURNPIKE_PLANS")]
    pub plans: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to serve HTTP/1.1 and h2c (HTTP/2 prior knowledge) on.
    #[arg(
        long,
        env = "TURNPIKE_COLLECTOR_LISTEN",
        default_value = "127.0.0.1:8082"
    )]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub store: StoreArgs,

    /// File of ingest secrets (one per line) the proxies may send as
    /// `Authorization: Bearer`. Or TURNPIKE_INGEST_SECRET (comma-separated).
    #[arg(long, env = "TURNPIKE_INGEST_SECRET_FILE")]
    pub ingest_secret_file: Option<PathBuf>,

    /// File of read tokens (one per line) for the query APIs. Or TURNPIKE_READ_TOKEN.
    #[arg(long, env = "TURNPIKE_READ_TOKEN_FILE")]
    pub read_token_file: Option<PathBuf>,

    /// Serve the query APIs without a read token. For a laptop only.
    #[arg(long)]
    pub allow_unauthenticated_reads: bool,

    /// This collector's name in the usage streams' consumer group; keep it stable
    /// across restarts (default: the host name and the listen port).
    #[arg(long, env = "TURNPIKE_COLLECTOR_CONSUMER")]
    pub consumer: Option<String>,

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

    #[command(flatten)]
    pub anomalies: crate::anomalies::AnomalyArgs,

    #[command(flatten)]
    pub billing: crate::billing::config::BillingArgs,
}

/// A secret from `file` (trimmed), else from the environment variable `env`.
pub fn secret_from(
    flag: &str,
    file: Option<&std::path::Path>,
    env: &str,
) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("{flag} {}: the file is empty", path.display()));
        }
        return Ok(Some(text.to_owned()));
    }
    Ok(std::env::var(env)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().to_owned()))
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
        ])
        .unwrap();
        assert!(args.command.is_none());
        assert_eq!(args.serve.listen.port(), 9999);
        assert_eq!(args.serve.max_body_bytes, 1 << 20);
        assert_eq!(args.serve.max_batch_events, 1000);
        assert!(args.serve.store.plans.is_none());
        assert_eq!(args.serve.store.redis_mode, turnpike_redis::Mode::Single);
        assert_eq!(args.serve.billing.stripe_api_base, "https://api.stripe.com");
        assert_eq!(args.serve.billing.billing_sync_interval_secs, 60);
        assert!(args.serve.billing.stripe_key_file.is_none());
    }

    #[test]
    fn the_stripe_key_is_not_a_command_line_flag() {
        assert!(Args::try_parse_from(["turnpike-collector", "--stripe-key", "sk_test_x"]).is_err());
    }

    #[test]
    fn billing_subcommands_parse() {
        let args = Args::try_parse_from([
            "turnpike-collector",
            "billing",
            "status",
            "--database",
            "sqlite:///tmp/x.db",
            "--json",
        ])
        .unwrap();
        assert!(matches!(args.command, Some(Command::Billing(_))));
        let args = Args::try_parse_from([
            "turnpike-collector",
            "billing",
            "sync",
            "--once",
            "--stripe-api-base",
            "http://127.0.0.1:12111",
            "--stripe-rate",
            "5",
        ])
        .unwrap();
        assert!(matches!(args.command, Some(Command::Billing(_))));
    }

    #[test]
    fn cluster_mode_takes_seed_urls() {
        let args = Args::try_parse_from([
            "turnpike-collector",
            "--redis-mode",
            "cluster",
            "--redis",
            "redis://10.0.0.1:6379,redis://10.0.0.2:6379",
        ])
        .unwrap();
        assert_eq!(args.serve.store.redis_mode, turnpike_redis::Mode::Cluster);
        assert!(Args::try_parse_from(["turnpike-collector", "--redis-mode", "ring"]).is_err());
    }

    #[test]
    fn the_ingest_secret_is_not_a_command_line_flag() {
        assert!(Args::try_parse_from(["turnpike-collector", "--ingest-secret", "s"]).is_err());
    }
}
