//! Faults caused for real: the counter killed or hung, Redis stopped and restarted.

use std::time::Duration;

use serde_json::json;
use turnpike_tests::{eventually, problems, Reply, Stack};
use turnpike_wire::{ConsumeRequest, MeterCost};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "daily", meter = "requests", window = "day", max = 1000 } ]
"#;

/// The filter's configured counter timeout in these tests (the template's value).
const TIMEOUT: Duration = Duration::from_millis(250);
/// Scheduling slack on a loaded 2-core machine: a correctness bound, not a benchmark.
const SLACK: Duration = Duration::from_millis(750);

async fn eventually_200(stack: &Stack, token: &str, what: &str) -> Reply {
    eventually(what, Duration::from_secs(20), || async move {
        let reply = stack.get("/v1/things", Some(token)).await;
        (reply.status == 200).then_some(reply)
    })
    .await
}

fn assert_fast_unavailable(reply: &Reply, what: &str) {
    reply.assert_problem(503, problems::COUNTER_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("1"), "{what}: {reply:?}");
    assert!(
        reply.elapsed < TIMEOUT + SLACK,
        "{what}: answered after {:?}",
        reply.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_passes_requests_while_the_counter_is_down_and_meters_again_after_restart() {
    let mut stack = Stack::builder(PLANS)
        .filter_patch(json!({ "counter": { "failure_mode": "fail_open" } }))
        .start()
        .await;
    let token = stack.token("acme");
    assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);
    assert_eq!(stack.envoy.filter_stat("fail_open_passes").await, 0);

    stack.counter.kill();
    for _ in 0..3 {
        let reply = stack.get("/v1/things", Some(&token)).await;
        assert_eq!(reply.echo().header("turnpike-tenant"), Some("acme"));
    }
    assert!(stack.envoy.filter_stat("fail_open_passes").await >= 3);
    assert!(stack.envoy.filter_stat("counter_errors").await >= 3);

    stack.counter.restart().await;
    let allowed_before = stack.envoy.filter_stat("allowed").await;
    let (stack_ref, token_ref) = (&stack, &token);
    eventually(
        "requests to be metered again after the restart",
        Duration::from_secs(20),
        || async move {
            let (stack, token) = (stack_ref, token_ref);
            let reply = stack.get("/v1/things", Some(token)).await;
            assert_eq!(reply.status, 200, "fail_open must keep passing: {reply:?}");
            (stack.envoy.filter_stat("allowed").await > allowed_before).then_some(())
        },
    )
    .await;
    assert!(stack.counter.used("acme", "daily").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_503_within_the_timeout_when_the_counter_is_down_or_hung_and_recovers()
{
    let mut stack = Stack::builder(PLANS).start().await;
    let token = stack.token("acme");
    assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);

    // Killed: connections refused.
    stack.counter.kill();
    for _ in 0..3 {
        let reply = stack.get("/v1/things", Some(&token)).await;
        assert_fast_unavailable(&reply, "counter killed");
    }
    stack.counter.restart().await;
    eventually_200(&stack, &token, "recovery after the counter restarted").await;

    // Hung (SIGSTOP): the connection is open but nothing answers, so only the
    // filter's timeout ends the wait.
    stack.counter.process().pause();
    let reply = stack.get("/v1/things", Some(&token)).await;
    assert_fast_unavailable(&reply, "counter hung");
    stack.counter.process().resume();
    eventually_200(&stack, &token, "recovery after the counter resumed").await;

    assert!(stack.envoy.filter_stat("fail_closed_denials").await >= 4);
    assert_eq!(stack.envoy.filter_stat("fail_open_passes").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_fast_503s_and_recovers_when_redis_returns_on_the_same_port() {
    let mut stack = Stack::builder(PLANS)
        .counter_arg("--redis-timeout-ms")
        .counter_arg("250")
        .start()
        .await;
    let token = stack.token("acme");
    assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);

    stack.redis.stop();
    let consume = ConsumeRequest {
        id: "during-outage".into(),
        tenant: "acme".into(),
        plan: None,
        meters: vec![MeterCost {
            meter: "requests".into(),
            cost: 1,
        }],
    };
    let direct = stack.counter.consume(&consume).await;
    assert_eq!(direct.status, 503, "{direct:?}");
    assert!(direct
        .required_header("content-type")
        .starts_with("application/problem+json"));
    assert!(
        direct.elapsed < TIMEOUT + SLACK,
        "counter answered after {:?}",
        direct.elapsed
    );
    assert_eq!(stack.counter.get("/healthz").await.status, 503);

    let reply = stack.get("/v1/things", Some(&token)).await;
    assert_fast_unavailable(&reply, "redis down");

    // Nothing else is restarted: the counter reconnects by itself.
    stack.redis.restart().await;
    eventually_200(&stack, &token, "recovery after Redis came back").await;
    assert_eq!(stack.counter.get("/healthz").await.status, 200);
}
