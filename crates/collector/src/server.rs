//! Start-up, signal handling and graceful shutdown: the I/O shell around the router.

use axum::serve::ListenerExt;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use turnpike_plans::Plans;

use crate::api::{router, AppState};
use crate::config::Args;
use crate::ledger::Ledger;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--ingest-secret must not be empty")]
    EmptySecret,
    #[error("--plans: {0}")]
    Plans(#[from] turnpike_plans::PlanError),
    #[error("--database: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("--listen {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Open the ledger, serve until SIGTERM or SIGINT, then drain in-flight requests and
/// close the database.
pub async fn run(args: Args) -> Result<(), StartError> {
    if args.ingest_secret.is_empty() {
        return Err(StartError::EmptySecret);
    }
    let plans = args.plans.as_deref().map(Plans::load).transpose()?;
    let ledger = Ledger::open(&args.database, args.db_connections).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: args.listen,
            source,
        })?;
    let state = Arc::new(AppState {
        ledger: ledger.clone(),
        plans: plans.map(RwLock::new),
        ingest_secret: args.ingest_secret.into_bytes(),
        max_body_bytes: args.max_body_bytes,
        max_batch_events: args.max_batch_events,
        metrics: Metrics::new(),
    });
    if let Some(path) = args.plans.clone() {
        tokio::spawn(reload_plans_on_sighup(state.clone(), path));
    }
    let addr = listener.local_addr().map_err(StartError::Serve)?;
    tracing::info!(%addr, backend = ?ledger.backend(), "turnpike-collector listening");
    // axum::serve speaks HTTP/1.1 and detects the HTTP/2 prior-knowledge preface on the
    // same port (h2c), which is what Envoy's collector cluster sends. TCP_NODELAY: small
    // answers on a long-lived h2 connection must not wait for delayed ACKs.
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(StartError::Serve)?;
    ledger.close().await;
    tracing::info!("turnpike-collector stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}

/// An invalid file is refused with the field named; the running plans stay.
async fn reload_plans_on_sighup(state: Arc<AppState>, path: std::path::PathBuf) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; plans will not reload");
        return;
    };
    while hup.recv().await.is_some() {
        match Plans::load(&path) {
            Ok(new) => {
                if let Some(lock) = &state.plans {
                    *lock.write().unwrap_or_else(|p| p.into_inner()) = new;
                    tracing::info!(path = %path.display(), "plans reloaded");
                }
            }
            Err(err) => {
                tracing::error!(path = %path.display(), error = %err, "plans reload refused; keeping old plans")
            }
        }
    }
}
