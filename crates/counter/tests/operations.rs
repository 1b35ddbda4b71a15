//! Operations: Redis failures, plans reloads, `--validate`, health and metrics.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, validate, validate_path, Api, Counter, Redis};
use serde_json::Value;

fn plans_with_daily_max(max: u64) -> String {
    format!(
        r#"
default_plan = "free"
[plans.free]
limits = [ {{ name = "daily", meter = "requests", window = "day", max = {max} }} ]
"#
    )
}

/// Consume one unit under a fresh id; true when allowed.
async fn allowed(api: &Api, id: &str) -> bool {
    let (status, answer) = api.consume(id, "acme", &[("requests", 1)]).await;
    assert_eq!(status, 200, "{answer}");
    answer["allowed"] == true
}

async fn daily_max(api: &Api) -> u64 {
    let (_, _, body) = api.get("/v1/tenants/acme/usage").await;
    let usage: Value = serde_json::from_str(&body).unwrap();
    usage["limits"][0]["max"].as_u64().unwrap()
}

#[tokio::test]
async fn a_batch_while_redis_is_down_fails_each_item_fast_and_counts_each_once_after() {
    // Consume and settle batches alike.
    let mut redis = Redis::start();
    let counter = Counter::start(&redis, &plans_with_daily_max(100));
    let api = Api::new(&counter);
    assert!(allowed(&api, "before").await);
    // Six consumes of one tenant (one script) and one of another (alone).
    let batch = |tag: &str| {
        let mut items: Vec<Value> = (0..6)
            .map(|i| {
                serde_json::json!({"id": format!("{tag}{i}"), "tenant": "acme",
                "meters": [{"meter": "requests", "cost": 1}]})
            })
            .collect();
        items.push(
            serde_json::json!({"id": format!("{tag}x"), "tenant": "other",
            "meters": [{"meter": "requests", "cost": 1}]}),
        );
        Value::Array(items)
    };

    redis.stop();
    let started = Instant::now();
    let (status, answer) = api.post("/v1/consume/batch", batch("b")).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "{answer}");
    for item in answer.as_array().unwrap() {
        assert_eq!(item["status"], 503, "{answer}");
        assert_eq!(
            item["problem"]["type"], "https://turnpike.dev/problems/store-unavailable",
            "{answer}"
        );
    }

    // A settle batch too: the tenant's records are read in one call, which fails.
    let settles: Vec<Value> = ["before", "b0", "b1"]
        .iter()
        .map(|id| {
            serde_json::json!({"id": id, "tenant": "acme",
            "meters": [{"meter": "requests", "cost": 1}]})
        })
        .collect();
    let (status, answer) = api.post("/v1/settle/batch", Value::Array(settles)).await;
    assert_eq!(status, 200, "{answer}");
    for item in answer.as_array().unwrap() {
        assert_eq!(item["status"], 503, "{answer}");
    }

    redis.restart();
    // The same batch again (the proxy's retry): each consume counts once, even if
    // sent twice more.
    eventually(
        "the batch after redis restart",
        Duration::from_secs(10),
        || async {
            let (_, answer) = api.post("/v1/consume/batch", batch("b")).await;
            answer
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["status"] == 200)
        },
    )
    .await;
    let (_, again) = api.post("/v1/consume/batch", batch("b")).await;
    for item in again.as_array().unwrap() {
        assert_eq!(item["answer"]["replayed"], true, "{again}");
    }
    // This Redis keeps nothing across its restart (and there is no ledger): only the
    // batch's six count.
    assert_eq!(daily_used(&api, "acme").await, 6);
    assert_eq!(daily_used(&api, "other").await, 1);
}

async fn daily_used(api: &Api, tenant: &str) -> u64 {
    let (_, _, body) = api.get(&format!("/v1/tenants/{tenant}/usage")).await;
    let usage: Value = serde_json::from_str(&body).unwrap();
    usage["limits"][0]["used"]
        .as_u64()
        .unwrap_or_else(|| panic!("{usage}"))
}

#[tokio::test]
async fn redis_down_gives_a_fast_503_and_the_counter_recovers_after_restart() {
    let mut redis = Redis::start();
    let counter = Counter::start(&redis, &plans_with_daily_max(100));
    let api = Api::new(&counter);
    assert!(allowed(&api, "before").await);

    redis.stop();
    for i in 0..5 {
        let started = Instant::now();
        let ((status, problem), content_type) = api
            .post_raw(
                "/v1/consume",
                format!(r#"{{"id":"down{i}","tenant":"acme","meters":[{{"meter":"requests","cost":1}}]}}"#),
            )
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(status, 503, "{problem}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(
            problem["type"],
            "https://turnpike.dev/problems/store-unavailable"
        );
    }
    let (status, content_type, _) = api.get("/healthz").await;
    assert_eq!(
        (status, content_type.as_str()),
        (503, "application/problem+json")
    );

    redis.restart();
    // The restarted Redis has no scripts loaded and no counters: both must just work.
    eventually(
        "consume after redis restart",
        Duration::from_secs(10),
        || async {
            let (status, _) = api
                .consume(
                    &format!("after{}", common::unix_now()),
                    "acme",
                    &[("requests", 1)],
                )
                .await;
            status == 200
        },
    )
    .await;
    let (status, _, body) = api.get("/healthz").await;
    let health: serde_json::Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(
        (status, health["status"].as_str()),
        (200, Some("ok")),
        "{body}"
    );
    assert!(
        api.metric("turnpike_counter_consumes_total{result=\"error\"}")
            .await
            >= 5
    );
}

#[tokio::test]
async fn a_hung_redis_gives_503_within_the_timeout() {
    let redis = Redis::start();
    let counter = Counter::start_with(
        &redis,
        &plans_with_daily_max(100),
        &["--redis-timeout-ms", "200"],
    );
    let api = Api::new(&counter);
    assert!(allowed(&api, "before").await);

    redis.signal(libc::SIGSTOP);
    let started = Instant::now();
    let (status, problem) = api.consume("hung", "acme", &[("requests", 1)]).await;
    let elapsed = started.elapsed();
    redis.signal(libc::SIGCONT);
    assert_eq!(status, 503, "{problem}");
    assert!(elapsed < Duration::from_millis(600), "took {elapsed:?}");

    eventually(
        "consume after redis resumes",
        Duration::from_secs(10),
        || async {
            let (status, _) = api
                .consume(
                    &format!("resumed{}", common::unix_now()),
                    "acme",
                    &[("requests", 1)],
                )
                .await;
            status == 200
        },
    )
    .await;
}

#[tokio::test]
async fn the_counter_starts_without_redis_and_serves_once_it_appears() {
    let mut redis = Redis::start();
    redis.stop();
    let counter = Counter::start(&redis, &plans_with_daily_max(100));
    let api = Api::new(&counter);
    let (status, _, _) = api.get("/healthz").await;
    assert_eq!(status, 503);
    redis.restart();
    eventually(
        "healthz after redis starts",
        Duration::from_secs(10),
        || async { api.get("/healthz").await.0 == 200 },
    )
    .await;
    assert!(allowed(&api, "first").await);
}

#[tokio::test]
async fn plans_reload_when_the_file_changes() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, &plans_with_daily_max(2));
    let api = Api::new(&counter);
    assert!(allowed(&api, "a").await && allowed(&api, "b").await);
    assert!(!allowed(&api, "c").await);

    counter.write_plans(&plans_with_daily_max(10));
    eventually("new max", Duration::from_secs(5), || async {
        daily_max(&api).await == 10
    })
    .await;
    assert!(allowed(&api, "d").await);
    assert_eq!(
        api.metric("turnpike_counter_plan_reloads_total{result=\"ok\"}")
            .await,
        1
    );

    // A replay of a consume made under the old plans counts nothing again.
    let (_, replay) = api.consume("a", "acme", &[("requests", 1)]).await;
    assert_eq!(
        (replay["allowed"].as_bool(), replay["replayed"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(replay["limits"][0]["used"], 3);
}

#[tokio::test]
async fn plans_reload_on_sighup() {
    let redis = Redis::start();
    // The served path is a symlink; editing its target in another directory is
    // invisible to the directory watch, so only SIGHUP can pick it up.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real-plans.toml");
    std::fs::write(&target, plans_with_daily_max(1)).unwrap();
    let link = dir.path().join("plans.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let counter = Counter::start_on(&redis, dir, link, &[]);
    let api = Api::new(&counter);
    assert!(allowed(&api, "a").await);
    assert!(!allowed(&api, "b").await);

    std::fs::write(&target, plans_with_daily_max(3)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(daily_max(&api).await, 1, "reloaded without SIGHUP");

    counter.signal(libc::SIGHUP);
    eventually("reload on SIGHUP", Duration::from_secs(5), || async {
        daily_max(&api).await == 3
    })
    .await;
    assert!(allowed(&api, "c").await);
    assert!(counter.log().contains("SIGHUP"));
}

#[tokio::test]
async fn a_broken_plans_file_is_refused_and_the_old_limits_stay() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, &plans_with_daily_max(2));
    let api = Api::new(&counter);

    counter.write_plans(&plans_with_daily_max(2).replace("max = 2", "max = 0"));
    eventually("refused reload", Duration::from_secs(5), || async {
        api.metric("turnpike_counter_plan_reloads_total{result=\"failed\"}")
            .await
            >= 1
    })
    .await;
    assert!(
        counter
            .log()
            .contains("plans.free.limits[0].max: must be > 0"),
        "{}",
        counter.log()
    );
    assert!(allowed(&api, "a").await && allowed(&api, "b").await);
    assert!(!allowed(&api, "c").await, "old max of 2 no longer enforced");

    counter.write_plans("this is not toml");
    eventually("second refused reload", Duration::from_secs(5), || async {
        api.metric("turnpike_counter_plan_reloads_total{result=\"failed\"}")
            .await
            >= 2
    })
    .await;
    assert_eq!(daily_max(&api).await, 2);

    counter.write_plans(&plans_with_daily_max(5));
    eventually("fixed file loads", Duration::from_secs(5), || async {
        daily_max(&api).await == 5
    })
    .await;
}

#[test]
fn validate_prints_ok_for_a_good_file_and_names_the_field_of_a_bad_one() {
    let (status, stdout, _) = validate(&plans_with_daily_max(5));
    assert!(status.success());
    assert_eq!(stdout.trim(), "OK");

    let soft = plans_with_daily_max(5).replace("max = 5", "max = 5, soft = 6");
    let (status, stdout, stderr) = validate(&soft);
    assert_eq!(status.code(), Some(1));
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with("plans.free.limits[0].soft: must be <= max (5)"),
        "{stderr}"
    );

    let (status, _, stderr) = validate(&plans_with_daily_max(5).replace("max = 5", "maximum = 5"));
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("maximum"), "{stderr}");

    let (status, _, stderr) =
        validate(&plans_with_daily_max(5).replace("\"free\"\n[plans", "\"gold\"\n[plans"));
    assert_eq!(status.code(), Some(1));
    assert!(stderr.starts_with("default_plan:"), "{stderr}");

    let (status, _, stderr) = validate_path(std::path::Path::new("/nonexistent/plans.toml"));
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/plans.toml"), "{stderr}");
}

#[tokio::test]
async fn a_consume_whose_caller_hung_up_is_still_counted_once_redis_decides() {
    let redis = Redis::start();
    let counter = Counter::start_with(
        &redis,
        &plans_with_daily_max(100),
        &["--budget-ms", "5000", "--redis-timeout-ms", "4000"],
    );
    let api = Api::new(&counter);
    assert!(allowed(&api, "warm").await);
    // Redis holds every write for 1.5 s; the caller gives up after 200 ms.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query(&mut redis.conn())
        .expect("CLIENT PAUSE");
    let hung_up = api
        .http
        .post(counter.url("/v1/consume"))
        .bearer_auth(common::SERVICE_TOKEN)
        .json(&serde_json::json!({ "id": "gone", "tenant": "acme", "meters": [{ "meter": "requests", "cost": 1 }] }))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(
        hung_up.is_err(),
        "the caller was meant to time out: {hung_up:?}"
    );
    // Redis decides once the pause ends; the metric must say so, as the windows do.
    eventually(
        "the hung-up consume counted",
        Duration::from_secs(10),
        || async {
            api.metric("turnpike_counter_consumes_total{result=\"allowed\"}")
                .await
                == 2
        },
    )
    .await;
    assert_eq!(
        redis.get(&common::window_key(
            "acme",
            "requests",
            "day",
            common::unix_now() / 86_400 * 86_400
        )),
        Some(2)
    );
}

#[tokio::test]
async fn metrics_count_consumes_by_result_and_latency() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, &plans_with_daily_max(1));
    let api = Api::new(&counter);
    allowed(&api, "a").await;
    allowed(&api, "b").await;
    api.consume("a", "acme", &[("requests", 1)]).await;
    api.refund("a", "acme").await;

    let (status, content_type, _) = api.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"));
    assert_eq!(
        api.metric("turnpike_counter_consumes_total{result=\"allowed\"}")
            .await,
        2
    );
    assert_eq!(
        api.metric("turnpike_counter_consumes_total{result=\"denied\"}")
            .await,
        1
    );
    assert_eq!(
        api.metric("turnpike_counter_consumes_replayed_total").await,
        1
    );
    assert_eq!(
        api.metric("turnpike_counter_refunds_total{result=\"refunded\"}")
            .await,
        1
    );
    assert_eq!(
        api.metric("turnpike_counter_request_duration_seconds_count{endpoint=\"consume\"}")
            .await,
        3
    );
}
