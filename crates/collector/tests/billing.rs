//! Billing sync end to end: the real collector binary, the Stripe fake (in-process)
//! and a ledger on SQLite or PostgreSQL. Usage goes in through `POST /v1/events`;
//! what Stripe holds is read back from the fake (`/_fake/events`) and compared with
//! the ledger per customer, Stripe event name and hour.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{event, get_json, post_batch, Collector, TestDb, READ_TOKEN};
use turnpike_collector::billing::store::BillingStore;
use turnpike_collector::billing::stripe::{Formula, NewMeter, StripeClient, StripeConfig};
use turnpike_collector::event::format_time_ms;
use turnpike_devtools::stripe_fake::{self, FakeConfig, RunningFake};

const KEY: &str = "sk_test_billing_sync";
const HOUR_MS: i64 = 3_600_000;
/// Meters the workload uses, and the Stripe event names the plans give them.
const REQUESTS_EVENT: &str = "api_requests";
const SEARCH_EVENT: &str = "search_units";

/// (customer, event name, hour start in unix seconds) -> units.
type Totals = BTreeMap<(String, String, i64), i64>;

/// Tenants `t00`..: mapped to `cus_t00`.. unless listed in `unmapped`. Their billing
/// month starts two days ago (anchor day), so the last day's hours are always in the
/// current period, whatever the date the tests run on.
fn plans_toml(tenants: &[String], unmapped: &[&str]) -> String {
    let anchor = (time::OffsetDateTime::now_utc() - time::Duration::days(2)).day();
    plans_toml_anchored(tenants, unmapped, anchor)
}

fn plans_toml_anchored(tenants: &[String], unmapped: &[&str], anchor: u8) -> String {
    let mut text = String::from(
        "default_plan = \"free\"\n\n[plans.free]\nlimits = [ { name = \"monthly\", meter = \
         \"requests\", window = \"month\", max = 1000000000 } ]\n\n[billing.meters]\n\
         requests = \"api_requests\"\n",
    );
    for tenant in tenants {
        if !unmapped.contains(&tenant.as_str()) {
            text.push_str(&format!(
                "\n[tenants.{tenant}]\nanchor_day = {anchor}\nstripe_customer = \"cus_{tenant}\"\n"
            ));
        }
    }
    text
}

fn tenant_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i:02}")).collect()
}

/// The start of the hour `hours_ago` hours before the current one.
fn hour_ago(hours_ago: i64) -> i64 {
    let now = turnpike_collector::api::now_ms();
    (now.div_euclid(HOUR_MS) - hours_ago) * HOUR_MS
}

/// Seeded usage: `n` allowed events over `tenants` and the `hours` given, each with
/// one request and 1..=5 search units.
fn workload(seed: u64, prefix: &str, n: usize, tenants: &[String], hours: &[i64]) -> Vec<Value> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|i| {
            let tenant = &tenants[rng.usize(..tenants.len())];
            let hour = hours[rng.usize(..hours.len())];
            let time = format_time_ms(hour + rng.i64(0..HOUR_MS));
            event(
                &format!("{prefix}-{i}"),
                tenant,
                &time,
                "allowed",
                &[("requests", 1), ("search_units", rng.u64(1..=5))],
            )
        })
        .collect()
}

struct Env {
    db: TestDb,
    fake: RunningFake,
    http: reqwest::Client,
    plans: PathBuf,
    key_file: PathBuf,
}

impl Env {
    /// Both meters summing raw events, as Turnpike needs.
    async fn new(db: TestDb, plans: &str) -> Env {
        Self::with_meters(
            db,
            plans,
            &[(REQUESTS_EVENT, Formula::Sum), (SEARCH_EVENT, Formula::Sum)],
        )
        .await
    }

    async fn with_meters(db: TestDb, plans: &str, meters: &[(&str, Formula)]) -> Env {
        let fake = stripe_fake::start(
            "127.0.0.1:0".parse().unwrap(),
            FakeConfig {
                api_keys: vec![KEY.to_owned()],
                state_file: None,
            },
        )
        .await
        .unwrap();
        let client = StripeClient::new(StripeConfig::new(fake.base_url(), KEY)).unwrap();
        for (event_name, formula) in meters {
            client
                .create_meter(&NewMeter {
                    display_name: (*event_name).to_owned(),
                    event_name: (*event_name).to_owned(),
                    formula: *formula,
                    customer_payload_key: None,
                    value_payload_key: None,
                })
                .await
                .unwrap();
        }
        let plans_path = support::write_file(db.dir.path(), "plans.toml", plans);
        let key_file = support::write_file(db.dir.path(), "stripe.key", &format!("{KEY}\n"));
        Env {
            db,
            fake,
            http: reqwest::Client::new(),
            plans: plans_path,
            key_file,
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--plans".into(),
            self.plans.display().to_string(),
            "--stripe-api-base".into(),
            self.fake.base_url(),
            "--stripe-key-file".into(),
            self.key_file.display().to_string(),
            // The tests trigger runs; the loop's own runs may interleave harmlessly.
            "--billing-sync-interval-secs".into(),
            "3600".into(),
            "--billing-grace-secs".into(),
            "0".into(),
            // Stripe's live-mode meter event pace, not the cautious default.
            "--stripe-rate".into(),
            "500".into(),
            // A stable lease owner across restarts, as a real deployment has.
            "--consumer".into(),
            "billing-test".into(),
        ]
    }

    async fn collector(&self) -> Collector {
        self.collector_with(&[], &[]).await
    }

    /// With `extra` flags (replacing the defaults they name) and environment.
    async fn collector_with(&self, extra: &[&str], env: &[(&str, &str)]) -> Collector {
        let mut args = self.args();
        for flag in extra.iter().filter(|a| a.starts_with("--")) {
            if let Some(i) = args.iter().position(|a| a == flag) {
                args.drain(i..i + 2);
            }
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Collector::start_with_env(&self.db, &args, env).await
    }

    async fn ingest(&self, collector: &Collector, events: &[Value]) {
        for chunk in events.chunks(500) {
            let (status, body) = post_batch(&self.http, collector, chunk).await;
            assert_eq!(status, 200, "{body}");
        }
    }

    /// Trigger a run; status 0 when the collector died answering.
    async fn sync(&self, collector: &Collector) -> (u16, Value) {
        let sent = self
            .http
            .post(collector.url("/v1/billing/sync"))
            .bearer_auth(READ_TOKEN)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(err) => (0, json!(err.to_string())),
        }
    }

    /// Trigger runs until one completes (Stripe unavailable: try again).
    async fn sync_until_done(&self, collector: &Collector) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, body) = self.sync(collector).await;
            if status == 200 {
                return body;
            }
            assert!(
                matches!(status, 503 | 409),
                "sync failed: {status} {body}\n{}",
                collector.log_text()
            );
            assert!(Instant::now() < deadline, "sync never completed: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn status(&self, collector: &Collector) -> Value {
        let (status, body) = get_json(&self.http, collector, "/v1/billing/status").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn fake_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.fake.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn fake_post(&self, path: &str, body: Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.fake.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{path}");
    }

    /// The meter events Stripe holds (not cancelled).
    async fn stripe_events(&self) -> Vec<Value> {
        let dump = self.fake_get("/_fake/events").await;
        dump["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["cancelled_at"].is_null())
            .cloned()
            .collect()
    }

    async fn stripe_totals(&self) -> Totals {
        let mut totals = Totals::new();
        for e in self.stripe_events().await {
            let key = (
                e["payload"]["stripe_customer_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                e["event_name"].as_str().unwrap().to_owned(),
                e["timestamp"].as_i64().unwrap(),
            );
            let value: i64 = e["payload"]["value"].as_str().unwrap().parse().unwrap();
            *totals.entry(key).or_default() += value;
        }
        totals.retain(|_, v| *v != 0);
        totals
    }

    /// The ledger's billable units of mapped tenants, as Stripe should hold them.
    async fn ledger_totals(&self, unmapped: &[&str]) -> Totals {
        let ledger = self.db.ledger().await;
        let hours = ledger.hourly_totals(None, 0, i64::MAX).await.unwrap();
        ledger.close().await;
        let mut totals = Totals::new();
        for h in hours {
            if unmapped.contains(&h.tenant.as_str()) || h.quantity == 0 {
                continue;
            }
            let event_name = if h.meter == "requests" {
                REQUESTS_EVENT
            } else {
                h.meter.as_str()
            };
            totals.insert(
                (
                    format!("cus_{}", h.tenant),
                    event_name.to_owned(),
                    h.hour_start_ms / 1000,
                ),
                h.quantity,
            );
        }
        totals
    }

    async fn assert_stripe_matches_ledger(&self, unmapped: &[&str]) {
        let ledger = self.ledger_totals(unmapped).await;
        let stripe = self.stripe_totals().await;
        assert!(
            !ledger.is_empty(),
            "the ledger bills nothing: a vacuous check"
        );
        if ledger != stripe {
            let diff: Vec<String> = ledger
                .keys()
                .chain(stripe.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|k| ledger.get(*k) != stripe.get(*k))
                .map(|k| {
                    format!(
                        "{k:?}: ledger {:?} stripe {:?}",
                        ledger.get(k),
                        stripe.get(k)
                    )
                })
                .collect();
            panic!(
                "Stripe and the ledger differ in {} hours:\n{}",
                diff.len(),
                diff.join("\n")
            );
        }
    }

    async fn fault(&self, rule: Value) {
        self.fake_post("/_fake/faults", rule).await;
    }
}

/// The value of a Prometheus sample line, e.g. `..._open_credit_units 3`.
async fn metric(http: &reqwest::Client, collector: &Collector, name: &str) -> f64 {
    let text = http
        .get(collector.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// The core property on one backend: thousands of events across many tenants and
/// hours become one meter event per customer, meter and hour, equal to the ledger;
/// a second run sends nothing.
async fn usage_reaches_stripe_once_per_customer_meter_and_hour(db: TestDb) {
    let tenants = tenant_names(12);
    let env = Env::new(db, &plans_toml(&tenants, &[])).await;
    let collector = env.collector().await;
    let hours: Vec<i64> = (2..30).map(hour_ago).collect();
    env.ingest(&collector, &workload(1, "w", 3000, &tenants, &hours))
        .await;

    env.sync_until_done(&collector).await;
    env.assert_stripe_matches_ledger(&[]).await;
    // One event per (tenant, meter, hour): aggregated, never one per request.
    let groups = env.ledger_totals(&[]).await.len();
    assert_eq!(env.stripe_events().await.len(), groups);
    assert!(groups < 3000 * 2, "{groups}");
    // Counted over every run of this process (the periodic loop's too).
    assert_eq!(
        metric(
            &env.http,
            &collector,
            "turnpike_collector_billing_meter_events_sent_total"
        )
        .await,
        groups as f64
    );

    let again = env.sync_until_done(&collector).await;
    assert_eq!(again["sync"]["events_sent"], json!(0), "{again}");
    assert_eq!(env.stripe_events().await.len(), groups);

    let status = env.status(&collector).await;
    assert_eq!(status["enabled"], json!(true));
    assert_eq!(status["pending_units"], json!(0), "{status}");
    assert_eq!(status["last_error"], Value::Null, "{status}");
    assert!(status["hours"]["synced"].as_i64().unwrap() >= groups as i64 / 2);
    // Reconciled per customer, event name and billing period: nothing unexplained,
    // nothing outstanding.
    let drift = status["drift"].as_array().unwrap();
    assert!(!drift.is_empty(), "{status}");
    for d in drift {
        assert_eq!(d["unexplained"], json!(0), "{d}");
        assert_eq!(d["drift"], json!(0), "{d}");
    }
    assert_eq!(
        metric(
            &env.http,
            &collector,
            "turnpike_collector_billing_pending_units"
        )
        .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reaches_stripe_once_per_customer_meter_and_hour_on_sqlite() {
    usage_reaches_stripe_once_per_customer_meter_and_hour(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reaches_stripe_once_per_customer_meter_and_hour_on_postgres() {
    usage_reaches_stripe_once_per_customer_meter_and_hour(TestDb::postgres()).await;
}

/// SIGABRT right after Stripe accepted an event and before the collector recorded
/// it, then a restart: the event is delivered once, and everything else too.
async fn a_crash_between_stripes_answer_and_the_record_double_counts_nothing(db: TestDb) {
    let tenants = tenant_names(6);
    let env = Env::new(db, &plans_toml(&tenants, &[])).await;
    let hours: Vec<i64> = (2..8).map(hour_ago).collect();
    let events = workload(2, "c", 600, &tenants, &hours);
    let mut collector = env
        .collector_with(&[], &[("TURNPIKE_BILLING_FAILPOINT", "after_send:7")])
        .await;
    env.ingest(&collector, &events).await;
    let (status, _) = env.sync(&collector).await;
    assert_ne!(status, 200, "the failpoint should have aborted the run");
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector.exited().is_none() {
        assert!(Instant::now() < deadline, "the collector did not abort");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let landed = env.stripe_events().await.len();
    assert_eq!(landed, 7, "seven events landed before the crash");
    collector.kill();

    let collector = env.collector().await;
    env.sync_until_done(&collector).await;
    // The seventh was found already at Stripe, not sent again.
    assert_eq!(
        metric(
            &env.http,
            &collector,
            "turnpike_collector_billing_already_delivered_total"
        )
        .await,
        1.0
    );
    env.assert_stripe_matches_ledger(&[]).await;
    let identifiers: Vec<String> = env
        .stripe_events()
        .await
        .iter()
        .map(|e| e["identifier"].as_str().unwrap().to_owned())
        .collect();
    let mut unique = identifiers.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), identifiers.len(), "an event was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_stripes_answer_and_the_record_double_counts_nothing_on_sqlite() {
    a_crash_between_stripes_answer_and_the_record_double_counts_nothing(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_stripes_answer_and_the_record_double_counts_nothing_on_postgres() {
    a_crash_between_stripes_answer_and_the_record_double_counts_nothing(TestDb::postgres()).await;
}

/// Stripe refuses a repeated identifier for 24 hours only. A collector that crashed
/// after Stripe accepted an event and stayed down longer than that must not send it
/// again: it finds it in Stripe's summary of the customer's hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_left_unrecorded_for_over_24_hours_is_found_at_stripe_not_sent_twice() {
    let tenants = tenant_names(2);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &[])).await;
    let hours: Vec<i64> = (2..5).map(hour_ago).collect();
    let mut collector = env
        .collector_with(&[], &[("TURNPIKE_BILLING_FAILPOINT", "after_send:3")])
        .await;
    env.ingest(&collector, &workload(17, "d", 200, &tenants, &hours))
        .await;
    let (status, _) = env.sync(&collector).await;
    assert_ne!(status, 200, "the failpoint should have aborted the run");
    collector.kill();
    assert_eq!(env.stripe_events().await.len(), 3);
    // A day and more later by Stripe's clock: identifiers and idempotency keys of
    // the first attempt are forgotten there.
    env.fake_post("/_fake/clock", json!({"advance_secs": 25 * 3600}))
        .await;

    let collector = env.collector().await;
    env.sync_until_done(&collector).await;
    assert_eq!(
        metric(
            &env.http,
            &collector,
            "turnpike_collector_billing_already_delivered_total"
        )
        .await,
        1.0
    );
    env.assert_stripe_matches_ledger(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_killed_while_stripe_holds_its_request_finishes_after_restart() {
    let tenants = tenant_names(4);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &[])).await;
    let mut collector = env.collector().await;
    let hours: Vec<i64> = (2..6).map(hour_ago).collect();
    env.ingest(&collector, &workload(3, "h", 300, &tenants, &hours))
        .await;
    // The fifth meter event is held for 3 s; the collector is killed meanwhile.
    env.fault(json!([
        {"kind": "delay", "ms": 1, "count": 4, "path": "/v1/billing/meter_events"},
        {"kind": "delay", "ms": 3000, "path": "/v1/billing/meter_events"}
    ]))
    .await;
    let trigger = {
        let http = env.http.clone();
        let url = collector.url("/v1/billing/sync");
        tokio::spawn(async move {
            let _ = http.post(url).bearer_auth(READ_TOKEN).send().await;
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.fake_get("/_fake/faults").await != json!([]) {
        assert!(Instant::now() < deadline, "the held request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    collector.kill();
    let _ = trigger.await;
    tokio::time::sleep(Duration::from_millis(3200)).await;

    let collector = env.collector().await;
    env.sync_until_done(&collector).await;
    env.assert_stripe_matches_ledger(&[]).await;
}

/// Ingest keeps going while the collector, syncing every second, is SIGKILLed at
/// seeded random moments and restarted. In the end Stripe holds the ledger exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_under_load_neither_double_count_nor_skip() {
    let tenants = tenant_names(8);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &[])).await;
    let fast = ["--billing-sync-interval-secs", "1"];
    let mut collector = env.collector_with(&fast, &[]).await;
    let hours: Vec<i64> = (2..26).map(hour_ago).collect();
    let events = workload(4, "k", 2400, &tenants, &hours);
    let mut rng = fastrand::Rng::with_seed(44);
    // Every send is held a while, so a kill inside a run lands between an intent
    // and Stripe's answer.
    env.fault(
        json!({"kind": "delay", "ms": 300, "count": 100000, "path": "/v1/billing/meter_events"}),
    )
    .await;
    let mut batches = events.chunks(100);
    let mut kills = 0;
    let mut kills_in_flight = 0;
    loop {
        // A few batches, then a kill at a random moment.
        for batch in batches.by_ref().take(3) {
            let (status, body) = post_batch(&env.http, &collector, batch).await;
            assert_eq!(status, 200, "{body}");
        }
        // The loop runs every second, each run slowed by the delayed sends: a kill
        // lands before, inside or between runs.
        tokio::time::sleep(Duration::from_millis(rng.u64(600..2500))).await;
        collector.kill();
        kills += 1;
        let store = BillingStore::new(env.db.ledger().await);
        if store.in_flight().await.unwrap() > 0 {
            kills_in_flight += 1;
        }
        store.ledger().close().await;
        collector = env.collector_with(&fast, &[]).await;
        if batches.len() == 0 {
            break;
        }
    }
    assert!(kills >= 8, "{kills}");
    assert!(
        kills_in_flight > 0,
        "no kill caught a request in flight: the test proves little"
    );
    let _ = env
        .http
        .delete(format!("{}/_fake/faults", env.fake.base_url()))
        .send()
        .await;
    env.sync_until_done(&collector).await;
    env.assert_stripe_matches_ledger(&[]).await;
    let ledger = env.db.ledger().await;
    assert_eq!(ledger.count_events().await.unwrap(), 2400);
    ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_from_stripe_only_delay_the_sync() {
    let tenants = tenant_names(5);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &[])).await;
    let collector = env.collector().await;
    let hours: Vec<i64> = (2..10).map(hour_ago).collect();
    env.ingest(&collector, &workload(5, "r", 500, &tenants, &hours))
        .await;
    env.fault(json!([
        {"kind": "rate_limit", "count": 9, "retry_after_secs": 1, "path": "/v1/billing/meter_events"},
        {"kind": "server_error", "count": 5, "status": 503, "path": "/v1/billing/meter_events"},
        {"kind": "drop", "count": 2, "path": "/v1/billing/meter_events"}
    ]))
    .await;
    let (status, body) = env.sync(&collector).await;
    assert_eq!(
        status, 503,
        "the storm outlasts the client's retries: {body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Stripe unavailable"),
        "{body}"
    );
    // Ingest is not held up meanwhile.
    let (status, _) = post_batch(
        &env.http,
        &collector,
        &workload(6, "r2", 50, &tenants, &hours),
    )
    .await;
    assert_eq!(status, 200);
    env.sync_until_done(&collector).await;
    env.assert_stripe_matches_ledger(&[]).await;
    let status = env.status(&collector).await;
    assert_eq!(status["last_error"], Value::Null, "{status}");
    let requests = env.fake_get("/_fake/requests").await;
    let rate_limited = requests
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 429)
        .count();
    assert_eq!(rate_limited, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_after_a_send_go_out_as_a_further_event_for_the_difference() {
    let tenants = tenant_names(1);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &[])).await;
    let collector = env.collector().await;
    let hour = hour_ago(3);
    env.ingest(&collector, &workload(7, "a", 40, &tenants, &[hour]))
        .await;
    env.sync_until_done(&collector).await;
    let first = env.stripe_events().await.len();
    assert_eq!(first, 2, "one event per meter");

    env.ingest(&collector, &workload(8, "late", 10, &tenants, &[hour]))
        .await;
    env.sync_until_done(&collector).await;
    env.assert_stripe_matches_ledger(&[]).await;
    let events = env.stripe_events().await;
    assert_eq!(events.len(), 4, "a second revision per meter");
    let requests: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_name"] == REQUESTS_EVENT)
        .collect();
    let values: Vec<&str> = requests
        .iter()
        .map(|e| e["payload"]["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["40", "10"], "the difference, not the total");
    assert!(requests[1]["identifier"].as_str().unwrap().ends_with("-2"));
}

/// A refund is the proxy's later event for the same consume id, with decision
/// `cancelled`.
fn refunds(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e["data"]["decision"] = json!("cancelled");
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_within_24_hours_cancels_and_resends_the_corrected_total() {
    let tenants = tenant_names(1);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &[])).await;
    let collector = env.collector().await;
    let hour = hour_ago(3);
    let events = workload(9, "f", 30, &tenants, &[hour]);
    env.ingest(&collector, &events).await;
    env.sync_until_done(&collector).await;

    env.ingest(&collector, &refunds(&events[..4])).await;
    env.sync_until_done(&collector).await;
    assert_eq!(
        metric(
            &env.http,
            &collector,
            "turnpike_collector_billing_cancels_total"
        )
        .await,
        2.0
    );
    env.assert_stripe_matches_ledger(&[]).await;
    let requests: Vec<Value> = env
        .stripe_events()
        .await
        .into_iter()
        .filter(|e| e["event_name"] == REQUESTS_EVENT)
        .collect();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["payload"]["value"], "26");
    let dump = env.fake_get("/_fake/events").await;
    assert_eq!(dump["adjustments"].as_array().unwrap().len(), 2);
    let status = env.status(&collector).await;
    assert_eq!(status["open_credits"], json!(0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_stripes_24_hours_is_recorded_as_a_credit_to_issue() {
    let tenants = tenant_names(1);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &[])).await;
    let collector = env.collector().await;
    let hour = hour_ago(3);
    let events = workload(10, "g", 30, &tenants, &[hour]);
    env.ingest(&collector, &events).await;
    env.sync_until_done(&collector).await;
    let before = env.stripe_totals().await;

    // Stripe's clock moves past the 24-hour cancel window; the collector's does not,
    // so it tries to cancel, is refused, and falls back to a credit.
    env.fake_post("/_fake/clock", json!({"advance_secs": 25 * 3600}))
        .await;
    env.ingest(&collector, &refunds(&events[..3])).await;
    env.sync_until_done(&collector).await;

    assert_eq!(
        env.stripe_totals().await,
        before,
        "Stripe keeps what it had"
    );
    let status = env.status(&collector).await;
    let credits = status["credits"].as_array().unwrap();
    let units: i64 = credits
        .iter()
        .map(|c| c["quantity"].as_i64().unwrap())
        .sum();
    let refunded_search: i64 = events[..3]
        .iter()
        .map(|e| e["data"]["meters"][1]["cost"].as_i64().unwrap())
        .sum();
    assert_eq!(units, 3 + refunded_search, "{status}");
    assert_eq!(status["open_credit_units"], json!(units));
    assert!(credits
        .iter()
        .all(|c| c["customer"] == "cus_t00" && c["reason"].as_str().unwrap().contains("24-hour")));
    assert_eq!(status["pending_units"], json!(0), "{status}");
    assert_eq!(
        metric(
            &env.http,
            &collector,
            "turnpike_collector_billing_open_credit_units"
        )
        .await,
        units as f64
    );
    // Stripe holds ledger + credits: explained, not unexplained, drift.
    for d in status["drift"].as_array().unwrap() {
        assert_eq!(d["unexplained"], json!(0), "{d}");
    }

    // The operator issues them and marks them resolved.
    for c in credits {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnpike-collector"))
            .args(["billing", "resolve-credit", "--database", env.db.url()])
            .arg(c["id"].as_i64().unwrap().to_string())
            .args(["--note", "credit note cn_123"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = env.status(&collector).await;
    assert_eq!(status["open_credits"], json!(0), "{status}");
}

/// Stripe does not correct an invoice already final for a cancelled event, so a
/// refund for an hour of a billing period that has ended is a credit, never a cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_for_an_ended_billing_period_is_a_credit_not_a_cancel() {
    let tenants = tenant_names(1);
    // The billing month starts today (00:00 UTC): yesterday is the previous period.
    let today = time::OffsetDateTime::now_utc().day();
    let plans = plans_toml_anchored(&tenants, &[], today);
    let env = Env::new(TestDb::sqlite(), &plans).await;
    let collector = env.collector().await;
    let events = workload(18, "p", 20, &tenants, &[hour_ago(30)]);
    env.ingest(&collector, &events).await;
    env.sync_until_done(&collector).await;
    let before = env.stripe_totals().await;

    env.ingest(&collector, &refunds(&events[..2])).await;
    env.sync_until_done(&collector).await;
    assert_eq!(
        metric(
            &env.http,
            &collector,
            "turnpike_collector_billing_cancels_total"
        )
        .await,
        0.0
    );
    assert_eq!(env.stripe_totals().await, before);
    let status = env.status(&collector).await;
    let credits = status["credits"].as_array().unwrap();
    assert_eq!(credits.len(), 2, "{status}");
    assert!(credits.iter().all(|c| c["reason"]
        .as_str()
        .unwrap()
        .contains("billing period ended")));
    let requests = credits.iter().find(|c| c["meter"] == "requests").unwrap();
    assert_eq!(requests["quantity"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_older_than_stripes_35_days_is_reported_and_never_sent() {
    let tenants = tenant_names(2);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &[])).await;
    let collector = env.collector().await;
    // Forty days old by the collector's clock.
    let ancient = workload(11, "old", 20, &tenants[..1], &[hour_ago(40 * 24)]);
    env.ingest(&collector, &ancient).await;
    // Recent by the collector's clock, but Stripe's clock is 36 days ahead.
    let recent = workload(12, "new", 20, &tenants[1..], &[hour_ago(3)]);
    env.ingest(&collector, &recent).await;
    env.fake_post("/_fake/clock", json!({"advance_secs": 36 * 86_400}))
        .await;
    env.sync_until_done(&collector).await;

    assert!(env.stripe_events().await.is_empty());
    let status = env.status(&collector).await;
    let too_old: BTreeMap<String, i64> = status["too_old"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_owned(),
                g["units"].as_i64().unwrap(),
            )
        })
        .collect();
    let units = |events: &[Value]| -> i64 {
        events
            .iter()
            .map(|e| 1 + e["data"]["meters"][1]["cost"].as_i64().unwrap())
            .sum()
    };
    assert_eq!(too_old.get("t00"), Some(&units(&ancient)), "{status}");
    assert_eq!(too_old.get("t01"), Some(&units(&recent)), "{status}");
    assert_eq!(
        status["too_old_units"],
        json!(units(&ancient) + units(&recent))
    );
    assert_eq!(
        metric(
            &env.http,
            &collector,
            "turnpike_collector_billing_too_old_units"
        )
        .await,
        (units(&ancient) + units(&recent)) as f64
    );
    assert!(
        collector.log_text().contains("older than Stripe's 35 days"),
        "the log says so"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_a_customer_is_held_as_unmapped_until_mapped() {
    let tenants = tenant_names(3);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &["t02"])).await;
    let collector = env.collector().await;
    let hours: Vec<i64> = (2..5).map(hour_ago).collect();
    let events = workload(13, "u", 300, &tenants, &hours);
    env.ingest(&collector, &events).await;
    env.sync_until_done(&collector).await;

    env.assert_stripe_matches_ledger(&["t02"]).await;
    assert!(env
        .stripe_events()
        .await
        .iter()
        .all(|e| e["payload"]["stripe_customer_id"] != "cus_t02"));
    let status = env.status(&collector).await;
    let unmapped = status["unmapped"].as_array().unwrap();
    assert_eq!(unmapped.len(), 1, "{status}");
    assert_eq!(unmapped[0]["name"], "t02");
    let t02_units: i64 = events
        .iter()
        .filter(|e| e["subject"] == "t02")
        .map(|e| 1 + e["data"]["meters"][1]["cost"].as_i64().unwrap())
        .sum();
    assert_eq!(status["unmapped_units"], json!(t02_units));
    assert_eq!(
        metric(
            &env.http,
            &collector,
            "turnpike_collector_billing_unmapped_tenants"
        )
        .await,
        1.0
    );

    // The mapping appears (the collector reloads the plans file on change).
    std::fs::write(&env.plans, plans_toml(&tenants, &[])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        env.sync_until_done(&collector).await;
        if env.ledger_totals(&[]).await == env.stripe_totals().await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the newly mapped tenant was never synced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.assert_stripe_matches_ledger(&[]).await;
    let status = env.status(&collector).await;
    assert_eq!(status["unmapped"], json!([]), "{status}");
}

/// A `count` meter would count revisions, not units: nothing is sent to it, and the
/// usage waits as `no_meter` (as it does for a meter that does not exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_that_cannot_add_up_hourly_sums_are_not_sent_to() {
    let tenants = tenant_names(2);
    let env = Env::with_meters(
        TestDb::sqlite(),
        &plans_toml(&tenants, &[]),
        &[
            (REQUESTS_EVENT, Formula::Sum),
            (SEARCH_EVENT, Formula::Count),
        ],
    )
    .await;
    let collector = env.collector().await;
    let events = workload(19, "n", 100, &tenants, &[hour_ago(3)]);
    env.ingest(&collector, &events).await;
    env.sync_until_done(&collector).await;

    let stripe = env.stripe_totals().await;
    assert!(
        stripe
            .keys()
            .all(|(_, event_name, _)| event_name == REQUESTS_EVENT),
        "{stripe:?}"
    );
    let mut expected = env.ledger_totals(&[]).await;
    expected.retain(|(_, event_name, _), _| event_name == REQUESTS_EVENT);
    assert_eq!(stripe, expected);
    let status = env.status(&collector).await;
    let no_meter = status["no_meter"].as_array().unwrap();
    assert_eq!(no_meter.len(), 1, "{status}");
    assert_eq!(no_meter[0]["name"], "search_units");
    let search_units: i64 = events
        .iter()
        .map(|e| e["data"]["meters"][1]["cost"].as_i64().unwrap())
        .sum();
    assert_eq!(no_meter[0]["units"], json!(search_units));
    assert!(collector
        .log_text()
        .contains("needs formula sum and raw event ingestion"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_key_is_a_clear_error_and_marks_nothing_synced() {
    let tenants = tenant_names(2);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &[])).await;
    std::fs::write(&env.key_file, "sk_test_wrong_key_1234\n").unwrap();
    let collector = env.collector().await;
    env.ingest(
        &collector,
        &workload(14, "k", 100, &tenants, &[hour_ago(3)]),
    )
    .await;
    let (status, body) = env.sync(&collector).await;
    assert_eq!(status, 502, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("Stripe refused the API key"), "{detail}");
    assert!(
        !detail.contains("wrong_key"),
        "the key stays out of answers: {detail}"
    );

    assert!(env.stripe_events().await.is_empty());
    let billing = env.status(&collector).await;
    assert!(
        billing["last_error"]
            .as_str()
            .unwrap()
            .contains("Stripe refused the API key"),
        "{billing}"
    );
    assert_eq!(billing["last_success"], Value::Null);
    assert_eq!(billing["hours"]["synced"], json!(0), "{billing}");
    assert!(billing["pending_units"].as_i64().unwrap() > 0, "{billing}");
    assert!(collector.log_text().contains("Stripe refused the API key"));
    let text = env
        .http
        .get(collector.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("turnpike_collector_billing_sync_runs_total{outcome=\"auth_failed\"}"),
        "{text}"
    );
    // The command line reads the same state from the database.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnpike-collector"))
        .args(["billing", "status", "--database", env.db.url()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("last error: Stripe refused the API key"),
        "{text}"
    );
    assert!(text.contains("last success: never"), "{text}");
}

/// A row that moves to another hour after its hour was sent (the proxy's event
/// arrived first with its own time, the later one settles it) leaves the old hour
/// corrected and the new one billed.
async fn a_row_that_moves_to_another_hour_after_a_send_is_billed_where_it_landed(db: TestDb) {
    let tenants = tenant_names(1);
    let env = Env::new(db, &plans_toml(&tenants, &[])).await;
    let collector = env.collector().await;
    let (a, b) = (hour_ago(5), hour_ago(3));
    let events = workload(15, "m", 10, &tenants, &[a]);
    env.ingest(&collector, &events).await;
    env.sync_until_done(&collector).await;
    let moved: Vec<Value> = events[..2]
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e["time"] = json!(format_time_ms(b + 60_000));
            e
        })
        .collect();
    env.ingest(&collector, &moved).await;
    env.sync_until_done(&collector).await;
    env.assert_stripe_matches_ledger(&[]).await;
    let totals = env.stripe_totals().await;
    assert_eq!(
        totals.get(&("cus_t00".into(), REQUESTS_EVENT.into(), b / 1000)),
        Some(&2)
    );
    assert_eq!(
        totals.get(&("cus_t00".into(), REQUESTS_EVENT.into(), a / 1000)),
        Some(&8)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_moves_to_another_hour_after_a_send_is_billed_where_it_landed_on_sqlite() {
    a_row_that_moves_to_another_hour_after_a_send_is_billed_where_it_landed(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_moves_to_another_hour_after_a_send_is_billed_where_it_landed_on_postgres() {
    a_row_that_moves_to_another_hour_after_a_send_is_billed_where_it_landed(TestDb::postgres())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_syncs_once_and_reports_status_as_json() {
    let tenants = tenant_names(3);
    let env = Env::new(TestDb::sqlite(), &plans_toml(&tenants, &[])).await;
    // The server without a key: billing off there.
    let collector = Collector::start(&env.db, &["--plans", &env.plans.display().to_string()]).await;
    env.ingest(
        &collector,
        &workload(16, "cli", 200, &tenants, &[hour_ago(2), hour_ago(4)]),
    )
    .await;
    let (status, body) = env.sync(&collector).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(env.status(&collector).await["enabled"], json!(false));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnpike-collector"))
        .args([
            "billing",
            "sync",
            "--once",
            "--json",
            "--database",
            env.db.url(),
        ])
        .args(["--plans", &env.plans.display().to_string()])
        .args(["--stripe-api-base", &env.fake.base_url()])
        .args(["--billing-grace-secs", "0"])
        .env("TURNPIKE_STRIPE_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["events_sent"].as_u64().unwrap() > 0, "{report}");
    env.assert_stripe_matches_ledger(&[]).await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnpike-collector"))
        .args(["billing", "status", "--json", "--database", env.db.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pending_units"], json!(0), "{status}");
    assert!(status["last_reconcile"].is_string(), "{status}");
    assert!(status.get("enabled").is_none());
}
