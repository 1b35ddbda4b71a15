//! `turnpike-collector billing status | sync | resolve-credit`.

use std::sync::Arc;

use clap::Subcommand;
use turnpike_plans::Plans;

use super::config::BillingArgs;
use super::status::BillingStatus;
use super::store::BillingStore;
use super::sync::{run_periodically, Syncer};
use crate::api::now_ms;
use crate::config::StoreArgs;
use crate::ledger::Ledger;

#[derive(Debug, Clone, clap::Args)]
pub struct BillingCommand {
    #[command(subcommand)]
    pub command: BillingSubcommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BillingSubcommand {
    /// Last sync, pending hours, unmapped tenants, too-old usage, credits to issue
    /// and the last reconciliation with Stripe, from the database.
    Status(StatusArgs),
    /// Sync usage to Stripe: once with --once (then reconcile), else every
    /// --billing-sync-interval-secs, as the server does.
    Sync(SyncArgs),
    /// Mark a credit as issued (after issuing it in Stripe).
    ResolveCredit(ResolveArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON (the answer of GET /v1/billing/status).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub billing: BillingArgs,
    /// One run and a reconciliation, then exit.
    #[arg(long)]
    pub once: bool,
    /// Name in the sync lease (default: `billing-cli-` and the host name).
    #[arg(long, env = "TURNPIKE_COLLECTOR_CONSUMER")]
    pub consumer: Option<String>,
    /// Print the run's report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The credit's id (from `billing status`).
    pub id: i64,
    /// How it was issued (credit note id, balance transaction, ...).
    #[arg(long)]
    pub note: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(String),
    #[error("--database: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("--plans: {0}")]
    Plans(#[from] turnpike_plans::PlanError),
    #[error("billing sync: {0}")]
    Sync(#[from] super::sync::SyncError),
    #[error("no open credit #{0}")]
    NoSuchCredit(i64),
}

pub async fn main(command: BillingCommand) -> Result<(), CliError> {
    match command.command {
        BillingSubcommand::Status(args) => {
            let ledger = Ledger::open(&args.store.database, 2).await?;
            let status = BillingStatus::load(&BillingStore::new(ledger.clone())).await;
            ledger.close().await;
            let status = status?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                );
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
        BillingSubcommand::Sync(args) => sync(args).await,
        BillingSubcommand::ResolveCredit(args) => {
            let ledger = Ledger::open(&args.store.database, 2).await?;
            let done = BillingStore::new(ledger.clone())
                .resolve_credit(args.id, &args.note, now_ms())
                .await;
            ledger.close().await;
            if done? {
                println!("credit #{} resolved", args.id);
                Ok(())
            } else {
                Err(CliError::NoSuchCredit(args.id))
            }
        }
    }
}

async fn sync(args: SyncArgs) -> Result<(), CliError> {
    let key = args
        .billing
        .stripe_key()
        .map_err(CliError::Config)?
        .ok_or_else(|| {
            CliError::Config(
                "no Stripe secret key: set --stripe-key-file FILE or TURNPIKE_STRIPE_KEY".into(),
            )
        })?;
    let client = args.billing.client(key).map_err(CliError::Config)?;
    let plans = args
        .store
        .plans
        .as_deref()
        .map(Plans::load)
        .transpose()?
        .map(Arc::new);
    if plans.is_none() {
        tracing::warn!("no --plans: no tenant has a Stripe customer, so nothing is sent");
    }
    let ledger = Ledger::open(&args.store.database, args.store.db_connections).await?;
    let owner = args
        .consumer
        .clone()
        .unwrap_or_else(|| format!("billing-cli-{}", crate::server::host_name()));
    let syncer = Arc::new(Syncer::new(
        ledger.clone(),
        client,
        args.billing.settings(owner),
        None,
    ));
    if !args.once {
        let plans = plans.clone();
        run_periodically(
            syncer,
            move || plans.clone(),
            args.billing.interval(),
            args.billing.reconcile_interval(),
        )
        .await;
        return Ok(());
    }
    let result = async {
        let report = syncer.run_once(plans.clone()).await?;
        syncer.reconcile(plans).await?;
        Ok::<_, CliError>(report)
    }
    .await;
    ledger.close().await;
    let report = result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!(
            "synced up to ledger change {}: {} hours looked at, {} events sent ({} units), \
             {} already delivered, {} cancels, {} credits ({} units), {} hours refused",
            report.cursor_seq,
            report.hours_examined,
            report.events_sent,
            report.units_sent,
            report.already_delivered,
            report.cancels,
            report.credits,
            report.credit_units,
            report.hours_failed
        );
    }
    Ok(())
}
