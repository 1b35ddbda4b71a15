//! Leases against a real Redis: grants never exceed a limit and shrink near it, the
//! requests a lease admitted reach the usage stream, unspent requests come back once a
//! lease given back or expired can no longer be reported on, late reports are charged.

mod common;

use std::time::Duration;

use common::{eventually, tenant_keys, Api, Counter, Redis};
use serde_json::{json, Value};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [
  { name = "per-minute", meter = "requests", window = "minute", max = 100 },
  { name = "daily", meter = "requests", window = "day", max = 1000 },
]
[plans.tight]
limits = [ { name = "per-day", meter = "requests", window = "day", max = 10 } ]
[plans.persecond]
limits = [ { name = "per-second", meter = "requests", window = "second", max = 1000000 } ]
[tenants.tight]
plan = "tight"
[tenants.sec]
plan = "persecond"
"#;

async fn lease(api: &Api, tenant: &str, want: u64, held: Option<u64>, close: bool) -> Value {
    // Reports every 100 ms: a lease's unspent units go back 4 s after it ends or is
    // given back (two report intervals and 3 s, in whole seconds).
    let mut body = json!({"tenant": tenant, "meters": [{"meter": "requests", "cost": 1}], "want": want, "close": close, "report_ms": 100});
    if let Some(id) = held {
        body["lease"] = json!(id);
    }
    let (status, answer) = api.post("/v1/lease", body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A lease of 20 requests for `acme`: its id, and the counter's time (unix ms) when it
/// granted it.
async fn acme_lease(api: &Api) -> (u64, u64) {
    let granted = lease(api, "acme", 20, None, false).await;
    (
        granted["lease"].as_u64().unwrap(),
        granted["time_ms"].as_u64().unwrap(),
    )
}

/// A `POST /v1/lease/report` body: `records` admitted from lease `id` of `tenant`'s
/// route that costs one request.
fn report_body(tenant: &str, id: u64, batch: &str, records: impl Into<Value>) -> Value {
    json!({"tenant": tenant, "meters": [{"meter": "requests", "cost": 1}], "lease": id, "batch": batch, "records": records.into()})
}

fn used(answer: &Value, limit: &str) -> u64 {
    answer["limits"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == limit))
        .and_then(|l| l["used"].as_u64())
        .unwrap_or_else(|| panic!("no {limit} in {answer}"))
}

async fn daily_used(api: &Api, tenant: &str) -> u64 {
    let (_, _, body) = api.get(&format!("/v1/tenants/{tenant}/usage")).await;
    let usage: Value = serde_json::from_str(&body).unwrap();
    usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["window"] == "day")
        .and_then(|l| l["used"].as_u64())
        .unwrap()
}

#[tokio::test]
async fn a_grant_takes_from_every_window_and_shrinks_to_nothing_near_the_limit() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    let first = lease(&api, "acme", 10, None, false).await;
    assert_eq!(first["granted"], 10, "{first}");
    assert_eq!(
        (used(&first, "per-minute"), used(&first, "daily")),
        (10, 10)
    );
    assert!(first["lease"].as_u64().is_some());

    // 10 fit in the day: grants take at most half of what is left (rounded down), so
    // the last request is left to an exact consume.
    let mut granted = Vec::new();
    let mut held = None;
    loop {
        let answer = lease(&api, "tight", 100, held, false).await;
        let n = answer["granted"].as_u64().unwrap();
        if n == 0 {
            break;
        }
        held = answer["lease"].as_u64();
        granted.push(n);
    }
    assert_eq!(granted, [5, 2, 1, 1]);
    assert!(granted.iter().sum::<u64>() <= 10);
    // The last request that fits is decided exactly, by a consume.
    let (_, consumed) = api.consume("exact-1", "tight", &[("requests", 1)]).await;
    assert_eq!(consumed["allowed"], true, "{consumed}");
}

#[tokio::test]
async fn reported_requests_reach_the_usage_stream_and_unspent_ones_come_back_on_close() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    let (id, now_ms) = acme_lease(&api).await;
    let records: Vec<Value> = (0..3)
        .map(|i| json!([format!("leased-{i}"), now_ms + i]))
        .collect();
    let (status, reported) = api
        .post("/v1/lease/report", report_body("acme", id, "b1", records))
        .await;
    assert_eq!(
        (status, reported["recorded"].clone()),
        (200, json!(3)),
        "{reported}"
    );
    assert_eq!(
        daily_used(&api, "acme").await,
        20,
        "a lease holds all it was granted"
    );

    lease(&api, "acme", 0, Some(id), true).await;
    // Given back, but requests its proxy admitted may still be on their way in a
    // report: the unspent units stay out until the report delay has passed.
    assert_eq!(daily_used(&api, "acme").await, 20);
    let (status, _) = api
        .post(
            "/v1/lease/report",
            report_body("acme", id, "b2", json!([["leased-3", now_ms + 3]])),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        daily_used(&api, "acme").await,
        20,
        "reported after the lease was given back, before its units went back: spent from it, not charged again"
    );
    // A renewal naming the lease given back does not extend it.
    let renewed = lease(&api, "acme", 5, Some(id), false).await;
    assert_ne!(renewed["lease"].as_u64(), Some(id), "{renewed}");
    let renewed_id = renewed["lease"].as_u64().unwrap();
    lease(&api, "acme", 0, Some(renewed_id), true).await;
    eventually(
        "the unspent requests to come back after the report delay",
        Duration::from_secs(15),
        || async { daily_used(&api, "acme").await == 4 },
    )
    .await;
    assert!(redis
        .keys(&tenant_keys("acme", &format!("lease:{id}")))
        .is_empty());
    let (_, _, metrics) = api.get("/metrics").await;
    assert!(
        metrics.contains("turnpike_counter_leases_closed_total{by=\"expiry\"} 0"),
        "leases given back are not counted as expired: {metrics}"
    );

    // Reported after its units went back: charged to the windows, not given back twice.
    api.post(
        "/v1/lease/report",
        report_body("acme", id, "b3", json!([["leased-late", now_ms]])),
    )
    .await;
    assert_eq!(daily_used(&api, "acme").await, 5);

    // A report is one entry (k=A) listing its requests as id:ms; none is a k=a.
    let entries = redis.stream_entries("acme");
    let reports: Vec<Vec<&str>> = entries
        .iter()
        .filter(|e| e["k"] == "A")
        .map(|e| {
            assert_eq!(e["l"], id.to_string(), "{e:?}");
            e["r"]
                .split(',')
                .map(|r| r.split(':').next().unwrap_or_default())
                .collect()
        })
        .collect();
    assert_eq!(
        reports,
        [
            vec!["leased-0", "leased-1", "leased-2"],
            vec!["leased-3"],
            vec!["leased-late"]
        ],
        "{entries:?}"
    );
    assert!(!entries.iter().any(|e| e["k"] == "a"), "{entries:?}");
}

async fn report(api: &Api, tenant: &str, id: u64, batch: &str, ids: std::ops::Range<u64>) {
    let records: Vec<Value> = ids.map(|i| json!([format!("{batch}-{i}"), 0])).collect();
    let (status, answer) = api
        .post("/v1/lease/report", report_body(tenant, id, batch, records))
        .await;
    assert_eq!(status, 200, "{answer}");
}

async fn give_back(api: &Api, tenant: &str, id: u64, unspent: u64) {
    let body = json!({"tenant": tenant, "meters": [{"meter": "requests", "cost": 1}], "want": 0, "lease": id, "close": true, "unspent": unspent, "report_ms": 100});
    let (status, answer) = api.post("/v1/lease", body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn what_no_worker_took_comes_back_at_once_and_what_was_taken_once_reported() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    let id = lease(&api, "acme", 20, None, false).await["lease"]
        .as_u64()
        .unwrap();
    report(&api, "acme", id, "b1", 0..3).await;
    // The proxy dropped the lease with 12 never taken: 5 were taken and not reported yet.
    give_back(&api, "acme", id, 12).await;
    assert_eq!(
        daily_used(&api, "acme").await,
        8,
        "the 12 untaken come back at once"
    );
    // Said again (a repeated call): given back once.
    give_back(&api, "acme", id, 12).await;
    assert_eq!(daily_used(&api, "acme").await, 8);
    report(&api, "acme", id, "b2", 3..7).await;
    assert_eq!(
        daily_used(&api, "acme").await,
        8,
        "reported within what was taken: spent from the lease, not charged again"
    );
    // Three more, two beyond what the lease can account for (the proxy's count was
    // wrong): they were admitted all the same, so those two are charged.
    report(&api, "acme", id, "b3", 7..10).await;
    assert_eq!(daily_used(&api, "acme").await, 10);
    let (_, _, metrics) = api.get("/metrics").await;
    assert!(
        metrics.contains("turnpike_counter_lease_late_requests_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("turnpike_counter_lease_returned_requests_total 12\n"),
        "{metrics}"
    );
    eventually(
        "the lease to be closed after the report delay",
        Duration::from_secs(15),
        || async {
            redis
                .keys(&tenant_keys("acme", &format!("lease:{id}")))
                .is_empty()
        },
    )
    .await;
    assert_eq!(
        daily_used(&api, "acme").await,
        10,
        "nothing was left to give back"
    );
    let closed: Vec<_> = redis
        .stream_entries("acme")
        .into_iter()
        .filter(|e| e["k"] == "x")
        .collect();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(
        (
            closed[0]["g"].as_str(),
            closed[0]["s"].as_str(),
            closed[0]["r"].as_str()
        ),
        ("20", "10", "12"),
        "{closed:?}"
    );

    // More said untaken than the lease has left: what it has left, no more.
    let id = lease(&api, "beta", 10, None, false).await["lease"]
        .as_u64()
        .unwrap();
    report(&api, "beta", id, "c1", 0..4).await;
    give_back(&api, "beta", id, 50).await;
    assert_eq!(daily_used(&api, "beta").await, 4);
}

#[tokio::test]
async fn a_lease_whose_requests_still_run_stays_out_until_they_are_reported() {
    let redis = Redis::start();
    let counter = Counter::start_with(&redis, PLANS, &["--lease-max-secs", "2"]);
    let api = Api::new(&counter);
    let id = lease(&api, "acme", 30, None, false).await["lease"]
        .as_u64()
        .unwrap();
    report(&api, "acme", id, "b1", 0..5).await;
    let pin = json!({"tenant": "acme", "meters": [{"meter": "requests", "cost": 1}], "lease": id, "batch": "pin", "records": [], "running": 2, "report_ms": 100});
    // Unpinned, it would be closed 6 s from now (2 s to its end and a 4 s delay).
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        let (status, answer) = api.post("/v1/lease/report", pin.clone()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            daily_used(&api, "acme").await,
            30,
            "given back while its requests ran ({:?} in)",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // They complete and are reported: spent from the lease, not charged.
    report(&api, "acme", id, "b2", 5..7).await;
    assert_eq!(daily_used(&api, "acme").await, 30);
    eventually(
        "the lease to come back once no longer pinned",
        Duration::from_secs(15),
        || async { daily_used(&api, "acme").await == 7 },
    )
    .await;
    let (_, _, metrics) = api.get("/metrics").await;
    assert!(
        !metrics.contains("turnpike_counter_lease_pins_total 0\n"),
        "{metrics}"
    );
    // A pin for a lease closed already changes nothing.
    let (status, _) = api.post("/v1/lease/report", pin).await;
    assert_eq!(status, 200);
    assert_eq!(daily_used(&api, "acme").await, 7);
}

#[tokio::test]
async fn a_lease_its_proxy_never_closes_comes_back_when_it_expires() {
    let redis = Redis::start();
    let counter = Counter::start_with(&redis, PLANS, &["--lease-max-secs", "2"]);
    let api = Api::new(&counter);
    let granted = lease(&api, "acme", 30, None, false).await;
    assert_eq!(granted["granted"], 30);
    let expires = granted["expires_ms"].as_u64().unwrap();
    assert!(expires <= granted["time_ms"].as_u64().unwrap() + 2_000);
    // The proxy died: nothing reported, nothing closed.
    // Swept 4 s (the report delay) after it expired.
    eventually(
        "the expired lease to be swept",
        Duration::from_secs(15),
        || async { daily_used(&api, "acme").await == 0 },
    )
    .await;
    let (_, _, metrics) = api.get("/metrics").await;
    assert!(
        metrics.contains("turnpike_counter_leases_closed_total{by=\"expiry\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_and_consumes_together_never_exceed_a_limit() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::h2c(&counter);
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for i in 0..40 {
                if w % 2 == 0 {
                    let answer = lease(&api, "tight", 3, None, false).await;
                    admitted += answer["granted"].as_u64().unwrap();
                } else {
                    let (_, a) = api
                        .consume(&format!("c{w}-{i}"), "tight", &[("requests", 1)])
                        .await;
                    admitted += u64::from(a["allowed"] == true);
                }
            }
            admitted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert!(total <= 10, "{total} admitted against a limit of 10");
    assert_eq!(total, 10, "the limit was used up");
}

#[tokio::test]
async fn a_report_of_ten_thousand_requests_is_taken_whole() {
    // A proxy at 50k req/s reports ~5,000 requests every 100 ms: far more than the
    // 64 KiB the other endpoints accept.
    let redis = Redis::start();
    // Ten thousand records in one script through a debug build on two shared cores:
    // a generous Redis timeout (this checks the report is taken whole, not how fast).
    let counter = Counter::start_with(
        &redis,
        PLANS,
        &["--budget-ms", "5000", "--redis-timeout-ms", "4000"],
    );
    let api = Api::new(&counter);
    let (id, now_ms) = acme_lease(&api).await;
    let records: Vec<Value> = (0..10_000)
        .map(|i| json!([format!("leased-0123456789abcdef-{i:08}"), now_ms]))
        .collect();
    let body = report_body("acme", id, "big", records);
    assert!(body.to_string().len() > 64 * 1024);
    let (status, reported) = api.post("/v1/lease/report", body).await;
    assert_eq!(
        (status, reported["recorded"].clone()),
        (200, json!(10_000)),
        "{reported}"
    );
    // In the usage stream: entries of LEASE_RECORDS_PER_STREAM_ENTRY (100) requests
    // each, the figure the collector reads by, every one of them once, in order.
    let per_entry = turnpike_wire::LEASE_RECORDS_PER_STREAM_ENTRY;
    let reports: Vec<Vec<String>> = redis
        .stream_entries("acme")
        .iter()
        .filter(|e| e["k"] == "A")
        .map(|e| e["r"].split(',').map(str::to_owned).collect())
        .collect();
    let sizes: Vec<usize> = reports.iter().map(Vec::len).collect();
    let expected_sizes: Vec<usize> = (0..10_000)
        .collect::<Vec<u32>>()
        .chunks(per_entry)
        .map(<[u32]>::len)
        .collect();
    assert_eq!(sizes, expected_sizes);
    let ids: Vec<String> = reports.concat();
    let expected: Vec<String> = (0..10_000)
        .map(|i| format!("leased-0123456789abcdef-{i:08}:{now_ms}"))
        .collect();
    assert_eq!(ids, expected);
}

/// A report with one bad record among good ones is refused whole, naming that record,
/// and nothing of it reaches the usage stream.
#[tokio::test]
async fn a_report_with_a_bad_record_is_refused_naming_it() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    let (id, now_ms) = acme_lease(&api).await;
    for (records, field) in [
        (
            json!([["ok-1", now_ms], ["not an id", now_ms]]),
            "records[1]",
        ),
        (json!([["x".repeat(65), now_ms]]), "records[0]"),
        (json!([["ok-1", now_ms], ["", now_ms]]), "records[1]"),
    ] {
        let body = report_body("acme", id, "b", records);
        let (status, answer) = api.post("/v1/lease/report", body).await;
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["detail"].as_str().unwrap().starts_with(field),
            "{field}: {answer}"
        );
    }
    assert!(redis.stream_entries("acme").iter().all(|e| e["k"] != "A"));
}

/// A renewal that reaches the counter in a second's last milliseconds, for a lease that
/// ends with that second, is held until the second turns and answered with a new
/// lease of the next second, saying how long it was held (the proxy counts its lease
/// from then). Redis and the test share this machine's clock.
#[tokio::test]
async fn a_renewal_in_the_last_milliseconds_of_a_second_is_held_until_it_turns() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    let now_ms = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    };
    let mut seen = Vec::new();
    for _ in 0..8 {
        // Early in a second: a lease that ends with it.
        tokio::time::sleep(Duration::from_millis(1000 - now_ms() % 1000 + 20)).await;
        let first = lease(&api, "sec", 10, None, false).await;
        let (id, end) = (
            first["lease"].as_u64().unwrap(),
            first["expires_ms"].as_u64().unwrap(),
        );
        assert_eq!(
            end % 1000,
            0,
            "a per-second lease ends with its second: {first}"
        );
        // Ask again 4 ms before it ends.
        tokio::time::sleep(Duration::from_millis(end.saturating_sub(now_ms() + 4))).await;
        let asked = now_ms();
        let next = lease(&api, "sec", 10, Some(id), false).await;
        let held = next["held_ms"].as_u64().unwrap_or(0);
        seen.push((
            asked % 1000,
            held,
            next["lease"].as_u64(),
            next["expires_ms"].as_u64(),
        ));
        if held > 0 {
            assert_ne!(next["lease"].as_u64(), Some(id), "a new lease: {next}");
            assert_eq!(next["expires_ms"].as_u64(), Some(end + 1000), "{next}");
            assert!(
                next["time_ms"].as_u64().unwrap() >= end,
                "decided after the turn: {next}"
            );
            // The wait is at most 11 ms; a loaded machine's timers run late.
            assert!(held < 500, "held for the turn only: {next}");
            assert_eq!(next["granted"], 10, "{next}");
            return;
        }
    }
    panic!("no renewal reached the counter in a second's last 10 ms (ms into the second, held, lease, expires): {seen:?}");
}
