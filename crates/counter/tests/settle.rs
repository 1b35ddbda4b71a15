//! Reserve, then settle, against a real Redis: the difference goes back to (or is
//! taken from) every window, once; the usage stream carries the final quantities.

mod common;

use common::{Api, Counter, Redis};
use serde_json::{json, Value};

const PLANS: &str = r#"
default_plan = "llm"
[plans.llm]
limits = [
  { name = "requests-daily", meter = "requests", window = "day", max = 100 },
  { name = "tokens-minute", meter = "tokens", window = "minute", max = 2000 },
  { name = "tokens-daily", meter = "tokens", window = "day", max = 5000 },
]
"#;

async fn used(api: &Api, limit: &str) -> u64 {
    let (_, _, body) = api.get("/v1/tenants/acme/usage").await;
    let usage: Value = serde_json::from_str(&body).unwrap();
    usage["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == limit)
        .and_then(|l| l["used"].as_u64())
        .unwrap()
}

async fn settle(api: &Api, id: &str, tokens: u64) -> Value {
    let (status, answer) = api
        .post(
            "/v1/settle",
            json!({"id": id, "tenant": "acme", "meters": [{"meter": "tokens", "cost": tokens}]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn a_settlement_moves_every_window_of_the_meter_by_the_difference_once() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    let (_, reserved) = api
        .consume("r1", "acme", &[("requests", 1), ("tokens", 1000)])
        .await;
    assert_eq!(reserved["allowed"], true);
    assert_eq!(
        (
            used(&api, "tokens-minute").await,
            used(&api, "tokens-daily").await
        ),
        (1000, 1000)
    );

    assert_eq!(settle(&api, "r1", 850).await["settled"], true);
    assert_eq!(
        (
            used(&api, "tokens-minute").await,
            used(&api, "tokens-daily").await
        ),
        (850, 850)
    );
    assert_eq!(
        used(&api, "requests-daily").await,
        1,
        "unsettled meters stay"
    );
    // A replayed settlement changes nothing.
    assert_eq!(settle(&api, "r1", 850).await["settled"], false);
    assert_eq!(used(&api, "tokens-daily").await, 850);

    // Using more than reserved takes the windows past what was reserved, even past max.
    api.consume("r2", "acme", &[("requests", 1), ("tokens", 1000)])
        .await;
    assert_eq!(settle(&api, "r2", 1900).await["settled"], true);
    assert_eq!(used(&api, "tokens-minute").await, 2750);
    let (_, next) = api
        .consume("r3", "acme", &[("requests", 1), ("tokens", 10)])
        .await;
    assert_eq!(
        next["allowed"], false,
        "the window is past its maximum: {next}"
    );

    // A refund after settlement gives back the settled amount.
    let (_, refund) = api.refund("r1", "acme").await;
    assert_eq!(refund["refunded"], true);
    assert_eq!(used(&api, "tokens-daily").await, 1900);

    let settles: Vec<String> = redis
        .stream_entries("acme")
        .into_iter()
        .filter(|e| e["k"] == "s")
        .filter_map(|mut e| e.remove("m"))
        .collect();
    assert_eq!(settles, ["requests=1,tokens=850", "requests=1,tokens=1900"]);
}

#[tokio::test]
async fn settling_an_unknown_or_refunded_consume_changes_nothing() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    assert_eq!(settle(&api, "never", 10).await["settled"], false);
    api.consume("gone", "acme", &[("requests", 1), ("tokens", 100)])
        .await;
    api.refund("gone", "acme").await;
    assert_eq!(settle(&api, "gone", 10).await["settled"], false);
    assert_eq!(used(&api, "tokens-daily").await, 0);
}

#[tokio::test]
async fn a_settle_batch_applies_each_settlement_once_and_answers_in_order() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    for id in ["b1", "b2", "b3"] {
        let (_, answer) = api
            .consume(id, "acme", &[("requests", 1), ("tokens", 500)])
            .await;
        assert_eq!(answer["allowed"], true, "{answer}");
    }
    assert_eq!(used(&api, "tokens-daily").await, 1500);
    let item = |id: &str, tokens: u64| json!({"id": id, "tenant": "acme", "meters": [{"meter": "tokens", "cost": tokens}]});
    let batch = json!([
        item("b1", 100),
        item("unknown", 5),
        item("b2", 200),
        item("bad id!", 1),
        item("b3", 900),
    ]);
    let (status, answer) = api.post("/v1/settle/batch", batch.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let settled: Vec<(u64, bool)> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["status"].as_u64().unwrap(), i["settled"] == true))
        .collect();
    assert_eq!(
        settled,
        [
            (200, true),
            (200, false),
            (200, true),
            (422, false),
            (200, true)
        ],
        "{answer}"
    );
    // 100 + 200 + 900 tokens, once: the same batch again changes nothing.
    assert_eq!(used(&api, "tokens-daily").await, 1200);
    let (_, again) = api.post("/v1/settle/batch", batch).await;
    assert!(
        again
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["settled"] == false),
        "{again}"
    );
    assert_eq!(used(&api, "tokens-daily").await, 1200);
    let (status, _) = api.post("/v1/settle/batch", json!([])).await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn a_settle_batch_applies_each_settlement_as_the_same_ones_one_by_one_would() {
    let redis = Redis::start();
    let counter = Counter::start(&redis, PLANS);
    let api = Api::new(&counter);
    // Keep the story in one minute: the minute window is part of it.
    let left = 60 - common::unix_now().rem_euclid(60);
    if left < 15 {
        tokio::time::sleep(std::time::Duration::from_secs(left as u64 + 1)).await;
    }
    let minute = common::unix_now() - common::unix_now().rem_euclid(60);
    let tokens_minute = |t: &str| common::window_key(t, "tokens", "minute", minute);
    // The same consumes for two tenants; then `batched` settles in one batch and
    // `single` one settlement at a time. The minute window is dropped first (a window
    // that ended): a settlement that gives back finds nothing to give back to until
    // one that takes more creates it, and one giving back more than it holds leaves 0.
    for t in ["batched", "single"] {
        for (id, tokens) in [
            ("c1", 600),
            ("c2", 500),
            ("c3", 400),
            ("c4", 300),
            ("gone", 100),
        ] {
            let (_, answer) = api
                .post(
                    "/v1/consume",
                    json!({"id": id, "tenant": t, "meters": [
                        {"meter": "requests", "cost": 1}, {"meter": "tokens", "cost": tokens}]}),
                )
                .await;
            assert_eq!(answer["allowed"], true, "{answer}");
        }
        let (_, refund) = api.refund("gone", t).await;
        assert_eq!(refund["refunded"], true, "{refund}");
        let _: () = redis::cmd("DEL")
            .arg(tokens_minute(t))
            .query(&mut redis.conn())
            .unwrap();
    }
    // Two batches: the first gives back to the dropped minute (nothing to give back
    // to: it stays absent), the second creates it (c1 takes 100 more) and then gives
    // back more than it holds (c4: 300 back from 100 leaves 0).
    let stories = |t: &str| {
        let item = |id: &str, meters: Value| json!({"id": id, "tenant": t, "meters": meters});
        let tokens = |n: u64| json!([{"meter": "tokens", "cost": n}]);
        [
            vec![
                item("c2", tokens(100)),
                item("unknown", tokens(5)),
                item(
                    "c3",
                    json!([{"meter": "tokens", "cost": 0}, {"meter": "cached_tokens", "cost": 40}]),
                ),
                item("c2", tokens(50)),
                item("gone", tokens(10)),
            ],
            vec![item("c1", tokens(700)), item("c4", tokens(0))],
        ]
    };
    let mut minute_after = Vec::new();
    for (batched, single) in stories("batched").into_iter().zip(stories("single")) {
        let (status, answer) = api.post("/v1/settle/batch", Value::Array(batched)).await;
        assert_eq!(status, 200, "{answer}");
        let batch: Vec<bool> = answer
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["settled"] == true)
            .collect();
        let mut one_by_one = Vec::new();
        for item in single {
            let (status, answer) = api.post("/v1/settle", item).await;
            assert_eq!(status, 200, "{answer}");
            one_by_one.push(answer["settled"] == true);
        }
        assert_eq!(batch, one_by_one);
        minute_after.push((
            batch,
            redis.get(&tokens_minute("batched")),
            redis.get(&tokens_minute("single")),
        ));
    }
    assert_eq!(
        minute_after,
        [
            (vec![true, false, true, false, false], None, None),
            (vec![true, true], Some(0), Some(0)),
        ]
    );
    // The day: 1800 reserved (the refund gave back 100) - 400 - 400 + 100 - 300.
    let tokens_daily = |t: &str| {
        let day = common::unix_now() - common::unix_now().rem_euclid(86_400);
        common::window_key(t, "tokens", "day", day)
    };
    for t in ["batched", "single"] {
        assert_eq!(redis.get(&tokens_daily(t)), Some(800), "{t}");
    }
    // The minute window a settlement created has no expiry, as alone.
    let ttl = |t: &str| -> i64 {
        redis::cmd("TTL")
            .arg(tokens_minute(t))
            .query(&mut redis.conn())
            .unwrap()
    };
    assert_eq!(ttl("batched"), ttl("single"));
    // The usage stream: the same settlements, with the final quantities.
    let settled = |t: &str| -> Vec<(String, String)> {
        redis
            .stream_entries(t)
            .into_iter()
            .filter(|e| e["k"] == "s")
            .map(|e| (e["i"].clone(), e["m"].clone()))
            .collect()
    };
    assert_eq!(settled("batched"), settled("single"));
    // In the tenant's scripts: c2, c3, c1 and c4. Not the unknown and the refunded
    // ones (nothing to do, no script), nor c2's second settlement: the script found its
    // record changed by the first and left it to the single path.
    assert_eq!(
        api.metric("turnpike_counter_settles_grouped_total").await,
        4
    );
    assert_eq!(
        settled("batched"),
        [
            ("c2".to_owned(), "requests=1,tokens=100".to_owned()),
            (
                "c3".to_owned(),
                "requests=1,tokens=0,cached_tokens=40".to_owned()
            ),
            ("c1".to_owned(), "requests=1,tokens=700".to_owned()),
            ("c4".to_owned(), "requests=1,tokens=0".to_owned()),
        ]
    );
}
