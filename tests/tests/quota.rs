//! Quota enforcement through real Envoy + filter + counter + Redis: limits, plans,
//! multi-limit atomicity, route weights and exempt paths.

use turnpike_tests::redis::Redis;
use turnpike_tests::{
    avoid_window_end, member, parse_list, problems, secs_to_window_end, Reply, Stack, TokenSpec,
};

fn within_one(actual: u64, expected: u64) -> bool {
    actual.abs_diff(expected) <= 1
}

/// Sends GETs until one is denied (or `max_tries`); returns how many were allowed and
/// the first non-200 answer.
async fn allowed_until_denied(
    stack: &Stack,
    path: &str,
    token: &str,
    max_tries: usize,
) -> (usize, Reply) {
    for allowed in 0..max_tries {
        let reply = stack.get(path, Some(token)).await;
        if reply.status != 200 {
            return (allowed, reply);
        }
    }
    panic!("{max_tries} requests to {path} were all allowed");
}

const PER_MINUTE_5: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "per-minute", meter = "requests", window = "minute", max = 5 } ]
"#;

turnpike_tests::on_each_topology! {
    async fn over_per_minute_limit_gets_429_with_retry_after_ratelimit_fields_and_problem(topology) {
        let stack = Stack::builder(PER_MINUTE_5).topology(topology).start().await;
        let token = stack.token("acme");
        avoid_window_end(60, 10).await;

        for i in 0..5u64 {
            let reply = stack.get("/v1/things", Some(&token)).await;
            assert_eq!(reply.status, 200, "request {i}: {reply:?}");
            assert_eq!(reply.echo().header("turnpike-tenant"), Some("acme"));
            let policy = parse_list(reply.required_header("ratelimit-policy"));
            assert_eq!(policy.len(), 1, "{policy:?}");
            assert_eq!(member(&policy, "per-minute").int("q"), 5);
            assert_eq!(member(&policy, "per-minute").int("w"), 60);
            let state = parse_list(reply.required_header("ratelimit"));
            let per_minute = member(&state, "per-minute");
            assert_eq!(
                per_minute.int("r"),
                5 - i - 1,
                "remaining after request {i}"
            );
            let t = per_minute.int("t");
            assert!(
                within_one(t, secs_to_window_end(60)),
                "t={t}, window ends in {}",
                secs_to_window_end(60)
            );
        }

        for _ in 0..3 {
            let reply = stack.get("/v1/things", Some(&token)).await;
            let problem = reply.assert_problem(429, problems::QUOTA_EXCEEDED);
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains("per-minute"),
                "detail should name the limit: {problem}"
            );
            let retry_after: u64 = reply
                .required_header("retry-after")
                .parse()
                .expect("Retry-After in seconds");
            let window_end = secs_to_window_end(60);
            assert!(
                retry_after >= 1 && within_one(retry_after, window_end),
                "Retry-After {retry_after}, window ends in {window_end}"
            );
            let state = parse_list(reply.required_header("ratelimit"));
            assert_eq!(member(&state, "per-minute").int("r"), 0);
            assert_eq!(
                member(
                    &parse_list(reply.required_header("ratelimit-policy")),
                    "per-minute"
                )
                .int("q"),
                5
            );
        }

        assert_eq!(stack.envoy.filter_stat("allowed").await, 5);
        assert_eq!(stack.envoy.filter_stat("denied").await, 3);
    }
}

const PLANS_WITH_OVERRIDE: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "free-daily", meter = "requests", window = "day", max = 2 } ]
[plans.pro]
limits = [ { name = "pro-daily", meter = "requests", window = "day", max = 4 } ]
[tenants.pinned]
plan = "free"
"#;

turnpike_tests::on_each_topology! {
    async fn tenants_are_independent_and_plan_comes_from_override_then_claim_then_default(topology) {
        let stack = Stack::builder(PLANS_WITH_OVERRIDE).topology(topology).start().await;
        avoid_window_end(86_400, 30).await;

        // Two tenants on the default plan: exhausting one leaves the other untouched.
        let (allowed, denied) = allowed_until_denied(&stack, "/v1/a", &stack.token("alpha"), 10).await;
        assert_eq!(allowed, 2);
        denied.assert_problem(429, problems::QUOTA_EXCEEDED);
        let (allowed, _) = allowed_until_denied(&stack, "/v1/a", &stack.token("beta"), 10).await;
        assert_eq!(allowed, 2, "beta must not share alpha's quota");

        // The plan claim selects the plan.
        let pro = stack.mint(&TokenSpec::for_tenant("gamma").with_plan("pro"));
        let first = stack.get("/v1/a", Some(&pro)).await;
        assert_eq!(first.status, 200, "{first:?}");
        assert_eq!(
            member(
                &parse_list(first.required_header("ratelimit-policy")),
                "pro-daily"
            )
            .int("q"),
            4
        );
        let (allowed, denied) = allowed_until_denied(&stack, "/v1/a", &pro, 10).await;
        assert_eq!(allowed + 1, 4);
        let detail = denied.assert_problem(429, problems::QUOTA_EXCEEDED)["detail"].to_string();
        assert!(detail.contains("pro-daily"), "{detail}");

        // The plans file's tenant override wins over the claim.
        let pinned = stack.mint(&TokenSpec::for_tenant("pinned").with_plan("pro"));
        let first = stack.get("/v1/a", Some(&pinned)).await;
        assert_eq!(first.status, 200, "{first:?}");
        let policy = parse_list(first.required_header("ratelimit-policy"));
        assert_eq!(member(&policy, "free-daily").int("q"), 2, "{policy:?}");
        let (allowed, _) = allowed_until_denied(&stack, "/v1/a", &pinned, 10).await;
        assert_eq!(allowed + 1, 2);

        // An unknown claimed plan falls back to the default plan.
        let unknown = stack.mint(&TokenSpec::for_tenant("delta").with_plan("platinum"));
        let (allowed, _) = allowed_until_denied(&stack, "/v1/a", &unknown, 10).await;
        assert_eq!(allowed, 2);
    }
}

const MINUTE_AND_MONTH: &str = r#"
default_plan = "free"
[plans.free]
limits = [
  { name = "per-minute", meter = "requests", window = "minute", max = 3 },
  { name = "monthly", meter = "requests", window = "month", max = 100 },
]
"#;

turnpike_tests::on_each_topology! {
    async fn request_denied_by_per_minute_limit_consumes_nothing_of_the_monthly_limit(topology) {
        let stack = Stack::builder(MINUTE_AND_MONTH).topology(topology).start().await;
        let token = stack.token("acme");
        avoid_window_end(60, 10).await;

        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(stack.get("/v1/things", Some(&token)).await.status);
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);

        let (_, minute) = stack
            .redis
            .only_counter(&Redis::tenant_keys("acme", "q:requests:minute:*"));
        let (_, month) = stack
            .redis
            .only_counter(&Redis::tenant_keys("acme", "q:requests:month:*"));
        assert_eq!(
            (minute, month),
            (3, 3),
            "Redis window counters (minute, month)"
        );
        assert_eq!(stack.counter.used("acme", "monthly").await, 3);
        assert_eq!(stack.counter.used("acme", "per-minute").await, 3);
    }
}

const WEIGHTED: &str = r#"
default_plan = "free"
[plans.free]
limits = [
  { name = "daily-requests", meter = "requests", window = "day", max = 100 },
  { name = "search-units", meter = "search_units", window = "day", max = 12 },
]
"#;

turnpike_tests::on_each_topology! {
    async fn search_route_costs_its_weights_and_exempt_health_path_consumes_nothing(topology) {
        let stack = Stack::builder(WEIGHTED).topology(topology).start().await;
        let token = stack.token("acme");
        avoid_window_end(86_400, 30).await;

        for expected_remaining in [7, 2] {
            let reply = stack.get("/v1/search?q=x", Some(&token)).await;
            assert_eq!(reply.status, 200, "{reply:?}");
            let policy = parse_list(reply.required_header("ratelimit-policy"));
            assert_eq!(member(&policy, "search-units").int("q"), 12);
            assert_eq!(member(&policy, "daily-requests").int("q"), 100);
            let state = parse_list(reply.required_header("ratelimit"));
            assert_eq!(member(&state, "search-units").int("r"), expected_remaining);
        }
        // 10 of 12 units used: a search costing 5 more is refused, all or nothing.
        let denied = stack.get("/v1/search?q=x", Some(&token)).await;
        let detail = denied.assert_problem(429, problems::QUOTA_EXCEEDED)["detail"].to_string();
        assert!(detail.contains("search-units"), "{detail}");

        // Another route costs only the default `requests: 1`.
        let other = stack.get("/v1/other", Some(&token)).await;
        assert_eq!(other.status, 200, "{other:?}");
        let policy = parse_list(other.required_header("ratelimit-policy"));
        assert!(
            policy.iter().all(|m| m.name != "search-units"),
            "{policy:?}"
        );
        assert_eq!(stack.counter.used("acme", "daily-requests").await, 3);
        assert_eq!(stack.counter.used("acme", "search-units").await, 10);

        // Exempt: no token needed, nothing consumed, counted as exempt.
        let keys_before = stack.redis.dbsize();
        let health = stack.get("/healthz", None).await;
        assert_eq!(health.status, 200, "{health:?}");
        let health = stack.get("/healthz", Some(&token)).await;
        assert_eq!(health.status, 200, "{health:?}");
        assert_eq!(
            stack.redis.dbsize(),
            keys_before,
            "an exempt request wrote to Redis"
        );
        assert_eq!(stack.counter.used("acme", "daily-requests").await, 3);
        assert!(stack.envoy.filter_stat("exempt").await >= 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_waits_for_the_decision_and_a_refused_one_never_reaches_the_upstream() {
    // Envoy hands the filter request bodies while the headers are paused
    // (allow_on_headers_stop_iteration in the template): the body must wait for the
    // counter too, or a denied POST would be sent upstream before the 429.
    const ONE_A_DAY: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "daily", meter = "requests", window = "day", max = 1 } ]
"#;
    // This is about holding the body, not about speed: a loaded machine must not turn
    // the first upload into a fail_closed 503.
    let stack = Stack::builder(ONE_A_DAY).generous_timeouts().start().await;
    let token = stack.token("poster");
    avoid_window_end(86_400, 30).await;
    let body = "x".repeat(256 * 1024);
    let before = stack.envoy.stat("cluster.upstream.upstream_rq_total").await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let response = stack
            .request(reqwest::Method::POST, "/v1/uploads")
            .bearer_auth(&token)
            .body(body.clone())
            .send()
            .await
            .expect("upload");
        let status = response.status().as_u16();
        statuses.push((status, response.text().await.unwrap_or_default()));
    }
    // The answers' bodies say who answered (the filter's problem+json, Envoy, the echo).
    assert_eq!(
        statuses.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [200, 429],
        "{statuses:?}"
    );
    // The held body went upstream whole once the counter said yes.
    let echo: turnpike_devtools::upstream::Echo =
        serde_json::from_str(&statuses[0].1).expect("the upstream's echo");
    assert_eq!(echo.body_bytes, body.len() as u64);
    let after = stack.envoy.stat("cluster.upstream.upstream_rq_total").await;
    assert_eq!(after - before, 1, "the refused upload reached the upstream");
}
