//! The billing sync's durable state (migration `0003_billing.sql`), in the ledger's
//! database, on SQLite and PostgreSQL alike (the same SQL through
//! [`with_pool!`](crate::ledger)).
//!
//! Every write transaction starts with its write (an UPDATE or INSERT), so SQLite
//! takes its write lock first and never has to upgrade a read lock under a
//! concurrent ingest; every transaction touches a handful of rows, so ingest never
//! waits on billing for long. Writers that act on an hour compare and set its
//! `version`: a decision taken on a state that changed meanwhile is refused, not
//! applied.

use sqlx::{QueryBuilder, Row as _};

use super::plan::{EventStatus, HourStatus, HOUR_MS};
use crate::ledger::{with_pool, Ledger, LedgerError};

/// Recount what Stripe holds for an hour after its events changed.
const RECOUNT_SQL: &str = "UPDATE billing_hours SET sent_quantity = \
    (SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM billing_events \
     WHERE tenant = $1 AND meter = $2 AND hour_start_ms = $3 \
     AND status IN ('delivered', 'final', 'cancel_intent')), \
    version = version + 1, updated_ms = $4 \
    WHERE tenant = $1 AND meter = $2 AND hour_start_ms = $3";

macro_rules! recount {
    ($tx:expr, $key:expr, $now_ms:expr) => {
        sqlx::query(RECOUNT_SQL)
            .bind(&$key.tenant)
            .bind(&$key.meter)
            .bind($key.hour_start_ms)
            .bind($now_ms)
            .execute(&mut *$tx)
            .await?
    };
}

/// Most values bound in one statement (well under SQLite's 32766).
const MAX_BINDS: usize = 30_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HourKey {
    pub tenant: String,
    pub meter: String,
    pub hour_start_ms: i64,
}

/// A `billing_hours` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourRow {
    pub key: HourKey,
    pub ledger_quantity: i64,
    pub sent_quantity: i64,
    pub credited_quantity: i64,
    pub revision: i64,
    pub version: i64,
    pub status: HourStatus,
    pub too_old: bool,
    pub last_error: Option<String>,
    pub next_attempt_ms: i64,
}

impl HourRow {
    /// Units Stripe lacks (positive) or holds too many of (negative).
    pub fn unsent(&self) -> i64 {
        self.ledger_quantity - self.sent_quantity + self.credited_quantity
    }
}

/// A `billing_events` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub identifier: String,
    pub revision: i64,
    pub event_name: String,
    pub customer: String,
    pub quantity: i64,
    pub timestamp_s: i64,
    pub status: EventStatus,
    pub created_ms: i64,
}

/// A meter event about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub identifier: String,
    pub revision: i64,
    pub event_name: String,
    pub customer: String,
    pub quantity: i64,
    pub timestamp_s: i64,
    pub created_ms: i64,
}

/// A credit about to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredit {
    pub customer: Option<String>,
    pub event_name: String,
    pub quantity: i64,
    pub reason: String,
}

/// A `billing_credits` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditRow {
    pub id: i64,
    pub tenant: String,
    pub meter: String,
    pub hour_start_ms: i64,
    pub customer: Option<String>,
    pub event_name: String,
    pub quantity: i64,
    pub reason: String,
    pub created_ms: i64,
    pub resolved_ms: Option<i64>,
    pub note: Option<String>,
}

/// The `billing_sync` row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncRow {
    pub cursor_seq: i64,
    pub lease_owner: Option<String>,
    pub lease_until_ms: i64,
    pub last_run_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_reconcile_ms: Option<i64>,
}

/// A `billing_drift` row: one customer, event name and billing period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftRow {
    pub customer: String,
    pub event_name: String,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    pub ledger_quantity: i64,
    pub sent_quantity: i64,
    pub credited_quantity: i64,
    /// `None` when Stripe has no active meter for the event name.
    pub stripe_quantity: Option<i64>,
    pub checked_ms: i64,
}

/// Hours and unsent units of one status, one tenant or one meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsentGroup {
    pub name: String,
    pub hours: i64,
    pub units: i64,
}

/// Per meter over a range of hours: (meter, ledger, sent, credited).
pub type PeriodSums = Vec<(String, i64, i64, i64)>;

#[derive(Debug, Clone)]
pub struct BillingStore {
    ledger: Ledger,
}

impl BillingStore {
    pub fn new(ledger: Ledger) -> BillingStore {
        BillingStore { ledger }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub async fn sync_row(&self) -> Result<SyncRow, LedgerError> {
        let sql = "SELECT cursor_seq, lease_owner, lease_until_ms, last_run_ms, \
                   last_success_ms, last_error, last_reconcile_ms FROM billing_sync WHERE one = 1";
        with_pool!(&self.ledger, pool => {
            let r = sqlx::query(sql).fetch_one(pool).await?;
            Ok(SyncRow {
                cursor_seq: r.try_get(0)?,
                lease_owner: r.try_get(1)?,
                lease_until_ms: r.try_get(2)?,
                last_run_ms: r.try_get(3)?,
                last_success_ms: r.try_get(4)?,
                last_error: r.try_get(5)?,
                last_reconcile_ms: r.try_get(6)?,
            })
        })
    }

    /// Take (or keep) the sync lease until `now_ms + ttl_ms`; `false` while another
    /// owner holds an unexpired one.
    pub async fn acquire_lease(
        &self,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, LedgerError> {
        let sql = "UPDATE billing_sync SET lease_owner = $1, lease_until_ms = $2 \
                   WHERE one = 1 AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until_ms < $3)";
        with_pool!(&self.ledger, pool => {
            let done = sqlx::query(sql)
                .bind(owner)
                .bind(now_ms + ttl_ms)
                .bind(now_ms)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub async fn release_lease(&self, owner: &str) -> Result<(), LedgerError> {
        let sql = "UPDATE billing_sync SET lease_owner = NULL, lease_until_ms = 0 \
                   WHERE one = 1 AND lease_owner = $1";
        with_pool!(&self.ledger, pool => {
            sqlx::query(sql).bind(owner).execute(pool).await?;
        });
        Ok(())
    }

    /// How the run that started at `started_ms` ended.
    pub async fn record_run(
        &self,
        started_ms: i64,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        with_pool!(&self.ledger, pool => {
            match error {
                None => sqlx::query(
                    "UPDATE billing_sync SET last_run_ms = $1, last_success_ms = $1, \
                     last_error = NULL WHERE one = 1",
                )
                .bind(started_ms)
                .execute(pool)
                .await?,
                Some(error) => sqlx::query(
                    "UPDATE billing_sync SET last_run_ms = $1, last_error = $2 WHERE one = 1",
                )
                .bind(started_ms)
                .bind(error)
                .execute(pool)
                .await?,
            };
        });
        Ok(())
    }

    /// Distinct (tenant, hour start) of ledger rows changed in `(after, upto]`, and of
    /// the places billable rows moved away from.
    pub async fn changed_hours(
        &self,
        after: i64,
        upto: i64,
    ) -> Result<Vec<(String, i64)>, LedgerError> {
        let sql = "SELECT tenant, (time_ms / 3600000) * 3600000 AS hour FROM usage_events \
                   WHERE seq > $1 AND seq <= $2 \
                   UNION \
                   SELECT tenant, (time_ms / 3600000) * 3600000 AS hour FROM billing_moves \
                   WHERE seq > $1 AND seq <= $2";
        with_pool!(&self.ledger, pool => {
            let rows = sqlx::query(sql).bind(after).bind(upto).fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
    }

    /// Meters that already have a `billing_hours` row in this hour, per tenant.
    pub async fn meters_in_hour(
        &self,
        hour_start_ms: i64,
        tenants: &[String],
    ) -> Result<Vec<(String, String)>, LedgerError> {
        let mut out = Vec::new();
        with_pool!(&self.ledger, pool => {
            for chunk in tenants.chunks(MAX_BINDS) {
                let mut qb = QueryBuilder::new("SELECT tenant, meter FROM billing_hours WHERE hour_start_ms = ");
                qb.push_bind(hour_start_ms).push(" AND tenant IN (");
                let mut list = qb.separated(", ");
                for tenant in chunk {
                    list.push_bind(tenant.as_str());
                }
                qb.push(")");
                for r in qb.build().fetch_all(pool).await? {
                    out.push((r.try_get(0)?, r.try_get(1)?));
                }
            }
        });
        Ok(out)
    }

    /// Store the ledger's totals for changed hours and move the cursor from `old` to
    /// `new`, in one transaction; `false` (nothing written) if the cursor was no
    /// longer `old` (another collector folded meanwhile).
    pub async fn fold_commit(
        &self,
        old: i64,
        new: i64,
        totals: &[(HourKey, i64)],
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<bool, LedgerError> {
        // Rows new to billing_hours start open, pending or (nothing billable) synced;
        // existing rows whose total changed become open or pending again.
        let status_of = |key: &HourKey, quantity: i64| {
            if key.hour_start_ms + HOUR_MS + grace_ms > now_ms {
                HourStatus::Open
            } else if quantity == 0 {
                HourStatus::Synced
            } else {
                HourStatus::Pending
            }
        };
        with_pool!(&self.ledger, pool => {
            let mut tx = pool.begin().await?;
            let moved = sqlx::query(
                "UPDATE billing_sync SET cursor_seq = $1 WHERE one = 1 AND cursor_seq = $2",
            )
            .bind(new)
            .bind(old)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            for chunk in totals.chunks(MAX_BINDS / 6) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO billing_hours (tenant, meter, hour_start_ms, ledger_quantity, \
                     status, updated_ms) ",
                );
                qb.push_values(chunk, |mut b, (key, quantity)| {
                    b.push_bind(key.tenant.as_str())
                        .push_bind(key.meter.as_str())
                        .push_bind(key.hour_start_ms)
                        .push_bind(*quantity)
                        .push_bind(status_of(key, *quantity).as_str())
                        .push_bind(now_ms);
                });
                qb.push(
                    " ON CONFLICT (tenant, meter, hour_start_ms) DO UPDATE SET \
                     ledger_quantity = excluded.ledger_quantity, \
                     status = CASE WHEN billing_hours.ledger_quantity = excluded.ledger_quantity \
                         THEN billing_hours.status \
                         WHEN excluded.status = 'open' THEN 'open' ELSE 'pending' END, \
                     version = CASE WHEN billing_hours.ledger_quantity = excluded.ledger_quantity \
                         THEN billing_hours.version ELSE billing_hours.version + 1 END, \
                     updated_ms = excluded.updated_ms",
                );
                qb.build().execute(&mut *tx).await?;
            }
            sqlx::query("DELETE FROM billing_moves WHERE seq <= $1")
                .bind(new)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Make `billing_customers` the given mapping (written only when it changed).
    pub async fn set_customers(&self, mapping: &[(String, String)]) -> Result<(), LedgerError> {
        let mut wanted: Vec<(String, String)> = mapping.to_vec();
        wanted.sort();
        let stored = self.customers().await?;
        if stored == wanted {
            return Ok(());
        }
        with_pool!(&self.ledger, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM billing_customers").execute(&mut *tx).await?;
            for chunk in wanted.chunks(MAX_BINDS / 2) {
                let mut qb = QueryBuilder::new("INSERT INTO billing_customers (tenant, customer) ");
                qb.push_values(chunk, |mut b, (tenant, customer)| {
                    b.push_bind(tenant.as_str()).push_bind(customer.as_str());
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The stored tenant -> customer mapping, sorted.
    pub async fn customers(&self) -> Result<Vec<(String, String)>, LedgerError> {
        with_pool!(&self.ledger, pool => {
            let rows = sqlx::query("SELECT tenant, customer FROM billing_customers ORDER BY tenant")
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
        })
    }

    /// Hours waiting for a mapping or a meter that are now beyond Stripe's window:
    /// they can no longer be sent, whatever happens.
    pub async fn expire_waiting(&self, horizon_ms: i64, now_ms: i64) -> Result<u64, LedgerError> {
        let sql = "UPDATE billing_hours SET status = 'expired', version = version + 1, \
                   updated_ms = $1 WHERE status IN ('unmapped', 'no_meter') AND hour_start_ms < $2";
        with_pool!(&self.ledger, pool => {
            let done = sqlx::query(sql).bind(now_ms).bind(horizon_ms).execute(pool).await?;
            Ok(done.rows_affected())
        })
    }

    /// Meters of hours waiting for a Stripe meter.
    pub async fn meters_waiting_for_a_meter(&self) -> Result<Vec<String>, LedgerError> {
        with_pool!(&self.ledger, pool => {
            let rows = sqlx::query(
                "SELECT DISTINCT meter FROM billing_hours WHERE status = 'no_meter' ORDER BY meter",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
        })
    }

    /// Up to `limit` hours that may need work, oldest first: closed by
    /// `closed_before_ms`, not backing off, and either pending, open or in error, or
    /// waiting for a mapping the tenant now has or a meter that now exists.
    pub async fn candidates(
        &self,
        closed_before_ms: i64,
        now_ms: i64,
        meters_now_resolvable: &[String],
        limit: i64,
    ) -> Result<Vec<HourKey>, LedgerError> {
        with_pool!(&self.ledger, pool => {
            let mut qb = QueryBuilder::new(
                "SELECT tenant, meter, hour_start_ms FROM billing_hours WHERE hour_start_ms <= ",
            );
            qb.push_bind(closed_before_ms)
                .push(" AND next_attempt_ms <= ")
                .push_bind(now_ms)
                .push(
                    " AND (status IN ('open', 'pending', 'error') OR (status = 'unmapped' AND \
                     tenant IN (SELECT tenant FROM billing_customers))",
                );
            if !meters_now_resolvable.is_empty() {
                qb.push(" OR (status = 'no_meter' AND meter IN (");
                let mut list = qb.separated(", ");
                for meter in meters_now_resolvable {
                    list.push_bind(meter.as_str());
                }
                qb.push("))");
            }
            qb.push(") ORDER BY hour_start_ms, tenant, meter LIMIT ").push_bind(limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok(HourKey {
                    tenant: r.try_get(0)?,
                    meter: r.try_get(1)?,
                    hour_start_ms: r.try_get(2)?,
                }))
                .collect()
        })
    }

    /// One hour and its events (in revision order).
    pub async fn load_hour(
        &self,
        key: &HourKey,
    ) -> Result<Option<(HourRow, Vec<EventRow>)>, LedgerError> {
        let Some(hour) = self.hour(key).await? else {
            return Ok(None);
        };
        let sql = "SELECT identifier, revision, event_name, customer, quantity, timestamp_s, \
                   status, created_ms FROM billing_events \
                   WHERE tenant = $1 AND meter = $2 AND hour_start_ms = $3 ORDER BY revision";
        let events = with_pool!(&self.ledger, pool => {
            let rows = sqlx::query(sql)
                .bind(&key.tenant)
                .bind(&key.meter)
                .bind(key.hour_start_ms)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| {
                    let status: String = r.try_get(6)?;
                    Ok(EventRow {
                        identifier: r.try_get(0)?,
                        revision: r.try_get(1)?,
                        event_name: r.try_get(2)?,
                        customer: r.try_get(3)?,
                        quantity: r.try_get(4)?,
                        timestamp_s: r.try_get(5)?,
                        status: EventStatus::parse(&status).ok_or_else(|| {
                            LedgerError::Corrupt(format!("billing event status {status:?}"))
                        })?,
                        created_ms: r.try_get(7)?,
                    })
                })
                .collect::<Result<Vec<_>, LedgerError>>()
        })?;
        Ok(Some((hour, events)))
    }

    async fn hour(&self, key: &HourKey) -> Result<Option<HourRow>, LedgerError> {
        let sql = format!(
            "SELECT {HOUR_COLUMNS} FROM billing_hours \
             WHERE tenant = $1 AND meter = $2 AND hour_start_ms = $3"
        );
        with_pool!(&self.ledger, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&key.tenant)
                .bind(&key.meter)
                .bind(key.hour_start_ms)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(read_hour).transpose()
        })
    }

    /// Record the decision to send `event` (and to cancel `cancel`, and to credit
    /// `credit`), if the hour is still at `version`. Returns whether it was written.
    pub async fn decide(
        &self,
        key: &HourKey,
        version: i64,
        event: Option<&NewEvent>,
        cancel: &[String],
        credit: Option<&NewCredit>,
        now_ms: i64,
    ) -> Result<bool, LedgerError> {
        let credited = credit.map_or(0, |c| c.quantity);
        with_pool!(&self.ledger, pool => {
            let mut tx = pool.begin().await?;
            let mut qb = QueryBuilder::new("UPDATE billing_hours SET version = version + 1, status = 'pending', updated_ms = ");
            qb.push_bind(now_ms)
                .push(", credited_quantity = credited_quantity + ")
                .push_bind(credited);
            if let Some(event) = event {
                qb.push(", revision = ").push_bind(event.revision);
            }
            qb.push(" WHERE tenant = ")
                .push_bind(key.tenant.as_str())
                .push(" AND meter = ")
                .push_bind(key.meter.as_str())
                .push(" AND hour_start_ms = ")
                .push_bind(key.hour_start_ms)
                .push(" AND version = ")
                .push_bind(version);
            if let Some(event) = event {
                qb.push(" AND revision < ").push_bind(event.revision);
            }
            if qb.build().execute(&mut *tx).await?.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            if !cancel.is_empty() {
                let mut qb = QueryBuilder::new("UPDATE billing_events SET status = 'cancel_intent' WHERE status = 'delivered' AND identifier IN (");
                let mut list = qb.separated(", ");
                for identifier in cancel {
                    list.push_bind(identifier.as_str());
                }
                qb.push(")");
                let marked = qb.build().execute(&mut *tx).await?.rows_affected();
                if marked != cancel.len() as u64 {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            if let Some(e) = event {
                sqlx::query(
                    "INSERT INTO billing_events (identifier, tenant, meter, hour_start_ms, revision, \
                     event_name, customer, quantity, timestamp_s, status, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'intent', $10)",
                )
                .bind(&e.identifier)
                .bind(&key.tenant)
                .bind(&key.meter)
                .bind(key.hour_start_ms)
                .bind(e.revision)
                .bind(&e.event_name)
                .bind(&e.customer)
                .bind(e.quantity)
                .bind(e.timestamp_s)
                .bind(e.created_ms)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(c) = credit {
                sqlx::query(
                    "INSERT INTO billing_credits (tenant, meter, hour_start_ms, customer, \
                     event_name, quantity, reason, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&key.tenant)
                .bind(&key.meter)
                .bind(key.hour_start_ms)
                .bind(c.customer.as_deref())
                .bind(&c.event_name)
                .bind(c.quantity)
                .bind(&c.reason)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Move one event from `from` to `to` (Stripe confirmed, refused or cancelled
    /// it) and recount what Stripe holds for its hour. A no-op if it had moved on.
    pub async fn finish_event(
        &self,
        key: &HourKey,
        identifier: &str,
        from: EventStatus,
        to: EventStatus,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        let sql = "UPDATE billing_events SET status = $1, error = $2, \
                   delivered_ms = CASE WHEN $1 = 'delivered' THEN $3 ELSE delivered_ms END, \
                   cancelled_ms = CASE WHEN $1 = 'cancelled' THEN $3 ELSE cancelled_ms END \
                   WHERE identifier = $4 AND status = $5";
        with_pool!(&self.ledger, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(sql)
                .bind(to.as_str())
                .bind(error)
                .bind(now_ms)
                .bind(identifier)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await?;
            recount!(tx, key, now_ms);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Stripe refused to cancel `identifier` (past its 24 hours): the event stays,
    /// for good, and the event that was to replace it is never sent.
    pub async fn cancel_refused(
        &self,
        key: &HourKey,
        identifier: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        with_pool!(&self.ledger, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE billing_events SET status = 'final', error = $1 \
                 WHERE identifier = $2 AND status = 'cancel_intent'",
            )
            .bind(error)
            .bind(identifier)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE billing_events SET status = 'abandoned', \
                 error = 'a cancel it waited for was refused' \
                 WHERE tenant = $1 AND meter = $2 AND hour_start_ms = $3 AND status = 'intent'",
            )
            .bind(&key.tenant)
            .bind(&key.meter)
            .bind(key.hour_start_ms)
            .execute(&mut *tx)
            .await?;
            recount!(tx, key, now_ms);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Store how the hour stands after this run.
    pub async fn set_outcome(
        &self,
        key: &HourKey,
        status: HourStatus,
        too_old: bool,
        error: Option<&str>,
        next_attempt_ms: i64,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        let sql = "UPDATE billing_hours SET status = $1, too_old = $2, last_error = $3, \
                   next_attempt_ms = $4, updated_ms = $5, version = version + 1 \
                   WHERE tenant = $6 AND meter = $7 AND hour_start_ms = $8 AND \
                   (status <> $1 OR too_old <> $2 OR next_attempt_ms <> $4 \
                    OR COALESCE(last_error, '') <> COALESCE($3, ''))";
        with_pool!(&self.ledger, pool => {
            sqlx::query(sql)
                .bind(status.as_str())
                .bind(too_old)
                .bind(error)
                .bind(next_attempt_ms)
                .bind(now_ms)
                .bind(&key.tenant)
                .bind(&key.meter)
                .bind(key.hour_start_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Hours and unsent units per status; synced hours only from `synced_since_ms`
    /// (they are most rows and only grow). Each status is an index range.
    pub async fn status_counts(
        &self,
        synced_since_ms: i64,
    ) -> Result<Vec<(HourStatus, i64, i64)>, LedgerError> {
        let sql = "SELECT COUNT(*), \
                   CAST(COALESCE(SUM(ledger_quantity - sent_quantity + credited_quantity), 0) AS BIGINT) \
                   FROM billing_hours WHERE status = $1 AND hour_start_ms >= $2";
        let mut out = Vec::with_capacity(HourStatus::ALL.len());
        for status in HourStatus::ALL {
            let since = if status == HourStatus::Synced {
                synced_since_ms
            } else {
                i64::MIN
            };
            let (hours, units): (i64, i64) = with_pool!(&self.ledger, pool => {
                let r = sqlx::query(sql)
                    .bind(status.as_str())
                    .bind(since)
                    .fetch_one(pool)
                    .await?;
                (r.try_get(0)?, r.try_get(1)?)
            });
            out.push((status, hours, units));
        }
        Ok(out)
    }

    /// Up to `limit` hours of `status`, newest first.
    pub async fn hours_with_status(
        &self,
        status: HourStatus,
        limit: i64,
    ) -> Result<Vec<HourRow>, LedgerError> {
        let sql = format!(
            "SELECT {HOUR_COLUMNS} FROM billing_hours WHERE status = $1 \
             ORDER BY hour_start_ms DESC, tenant, meter LIMIT $2"
        );
        with_pool!(&self.ledger, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(status.as_str())
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(read_hour).collect()
        })
    }

    /// Hours and unsent units of `status`, per tenant (`by_meter`: per meter).
    pub async fn unsent_by(
        &self,
        status: HourStatus,
        by_meter: bool,
        limit: i64,
    ) -> Result<Vec<UnsentGroup>, LedgerError> {
        let column = if by_meter { "meter" } else { "tenant" };
        let sql = format!(
            "SELECT {column}, COUNT(*), \
             CAST(SUM(ledger_quantity - sent_quantity + credited_quantity) AS BIGINT) \
             FROM billing_hours WHERE status = $1 GROUP BY {column} ORDER BY {column} LIMIT $2"
        );
        with_pool!(&self.ledger, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(status.as_str())
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| Ok(UnsentGroup {
                    name: r.try_get(0)?,
                    hours: r.try_get(1)?,
                    units: r.try_get(2)?,
                }))
                .collect()
        })
    }

    /// Credits, oldest first; open ones only unless `all`.
    pub async fn credits(&self, all: bool, limit: i64) -> Result<Vec<CreditRow>, LedgerError> {
        let sql = "SELECT id, tenant, meter, hour_start_ms, customer, event_name, quantity, \
                   reason, created_ms, resolved_ms, note FROM billing_credits \
                   WHERE $1 OR resolved_ms IS NULL ORDER BY id LIMIT $2";
        with_pool!(&self.ledger, pool => {
            let rows = sqlx::query(sql).bind(all).bind(limit).fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok(CreditRow {
                    id: r.try_get(0)?,
                    tenant: r.try_get(1)?,
                    meter: r.try_get(2)?,
                    hour_start_ms: r.try_get(3)?,
                    customer: r.try_get(4)?,
                    event_name: r.try_get(5)?,
                    quantity: r.try_get(6)?,
                    reason: r.try_get(7)?,
                    created_ms: r.try_get(8)?,
                    resolved_ms: r.try_get(9)?,
                    note: r.try_get(10)?,
                }))
                .collect()
        })
    }

    /// For the customer's hour on `event_name` (events at `timestamp_s`), apart from
    /// `identifier`: the units Stripe holds by Turnpike's records, and how many other
    /// steps are unconfirmed.
    pub async fn customer_hour(
        &self,
        customer: &str,
        event_name: &str,
        timestamp_s: i64,
        identifier: &str,
    ) -> Result<(i64, i64), LedgerError> {
        let sql = "SELECT \
            CAST(COALESCE(SUM(CASE WHEN status IN ('delivered', 'final', 'cancel_intent') \
                 THEN quantity ELSE 0 END), 0) AS BIGINT), \
            CAST(COALESCE(SUM(CASE WHEN status IN ('intent', 'cancel_intent') \
                 THEN 1 ELSE 0 END), 0) AS BIGINT) \
            FROM billing_events WHERE customer = $1 AND event_name = $2 AND timestamp_s = $3 \
            AND identifier <> $4";
        with_pool!(&self.ledger, pool => {
            let r = sqlx::query(sql)
                .bind(customer)
                .bind(event_name)
                .bind(timestamp_s)
                .bind(identifier)
                .fetch_one(pool)
                .await?;
            Ok((r.try_get(0)?, r.try_get(1)?))
        })
    }

    /// Decided steps Stripe has not confirmed yet (intents and cancels in flight).
    pub async fn in_flight(&self) -> Result<i64, LedgerError> {
        let sql = "SELECT COUNT(*) FROM billing_events WHERE status IN ('intent', 'cancel_intent')";
        with_pool!(&self.ledger, pool => {
            Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
        })
    }

    /// Open credits: how many, how many units.
    pub async fn open_credit_totals(&self) -> Result<(i64, i64), LedgerError> {
        let sql = "SELECT COUNT(*), CAST(COALESCE(SUM(quantity), 0) AS BIGINT) \
                   FROM billing_credits WHERE resolved_ms IS NULL";
        with_pool!(&self.ledger, pool => {
            let r = sqlx::query(sql).fetch_one(pool).await?;
            Ok((r.try_get(0)?, r.try_get(1)?))
        })
    }

    /// Mark a credit as issued; `false` if there is no open credit with that id.
    pub async fn resolve_credit(
        &self,
        id: i64,
        note: &str,
        now_ms: i64,
    ) -> Result<bool, LedgerError> {
        let sql = "UPDATE billing_credits SET resolved_ms = $1, note = $2 \
                   WHERE id = $3 AND resolved_ms IS NULL";
        with_pool!(&self.ledger, pool => {
            let done = sqlx::query(sql).bind(now_ms).bind(note).bind(id).execute(pool).await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Per meter, for `tenant` and hours starting in `[start_ms, end_ms)`.
    pub async fn period_sums(
        &self,
        tenant: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<PeriodSums, LedgerError> {
        let sql = "SELECT meter, CAST(SUM(ledger_quantity) AS BIGINT), \
                   CAST(SUM(sent_quantity) AS BIGINT), CAST(SUM(credited_quantity) AS BIGINT) \
                   FROM billing_hours WHERE tenant = $1 AND hour_start_ms >= $2 \
                   AND hour_start_ms < $3 GROUP BY meter ORDER BY meter";
        with_pool!(&self.ledger, pool => {
            let rows = sqlx::query(sql)
                .bind(tenant)
                .bind(start_ms)
                .bind(end_ms)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect()
        })
    }

    /// Replace the stored reconciliation with `rows`.
    pub async fn record_reconcile(
        &self,
        rows: &[DriftRow],
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        with_pool!(&self.ledger, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE billing_sync SET last_reconcile_ms = $1 WHERE one = 1")
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM billing_drift").execute(&mut *tx).await?;
            for chunk in rows.chunks(MAX_BINDS / 9) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO billing_drift (customer, event_name, period_start_ms, \
                     period_end_ms, ledger_quantity, sent_quantity, credited_quantity, \
                     stripe_quantity, checked_ms) ",
                );
                qb.push_values(chunk, |mut b, d| {
                    b.push_bind(d.customer.as_str())
                        .push_bind(d.event_name.as_str())
                        .push_bind(d.period_start_ms)
                        .push_bind(d.period_end_ms)
                        .push_bind(d.ledger_quantity)
                        .push_bind(d.sent_quantity)
                        .push_bind(d.credited_quantity)
                        .push_bind(d.stripe_quantity)
                        .push_bind(d.checked_ms);
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn drift(&self) -> Result<Vec<DriftRow>, LedgerError> {
        let sql = "SELECT customer, event_name, period_start_ms, period_end_ms, ledger_quantity, \
                   sent_quantity, credited_quantity, stripe_quantity, checked_ms FROM billing_drift \
                   ORDER BY customer, event_name, period_start_ms";
        with_pool!(&self.ledger, pool => {
            let rows = sqlx::query(sql).fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok(DriftRow {
                    customer: r.try_get(0)?,
                    event_name: r.try_get(1)?,
                    period_start_ms: r.try_get(2)?,
                    period_end_ms: r.try_get(3)?,
                    ledger_quantity: r.try_get(4)?,
                    sent_quantity: r.try_get(5)?,
                    credited_quantity: r.try_get(6)?,
                    stripe_quantity: r.try_get(7)?,
                    checked_ms: r.try_get(8)?,
                }))
                .collect()
        })
    }
}

const HOUR_COLUMNS: &str = "tenant, meter, hour_start_ms, ledger_quantity, sent_quantity, \
    credited_quantity, revision, version, status, too_old, last_error, next_attempt_ms";

/// Reading a `billing_hours` row the same way from both drivers.
trait ReadHour {
    fn hour_row(&self) -> Result<HourRow, LedgerError>;
}

macro_rules! impl_read_hour {
    ($row:ty) => {
        impl ReadHour for $row {
            fn hour_row(&self) -> Result<HourRow, LedgerError> {
                let status: String = self.try_get(8)?;
                Ok(HourRow {
                    key: HourKey {
                        tenant: self.try_get(0)?,
                        meter: self.try_get(1)?,
                        hour_start_ms: self.try_get(2)?,
                    },
                    ledger_quantity: self.try_get(3)?,
                    sent_quantity: self.try_get(4)?,
                    credited_quantity: self.try_get(5)?,
                    revision: self.try_get(6)?,
                    version: self.try_get(7)?,
                    status: HourStatus::parse(&status).ok_or_else(|| {
                        LedgerError::Corrupt(format!("billing hour status {status:?}"))
                    })?,
                    too_old: self.try_get(9)?,
                    last_error: self.try_get(10)?,
                    next_attempt_ms: self.try_get(11)?,
                })
            }
        }
    };
}
impl_read_hour!(sqlx::sqlite::SqliteRow);
impl_read_hour!(sqlx::postgres::PgRow);

fn read_hour<R: ReadHour>(r: &R) -> Result<HourRow, LedgerError> {
    r.hour_row()
}
