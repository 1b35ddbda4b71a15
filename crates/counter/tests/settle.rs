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
