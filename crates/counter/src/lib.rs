//! Turnpike counter service: check-and-consume of tenant quotas, atomically, in one
//! Redis round trip; refunds, usage reads, health and metrics over HTTP/1.1 and h2c.

pub mod api;
mod batch_api;
mod batch_consume;
mod batch_settle;
pub use turnpike_auth as auth;
pub mod cli;
mod clock;
pub use turnpike_plans::keys;
pub mod lease;
mod lease_api;
pub mod ledger;
pub mod metrics;
pub mod reload;
pub mod request;
pub mod settle;
pub mod state;
pub mod store;
pub mod ticket;

use axum::serve::ListenerExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use turnpike_plans::{PlanError, Plans};

pub use cli::Cli;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("plans: {0}")]
    Plans(#[from] PlanError),
    #[error("redis: {0}")]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Token(#[from] auth::TokenError),
    #[error("{0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Serve until SIGTERM or SIGINT.
pub async fn run(cli: Cli) -> Result<(), StartError> {
    let listen = cli.listen.ok_or(StartError::Missing("--listen"))?;
    let redis_url = cli.redis.as_deref().ok_or(StartError::Missing("--redis"))?;
    let plans = Plans::load(&cli.plans).map_err(|e| plans_error(&cli.plans, e))?;
    let password = secret_from(
        "--redis-password-file",
        cli.redis_password_file.as_deref(),
        "TURNPIKE_REDIS_PASSWORD",
    )?;
    let redis = turnpike_redis::RedisConfig::new(
        cli.redis_mode,
        redis_url,
        password,
        Duration::from_millis(cli.redis_timeout_ms),
    )
    .map_err(|e| {
        StartError::Config(format!(
            "{e}; expected redis://[user[:password]@]host:port[/db] (rediss:// for TLS; with --redis-mode cluster, seed URLs, comma-separated)"
        ))
    })?;
    tracing::info!(mode = %redis.mode, nodes = ?redis.urls.iter().map(|u| turnpike_redis::redacted(u)).collect::<Vec<_>>(), "redis");
    let store = store::Store::new(&redis, cli.idempotency_ttl_secs)?;
    let mut state = state::AppState::new(plans, store);
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let service = auth::Tokens::load(
        "service token",
        cli.service_token_file.as_deref(),
        env("TURNPIKE_SERVICE_TOKEN"),
    )
    .map_err(|e| token_error(e, "--service-token-file FILE or TURNPIKE_SERVICE_TOKEN"))?;
    let read = auth::Tokens::load(
        "read token",
        cli.read_token_file.as_deref(),
        env("TURNPIKE_READ_TOKEN"),
    )
    .map_err(|e| token_error(e, "--read-token-file FILE or TURNPIKE_READ_TOKEN"))?;
    match (service, read, cli.allow_unauthenticated) {
        (Some(service), Some(read), _) => {
            state.service_tokens = service;
            state.read_tokens = read;
        }
        (None, None, true) => tracing::warn!(
            "--allow-unauthenticated: anyone who reaches this port can spend, refund and read quota"
        ),
        _ => {
            return Err(StartError::Config(
                "credentials: set both a service token (--service-token-file or \
                 TURNPIKE_SERVICE_TOKEN) and a read token (--read-token-file or \
                 TURNPIKE_READ_TOKEN), or pass --allow-unauthenticated on a laptop"
                    .into(),
            ))
        }
    }
    if let Some(url) = &cli.ledger_url {
        let token = match secret_from(
            "--ledger-token-file",
            cli.ledger_token_file.as_deref(),
            "TURNPIKE_LEDGER_TOKEN",
        )? {
            Some(token) => token,
            None => state.read_tokens.first().ok_or_else(|| {
                StartError::Config(
                    "--ledger-url: give the collector's read token (--ledger-token-file or \
                     TURNPIKE_LEDGER_TOKEN)"
                        .into(),
                )
            })?,
        };
        state.ledger = Some(
            ledger::LedgerClient::new(url, token, Duration::from_millis(cli.budget_ms))
                .map_err(StartError::Config)?,
        );
    } else {
        tracing::warn!("no --ledger-url: if Redis loses its data, the usage it held is forgiven");
    }
    state.clock = clock::Clock::with_skew(cli.clock_skew_ms);
    state.budget = Duration::from_millis(cli.budget_ms);
    if !(cli.lease_max_share > 0.0 && cli.lease_max_share <= 1.0) {
        return Err(StartError::Config(format!(
            "--lease-max-share {}: must be in (0, 1]",
            cli.lease_max_share
        )));
    }
    state.lease_policy = lease::LeasePolicy {
        max_share: cli.lease_max_share,
        max_secs: cli.lease_max_secs,
        ..lease::LeasePolicy::default()
    };
    let state = Arc::new(state);
    tokio::spawn(lease_api::sweep_expired_leases(
        state.clone(),
        Duration::from_secs(1),
    ));
    let _reloader =
        reload::spawn(state.clone(), cli.plans.clone()).map_err(|source| StartError::Io {
            context: format!("cannot watch {}", cli.plans.display()),
            source,
        })?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Io {
            context: if source.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "cannot listen on {listen} (another process listens there, another \
                     counter?): stop it or choose another --listen"
                )
            } else {
                format!("cannot listen on {listen}")
            },
            source,
        })?;
    // Envoy multiplexes every callout over one h2 connection: without TCP_NODELAY,
    // Nagle's algorithm meets delayed ACKs and small answers wait up to 40 ms.
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    tracing::info!(%listen, plans = %cli.plans.display(), "turnpike-counter serving");
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(|source| StartError::Io {
            context: "server".into(),
            source,
        })?;
    tracing::info!("turnpike-counter stopped");
    Ok(())
}

async fn shutdown() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A plans file that cannot be used, with the flag, the path and what to do.
fn plans_error(path: &std::path::Path, error: PlanError) -> StartError {
    match error {
        PlanError::Io { .. } => StartError::Config(format!(
            "--plans: {error}; give the path of a readable plans file (--plans FILE or TURNPIKE_PLANS)"
        )),
        error => StartError::Config(format!(
            "--plans {}: {error}; fix the file (turnpike-counter --plans FILE --validate checks it)",
            path.display()
        )),
    }
}

/// A credential file that cannot be used, with where it may come from.
fn token_error(error: auth::TokenError, from: &str) -> StartError {
    StartError::Config(format!("{error} ({from})"))
}

/// A secret from `file` (trimmed), else from the environment variable `env`.
fn secret_from(
    flag: &str,
    file: Option<&std::path::Path>,
    env: &str,
) -> Result<Option<String>, StartError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| StartError::Io {
            context: format!("{flag} {}", path.display()),
            source,
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(StartError::Config(format!(
                "{flag} {}: the file is empty",
                path.display()
            )));
        }
        return Ok(Some(text.to_owned()));
    }
    Ok(std::env::var(env)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().to_owned()))
}

/// `--validate`: print OK (stdout) or the error naming the field (stderr).
pub fn validate(cli: &Cli) -> bool {
    match Plans::load(&cli.plans) {
        Ok(_) => {
            println!("OK");
            true
        }
        Err(error) => {
            eprintln!("{error}");
            false
        }
    }
}
