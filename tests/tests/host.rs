//! The host contract: what the filter relies on Envoy itself for, checked against the
//! Envoy the harness runs (`ENVOY_VERSION`, see `turnpike_tests::paths::envoy`), so that
//! `make test-matrix` shows it version by version: the running Envoy is the selected
//! one; jwt_authn's token cache still puts the verified payload in metadata; callouts
//! go over h2c; a claim that is not a string never becomes a tenant (that depends on how
//! the host encodes non-string metadata leaves); the node id and body sizes in usage
//! events come from host properties; and a plugin configuration the filter refuses
//! stops Envoy from starting, with the filter's reason in the log, instead of a VM that
//! traps on every request.

use std::time::Duration;

use serde_json::{json, Value};
use turnpike_tests::envoy::{Envoy, EnvoyOptions};
use turnpike_tests::paths::{envoy, version_matches};
use turnpike_tests::ports::free_port;
use turnpike_tests::{eventually, now_unix, problems, Stack, TokenSpec};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "daily", meter = "requests", window = "day", max = 1000 } ]
"#;

/// Usage events out every 100 ms, so the tests need not wait a default interval.
fn fast_events() -> Value {
    json!({ "collector": { "flush_interval_ms": 100 } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_envoy_is_the_one_the_harness_selected() {
    let stack = Stack::builder(PLANS).start().await;
    let running = stack.envoy.server_version().await;
    assert_eq!(running, envoy().version, "admin /server_info vs --version");
    if let Some(wanted) = std::env::var("ENVOY_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
    {
        assert!(
            version_matches(&running, &wanted),
            "ENVOY_VERSION={wanted}, but Envoy {running} is running"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_jwt_cache_are_metered_and_callouts_use_h2c() {
    let stack = Stack::builder(PLANS)
        .with_collector()
        .filter_patch(fast_events())
        .start()
        .await;
    let token = stack.token("cached");
    for i in 0..5 {
        let reply = stack.get("/v1/things", Some(&token)).await;
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        assert_eq!(reply.echo().header("turnpike-tenant"), Some("cached"));
    }
    // One verification, four cache hits: on a hit jwt_authn must still put the payload
    // in metadata, or the four would be refused as having no tenant.
    let jwt = stack.envoy.stats("jwt_authn\\.jwt_cache_").await;
    assert_eq!(
        (
            jwt.get("http.ingress.jwt_authn.jwt_cache_miss"),
            jwt.get("http.ingress.jwt_authn.jwt_cache_hit")
        ),
        (Some(&1), Some(&4)),
        "{jwt:#?}"
    );
    assert_eq!(stack.counter.used("cached", "daily").await, 5);

    let envoy = &stack.envoy;
    eventually("5 events sent", Duration::from_secs(20), || async {
        (envoy.filter_stat("events_sent").await == 5).then_some(())
    })
    .await;
    // `http2_protocol_options` in the template: both callout clusters speak h2c.
    let cx = stack
        .envoy
        .stats("^cluster\\.turnpike_(counter|collector)\\.upstream_cx_http[12]_total$")
        .await;
    for cluster in ["turnpike_counter", "turnpike_collector"] {
        let get = |proto: &str| cx.get(&format!("cluster.{cluster}.upstream_cx_{proto}_total"));
        assert_eq!(get("http1"), Some(&0), "{cluster}: {cx:#?}");
        assert!(get("http2").is_some_and(|&n| n >= 1), "{cluster}: {cx:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_claim_that_is_not_a_string_is_no_tenant() {
    let stack = Stack::builder(PLANS).start().await;
    let base = TokenSpec::for_tenant("unused")
        .claims(now_unix())
        .unwrap_or_else(|e| panic!("claims: {e}"));
    let with_tenant = |value: &Value| {
        let mut claims = base.clone();
        claims["tenant"] = value.clone();
        stack.sign(&claims)
    };
    // Envoy hands a non-string leaf back in its own encoding (a number as the f64's 8
    // bytes, a bool as one byte, a Struct or list serialized), which the filter must
    // never take for a tenant id.
    let not_strings = [
        json!(12345),
        json!(0),
        json!(-1.5),
        json!(true),
        json!(false),
        json!({ "id": "acme" }),
        json!(["acme"]),
        json!(null),
        json!(""),
    ];
    for value in &not_strings {
        let reply = stack.get("/v1/things", Some(&with_tenant(value))).await;
        assert_eq!(reply.status, 401, "tenant claim {value}: {reply:?}");
        reply.assert_problem(401, problems::MISSING_TENANT);
    }
    assert_eq!(
        stack.envoy.filter_stat("missing_tenant").await,
        not_strings.len() as u64
    );
    assert_eq!(stack.counter.consumes_total().await, 0);

    // The same digits as a string are a tenant like any other.
    let reply = stack
        .get("/v1/things", Some(&with_tenant(&json!("12345"))))
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(stack.counter.used("12345", "daily").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_carry_the_node_id_and_the_sizes_the_host_reports() {
    let stack = Stack::builder(PLANS)
        .with_collector()
        .filter_patch(fast_events())
        .template_value("NODE_ID", "matrix-node-7")
        .start()
        .await;
    let body = "seventeen bytes!!";
    let request = stack
        .request(reqwest::Method::POST, "/v1/things")
        .bearer_auth(stack.token("sourced"))
        .body(body);
    let reply = stack.send(request).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let collector = stack.collector();
    let events = eventually("1 event in the ledger", Duration::from_secs(20), || async {
        collector
            .all_events("sourced")
            .await
            .filter(|events| events.len() == 1)
    })
    .await;
    let event = &events[0];
    // The `xds.node.id` property (Envoy 1.33 removed the older `node.id`).
    assert_eq!(
        event["source"], "//turnpike/envoy/matrix-node-7",
        "{event:#?}"
    );
    // The `request.size` and `response.size` properties: body bytes each way.
    assert_eq!(event["request_bytes"], body.len(), "{event:#?}");
    assert_eq!(event["response_bytes"], reply.body.len(), "{event:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_configuration_the_filter_refuses_stops_envoy_with_the_reason() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let options = EnvoyOptions {
        concurrency: 1,
        filter_patch: Some(json!({ "counter": { "failure_mode": "sometimes" } })),
        filter_config: None,
        values: Vec::new(),
        upstream_port: free_port(),
        counter_port: free_port(),
        more_counter_ports: Vec::new(),
        collector_ports: vec![free_port()],
    };
    let logs = Envoy::start_refused(dir.path(), &options).await;
    assert!(
        logs.contains("invalid plugin configuration: counter.failure_mode"),
        "the filter's reason is not in the log:\n{logs}"
    );
    assert!(
        logs.contains("Unable to create Wasm plugin turnpike"),
        "Envoy did not refuse the plugin:\n{logs}"
    );
}
