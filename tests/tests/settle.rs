//! Reserve before, settle after, through real Envoy, counter, collector and Redis, with
//! the LLM-shaped demo upstream (`POST /v1/chat/completions`, OpenAI-style JSON and
//! server-sent events with a `usage` object; see `crates/devtools/src/llm.rs`).

use std::time::Duration;

use serde_json::{json, Value};
use turnpike_tests::{eventually, Stack};

const PLANS: &str = r#"
default_plan = "llm"
[plans.llm]
limits = [
  { name = "requests-daily", meter = "requests", window = "day", max = 1000 },
  { name = "tokens-daily", meter = "tokens", window = "day", max = 5000 },
]
"#;

/// The chat route: 1 request, tokens reserved from `max_tokens` and settled from
/// `usage.total_tokens` (JSON body or the last event of a stream), bytes settled.
fn chat_route(settle: Value) -> Value {
    json!({
        "routes": [
            { "name": "chat", "method": "POST", "path_exact": "/v1/chat/completions",
              "meters": { "requests": 1 },
              "usage": [ { "meter": "tokens",
                           "reserve": { "json": "/max_tokens", "default": 500, "max": 4000 },
                           "settle": settle } ] }
        ],
        "collector": { "flush_interval_ms": 100 }
    })
}

async fn stack_with(settle: Value) -> Stack {
    Stack::builder(PLANS)
        .with_collector()
        .filter_patch(chat_route(settle))
        .start()
        .await
}

fn chat(words: usize, max_tokens: u64, stream: bool) -> Value {
    let content = vec!["word"; words].join(" ");
    json!({ "model": "demo", "max_tokens": max_tokens, "stream": stream,
            "messages": [ { "role": "user", "content": content } ] })
}

async fn post_chat(
    stack: &Stack,
    token: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = stack
        .request(reqwest::Method::POST, "/v1/chat/completions")
        .bearer_auth(token)
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("chat request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

async fn tokens_used(stack: &Stack, tenant: &str) -> u64 {
    stack.counter.used(tenant, "tokens-daily").await
}

/// The ledger's only billable row for `tenant` once its tokens are `want` and settled.
async fn ledger_tokens(stack: &Stack, tenant: &str, want: u64) -> Value {
    eventually(
        &format!("{tenant}'s settled tokens in the ledger"),
        Duration::from_secs(30),
        || async {
            let rows = stack.collector().all_events(tenant).await?;
            let row = rows.iter().rev().find(|r| r["billable"] == true)?.clone();
            let tokens = row["meters"]
                .as_array()?
                .iter()
                .find(|m| m["meter"] == "tokens")?["quantity"]
                .as_u64()?;
            (tokens == want && row["reported"] == true).then_some(row)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_answer_settles_below_its_reservation_into_counter_and_ledger() {
    let stack = stack_with(json!({ "json": "/usage/total_tokens" })).await;
    let token = stack.token("json-tenant");
    // 7 prompt words + 30 completion tokens, with 400 reserved.
    let (status, body) = post_chat(
        &stack,
        &token,
        &chat(7, 400, false),
        &[("x-demo-completion-tokens", "30")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(answer["usage"]["total_tokens"], 37);
    eventually(
        "the settlement at the counter",
        Duration::from_secs(10),
        || async { (tokens_used(&stack, "json-tenant").await == 37).then_some(()) },
    )
    .await;
    let row = ledger_tokens(&stack, "json-tenant", 37).await;
    assert_eq!(stack.envoy.filter_stat("settlements").await, 1, "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_request_is_written_to_the_ledger_once_from_the_stream() {
    let stack = stack_with(json!({ "json": "/usage/total_tokens" })).await;
    let token = stack.token("once-tenant");
    let stream_rows = || async {
        let metrics = stack.collector().metrics().await;
        let sum = |name| turnpike_tests::counter::prometheus_sum(&metrics, name);
        (
            sum("turnpike_collector_stream_entries_total"),
            sum("turnpike_collector_stream_rows_changed_total"),
        )
    };
    // The first exchange makes the tenant's stream one the collector reads every
    // round (25 ms); the second's consume is then read within a round of being
    // counted, and its settlement comes after the streamed answer's last event, some
    // 150 ms and several rounds later.
    for n in 1..=2u64 {
        let before = stream_rows().await;
        let (status, body) = post_chat(
            &stack,
            &token,
            &chat(7, 400, true),
            &[
                ("x-demo-completion-tokens", "3"),
                ("x-demo-chunk-delay-ms", "50"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        eventually(
            "the settlement at the counter",
            Duration::from_secs(10),
            || async { (tokens_used(&stack, "once-tenant").await == 10 * n).then_some(()) },
        )
        .await;
        // Both facts of the exchange (its consume and its settlement) reach the ledger
        // in one commit: its row is written once, not inserted and then rewritten.
        let after = eventually(
            "both facts from the stream",
            Duration::from_secs(10),
            || async {
                let now = stream_rows().await;
                (now.0 >= before.0 + 2).then_some(now)
            },
        )
        .await;
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (2, 1),
            "exchange {n}: stream facts and ledger rows written"
        );
    }
    ledger_tokens(&stack, "once-tenant", 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_gives_its_reservation_back_without_waiting_for_the_filters_tick() {
    // No usage events: the filter's root ticks every 500 ms. A settlement queued when
    // nothing else is out wakes the root at once instead of waiting for that tick, so
    // a client that asks again shortly after its answer finds its reservation back.
    let mut patch = chat_route(json!({ "json": "/usage/total_tokens" }));
    patch["collector"] = Value::Null;
    let stack = Stack::builder(PLANS).filter_patch(patch).start().await;
    let token = stack.token("sequential");
    for n in 1..=4u64 {
        // 4,000 reserved of a 5,000-token day: the next fits only if this one settled.
        let (status, body) = post_chat(
            &stack,
            &token,
            &chat(7, 4000, false),
            &[("x-demo-completion-tokens", "30")],
        )
        .await;
        assert_eq!(status, 200, "request {n}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            tokens_used(&stack, "sequential").await,
            37 * n,
            "request {n}"
        );
    }
}

/// Refuses a reservation past the budget; returns how many requests reached the
/// upstream and how many it answered, over both.
async fn refuse_past_budget(hold_headers: bool) -> (u64, u64) {
    let mut patch = chat_route(json!({ "json": "/usage/total_tokens" }));
    patch["hold_headers_for_body"] = json!(hold_headers);
    let stack = Stack::builder(PLANS)
        .with_collector()
        .filter_patch(patch)
        .start()
        .await;
    let token = stack.token("budget");
    let requests_before = stack.envoy.stat("cluster.upstream.upstream_rq_total").await;
    let answers_before = stack.envoy.stat("cluster.upstream.upstream_rq_2xx").await;
    // 4000 reserved of a 5000-token day: fine; another 4000: refused.
    let (status, body) = post_chat(
        &stack,
        &token,
        &chat(1, 4000, false),
        &[("x-demo-completion-tokens", "4000")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_chat(&stack, &token, &chat(1, 4000, false), &[]).await;
    assert_eq!(status, 429, "{body}");
    // The first one settles to what it used: 1 prompt + 4000 completion tokens.
    eventually(
        "the first request's settlement",
        Duration::from_secs(10),
        || async { (tokens_used(&stack, "budget").await == 4001).then_some(()) },
    )
    .await;
    (
        stack.envoy.stat("cluster.upstream.upstream_rq_total").await - requests_before,
        stack.envoy.stat("cluster.upstream.upstream_rq_2xx").await - answers_before,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_past_the_budget_is_refused_before_the_upstream_runs() {
    // With Envoy's allow_on_headers_stop_iteration (the repository's Envoy config), the
    // refused request never leaves Envoy.
    let (requests, answers) = refuse_past_budget(true).await;
    assert_eq!(
        (requests, answers),
        (1, 1),
        "the refused request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_held_headers_a_refused_reservation_never_sends_its_body() {
    // Where Envoy cannot hold a body-reading filter's headers (Istio's WasmPlugin), the
    // headers go upstream at once, the body waits for the counter, and a refusal resets
    // the upstream request before it has a body to work on: it is never answered.
    let (requests, answers) = refuse_past_budget(false).await;
    assert_eq!(
        answers, 1,
        "the refused request was answered by the upstream"
    );
    assert!(requests <= 2, "{requests} upstream requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_settles_from_its_last_usage_event_read_as_it_passes() {
    let stack = stack_with(json!({ "json": "/usage/total_tokens" })).await;
    let token = stack.token("stream-tenant");
    // A long stream (3000 tokens in chunks of 10), the usage event split across writes.
    let (status, body) = post_chat(
        &stack,
        &token,
        &chat(5, 100, true),
        &[
            ("x-demo-completion-tokens", "3000"),
            ("x-demo-chunk-tokens", "10"),
            ("x-demo-split-usage", "4"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("data: [DONE]"),
        "the stream reached the client whole"
    );
    // Used more than reserved (3005 > 100): the windows take the difference.
    eventually(
        "the settlement at the counter",
        Duration::from_secs(10),
        || async { (tokens_used(&stack, "stream-tenant").await == 3005).then_some(()) },
    )
    .await;
    ledger_tokens(&stack, "stream-tenant", 3005).await;
    // The day now holds 3005 of 5000 tokens: a request reserving 2500 is refused.
    let (status, _) = post_chat(&stack, &token, &chat(1, 2500, false), &[]).await;
    assert_eq!(status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_trailers_and_bytes_settle_too() {
    let stack = stack_with(json!({ "header": "x-usage-tokens" })).await;
    let token = stack.token("header-tenant");
    let (status, _) = post_chat(
        &stack,
        &token,
        &chat(3, 50, false),
        &[
            ("x-demo-completion-tokens", "9"),
            ("x-demo-usage-header", "header"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    eventually(
        "settled from the header",
        Duration::from_secs(10),
        || async { (tokens_used(&stack, "header-tenant").await == 12).then_some(()) },
    )
    .await;

    let stack = stack_with(json!({ "response_bytes": true })).await;
    let token = stack.token("bytes-tenant");
    let (status, body) = post_chat(
        &stack,
        &token,
        &chat(2, 10, false),
        &[("x-demo-completion-tokens", "5")],
    )
    .await;
    assert_eq!(status, 200);
    let bytes = body.len() as u64;
    eventually(
        "settled to the response's bytes",
        Duration::from_secs(10),
        || async { (tokens_used(&stack, "bytes-tenant").await == bytes).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_5xx_with_usage_is_refunded_whole() {
    let stack = stack_with(json!({ "json": "/usage/total_tokens" })).await;
    let token = stack.token("outage");
    let (status, _) = post_chat(
        &stack,
        &token,
        &chat(3, 200, false),
        &[("x-demo-status", "503")],
    )
    .await;
    assert_eq!(status, 503);
    eventually("the refund", Duration::from_secs(10), || async {
        (tokens_used(&stack, "outage").await == 0).then_some(())
    })
    .await;
    assert_eq!(stack.counter.used("outage", "requests-daily").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_usage_falls_back_to_the_reservation_with_a_metric_and_a_log_line() {
    let mut stack = stack_with(json!({ "json": "/usage/total_tokens" })).await;
    let token = stack.token("sloppy");
    for (i, kind) in ["nan", "negative", "huge"].iter().enumerate() {
        let (status, _) = post_chat(
            &stack,
            &token,
            &chat(3, 100, false),
            &[("x-demo-usage", kind)],
        )
        .await;
        assert_eq!(status, 200, "{kind}");
        let want = 100 * (i as u64 + 1);
        eventually(
            &format!("{kind}: billed the reservation"),
            Duration::from_secs(10),
            || async { (tokens_used(&stack, "sloppy").await == want).then_some(()) },
        )
        .await;
    }
    assert_eq!(stack.envoy.filter_stat("settle_malformed").await, 3);
    // Envoy writes its log file every 100 ms (the harness's flush interval).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !stack
        .envoy
        .process()
        .logs()
        .contains("unusable tokens quantity")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line about the bad usage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_is_billed_what_the_stream_reported() {
    let stack = stack_with(json!({ "json": "/usage/total_tokens" })).await;
    let token = stack.token("dropper");
    // A slow stream: the client reads a little and goes away before the usage event.
    let response = stack
        .request(reqwest::Method::POST, "/v1/chat/completions")
        .bearer_auth(&token)
        .header("x-demo-completion-tokens", "200")
        .header("x-demo-chunk-delay-ms", "20")
        .json(&chat(2, 150, true))
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    let mut response = response;
    let first = response
        .chunk()
        .await
        .expect("a chunk")
        .expect("some bytes");
    assert!(!first.is_empty());
    drop(response);
    // The stream reported no usage before it was cut: the reservation is billed.
    eventually("billed per policy", Duration::from_secs(15), || async {
        let rows = stack.collector().all_events("dropper").await?;
        let row = rows.iter().rev().find(|r| r["billable"] == true)?;
        let tokens = row["meters"]
            .as_array()?
            .iter()
            .find(|m| m["meter"] == "tokens")?["quantity"]
            .as_u64()?;
        (tokens == 150).then_some(())
    })
    .await;
    assert_eq!(tokens_used(&stack, "dropper").await, 150);
}

turnpike_tests::on_each_topology! {
    /// Batched settlements (`settle_many.lua` for a tenant's, on a Redis Cluster each
    /// tenant's on its own slot) settle each exchange once, in the windows and the ledger.
    async fn many_concurrent_exchanges_each_settle_once_through_batched_calls(topology) {
        const BIG: &str = r#"
default_plan = "llm"
[plans.llm]
limits = [ { name = "tokens-daily", meter = "tokens", window = "day", max = 100000000 } ]
"#;
        const TENANTS: [&str; 3] = ["busy-a", "busy-b", "busy-c"];
        const CLIENTS: usize = 33;
        const PER_CLIENT: usize = 19;
        let stack = Stack::builder(BIG)
            .topology(topology)
            .with_collector()
            .filter_patch(chat_route(json!({ "json": "/usage/total_tokens" })))
            .generous_timeouts()
            .start()
            .await;
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            // Clients of every tenant at once, so batches mix them.
            let request = stack
                .http
                .post(stack.envoy.url("/v1/chat/completions"))
                .bearer_auth(stack.token(TENANTS[c % TENANTS.len()]))
                .header("x-demo-completion-tokens", "30")
                .json(&chat(7, 400, false));
            clients.spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..PER_CLIENT {
                    let request = request.try_clone().expect("a plain request");
                    let response = request.send().await;
                    statuses.push(response.map(|r| r.status().as_u16()).unwrap_or(0));
                }
                statuses
            });
        }
        let mut statuses = Vec::new();
        while let Some(more) = clients.join_next().await {
            statuses.extend(more.expect("client"));
        }
        let sent = CLIENTS * PER_CLIENT;
        let others: Vec<&u16> = statuses.iter().filter(|&&s| s != 200).collect();
        assert!(others.is_empty(), "not 200: {others:?}");
        assert_eq!(statuses.len(), sent);
        // 37 tokens each (7 prompt words, 30 completion tokens), 400 reserved each: every
        // settlement lands once, in the windows and in the ledger.
        let per_tenant = (sent / TENANTS.len()) as u64;
        for tenant in TENANTS {
            eventually(&format!("{tenant}'s settlements"), Duration::from_secs(30), || async {
                (stack.counter.used(tenant, "tokens-daily").await == 37 * per_tenant).then_some(())
            })
            .await;
            eventually(&format!("{tenant}'s ledger"), Duration::from_secs(30), || async {
                let rows = stack.collector().latest_events(tenant).await?;
                let settled: Vec<u64> = rows
                    .iter()
                    .filter(|r| r["billable"] == true && r["reported"] == true)
                    .filter_map(|r| {
                        r["meters"].as_array()?.iter().find(|m| m["meter"] == "tokens")?["quantity"]
                            .as_u64()
                    })
                    .collect();
                (rows.len() as u64 == per_tenant && settled == vec![37; per_tenant as usize])
                    .then_some(())
            })
            .await;
        }
        assert_eq!(stack.envoy.filter_stat("settlements").await, sent as u64);
        let metrics = stack.counter.metrics().await;
        let sum = |name: &str| turnpike_tests::counter::prometheus_sum(&metrics, name);
        assert!(
            sum("turnpike_counter_settle_batches_total") > 0,
            "the settlements should have gone in batches"
        );
        assert!(
            sum("turnpike_counter_settles_grouped_total") > 0,
            "a tenant's batched settlements should have gone in one script"
        );
        assert_eq!(sum("turnpike_counter_settles_total"), sent as u64);
    }
}
