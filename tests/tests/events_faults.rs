//! Usage events under collector faults, caused for real: the collector hung while the
//! proxy's bounded buffer overflows, one of two PostgreSQL-backed replicas SIGKILLed
//! mid-traffic, a SQLite collector SIGKILLed mid-traffic and restarted. Every test
//! checks exact numbers: what the filter counted, what the ledger holds, by id.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use turnpike_tests::collector::Collector;
use turnpike_tests::{eventually, Stack};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "daily", meter = "requests", window = "day", max = 100000 } ]
"#;

const TENANT: &str = "acme";

/// Long enough for backoff after an outage; the tests wait for a state, not a time.
const DELIVERY: Duration = Duration::from_secs(60);

/// The filter's collector settings for these tests, over the template's.
fn collector_patch(extra: Value) -> Value {
    let mut collector = json!({
        "cluster": "turnpike_collector",
        "authority": "turnpike-collector",
    });
    if let (Some(base), Some(extra)) = (collector.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    json!({ "collector": collector })
}

/// One metered request that the plan allows; its consume id as the upstream saw it.
async fn allowed_request(stack: &Stack, token: &str) -> String {
    let echo = stack.get("/v1/things", Some(token)).await.echo();
    echo.header("turnpike-consume-id")
        .unwrap_or_else(|| panic!("no turnpike-consume-id in the upstream's echo"))
        .to_owned()
}

fn id_of(event: &Value) -> String {
    event["id"]
        .as_str()
        .unwrap_or_else(|| panic!("event without an id: {event}"))
        .to_owned()
}

/// The ledger's events for the tenant (every page of the listing, each row in its
/// latest state), once there are exactly `n`; panics at once if there are ever more.
async fn ledger_once_it_holds(collector: &Collector, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} events for {TENANT} in the ledger"),
        DELIVERY,
        || async move {
            let events = collector.latest_events(TENANT).await?;
            assert!(
                events.len() <= n,
                "{} events in the ledger for {n} requests",
                events.len()
            );
            (events.len() == n).then_some(events)
        },
    )
    .await
}

/// The filter's `events_sent` reaching `n`: its buffer has nothing left to deliver.
async fn filter_sent(stack: &Stack, n: u64) {
    eventually(
        &format!("the filter's events_sent to reach {n}"),
        DELIVERY,
        || async move {
            let sent = stack.envoy.filter_stat("events_sent").await;
            assert!(sent <= n, "events_sent {sent} > {n} events made");
            (sent == n).then_some(())
        },
    )
    .await;
}

/// Asserts the ledger's events are exactly `ids`, each once.
fn assert_each_id_once(events: &[Value], ids: &BTreeSet<String>) {
    let stored: Vec<String> = events.iter().map(id_of).collect();
    let unique: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        stored.len(),
        "an event id is in the ledger twice: {stored:?}"
    );
    assert_eq!(
        &unique,
        ids,
        "ledger ids differ from the consume ids: missing {:?}, unexpected {:?}",
        ids.difference(&unique).collect::<Vec<_>>(),
        unique.difference(ids).collect::<Vec<_>>()
    );
}

/// The number in the filter's overflow line, `usage event buffer full (<max> events):
/// dropped <n>`, for every such line in `log`.
fn overflow_lines(log: &str, max_buffer: usize) -> Vec<u64> {
    let marker = format!("usage event buffer full ({max_buffer} events): dropped ");
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(&marker)? + marker.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_buffer_drops_details_not_usage_and_the_ledger_bills_every_admitted_request() {
    const MAX_BUFFER: usize = 20;
    const SENT: usize = 50;
    let mut stack = Stack::builder(PLANS)
        .concurrency(1)
        .with_collector()
        .filter_patch(collector_patch(json!({
            "flush_interval_ms": 200,
            "max_batch": 10,
            "max_buffer": MAX_BUFFER,
            // The batch sent to the stopped collector stays in flight (and in the
            // buffer) until the collector is killed below; no failure logged before.
            "timeout_ms": 30000,
        })))
        .start()
        .await;
    let token = stack.token(TENANT);
    // One request first: the tenant's windows are set up (seeded from the ledger)
    // while the collector still answers.
    let mut ids = vec![allowed_request(&stack, &token).await];
    filter_sent(&stack, 1).await;

    // Stopped (SIGSTOP): it accepts connections and answers nothing. Unlike a refused
    // connection, that logs no "batch failed" line, which would take the filter's log
    // budget and hide the overflow line for 10 s.
    stack.collector_mut().process().pause();
    for _ in 0..SENT {
        ids.push(allowed_request(&stack, &token).await);
    }
    let envoy = &stack.envoy;
    eventually(
        "an event queued or dropped for every request",
        Duration::from_secs(10),
        || async move {
            let queued = envoy.filter_stat("events_queued").await;
            let dropped = envoy.filter_stat("events_dropped").await;
            (queued + dropped == SENT as u64 + 1).then_some(())
        },
    )
    .await;
    let dropped = stack.envoy.filter_stat("events_dropped").await;
    assert_eq!(dropped, (SENT - MAX_BUFFER) as u64, "events_dropped");
    assert_eq!(
        stack.envoy.filter_stat("events_queued").await,
        MAX_BUFFER as u64 + 1,
        "events_queued"
    );
    assert_eq!(stack.envoy.filter_stat("events_sent").await, 1);

    // The next flush tick reports the overflow in Envoy's log.
    let envoy = &mut stack.envoy;
    let logged = eventually(
        "Envoy's log to say that usage events were dropped",
        Duration::from_secs(10),
        || {
            let lines = overflow_lines(&envoy.process().logs(), MAX_BUFFER);
            async move { (!lines.is_empty()).then_some(lines) }
        },
    )
    .await;
    // A burst split across ticks is reported by the first line; the rest fall under
    // the log's rate limit.
    assert!(
        logged[0] >= 1 && logged.iter().sum::<u64>() <= dropped,
        "overflow lines {logged:?} vs events_dropped {dropped}"
    );

    // Restart (SIGKILL the stopped process, start it again on the same port/ledger).
    stack.collector_mut().restart().await;
    filter_sent(&stack, MAX_BUFFER as u64 + 1).await;
    // Every admitted request is billed, from the counter's usage stream: the events
    // the proxy dropped only carried details (route, status, bytes).
    let events = ledger_once_it_holds(stack.collector(), SENT + 1).await;
    let every: BTreeSet<String> = ids.iter().cloned().collect();
    assert_each_id_once(&events, &every);
    assert!(events
        .iter()
        .all(|e| e["billable"] == true && e["counted"] == true));
    // The buffer kept the oldest events' details and dropped the newer ones'.
    let reported: BTreeSet<String> = events
        .iter()
        .filter(|e| e["reported"] == true)
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let kept: BTreeSet<String> = ids[..=MAX_BUFFER].iter().cloned().collect();
    assert_eq!(reported, kept);
    assert_eq!(stack.envoy.filter_stat("billable_events_dropped").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collector_replicas_on_postgres_store_every_event_once_when_one_is_killed_mid_traffic()
{
    const SENT: usize = 200;
    let mut stack = Stack::builder(PLANS)
        .concurrency(1)
        .collector_postgres()
        .collector_replicas(2)
        .filter_patch(collector_patch(json!({
            "flush_interval_ms": 50,
            "max_batch": 5,
        })))
        .start()
        .await;
    let token = stack.token(TENANT);

    let mut ids = BTreeSet::new();
    for i in 0..SENT {
        if i == SENT / 2 {
            // Both replicas must have been in use, or killing one proves nothing.
            let collectors = &stack.collectors;
            eventually(
                "both collector replicas to have stored batches",
                DELIVERY,
                || async move {
                    let (a, b) = (
                        collectors[0].batches_stored().await,
                        collectors[1].batches_stored().await,
                    );
                    (a > 0 && b > 0).then_some(())
                },
            )
            .await;
            stack.collectors[1].kill();
        }
        assert!(
            ids.insert(allowed_request(&stack, &token).await),
            "consume id repeated"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    filter_sent(&stack, SENT as u64).await;
    let events = ledger_once_it_holds(&stack.collectors[0], SENT).await;
    assert_each_id_once(&events, &ids);
    // The same, straight from PostgreSQL: one row per request, no id twice.
    let rows = stack.ledger_sql(&format!(
        "SELECT count(*), count(DISTINCT id) FROM usage_events WHERE tenant = '{TENANT}'"
    ));
    assert_eq!(rows.trim(), format!("{SENT}|{SENT}"), "count, distinct ids");
    assert_eq!(stack.envoy.filter_stat("events_dropped").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_killed_mid_traffic_and_restarted_stores_every_event_exactly_once() {
    const SENT: usize = 150;
    let mut stack = Stack::builder(PLANS)
        .concurrency(1)
        .with_collector()
        .filter_patch(collector_patch(json!({
            "flush_interval_ms": 50,
            "max_batch": 5,
        })))
        .start()
        .await;
    let token = stack.token(TENANT);

    let mut ids = BTreeSet::new();
    for i in 0..SENT {
        if i == SENT / 3 {
            stack.collector_mut().kill();
        }
        if i == 2 * SENT / 3 {
            stack.collector_mut().restart().await;
        }
        assert!(
            ids.insert(allowed_request(&stack, &token).await),
            "consume id repeated"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    filter_sent(&stack, SENT as u64).await;
    let events = ledger_once_it_holds(stack.collector(), SENT).await;
    assert_each_id_once(&events, &ids);
    assert_eq!(stack.envoy.filter_stat("events_dropped").await, 0);
}
