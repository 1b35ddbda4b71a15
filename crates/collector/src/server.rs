//! Start-up, signal handling and graceful shutdown: the I/O shell around the router,
//! the usage-stream consumer and the plans watcher.

use axum::serve::ListenerExt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use turnpike_auth::Tokens;
use turnpike_plans::Plans;

use crate::api::{router, AppState};
use crate::billing::sync::Syncer;
use crate::config::{secret_from, ServeArgs, StoreArgs};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::usage_stream::{StreamConfig, UsageStream};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Token(#[from] turnpike_auth::TokenError),
    #[error("--plans: {0}")]
    Plans(#[from] turnpike_plans::PlanError),
    #[error("--database: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("--redis: {0}; expected redis://[user[:password]@]host:port[/db] (with --redis-mode cluster: seed URLs, comma-separated)")]
    Redis(#[from] turnpike_redis::ConnectError),
    #[error("--listen {addr}: {source}; another process listening there? choose another --listen")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Open the ledger, consume the usage streams, serve until SIGTERM or SIGINT, then
/// drain in-flight requests and close the database.
pub async fn run(args: ServeArgs) -> Result<(), StartError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let ingest_tokens = Tokens::load(
        "ingest secret",
        args.ingest_secret_file.as_deref(),
        env("TURNPIKE_INGEST_SECRET"),
    )
    .map_err(|e| {
        StartError::Config(format!(
            "{e} (--ingest-secret-file FILE or TURNPIKE_INGEST_SECRET)"
        ))
    })?
    .ok_or_else(|| {
        StartError::Config(
            "ingest secret: set --ingest-secret-file FILE or TURNPIKE_INGEST_SECRET \
             (what the proxies send as Authorization: Bearer)"
                .into(),
        )
    })?;
    let read_tokens = match (
        Tokens::load(
            "read token",
            args.read_token_file.as_deref(),
            env("TURNPIKE_READ_TOKEN"),
        )
        .map_err(|e| {
            StartError::Config(format!(
                "{e} (--read-token-file FILE or TURNPIKE_READ_TOKEN)"
            ))
        })?,
        args.allow_unauthenticated_reads,
    ) {
        (Some(tokens), _) => tokens,
        (None, true) => {
            tracing::warn!("--allow-unauthenticated-reads: anyone who reaches this port reads every tenant's usage");
            Tokens::default()
        }
        (None, false) => {
            return Err(StartError::Config(
                "read token: set --read-token-file FILE or TURNPIKE_READ_TOKEN (for the \
                 query APIs and the counter's re-seeding), or pass \
                 --allow-unauthenticated-reads on a laptop"
                    .into(),
            ))
        }
    };
    let plans = args.store.plans.as_deref().map(Plans::load).transpose()?;
    let ledger = Ledger::open(&args.store.database, args.store.db_connections)
        .await
        .map_err(|e| ledger_error(&args.store.database, e))?;
    let metrics = Arc::new(Metrics::new());
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: args.listen,
            source,
        })?;
    let consumer = args
        .consumer
        .clone()
        .unwrap_or_else(|| format!("{}-{}", host_name(), args.listen.port()));
    let stream = stream_config(&args.store, consumer.clone())?;
    let redis = match &stream {
        Some(config) => Some(crate::usage_stream::connect(config)?),
        None => None,
    };
    let anomaly_status = Arc::new(crate::anomalies::Status::new(
        &args.anomalies,
        consumer.clone(),
    ));
    let webhook = match &args.anomalies.anomaly_webhook {
        Some(url) => Some(crate::anomalies::webhook::Webhook {
            url: url.clone(),
            secret: secret_from(
                "--anomaly-webhook-secret-file",
                args.anomalies.anomaly_webhook_secret_file.as_deref(),
                "TURNPIKE_ANOMALY_WEBHOOK_SECRET",
            )
            .map_err(StartError::Config)?,
        }),
        None => None,
    };
    let billing = billing_syncer(&args, &ledger, &metrics, &consumer)?;
    if billing.is_some() && plans.is_none() {
        tracing::warn!(
            "billing sync is on but there is no --plans: no tenant has a stripe_customer, \
             so usage is kept as unmapped and nothing is sent"
        );
    }
    let state = Arc::new(AppState {
        billing: billing.clone(),
        anomalies: anomaly_status.clone(),
        redis,
        ledger: ledger.clone(),
        plans: plans.map(ArcSwap::from_pointee),
        ingest_tokens,
        read_tokens,
        max_body_bytes: args.max_body_bytes,
        max_batch_events: args.max_batch_events,
        metrics: metrics.clone(),
    });
    let _watcher = match args.store.plans.clone() {
        Some(path) => Some(watch_plans(state.clone(), path).map_err(StartError::Serve)?),
        None => None,
    };
    let reconciler = tokio::spawn(reconcile_every(state.clone(), RECONCILE_EVERY));
    let anomaly_tasks = if anomaly_status.enabled {
        let mut tasks = vec![tokio::spawn(crate::anomalies::online::run(state.clone()))];
        if let Some(webhook) = webhook {
            tasks.push(tokio::spawn(crate::anomalies::webhook::run(
                ledger.clone(),
                webhook,
                anomaly_status.clone(),
                metrics.clone(),
            )));
        }
        tasks
    } else {
        Vec::new()
    };
    let billing_task = billing.map(|syncer| {
        let plans_of = state.clone();
        tokio::spawn(crate::billing::sync::run_periodically(
            syncer,
            move || plans_of.plans.as_ref().map(|p| p.load_full()),
            args.billing.interval(),
            args.billing.reconcile_interval(),
        ))
    });
    let stream_task = match stream {
        Some(config) => {
            let stream = UsageStream::connect(&config, ledger.clone(), metrics.clone()).await?;
            tracing::info!(consumer = %config.consumer, redis_mode = %config.redis.mode,
                "consuming the counter's usage streams");
            Some(tokio::spawn(stream.run()))
        }
        None => {
            tracing::warn!(
                "no --redis: the ledger bills from the proxies' usage events only; \
                 events a proxy loses are lost"
            );
            None
        }
    };
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
    reconciler.abort();
    for task in anomaly_tasks {
        task.abort();
    }
    if anomaly_status.holding() {
        // Hand over now rather than when the lease expires.
        if let Err(error) =
            crate::anomalies::store::release_lease(&ledger, &anomaly_status.holder).await
        {
            tracing::warn!(%error, "could not release the anomaly judging lease");
        }
    }
    if let Some(task) = billing_task {
        // A step cut short here is finished by the next run: intents are durable.
        task.abort();
    }
    if let Some(task) = stream_task {
        // A round in flight is cut short before its acknowledgement: its entries stay
        // pending and are read again by the next collector with this name.
        task.abort();
    }
    ledger.close().await;
    tracing::info!("turnpike-collector stopped");
    Ok(())
}

/// A ledger that cannot be opened. PostgreSQL errors name the server (never the
/// password); SQLite errors already name the path and the fix.
fn ledger_error(url: &str, error: crate::ledger::LedgerError) -> StartError {
    if !url.starts_with("postgres") {
        return StartError::Ledger(error);
    }
    let shown = turnpike_auth::redact_url(url);
    StartError::Config(format!(
        "--database {shown}: {error}; is PostgreSQL running there, and does it accept this \
         user and database?"
    ))
}

/// The billing sync, when a Stripe key is configured.
fn billing_syncer(
    args: &ServeArgs,
    ledger: &Ledger,
    metrics: &Arc<Metrics>,
    owner: &str,
) -> Result<Option<Arc<Syncer>>, StartError> {
    let Some(key) = args.billing.stripe_key().map_err(StartError::Config)? else {
        tracing::info!(
            "billing sync off: no Stripe key (--stripe-key-file FILE or TURNPIKE_STRIPE_KEY)"
        );
        return Ok(None);
    };
    let client = args.billing.client(key).map_err(StartError::Config)?;
    tracing::info!(
        api = %args.billing.stripe_api_base,
        interval_secs = args.billing.billing_sync_interval_secs,
        grace_secs = args.billing.billing_grace_secs,
        rate = args.billing.stripe_rate,
        "billing sync on"
    );
    Ok(Some(Arc::new(Syncer::new(
        ledger.clone(),
        client,
        args.billing.settings(owner),
        Some(metrics.clone()),
    ))))
}

pub fn stream_config(
    store: &StoreArgs,
    consumer: String,
) -> Result<Option<StreamConfig>, StartError> {
    let Some(urls) = store.redis.as_deref() else {
        return Ok(None);
    };
    let password = secret_from(
        "--redis-password-file",
        store.redis_password_file.as_deref(),
        "TURNPIKE_REDIS_PASSWORD",
    )
    .map_err(StartError::Config)?;
    let redis =
        turnpike_redis::RedisConfig::new(store.redis_mode, urls, password, Duration::from_secs(5))
            .map_err(|e| StartError::Config(e.to_string()))?;
    Ok(Some(StreamConfig { redis, consumer }))
}

/// How often the drift gauges are refreshed (a day of ledger, minus the grace).
const RECONCILE_EVERY: Duration = Duration::from_secs(300);

async fn reconcile_every(state: Arc<AppState>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let now = crate::api::now_ms();
        let until = now - crate::reconcile::DEFAULT_GRACE_SECS * 1000;
        match crate::api::run_reconcile(&state, None, until - 86_400_000, until).await {
            Ok(report) => tracing::info!(
                rows = report.rows,
                drift_ids = report.drift_ids,
                drift_units = report.drift_units,
                "reconciled the last day"
            ),
            Err(err) => tracing::warn!(error = %err, "periodic reconciliation failed"),
        }
    }
}

pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "collector".to_owned())
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

/// Reload the plans on change and on SIGHUP; an invalid file is refused with the field
/// named, and the running plans stay.
fn watch_plans(
    state: Arc<AppState>,
    path: std::path::PathBuf,
) -> std::io::Result<turnpike_plans::watch::Reloader> {
    let file = path.clone();
    turnpike_plans::watch::spawn(path, move |cause| match Plans::load(&file) {
        Ok(new) => {
            if let Some(plans) = &state.plans {
                if **plans.load() != new {
                    plans.store(Arc::new(new));
                    tracing::info!(cause, path = %file.display(), "plans reloaded");
                }
            }
        }
        Err(err) => {
            tracing::error!(cause, path = %file.display(), error = %err, "plans reload refused; keeping the running plans")
        }
    })
}
