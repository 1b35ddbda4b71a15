//! Turnpike counter service: check-and-consume of tenant quotas, atomically, in one
//! Redis round trip; refunds, usage reads, health and metrics over HTTP/1.1 and h2c.

pub mod api;
pub mod cli;
mod clock;
pub mod metrics;
pub mod reload;
pub mod request;
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
    let plans = Plans::load(&cli.plans)?;
    let store = store::Store::new(
        redis_url,
        Duration::from_millis(cli.redis_timeout_ms),
        cli.idempotency_ttl_secs,
    )?;
    let state = Arc::new(state::AppState::new(plans, store));
    let _reloader =
        reload::spawn(state.clone(), cli.plans.clone()).map_err(|source| StartError::Io {
            context: format!("cannot watch {}", cli.plans.display()),
            source,
        })?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Io {
            context: format!("cannot listen on {listen}"),
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
