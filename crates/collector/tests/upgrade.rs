//! Upgrading a ledger written before `0006_ledger_by_seq.sql` (rows and their meters
//! keyed by consume id) to rows keyed by their change sequence, by the real collector
//! binary, on SQLite and on PostgreSQL: every row, its change sequence and its totals
//! survive; SQLite's billing trigger is back; new rows come after the old ones, ids stay
//! unique, and a changed row's meters follow it.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use serde_json::json;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use support::*;
use turnpike_collector::ledger::{Ledger, StoredEvent};
use turnpike_collector::merge::{merge, Decision, Fact, Reported, Row};

/// `$body` with `$pool` bound to the ledger's native pool, for either backend.
macro_rules! on_pool {
    ($ledger:expr, $pool:ident => $body:expr) => {
        match $ledger {
            Ledger::Sqlite { pool: $pool, .. } => $body,
            Ledger::Postgres($pool) => $body,
        }
    };
}

/// The last migration before the ledger was keyed by seq.
const BEFORE: i64 = 5;
const HOUR_MS: i64 = 3_600_000;
/// 2026-03-01T12:00:00Z
const NOON_MS: i64 = 1_772_366_400_000;

/// A ledger at migration `BEFORE`, by the migrations as they were shipped.
async fn ledger_before(db: &TestDb) -> Ledger {
    let backend = if db.url().starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let old = db.dir.path().join("migrations-before");
    std::fs::create_dir(&old).expect("mkdir");
    let mut copied = 0;
    for entry in std::fs::read_dir(&shipped).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let version: i64 = name
            .split('_')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a migration's name starts with its version");
        if version <= BEFORE {
            std::fs::copy(&path, old.join(name)).expect("copy migration");
            copied += 1;
        }
    }
    assert_eq!(copied, BEFORE);
    let migrator = sqlx::migrate::Migrator::new(old.as_path())
        .await
        .expect("migrator");
    if backend == "sqlite" {
        let options = SqliteConnectOptions::from_str(db.url())
            .expect("url")
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.expect("open");
        migrator.run(&pool).await.expect("migrate to BEFORE");
        Ledger::Sqlite {
            pool: pool.clone(),
            writer: pool,
        }
    } else {
        let pool = PgPool::connect(db.url()).await.expect("open");
        migrator.run(&pool).await.expect("migrate to BEFORE");
        Ledger::Postgres(pool)
    }
}

/// What the collector wrote before migration 0006: the rows its merge code makes,
/// each stored under its id with the next change sequence, its meters under (id,
/// meter), by the statements it ran then. Returns how many rows changed.
async fn apply_before(
    ledger: &Ledger,
    stored: &mut BTreeMap<String, (Row, i64)>,
    facts: &[Fact],
    received_at_ms: i64,
) -> usize {
    let mut merged: BTreeMap<String, Row> = BTreeMap::new();
    for fact in facts {
        let before = merged
            .remove(fact.id())
            .or_else(|| stored.get(fact.id()).map(|(row, _)| row.clone()));
        let after = merge(before, fact, received_at_ms);
        merged.insert(after.id.clone(), after);
    }
    let mut next: i64 = on_pool!(ledger, pool => {
        sqlx::query_scalar("SELECT next FROM ledger_seq WHERE one = 1")
            .fetch_one(pool)
            .await
            .expect("ledger_seq")
    });
    let mut changed = 0;
    for (id, row) in merged {
        if stored.get(&id).is_some_and(|(old, _)| *old == row) {
            continue;
        }
        let seq = next;
        next += 1;
        changed += 1;
        on_pool!(ledger, pool => {
            sqlx::query(
                "INSERT INTO usage_events (id, source, tenant, time_ms, plan, method, route, \
                 status, request_bytes, response_bytes, duration_ms, decision, billable, meters, \
                 received_at_ms, counted, reported, refunded, lease, seq, settled) VALUES ($1, \
                 $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
                 $19, $20, $21) ON CONFLICT (id) DO UPDATE SET source = excluded.source, \
                 tenant = excluded.tenant, time_ms = excluded.time_ms, plan = excluded.plan, method = excluded.method, \
                 route = excluded.route, status = excluded.status, \
                 request_bytes = excluded.request_bytes, response_bytes = excluded.response_bytes, \
                 duration_ms = excluded.duration_ms, decision = excluded.decision, \
                 billable = excluded.billable, meters = excluded.meters, \
                 counted = excluded.counted, reported = excluded.reported, \
                 refunded = excluded.refunded, lease = excluded.lease, seq = excluded.seq, \
                 settled = excluded.settled",
            )
            .bind(&row.id)
            .bind(&row.source)
            .bind(&row.tenant)
            .bind(row.time_ms)
            .bind(row.plan.as_deref())
            .bind(&row.method)
            .bind(&row.route)
            .bind(row.status)
            .bind(row.request_bytes)
            .bind(row.response_bytes)
            .bind(row.duration_ms)
            .bind(row.decision.as_str())
            .bind(row.billable())
            .bind(row.meters_json())
            .bind(row.received_at_ms)
            .bind(row.counted)
            .bind(row.reported)
            .bind(row.refunded)
            .bind(row.lease.as_deref())
            .bind(seq)
            .bind(row.settled)
            .execute(pool)
            .await
            .expect("row");
            sqlx::query("DELETE FROM usage_meters WHERE id = $1")
                .bind(&row.id)
                .execute(pool)
                .await
                .expect("old meters");
            for (meter, quantity) in &row.meters {
                sqlx::query(
                    "INSERT INTO usage_meters (id, meter, quantity, tenant, time_ms, billable) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&row.id)
                .bind(meter)
                .bind(*quantity)
                .bind(&row.tenant)
                .bind(row.time_ms)
                .bind(row.billable())
                .execute(pool)
                .await
                .expect("meter");
            }
            sqlx::query("UPDATE ledger_seq SET next = $1 WHERE one = 1")
                .bind(next)
                .execute(pool)
                .await
                .expect("ledger_seq");
        });
        stored.insert(id, (row, seq));
    }
    changed
}

fn counted(id: &str, tenant: &str, time_ms: i64, lease: Option<&str>) -> Fact {
    Fact::Counted {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        time_ms,
        plan: "pro".to_owned(),
        meters: vec![("requests".to_owned(), 1), ("tokens".to_owned(), 40)],
        lease: lease.map(str::to_owned),
    }
}

fn reported(id: &str, tenant: &str, time_ms: i64) -> Fact {
    Fact::Reported(Reported {
        id: id.to_owned(),
        source: "//turnpike/envoy/test".to_owned(),
        tenant: tenant.to_owned(),
        time_ms,
        plan: Some("pro".to_owned()),
        method: "GET".to_owned(),
        route: "api".to_owned(),
        status: 200,
        request_bytes: 10,
        response_bytes: 42,
        duration_ms: 3,
        decision: Decision::Allowed,
        meters: vec![("requests".to_owned(), 1), ("tokens".to_owned(), 40)],
        settled: false,
        lease: None,
        refunded: false,
    })
}

async fn everything(ledger: &Ledger) -> Vec<StoredEvent> {
    ledger
        .changes_after(None, 0, 10_000)
        .await
        .expect("changes")
}

async fn totals(ledger: &Ledger, tenant: &str) -> Vec<(String, i64)> {
    ledger
        .billable_totals(tenant, NOON_MS - HOUR_MS, NOON_MS + 3 * HOUR_MS)
        .await
        .expect("totals")
}

async fn a_ledger_keyed_by_id_is_rekeyed_by_seq_and_loses_nothing(db: &TestDb) {
    // The old ledger, from the collector's own merge logic: counted rows in two hours,
    // a lease, proxy events merged into some (updates: they take a new seq), refunds.
    let old = ledger_before(db).await;
    // Updates take new seqs, so ids and seqs end up in different orders.
    let ids: Vec<String> = (0..60)
        .map(|i| format!("id-{:02}", (i * 37) % 60))
        .collect();
    let tenant_of = |i: usize| if i.is_multiple_of(4) { "other" } else { "acme" };
    let mut facts = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let tenant = tenant_of(i);
        let lease = i.is_multiple_of(3).then_some("lease-1");
        facts.push(counted(id, tenant, NOON_MS + (i as i64) * 120_000, lease));
    }
    let mut stored = BTreeMap::new();
    apply_before(&old, &mut stored, &facts, NOON_MS).await;
    let later: Vec<Fact> = facts
        .iter()
        .step_by(2)
        .filter_map(|f| match f {
            Fact::Counted {
                id,
                tenant,
                time_ms,
                ..
            } => Some(reported(id, tenant, *time_ms)),
            _ => None,
        })
        .chain(
            ids.iter()
                .enumerate()
                .take(3)
                .map(|(i, id)| Fact::Refunded {
                    id: id.clone(),
                    tenant: tenant_of(i).to_owned(),
                    time_ms: NOON_MS,
                }),
        )
        .collect();
    let updated = apply_before(&old, &mut stored, &later, NOON_MS + 1).await;
    // 30 reports and 3 refunds, two of them of rows reported too.
    assert_eq!(updated, 31);
    let rows_before = everything(&old).await;
    let acme_before = totals(&old, "acme").await;
    let other_before = totals(&old, "other").await;
    // Before: meters joined to their rows by id, as they were stored then.
    let counted_before: i64 = on_pool!(&old, pool => {
        sqlx::query_scalar(
            "SELECT CAST(SUM(m.quantity) AS BIGINT) FROM usage_meters m \
             JOIN usage_events e ON e.id = m.id WHERE e.counted = $1 AND e.refunded = $2",
        )
        .bind(true)
        .bind(false)
        .fetch_one(pool)
        .await
        .expect("counted before")
    });
    let last_before = old.last_seq().await.expect("last seq");
    assert_eq!(rows_before.len(), 60);
    assert!(!acme_before.is_empty() && !other_before.is_empty());
    assert!(counted_before > 0);
    old.close().await;

    // The real collector migrates it at start.
    let c = Collector::start(db, &[]).await;
    let ledger = db.ledger().await;
    match &ledger {
        Ledger::Sqlite { pool, .. } => {
            let schema: String =
                sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'usage_events'")
                    .fetch_one(pool)
                    .await
                    .expect("schema");
            assert!(
                schema.contains("seq            INTEGER PRIMARY KEY")
                    && !schema.contains("WITHOUT ROWID"),
                "{schema}"
            );
            let keyed = "SELECT COUNT(*) FROM pragma_table_info('usage_meters') \
                         WHERE name = 'seq' AND pk = 1";
            assert_eq!(sqlite_int(pool, keyed).await, 1);
            // An existing ledger keeps its page size; only new ones get 16 KiB pages.
            assert_eq!(sqlite_int(pool, "PRAGMA page_size").await, 4096);
        }
        Ledger::Postgres(pool) => {
            let columns: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::TEXT FROM information_schema.columns \
                 WHERE table_name = 'usage_meters' ORDER BY column_name",
            )
            .fetch_all(pool)
            .await
            .expect("usage_meters");
            assert_eq!(
                columns,
                ["billable", "meter", "quantity", "seq", "tenant", "time_ms"]
            );
        }
    }
    assert_eq!(everything(&ledger).await, rows_before);
    assert_eq!(totals(&ledger, "acme").await, acme_before);
    assert_eq!(totals(&ledger, "other").await, other_before);
    assert_eq!(counted_units(&ledger).await, counted_before);
    assert_eq!(ledger.last_seq().await.expect("last seq"), last_before);

    // New rows after the old ones; an id already stored is still stored once.
    let client = reqwest::Client::new();
    let mut batch = events("new", "acme", 5);
    batch.push(event(
        &ids[1],
        "acme",
        "2026-03-01T12:02:00Z",
        "allowed",
        &[("requests", 1), ("tokens", 40)],
    ));
    // id-51: counted, billable, and not reported yet.
    batch.push(event(
        &ids[3],
        "acme",
        "2026-03-01T12:06:00Z",
        "allowed",
        &[("requests", 1), ("tokens", 40)],
    ));
    let (status, body) = post_batch(&client, &c, &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], json!(7), "{body}");
    let after = ledger
        .changes_after(None, last_before, 100)
        .await
        .expect("changes");
    let mut new_ids: Vec<&str> = after.iter().map(|e| e.row.id.as_str()).collect();
    new_ids.sort_unstable();
    assert_eq!(
        new_ids,
        ["id-37", "id-51", "new-0", "new-1", "new-2", "new-3", "new-4"]
    );
    assert!(after.iter().all(|e| e.seq > last_before));
    assert_eq!(ledger.count_events().await.expect("count"), 65);
    let (status, body) = post_batch(&client, &c, &batch).await;
    assert_eq!((status, body["duplicates"].clone()), (200, json!(7)));

    // A row that changes takes a new seq, and its meters follow it: the totals move by
    // exactly the new rows: the reports merged into id-37 (refunded: not billed) and
    // id-51 (billed once, under its new seq) add nothing.
    let acme_after = totals(&ledger, "acme").await;
    let added: Vec<(String, i64)> = acme_before
        .iter()
        .map(|(m, q)| (m.clone(), q + if m == "requests" { 5 } else { 0 }))
        .collect();
    assert_eq!(acme_after, added);
    assert_eq!(counted_units(&ledger).await, counted_before);

    // SQLite's billing trigger came back with the table: a row moving to another hour
    // leaves a note for the billing sync of the hour it left.
    if let Ledger::Sqlite { pool, .. } = &ledger {
        sqlx::query("UPDATE usage_events SET time_ms = time_ms + $1 WHERE id = 'id-05'")
            .bind(HOUR_MS)
            .execute(pool)
            .await
            .expect("move a row");
        assert_eq!(
            sqlite_int(pool, "SELECT COUNT(*) FROM billing_moves").await,
            1
        );
    }
    ledger.close().await;
}

/// One integer from SQLite.
async fn sqlite_int(pool: &SqlitePool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Units the counter counted and did not refund, over both tenants and meters.
async fn counted_units(ledger: &Ledger) -> i64 {
    let mut sum = 0;
    for tenant in ["acme", "other"] {
        for meter in ["requests", "tokens"] {
            sum += ledger
                .counted_total(tenant, meter, NOON_MS - HOUR_MS, NOON_MS + 3 * HOUR_MS)
                .await
                .expect("counted");
        }
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    a_ledger_keyed_by_id_is_rekeyed_by_seq_and_loses_nothing(&TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    a_ledger_keyed_by_id_is_rekeyed_by_seq_and_loses_nothing(&TestDb::postgres()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sqlite_ledger_has_16_kib_pages() {
    let db = TestDb::sqlite();
    let _c = Collector::start(&db, &[]).await;
    let ledger = db.ledger().await;
    let Ledger::Sqlite { pool, .. } = &ledger else {
        unreachable!("a SQLite test")
    };
    assert_eq!(sqlite_int(pool, "PRAGMA page_size").await, 16384);
    ledger.close().await;
}
