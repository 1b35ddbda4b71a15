//! Trust boundaries and the record of usage, against a real Redis: credentials, Redis's
//! password, one clock for replicas that disagree, refunds that overtake their
//! consume, the usage stream, denial floods, requests that can never fit.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{tenant_keys, Api, Counter, Redis, READ_TOKEN};
use serde_json::{json, Value};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [
  { name = "daily", meter = "requests", window = "day", max = 5 },
  { name = "monthly", meter = "requests", window = "month", max = 100 },
]
[plans.burst]
limits = [ { name = "per-second", meter = "requests", window = "second", max = 5 } ]
[tenants.skewed]
plan = "burst"
"#;

#[tokio::test]
async fn unauthenticated_consume_refund_and_reads_are_refused_with_401_problem() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let http = reqwest::Client::new();
    let consume =
        json!({"id": "c1", "tenant": "acme", "meters": [{"meter": "requests", "cost": 1}]});
    let refund = json!({"id": "c1", "tenant": "acme"});
    for (method, path, body, token) in [
        ("POST", "/v1/consume", Some(&consume), None),
        (
            "POST",
            "/v1/consume",
            Some(&consume),
            Some("wrong-token-0123456789"),
        ),
        // A read token does not let anyone spend quota.
        ("POST", "/v1/consume", Some(&consume), Some(READ_TOKEN)),
        ("POST", "/v1/refund", Some(&refund), None),
        ("GET", "/v1/tenants/acme/usage", None, None),
        (
            "GET",
            "/v1/tenants/acme/usage",
            None,
            Some("wrong-token-0123456789"),
        ),
    ] {
        let mut request = http.request(method.parse().unwrap(), counter.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 401, "{method} {path} with {token:?}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(
            problem["type"],
            "https://turnpike.dev/problems/unauthorized"
        );
    }
    assert!(
        redis.keys(&tenant_keys("acme", "*")).is_empty(),
        "nothing was consumed"
    );
    // Health and metrics stay open for probes and scrapers.
    for path in ["/healthz", "/metrics"] {
        let response = http.get(counter.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 200, "{path}");
    }
    // With the right tokens, the same calls work.
    let api = Api::new(&counter);
    assert_eq!(api.consume("c1", "acme", &[("requests", 1)]).await.0, 200);
    assert_eq!(api.get("/v1/tenants/acme/usage").await.0, 200);
}

#[test]
fn the_counter_refuses_to_start_without_credentials() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("dir");
    let plans = dir.path().join("plans.toml");
    std::fs::write(&plans, PLANS).expect("plans");
    let out = Command::new(env!("CARGO_BIN_EXE_turnpike-counter"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis",
            &redis.url(),
            "--plans",
        ])
        .arg(&plans)
        .env_remove("TURNPIKE_SERVICE_TOKEN")
        .env_remove("TURNPIKE_READ_TOKEN")
        .stdout(Stdio::null())
        .output()
        .expect("run the counter");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TURNPIKE_SERVICE_TOKEN") && stderr.contains("--allow-unauthenticated"),
        "{stderr}"
    );
    // A token too short to be a secret is refused too, naming where it came from.
    let out = Command::new(env!("CARGO_BIN_EXE_turnpike-counter"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis",
            &redis.url(),
            "--plans",
        ])
        .arg(&plans)
        .env("TURNPIKE_SERVICE_TOKEN", "short")
        .env("TURNPIKE_READ_TOKEN", READ_TOKEN)
        .output()
        .expect("run the counter");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shorter than 16"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_redis_password_is_required_and_used() {
    let redis = Redis::start_with(&["--requirepass", "redis-secret-0123456789"]);
    let without = Counter::start_with(&redis, PLANS, &["--redis-timeout-ms", "500"]);
    let api = Api::new(&without);
    let (status, problem) = api.consume("c1", "acme", &[("requests", 1)]).await;
    assert_eq!(status, 503, "{problem}");
    assert!(
        without
            .log()
            .contains("Redis wants a password: set TURNPIKE_REDIS_PASSWORD"),
        "the log should say why and what to do: {}",
        without.log()
    );
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("redis-password");
    std::fs::write(&secret, "redis-secret-0123456789\n").expect("write");
    let plans = dir.path().join("plans.toml");
    std::fs::write(&plans, PLANS).expect("plans");
    let with = Counter::start_on(
        &redis,
        dir,
        plans,
        &["--redis-password-file", secret.to_str().unwrap()],
    );
    let (status, answer) = Api::new(&with)
        .consume("c1", "acme", &[("requests", 1)])
        .await;
    assert_eq!(
        (status, answer["allowed"].clone()),
        (200, json!(true)),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_with_skewed_clocks_never_over_admit_a_window() {
    let redis = Redis::start();
    // One replica 0.4 s ahead, one 15 s behind: by their own clocks they would count in
    // different per-second windows, and the slow one would set expiries in the past.
    // Generous Redis bounds: 16 workers on a loaded CI machine once waited past the
    // default 100 ms for Redis (a 503), which says nothing about the clocks.
    let bounds = ["--budget-ms", "5000", "--redis-timeout-ms", "4000"];
    let ahead = Counter::start_with(
        &redis,
        PLANS,
        &[&["--clock-skew-ms", "400"][..], &bounds].concat(),
    );
    let behind = Counter::start_with(
        &redis,
        PLANS,
        &[&["--clock-skew-ms", "-15000"][..], &bounds].concat(),
    );
    let apis = [Api::h2c(&ahead), Api::h2c(&behind)];
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let api = apis[worker % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut allowed_at = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let (status, answer) = api
                    .consume(&format!("w{worker}-{n}"), "skewed", &[("requests", 1)])
                    .await;
                assert_eq!(status, 200, "{answer}");
                if answer["allowed"] == true {
                    allowed_at.push(answer["time_ms"].as_u64().expect("time_ms") / 1000);
                }
            }
            allowed_at
        }));
    }
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    for task in tasks {
        for second in task.await.expect("worker") {
            *per_second.entry(second).or_default() += 1;
        }
    }
    assert!(per_second.len() >= 2, "{per_second:?}");
    for (second, admitted) in &per_second {
        assert!(
            *admitted <= 5,
            "{admitted} admitted in second {second}: {per_second:?}"
        );
    }
    // Full seconds were used up: the limit was reached, not just never approached.
    assert!(per_second.values().any(|n| *n == 5), "{per_second:?}");
    // Every per-second counter lives on Redis's clock: none was written already expired.
    for key in redis.keys(&tenant_keys("skewed", "q:*")) {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query(&mut redis.conn())
            .expect("TTL");
        assert!(ttl > 0 || ttl == -2, "{key} has TTL {ttl}");
    }
}

#[tokio::test]
async fn admitted_consumes_and_refunds_are_appended_to_the_usage_stream() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    let mut times = Vec::new();
    for id in ["s1", "s2", "s3"] {
        let (_, answer) = api
            .consume(id, "acme", &[("requests", 1), ("extras", 2)])
            .await;
        assert_eq!(answer["allowed"], true, "{answer}");
        times.push(answer["time_ms"].as_u64().expect("time_ms"));
    }
    let (_, refund) = api.refund("s2", "acme").await;
    assert_eq!(refund["refunded"], true);
    // Denied consumes leave no trace.
    api.consume("d1", "acme", &[("requests", 50)]).await;

    let entries = redis.stream_entries("acme");
    let kinds: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["k"].as_str(), e["i"].as_str()))
        .collect();
    assert_eq!(kinds, [("a", "s1"), ("a", "s2"), ("a", "s3"), ("r", "s2")]);
    let first = &entries[0];
    assert_eq!(first["p"], "free");
    // Every meter of the request, also one no limit counts: the ledger bills it.
    assert_eq!(first["m"], "requests=1,extras=2");
    // The entry's id is Redis's clock at the decision (XADD reads it a moment after
    // the script's TIME: the same millisecond or the next).
    let ms: u64 = first["stream_id"]
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        ms.abs_diff(times[0]) <= 2,
        "stream id {ms}, decision {}",
        times[0]
    );
}

#[tokio::test]
async fn a_refund_that_overtakes_its_consume_cancels_it() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    let (status, refund) = api.refund("late", "acme").await;
    assert_eq!(status, 200);
    assert_eq!(
        (refund["refunded"].clone(), refund["cancelled"].clone()),
        (json!(false), json!(true))
    );
    let (_, answer) = api.consume("late", "acme", &[("requests", 1)]).await;
    assert_eq!(answer["allowed"], false, "{answer}");
    assert_eq!(answer["retry_after"], Value::Null, "{answer}");
    assert!(
        redis.keys(&tenant_keys("acme", "q:*")).is_empty(),
        "nothing was counted"
    );
    let kinds: Vec<String> = redis
        .stream_entries("acme")
        .iter()
        .map(|e| e["k"].clone())
        .collect();
    assert_eq!(kinds, ["c"]);
    // A second refund changes nothing.
    let (_, again) = api.refund("late", "acme").await;
    assert_eq!(
        (again["refunded"].clone(), again["cancelled"].clone()),
        (json!(false), json!(false))
    );
}

#[tokio::test]
async fn a_request_that_can_never_fit_is_told_so_without_retry_after() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    let (status, answer) = api.consume("big", "acme", &[("requests", 6)]).await;
    assert_eq!(status, 200);
    assert_eq!(answer["allowed"], false);
    assert_eq!(answer["exceeds_limit"], "daily");
    assert_eq!(answer["retry_after"], Value::Null);
    assert!(
        redis.keys(&tenant_keys("acme", "*")).is_empty(),
        "nothing touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_denied_consumes_leaves_redis_memory_flat() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::h2c(&counter);
    for i in 0..5 {
        api.consume(&format!("fill{i}"), "acme", &[("requests", 1)])
            .await;
    }
    let used_memory = || -> i64 {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query(&mut redis.conn())
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    };
    let dbsize = || -> i64 {
        redis::cmd("DBSIZE")
            .query(&mut redis.conn())
            .expect("DBSIZE")
    };
    let (keys_before, memory_before) = (dbsize(), used_memory());
    let mut tasks = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                let (_, answer) = api
                    .consume(&format!("flood{w}-{i}"), "acme", &[("requests", 1)])
                    .await;
                assert_eq!(answer["allowed"], false);
            }
        }));
    }
    for t in tasks {
        t.await.expect("flood");
    }
    assert_eq!(dbsize(), keys_before, "4000 denials wrote keys");
    let grown = used_memory() - memory_before;
    // Allocator noise and client buffers only: 4000 records of ~200 B would be 800 KB.
    assert!(
        grown < 64 * 1024,
        "Redis grew by {grown} B for 4000 denials"
    );
}

#[tokio::test]
async fn a_lost_month_needs_the_ledger_and_a_new_month_only_tries_it() {
    const MONTHLY: &str = r#"
default_plan = "m"
[plans.m]
limits = [ { name = "monthly", meter = "requests", window = "month", max = 100 } ]
"#;
    let redis = Redis::start();
    // A ledger that never answers: nothing listens there.
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let counter = Counter::start_with(&redis, MONTHLY, &["--ledger-url", &dead]);
    let api = Api::new(&counter);
    // A fresh Redis may have lost this month's usage: without the ledger, refuse.
    let (status, problem) = api.consume("c1", "acme", &[("requests", 1)]).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(
        problem["type"],
        "https://turnpike.dev/problems/ledger-unavailable"
    );
    // Redis has held this bucket since before the month began (its epoch says so):
    // the tenant's first request of the month goes ahead without the ledger.
    let epoch = turnpike_counter::keys::TenantKeys::new("acme").epoch();
    let _: () = redis::cmd("SET")
        .arg(&epoch)
        .arg(1_000_000_000)
        .query(&mut redis.conn())
        .expect("SET");
    let (status, answer) = api.consume("c2", "acme", &[("requests", 1)]).await;
    assert_eq!(
        (status, answer["allowed"].clone()),
        (200, json!(true)),
        "{answer}"
    );
    let (_, _, metrics) = api.get("/metrics").await;
    assert!(
        metrics.contains("turnpike_counter_seeds_skipped_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("turnpike_counter_seed_errors_total 1"),
        "{metrics}"
    );
}
