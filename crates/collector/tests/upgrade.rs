//! Upgrading a SQLite ledger written before `0006_ledger_rowid.sql` (rows keyed by
//! consume id) to rows keyed by their change sequence, by the real collector binary:
//! every row, its change sequence and its totals survive; the billing trigger is back;
//! new rows come after the old ones and ids stay unique.

mod support;

use std::path::Path;
use std::str::FromStr;

use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use support::*;
use turnpike_collector::ledger::{Ledger, StoredEvent};
use turnpike_collector::merge::{Decision, Fact, Reported};

/// The last migration before the ledger was keyed by seq.
const BEFORE: i64 = 5;
const HOUR_MS: i64 = 3_600_000;
/// 2026-03-01T12:00:00Z
const NOON_MS: i64 = 1_772_366_400_000;

/// A ledger at migration `BEFORE`, by the migrations as they were shipped.
async fn ledger_before(db: &TestDb) -> SqlitePool {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
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
    let options = SqliteConnectOptions::from_str(db.url())
        .expect("url")
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await.expect("open");
    migrator.run(&pool).await.expect("migrate to BEFORE");
    pool
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_keyed_by_id_is_rekeyed_by_seq_and_loses_nothing() {
    let db = TestDb::sqlite();
    let pool = ledger_before(&db).await;
    // The collector's own merge code writes the old ledger: counted rows in two hours,
    // a lease, proxy events merged into some (updates: they take a new seq), refunds.
    let old = Ledger::Sqlite {
        pool: pool.clone(),
        writer: pool.clone(),
    };
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
    old.apply(&facts, NOON_MS).await.expect("counted");
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
    let applied = old.apply(&later, NOON_MS + 1).await.expect("merged");
    assert!(applied.updated > 0, "{applied:?}");
    let rows_before = everything(&old).await;
    let acme_before = totals(&old, "acme").await;
    let other_before = totals(&old, "other").await;
    let last_before = old.last_seq().await.expect("last seq");
    assert_eq!(rows_before.len(), 60);
    assert!(!acme_before.is_empty() && !other_before.is_empty());
    pool.close().await;

    // The real collector migrates it at start.
    let c = Collector::start(&db, &[]).await;
    let ledger = db.ledger().await;
    let schema: String = match &ledger {
        Ledger::Sqlite { pool, .. } => {
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'usage_events'")
                .fetch_one(pool)
                .await
                .expect("schema")
        }
        Ledger::Postgres(_) => unreachable!("a SQLite test"),
    };
    assert!(
        schema.contains("seq            INTEGER PRIMARY KEY") && !schema.contains("WITHOUT ROWID"),
        "{schema}"
    );
    assert_eq!(everything(&ledger).await, rows_before);
    assert_eq!(totals(&ledger, "acme").await, acme_before);
    assert_eq!(totals(&ledger, "other").await, other_before);
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
    let (status, body) = post_batch(&client, &c, &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], json!(6), "{body}");
    let after = ledger
        .changes_after(None, last_before, 100)
        .await
        .expect("changes");
    let mut new_ids: Vec<&str> = after.iter().map(|e| e.row.id.as_str()).collect();
    new_ids.sort_unstable();
    assert_eq!(
        new_ids,
        ["id-37", "new-0", "new-1", "new-2", "new-3", "new-4"]
    );
    assert!(after.iter().all(|e| e.seq > last_before));
    assert_eq!(ledger.count_events().await.expect("count"), 65);
    let (status, body) = post_batch(&client, &c, &batch).await;
    assert_eq!((status, body["duplicates"].clone()), (200, json!(6)));

    // The billing trigger came back with the table: a row moving to another hour
    // leaves a note for the billing sync of the hour it left.
    let Ledger::Sqlite { pool, .. } = &ledger else {
        unreachable!()
    };
    sqlx::query("UPDATE usage_events SET time_ms = time_ms + $1 WHERE id = 'id-05'")
        .bind(HOUR_MS)
        .execute(pool)
        .await
        .expect("move a row");
    let moves: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM billing_moves")
        .fetch_one(pool)
        .await
        .expect("moves");
    assert_eq!(moves, 1);
    ledger.close().await;
}
