//! The usage ledger: SQLite (default) or PostgreSQL behind one type.
//!
//! Why an enum of two native pools and not `sqlx::Any`: the SQL is the same text for
//! both (`$N` placeholders, `ON CONFLICT ... DO NOTHING RETURNING`, row values, all
//! understood by SQLite 3.35+ and PostgreSQL), so one macro expands each query once per
//! backend, type-checked against each driver. Native pools keep SQLite's typed connect
//! options (WAL, `synchronous`, busy timeout, create-if-missing) that `Any` cannot
//! express, and avoid `Any`'s runtime driver registry. Only the migrations differ.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, QueryBuilder, Row, SqlitePool};

use crate::event::{decision_str, LedgerEvent};

/// Stay well under SQLite's 32766 and PostgreSQL's 65535 bind parameters per statement.
const MAX_BINDS_PER_STATEMENT: usize = 30_000;
const EVENT_COLUMNS: usize = 15;
const METER_COLUMNS: usize = 7;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database URL must start with sqlite:// or postgres:// (got {0:?})")]
    UnsupportedUrl(String),
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Which engine holds the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Backend, LedgerError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(LedgerError::UnsupportedUrl(url.to_owned()))
        }
    }
}

#[derive(Debug, Clone)]
pub enum Ledger {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Run `$body` with `$pool` bound to whichever native pool the ledger holds. The body
/// is compiled once per backend, so it must be valid SQL and Rust for both.
macro_rules! with_pool {
    ($ledger:expr, $pool:ident => $body:expr) => {
        match $ledger {
            Ledger::Sqlite($pool) => $body,
            Ledger::Postgres($pool) => $body,
        }
    };
}

/// Result of storing one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Events new to the ledger.
    pub inserted: u64,
    /// Events whose (source, id) was already stored.
    pub already_stored: u64,
}

/// One event as listed by the query API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub source: String,
    pub id: String,
    pub time_ms: i64,
    pub plan: Option<String>,
    pub method: String,
    pub route: String,
    pub status: i32,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub duration_ms: i64,
    pub decision: String,
    pub billable: bool,
    pub meters_json: String,
    pub received_at_ms: i64,
}

/// A position in a tenant's event listing: the last row already returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKey {
    pub time_ms: i64,
    pub source: String,
    pub id: String,
}

impl Ledger {
    /// Connect (creating a missing SQLite file) and apply pending migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Ledger, LedgerError> {
        let ledger = match Backend::from_url(url)? {
            Backend::Sqlite => {
                // A batch is acknowledged only once durable. In WAL mode `NORMAL` survives
                // a process crash but may lose the last commits on power loss; `FULL`
                // fsyncs the WAL at every commit. One fsync per batch is cheap enough.
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await?;
                sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
                Ledger::Sqlite(pool)
            }
            Backend::Postgres => {
                let options = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await?;
                // sqlx holds an advisory lock while migrating, so replicas starting
                // together on one database do not race.
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
                Ledger::Postgres(pool)
            }
        };
        Ok(ledger)
    }

    pub fn backend(&self) -> Backend {
        match self {
            Ledger::Sqlite(_) => Backend::Sqlite,
            Ledger::Postgres(_) => Backend::Postgres,
        }
    }

    /// Cheap round trip for health checks.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        with_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    /// Store `events` (unique keys, sorted by key: see [`crate::event::dedup_sorted`])
    /// in one transaction. Keys already in the ledger are skipped, not overwritten.
    /// Returns after the commit, i.e. once the batch is durable.
    pub async fn store(
        &self,
        events: &[LedgerEvent],
        received_at_ms: i64,
    ) -> Result<Stored, LedgerError> {
        if events.is_empty() {
            return Ok(Stored {
                inserted: 0,
                already_stored: 0,
            });
        }
        let inserted: HashSet<(String, String)> = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut inserted = HashSet::with_capacity(events.len());
            for chunk in events.chunks(MAX_BINDS_PER_STATEMENT / EVENT_COLUMNS) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO usage_events (source, id, tenant, time_ms, plan, method, route, \
                     status, request_bytes, response_bytes, duration_ms, decision, billable, \
                     meters, received_at_ms) ",
                );
                qb.push_values(chunk, |mut row, e| {
                    row.push_bind(e.source.as_str())
                        .push_bind(e.id.as_str())
                        .push_bind(e.tenant.as_str())
                        .push_bind(e.time_ms)
                        .push_bind(e.plan.as_deref())
                        .push_bind(e.method.as_str())
                        .push_bind(e.route.as_str())
                        .push_bind(e.status)
                        .push_bind(e.request_bytes)
                        .push_bind(e.response_bytes)
                        .push_bind(e.duration_ms)
                        .push_bind(decision_str(e.decision))
                        .push_bind(e.billable)
                        .push_bind(e.meters_json())
                        .push_bind(received_at_ms);
                });
                // Only rows this transaction inserted come back; a concurrent writer of
                // the same key makes us wait for its commit, then skip.
                qb.push(" ON CONFLICT (source, id) DO NOTHING RETURNING source, id");
                for row in qb.build().fetch_all(&mut *tx).await? {
                    inserted.insert((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?));
                }
            }
            let meter_rows: Vec<(&LedgerEvent, &str, i64)> = events
                .iter()
                .filter(|e| inserted.contains(&(e.source.clone(), e.id.clone())))
                .flat_map(|e| e.meters.iter().map(move |(m, q)| (e, m.as_str(), *q)))
                .collect();
            for chunk in meter_rows.chunks(MAX_BINDS_PER_STATEMENT / METER_COLUMNS) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO usage_meters (source, id, meter, quantity, tenant, time_ms, billable) ",
                );
                qb.push_values(chunk, |mut row, (e, meter, quantity)| {
                    row.push_bind(e.source.as_str())
                        .push_bind(e.id.as_str())
                        .push_bind(*meter)
                        .push_bind(*quantity)
                        .push_bind(e.tenant.as_str())
                        .push_bind(e.time_ms)
                        .push_bind(e.billable);
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            inserted
        });
        let inserted = inserted.len() as u64;
        Ok(Stored {
            inserted,
            already_stored: events.len() as u64 - inserted,
        })
    }

    /// Billable quantity per meter for `tenant` with `start_ms <= time < end_ms`,
    /// sorted by meter name.
    pub async fn billable_totals(
        &self,
        tenant: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(String, i64)>, LedgerError> {
        let sql = "SELECT meter, CAST(SUM(quantity) AS BIGINT) AS total FROM usage_meters \
                   WHERE tenant = $1 AND billable = $2 AND time_ms >= $3 AND time_ms < $4 \
                   GROUP BY meter ORDER BY meter";
        with_pool!(self, pool => {
            let rows = sqlx::query(sql)
                .bind(tenant)
                .bind(true)
                .bind(start_ms)
                .bind(end_ms)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect()
        })
    }

    /// Up to `limit` of `tenant`'s events after `after`, in (time, source, id) order.
    pub async fn events_after(
        &self,
        tenant: &str,
        after: Option<&EventKey>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        // A key below every real one stands for "from the start", so one statement
        // (and one query plan) serves every page.
        let start = EventKey {
            time_ms: i64::MIN,
            source: String::new(),
            id: String::new(),
        };
        let after = after.unwrap_or(&start);
        let sql = "SELECT source, id, time_ms, plan, method, route, status, request_bytes, \
                   response_bytes, duration_ms, decision, billable, meters, received_at_ms \
                   FROM usage_events WHERE tenant = $1 AND (time_ms, source, id) > ($2, $3, $4) \
                   ORDER BY time_ms, source, id LIMIT $5";
        with_pool!(self, pool => {
            let rows = sqlx::query(sql)
                .bind(tenant)
                .bind(after.time_ms)
                .bind(after.source.as_str())
                .bind(after.id.as_str())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(StoredEvent {
                        source: r.try_get(0)?,
                        id: r.try_get(1)?,
                        time_ms: r.try_get(2)?,
                        plan: r.try_get(3)?,
                        method: r.try_get(4)?,
                        route: r.try_get(5)?,
                        status: r.try_get(6)?,
                        request_bytes: r.try_get(7)?,
                        response_bytes: r.try_get(8)?,
                        duration_ms: r.try_get(9)?,
                        decision: r.try_get(10)?,
                        billable: r.try_get(11)?,
                        meters_json: r.try_get(12)?,
                        received_at_ms: r.try_get(13)?,
                    })
                })
                .collect()
        })
    }

    /// The plan recorded on the tenant's most recent event, if any: the plan a claim
    /// put it on, which decides its billing anchor when the plans file has no override.
    pub async fn latest_plan(&self, tenant: &str) -> Result<Option<String>, LedgerError> {
        let sql = "SELECT plan FROM usage_events WHERE tenant = $1 AND plan IS NOT NULL \
                   ORDER BY time_ms DESC LIMIT 1";
        with_pool!(self, pool => {
            let row = sqlx::query(sql).bind(tenant).fetch_optional(pool).await?;
            row.map(|r| r.try_get::<String, _>(0)).transpose().map_err(LedgerError::from)
        })
    }

    /// Number of events stored (all tenants). For tests and operators.
    pub async fn count_events(&self) -> Result<i64, LedgerError> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT COUNT(*) FROM usage_events").fetch_one(pool).await?;
            Ok(row.try_get::<i64, _>(0)?)
        })
    }
}
