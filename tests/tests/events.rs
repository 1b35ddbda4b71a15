//! Usage events: the filter ships one CloudEvent per metered exchange to the collector,
//! under the same id the counter consumed; a collector outage loses nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use turnpike_tests::{eventually, Stack};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "daily", meter = "requests", window = "day", max = 4 } ]
"#;

async fn start() -> Stack {
    Stack::builder(PLANS)
        .with_collector()
        .filter_patch(json!({ "collector": {
            "cluster": "turnpike_collector",
            "authority": "turnpike-collector",
            "flush_interval_ms": 100,
        } }))
        .start()
        .await
}

/// The ledger's rows for `tenant`, once there are `n` of them and the proxy's usage
/// event for each has arrived (the counter's usage stream may have made the row
/// first).
async fn ledger_events(stack: &Stack, tenant: &str, n: usize) -> Vec<Value> {
    let collector = stack.collector();
    let path = format!("/v1/tenants/{tenant}/events?limit=1000");
    let path = &path;
    eventually(
        &format!("{n} reported events for {tenant} in the ledger"),
        Duration::from_secs(20),
        || async move {
            let page = collector.get_json(path).await?;
            let events = page["events"].as_array()?.clone();
            assert!(events.len() <= n, "more events than requests: {events:#?}");
            let reported = events.iter().all(|e| e["reported"] == true);
            (events.len() == n && reported).then_some(events)
        },
    )
    .await
}

async fn consume_id_of_allowed_request(stack: &Stack, token: &str) -> String {
    let echo = stack.get("/v1/things", Some(token)).await.echo();
    echo.header("turnpike-consume-id")
        .expect("consume id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_requests_reach_the_ledger_under_their_consume_ids() {
    let stack = start().await;
    let token = stack.token("acme");
    let mut allowed_ids = BTreeSet::new();
    for _ in 0..4 {
        allowed_ids.insert(consume_id_of_allowed_request(&stack, &token).await);
    }
    assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 429);

    let events = ledger_events(&stack, "acme", 5).await;
    let id_of = |e: &Value| e["id"].as_str().unwrap_or_default().to_owned();
    let allowed: BTreeSet<String> = events
        .iter()
        .filter(|e| e["decision"] == "allowed")
        .map(id_of)
        .collect();
    assert_eq!(
        allowed, allowed_ids,
        "ledger ids must be the consume ids: {events:#?}"
    );
    let denied: Vec<&Value> = events
        .iter()
        .filter(|e| e["decision"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1, "{events:#?}");
    assert_eq!(denied[0]["billable"], false);
    assert_eq!(denied[0]["status"], 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_while_the_collector_is_down_are_delivered_once_it_is_back() {
    let mut stack = start().await;
    let token = stack.token("acme");
    consume_id_of_allowed_request(&stack, &token).await;
    ledger_events(&stack, "acme", 1).await;

    stack.collector_mut().kill();
    let mut during_outage = BTreeSet::new();
    for _ in 0..2 {
        during_outage.insert(consume_id_of_allowed_request(&stack, &token).await);
    }
    // Long enough for several failed flushes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.collector_mut().restart().await;

    let events = ledger_events(&stack, "acme", 3).await;
    let ids: BTreeSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        during_outage.is_subset(&ids),
        "{during_outage:?} not all in {ids:?}"
    );
}
