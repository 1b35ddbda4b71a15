//! Anomaly detection in the real collector binary: the online judge over a ledger of
//! generated history, `GET /v1/anomalies`, restarts, several replicas, the webhook
//! outbox against a receiver that fails first, and the replay command.

mod support;
mod usage_data;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use turnpike_collector::anomalies::store;
use turnpike_collector::anomalies::AnomalyView;
use usage_data::*;

/// The generated history in the ledger, ingested by a collector that does not judge,
/// so the judge's first round sees all of it (history sent to a running judge is
/// `history_backfilled_behind_a_running_judge_is_judged_as_it_arrives`).
async fn ingest_history(db: &TestDb, span: Span) {
    let mut c = Collector::start(db, &["--no-anomaly-detection"]).await;
    let client = reqwest::Client::new();
    for chunk in history(span).chunks(1000) {
        let (status, body) = post_batch(&client, &c, chunk).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(c.terminate().success());
}

/// Waits until every series is judged up to the end of the generated history (and
/// the six series of the three tenants exist).
async fn wait_judged(c: &Collector, span: Span) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get_json(&client, c, "/v1/anomalies/status").await;
        assert_eq!(status, 200, "{body}");
        let judged = body["judged_until"]
            .as_str()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| t.unix_timestamp());
        if body["series"] == 6 && judged.is_some_and(|j| j >= span.end()) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "not judged in 60 s: {body}\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every stored anomaly, through the API's pages of `limit`.
async fn all_anomalies(c: &Collector, query: &str, limit: u32) -> Vec<AnomalyView> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/v1/anomalies?limit={limit}&after={after}&{query}");
        let (status, body) = get_json(&client, c, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page: Vec<AnomalyView> =
            serde_json::from_value(body["anomalies"].clone()).expect("anomalies");
        out.extend(page);
        after = body["next_cursor"].as_str().expect("cursor").to_owned();
        if body["more"] != true {
            return out;
        }
    }
}

fn one<'a>(all: &'a [AnomalyView], tenant: &str, meter: &str, kind: &str) -> Vec<&'a AnomalyView> {
    all.iter()
        .filter(|a| a.tenant == tenant && a.meter == meter && a.kind == kind)
        .collect()
}

/// A judge that waits 10 s for late rows (and for history still arriving) rather than
/// two minutes.
const GRACE: [&str; 2] = ["--anomaly-grace-secs", "10"];

fn plans_arg(db: &TestDb) -> String {
    write_file(db.dir.path(), "plans.toml", PLANS)
        .display()
        .to_string()
}

async fn the_online_judge_finds_the_planted_anomalies_and_lists_them(db: &TestDb) {
    let span = Span::now();
    let plans = plans_arg(db);
    ingest_history(db, span).await;
    let mut c = Collector::start(db, &["--plans", &plans, GRACE[0], GRACE[1]]).await;
    wait_judged(&c, span).await;
    let all = all_anomalies(&c, "", 1000).await;

    let spikes = one(&all, "acme", "requests", "spike");
    assert_eq!(spikes.len(), 1, "{all:#?}");
    assert_eq!(spikes[0].bucket, rfc3339(span.bucket(SPIKE_AT)));
    assert!(spikes[0].observed > 2000.0 && spikes[0].expected < 200.0);
    let storms = one(&all, "acme", "*", "denial_storm");
    assert_eq!(storms.len(), 1, "{all:#?}");
    assert_eq!(storms[0].bucket, rfc3339(span.bucket(STORM_AT)));
    // Once per billing month: once, or twice when its last hours straddle a month's
    // start (each month's part burns when it is long enough to project from).
    let burns = one(&all, "newco", "requests", "plan_burn");
    let months = usage_data::newco_months(span);
    assert!((1..=months).contains(&burns.len()), "{all:#?}");
    for burn in burns {
        assert_eq!(burn.expected, 1000.0, "the free plan's monthly limit");
    }
    // A tenant that stops is caught at once, on its usage and on its requests.
    for meter in ["requests", "*"] {
        let quiet = one(&all, "quietco", meter, "drop");
        assert!(!quiet.is_empty(), "{all:#?}");
        assert_eq!(quiet[0].bucket, rfc3339(span.bucket(QUIET_FROM)));
    }

    // Filters and paging give the same anomalies as the whole list.
    let paged = all_anomalies(&c, "", 1).await;
    assert_eq!(paged, all);
    let acme_spikes = all_anomalies(&c, "tenant=acme&kind=spike", 10).await;
    assert_eq!(
        acme_spikes,
        all.iter()
            .filter(|a| a.tenant == "acme" && a.kind == "spike")
            .cloned()
            .collect::<Vec<_>>()
    );
    let window = format!(
        "since={}&until={}",
        rfc3339(span.bucket(STORM_AT)),
        rfc3339(span.bucket(STORM_AT + 1))
    );
    let in_window = all_anomalies(&c, &window, 10).await;
    assert!(in_window.iter().all(|a| a.bucket == storms[0].bucket));
    assert!(in_window.contains(storms[0]));
    let client = reqwest::Client::new();
    let (status, _) = get_json(&client, &c, "/v1/anomalies?kind=weird").await;
    assert_eq!(status, 400);
    let unauthorized = client
        .get(c.url("/v1/anomalies"))
        .send()
        .await
        .expect("GET");
    assert_eq!(unauthorized.status(), 401);

    // Metrics: what was found, by kind; what is tracked; how far behind.
    let metrics = client
        .get(c.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("turnpike_collector_anomalies_total{kind=\"spike\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("turnpike_collector_anomaly_series 6"),
        "{metrics}"
    );
    assert!(metrics.contains("turnpike_collector_anomaly_judging_lag_seconds"));

    // A restart continues where the judge stopped: nothing is found twice.
    assert!(c.terminate().success(), "{}", c.log_text());
    let c = Collector::start(db, &["--plans", &plans, GRACE[0], GRACE[1]]).await;
    wait_judged(&c, span).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = all_anomalies(&c, "", 1000).await;
    assert_eq!(again.len(), all.len(), "{again:#?}");
    assert_eq!(again[..all.len()], all[..]);
}

async fn changing_the_bucket_width_starts_the_series_again(db: &TestDb) {
    let span = Span::now();
    let plans = plans_arg(db);
    ingest_history(db, span).await;
    let mut c = Collector::start(db, &["--plans", &plans, GRACE[0], GRACE[1]]).await;
    wait_judged(&c, span).await;
    assert!(c.terminate().success());
    let c = Collector::start(
        db,
        &[
            "--plans",
            &plans,
            GRACE[0],
            GRACE[1],
            "--anomaly-bucket-secs",
            "600",
        ],
    )
    .await;
    let status = wait_judged(&c, span).await;
    assert_eq!(status["bucket_secs"], 600);
    let all = all_anomalies(&c, "", 1000).await;
    assert!(all.iter().any(|a| a.bucket_secs == 300));
    let spikes: Vec<_> = one(&all, "acme", "requests", "spike")
        .into_iter()
        .filter(|a| a.bucket_secs == 600)
        .collect();
    assert_eq!(spikes.len(), 1, "{all:#?}");
    assert!(
        c.log_text().contains("the bucket width changed"),
        "{}",
        c.log_text()
    );
}

/// The commit of a judging round is fenced: without the lease, or from a stale read
/// of a series, it changes nothing.
async fn a_judge_without_the_lease_or_with_a_stale_series_commits_nothing(db: &TestDb) {
    use turnpike_collector::anomalies::series::{SeriesKey, SeriesState};
    use turnpike_collector::anomalies::store::{commit_tick, take_lease, Round, SeriesUpdate};

    let ledger = db.ledger().await;
    let now = 1_800_000_000_000;
    assert!(take_lease(&ledger, "a", now, now + 30_000)
        .await
        .expect("lease"));
    assert!(!take_lease(&ledger, "b", now + 1, now + 30_001)
        .await
        .expect("lease"));
    let key = SeriesKey::new("acme", "requests");
    let state = SeriesState::new(300);
    let round = |holder| Round {
        holder,
        now_ms: now + 10,
        lease_until_ms: now + 30_010,
        scanned_seq: 0,
        bucket_secs: 300,
    };
    let update = |previous, last| SeriesUpdate {
        key: &key,
        previous_last_bucket: previous,
        last_bucket: last,
        state: &state,
    };
    // B does not hold the lease.
    let lost = commit_tick(&ledger, &round("b"), &[update(None, 0)], &[]).await;
    assert!(
        matches!(lost, Err(store::StoreError::LostLease)),
        "{lost:?}"
    );
    // A does; the series is new.
    commit_tick(&ledger, &round("a"), &[update(None, 0)], &[])
        .await
        .expect("first commit");
    // A second "new" insert, or an advance from a stale last_bucket, is a conflict.
    let again = commit_tick(&ledger, &round("a"), &[update(None, 300)], &[]).await;
    assert!(
        matches!(again, Err(store::StoreError::Conflict { .. })),
        "{again:?}"
    );
    let stale = commit_tick(&ledger, &round("a"), &[update(Some(-300), 300)], &[]).await;
    assert!(
        matches!(stale, Err(store::StoreError::Conflict { .. })),
        "{stale:?}"
    );
    commit_tick(&ledger, &round("a"), &[update(Some(0), 300)], &[])
        .await
        .expect("advance from what was read");
    // Past its expiry, the lease is anyone's, and the old holder is fenced out.
    let later = now + 60_000;
    assert!(take_lease(&ledger, "b", later, later + 30_000)
        .await
        .expect("lease"));
    let fenced = commit_tick(
        &ledger,
        &Round {
            now_ms: later,
            ..round("a")
        },
        &[update(Some(300), 600)],
        &[],
    )
    .await;
    assert!(
        matches!(fenced, Err(store::StoreError::LostLease)),
        "{fenced:?}"
    );
    let (series, oldest) = store::series_summary(&ledger, 300).await.expect("summary");
    assert_eq!((series, oldest), (1, Some(300)));
    ledger.close().await;
}

/// The judged range as stored: every series ends at the same bucket after a round.
async fn judged_until(db: &TestDb) -> i64 {
    let ledger = db.ledger().await;
    let (_, oldest) = store::series_summary(&ledger, BUCKET)
        .await
        .expect("summary");
    let newest: i64 = match &ledger {
        turnpike_collector::ledger::Ledger::Sqlite { pool, .. } => {
            sqlx::query_scalar("SELECT MAX(last_bucket) FROM anomaly_series")
                .fetch_one(pool)
                .await
        }
        turnpike_collector::ledger::Ledger::Postgres(pool) => {
            sqlx::query_scalar("SELECT MAX(last_bucket) FROM anomaly_series")
                .fetch_one(pool)
                .await
        }
    }
    .expect("max");
    ledger.close().await;
    let oldest = oldest.expect("series stored");
    assert_eq!(oldest, newest, "series judged to different buckets");
    oldest + BUCKET
}

async fn the_replay_prints_what_the_online_judge_stored(db: &TestDb) {
    replay_equals_online(db, false).await;
}

/// History sent while the judge runs (in time order, a batch at a time) is judged as
/// it arrives, not taken for silence before it does.
async fn history_backfilled_behind_a_running_judge_is_judged_as_it_arrives(db: &TestDb) {
    replay_equals_online(db, true).await;
}

async fn replay_equals_online(db: &TestDb, backfill: bool) {
    let span = Span::now();
    let plans = plans_arg(db);
    let mut c = if backfill {
        let c = Collector::start(db, &["--plans", &plans, GRACE[0], GRACE[1]]).await;
        let client = reqwest::Client::new();
        for chunk in history(span).chunks(1000) {
            let (status, body) = post_batch(&client, &c, chunk).await;
            assert_eq!(status, 200, "{body}");
        }
        c
    } else {
        ingest_history(db, span).await;
        Collector::start(db, &["--plans", &plans, GRACE[0], GRACE[1]]).await
    };
    let status = wait_judged(&c, span).await;
    if backfill {
        let all = all_anomalies(&c, "", 1000).await;
        assert_eq!(
            one(&all, "acme", "requests", "spike").len(),
            1,
            "{status} {all:#?}"
        );
        assert_eq!(one(&all, "acme", "*", "denial_storm").len(), 1, "{all:#?}");
        let burns = one(&all, "newco", "requests", "plan_burn").len();
        assert!(
            (1..=usage_data::newco_months(span)).contains(&burns),
            "{all:#?}"
        );
    }
    assert!(c.terminate().success());
    let until = judged_until(db).await;
    let stored: Vec<AnomalyView> = {
        let c = Collector::start(db, &["--plans", &plans, "--no-anomaly-detection"]).await;
        all_anomalies(&c, "", 1000).await
    };
    let mut online: Vec<AnomalyView> = stored
        .into_iter()
        .map(|mut a| {
            a.detected_at = None;
            a
        })
        .collect();
    online.sort_by(|a, b| {
        (&a.bucket, &a.tenant, &a.meter, &a.kind).cmp(&(&b.bucket, &b.tenant, &b.meter, &b.kind))
    });
    assert!(online.len() >= 4, "{online:#?}");

    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnpike-collector"))
        .args([
            "anomalies",
            "--database",
            db.url(),
            "--plans",
            &plans,
            "--until",
            &rfc3339(until),
            "--json",
        ])
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<AnomalyView> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(replayed, online);
    assert!(started.elapsed() < Duration::from_secs(20));

    // Narrowed to one tenant and meter: that series' anomalies alone.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnpike-collector"))
        .args(["anomalies", "--database", db.url(), "--plans", &plans])
        .args([
            "--tenant",
            "acme",
            "--meter",
            "*",
            "--until",
            &rfc3339(until),
            "--json",
        ])
        .output()
        .expect("run replay");
    let acme: Vec<AnomalyView> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let expected: Vec<AnomalyView> = online
        .iter()
        .filter(|a| a.tenant == "acme" && a.meter == "*")
        .cloned()
        .collect();
    assert_eq!(acme, expected);
}

async fn two_replicas_judge_once(db: &TestDb) {
    let span = Span::now();
    let plans = plans_arg(db);
    ingest_history(db, span).await;
    let a = Collector::start(
        db,
        &[
            "--plans",
            &plans,
            GRACE[0],
            GRACE[1],
            "--consumer",
            "replica-a",
        ],
    )
    .await;
    let b = Collector::start(
        db,
        &[
            "--plans",
            &plans,
            GRACE[0],
            GRACE[1],
            "--consumer",
            "replica-b",
        ],
    )
    .await;
    let status_a = wait_judged(&a, span).await;
    let status_b = wait_judged(&b, span).await;
    assert_eq!(status_a["judge"], status_b["judge"]);
    assert_ne!(
        status_a["this_replica"], status_b["this_replica"],
        "exactly one replica judges: {status_a} {status_b}"
    );
    let all = all_anomalies(&a, "", 1000).await;
    assert_eq!(all, all_anomalies(&b, "", 1000).await);
    let mut ids: Vec<&str> = all.iter().map(|x| x.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len());
    assert_eq!(one(&all, "acme", "requests", "spike").len(), 1);
    // Neither replica's log shows a conflicting commit.
    for c in [&a, &b] {
        assert!(
            !c.log_text().contains("judged by another replica"),
            "{}",
            c.log_text()
        );
    }
}

/// A webhook receiver that answers 503 until told otherwise, and records every
/// attempt and every delivery (2xx) by CloudEvent id.
#[derive(Default)]
struct Receiver {
    failing: bool,
    attempts: HashMap<String, u32>,
    delivered: BTreeMap<String, u32>,
    bodies: HashMap<String, Value>,
    bad_auth: u32,
}

async fn start_receiver(receiver: Arc<Mutex<Receiver>>) -> String {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let receiver = receiver.clone();
            async move {
                let mut r = receiver.lock().expect("lock");
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer hook-secret-0123456789")
                {
                    r.bad_auth += 1;
                    return StatusCode::UNAUTHORIZED;
                }
                let event: Value = serde_json::from_slice(&body).expect("JSON body");
                let id = event["id"].as_str().expect("id").to_owned();
                *r.attempts.entry(id.clone()).or_default() += 1;
                if r.failing {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                *r.delivered.entry(id.clone()).or_default() += 1;
                r.bodies.insert(id, event);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

async fn every_anomaly_reaches_the_webhook_exactly_once_across_an_outage_and_a_restart(
    db: &TestDb,
) {
    let span = Span::now();
    let plans = plans_arg(db);
    let receiver = Arc::new(Mutex::new(Receiver {
        failing: true,
        ..Receiver::default()
    }));
    let url = start_receiver(receiver.clone()).await;
    let secret = write_file(db.dir.path(), "hook-secret", "hook-secret-0123456789\n");
    let secret = secret.display().to_string();
    let args = [
        "--plans",
        &plans,
        GRACE[0],
        GRACE[1],
        "--consumer",
        "replica-a",
        "--anomaly-webhook",
        &url,
        "--anomaly-webhook-secret-file",
        &secret,
    ];
    ingest_history(db, span).await;
    let mut c = Collector::start(db, &args).await;
    wait_judged(&c, span).await;
    // The receiver is down: wait for retries of the first event.
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver
        .lock()
        .expect("lock")
        .attempts
        .values()
        .all(|n| *n < 2)
    {
        assert!(
            Instant::now() < deadline,
            "no retry in 30 s:\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Crash mid-outbox, bring the receiver back, restart.
    c.kill();
    receiver.lock().expect("lock").failing = false;
    let c = Collector::start(db, &args).await;
    let stored = all_anomalies(&c, "", 1000).await;
    assert!(stored.len() >= 4);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, status) = get_json(&reqwest::Client::new(), &c, "/v1/anomalies/status").await;
        let delivered = receiver.lock().expect("lock").delivered.len();
        if status["outbox_pending"] == 0 && delivered == stored.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "outbox not drained in 60 s: {status}, {delivered} of {} delivered\n{}",
            stored.len(),
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // nothing more may come
    let r = receiver.lock().expect("lock");
    assert_eq!(r.bad_auth, 0);
    let ids: Vec<&String> = r.delivered.keys().collect();
    let mut stored_ids: Vec<&String> = stored.iter().map(|a| &a.id).collect();
    stored_ids.sort();
    assert_eq!(ids, stored_ids, "every stored anomaly, and nothing else");
    assert!(
        r.delivered.values().all(|n| *n == 1),
        "each id delivered exactly once: {:?}",
        r.delivered
    );
    assert!(
        r.attempts.values().any(|n| *n >= 3),
        "retried: {:?}",
        r.attempts
    );
    let spike = one(&stored, "acme", "requests", "spike")[0];
    let event = &r.bodies[&spike.id];
    assert_eq!(event["type"], "dev.turnpike.anomaly.v1");
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["subject"], "acme/requests");
    assert_eq!(event["data"]["kind"], "spike");
    assert_eq!(event["data"]["observed"], spike.observed);
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_online_judge_finds_the_planted_anomalies_and_lists_them() {
        super::the_online_judge_finds_the_planted_anomalies_and_lists_them(&TestDb::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_replay_prints_what_the_online_judge_stored() {
        super::the_replay_prints_what_the_online_judge_stored(&TestDb::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_backfilled_behind_a_running_judge_is_judged_as_it_arrives() {
        super::history_backfilled_behind_a_running_judge_is_judged_as_it_arrives(&TestDb::sqlite())
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_judge_without_the_lease_or_with_a_stale_series_commits_nothing() {
        super::a_judge_without_the_lease_or_with_a_stale_series_commits_nothing(&TestDb::sqlite())
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changing_the_bucket_width_starts_the_series_again() {
        super::changing_the_bucket_width_starts_the_series_again(&TestDb::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_anomaly_reaches_the_webhook_exactly_once_across_an_outage_and_a_restart() {
        super::every_anomaly_reaches_the_webhook_exactly_once_across_an_outage_and_a_restart(
            &TestDb::sqlite(),
        )
        .await;
    }
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_online_judge_finds_the_planted_anomalies_and_lists_them() {
        super::the_online_judge_finds_the_planted_anomalies_and_lists_them(&TestDb::postgres())
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_replay_prints_what_the_online_judge_stored() {
        super::the_replay_prints_what_the_online_judge_stored(&TestDb::postgres()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_judge_without_the_lease_or_with_a_stale_series_commits_nothing() {
        super::a_judge_without_the_lease_or_with_a_stale_series_commits_nothing(
            &TestDb::postgres(),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_judge_once() {
        super::two_replicas_judge_once(&TestDb::postgres()).await;
    }
}
