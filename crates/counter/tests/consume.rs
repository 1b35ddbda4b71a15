//! Check-and-consume, refunds and usage reads against a real Redis.

mod common;

use std::time::Duration;

use common::{tenant_keys, unix_now, window_key, Api, Counter, Redis};
use serde_json::Value;

const PLANS: &str = r#"
default_plan = "free"

[plans.free]
limits = [
  { name = "daily", meter = "requests", window = "day", max = 5 },
  { name = "monthly", meter = "requests", window = "month", max = 100, soft = 4 },
  { name = "search-daily", meter = "search_units", window = "day", max = 10 },
]

[plans.minute]
limits = [
  { name = "per-minute", meter = "requests", window = "minute", max = 3 },
  { name = "monthly", meter = "requests", window = "month", max = 100 },
]

[plans.big]
limits = [ { name = "hourly", meter = "requests", window = "hour", max = 500 } ]

[tenants.bulk]
plan = "big"

[tenants.ticker]
plan = "minute"
"#;

fn start() -> (Redis, Counter, Api) {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    (redis, counter, api)
}

fn day_end(now: i64) -> i64 {
    (now.div_euclid(86_400) + 1) * 86_400
}

fn limit<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["limits"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .unwrap_or_else(|| panic!("no limit {name} in {answer}"))
}

fn daily_key(tenant: &str, meter: &str) -> String {
    window_key(tenant, meter, "day", day_end(unix_now()) - 86_400)
}

/// Sleep past the end of the current window of `len` seconds if fewer than `margin`
/// seconds are left, so a test's consumes all land in one window.
async fn avoid_window_edge(len: i64, margin: i64) {
    let left = len - unix_now().rem_euclid(len);
    if left < margin {
        tokio::time::sleep(Duration::from_secs((left + 1) as u64)).await;
    }
}

#[tokio::test]
async fn exactly_max_consumes_are_allowed_then_denied_with_remaining_and_reset() {
    let (redis, _counter, api) = start();
    for i in 1..=5u64 {
        let (status, answer) = api
            .consume(&format!("c{i}"), "acme", &[("requests", 1)])
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["allowed"], true, "{answer}");
        assert_eq!(answer["plan"], "free");
        assert_eq!(answer["replayed"], false);
        let daily = limit(&answer, "daily");
        assert_eq!(
            (daily["used"].as_u64(), daily["remaining"].as_u64()),
            (Some(i), Some(5 - i))
        );
        assert_eq!(daily["window_secs"], 86_400);
        let reset = daily["reset"].as_i64().unwrap();
        assert!(
            (reset - (day_end(unix_now()) - unix_now())).abs() <= 2,
            "reset {reset}"
        );
        let monthly = limit(&answer, "monthly");
        assert_eq!(monthly["soft_crossed"], i >= 4, "{answer}");
        // Only limits on a requested meter are reported.
        assert_eq!(answer["limits"].as_array().unwrap().len(), 2);
    }

    let (status, denied) = api.consume("c6", "acme", &[("requests", 1)]).await;
    assert_eq!(status, 200);
    assert_eq!(denied["allowed"], false, "{denied}");
    assert_eq!(denied["denied_by"], "daily");
    let retry_after = denied["retry_after"].as_i64().unwrap();
    assert!(
        retry_after >= day_end(unix_now()) - unix_now() - 1,
        "{denied}"
    );
    assert_eq!(limit(&denied, "daily")["remaining"], 0);
    assert_eq!(limit(&denied, "monthly")["used"], 5);

    assert_eq!(redis.get(&daily_key("acme", "requests")), Some(5));
}

#[tokio::test]
async fn a_denial_by_one_limit_consumes_nothing_from_the_others() {
    let (redis, _counter, api) = start();
    avoid_window_edge(60, 15).await;
    for i in 0..3 {
        let (_, answer) = api
            .consume(&format!("t{i}"), "ticker", &[("requests", 1)])
            .await;
        assert_eq!(answer["allowed"], true, "{answer}");
    }
    let (_, denied) = api.consume("t3", "ticker", &[("requests", 1)]).await;
    assert_eq!(denied["allowed"], false);
    assert_eq!(denied["denied_by"], "per-minute");
    assert!(denied["retry_after"].as_u64().unwrap() <= 60, "{denied}");

    let month_keys = redis.keys(&tenant_keys("ticker", "q:requests:month:*"));
    assert_eq!(month_keys.len(), 1);
    assert_eq!(
        redis.get(&month_keys[0]),
        Some(3),
        "monthly was charged by a denied consume"
    );
    let minute_keys = redis.keys(&tenant_keys("ticker", "q:requests:minute:*"));
    assert_eq!(redis.get(&minute_keys[0]), Some(3));

    // Two meters at once: search_units has no room, so requests is not charged either.
    let (_, denied) = api
        .consume("s1", "acme", &[("requests", 1), ("search_units", 11)])
        .await;
    assert_eq!(denied["denied_by"], "search-daily", "{denied}");
    assert!(
        redis.keys(&tenant_keys("acme", "q:*")).is_empty(),
        "{:?}",
        redis.keys("*")
    );
    let (_, allowed) = api
        .consume("s2", "acme", &[("requests", 1), ("search_units", 10)])
        .await;
    assert_eq!(allowed["allowed"], true);
    assert_eq!(allowed["limits"].as_array().unwrap().len(), 3);
    assert_eq!(redis.get(&daily_key("acme", "search_units")), Some(10));
    assert_eq!(redis.get(&daily_key("acme", "requests")), Some(1));
}

#[tokio::test]
async fn the_same_consume_id_twice_is_counted_once_with_the_same_answer() {
    let (redis, _counter, api) = start();
    let (_, first) = api.consume("dup", "acme", &[("requests", 2)]).await;
    let (_, second) = api.consume("dup", "acme", &[("requests", 2)]).await;
    assert_eq!(first["replayed"], false);
    assert_eq!(second["replayed"], true);
    for field in ["allowed", "plan"] {
        assert_eq!(first[field], second[field]);
    }
    for (a, b) in first["limits"]
        .as_array()
        .unwrap()
        .iter()
        .zip(second["limits"].as_array().unwrap())
    {
        for field in ["name", "max", "used", "remaining", "soft_crossed"] {
            assert_eq!(a[field], b[field], "{field}");
        }
    }
    assert_eq!(redis.get(&daily_key("acme", "requests")), Some(2));

    // A denied consume leaves nothing behind (a flood of 429s costs no Redis memory):
    // the same id again is decided afresh, and still counts nothing while full.
    for i in 0..3 {
        api.consume(&format!("fill{i}"), "acme", &[("requests", 1)])
            .await;
    }
    let (_, denied) = api.consume("late", "acme", &[("requests", 1)]).await;
    assert_eq!(denied["allowed"], false);
    assert!(redis.keys(&tenant_keys("acme", "id:late")).is_empty());
    let (_, again) = api.consume("late", "acme", &[("requests", 1)]).await;
    assert_eq!(
        (again["allowed"].clone(), again["replayed"].clone()),
        (Value::Bool(false), Value::Bool(false))
    );
    assert_eq!(again["denied_by"], "daily");
    assert_eq!(redis.get(&daily_key("acme", "requests")), Some(5));
}

/// The usage stream bills an admission at the time its windows counted it: the entry
/// carries the decision time (`ts`), the one in its idempotency record. Its stream id
/// is when Redis appended it, later than the decision if Redis paused in between, and
/// possibly in the next second or month.
#[tokio::test]
async fn an_admission_is_streamed_with_its_decision_time() {
    let (redis, _counter, api) = start();
    for id in ["s1", "s2", "s3"] {
        let (_, answer) = api.consume(id, "stamp", &[("requests", 1)]).await;
        assert_eq!(answer["allowed"], true, "{answer}");
    }
    let entries = redis.stream_entries("stamp");
    assert_eq!(entries.len(), 3, "{entries:?}");
    for entry in entries {
        assert_eq!(entry["k"], "a", "{entry:?}");
        let id = &entry["i"];
        let keys = redis.keys(&tenant_keys("stamp", &format!("id:{id}")));
        let [record_key] = keys.as_slice() else {
            panic!("no single record of {id}: {keys:?}");
        };
        let record: String = redis::cmd("GET")
            .arg(record_key)
            .query(&mut redis.conn())
            .expect("GET");
        let decided = record.split('|').nth(1).expect("A|T|...");
        let ts = entry
            .get("ts")
            .unwrap_or_else(|| panic!("no ts in {entry:?}"));
        assert_eq!(ts, decided, "{entry:?} against {record}");
        let appended: u64 = entry["stream_id"]
            .split_once('-')
            .and_then(|(ms, _)| ms.parse().ok())
            .expect("<ms>-<seq>");
        assert!(appended >= ts.parse::<u64>().expect("unix ms"), "{entry:?}");
    }
}

#[tokio::test]
async fn refund_gives_back_exactly_once() {
    let (redis, _counter, api) = start();
    let (_, consumed) = api.consume("r1", "acme", &[("requests", 3)]).await;
    assert_eq!(consumed["allowed"], true);
    api.consume("r2", "acme", &[("requests", 1)]).await;
    assert_eq!(redis.get(&daily_key("acme", "requests")), Some(4));

    // Concurrent refunds of one consume: one gives back.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { api.refund("r1", "acme").await })
        })
        .collect();
    let mut refunded = 0;
    for task in tasks {
        let (status, answer) = task.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        refunded += usize::from(answer["refunded"] == true);
    }
    assert_eq!(refunded, 1);
    assert_eq!(redis.get(&daily_key("acme", "requests")), Some(1));

    let (_, again) = api.refund("r1", "acme").await;
    assert_eq!(again["refunded"], false);
    let (_, unknown) = api.refund("never", "acme").await;
    assert_eq!(unknown["refunded"], false);
    let (_, other_tenant) = api.refund("r2", "globex").await;
    assert_eq!(other_tenant["refunded"], false);
    assert_eq!(redis.get(&daily_key("acme", "requests")), Some(1));

    // A denied consume took nothing, so it gives nothing back.
    let (_, denied) = api.consume("big", "acme", &[("requests", 50)]).await;
    assert_eq!(denied["allowed"], false);
    let (_, refund_denied) = api.refund("big", "acme").await;
    assert_eq!(refund_denied["refunded"], false);

    // The refunded id is still a known consume: replaying it is not charged again.
    let (_, replay) = api.consume("r1", "acme", &[("requests", 3)]).await;
    assert_eq!(replay["replayed"], true);
    assert_eq!(redis.get(&daily_key("acme", "requests")), Some(1));
}

#[tokio::test]
async fn concurrent_consumes_never_exceed_the_limit() {
    let (redis, _counter, api) = start();
    avoid_window_edge(3_600, 60).await;
    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut allowed = 0;
                for i in 0..25 {
                    let (status, answer) = api
                        .consume(&format!("k{task}-{i}"), "bulk", &[("requests", 1)])
                        .await;
                    assert_eq!(status, 200, "{answer}");
                    allowed += usize::from(answer["allowed"] == true);
                }
                allowed
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    assert_eq!(allowed, 500);
    let keys = redis.keys(&tenant_keys("bulk", "q:requests:hour:*"));
    assert_eq!(keys.len(), 1);
    assert_eq!(redis.get(&keys[0]), Some(500));
}

#[tokio::test]
async fn usage_reads_counters_without_writing() {
    let (redis, _counter, api) = start();
    api.consume("u1", "acme", &[("requests", 2), ("search_units", 7)])
        .await;
    let keys_before = redis.keys("*");

    let (status, content_type, body) = api.get("/v1/tenants/acme/usage").await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("application/json"));
    let usage: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (usage["tenant"].as_str(), usage["plan"].as_str()),
        (Some("acme"), Some("free"))
    );
    assert_eq!(usage["limits"].as_array().unwrap().len(), 3);
    assert_eq!(limit(&usage, "daily")["used"], 2);
    assert_eq!(limit(&usage, "search-daily")["remaining"], 3);

    let (_, _, body) = api.get("/v1/tenants/nobody/usage?plan=big").await;
    let usage: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(usage["plan"], "big");
    assert_eq!(limit(&usage, "hourly")["used"], 0);
    assert_eq!(redis.keys("*"), keys_before);
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_on_the_same_port() {
    let (_redis, counter, api) = start();
    let h2 = Api::h2c(&counter);
    let (status, answer) = h2.consume("h2", "acme", &[("requests", 1)]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["allowed"], true);
    let resp = h2.http.get(counter.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let resp = api.http.get(counter.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn bad_input_gets_problem_json_naming_the_field() {
    let (redis, _counter, api) = start();
    let ((status, problem), content_type) = api.post_raw("/v1/consume", "{\"id\":".into()).await;
    assert_eq!(status, 400);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(
        problem["type"],
        "https://turnpike.dev/problems/invalid-request"
    );
    assert_eq!(problem["status"], 400);

    let cases = [
        (
            r#"{"id":"a","tenant":"ac me","meters":[{"meter":"requests","cost":1}]}"#,
            "tenant",
        ),
        (
            r#"{"id":"a b","tenant":"acme","meters":[{"meter":"requests","cost":1}]}"#,
            "id",
        ),
        (r#"{"id":"a","tenant":"acme","meters":[]}"#, "meters"),
        (
            r#"{"id":"a","tenant":"acme","meters":[{"meter":"requests","cost":"1"}]}"#,
            "meters[0].cost",
        ),
        (
            r#"{"id":"a","meters":[{"meter":"requests","cost":1}]}"#,
            "tenant",
        ),
    ];
    for (body, field) in cases {
        let ((status, problem), content_type) = api.post_raw("/v1/consume", body.into()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(content_type, "application/problem+json");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(field),
            "{body}: {detail} should name {field}"
        );
    }

    let ((status, problem), _) = api
        .post_raw("/v1/refund", r#"{"id":"a","tenant":"{acme}"}"#.into())
        .await;
    assert_eq!(status, 422);
    assert!(
        problem["detail"].as_str().unwrap().starts_with("tenant:"),
        "{problem}"
    );

    let (status, content_type, body) = api.get("/v1/tenants/a%20b/usage").await;
    assert_eq!(
        (status, content_type.as_str()),
        (422, "application/problem+json"),
        "{body}"
    );
    let (status, content_type, _) = api.get("/v1/nothing").await;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json")
    );

    assert!(
        redis.keys("*").is_empty(),
        "bad requests wrote {:?}",
        redis.keys("*")
    );
}

fn item(id: &str, tenant: &str) -> Value {
    serde_json::json!({ "id": id, "tenant": tenant, "meters": [{ "meter": "requests", "cost": 1 }] })
}

#[tokio::test]
async fn a_batch_decides_each_consume_exactly_once_answers_in_order_and_fails_a_bad_item_alone() {
    let (_redis, _counter, api) = start();
    avoid_window_edge(86_400, 5).await;
    // Eight consumes of a 5-a-day tenant, two of them repeats, one of another tenant,
    // one with an id the counter refuses.
    let batch = serde_json::json!([
        item("b1", "acme"),
        item("b2", "acme"),
        item("b1", "acme"),
        item("b3", "acme"),
        item("b4", "acme"),
        item("bad id!", "acme"),
        item("b5", "acme"),
        item("b6", "acme"),
        item("b6", "acme"),
        item("o1", "other"),
    ]);
    let (status, answer) = api.post("/v1/consume/batch", batch.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let items = answer.as_array().expect("an array");
    assert_eq!(items.len(), 10, "{answer}");
    let allowed = |i: usize| items[i]["answer"]["allowed"].as_bool();
    // Six distinct consumes for a 5-a-day tenant, decided concurrently: any five of
    // them get in, and a repeated id is answered as its first.
    let acme = [0, 1, 3, 4, 6, 7];
    assert_eq!(
        acme.iter().filter(|&&i| allowed(i) == Some(true)).count(),
        5,
        "{answer}"
    );
    assert_eq!(allowed(2), allowed(0), "{answer}");
    assert_eq!(allowed(8), allowed(7), "{answer}");
    assert!(
        items[2]["answer"]["replayed"] == true || items[0]["answer"]["replayed"] == true,
        "{answer}"
    );
    assert_eq!(allowed(5), None, "{answer}");
    assert_eq!(items[5]["status"], 422, "{answer}");
    assert_eq!(items[5]["problem"]["status"], 422, "{answer}");
    assert_eq!(allowed(9), Some(true), "{answer}");
    assert_eq!(limit(&items[9]["answer"], "daily")["used"], 1, "{answer}");
    // The whole batch again: every answer is the same, nothing counts twice.
    let (_, again) = api.post("/v1/consume/batch", batch).await;
    for (i, item) in again.as_array().unwrap().iter().enumerate() {
        assert_eq!(item["answer"]["allowed"].as_bool(), allowed(i), "{again}");
    }
    let (_, one) = api.consume("probe", "acme", &[("requests", 1)]).await;
    assert_eq!(limit(&one, "daily")["used"], 5, "{one}");

    // The compact form: items in order, a failed one as `!STATUS`.
    let resp = api
        .http
        .post(api.url("/v1/consume/batch"))
        .bearer_auth(common::SERVICE_TOKEN)
        .header("accept", "application/vnd.turnpike.consume")
        .body(serde_json::json!([item("c1", "fresh"), item("bad id!", "fresh")]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let parts: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(parts.len(), 2, "{text:?}");
    assert!(parts[0].starts_with("1 "), "{text:?}");
    assert_eq!(parts[1], "!422", "{text:?}");

    // Not a batch: named errors.
    let (status, problem) = api.post("/v1/consume/batch", serde_json::json!([])).await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("body"),
        "{problem}"
    );
    let (status, problem) = api
        .post("/v1/consume/batch", serde_json::json!(item("x", "acme")))
        .await;
    assert_eq!(status, 422, "{problem}");
}

#[tokio::test]
async fn a_batch_of_many_consumes_for_one_tenant_never_admits_over_the_limit() {
    // 800 consumes at once through a debug build on two shared cores: generous
    // timeouts, so that every one is decided (this checks the count, not the speed).
    let redis = Redis::start();
    let counter = Counter::start_with(
        &redis,
        PLANS,
        &["--budget-ms", "5000", "--redis-timeout-ms", "4000"],
    );
    let api = Api::new(&counter);
    avoid_window_edge(3_600, 5).await;
    // `bulk` may make 500 a hour: 4 concurrent batches of 200 race for them.
    let mut calls = Vec::new();
    for b in 0..4 {
        let batch: Vec<Value> = (0..200)
            .map(|i| item(&format!("k{b}-{i}"), "bulk"))
            .collect();
        let api = api.clone();
        calls.push(tokio::spawn(async move {
            api.post("/v1/consume/batch", Value::Array(batch)).await
        }));
    }
    let mut admitted = 0;
    for call in calls {
        let (status, answer) = call.await.unwrap();
        assert_eq!(status, 200, "{answer}");
        let items = answer.as_array().unwrap();
        admitted += items
            .iter()
            .filter(|i| i["answer"]["allowed"] == true)
            .count();
        // Every consume is decided: allowed, or denied by the hourly limit.
        let undecided: Vec<&Value> = items
            .iter()
            .filter(|i| i["status"] != 200 || i["answer"]["allowed"].as_bool().is_none())
            .collect();
        assert!(undecided.is_empty(), "{undecided:?}");
    }
    assert_eq!(admitted, 500);
    // In the usage stream, every admitted consume once, in entries of at most 100.
    let mut ids = Vec::new();
    for e in redis.stream_entries("bulk") {
        match e["k"].as_str() {
            "a" => ids.push(e["i"].clone()),
            "A" => {
                let records: Vec<&str> = e["r"].split(',').collect();
                assert!(records.len() <= turnpike_wire::LEASE_RECORDS_PER_STREAM_ENTRY);
                ids.extend(
                    records
                        .iter()
                        .map(|r| r.split(':').next().unwrap().to_owned()),
                );
            }
            other => panic!("entry kind {other}"),
        }
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((count, ids.len()), (500, 500));
}

/// One consume of `requests` (1) and `search_units` (`units`).
fn search(id: &str, tenant: &str, units: u64) -> Value {
    serde_json::json!({ "id": id, "tenant": tenant, "meters": [
        { "meter": "requests", "cost": 1 }, { "meter": "search_units", "cost": units } ] })
}

/// What of an answer does not depend on when it was given.
fn decided(answer: &Value) -> Value {
    let mut answer = answer.clone();
    if let Some(a) = answer.as_object_mut() {
        a.remove("time_ms");
        a.remove("retry_after");
        for l in a
            .get_mut("limits")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            l.as_object_mut().map(|l| l.remove("reset"));
        }
    }
    answer
}

#[tokio::test]
async fn a_batch_answers_every_consume_as_the_same_consumes_one_by_one_would() {
    let (redis, _counter, api) = start();
    avoid_window_edge(86_400, 10).await;
    // The same story for two tenants of one plan (5 requests and 10 search units a
    // day): `batched` sends it as one batch, `single` one consume at a time. Costs
    // differ, so the order decides who gets in: an item too big for what is left is
    // denied and a smaller one after it allowed. Ids repeat inside the batch and from
    // an earlier call; one was refunded before it came (cancelled). The last can never
    // fit: it is refused without a script, after the batch's other items, so only at
    // the end does what it sees not depend on the order.
    let story = |t: &str| {
        vec![
            search("s1", t, 3),
            search("s2", t, 4),
            search("s1", t, 3),
            search("s3", t, 4),
            search("s4", t, 2),
            search("early", t, 1),
            search("gone", t, 1),
            item("r1", t),
            search("s5", t, 1),
            item("r2", t),
            item("r3", t),
            search("s4", t, 2),
            search("huge", t, 11),
        ]
    };
    for t in ["batched", "single"] {
        let (status, _) = api
            .consume("early", t, &[("requests", 1), ("search_units", 1)])
            .await;
        assert_eq!(status, 200);
        let (status, answer) = api.refund("gone", t).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, batch) = api
        .post("/v1/consume/batch", Value::Array(story("batched")))
        .await;
    assert_eq!(status, 200, "{batch}");
    let batch = batch.as_array().unwrap().clone();
    let mut single = Vec::new();
    for consume in story("single") {
        let (status, answer) = api.post("/v1/consume", consume).await;
        single.push((status, answer));
    }
    assert_eq!(batch.len(), single.len());
    for (i, (item, (status, answer))) in batch.iter().zip(&single).enumerate() {
        assert_eq!(item["status"], *status, "item {i}: {item} against {answer}");
        let mut expected = decided(answer);
        if let Some(plan) = expected.get_mut("tenant") {
            *plan = Value::from("batched");
        }
        assert_eq!(
            decided(&item["answer"]),
            expected,
            "item {i}: {item} against {answer}"
        );
    }
    // Not vacuous: the story has admissions, denials, replays and the cancelled one.
    let allowed: Vec<bool> = batch
        .iter()
        .map(|i| i["answer"]["allowed"] == true)
        .collect();
    assert_eq!(
        allowed,
        [true, true, true, false, true, true, false, true, false, false, false, true, false],
        "{batch:?}"
    );
    assert_eq!(batch[2]["answer"]["replayed"], true);
    assert_eq!(batch[5]["answer"]["replayed"], true);
    // Every item but the one that can never fit went in the tenant's one script.
    assert_eq!(
        api.metric("turnpike_counter_consumes_grouped_total").await,
        12
    );
    assert_eq!(batch[6]["answer"]["replayed"], true);
    // The windows and the usage stream hold the same for both.
    for meter in ["requests", "search_units"] {
        assert_eq!(
            redis.get(&daily_key("batched", meter)),
            redis.get(&daily_key("single", meter)),
            "{meter}"
        );
    }
    assert_eq!(redis.get(&daily_key("batched", "search_units")), Some(10));
    // One entry per admitted consume (k=a) when alone; joined (k=A, records
    // `id:ms`, no lease) when decided together.
    let admitted = |t: &str| {
        let mut ids: Vec<String> = Vec::new();
        for e in redis.stream_entries(t) {
            match e["k"].as_str() {
                "a" => ids.push(format!("{} {} {}", e["i"], e["p"], e["m"])),
                "A" => {
                    assert!(!e.contains_key("l"), "{e:?}");
                    for record in e["r"].split(',') {
                        let (id, ms) = record.split_once(':').expect("id:ms");
                        assert!(ms.parse::<u64>().is_ok(), "{e:?}");
                        ids.push(format!("{id} {} {}", e["p"], e["m"]));
                    }
                }
                _ => {}
            }
        }
        ids.sort();
        ids
    };
    assert_eq!(admitted("batched"), admitted("single"));
    assert_eq!(admitted("batched").len(), 5, "{:?}", admitted("batched"));
    // "early" came alone; the four of the batch share one entry per meters.
    let joined: Vec<_> = redis
        .stream_entries("batched")
        .into_iter()
        .filter(|e| e["k"] == "A")
        .map(|e| (e["m"].clone(), e["r"].split(',').count()))
        .collect();
    assert_eq!(
        joined,
        [
            ("requests=1,search_units=3".to_owned(), 1),
            ("requests=1,search_units=4".to_owned(), 1),
            ("requests=1,search_units=2".to_owned(), 1),
            ("requests=1".to_owned(), 1)
        ]
    );
}
