//! Exactly-once counting: a retried consume id is counted once, but ids a client sends
//! are never trusted.

use std::collections::BTreeSet;

use turnpike_tests::redis::Redis;
use turnpike_tests::Stack;
use turnpike_wire::{ConsumeRequest, ConsumeResponse, LimitStatus, MeterCost};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "daily", meter = "requests", window = "day", max = 1000 } ]
"#;

fn consume(id: &str) -> ConsumeRequest {
    ConsumeRequest {
        id: id.into(),
        tenant: "acme".into(),
        plan: None,
        meters: vec![MeterCost {
            meter: "requests".into(),
            cost: 1,
        }],
    }
}

turnpike_tests::on_each_topology! {
    async fn same_consume_id_posted_twice_to_the_counter_is_counted_once(topology) {
        let stack = Stack::builder(PLANS).topology(topology).start().await;

        let started = std::time::Instant::now();
        let first = stack.counter.consume(&consume("retry-1")).await;
        let second = stack.counter.consume(&consume("retry-1")).await;
        let elapsed_secs = started.elapsed().as_secs();
        assert_eq!(
            (first.status, second.status),
            (200, 200),
            "{first:?} {second:?}"
        );
        let first: ConsumeResponse = serde_json::from_str(&first.body).expect("consume response");
        let second: ConsumeResponse = serde_json::from_str(&second.body).expect("consume response");
        assert!(first.allowed && !first.replayed);
        assert!(second.allowed && second.replayed);
        // A replay answers the same, at its own time: `reset` counts the seconds left
        // from when each answer was given, so it is one less if a second turned
        // between the two calls.
        let at_first_time: Vec<_> = second
            .limits
            .iter()
            .zip(&first.limits)
            .map(|(replayed, original)| {
                let turned = original.reset.checked_sub(replayed.reset);
                assert!(
                    turned.is_some_and(|t| t <= elapsed_secs + 1),
                    "reset {} then {} over {elapsed_secs} s",
                    original.reset,
                    replayed.reset
                );
                LimitStatus { reset: original.reset, ..replayed.clone() }
            })
            .collect();
        assert_eq!(first.limits, at_first_time, "a replay answers the same");
        assert_eq!(stack.counter.used("acme", "daily").await, 1);
        let (_, in_redis) = stack
            .redis
            .only_counter(&Redis::tenant_keys("acme", "q:requests:day:*"));
        assert_eq!(in_redis, 1);

        // A different id is a different request.
        assert_eq!(stack.counter.consume(&consume("retry-2")).await.status, 200);
        assert_eq!(stack.counter.used("acme", "daily").await, 2);
    }
}

turnpike_tests::on_each_topology! {
    async fn client_replaying_request_and_consume_ids_is_charged_every_time(topology) {
        let stack = Stack::builder(PLANS).topology(topology).start().await;
        let token = stack.token("acme");

        let mut upstream_ids = BTreeSet::new();
        for _ in 0..3 {
            let request = stack
                .request(reqwest::Method::GET, "/v1/things")
                .bearer_auth(&token)
                .header("x-request-id", "client-fixed-request-id")
                .header("turnpike-consume-id", "client-chosen-id")
                .header("turnpike-tenant", "someone-else");
            let echo = stack.send(request).await.echo();
            let id = echo
                .header("turnpike-consume-id")
                .expect("the filter's consume id")
                .to_owned();
            assert_ne!(id, "client-chosen-id");
            assert_eq!(
                echo.headers["turnpike-consume-id"].len(),
                1,
                "the client's header must be replaced"
            );
            assert_eq!(echo.headers["turnpike-tenant"], ["acme"]);
            upstream_ids.insert(id);
        }
        assert_eq!(
            upstream_ids.len(),
            3,
            "each request gets a fresh consume id: {upstream_ids:?}"
        );
        assert_eq!(stack.counter.used("acme", "daily").await, 3);
        assert_eq!(stack.counter.used("someone-else", "daily").await, 0);
    }
}
