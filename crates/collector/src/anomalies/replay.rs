//! `turnpike-collector anomalies`: the online detector replayed over the ledger's
//! history, each series from its first row, printing every anomaly it would have
//! raised, in time order. One aggregate query per series, streamed through the same
//! [`judge_series`] the server runs.

use std::collections::HashMap;
use std::io::Write;

use turnpike_plans::{window_bounds, Plans, Window};

use super::series::{bucket_of, closed_until, judge_series, Detected, PlanLimit, SeriesState};
use super::store::{self, Filter, StoreError};
use super::{AnomalyView, DEFAULT_BUCKET_SECS, DEFAULT_GRACE_SECS};
use crate::config::StoreArgs;
use crate::event::parse_time_ms;
use crate::ledger::{Ledger, LedgerError};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this meter (`*`: the tenants' request series).
    #[arg(long)]
    pub meter: Option<String>,
    /// Judge buckets from this time (RFC 3339); default: each series' first row.
    #[arg(long)]
    pub since: Option<String>,
    /// Judge buckets that start before this time (RFC 3339); default: buckets closed
    /// --grace-secs ago.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value_t = DEFAULT_BUCKET_SECS,
          value_parser = clap::value_parser!(i64).range(10..=86_400))]
    pub bucket_secs: i64,
    #[arg(long, default_value_t = DEFAULT_GRACE_SECS)]
    pub grace_secs: i64,
    /// One JSON object per line (the `GET /v1/anomalies` item shape, without
    /// `detected_at`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Args(String),
    #[error("--plans: {0}")]
    Plans(#[from] turnpike_plans::PlanError),
    #[error("--database: {0}")]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn main(args: ReplayArgs) -> Result<(), ReplayError> {
    let time = |flag: &str, text: &Option<String>| -> Result<Option<i64>, ReplayError> {
        text.as_deref()
            .map(|t| {
                parse_time_ms(t)
                    .map(|ms| ms.div_euclid(1000))
                    .ok_or_else(|| {
                        ReplayError::Args(format!("{flag}: not an RFC 3339 time: {t:?}"))
                    })
            })
            .transpose()
    };
    let width = args.bucket_secs;
    let since = time("--since", &args.since)?.map(|s| bucket_of(s + width - 1, width));
    let until = match time("--until", &args.until)? {
        Some(u) => bucket_of(u, width),
        None => closed_until(
            crate::api::now_ms().div_euclid(1000),
            args.grace_secs,
            width,
        ),
    };
    let plans = args.store.plans.as_deref().map(Plans::load).transpose()?;
    let ledger = Ledger::open(&args.store.database, args.store.db_connections).await?;
    let filter = Filter {
        tenant: args.tenant.clone(),
        meter: args.meter.clone(),
    };
    let found = replay(&ledger, plans.as_ref(), &filter, since, until, width).await?;
    ledger.close().await;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for d in &found {
        let view = AnomalyView::from_detected(d, None);
        if args.json {
            serde_json::to_writer(&mut out, &view).map_err(std::io::Error::other)?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{}  {:<12} {}/{}  score {:.2}  expected {:.2}  observed {:.2}  id {}",
                view.bucket,
                view.kind,
                view.tenant,
                view.meter,
                view.score,
                view.expected,
                view.observed,
                view.id
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Every anomaly of the series matching `filter` in `[since, until)` (bucket starts,
/// unix seconds; each series from its first row when `since` is `None`), sorted by
/// bucket, tenant, meter and kind name.
pub async fn replay(
    ledger: &Ledger,
    plans: Option<&Plans>,
    filter: &Filter,
    since: Option<i64>,
    until: i64,
    width: i64,
) -> Result<Vec<Detected>, ReplayError> {
    let since_ms = since.unwrap_or(0).saturating_mul(1000);
    let until_ms = until.saturating_mul(1000);
    let series = store::series_between(ledger, filter, since_ms, until_ms).await?;
    let mut claims: HashMap<String, Option<String>> = HashMap::new();
    let mut found = Vec::new();
    for seen in series {
        let key = seen.key;
        let from = bucket_of(seen.first_ms.div_euclid(1000), width).max(since.unwrap_or(i64::MIN));
        let own = Filter {
            tenant: Some(key.tenant.clone()),
            meter: Some(key.meter.clone()),
        };
        let buckets = store::buckets_between(ledger, &own, from * 1000, until_ms, width).await?;
        let mut state = SeriesState::new(width);
        let plan = match (plans, key.is_requests()) {
            (Some(plans), false) => {
                if !claims.contains_key(&key.tenant) {
                    let claim = ledger.latest_plan(&key.tenant).await?;
                    claims.insert(key.tenant.clone(), claim);
                }
                let claim = claims.get(&key.tenant).cloned().flatten();
                PlanLimit::of(&plans.resolve(&key.tenant, claim.as_deref()), &key.meter)
            }
            _ => None,
        };
        if let Some(plan) = plan {
            // Usage earlier in the billing period of the first bucket (none when the
            // series starts at its first row, as online).
            let (period_start, _) = window_bounds(Window::Month, plan.anchor_day, from);
            let used = if period_start < from {
                ledger
                    .billable_totals(&key.tenant, period_start * 1000, from * 1000)
                    .await?
                    .into_iter()
                    .find(|(m, _)| *m == key.meter)
                    .map_or(0, |(_, q)| q)
            } else {
                0
            };
            state.period_start = period_start;
            state.period_used = used as f64;
        }
        found.extend(judge_series(
            &mut state,
            &key,
            from,
            until,
            buckets.get(&key).map(Vec::as_slice).unwrap_or(&[]),
            plan,
        ));
    }
    found.sort_by(|a, b| {
        (a.bucket, &a.tenant, &a.meter, a.kind.as_str()).cmp(&(
            b.bucket,
            &b.tenant,
            &b.meter,
            b.kind.as_str(),
        ))
    });
    Ok(found)
}
