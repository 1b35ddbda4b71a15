//! Identity: jwt_authn rejects bad tokens before metering; the filter refuses verified
//! tokens without a usable tenant; nested claim paths work.

use serde_json::json;
use turnpike_tests::{problems, Stack, TokenSpec};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "daily", meter = "requests", window = "day", max = 1000 } ]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_wrong_issuer_and_absent_tokens_get_401_and_never_reach_the_counter() {
    let stack = Stack::builder(PLANS).start().await;
    let acme = TokenSpec::for_tenant("acme");
    let cases = [
        ("forged signature", Some(stack.forged(&acme))),
        ("expired", Some(stack.mint(&acme.clone().expired()))),
        (
            "wrong issuer",
            Some(stack.mint(&acme.clone().with_issuer("https://evil.example"))),
        ),
        ("not a JWT", Some("not-a-jwt".to_owned())),
        ("absent", None),
    ];
    for (what, token) in &cases {
        let reply = stack.get("/v1/things", token.as_deref()).await;
        assert_eq!(reply.status, 401, "{what} token: {reply:?}");
    }
    assert_eq!(stack.redis.dbsize(), 0, "a rejected token reached Redis");
    assert_eq!(
        stack.counter.consumes_total().await,
        0,
        "a rejected token reached the counter"
    );
    assert_eq!(stack.envoy.filter_stat("allowed").await, 0);

    // The same path with a valid token is metered, so the checks above can fail.
    let reply = stack.get("/v1/things", Some(&stack.token("acme"))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(stack.counter.consumes_total().await, 1);
    assert!(stack.redis.dbsize() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_token_without_a_valid_tenant_gets_401_problem_from_the_filter() {
    let stack = Stack::builder(PLANS).start().await;

    let no_tenant = stack.mint(&TokenSpec::for_tenant("acme").without_tenant());
    let reply = stack.get("/v1/things", Some(&no_tenant)).await;
    reply.assert_problem(401, problems::MISSING_TENANT);
    assert_eq!(stack.envoy.filter_stat("missing_tenant").await, 1);

    // A tenant claim that is not a valid tenant id is no tenant either.
    for bad in ["has space", &"x".repeat(65), "a/b"] {
        let token = stack.mint(&TokenSpec::for_tenant(bad));
        let reply = stack.get("/v1/things", Some(&token)).await;
        reply.assert_problem(401, problems::MISSING_TENANT);
    }
    assert_eq!(stack.envoy.filter_stat("missing_tenant").await, 4);
    assert_eq!(stack.redis.dbsize(), 0);
    assert_eq!(stack.counter.consumes_total().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_tenant_claim_path_identifies_the_tenant() {
    let stack = Stack::builder(PLANS)
        .filter_patch(json!({ "tenant": { "claim": "org.id" } }))
        .start()
        .await;

    let nested = stack.mint(&TokenSpec::for_tenant("acme").with_tenant_claim("org.id"));
    let reply = stack.get("/v1/things", Some(&nested)).await;
    assert_eq!(reply.echo().header("turnpike-tenant"), Some("acme"));
    assert_eq!(stack.counter.used("acme", "daily").await, 1);

    // A top-level `tenant` claim is not the configured claim.
    let flat = stack.mint(&TokenSpec::for_tenant("acme"));
    stack
        .get("/v1/things", Some(&flat))
        .await
        .assert_problem(401, problems::MISSING_TENANT);
    assert_eq!(stack.counter.used("acme", "daily").await, 1);
}
