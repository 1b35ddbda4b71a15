//! What the proxy admitted is what the ledger bills, one to one, whatever fails: the
//! collector frozen or killed under load, Envoy drained and stopped, clients that go
//! away mid-consume or mid-refund, Redis restarted empty, a request at the last
//! instant of a billing month. Real Envoy, counter, collector and Redis.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};
use turnpike_tests::counter::prometheus_sum;
use turnpike_tests::load::{Load, LoadReport};
use turnpike_tests::{eventually, Stack, Topology};

/// How long each fault lasts under load (the issue asks for 30 s); shorter locally with
/// `TURNPIKE_FAULT_SECS`.
fn fault_secs() -> u64 {
    std::env::var("TURNPIKE_FAULT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// Clients of the load: enough to keep every part of the stack busy on two cores.
const CLIENTS: usize = 32;

const BIG: &str = r#"
default_plan = "big"
[plans.big]
limits = [
  { name = "per-second", meter = "requests", window = "second", max = 1000000 },
  { name = "monthly", meter = "requests", window = "month", max = 100000000 },
]
"#;

/// The ledger's rows for `tenant`, each in its latest state: (billable ids, rows).
async fn ledger_ids(stack: &Stack, tenant: &str) -> Option<(HashSet<String>, Vec<Value>)> {
    let rows = stack.collector().latest_events(tenant).await?;
    let billable = rows
        .iter()
        .filter(|r| r["billable"] == true)
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    Some((billable, rows))
}

/// Waits until the ledger bills exactly what the counter admitted, then checks that
/// the clients' 200s are among them: by id, none twice, none missing.
///
/// `cut_off_by_a_stop`: at most how many admitted consumes may be left unbilled because
/// Envoy stopped while they were out. Their clients were cut off, so the proxy's events
/// report them cancelled (not billed), and the refunds the filter queued for them went
/// with its VM: the windows keep them (docs/guarantees.md, the bounds). Each must be in
/// the ledger as the counter's record, never billed, never refunded. 0 for every fault
/// but an Envoy stop.
async fn assert_ledger_equals_admitted(
    stack: &Stack,
    tenant: &str,
    report: &LoadReport,
    cut_off_by_a_stop: usize,
) {
    // What Redis holds in the tenant's month is what was admitted, net of refunds (every
    // request costs one unit). The counter's metrics are no oracle here: a consume whose
    // caller (a dying Envoy) hung up is committed in Redis even though the counter's
    // handler never got to count it.
    let mut last = (0, 0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let (billable, counted) = loop {
        let counted = stack.counter.used(tenant, "monthly").await;
        if let Some((billable, rows)) = ledger_ids(stack, tenant).await {
            let cut_off = rows
                .iter()
                .filter(|r| {
                    r["decision"] == "cancelled"
                        && r["counted"] == true
                        && r["refunded"] == false
                        && r["billable"] == false
                })
                .count();
            if (billable.len() + cut_off) as u64 == counted && cut_off <= cut_off_by_a_stop {
                break (billable, counted);
            }
            last = (billable.len(), cut_off, counted);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ledger never billed what the windows count: (billed, cut off by the stop, counted) = {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let missing: Vec<&String> = report.admitted.difference(&billable).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} requests answered 200 are not billed, e.g. {missing:?}",
        report.admitted.difference(&billable).count()
    );
    assert!(
        report.admitted.len() as u64 <= counted,
        "more 200s than the windows count"
    );
}

/// Stops the load; it must have had more than `at_least` requests admitted.
async fn stop_load(load: Load, at_least: usize) -> LoadReport {
    let report = load.stop().await;
    assert!(
        report.admitted.len() > at_least,
        "too little load: {:?}",
        report.statuses
    );
    report
}

async fn loaded_stack() -> (Stack, String) {
    loaded_stack_on(Topology::Single).await
}

async fn loaded_stack_on(topology: Topology) -> (Stack, String) {
    let stack = Stack::builder(BIG)
        .topology(topology)
        .with_collector()
        .filter_patch(json!({ "collector": { "flush_interval_ms": 100 } }))
        .start()
        .await;
    let token = stack.token("loaded");
    // The tenant's first request sets up its windows while everything answers.
    assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);
    (stack, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_frozen_under_load_bills_every_admitted_request_once_resumed() {
    let (mut stack, token) = loaded_stack().await;
    let load = Load::start(&stack.envoy.url("/v1/things"), &token, CLIENTS);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.collector_mut().process().pause();
    tokio::time::sleep(Duration::from_secs(fault_secs())).await;
    stack.collector_mut().process().resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = stop_load(load, 1000).await;
    assert_eq!(
        report.errors, 0,
        "the collector's outage must not fail requests"
    );
    assert_ledger_equals_admitted(&stack, "loaded", &report, 0).await;
    assert_eq!(stack.envoy.filter_stat("billable_events_dropped").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_killed_under_load_bills_every_admitted_request_once_restarted() {
    let (mut stack, token) = loaded_stack().await;
    let load = Load::start(&stack.envoy.url("/v1/things"), &token, CLIENTS);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.collector_mut().kill();
    tokio::time::sleep(Duration::from_secs(fault_secs())).await;
    stack.collector_mut().restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = stop_load(load, 1000).await;
    assert_ledger_equals_admitted(&stack, "loaded", &report, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quiet_tenants_reach_the_ledger_while_another_keeps_the_collector_busy() {
    // The collector reads a stream found empty ever less often, and a busy one every
    // round: a quiet tenant's usage must still come in while the load goes on.
    let (stack, token) = loaded_stack().await;
    let busy = turnpike_plans::keys::bucket("loaded");
    let quiet: Vec<String> = (0..)
        .map(|i| format!("quiet-{i}"))
        .filter(|t| turnpike_plans::keys::bucket(t) != busy)
        .take(4)
        .collect();
    let load = Load::start(&stack.envoy.url("/v1/things"), &token, CLIENTS);
    for (k, tenant) in quiet.iter().enumerate() {
        // Spread over the load, so each finds its stream at a different wait.
        tokio::time::sleep(Duration::from_millis(300 * k as u64 + 200)).await;
        let reply = stack.get("/v1/things", Some(&stack.token(tenant))).await;
        assert_eq!(reply.status, 200, "{tenant}: {}", reply.body);
    }
    for tenant in &quiet {
        eventually(
            "the quiet tenant's request counted in the ledger from its stream",
            Duration::from_secs(60),
            || async {
                let (_, rows) = ledger_ids(&stack, tenant).await?;
                rows.iter().any(|r| r["counted"] == true).then_some(())
            },
        )
        .await;
    }
    let report = stop_load(load, 1000).await;
    assert_ledger_equals_admitted(&stack, "loaded", &report, 0).await;
}

turnpike_tests::on_each_topology! {
    worker_threads = 4;
    async fn envoy_drained_and_stopped_under_load_loses_no_admitted_request(topology) {
        let (mut stack, token) = loaded_stack_on(topology).await;
        let load = Load::start(&stack.envoy.url("/v1/things"), &token, CLIENTS);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let drained = stack
            .http
            .post(stack.envoy.admin_url("/drain_listeners?graceful"))
            .send()
            .await
            .expect("drain");
        assert_eq!(drained.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        stack.envoy.process().terminate(Duration::from_secs(10));
        let report = stop_load(load, 100).await;
        // Envoy is gone with whatever usage events it still held: the counter's usage
        // stream has every admitted request anyway. Consumes out at the stop whose
        // refunds died with the VM: at most one per client.
        assert_ledger_equals_admitted(&stack, "loaded", &report, CLIENTS).await;
    }
}

const SMALL: &str = r#"
default_plan = "small"
[plans.small]
limits = [
  { name = "daily", meter = "requests", window = "day", max = 100 },
  { name = "monthly", meter = "requests", window = "month", max = 10 },
]
"#;

/// The counter's units in `tenant`'s window called `limit`.
async fn used(stack: &Stack, tenant: &str, limit: &str) -> u64 {
    stack.counter.used(tenant, limit).await
}

/// Wait until Envoy holds `n` requests (with the counter hung: all of them paused in
/// the filter, waiting for their consumes).
async fn waiting_at_envoy(stack: &Stack, n: u64) {
    eventually(
        &format!("{n} requests waiting at Envoy"),
        Duration::from_secs(10),
        || async {
            let active = stack.envoy.stat("http.ingress.downstream_rq_active").await;
            (active == n).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_during_the_consume_is_refunded_and_not_billed() {
    // A callout timeout well past the pause below: the request is still waiting for
    // its consume when the client goes, however slowly this machine runs the test.
    let mut stack = Stack::builder(SMALL)
        .with_collector()
        .filter_patch(json!({ "counter": { "timeout_ms": 5000 } }))
        .start()
        .await;
    let token = stack.token("quitter");
    assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);
    assert_eq!(used(&stack, "quitter", "daily").await, 1);

    // The counter hangs: the consume waits; the client gives up and goes away.
    stack.counter.process().pause();
    let request = stack
        .request(reqwest::Method::GET, "/v1/things")
        .bearer_auth(&token);
    let client = tokio::spawn(async move { request.send().await.map(|r| r.status()) });
    eventually(
        "the request waiting at Envoy (or answered)",
        Duration::from_secs(10),
        || async {
            let active = stack.envoy.stat("http.ingress.downstream_rq_active").await;
            (active == 1 || client.is_finished()).then_some(())
        },
    )
    .await;
    if client.is_finished() {
        panic!("the request should still be waiting: {:?}", client.await);
    }
    client.abort();
    waiting_at_envoy(&stack, 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.counter.process().resume();

    eventually("the refund to land", Duration::from_secs(30), || async {
        (used(&stack, "quitter", "daily").await == 1).then_some(())
    })
    .await;
    let rows = eventually(
        "the abandoned request in the ledger",
        Duration::from_secs(30),
        || async {
            let (billable, rows) = ledger_ids(&stack, "quitter").await?;
            let cancelled = rows.iter().any(|r| r["decision"] == "cancelled");
            (cancelled && billable.len() == 1).then_some(rows)
        },
    )
    .await;
    let abandoned: Vec<&Value> = rows
        .iter()
        .filter(|r| r["decision"] == "cancelled")
        .collect();
    assert_eq!(abandoned.len(), 1, "{rows:#?}");
    assert_eq!(abandoned[0]["billable"], false);
    assert!(stack.envoy.filter_stat("cancelled").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_gone_while_their_consumes_wait_in_a_batch_are_refunded_and_not_billed() {
    // One consume call out at a time per worker: the first request calls alone, the
    // rest wait for it and then go together.
    let mut stack = Stack::builder(SMALL)
        .with_collector()
        .filter_patch(json!({ "counter": { "calls_in_flight": 1, "timeout_ms": 3000 } }))
        .start()
        .await;
    let token = stack.token("crowd");
    assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);
    assert_eq!(used(&stack, "crowd", "daily").await, 1);

    // The counter hangs. Each round: a first request calls alone, nine more wait
    // behind it, and every client gives up.
    stack.counter.process().pause();
    let send = |stack: &Stack| {
        let request = stack
            .http
            .get(stack.envoy.url("/v1/things"))
            .bearer_auth(&token);
        tokio::spawn(async move {
            let _ = request.send().await;
        })
    };
    // Each round, a first request calls alone and nine more wait behind it; then every
    // client goes away (an aborted request drops its connection). First round: the
    // nine go while still waiting (never sent). Second round: the first goes first,
    // which sends the nine in a batch, then they go.
    for first_goes_first in [false, true] {
        let first = send(&stack);
        waiting_at_envoy(&stack, 1).await;
        let crowd: Vec<_> = (0..9).map(|_| send(&stack)).collect();
        waiting_at_envoy(&stack, 10).await;
        if first_goes_first {
            let batches = stack.envoy.filter_stat("consume_batches").await;
            first.abort();
            eventually(
                "the nine to go in one batch",
                Duration::from_secs(10),
                || async {
                    (stack.envoy.filter_stat("consume_batches").await > batches).then_some(())
                },
            )
            .await;
            crowd.iter().for_each(tokio::task::JoinHandle::abort);
        } else {
            crowd.iter().for_each(tokio::task::JoinHandle::abort);
            waiting_at_envoy(&stack, 1).await;
            first.abort();
        }
        waiting_at_envoy(&stack, 0).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.counter.process().resume();

    // Nothing that was given up is billed or kept: only the first request's unit stays.
    eventually("the refunds to land", Duration::from_secs(30), || async {
        (used(&stack, "crowd", "daily").await == 1).then_some(())
    })
    .await;
    let rows = eventually(
        "the abandoned requests in the ledger",
        Duration::from_secs(30),
        || async {
            let (billable, rows) = ledger_ids(&stack, "crowd").await?;
            let cancelled = rows.iter().filter(|r| r["decision"] == "cancelled").count();
            (cancelled == 20 && billable.len() == 1).then_some(rows)
        },
    )
    .await;
    assert!(
        rows.iter()
            .filter(|r| r["decision"] == "cancelled")
            .all(|r| r["billable"] == false),
        "{rows:#?}"
    );
    assert_eq!(stack.envoy.filter_stat("cancelled").await, 20);
    assert!(
        stack.envoy.filter_stat("consume_batches").await >= 1,
        "the second crowd should have gone in a batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_a_5xx_waits_for_its_refund_is_not_billed() {
    // The refund of the 5xx waits for a counter that hangs; the client goes away during
    // that wait. The callout timeout is far longer than anything below takes, so on a
    // loaded machine the wait is still on when the client goes: each step waits for
    // what it needs to have happened, none for a fixed time. (With fixed times, a 6 s
    // upstream and a client giving up after 7 s, the test failed once in CI alongside
    // the binary's other tests; its output was not kept, and the 1 s margin is the
    // likely cause.)
    let mut stack = Stack::builder(SMALL)
        .with_collector()
        .filter_patch(json!({ "counter": { "timeout_ms": 30000 } }))
        .start()
        .await;
    let token = stack.token("impatient");
    assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);

    // The upstream answers 500 seconds after the request is admitted, so the counter
    // is paused well before that answer comes and asks it for the refund.
    let request = stack
        .request(reqwest::Method::GET, "/status/500?delay_ms=6000")
        .bearer_auth(&token)
        .send();
    let waiting = tokio::spawn(request);
    waiting_at_envoy(&stack, 1).await;
    // Admitted and on its way upstream: the filter has the counter's answer. (Waiting
    // for the counter's count instead, the test once paused the counter after Redis
    // had counted the consume but before its answer left, and the request never went
    // upstream: the upstream's 500 never came.)
    eventually(
        "the 5xx request to reach the upstream",
        Duration::from_secs(10),
        || async {
            let sent = stack.envoy.stat("cluster.upstream.upstream_rq_total").await;
            (sent == 2).then_some(())
        },
    )
    .await;
    assert_eq!(used(&stack, "impatient", "daily").await, 2);
    stack.counter.process().pause();
    eventually(
        "the upstream's 500 at Envoy",
        Duration::from_secs(30),
        || async {
            let answered = stack.envoy.stat("cluster.upstream.upstream_rq_5xx").await;
            (answered == 1).then_some(())
        },
    )
    .await;
    // The filter holds the 500 until the paused counter answers the refund.
    if waiting.is_finished() {
        let answer = waiting.await.expect("task").map(|r| r.status());
        panic!("the client has its answer before the refund was answered: {answer:?}");
    }
    // The client goes away.
    waiting.abort();
    assert!(waiting.await.is_err_and(|e| e.is_cancelled()));
    waiting_at_envoy(&stack, 0).await;
    stack.counter.process().resume();

    eventually("the refund to land", Duration::from_secs(30), || async {
        (used(&stack, "impatient", "daily").await == 1).then_some(())
    })
    .await;
    eventually(
        "one billable row, the 5xx not billed",
        Duration::from_secs(30),
        || async {
            let (billable, rows) = ledger_ids(&stack, "impatient").await?;
            let refunded = rows
                .iter()
                .any(|r| r["refunded"] == true && r["billable"] == false);
            (billable.len() == 1 && refunded && rows.len() == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_month_brings_the_month_back_from_the_ledger() {
    let mut stack = Stack::builder(SMALL).with_collector().start().await;
    let token = stack.token("thrifty");
    for i in 0..10 {
        assert_eq!(
            stack.get("/v1/things", Some(&token)).await.status,
            200,
            "request {i}"
        );
    }
    assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 429);
    eventually(
        "the month's usage in the ledger",
        Duration::from_secs(30),
        || async {
            let (billable, _) = ledger_ids(&stack, "thrifty").await?;
            (billable.len() == 10).then_some(())
        },
    )
    .await;

    // Redis dies and comes back with nothing: no counters, no records, no streams.
    stack.redis.stop();
    stack.redis.restart().await;
    assert_eq!(stack.redis.dbsize(), 0);
    stack.counter.wait_healthy().await;

    // No amnesty: the tenant at its monthly limit stays denied.
    let reply = stack.get("/v1/things", Some(&token)).await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(used(&stack, "thrifty", "monthly").await, 10);
    let metrics = stack.counter.metrics().await;
    assert_eq!(
        prometheus_sum(&metrics, "turnpike_counter_seeded_units_total"),
        20,
        "{metrics}"
    );
    // Another tenant starts from what the ledger holds for it: nothing.
    assert_eq!(
        stack
            .get("/v1/things", Some(&stack.token("newcomer")))
            .await
            .status,
        200
    );
}

/// The decision time of `id` in the counter's usage stream: its entry's `ts` (the
/// entry's id is when Redis appended it).
fn stream_time_ms(stack: &Stack, tenant: &str, id: &str) -> Option<i64> {
    let key = turnpike_plans::keys::TenantKeys::new(tenant).stream();
    let out = stack.redis.cli(&["XRANGE", &key, "-", "+"]);
    let lines: Vec<&str> = out.lines().collect();
    // --raw prints each entry as its id, then field, value, field, value...; ts comes
    // after the consume id (field i) in its entry, before the next entry's k.
    let at = lines.iter().position(|l| *l == id)?;
    let ts = lines[at..]
        .iter()
        .take_while(|l| **l != "k")
        .position(|l| *l == "ts")?;
    lines.get(at + ts + 1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_billed_at_the_counters_decision_time_not_when_the_exchange_ends() {
    // The proxy's events alone, so the billing time is the one the filter stamps. (A
    // request decided at 23:59:59.9 on a billing month's last day is then billed in
    // that month however long the upstream takes; the month a time falls in is unit
    // tested in the collector's and the counter's window math.)
    let stack = Stack::builder(SMALL)
        .with_collector()
        .collector_without_stream()
        .start()
        .await;
    let token = stack.token("owl");
    let reply = stack.get("/status/200?delay_ms=2000", Some(&token)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let rows = eventually(
        "the request in the ledger",
        Duration::from_secs(30),
        || async {
            let (_, rows) = ledger_ids(&stack, "owl").await?;
            (rows.len() == 1).then_some(rows)
        },
    )
    .await;
    let row = &rows[0];
    let id = row["id"].as_str().expect("id");
    let decided = stream_time_ms(&stack, "owl", id).expect("the consume in the usage stream");
    let billed = turnpike_collector_time_ms(row["time"].as_str().expect("time"));
    assert!(
        (billed - decided).abs() <= 1,
        "billed at {billed}, decided at {decided}: the 2 s of the upstream must not count"
    );
    assert!(row["duration_ms"].as_i64().unwrap_or(0) >= 2000, "{row}");
}

/// RFC 3339 (as the ledger lists times) to unix ms.
fn turnpike_collector_time_ms(text: &str) -> i64 {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_methods_over_h2c_cost_their_neighbours_nothing() {
    let stack = Stack::builder(BIG)
        .with_collector()
        .collector_without_stream()
        .filter_patch(json!({ "collector": { "flush_interval_ms": 100 } }))
        .start()
        .await;
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client");
    let (plain, odd) = (stack.token("plain"), stack.token("odd"));
    let x_foo = reqwest::Method::from_bytes(b"X-FOO").expect("method");
    for _ in 0..20 {
        let ok = h2c
            .get(stack.envoy.url("/v1/things"))
            .bearer_auth(&plain)
            .send()
            .await
            .expect("GET");
        assert_eq!(ok.status(), 200);
        let odd_reply = h2c
            .request(x_foo.clone(), stack.envoy.url("/v1/things"))
            .bearer_auth(&odd)
            .send()
            .await
            .expect("X-FOO");
        assert_eq!(odd_reply.status(), 200);
    }
    for (tenant, method) in [("plain", "GET"), ("odd", "OTHER")] {
        let rows = eventually(
            &format!("{tenant}'s 20 events"),
            Duration::from_secs(30),
            || async {
                let (billable, rows) = ledger_ids(&stack, tenant).await?;
                (billable.len() == 20).then_some(rows)
            },
        )
        .await;
        assert!(
            rows.iter().all(|r| r["method"] == method),
            "{tenant}: {rows:#?}"
        );
    }
    assert_eq!(stack.envoy.filter_stat("events_rejected").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_takes_small_batches_still_gets_every_event() {
    let stack = Stack::builder(BIG)
        .with_collector()
        .collector_without_stream()
        .collector_arg("--max-batch-events")
        .collector_arg("3")
        .filter_patch(json!({ "collector": { "flush_interval_ms": 500, "max_batch": 50 } }))
        .start()
        .await;
    let token = stack.token("batched");
    for _ in 0..40 {
        assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);
    }
    eventually("40 billable rows", Duration::from_secs(60), || async {
        let (billable, _) = ledger_ids(&stack, "batched").await?;
        (billable.len() == 40).then_some(())
    })
    .await;
    let metrics = stack.collector().metrics().await;
    let refused: BTreeMap<&str, u64> = metrics
        .lines()
        .filter_map(|l| {
            l.strip_prefix("turnpike_collector_requests_rejected_total{reason=\"batch_too_long\"} ")
        })
        .map(|v| ("batch_too_long", v.parse().unwrap_or(0)))
        .collect();
    assert!(
        refused.get("batch_too_long").copied().unwrap_or(0) >= 1,
        "the split was exercised: {metrics}"
    );
    assert_eq!(stack.envoy.filter_stat("events_rejected").await, 0);
}
