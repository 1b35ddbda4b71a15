//! Turnpike on a real Redis Cluster (six local `redis-server`s: three masters, three
//! replicas, `cluster-node-timeout` 1 s), with faults caused for real: a master
//! SIGKILLed under load (fail_closed and fail_open), one of three counters killed,
//! one of two collectors killed. Plus the layout's promise checked on the cluster:
//! every script of a consume runs on one slot, and a master that lost its scripts
//! gets them back with the next consume.
//!
//! The failover test prints what it measured (`--nocapture` shows it): the time from
//! the SIGKILL to the first consume that succeeds on the dead master's shard, and the
//! writes the dead master acknowledged without replicating them.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use turnpike_plans::keys::TenantKeys;
use turnpike_tests::counter::prometheus_sum;
use turnpike_tests::load::{Load, LoadReport};
use turnpike_tests::redis_cluster::{RedisCluster, NODE_TIMEOUT_MS};
use turnpike_tests::{avoid_window_end, eventually, problems, Reply, Stack, TokenSpec};
use turnpike_wire::{ConsumeRequest, ConsumeResponse, MeterCost};

/// The filter's counter timeout (the template's) and scheduling slack on a loaded
/// 2-core machine, as in failure.rs: a correctness bound, not a benchmark.
const FILTER_TIMEOUT: Duration = Duration::from_millis(250);
const SLACK: Duration = Duration::from_millis(750);
/// How long the counter may take to follow a failover, SIGKILL to first success. The
/// cluster alone needs about node timeout + election (2-4 s here); the rest is margin
/// for a loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

const MAX: u64 = 300;
const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "hourly", meter = "requests", window = "hour", max = 300 } ]
[plans.probe]
limits = [ { name = "hourly", meter = "requests", window = "hour", max = 100000000 } ]
"#;

/// Tenants named `<prefix>-<n>` whose keys live on the master on `port`.
fn tenants_on(cluster: &RedisCluster, port: u16, prefix: &str, count: usize) -> Vec<String> {
    let found: Vec<String> = (0..2000)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|t| cluster.master_of_key(&TenantKeys::new(t).stream()) == port)
        .take(count)
        .collect();
    assert_eq!(found.len(), count, "tenants on the master on {port}");
    found
}

/// The hash slot of `tenant`'s keys.
fn slot_of(cluster: &RedisCluster, tenant: &str) -> u16 {
    cluster.slot_of(&TenantKeys::new(tenant).stream())
}

/// Refunds the filter queued that no live counter has answered yet.
async fn refunds_outstanding(stack: &Stack) -> i64 {
    let queued = stack.envoy.filter_stat("refunds_queued").await;
    let mut answered = 0;
    for counter in std::iter::once(&stack.counter).chain(&stack.counter_replicas) {
        if let Some(text) = counter.metrics_if_running().await {
            answered += text
                .lines()
                .filter(|l| {
                    l.starts_with("turnpike_counter_refunds_total{")
                        && !l.contains("result=\"error\"")
                })
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    i64::try_from(queued).unwrap_or(i64::MAX) - i64::try_from(answered).unwrap_or(0)
}

/// Waits until the refunds the filter queued for failed-closed consumes have reached
/// a counter (they retry with backoff) and the counters stop moving; then `hourly`
/// used for each tenant. A killed counter's answers are gone with it: after 15 s
/// without change the usage counts as settled anyway.
async fn settled_usage(stack: &Stack, tenants: &[&str]) -> BTreeMap<String, u64> {
    let mut last = BTreeMap::new();
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut now = BTreeMap::new();
        for t in tenants {
            now.insert((*t).to_owned(), stack.counter.used(t, "hourly").await);
        }
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else {
            let stable = stable_since.elapsed();
            if (stable >= Duration::from_secs(2) && refunds_outstanding(stack).await <= 0)
                || stable >= Duration::from_secs(15)
            {
                return last;
            }
        }
        assert!(Instant::now() < deadline, "usage never settled: {last:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn admitted(report: &LoadReport) -> u64 {
    report.count(200)
}

/// One probe request a tick through Envoy, from the SIGKILL until the first answer
/// that the counter decided (it carries RateLimit headers); every answer before it.
async fn probe_until_decided(
    stack: &Stack,
    token: &str,
    killed: Instant,
) -> (Vec<Reply>, Duration) {
    let mut before = Vec::new();
    loop {
        let reply = stack.get("/v1/things", Some(token)).await;
        if reply.status == 200 && reply.header("ratelimit").is_some() {
            return (before, killed.elapsed());
        }
        assert!(
            killed.elapsed() < FAILOVER_BOUND,
            "no consume succeeded on the shard {FAILOVER_BOUND:?} after the kill; last: {reply:?}"
        );
        before.push(reply);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_under_load_fails_closed_fast_and_the_counter_follows_the_promoted_replica()
{
    let mut stack = Stack::builder(PLANS)
        .redis_cluster()
        .concurrency(2)
        .with_collector()
        .filter_patch(json!({ "collector": { "flush_interval_ms": 100 } }))
        .start()
        .await;
    avoid_window_end(3_600, 120).await;
    let cluster = stack.redis.cluster();
    let masters = cluster.master_ports();
    let doomed = masters[0];
    let victim = tenants_on(cluster, doomed, "victim", 1).remove(0);
    let probe = tenants_on(cluster, doomed, "probe", 1).remove(0);
    let bystanders: Vec<String> = masters[1..]
        .iter()
        .map(|&m| tenants_on(cluster, m, "bystander", 1).remove(0))
        .collect();
    let slot = slot_of(cluster, &victim);
    let probe_token = stack.mint(&TokenSpec::for_tenant(&probe).with_plan("probe"));
    assert_eq!(
        stack.get("/v1/things", Some(&probe_token)).await.status,
        200
    );

    const CLIENTS: usize = 4;
    let url = stack.envoy.url("/v1/things");
    let victim_load = Load::start(&url, &stack.token(&victim), CLIENTS);
    let bystander_loads: Vec<Load> = bystanders
        .iter()
        .map(|t| Load::start(&url, &stack.token(t), CLIENTS))
        .collect();
    // Kill the master while the victim tenant is a third into its quota: before the
    // kill, during the gap and after the failover all count towards one window.
    eventually(
        "a third of the victim's quota used",
        Duration::from_secs(60),
        || async { (stack.counter.used(&victim, "hourly").await >= MAX / 3).then_some(()) },
    )
    .await;
    let killed = Instant::now();
    stack.redis.cluster_mut().kill(doomed);
    let (gap, first_consume) = probe_until_decided(&stack, &probe_token, killed).await;
    let new_master = stack
        .redis
        .cluster()
        .wait_failover(doomed, slot, FAILOVER_BOUND)
        .await;
    eprintln!(
        "failover: SIGKILL of the master on :{doomed} -> first consume on its shard after {} ms \
         ({} fail_closed answers in between; cluster-node-timeout {NODE_TIMEOUT_MS} ms; \
         replica :{new_master} promoted)",
        first_consume.as_millis(),
        gap.len()
    );
    for reply in &gap {
        reply.assert_problem(503, problems::COUNTER_UNAVAILABLE);
        assert!(
            reply.elapsed < FILTER_TIMEOUT + SLACK,
            "a fail_closed answer took {:?}",
            reply.elapsed
        );
    }

    // Keep going until every tenant is refused: the quota is used up after the failover.
    let tenants: Vec<&str> = std::iter::once(victim.as_str())
        .chain(bystanders.iter().map(String::as_str))
        .collect();
    eventually(
        "every tenant at its limit",
        Duration::from_secs(90),
        || async {
            for t in &tenants {
                if stack.counter.used(t, "hourly").await < MAX {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let victim_report = victim_load.stop().await;
    let mut bystander_reports = Vec::new();
    for load in bystander_loads {
        bystander_reports.push(load.stop().await);
    }
    let used = settled_usage(&stack, &tenants).await;

    // The victim's shard lost whatever its master acknowledged but had not yet sent to
    // its replica: those admissions are in no counter. Nothing else is over-admitted.
    let lost = admitted(&victim_report).saturating_sub(used[&victim]);
    eprintln!(
        "over-admission: the victim tenant was admitted {} of {MAX} ({} writes acknowledged by \
         the dead master and not replicated); bystanders {:?}",
        admitted(&victim_report),
        lost,
        bystander_reports.iter().map(admitted).collect::<Vec<_>>()
    );
    assert!(
        used[&victim] <= admitted(&victim_report),
        "the counter holds more than was admitted: {used:?}"
    );
    assert!(
        lost <= CLIENTS as u64,
        "{lost} admissions lost with the master: more than the {CLIENTS} consumes in flight"
    );
    assert!(admitted(&victim_report) <= MAX + lost);
    for (t, report) in bystanders.iter().zip(&bystander_reports) {
        assert_eq!(
            admitted(report),
            used[t],
            "{t}: its shard did not fail, so every admission is counted, none twice"
        );
        assert!(
            admitted(report) <= MAX,
            "{t}: over-admitted {}",
            admitted(report)
        );
    }
    // The promoted replica never got a SCRIPT LOAD: it learnt the scripts from an EVAL.
    let evals = stack
        .redis
        .cluster()
        .node_cli(new_master, &["INFO", "commandstats"]);
    assert!(evals.contains("cmdstat_eval:"), "{evals}");

    // The ledger bills every admitted request of the victim, also those whose stream
    // entry died with the master: the proxy's usage events carry them.
    let billed = eventually(
        "the ledger to bill every admitted request of the victim",
        Duration::from_secs(120),
        || async {
            let ids = billable_ids(&stack, &victim).await?;
            victim_report.admitted.is_subset(&ids).then_some(ids)
        },
    )
    .await;
    assert_eq!(billed.len(), victim_report.admitted.len());
    stack.collector_mut().wait_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_hangs_is_failed_over_and_the_counter_follows_without_a_reset() {
    // SIGSTOP: the master's sockets stay open and answer nothing, as when its host
    // dies or its packets are dropped. No reset tells the counter's client anything:
    // calls time out until the counter relearns the topology by itself.
    let mut stack = Stack::builder(PLANS).redis_cluster().start().await;
    avoid_window_end(3_600, 60).await;
    let cluster = stack.redis.cluster();
    let frozen = cluster.master_ports()[0];
    let probe = tenants_on(cluster, frozen, "hung", 1).remove(0);
    let slot = slot_of(cluster, &probe);
    let token = stack.mint(&TokenSpec::for_tenant(&probe).with_plan("probe"));
    assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);

    let hung = Instant::now();
    stack.redis.cluster_mut().freeze(frozen);
    let (gap, first_consume) = probe_until_decided(&stack, &token, hung).await;
    let new_master = stack
        .redis
        .cluster()
        .wait_failover(frozen, slot, FAILOVER_BOUND)
        .await;
    eprintln!(
        "failover (master hung, SIGSTOP): first consume on its shard after {} ms ({} \
         fail_closed answers in between; replica :{new_master} promoted)",
        first_consume.as_millis(),
        gap.len()
    );
    for reply in &gap {
        reply.assert_problem(503, problems::COUNTER_UNAVAILABLE);
        assert!(
            reply.elapsed < FILTER_TIMEOUT + SLACK,
            "{:?}",
            reply.elapsed
        );
    }
    let health = stack.counter.get("/healthz").await;
    assert_eq!(health.status, 200, "{health:?}");
    stack.redis.cluster_mut().kill(frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_admits_during_a_failover_and_marks_exactly_those_requests_unverified() {
    let mut stack = Stack::builder(PLANS)
        .redis_cluster()
        .with_collector()
        .filter_patch(json!({
            "counter": { "failure_mode": "fail_open" },
            "collector": { "flush_interval_ms": 100 }
        }))
        .start()
        .await;
    avoid_window_end(3_600, 60).await;
    let cluster = stack.redis.cluster();
    let doomed = cluster.master_ports()[0];
    let probe = tenants_on(cluster, doomed, "open", 1).remove(0);
    let slot = slot_of(cluster, &probe);
    let token = stack.token(&probe);
    for _ in 0..5 {
        assert_eq!(stack.get("/v1/things", Some(&token)).await.status, 200);
    }

    let killed = Instant::now();
    stack.redis.cluster_mut().kill(doomed);
    let (gap, first_consume) = probe_until_decided(&stack, &token, killed).await;
    stack
        .redis
        .cluster()
        .wait_failover(doomed, slot, FAILOVER_BOUND)
        .await;
    eprintln!(
        "failover (fail_open): first consume on the shard {} ms after the SIGKILL; {} requests \
         passed unverified in between",
        first_consume.as_millis(),
        gap.len()
    );
    assert!(
        !gap.is_empty(),
        "the gap let nothing through: was the master killed?"
    );
    for reply in &gap {
        assert_eq!(
            reply.status, 200,
            "fail_open lets requests through: {reply:?}"
        );
        assert_eq!(
            reply.header("ratelimit"),
            None,
            "an unverified request has no quota"
        );
    }
    assert!(stack.envoy.filter_stat("fail_open_passes").await >= gap.len() as u64);
    for _ in 0..5 {
        let reply = stack.get("/v1/things", Some(&token)).await;
        assert!(
            reply.header("ratelimit").is_some(),
            "metered again: {reply:?}"
        );
    }

    // The ledger bills the gap's requests, marked unverified, and only those.
    let gap_ids: HashSet<String> = gap
        .iter()
        .filter_map(|r| r.echo().header("turnpike-consume-id").map(str::to_owned))
        .collect();
    assert_eq!(gap_ids.len(), gap.len());
    let rows = eventually(
        "the gap's requests in the ledger",
        Duration::from_secs(60),
        || async {
            let rows = ledger_rows(&stack, &probe).await?;
            (rows.len() == 5 + gap.len() + 6).then_some(rows)
        },
    )
    .await;
    let unverified: HashSet<String> = rows
        .iter()
        .filter(|r| r["decision"] == "unverified")
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(unverified, gap_ids);
    stack.collector_mut().wait_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_counters_with_one_killed_mid_traffic_admit_exactly_what_they_count() {
    let mut stack = Stack::builder(PLANS)
        .redis_cluster()
        .counter_replicas(3)
        .concurrency(2)
        .start()
        .await;
    avoid_window_end(3_600, 120).await;
    let tenant = "shared";
    let load = Load::start(&stack.envoy.url("/v1/things"), &stack.token(tenant), 16);
    let replicas = &stack.counter_replicas;
    eventually(
        "every counter to serve consumes",
        Duration::from_secs(60),
        || async {
            let first = stack.counter.consumes_total().await;
            let (a, b) = (
                replicas[0].consumes_total().await,
                replicas[1].consumes_total().await,
            );
            (first > 5 && a > 5 && b > 5 && stack.counter.used(tenant, "hourly").await >= 60)
                .then_some(())
        },
    )
    .await;
    stack.counter_replicas[0].kill();
    eventually(
        "the tenant at its limit",
        Duration::from_secs(90),
        || async { (stack.counter.used(tenant, "hourly").await >= MAX).then_some(()) },
    )
    .await;
    let report = load.stop().await;
    let used = settled_usage(&stack, &[tenant]).await;
    eprintln!("three counters, one killed: {:?}", report.statuses);
    assert_eq!(
        admitted(&report),
        used[tenant],
        "every 200 is counted once; every consume the killed counter left unanswered was refunded"
    );
    assert!(
        admitted(&report) <= MAX,
        "over-admitted: {:?}",
        report.statuses
    );
    assert!(
        report.count(503) > 0,
        "the killed counter's share failed closed: {:?}",
        report.statuses
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_collectors_share_the_cluster_streams_and_bill_every_admission_once_across_a_crash() {
    const BIG: &str = r#"
default_plan = "big"
[plans.big]
limits = [ { name = "hourly", meter = "requests", window = "hour", max = 100000000 } ]
"#;
    let mut stack = Stack::builder(BIG)
        .redis_cluster()
        .collector_postgres()
        .collector_replicas(2)
        // No usage events from the proxy: the ledger is the counter's usage streams.
        .filter_patch(json!({ "collector": null }))
        .start()
        .await;
    let cluster = stack.redis.cluster();
    let tenants: Vec<String> = cluster
        .master_ports()
        .into_iter()
        .flat_map(|m| tenants_on(cluster, m, "streamed", 2))
        .collect();
    let url = stack.envoy.url("/v1/things");
    let loads: Vec<Load> = tenants
        .iter()
        .map(|t| Load::start(&url, &stack.token(t), 2))
        .collect();
    let collectors = &stack.collectors;
    eventually(
        "both collectors to commit stream entries",
        Duration::from_secs(60),
        || async {
            let a = stream_entries(&collectors[0]).await;
            let b = stream_entries(&collectors[1]).await;
            (a > 0 && b > 0).then_some(())
        },
    )
    .await;
    stack.collectors[1].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Same consumer name: it reads what it had been delivered and not acknowledged.
    stack.collectors[1].restart().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut reports = Vec::new();
    for load in loads {
        reports.push(load.stop().await);
    }
    for (tenant, report) in tenants.iter().zip(&reports) {
        assert!(
            admitted(report) > 10,
            "{tenant}: too little load {report:?}"
        );
        eventually(
            &format!("{tenant}'s admitted requests in the ledger"),
            Duration::from_secs(120),
            || async {
                let ids = billable_ids(&stack, tenant).await?;
                (ids == report.admitted).then_some(())
            },
        )
        .await;
        // Straight from PostgreSQL: no id twice. (Rows beyond the billable ones are
        // consumes whose answer came too late: failed closed and refunded.)
        let rows = stack.ledger_sql(&format!(
            "SELECT count(*) - count(DISTINCT id) FROM usage_events WHERE tenant = '{tenant}'"
        ));
        assert_eq!(rows.trim(), "0", "{tenant}: ids stored more than once");
    }
}

const MANY: &str = r#"
default_plan = "many"
[plans.many]
limits = [
  { name = "per-minute", meter = "requests", window = "minute", max = 1000 },
  { name = "hourly", meter = "requests", window = "hour", max = 10000 },
  { name = "daily-units", meter = "units", window = "day", max = 100000 },
  { name = "monthly", meter = "requests", window = "month", max = 1000000 },
]
"#;

fn consume(tenant: &str, id: &str) -> ConsumeRequest {
    ConsumeRequest {
        id: id.into(),
        tenant: tenant.into(),
        plan: None,
        meters: vec![
            MeterCost {
                meter: "requests".into(),
                cost: 1,
            },
            MeterCost {
                meter: "units".into(),
                cost: 7,
            },
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_scripts_run_on_the_cluster_each_on_one_slot_and_survive_a_script_flush() {
    // With a ledger, the first consume of each tenant runs the seed script too.
    let stack = Stack::builder(MANY)
        .redis_cluster()
        .with_collector()
        .start()
        .await;
    avoid_window_end(60, 10).await;
    let cluster = stack.redis.cluster();
    let masters = cluster.master_ports();
    let tenants: Vec<String> = masters
        .iter()
        .flat_map(|&m| tenants_on(cluster, m, "slotted", 3))
        .collect();

    for tenant in &tenants {
        for id in ["a", "b", "c"] {
            let reply = stack.counter.consume(&consume(tenant, id)).await;
            assert_eq!(reply.status, 200, "{tenant}/{id}: {reply:?}");
        }
        // A replay, a refund, a refund before its consume, that consume refused.
        let replay: ConsumeResponse =
            serde_json::from_str(&stack.counter.consume(&consume(tenant, "a")).await.body)
                .expect("consume answer");
        assert!(replay.replayed);
        for id in ["b", "early"] {
            let refund = stack
                .counter
                .post(
                    turnpike_wire::counter_paths::REFUND,
                    &json!({ "id": id, "tenant": tenant }),
                )
                .await;
            assert_eq!(refund.status, 200, "{tenant}: {refund:?}");
        }
        let late: ConsumeResponse =
            serde_json::from_str(&stack.counter.consume(&consume(tenant, "early")).await.body)
                .expect("consume answer");
        assert!(!late.allowed, "a consume after its refund is refused");
        // Read back from the shard that holds the tenant.
        assert_eq!(stack.counter.used(tenant, "hourly").await, 2);
        assert_eq!(stack.counter.used(tenant, "daily-units").await, 14);
    }

    // Each tenant's keys (windows, records, seed marker, stream, epoch) share one slot,
    // and live on one master.
    let mut slots_used = HashSet::new();
    for tenant in &tenants {
        let tag = format!("tp:{{{:03}}}:", turnpike_plans::keys::bucket(tenant));
        let keys = cluster.keys(&format!("{tag}*"));
        assert!(keys.len() >= 8, "{tenant}: {keys:?}");
        let slots: HashSet<u16> = keys.iter().map(|k| cluster.slot_of(k)).collect();
        assert_eq!(slots.len(), 1, "{tenant}: keys over slots {slots:?}");
        let owner = cluster.master_of_key(&keys[0]);
        for port in &masters {
            let here = cluster.node_cli(*port, &["--scan", "--pattern", &format!("{tag}*")]);
            assert_eq!(
                !here.trim().is_empty(),
                *port == owner,
                "{tenant} on :{port}"
            );
        }
        slots_used.extend(slots);
    }
    assert_eq!(slots_used.len(), tenants.len());

    // Every master forgets its scripts: the next consume on each shard still works.
    for port in &masters {
        assert_eq!(cluster.node_cli(*port, &["SCRIPT", "FLUSH"]).trim(), "OK");
        assert_eq!(
            cluster.node_cli(*port, &["CONFIG", "RESETSTAT"]).trim(),
            "OK"
        );
    }
    for tenant in &tenants {
        let reply = stack.counter.consume(&consume(tenant, "after-flush")).await;
        assert_eq!(reply.status, 200, "{tenant}: {reply:?}");
    }
    for port in &masters {
        let stats = cluster.node_cli(*port, &["INFO", "commandstats"]);
        assert!(
            stats.contains("cmdstat_eval:"),
            "master :{port} got its scripts back by EVAL: {stats}"
        );
    }

    let health = stack.counter.get("/healthz").await.json();
    assert_eq!(health["redis"]["mode"], "cluster", "{health}");
    assert_eq!(health["redis"]["cluster_state"], "ok", "{health}");
    assert_eq!(health["redis"]["cluster_size"], 3, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_the_cluster_down_while_a_shard_has_no_master() {
    let mut stack = Stack::builder(PLANS)
        .redis_cluster()
        .counter_arg("--redis-timeout-ms")
        .counter_arg("250")
        .start()
        .await;
    let cluster = stack.redis.cluster_mut();
    let doomed = cluster.master_ports()[0];
    let replica = cluster.replica_of(doomed);
    // Without its replica, the dead master's slots have nobody: the cluster is down.
    cluster.kill(replica);
    cluster.kill(doomed);
    let health = eventually(
        "the counter's /healthz to report the cluster down",
        Duration::from_secs(30),
        || async {
            // A check that asked the dead master itself says it timed out; one that
            // reached a live node says what the cluster thinks.
            let reply = stack.counter.get("/healthz").await;
            let says_fail = reply.json()["detail"]
                .as_str()
                .is_some_and(|d| d.contains("cluster_state:fail"));
            (reply.status == 503 && says_fail).then_some(reply)
        },
    )
    .await;
    let detail = health.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("cluster_state:fail"), "{detail}");
    let reply = stack.get("/v1/things", Some(&stack.token("anyone"))).await;
    reply.assert_problem(503, problems::COUNTER_UNAVAILABLE);
    assert!(
        reply.elapsed < FILTER_TIMEOUT + SLACK,
        "{:?}",
        reply.elapsed
    );
}

/// Billable ids of `tenant` in the (first) collector's ledger, all pages.
async fn billable_ids(stack: &Stack, tenant: &str) -> Option<HashSet<String>> {
    let rows = ledger_rows(stack, tenant).await?;
    Some(
        rows.iter()
            .filter(|r| r["billable"] == true)
            .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
            .collect(),
    )
}

/// The ledger's rows of `tenant`, each in its latest state.
async fn ledger_rows(stack: &Stack, tenant: &str) -> Option<Vec<Value>> {
    stack.collector().latest_events(tenant).await
}

async fn stream_entries(collector: &turnpike_tests::collector::Collector) -> u64 {
    prometheus_sum(
        &collector.metrics().await,
        "turnpike_collector_stream_entries_total",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_left_by_dead_proxies_come_back_from_every_shard() {
    let stack = Stack::builder(PLANS)
        .redis_cluster()
        .counter_arg("--lease-max-secs")
        .counter_arg("2")
        .start()
        .await;
    avoid_window_end(3_600, 30).await;
    let cluster = stack.redis.cluster();
    // One tenant per master: the sweeper lists every bucket's lease index, one slot
    // each, so it must reach all three masters.
    let tenants: Vec<String> = cluster
        .master_ports()
        .into_iter()
        .map(|m| tenants_on(cluster, m, "leasing", 1).remove(0))
        .collect();
    for tenant in &tenants {
        let answer = stack
            .counter
            .post(
                turnpike_wire::counter_paths::LEASE,
                &json!({
                    "tenant": tenant,
                    "meters": [{ "meter": "requests", "cost": 1 }],
                    "want": 20,
                }),
            )
            .await;
        assert_eq!(answer.status, 200, "{tenant}: {answer:?}");
        assert_eq!(answer.json()["granted"], 20, "{tenant}: {answer:?}");
        assert_eq!(stack.counter.used(tenant, "hourly").await, 20);
    }
    // Their proxies died: nothing reported, nothing closed.
    for tenant in &tenants {
        eventually(
            &format!("{tenant}'s expired lease to be swept"),
            Duration::from_secs(20),
            || async { (stack.counter.used(tenant, "hourly").await == 0).then_some(()) },
        )
        .await;
    }
    let metrics = stack.counter.metrics().await;
    assert!(
        metrics.contains("turnpike_counter_leases_closed_total{by=\"expiry\"} 3"),
        "{metrics}"
    );
}
