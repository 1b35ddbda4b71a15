//! The collector's Stripe client against the Stripe fake (in-process): retries,
//! idempotency keys, error sorting and paging, observed through the fake's admin
//! routes.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use turnpike_collector::billing::stripe::{
    idempotency_key, Formula, Grouping, KeyKind, MeterStatus, NewMeter, StripeClient, StripeConfig,
    StripeError,
};
use turnpike_devtools::stripe_fake::{self, FakeConfig, RunningFake};

const KEY: &str = "sk_test_client_tests";
const EVENTS: &str = "/v1/billing/meter_events";

struct Setup {
    fake: RunningFake,
    admin: reqwest::Client,
}

impl Setup {
    async fn new() -> Setup {
        let fake = stripe_fake::start(
            "127.0.0.1:0".parse().unwrap(),
            FakeConfig {
                api_keys: vec![KEY.to_owned()],
                state_file: None,
            },
        )
        .await
        .unwrap();
        Setup {
            fake,
            admin: reqwest::Client::new(),
        }
    }

    /// A client with short delays so retry storms finish quickly.
    fn config(&self, key: &str) -> StripeConfig {
        let mut config = StripeConfig::new(self.fake.base_url(), key);
        config.initial_retry_delay = Duration::from_millis(10);
        config.max_retry_delay = Duration::from_millis(40);
        config.timeout = Duration::from_secs(5);
        config
    }

    fn client(&self) -> StripeClient {
        StripeClient::new(self.config(KEY)).unwrap()
    }

    async fn admin_post(&self, path: &str, body: Value) {
        let response = self
            .admin
            .post(format!("{}{path}", self.fake.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{path}");
    }

    async fn admin_get(&self, path: &str) -> Value {
        self.admin
            .get(format!("{}{path}", self.fake.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn fault(&self, rule: Value) {
        self.admin_post("/_fake/faults", rule).await;
    }

    /// The requests the fake saw on `path`.
    async fn requests_to(&self, path: &str) -> Vec<Value> {
        let log = self.admin_get("/_fake/requests").await;
        log.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["path"] == path)
            .cloned()
            .collect()
    }

    async fn now(&self) -> i64 {
        self.admin_get("/_fake/clock").await["now"]
            .as_i64()
            .unwrap()
    }

    async fn meter(&self, client: &StripeClient, event_name: &str) -> String {
        client
            .create_meter(&NewMeter {
                display_name: format!("Meter {event_name}"),
                event_name: event_name.to_owned(),
                formula: Formula::Sum,
                customer_payload_key: None,
                value_payload_key: None,
            })
            .await
            .unwrap()
            .id
    }
}

#[tokio::test]
async fn events_sent_come_back_in_hourly_summaries_across_pages() {
    let setup = Setup::new().await;
    let client = setup.client();
    let meter = setup.meter(&client, "api_requests").await;
    let now = setup.now().await;
    // 120 hourly windows: two pages of 100 and 20.
    let start = (now.div_euclid(86_400) - 5) * 86_400;
    let end = start + 120 * 3600;
    for hour in [0, 57, 101, 119] {
        let at = start + hour * 3600 + 59;
        let event = client
            .send_meter_event(
                "api_requests",
                "cus_1",
                hour + 1,
                at,
                &format!("cus_1:{hour}"),
            )
            .await
            .unwrap();
        assert_eq!(
            (event.identifier.as_str(), event.timestamp),
            (format!("cus_1:{hour}").as_str(), at)
        );
        assert_eq!(event.payload["value"], (hour + 1).to_string());
    }
    let summaries = client
        .event_summaries(&meter, "cus_1", start, end, Some(Grouping::Hour))
        .await
        .unwrap();
    assert_eq!(summaries.len(), 120);
    let non_zero: Vec<(i64, f64)> = summaries
        .iter()
        .filter(|s| s.aggregated_value != 0.0)
        .map(|s| ((s.start_time - start) / 3600, s.aggregated_value))
        .collect();
    assert_eq!(
        non_zero,
        vec![(0, 1.0), (57, 58.0), (101, 102.0), (119, 120.0)]
    );
    let pages = setup
        .requests_to(&format!("/v1/billing/meters/{meter}/event_summaries"))
        .await;
    assert_eq!(pages.len(), 2);

    let daily = client
        .event_summaries(
            &meter,
            "cus_1",
            start,
            start + 5 * 86_400,
            Some(Grouping::Day),
        )
        .await
        .unwrap();
    assert_eq!(daily.iter().map(|s| s.aggregated_value).sum::<f64>(), 281.0);
}

#[tokio::test]
async fn a_429_storm_is_retried_with_one_idempotency_key_until_it_passes() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup.meter(&client, "api").await;
    setup
        .fault(json!({"kind": "rate_limit", "count": 3, "path": EVENTS}))
        .await;
    let now = setup.now().await;
    client
        .send_meter_event("api", "cus_1", 5, now, "storm-1")
        .await
        .unwrap();
    let seen = setup.requests_to(EVENTS).await;
    let statuses: Vec<u64> = seen.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![429, 429, 429, 200]);
    let expected = idempotency_key(KeyKind::MeterEvent, "storm-1");
    assert!(
        seen.iter()
            .all(|r| r["idempotency_key"] == expected.as_str()),
        "{seen:#?}"
    );
    assert_eq!(
        setup.admin_get("/_fake/events").await["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_500_storm_ends_in_a_server_error_that_keeps_the_request_id() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup.meter(&client, "api").await;
    setup
        .fault(json!({"kind": "server_error", "count": 10, "path": EVENTS}))
        .await;
    let now = setup.now().await;
    let err = client
        .send_meter_event("api", "cus_1", 5, now, "e-1")
        .await
        .unwrap_err();
    match &err {
        StripeError::Server {
            status, attempts, ..
        } => assert_eq!((*status, *attempts), (500, 4)),
        other => panic!("{other:?}"),
    }
    assert!(err.is_transient());
    let seen = setup.requests_to(EVENTS).await;
    assert_eq!(seen.len(), 4, "the first attempt and three retries");
    assert_eq!(err.request_id(), seen[3]["request_id"].as_str());
}

#[tokio::test]
async fn a_500_that_stripe_marks_not_retryable_is_not_retried() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup.meter(&client, "api").await;
    setup
        .fault(json!({"kind": "server_error", "should_retry": false, "path": EVENTS}))
        .await;
    let now = setup.now().await;
    let err = client
        .send_meter_event("api", "cus_1", 5, now, "e-1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StripeError::Server { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(setup.requests_to(EVENTS).await.len(), 1);
}

#[tokio::test]
async fn a_400_is_not_retried_and_names_the_parameter() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup.meter(&client, "api").await;
    let now = setup.now().await;
    let too_long = "x".repeat(101);
    let err = client
        .send_meter_event("api", "cus_1", 5, now, &too_long)
        .await
        .unwrap_err();
    match &err {
        StripeError::InvalidRequest {
            status,
            param,
            request_id,
            ..
        } => {
            assert_eq!((*status, param.as_deref()), (400, Some("identifier")));
            assert!(request_id
                .as_deref()
                .is_some_and(|id| id.starts_with("req_")));
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_transient());
    assert_eq!(setup.requests_to(EVENTS).await.len(), 1);
}

#[tokio::test]
async fn an_identifier_stripe_already_holds_counts_as_delivered_without_retries() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup.meter(&client, "api").await;
    let now = setup.now().await;
    // Delivered before by something that used another idempotency key (or none).
    let earlier = setup
        .admin
        .post(format!("{}{EVENTS}", setup.fake.base_url()))
        .bearer_auth(KEY)
        .body(format!(
            "event_name=api&identifier=hour-7&timestamp={now}&payload[stripe_customer_id]=cus_1&payload[value]=5"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(earlier.status().as_u16(), 200);
    let err = client
        .send_meter_event("api", "cus_1", 5, now, "hour-7")
        .await
        .unwrap_err();
    assert!(err.is_already_delivered(), "{err:?}");
    assert!(
        matches!(&err, StripeError::DuplicateIdentifier { identifier, .. } if identifier == "hour-7")
    );
    assert!(err.request_id().is_some());
    assert_eq!(
        setup.requests_to(EVENTS).await.len(),
        2,
        "one each, no retry"
    );
    assert_eq!(
        setup.admin_get("/_fake/events").await["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn the_same_call_again_gets_stripes_stored_answer() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup.meter(&client, "api").await;
    let now = setup.now().await;
    let first = client
        .send_meter_event("api", "cus_1", 5, now, "again-1")
        .await
        .unwrap();
    // A restart re-sends the same logical request: same key, so Stripe replays.
    let restarted = setup.client();
    let second = restarted
        .send_meter_event("api", "cus_1", 5, now, "again-1")
        .await
        .unwrap();
    assert_eq!(first, second);
    let seen = setup.requests_to(EVENTS).await;
    assert_eq!(seen[1]["replayed"], true);
    // The same identifier with another value is a bug in the caller, not a delivery.
    let err = client
        .send_meter_event("api", "cus_1", 6, now, "again-1")
        .await
        .unwrap_err();
    assert!(matches!(err, StripeError::Idempotency { .. }), "{err:?}");
    assert!(!err.is_already_delivered());
}

#[tokio::test]
async fn a_wrong_key_is_an_authentication_error_at_once() {
    let setup = Setup::new().await;
    let client = StripeClient::new(setup.config("sk_test_not_the_key")).unwrap();
    let err = client.list_meters(None).await.unwrap_err();
    match &err {
        StripeError::Authentication {
            status, message, ..
        } => {
            assert_eq!(*status, 401);
            assert!(message.starts_with("Invalid API Key provided"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err
        .to_string()
        .contains("check the configured Stripe secret key"));
    assert!(!err.is_transient());
    assert_eq!(setup.requests_to("/v1/billing/meters").await.len(), 1);
}

#[tokio::test]
async fn a_dropped_connection_is_retried_with_the_same_key_and_the_replay_is_success() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup.meter(&client, "api").await;
    setup
        .fault(json!({"kind": "drop", "after_processing": true, "path": EVENTS}))
        .await;
    let now = setup.now().await;
    let event = client
        .send_meter_event("api", "cus_1", 5, now, "drop-1")
        .await
        .unwrap();
    assert_eq!(event.identifier, "drop-1");
    let seen = setup.requests_to(EVENTS).await;
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        (seen[0]["status"].as_u64(), seen[0]["fault"].as_str()),
        (Some(0), Some("drop"))
    );
    assert_eq!(seen[1]["replayed"], true);
    assert_eq!(seen[0]["idempotency_key"], seen[1]["idempotency_key"]);
    // Stripe counted it once.
    assert_eq!(
        setup.admin_get("/_fake/events").await["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_connection_dropped_before_processing_is_retried_and_delivered_once() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup.meter(&client, "api").await;
    setup
        .fault(json!({"kind": "drop", "after_processing": false, "count": 2, "path": EVENTS}))
        .await;
    let now = setup.now().await;
    client
        .send_meter_event("api", "cus_1", 5, now, "drop-2")
        .await
        .unwrap();
    let statuses: Vec<u64> = setup
        .requests_to(EVENTS)
        .await
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![0, 0, 200]);
}

#[tokio::test]
async fn retry_after_is_waited_for() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup
        .fault(json!({"kind": "rate_limit", "retry_after_secs": 1, "path": "/v1/billing/meters"}))
        .await;
    let started = Instant::now();
    client.list_meters(None).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_retry_after_beyond_the_limit_ends_in_rate_limited_for_later() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup
        .fault(
            json!({"kind": "rate_limit", "retry_after_secs": 3600, "path": "/v1/billing/meters"}),
        )
        .await;
    let err = client.list_meters(None).await.unwrap_err();
    match &err {
        StripeError::RateLimited {
            retry_after,
            attempts,
            ..
        } => {
            assert_eq!(
                (*retry_after, *attempts),
                (Some(Duration::from_secs(3600)), 1)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_transient());
}

#[tokio::test]
async fn cancels_work_for_24_hours_then_report_the_window_passed() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup.meter(&client, "api").await;
    let now = setup.now().await;
    client
        .send_meter_event("api", "cus_1", 5, now, "c-1")
        .await
        .unwrap();
    client
        .send_meter_event("api", "cus_1", 5, now, "c-2")
        .await
        .unwrap();
    let adjustment = client.cancel_meter_event("api", "c-1").await.unwrap();
    assert_eq!(adjustment.status, "complete");
    assert_eq!(
        adjustment.cancel.and_then(|c| c.identifier).as_deref(),
        Some("c-1")
    );
    setup
        .admin_post("/_fake/clock", json!({"advance_secs": 24 * 3600}))
        .await;
    let err = client.cancel_meter_event("api", "c-2").await.unwrap_err();
    assert!(
        matches!(&err, StripeError::AdjustmentWindowPassed { identifier, .. } if identifier == "c-2"),
        "{err:?}"
    );
    assert_eq!(
        setup
            .requests_to("/v1/billing/meter_event_adjustments")
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn a_timestamp_outside_stripes_window_is_its_own_error() {
    let setup = Setup::new().await;
    let client = setup.client();
    setup.meter(&client, "api").await;
    let now = setup.now().await;
    let old = now - 40 * 86_400;
    let err = client
        .send_meter_event("api", "cus_1", 5, old, "t-1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StripeError::TimestampOutsideWindow { timestamp, .. } if timestamp == old),
        "{err:?}"
    );
}

#[tokio::test]
async fn meters_are_created_once_and_listed_by_status() {
    let setup = Setup::new().await;
    let client = setup.client();
    let a = setup.meter(&client, "a").await;
    // A repeated setup run gets the same meter back (same idempotency key).
    assert_eq!(setup.meter(&client, "a").await, a);
    let b = setup.meter(&client, "b").await;
    let all = client.list_meters(None).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![b.clone(), a.clone()]
    );
    assert!(all
        .iter()
        .all(|m| m.status == MeterStatus::Active && m.default_aggregation.formula == Formula::Sum));
    assert_eq!(
        all[0].customer_mapping.event_payload_key,
        "stripe_customer_id"
    );
    assert!(client
        .list_meters(Some(MeterStatus::Inactive))
        .await
        .unwrap()
        .is_empty());
}
