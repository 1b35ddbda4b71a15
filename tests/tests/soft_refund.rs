//! Soft thresholds warn; upstream 5xx answers are refunded unless configured not to be.

use std::time::Duration;

use serde_json::json;
use turnpike_tests::{eventually, member, parse_list, Stack};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "monthly", meter = "requests", window = "month", max = 10, soft = 3 } ]
"#;

const WARNING: &str = "turnpike-quota-warning";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_the_soft_threshold_adds_the_warning_header() {
    let stack = Stack::builder(PLANS)
        .filter_patch(json!({ "soft_warning_header": WARNING }))
        .start()
        .await;
    let token = stack.token("acme");

    for used in 1..=2 {
        let reply = stack.get("/v1/things", Some(&token)).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.header(WARNING),
            None,
            "no warning below the soft threshold (used={used})"
        );
    }
    for used in 3..=4 {
        let reply = stack.get("/v1/things", Some(&token)).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let warning = parse_list(reply.required_header(WARNING));
        let monthly = member(&warning, "monthly");
        assert_eq!(
            (monthly.int("used"), monthly.int("soft"), monthly.int("max")),
            (used, 3, 10)
        );
    }
    assert_eq!(stack.envoy.filter_stat("soft_warnings").await, 2);
}

turnpike_tests::on_each_topology! {
    async fn upstream_5xx_is_refunded_when_refund_on_5xx_is_on(topology) {
        let stack = Stack::builder(PLANS)
            .topology(topology)
            .filter_patch(json!({ "refund_on_5xx": true }))
            .start()
            .await;
        let token = stack.token("acme");
        assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);
        assert_eq!(stack.counter.used("acme", "monthly").await, 1);

        assert_eq!(stack.get("/status/503", Some(&token)).await.status, 503);
        let stack_ref = &stack;
        eventually(
            "the 503 to be refunded",
            Duration::from_secs(10),
            || async move { (stack_ref.counter.used("acme", "monthly").await == 1).then_some(()) },
        )
        .await;
        eventually(
            "the refunds stat to count it",
            Duration::from_secs(5),
            || async move { (stack_ref.envoy.filter_stat("refunds").await == 1).then_some(()) },
        )
        .await;

        // Client errors are the client's: charged.
        assert_eq!(stack.get("/status/404", Some(&token)).await.status, 404);
        assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(stack.counter.used("acme", "monthly").await, 3);
        assert_eq!(stack.envoy.filter_stat("refunds").await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_is_charged_when_refund_on_5xx_is_off() {
    let stack = Stack::builder(PLANS)
        .filter_patch(json!({ "refund_on_5xx": false }))
        .start()
        .await;
    let token = stack.token("acme");

    assert_eq!(stack.get("/status/503", Some(&token)).await.status, 503);
    assert_eq!(stack.get("/status/500", Some(&token)).await.status, 500);
    // A refund would be asynchronous: give one time to (wrongly) happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.counter.used("acme", "monthly").await, 2);
    assert_eq!(stack.envoy.filter_stat("refunds").await, 0);
}
