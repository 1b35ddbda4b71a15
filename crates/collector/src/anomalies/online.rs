//! The online judge: in the replica that holds the lease, every few seconds, judge
//! each series' buckets that closed (plus the grace) since its last judged bucket,
//! and commit states, anomalies and outbox rows in one fenced transaction.
//!
//! Why a lease row and not `FOR UPDATE SKIP LOCKED` per series: the detector judges
//! millions of buckets a second, so the work is the aggregate queries, which one
//! replica does in one pass over the time index far cheaper than N replicas doing
//! per-series queries; and a single judge is also the single webhook sender. A lease
//! row (not a PostgreSQL advisory lock) works the same on SQLite, survives connection
//! pool churn, and shows who judges. The lease alone does not make double judging
//! impossible (a paused holder may wake after its lease expired), so every commit is
//! fenced: it re-checks the lease inside the transaction, advances each series only
//! from the `last_bucket` it read, and anomaly ids are deterministic (`ON CONFLICT DO
//! NOTHING`), so a replica that lost the race commits nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnpike_plans::Plans;

use super::series::{bucket_of, judge_series, series_until, PlanLimit, SeriesKey, SeriesState};
use super::store::{self, Filter, NewAnomaly, SeriesUpdate, StoreError};
use super::webhook::cloud_event;
use crate::api::{now_ms, AppState};

const TICK: Duration = Duration::from_secs(2);
const LEASE_MS: i64 = 30_000;
/// At most this many buckets per series in one round, so a long catch-up (a first
/// start on a big ledger) commits as it goes.
const MAX_BUCKETS_PER_ROUND: i64 = 2016;
/// Groups of at most this many series are read with per-series queries (index on
/// tenant); larger ones with one query over the time index.
const PER_SERIES_QUERY_MAX: usize = 16;
/// How long a tenant's claimed plan (from its latest event) is trusted.
const PLAN_CLAIM_TTL: Duration = Duration::from_secs(600);

struct Entry {
    /// `last_bucket` as stored; `None` until the series is first committed.
    stored: Option<i64>,
    /// Start of the next bucket to judge.
    next: i64,
    state: SeriesState,
    /// Billing time of the newest row seen, and when the latest row arrived (unix
    /// seconds; 0 until this replica sees rows of the series).
    newest: i64,
    received: i64,
}

struct Cache {
    series: BTreeMap<SeriesKey, Entry>,
    scanned_seq: i64,
    claims: HashMap<String, (Option<String>, Instant)>,
}

/// Judge while the server runs. Never returns; aborted at shutdown.
pub async fn run(state: Arc<AppState>) {
    let status = state.anomalies.clone();
    let width = status.bucket_secs;
    let mut cache: Option<Cache> = None;
    loop {
        let now = now_ms();
        match store::take_lease(&state.ledger, &status.holder, now, now + LEASE_MS).await {
            Ok(true) => {
                if !status.holding() {
                    tracing::info!(holder = %status.holder, "anomaly judging lease taken");
                }
                status.set_holding(true);
            }
            Ok(false) => {
                if status.holding() {
                    tracing::warn!(holder = %status.holder, "anomaly judging lease lost");
                }
                status.set_holding(false);
                state.metrics.anomaly.series.set(0);
                cache = None;
                tokio::time::sleep(TICK).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "anomaly lease: database unreachable");
                state.metrics.anomaly.ticks_failed.inc();
                tokio::time::sleep(TICK).await;
                continue;
            }
        }
        let loaded = match cache.take() {
            Some(c) => Ok(c),
            None => load(&state, width).await,
        };
        let mut c = match loaded {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "anomaly judge: cannot load series");
                state.metrics.anomaly.ticks_failed.inc();
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        match round(&state, &mut c, width).await {
            Ok(behind) => {
                cache = Some(c);
                if behind {
                    continue; // catching up: no pause between rounds
                }
            }
            Err(error) => {
                // Lost lease, a conflicting judge, or the database: start again from
                // what is stored.
                tracing::warn!(%error, "anomaly judging round failed; reloading");
                state.metrics.anomaly.ticks_failed.inc();
            }
        }
        tokio::time::sleep(TICK).await;
    }
}

async fn load(state: &AppState, width: i64) -> Result<Cache, StoreError> {
    let forgotten = store::forget_other_widths(&state.ledger, width).await?;
    if forgotten > 0 {
        tracing::warn!(
            series = forgotten,
            bucket_secs = width,
            "the bucket width changed: series start again from their first rows"
        );
    }
    let stored = store::load_series(&state.ledger, width).await?;
    let (_, _, scanned_seq) = store::lease(&state.ledger).await?;
    let series = stored
        .into_iter()
        .map(|s| {
            (
                s.key,
                Entry {
                    stored: Some(s.last_bucket),
                    next: s.last_bucket + width,
                    state: s.state,
                    newest: 0,
                    received: 0,
                },
            )
        })
        .collect();
    Ok(Cache {
        series,
        scanned_seq,
        claims: HashMap::new(),
    })
}

/// One judging round; returns whether some series is still behind.
async fn round(state: &AppState, c: &mut Cache, width: i64) -> Result<bool, StoreError> {
    let ledger = &state.ledger;
    let now = now_ms();
    // New series: whatever ingest brought since the last look (backfill included).
    let upto_seq = ledger.last_seq().await?;
    let mut changed = false;
    if upto_seq > c.scanned_seq {
        for seen in store::series_changed(ledger, c.scanned_seq, upto_seq).await? {
            let first = bucket_of(seen.first_ms.div_euclid(1000), width);
            let entry = c.series.entry(seen.key.clone()).or_insert_with(|| Entry {
                stored: None,
                next: first,
                state: SeriesState::new(width),
                newest: 0,
                received: 0,
            });
            if first < entry.next {
                tracing::debug!(
                    tenant = %seen.key.tenant, meter = %seen.key.meter,
                    "rows for buckets already judged: not judged again (replay sees them)"
                );
            }
            entry.newest = entry.newest.max(seen.last_ms.div_euclid(1000));
            entry.received = entry.received.max(seen.received_ms.div_euclid(1000));
        }
        c.scanned_seq = upto_seq;
        changed = true;
    }

    let now_secs = now.div_euclid(1000);
    let grace = state.anomalies.grace_secs;
    // Series judged together share a range: (from, to).
    let mut groups: BTreeMap<(i64, i64), Vec<SeriesKey>> = BTreeMap::new();
    for (key, entry) in &c.series {
        let to = series_until(now_secs, grace, width, entry.newest, entry.received);
        if entry.next < to {
            groups
                .entry((entry.next, to))
                .or_default()
                .push(key.clone());
        }
    }
    let plans = state.plans.as_ref().map(|p| p.load_full());
    let mut found = Vec::new();
    let mut advanced: Vec<SeriesKey> = Vec::new();
    let mut behind = false;
    for ((from, series_to), keys) in groups {
        let to = series_to.min(from + MAX_BUCKETS_PER_ROUND * width);
        behind |= to < series_to;
        let shared = if keys.len() > PER_SERIES_QUERY_MAX {
            Some(
                store::buckets_between(ledger, &Filter::default(), from * 1000, to * 1000, width)
                    .await?,
            )
        } else {
            None
        };
        for key in keys {
            let own;
            let buckets = match &shared {
                Some(all) => all.get(&key).map(Vec::as_slice).unwrap_or(&[]),
                None => {
                    let filter = Filter {
                        tenant: Some(key.tenant.clone()),
                        meter: Some(key.meter.clone()),
                    };
                    own = store::buckets_between(ledger, &filter, from * 1000, to * 1000, width)
                        .await?;
                    own.get(&key).map(Vec::as_slice).unwrap_or(&[])
                }
            };
            let plan = match (&plans, key.is_requests()) {
                (Some(plans), false) => plan_limit(state, c, plans, &key).await?,
                _ => None,
            };
            let Some(entry) = c.series.get_mut(&key) else {
                continue;
            };
            found.extend(judge_series(
                &mut entry.state,
                &key,
                from,
                to,
                buckets,
                plan,
            ));
            entry.next = to;
            advanced.push(key);
        }
    }
    let fresh: Vec<SeriesKey> = c
        .series
        .iter()
        .filter(|(_, e)| e.stored.is_none())
        .map(|(k, _)| k.clone())
        .collect();
    if !changed && advanced.is_empty() && fresh.is_empty() {
        update_gauges(state, c, now);
        return Ok(behind);
    }
    let mut touched: Vec<SeriesKey> = advanced;
    touched.extend(fresh);
    touched.sort();
    touched.dedup();
    let updates: Vec<SeriesUpdate<'_>> = touched
        .iter()
        .filter_map(|key| {
            c.series.get(key).map(|e| SeriesUpdate {
                key,
                previous_last_bucket: e.stored,
                last_bucket: e.next - width,
                state: &e.state,
            })
        })
        .collect();
    let events: Vec<Option<String>> = found
        .iter()
        .map(|d| state.anomalies.webhook.then(|| cloud_event(d)))
        .collect();
    let anomalies: Vec<NewAnomaly<'_>> = found
        .iter()
        .zip(events)
        .map(|(detected, cloud_event)| NewAnomaly {
            detected,
            cloud_event,
        })
        .collect();
    let commit = store::Round {
        holder: &state.anomalies.holder,
        now_ms: now,
        lease_until_ms: now + LEASE_MS,
        scanned_seq: c.scanned_seq,
        bucket_secs: width,
    };
    let new_ids = store::commit_tick(ledger, &commit, &updates, &anomalies).await?;
    drop(updates);
    for key in &touched {
        if let Some(e) = c.series.get_mut(key) {
            e.stored = Some(e.next - width);
        }
    }
    for d in found.iter().filter(|d| new_ids.contains(&d.id)) {
        state.metrics.anomaly.found(d.kind);
        tracing::info!(
            id = %d.id, tenant = %d.tenant, meter = %d.meter, kind = %d.kind,
            bucket = d.bucket, score = d.score, expected = d.expected, observed = d.observed,
            "anomaly"
        );
    }
    if !new_ids.is_empty() && state.anomalies.webhook {
        state.anomalies.notify_outbox();
    }
    update_gauges(state, c, now);
    Ok(behind)
}

fn update_gauges(state: &AppState, c: &Cache, now_ms: i64) {
    let m = &state.metrics.anomaly;
    m.series
        .set(i64::try_from(c.series.len()).unwrap_or(i64::MAX));
    let oldest = c.series.values().map(|e| e.next).min();
    let lag = oldest.map_or(0, |next| (now_ms.div_euclid(1000) - next).max(0));
    m.lag_seconds.set(lag);
}

/// The monthly limit of the tenant's plan on this meter (the plan its latest event
/// claims, unless the plans file says otherwise).
async fn plan_limit(
    state: &AppState,
    c: &mut Cache,
    plans: &Plans,
    key: &SeriesKey,
) -> Result<Option<PlanLimit>, StoreError> {
    let fresh = c
        .claims
        .get(&key.tenant)
        .filter(|(_, at)| at.elapsed() < PLAN_CLAIM_TTL)
        .map(|(claim, _)| claim.clone());
    let claim = match fresh {
        Some(claim) => claim,
        None => {
            let claim = state.ledger.latest_plan(&key.tenant).await?;
            c.claims
                .insert(key.tenant.clone(), (claim.clone(), Instant::now()));
            claim
        }
    };
    let resolved = plans.resolve(&key.tenant, claim.as_deref());
    Ok(PlanLimit::of(&resolved, &key.meter))
}
