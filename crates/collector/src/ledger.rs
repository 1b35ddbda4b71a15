//! The usage ledger: SQLite (default) or PostgreSQL behind one type.
//!
//! Why an enum of two native pools and not `sqlx::Any`: the SQL is the same text for
//! both (`$N` placeholders, `ON CONFLICT ... DO NOTHING RETURNING`, row values, all
//! understood by SQLite 3.35+ and PostgreSQL), so one macro expands each query once per
//! backend, type-checked against each driver. Native pools keep SQLite's typed connect
//! options (WAL, `synchronous`, busy timeout, create-if-missing) that `Any` cannot
//! express, and avoid `Any`'s runtime driver registry. Only the migrations differ.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, PgPool, QueryBuilder, Row as _, SqlitePool};

use crate::event::Quarantined;
use crate::merge::{merge, Decision, Fact, Row};

/// Stay well under SQLite's 32766 and PostgreSQL's 65535 bind parameters per statement.
const MAX_BINDS_PER_STATEMENT: usize = 30_000;
const EVENT_COLUMNS: usize = 21;
const METER_COLUMNS: usize = 6;
/// Rows (ids) per statement of [`Ledger::apply`]: its statements are sized in powers
/// of two up to these, so each size is prepared once per connection and then reused
/// from the statement cache. A statement sized to each round's rows was parsed anew
/// every round (`tests/ledger_bench.rs`: ~34 µs of CPU per row, ~28 without).
const EVENT_ROWS_PER_STATEMENT: usize = 256;
const METER_ROWS_PER_STATEMENT: usize = 1024;
const IDS_PER_STATEMENT: usize = 1024;
const _: () = assert!(EVENT_ROWS_PER_STATEMENT * EVENT_COLUMNS <= MAX_BINDS_PER_STATEMENT);
const _: () = assert!(METER_ROWS_PER_STATEMENT * METER_COLUMNS <= MAX_BINDS_PER_STATEMENT);
const _: () = assert!(IDS_PER_STATEMENT <= MAX_BINDS_PER_STATEMENT);

/// Columns of `usage_events`, in the order [`read_row`] expects.
const ROW_COLUMNS: &str = "id, source, tenant, time_ms, plan, method, route, status, \
    request_bytes, response_bytes, duration_ms, decision, billable, meters, received_at_ms, \
    counted, reported, refunded, lease, seq, settled";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database URL must start with sqlite:// or postgres:// (got {0:?})")]
    UnsupportedUrl(String),
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Path(String),
    #[error("ledger row unreadable: {0}")]
    Corrupt(String),
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
    Sqlite {
        pool: SqlitePool,
        /// One connection that every merge of facts ([`Ledger::apply`]) goes through.
        /// SQLite has one writer at a time anyway, and a connection drops its page
        /// cache whenever another connection has written: merges spread over the pool
        /// read their B-tree pages back from the OS every time, and one connection
        /// of their own keeps them cached.
        writer: SqlitePool,
    },
    Postgres(PgPool),
}

/// The page cache of the SQLite writer connection: the pages of the ledger's indexes
/// that merges touch (one per tenant in each tenant-keyed index).
const SQLITE_WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Run `$body` with `$pool` bound to whichever native pool the ledger holds (`writer`
/// first: on SQLite, the one connection merges go through). The body is compiled once
/// per backend, so it must be valid SQL and Rust for both.
macro_rules! with_pool {
    ($ledger:expr, $pool:ident => $body:expr) => {
        match $ledger {
            $crate::ledger::Ledger::Sqlite { pool: $pool, .. } => $body,
            $crate::ledger::Ledger::Postgres($pool) => $body,
        }
    };
    (writer $ledger:expr, $pool:ident => $body:expr) => {
        match $ledger {
            $crate::ledger::Ledger::Sqlite { writer: $pool, .. } => $body,
            $crate::ledger::Ledger::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// What applying a set of facts did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows new to the ledger.
    pub inserted: u64,
    /// Existing rows that changed (enriched, counted, refunded).
    pub updated: u64,
    /// Facts the ledger already had: nothing changed.
    pub unchanged: u64,
}

/// One ledger row as the query API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub row: Row,
    pub billable: bool,
    pub seq: i64,
}

/// One quarantined event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineEntry {
    pub qid: i64,
    pub received_at_ms: i64,
    pub origin: String,
    pub field: String,
    pub reason: String,
    pub raw: String,
}

/// Billable quantity of one tenant and meter in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourTotal {
    pub tenant: String,
    pub meter: String,
    pub hour_start_ms: i64,
    pub quantity: i64,
}

impl Ledger {
    /// Connect (creating a missing SQLite file and its directory) and apply pending
    /// migrations.
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
                    .busy_timeout(Duration::from_secs(5))
                    // The statement journals of the ledger's multi-row writes: in
                    // memory, not a temporary file written on every page they touch.
                    .pragma("temp_store", "memory")
                    // 16 KiB pages for a new ledger (an existing one keeps its own):
                    // over many tenants each row touches a page in every tenant-keyed
                    // index, and bigger pages split and deepen those B-trees less
                    // (13% less CPU per row over 1,000 tenants, docs/benchmarks.md).
                    .page_size(16384);
                crate::sqlite_path::prepare(options.get_filename())?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options.clone())
                    .await
                    .map_err(|e| crate::sqlite_path::explain(options.get_filename(), e))?;
                sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
                // Kept open for good: closing it would drop its cache.
                let writer = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(5))
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(
                        options.pragma("cache_size", format!("-{SQLITE_WRITER_CACHE_KIB}")),
                    )
                    .await?;
                Ledger::Sqlite { pool, writer }
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
            Ledger::Sqlite { .. } => Backend::Sqlite,
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
        if let Ledger::Sqlite { writer, .. } = self {
            writer.close().await;
        }
        with_pool!(self, pool => pool.close().await)
    }

    /// Merge `facts` into the ledger in one transaction; returns after the commit, i.e.
    /// once durable. Writers serialise on `ledger_seq`, so rows take change sequence
    /// numbers in commit order and a reader of `seq > N` never misses a commit.
    pub async fn apply(&self, facts: &[Fact], received_at_ms: i64) -> Result<Applied, LedgerError> {
        if facts.is_empty() {
            return Ok(Applied::default());
        }
        // Ids in first-seen order, sorted, so concurrent writers never deadlock.
        let mut ids: Vec<&str> = facts.iter().map(Fact::id).collect();
        ids.sort_unstable();
        ids.dedup();
        let reserve = i64::try_from(ids.len()).unwrap_or(i64::MAX);
        with_pool!(writer self, pool => {
            let mut tx = pool.begin().await?;
            let next: i64 = sqlx::query_scalar(
                "UPDATE ledger_seq SET next = next + $1 WHERE one = 1 RETURNING next",
            )
            .bind(reserve)
            .fetch_one(&mut *tx)
            .await?;
            let mut seq = next - reserve;
            // Each stored row with its seq, under which its meters are stored.
            let mut existing: HashMap<String, (Row, i64)> = HashMap::with_capacity(ids.len());
            for chunk in pow2_chunks(&ids, IDS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new(format!("SELECT {ROW_COLUMNS} FROM usage_events WHERE id IN ("));
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                qb.push(")");
                for r in qb.build().fetch_all(&mut *tx).await? {
                    let stored = read_row(&r)?;
                    existing.insert(stored.row.id.clone(), (stored.row, stored.seq));
                }
            }
            let mut applied = Applied::default();
            let mut merged: HashMap<String, Row> = HashMap::with_capacity(ids.len());
            for fact in facts {
                let before = merged
                    .remove(fact.id())
                    .or_else(|| existing.get(fact.id()).map(|(row, _)| row.clone()));
                let after = merge(before, fact, received_at_ms);
                merged.insert(after.id.clone(), after);
            }
            let mut changed: Vec<(Row, i64)> = Vec::new();
            for id in &ids {
                let Some(row) = merged.remove(*id) else { continue };
                match existing.get(*id) {
                    Some((old, _)) if *old == row => applied.unchanged += 1,
                    old => {
                        if old.is_some() {
                            applied.updated += 1;
                        } else {
                            applied.inserted += 1;
                        }
                        changed.push((row, seq));
                        seq += 1;
                    }
                }
            }
            // Facts beyond one per id that changed nothing still count as seen.
            applied.unchanged += (facts.len() - ids.len()) as u64;
            for chunk in pow2_chunks(&changed, EVENT_ROWS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new(format!("INSERT INTO usage_events ({ROW_COLUMNS}) "));
                qb.push_values(chunk, |mut b, (row, seq)| {
                    b.push_bind(row.id.as_str())
                        .push_bind(row.source.as_str())
                        .push_bind(row.tenant.as_str())
                        .push_bind(row.time_ms)
                        .push_bind(row.plan.as_deref())
                        .push_bind(row.method.as_str())
                        .push_bind(row.route.as_str())
                        .push_bind(row.status)
                        .push_bind(row.request_bytes)
                        .push_bind(row.response_bytes)
                        .push_bind(row.duration_ms)
                        .push_bind(row.decision.as_str())
                        .push_bind(row.billable())
                        .push_bind(row.meters_json())
                        .push_bind(row.received_at_ms)
                        .push_bind(row.counted)
                        .push_bind(row.reported)
                        .push_bind(row.refunded)
                        .push_bind(row.lease.as_deref())
                        .push_bind(*seq)
                        .push_bind(row.settled);
                });
                qb.push(
                    " ON CONFLICT (id) DO UPDATE SET source = excluded.source, \
                     tenant = excluded.tenant, time_ms = excluded.time_ms, plan = excluded.plan, \
                     method = excluded.method, route = excluded.route, status = excluded.status, \
                     request_bytes = excluded.request_bytes, response_bytes = excluded.response_bytes, \
                     duration_ms = excluded.duration_ms, decision = excluded.decision, \
                     billable = excluded.billable, meters = excluded.meters, \
                     counted = excluded.counted, reported = excluded.reported, \
                     refunded = excluded.refunded, lease = excluded.lease, seq = excluded.seq, \
                     settled = excluded.settled",
                );
                qb.build().execute(&mut *tx).await?;
            }
            // A changed row's meters move to its new seq; rows new to the ledger have
            // none to remove (writers are serialised since the `ledger_seq` update, so
            // `existing` is still true).
            let replaced: Vec<i64> = changed
                .iter()
                .filter_map(|(row, _)| existing.get(&row.id).map(|(_, old_seq)| *old_seq))
                .collect();
            for chunk in pow2_chunks(&replaced, IDS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new("DELETE FROM usage_meters WHERE seq IN (");
                let mut list = qb.separated(", ");
                for old_seq in chunk {
                    list.push_bind(*old_seq);
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
            }
            let meter_rows: Vec<(&Row, i64, &str, i64, bool)> = changed
                .iter()
                .flat_map(|(row, seq)| {
                    let billable = row.billable();
                    row.meters.iter().map(move |(m, q)| (row, *seq, m.as_str(), *q, billable))
                })
                .collect();
            for chunk in pow2_chunks(&meter_rows, METER_ROWS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO usage_meters (seq, meter, quantity, tenant, time_ms, billable) ",
                );
                qb.push_values(chunk, |mut b, (row, seq, meter, quantity, billable)| {
                    b.push_bind(*seq)
                        .push_bind(*meter)
                        .push_bind(*quantity)
                        .push_bind(row.tenant.as_str())
                        .push_bind(row.time_ms)
                        .push_bind(*billable);
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(applied)
        })
    }

    /// Keep events that could not be taken aside, with why.
    pub async fn quarantine(
        &self,
        origin: &str,
        items: &[Quarantined],
        received_at_ms: i64,
    ) -> Result<(), LedgerError> {
        if items.is_empty() {
            return Ok(());
        }
        with_pool!(self, pool => {
            for chunk in items.chunks(MAX_BINDS_PER_STATEMENT / 5) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO quarantine (received_at_ms, origin, field, reason, raw) ",
                );
                qb.push_values(chunk, |mut b, q| {
                    b.push_bind(received_at_ms)
                        .push_bind(origin)
                        .push_bind(q.field.as_str())
                        .push_bind(q.reason.as_str())
                        .push_bind(q.raw.as_str());
                });
                qb.build().execute(pool).await?;
            }
        });
        Ok(())
    }

    /// Up to `limit` quarantined events after `after_qid`, oldest first.
    pub async fn quarantined_after(
        &self,
        after_qid: i64,
        limit: u32,
    ) -> Result<Vec<QuarantineEntry>, LedgerError> {
        let sql = "SELECT qid, received_at_ms, origin, field, reason, raw FROM quarantine \
                   WHERE qid > $1 ORDER BY qid LIMIT $2";
        with_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(after_qid).bind(i64::from(limit)).fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok(QuarantineEntry {
                    qid: r.try_get(0)?,
                    received_at_ms: r.try_get(1)?,
                    origin: r.try_get(2)?,
                    field: r.try_get(3)?,
                    reason: r.try_get(4)?,
                    raw: r.try_get(5)?,
                }))
                .collect()
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

    /// Units of `meter` the counter counted and did not refund, for `tenant` with
    /// `start_ms <= time < end_ms`: what its Redis window should hold.
    pub async fn counted_total(
        &self,
        tenant: &str,
        meter: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<i64, LedgerError> {
        let sql = "SELECT CAST(COALESCE(SUM(m.quantity), 0) AS BIGINT) FROM usage_meters m \
                   JOIN usage_events e ON e.seq = m.seq \
                   WHERE m.tenant = $1 AND m.meter = $2 AND m.time_ms >= $3 AND m.time_ms < $4 \
                   AND e.counted = $5 AND e.refunded = $6";
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar(sql)
                .bind(tenant)
                .bind(meter)
                .bind(start_ms)
                .bind(end_ms)
                .bind(true)
                .bind(false)
                .fetch_one(pool)
                .await?)
        })
    }

    /// Billable quantity per tenant, meter and hour with `start_ms <= time < end_ms`
    /// (`tenant` alone when given), in (tenant, meter, hour) order.
    pub async fn hourly_totals(
        &self,
        tenant: Option<&str>,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<HourTotal>, LedgerError> {
        // Integer division floors for the non-negative times the ledger holds.
        let sql = "SELECT tenant, meter, (time_ms / 3600000) * 3600000 AS hour, \
                   CAST(SUM(quantity) AS BIGINT) FROM usage_meters \
                   WHERE billable = $1 AND time_ms >= $2 AND time_ms < $3 \
                   AND ($4 = '' OR tenant = $4) \
                   GROUP BY tenant, meter, hour ORDER BY tenant, meter, hour";
        with_pool!(self, pool => {
            let rows = sqlx::query(sql)
                .bind(true)
                .bind(start_ms)
                .bind(end_ms)
                .bind(tenant.unwrap_or(""))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| Ok(HourTotal {
                    tenant: r.try_get(0)?,
                    meter: r.try_get(1)?,
                    hour_start_ms: r.try_get(2)?,
                    quantity: r.try_get(3)?,
                }))
                .collect()
        })
    }

    /// Billable quantity per tenant and meter with `start_ms <= time < end_ms`, for
    /// the given tenants only, in (tenant, meter) order.
    pub async fn tenant_meter_totals(
        &self,
        tenants: &[String],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(String, String, i64)>, LedgerError> {
        let mut out = Vec::new();
        with_pool!(self, pool => {
            for chunk in tenants.chunks(MAX_BINDS_PER_STATEMENT) {
                let mut qb = QueryBuilder::new(
                    "SELECT tenant, meter, CAST(SUM(quantity) AS BIGINT) FROM usage_meters \
                     WHERE billable = ",
                );
                qb.push_bind(true)
                    .push(" AND time_ms >= ")
                    .push_bind(start_ms)
                    .push(" AND time_ms < ")
                    .push_bind(end_ms)
                    .push(" AND tenant IN (");
                let mut list = qb.separated(", ");
                for tenant in chunk {
                    list.push_bind(tenant.as_str());
                }
                qb.push(") GROUP BY tenant, meter ORDER BY tenant, meter");
                for r in qb.build().fetch_all(pool).await? {
                    out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
                }
            }
        });
        Ok(out)
    }

    /// Up to `limit` rows changed after change sequence `after_seq`, in commit order;
    /// `tenant` alone when given. A row changed twice is listed at its last change.
    pub async fn changes_after(
        &self,
        tenant: Option<&str>,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        let sql = match tenant {
            Some(_) => format!(
                "SELECT {ROW_COLUMNS} FROM usage_events WHERE tenant = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3"
            ),
            None => format!(
                "SELECT {ROW_COLUMNS} FROM usage_events WHERE $1 = '' AND seq > $2 \
                 ORDER BY seq LIMIT $3"
            ),
        };
        with_pool!(self, pool => {
            let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(tenant.unwrap_or(""))
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(read_row).collect()
        })
    }

    /// Rows with `start_ms <= time < end_ms` (`tenant` alone when given), for
    /// reconciliation.
    pub async fn rows_between(
        &self,
        tenant: Option<&str>,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM usage_events WHERE ($1 = '' OR tenant = $1) \
             AND time_ms >= $2 AND time_ms < $3 ORDER BY tenant, time_ms, id"
        );
        with_pool!(self, pool => {
            let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(tenant.unwrap_or(""))
                .bind(start_ms)
                .bind(end_ms)
                .fetch_all(pool)
                .await?;
            rows.iter().map(read_row).collect()
        })
    }

    /// The highest change sequence committed so far (0 for an empty ledger).
    pub async fn last_seq(&self) -> Result<i64, LedgerError> {
        with_pool!(self, pool => {
            let next: i64 = sqlx::query_scalar("SELECT next FROM ledger_seq WHERE one = 1")
                .fetch_one(pool)
                .await?;
            Ok(next - 1)
        })
    }

    /// The tenant's `limit` latest rows by billing time, newest first (the console).
    pub async fn recent_events(
        &self,
        tenant: &str,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM usage_events WHERE tenant = $1 \
             ORDER BY time_ms DESC, id DESC LIMIT $2"
        );
        with_pool!(self, pool => {
            let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(tenant)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(read_row).collect()
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

    /// Number of rows stored (all tenants). For tests and operators.
    pub async fn count_events(&self) -> Result<i64, LedgerError> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT COUNT(*) FROM usage_events").fetch_one(pool).await?;
            Ok(row.try_get::<i64, _>(0)?)
        })
    }
}

/// `items` in chunks of `max` (a power of two), the rest in chunks of decreasing powers
/// of two: at most `log2(max) + 1` distinct sizes, whatever the number of items.
fn pow2_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    debug_assert!(max.is_power_of_two());
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = max.min(1 << rest.len().ilog2());
        let (chunk, after) = rest.split_at(len);
        rest = after;
        Some(chunk)
    })
}

/// A `usage_events` row selected with [`ROW_COLUMNS`].
fn read_row<R>(r: &R) -> Result<StoredEvent, LedgerError>
where
    R: Row2,
{
    r.stored_event()
}

/// Reading a row the same way from both drivers.
trait Row2 {
    fn stored_event(&self) -> Result<StoredEvent, LedgerError>;
}

macro_rules! impl_row2 {
    ($row:ty) => {
        impl Row2 for $row {
            fn stored_event(&self) -> Result<StoredEvent, LedgerError> {
                let decision: String = self.try_get(11)?;
                let meters: String = self.try_get(13)?;
                let row = Row {
                    id: self.try_get(0)?,
                    source: self.try_get(1)?,
                    tenant: self.try_get(2)?,
                    time_ms: self.try_get(3)?,
                    plan: self.try_get(4)?,
                    method: self.try_get(5)?,
                    route: self.try_get(6)?,
                    status: self.try_get(7)?,
                    request_bytes: self.try_get(8)?,
                    response_bytes: self.try_get(9)?,
                    duration_ms: self.try_get(10)?,
                    decision: Decision::parse(&decision)
                        .ok_or_else(|| LedgerError::Corrupt(format!("decision {decision:?}")))?,
                    meters: parse_meters(&meters)
                        .ok_or_else(|| LedgerError::Corrupt(format!("meters {meters:?}")))?,
                    received_at_ms: self.try_get(14)?,
                    counted: self.try_get(15)?,
                    reported: self.try_get(16)?,
                    refunded: self.try_get(17)?,
                    lease: self.try_get(18)?,
                    settled: self.try_get(20)?,
                };
                Ok(StoredEvent {
                    billable: self.try_get(12)?,
                    seq: self.try_get(19)?,
                    row,
                })
            }
        }
    };
}
impl_row2!(sqlx::sqlite::SqliteRow);
impl_row2!(sqlx::postgres::PgRow);

/// The `meters` JSON column back into (meter, quantity) pairs.
fn parse_meters(json: &str) -> Option<Vec<(String, i64)>> {
    #[derive(serde::Deserialize)]
    struct M {
        meter: String,
        quantity: i64,
    }
    let list: Vec<M> = serde_json::from_str(json).ok()?;
    Some(list.into_iter().map(|m| (m.meter, m.quantity)).collect())
}

#[cfg(test)]
mod tests {
    use super::pow2_chunks;

    fn sizes(n: usize, max: usize) -> Vec<usize> {
        let items: Vec<usize> = (0..n).collect();
        let chunks: Vec<&[usize]> = pow2_chunks(&items, max).collect();
        // Every item once, in order.
        assert_eq!(chunks.concat(), items);
        chunks.iter().map(|c| c.len()).collect()
    }

    #[test]
    fn statements_come_in_few_sizes_whatever_the_number_of_rows() {
        assert_eq!(sizes(0, 256), Vec::<usize>::new());
        assert_eq!(sizes(1, 256), vec![1]);
        assert_eq!(sizes(256, 256), vec![256]);
        assert_eq!(sizes(700, 256), vec![256, 256, 128, 32, 16, 8, 4]);
        assert_eq!(sizes(1000, 1024), vec![512, 256, 128, 64, 32, 8]);
        let mut all = std::collections::BTreeSet::new();
        for n in 0..3000 {
            all.extend(sizes(n, 256));
        }
        assert_eq!(all.len(), 9, "{all:?}");
    }
}
