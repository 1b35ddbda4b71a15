//! The Stripe fake against Stripe's own spec excerpt
//! (`tests/fixtures/stripe-meter-api.json`): answers validate against the spec's
//! schemas, have the shape of Stripe's sample objects, parameters are checked as the
//! request schemas say, and errors follow Stripe's semantics.

mod support;

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use support::schema::{same_shape, Spec};
use turnpike_devtools::stripe_fake::{self, FakeConfig, RunningFake};

const KEY: &str = "sk_test_conformance_4242";

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Fake {
    running: RunningFake,
    http: reqwest::Client,
    spec: Spec,
}

impl Fake {
    async fn start() -> Fake {
        Fake::start_with(FakeConfig {
            api_keys: vec![KEY.to_owned()],
            state_file: None,
        })
        .await
    }

    async fn start_with(config: FakeConfig) -> Fake {
        let running = stripe_fake::start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        Fake {
            running,
            http: reqwest::Client::new(),
            spec: Spec::load(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.base_url())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap();
        let answer = Answer {
            status,
            headers,
            body,
        };
        // Every answer, success or error, carries a Request-Id.
        assert!(
            answer
                .header("request-id")
                .is_some_and(|id| id.starts_with("req_")),
            "no Request-Id: {:?}",
            answer.headers
        );
        answer
    }

    async fn post_with(
        &self,
        path: &str,
        body: &str,
        key: Option<&str>,
        idem: Option<&str>,
    ) -> Answer {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(idem) = idem {
            request = request.header("idempotency-key", idem);
        }
        self.send(request).await
    }

    async fn post(&self, path: &str, body: &str) -> Answer {
        self.post_with(path, body, Some(KEY), None).await
    }

    async fn get(&self, path_and_query: &str) -> Answer {
        self.send(self.http.get(self.url(path_and_query)).bearer_auth(KEY))
            .await
    }

    async fn admin(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    async fn dump(&self) -> Value {
        self.http
            .get(self.url("/_fake/events"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn now(&self) -> i64 {
        let clock: Value = self
            .http
            .get(self.url("/_fake/clock"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        clock["now"].as_i64().unwrap()
    }

    async fn meter(&self, event_name: &str, formula: &str) -> Value {
        let answer = self
            .post(
                "/v1/billing/meters",
                &format!(
                    "display_name=Meter+{event_name}&event_name={event_name}\
                     &default_aggregation[formula]={formula}"
                ),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }

    async fn event(
        &self,
        event_name: &str,
        identifier: &str,
        customer: &str,
        value: i64,
        timestamp: i64,
    ) -> Answer {
        self.post(
            "/v1/billing/meter_events",
            &format!(
                "event_name={event_name}&identifier={identifier}&timestamp={timestamp}\
                 &payload[stripe_customer_id]={customer}&payload[value]={value}"
            ),
        )
        .await
    }

    /// A 200 whose body validates against `schema` and, if given, has the shape of
    /// Stripe's sample object.
    fn assert_object(&self, answer: &Answer, schema: &Value, fixture: Option<&str>) {
        assert_eq!(answer.status, 200, "{}", answer.body);
        let errors = self.spec.check(schema, &answer.body);
        assert!(errors.is_empty(), "{errors:#?}\n{}", answer.body);
        if let Some(name) = fixture {
            let mut errors = Vec::new();
            same_shape(&answer.body, self.spec.fixture(name), "$", &mut errors);
            assert!(errors.is_empty(), "{errors:#?}");
        }
    }

    /// A Stripe error: status, `type`, `code`, `param`, and a body valid against the
    /// spec's `error` schema.
    fn assert_error(
        &self,
        answer: &Answer,
        status: u16,
        kind: &str,
        code: Option<&str>,
        param: Option<&str>,
    ) {
        assert_eq!(answer.status, status, "{}", answer.body);
        let errors = self.spec.check(self.spec.component("error"), &answer.body);
        assert!(errors.is_empty(), "{errors:#?}\n{}", answer.body);
        let error = &answer.body["error"];
        assert_eq!(error["type"], kind, "{}", answer.body);
        assert_eq!(error["code"].as_str(), code, "{}", answer.body);
        assert_eq!(error["param"].as_str(), param, "{}", answer.body);
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

/// The start of the UTC day two days before `now`: inside the 35-day horizon and
/// aligned for hour and day grouping.
fn two_days_ago(now: i64) -> i64 {
    (now.div_euclid(86_400) - 2) * 86_400
}

// --- The checker itself -----------------------------------------------------

#[test]
fn schema_checker_accepts_stripes_samples_and_catches_violations() {
    let spec = Spec::load();
    for (fixture, schema) in [
        ("billing.meter", "billing.meter"),
        ("billing.meter_event", "billing.meter_event"),
        (
            "billing.meter_event_adjustment",
            "billing.meter_event_adjustment",
        ),
        ("billing.meter_event_summary", "billing.meter_event_summary"),
    ] {
        let errors = spec.check(spec.component(schema), spec.fixture(fixture));
        assert!(errors.is_empty(), "{fixture}: {errors:#?}");
    }
    let meter = spec.component("billing.meter");
    let sample = spec.fixture("billing.meter").clone();
    type Mutation = fn(&mut Value);
    let mutations: [(&str, Mutation); 7] = [
        ("missing required", |v| {
            v.as_object_mut().unwrap().remove("status_transitions");
        }),
        ("enum", |v| v["status"] = json!("archived")),
        ("type", |v| v["created"] = json!("yesterday")),
        ("not nullable", |v| v["display_name"] = Value::Null),
        ("nested enum via $ref", |v| {
            v["default_aggregation"]["formula"] = json!("max")
        }),
        ("unknown field", |v| v["color"] = json!("blue")),
        ("maxLength", |v| v["display_name"] = json!("x".repeat(5001))),
    ];
    for (what, mutate) in mutations {
        let mut bad = sample.clone();
        mutate(&mut bad);
        assert!(!spec.check(meter, &bad).is_empty(), "{what} not caught");
    }
    // anyOf + nullable: a cancel may be null, but not a string.
    let adjustment = spec.component("billing.meter_event_adjustment");
    let mut bad = spec.fixture("billing.meter_event_adjustment").clone();
    bad["cancel"] = Value::Null;
    assert!(spec.check(adjustment, &bad).is_empty());
    bad["cancel"] = json!("x");
    assert!(!spec.check(adjustment, &bad).is_empty());
    // pattern: the list url.
    let list = spec.response_schema("/v1/billing/meters", "get");
    let ok = json!({"object": "list", "data": [], "has_more": false, "url": "/v1/billing/meters"});
    assert!(spec.check(list, &ok).is_empty());
    let bad = json!({"object": "list", "data": [], "has_more": false, "url": "/v2/other"});
    assert!(!spec.check(list, &bad).is_empty());
}

// --- Objects ----------------------------------------------------------------

#[tokio::test]
async fn meter_routes_answer_spec_valid_meters_shaped_like_stripes() {
    let fake = Fake::start().await;
    let schema = fake.spec.component("billing.meter");
    let created = fake
        .post(
            "/v1/billing/meters",
            "display_name=API+calls&event_name=api_calls&default_aggregation[formula]=sum\
             &customer_mapping[event_payload_key]=customer&customer_mapping[type]=by_id\
             &value_settings[event_payload_key]=calls&event_time_window=hour",
        )
        .await;
    fake.assert_object(&created, schema, Some("billing.meter"));
    assert_eq!(
        created.body["customer_mapping"]["event_payload_key"],
        "customer"
    );
    assert_eq!(created.body["value_settings"]["event_payload_key"], "calls");
    assert_eq!(created.body["event_time_window"], "hour");
    let id = created.body["id"].as_str().unwrap().to_owned();

    let fetched = fake.get(&format!("/v1/billing/meters/{id}")).await;
    fake.assert_object(&fetched, schema, Some("billing.meter"));
    assert_eq!(fetched.body, created.body);

    let updated = fake
        .post(&format!("/v1/billing/meters/{id}"), "display_name=Renamed")
        .await;
    fake.assert_object(&updated, schema, Some("billing.meter"));
    assert_eq!(updated.body["display_name"], "Renamed");

    let off = fake
        .post(&format!("/v1/billing/meters/{id}/deactivate"), "")
        .await;
    fake.assert_object(&off, schema, Some("billing.meter"));
    assert_eq!(off.body["status"], "inactive");
    assert!(off.body["status_transitions"]["deactivated_at"].is_i64());

    let on = fake
        .post(&format!("/v1/billing/meters/{id}/reactivate"), "")
        .await;
    fake.assert_object(&on, schema, Some("billing.meter"));
    assert_eq!(on.body["status"], "active");
    assert!(on.body["status_transitions"]["deactivated_at"].is_null());

    let list = fake.get("/v1/billing/meters").await;
    fake.assert_object(
        &list,
        fake.spec.response_schema("/v1/billing/meters", "get"),
        None,
    );
    assert_eq!(list.body["data"][0]["id"], id.as_str());

    let missing = fake.get("/v1/billing/meters/mtr_nope").await;
    fake.assert_error(
        &missing,
        404,
        "invalid_request_error",
        Some("resource_missing"),
        Some("id"),
    );
}

#[tokio::test]
async fn meter_events_and_adjustments_are_spec_valid_and_shaped_like_stripes() {
    let fake = Fake::start().await;
    fake.meter("api_request", "sum").await;
    let now = fake.now().await;
    let event = fake
        .event("api_request", "1234-1234", "cus_123", 25, now - 60)
        .await;
    fake.assert_object(
        &event,
        fake.spec.component("billing.meter_event"),
        Some("billing.meter_event"),
    );
    assert_eq!(
        event.body["payload"],
        json!({"stripe_customer_id": "cus_123", "value": "25"})
    );
    assert_eq!(event.body["timestamp"], now - 60);
    assert_eq!(event.body["livemode"], false);

    // Without identifier and timestamp Stripe fills both in.
    let bare = fake
        .post(
            "/v1/billing/meter_events",
            "event_name=api_request&payload[stripe_customer_id]=cus_1&payload[value]=1",
        )
        .await;
    fake.assert_object(
        &bare,
        fake.spec.component("billing.meter_event"),
        Some("billing.meter_event"),
    );
    assert!(!bare.body["identifier"].as_str().unwrap().is_empty());
    assert!((bare.body["timestamp"].as_i64().unwrap() - now).abs() < 60);

    let cancel = fake
        .post(
            "/v1/billing/meter_event_adjustments",
            "event_name=api_request&type=cancel&cancel[identifier]=1234-1234",
        )
        .await;
    fake.assert_object(
        &cancel,
        fake.spec.component("billing.meter_event_adjustment"),
        Some("billing.meter_event_adjustment"),
    );
    assert_eq!(cancel.body["cancel"]["identifier"], "1234-1234");
    let dump = fake.dump().await;
    assert!(dump["events"][0]["cancelled_at"].is_i64());
    assert!(dump["events"][1]["cancelled_at"].is_null());
}

#[tokio::test]
async fn event_summaries_sum_count_and_last_per_hour_and_day() {
    let fake = Fake::start().await;
    let sum = fake.meter("tokens", "sum").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = fake.now().await;
    let day = two_days_ago(now);
    for (id, customer, value, at) in [
        ("e1", "cus_a", 5, day),
        ("e2", "cus_a", 7, day + 3599),
        ("e3", "cus_a", 11, day + 3600),
        ("e4", "cus_b", 100, day + 10),
        ("e5", "cus_a", 13, day + 86_400 + 1),
        ("e6", "cus_a", 1000, day + 20),
    ] {
        assert_eq!(
            fake.event("tokens", id, customer, value, at).await.status,
            200
        );
    }
    fake.post(
        "/v1/billing/meter_event_adjustments",
        "event_name=tokens&type=cancel&cancel[identifier]=e6",
    )
    .await;

    let path = format!("/v1/billing/meters/{sum}/event_summaries");
    let list_schema = fake
        .spec
        .response_schema("/v1/billing/meters/{id}/event_summaries", "get");
    let hourly = fake
        .get(&format!(
            "{path}?customer=cus_a&start_time={day}&end_time={}&value_grouping_window=hour&limit=3",
            day + 3 * 3600
        ))
        .await;
    fake.assert_object(&hourly, list_schema, None);
    let mut errors = Vec::new();
    same_shape(
        &hourly.body["data"][0],
        fake.spec.fixture("billing.meter_event_summary"),
        "$",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:#?}");
    let values: Vec<(i64, i64, i64)> = hourly.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["start_time"].as_i64().unwrap(),
                s["end_time"].as_i64().unwrap(),
                s["aggregated_value"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        values,
        vec![
            (day, day + 3600, 12),
            (day + 3600, day + 7200, 11),
            (day + 7200, day + 10_800, 0)
        ]
    );
    assert_eq!(hourly.body["url"], path.as_str());

    let daily = fake
        .get(&format!(
            "{path}?customer=cus_a&start_time={day}&end_time={}&value_grouping_window=day",
            day + 2 * 86_400
        ))
        .await;
    fake.assert_object(&daily, list_schema, None);
    let per_day: Vec<i64> = daily.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["aggregated_value"].as_i64().unwrap())
        .collect();
    assert_eq!(per_day, vec![23, 13]);

    let whole = fake
        .get(&format!(
            "{path}?customer=cus_b&start_time={day}&end_time={}",
            day + 60
        ))
        .await;
    assert_eq!(whole.body["data"][0]["aggregated_value"], 100);

    // count and last over the same kind of events.
    let count = fake.meter("requests", "count").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let last = fake.meter("seats", "last").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (name, id, value, at) in [
        ("requests", "r1", 4, day + 5),
        ("requests", "r2", 9, day + 6),
        ("seats", "s1", 40, day + 50),
        ("seats", "s2", 30, day + 90),
        ("seats", "s3", 20, day + 70),
    ] {
        assert_eq!(fake.event(name, id, "cus_a", value, at).await.status, 200);
    }
    let one = |meter: String| {
        let fake = &fake;
        async move {
            let answer = fake
                .get(&format!(
                    "/v1/billing/meters/{meter}/event_summaries?customer=cus_a&start_time={day}&end_time={}",
                    day + 3600
                ))
                .await;
            answer.body["data"][0]["aggregated_value"].as_i64().unwrap()
        }
    };
    assert_eq!(one(count).await, 2);
    // `last` takes the latest by event time (s2 at +90), not the last to arrive.
    assert_eq!(one(last).await, 30);
}

#[tokio::test]
async fn lists_page_with_limit_cursors_and_has_more() {
    let fake = Fake::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            fake.meter(&format!("m{i}"), "sum").await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    ids.reverse(); // Stripe lists newest first.
    let first = fake.get("/v1/billing/meters?limit=2").await;
    let page = |answer: &Answer| -> Vec<String> {
        answer.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(page(&first), ids[..2]);
    assert_eq!(first.body["has_more"], true);
    let second = fake
        .get(&format!(
            "/v1/billing/meters?limit=2&starting_after={}",
            ids[1]
        ))
        .await;
    assert_eq!(page(&second), ids[2..4]);
    let last = fake
        .get(&format!(
            "/v1/billing/meters?limit=2&starting_after={}",
            ids[3]
        ))
        .await;
    assert_eq!(
        (page(&last), last.body["has_more"].clone()),
        (ids[4..].to_vec(), json!(false))
    );
    let back = fake
        .get(&format!(
            "/v1/billing/meters?limit=2&ending_before={}",
            ids[4]
        ))
        .await;
    assert_eq!(page(&back), ids[2..4]);

    let inactive = fake.get("/v1/billing/meters?status=inactive").await;
    assert_eq!(inactive.body["data"], json!([]));
    let both = fake
        .get(&format!(
            "/v1/billing/meters?starting_after={}&ending_before={}",
            ids[0], ids[1]
        ))
        .await;
    fake.assert_error(
        &both,
        400,
        "invalid_request_error",
        Some("parameters_exclusive"),
        Some("ending_before"),
    );
    let too_many = fake.get("/v1/billing/meters?limit=101").await;
    fake.assert_error(&too_many, 400, "invalid_request_error", None, Some("limit"));
}

// --- Parameters, checked against the spec's request schemas ------------------

/// Each POST route with a valid request body to mutate.
async fn post_routes(fake: &Fake) -> Vec<(&'static str, String, String)> {
    let meter = fake.meter("params", "sum").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = fake.now().await;
    vec![
        (
            "/v1/billing/meters",
            "/v1/billing/meters".to_owned(),
            "display_name=D&event_name=fresh&default_aggregation[formula]=sum\
             &customer_mapping[event_payload_key]=stripe_customer_id&customer_mapping[type]=by_id\
             &value_settings[event_payload_key]=value&event_time_window=day"
                .to_owned(),
        ),
        ("/v1/billing/meters/{id}", format!("/v1/billing/meters/{meter}"), "display_name=D".to_owned()),
        (
            "/v1/billing/meter_events",
            "/v1/billing/meter_events".to_owned(),
            format!("event_name=params&identifier=i-1&timestamp={now}&payload[stripe_customer_id]=cus_1&payload[value]=1"),
        ),
        (
            "/v1/billing/meter_event_adjustments",
            "/v1/billing/meter_event_adjustments".to_owned(),
            "event_name=params&type=cancel&cancel[identifier]=i-1".to_owned(),
        ),
    ]
}

/// One scalar parameter of a request schema.
struct ScalarParam {
    /// Bracket name: `cancel[identifier]`.
    name: String,
    schema: Value,
    required: bool,
    /// For a nested parameter: its object's name and whether that is required.
    parent: Option<(String, bool)>,
}

fn scalar_params(schema: &Value, parent: Option<(String, bool)>, out: &mut Vec<ScalarParam>) {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (name, sub) in schema["properties"].as_object().into_iter().flatten() {
        let is_required = required.contains(&name.as_str());
        let full = match &parent {
            None => name.clone(),
            Some((p, _)) => format!("{p}[{name}]"),
        };
        match sub["type"].as_str() {
            Some("object") if sub.get("properties").is_some() => {
                scalar_params(sub, Some((full, is_required)), out)
            }
            Some("string" | "integer") => out.push(ScalarParam {
                name: full,
                schema: sub.clone(),
                required: is_required,
                parent: parent.clone(),
            }),
            _ => {}
        }
    }
}

/// Replaces (or, with `None`, removes) one `name=value` pair of a form body.
fn with_param(body: &str, name: &str, value: Option<&str>) -> String {
    let encoded = |s: &str| s.replace('[', "%5B").replace(']', "%5D");
    let mut pairs: Vec<String> = body
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            key != name && key != encoded(name)
        })
        .map(str::to_owned)
        .collect();
    if let Some(value) = value {
        pairs.push(format!("{name}={value}"));
    }
    pairs.join("&")
}

#[tokio::test]
async fn post_parameters_are_checked_as_the_spec_request_schemas_say() {
    let fake = Fake::start().await;
    for (spec_path, path, valid) in post_routes(&fake).await {
        let schema = &fake.spec.operation(spec_path, "post")["requestBody"]["content"]
            ["application/x-www-form-urlencoded"]["schema"];
        // The valid body itself goes through (first: the cancel needs the event
        // the previous route created, and meter names must stay unused until here).
        let answer = fake.post(&path, &valid).await;
        assert_eq!(answer.status, 200, "{spec_path}: {}", answer.body);
        let mut params = Vec::new();
        scalar_params(schema, None, &mut params);
        assert!(!params.is_empty(), "{spec_path}");
        for ScalarParam {
            name,
            schema: sub,
            required,
            parent,
        } in &params
        {
            if *required {
                let without = with_param(&valid, name, None);
                // Removing an object's only field removes the object: then the
                // object itself is what is missing (or nothing, if it is optional).
                let expected = match parent {
                    Some((p, p_required)) if !without.contains(&format!("{p}[")) => {
                        p_required.then(|| p.clone())
                    }
                    _ => Some(name.clone()),
                };
                if let Some(expected) = expected {
                    let answer = fake.post(&path, &without).await;
                    fake.assert_error(
                        &answer,
                        400,
                        "invalid_request_error",
                        Some("parameter_missing"),
                        Some(&expected),
                    );
                }
            }
            if let Some(max) = sub["maxLength"].as_u64() {
                let long = "x".repeat(max as usize + 1);
                let answer = fake
                    .post(&path, &with_param(&valid, name, Some(&long)))
                    .await;
                fake.assert_error(&answer, 400, "invalid_request_error", None, Some(name));
                assert!(answer.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("at most {max} characters")));
            }
            if let Some(allowed) = sub["enum"].as_array() {
                let answer = fake
                    .post(&path, &with_param(&valid, name, Some("bogus")))
                    .await;
                fake.assert_error(&answer, 400, "invalid_request_error", None, Some(name));
                for value in allowed {
                    let value = value.as_str().unwrap();
                    let answer = fake
                        .post(&path, &with_param(&valid, name, Some(value)))
                        .await;
                    assert_ne!(
                        answer.body["error"]["param"],
                        json!(name),
                        "{name}={value} refused: {}",
                        answer.body
                    );
                }
            }
            if sub["type"] == "integer" {
                let answer = fake
                    .post(&path, &with_param(&valid, name, Some("soon")))
                    .await;
                fake.assert_error(
                    &answer,
                    400,
                    "invalid_request_error",
                    Some("parameter_invalid_integer"),
                    Some(name),
                );
            }
            let answer = fake.post(&path, &with_param(&valid, name, Some(""))).await;
            fake.assert_error(
                &answer,
                400,
                "invalid_request_error",
                Some("parameter_invalid_empty"),
                Some(name),
            );
        }
        // additionalProperties: false, at the top and inside nested objects.
        let answer = fake.post(&path, &format!("{valid}&bogus=1")).await;
        fake.assert_error(
            &answer,
            400,
            "invalid_request_error",
            Some("parameter_unknown"),
            Some("bogus"),
        );
        assert_eq!(
            answer.body["error"]["message"],
            "Received unknown parameter: bogus"
        );
    }
    let nested = fake
        .post(
            "/v1/billing/meter_event_adjustments",
            "event_name=params&type=cancel&cancel[identifier]=x&cancel[reason]=y",
        )
        .await;
    fake.assert_error(
        &nested,
        400,
        "invalid_request_error",
        Some("parameter_unknown"),
        Some("cancel[reason]"),
    );
}

#[tokio::test]
async fn summary_query_parameters_are_checked_as_the_spec_says() {
    let fake = Fake::start().await;
    let meter = fake.meter("q", "sum").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let day = two_days_ago(fake.now().await);
    let base = format!("/v1/billing/meters/{meter}/event_summaries");
    let valid = format!("customer=cus_1&start_time={day}&end_time={}", day + 3600);
    let operation = fake
        .spec
        .operation("/v1/billing/meters/{id}/event_summaries", "get");
    for parameter in operation["parameters"].as_array().unwrap() {
        let name = parameter["name"].as_str().unwrap();
        if parameter["in"] != "query" {
            continue;
        }
        if parameter["required"] == true {
            let answer = fake
                .get(&format!("{base}?{}", with_param(&valid, name, None)))
                .await;
            fake.assert_error(
                &answer,
                400,
                "invalid_request_error",
                Some("parameter_missing"),
                Some(name),
            );
        }
        if parameter["schema"]["enum"].is_array() {
            let answer = fake.get(&format!("{base}?{valid}&{name}=bogus")).await;
            fake.assert_error(&answer, 400, "invalid_request_error", None, Some(name));
        }
    }
    let unaligned = fake
        .get(&format!(
            "{base}?customer=c&start_time={}&end_time={}",
            day + 30,
            day + 3600
        ))
        .await;
    fake.assert_error(
        &unaligned,
        400,
        "invalid_request_error",
        None,
        Some("start_time"),
    );
    let not_hourly = fake
        .get(&format!(
            "{base}?customer=c&start_time={day}&end_time={}&value_grouping_window=hour",
            day + 60
        ))
        .await;
    fake.assert_error(
        &not_hourly,
        400,
        "invalid_request_error",
        None,
        Some("end_time"),
    );
    let unknown = fake.get(&format!("{base}?{valid}&granularity=hour")).await;
    fake.assert_error(
        &unknown,
        400,
        "invalid_request_error",
        Some("parameter_unknown"),
        Some("granularity"),
    );
}

// --- Stripe's rules -----------------------------------------------------------

#[tokio::test]
async fn a_repeated_identifier_is_refused_as_stripe_does_until_24_hours_pass() {
    let fake = Fake::start().await;
    fake.meter("api", "sum").await;
    let now = fake.now().await;
    assert_eq!(
        fake.event("api", "org-1:hour-5", "cus_1", 3, now)
            .await
            .status,
        200
    );
    let again = fake.event("api", "org-1:hour-5", "cus_1", 3, now).await;
    fake.assert_error(
        &again,
        400,
        "invalid_request_error",
        None,
        Some("identifier"),
    );
    assert_eq!(
        again.body["error"]["message"],
        "An event already exists with identifier org-1:hour-5."
    );
    assert_eq!(again.header("stripe-should-retry"), Some("false"));
    // Uniqueness is promised for at least 24 hours; the fake gives no more.
    fake.admin("/_fake/clock", json!({"advance_secs": 24 * 3600}))
        .await;
    let later = fake.now().await;
    assert_eq!(
        fake.event("api", "org-1:hour-5", "cus_1", 3, later)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn timestamps_outside_35_days_back_or_5_minutes_ahead_are_refused() {
    let fake = Fake::start().await;
    fake.meter("api", "sum").await;
    let now = fake.now().await;
    let horizon = 35 * 86_400;
    // The edges, with a minute of slack for the clock moving during the test.
    assert_eq!(
        fake.event("api", "old-ok", "c", 1, now - horizon + 60)
            .await
            .status,
        200
    );
    assert_eq!(
        fake.event("api", "new-ok", "c", 1, now + 240).await.status,
        200
    );
    let old = fake.event("api", "old", "c", 1, now - horizon - 60).await;
    fake.assert_error(&old, 400, "invalid_request_error", None, Some("timestamp"));
    let future = fake.event("api", "new", "c", 1, now + 360).await;
    fake.assert_error(
        &future,
        400,
        "invalid_request_error",
        None,
        Some("timestamp"),
    );
    // Refused at validation: the identifiers were not used up.
    assert_eq!(fake.event("api", "old", "c", 1, now).await.status, 200);
}

#[tokio::test]
async fn a_deactivated_meter_refuses_events_until_reactivated() {
    let fake = Fake::start().await;
    let id = fake.meter("api", "sum").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.post(&format!("/v1/billing/meters/{id}/deactivate"), "")
        .await;
    let now = fake.now().await;
    let refused = fake.event("api", "e1", "c", 1, now).await;
    fake.assert_error(
        &refused,
        400,
        "invalid_request_error",
        None,
        Some("event_name"),
    );
    let twice = fake
        .post(&format!("/v1/billing/meters/{id}/deactivate"), "")
        .await;
    fake.assert_error(
        &twice,
        400,
        "invalid_request_error",
        Some("status_transition_invalid"),
        None,
    );
    fake.post(&format!("/v1/billing/meters/{id}/reactivate"), "")
        .await;
    assert_eq!(fake.event("api", "e1", "c", 1, now).await.status, 200);
    // event_name is unique among active meters.
    let clash = fake
        .post(
            "/v1/billing/meters",
            "display_name=D&event_name=api&default_aggregation[formula]=sum",
        )
        .await;
    fake.assert_error(
        &clash,
        400,
        "invalid_request_error",
        Some("resource_already_exists"),
        Some("event_name"),
    );
}

#[tokio::test]
async fn a_cancel_is_refused_once_24_hours_passed_since_receipt() {
    let fake = Fake::start().await;
    fake.meter("api", "sum").await;
    let now = fake.now().await;
    fake.event("api", "early", "c", 1, now).await;
    fake.event("api", "late", "c", 1, now).await;
    let cancel = |id: &str| format!("event_name=api&type=cancel&cancel[identifier]={id}");
    fake.admin("/_fake/clock", json!({"advance_secs": 24 * 3600 - 120}))
        .await;
    assert_eq!(
        fake.post("/v1/billing/meter_event_adjustments", &cancel("early"))
            .await
            .status,
        200
    );
    fake.admin("/_fake/clock", json!({"advance_secs": 240}))
        .await;
    let refused = fake
        .post("/v1/billing/meter_event_adjustments", &cancel("late"))
        .await;
    fake.assert_error(
        &refused,
        400,
        "invalid_request_error",
        None,
        Some("cancel[identifier]"),
    );
    assert!(refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("within 24 hours"));
    let unknown = fake
        .post("/v1/billing/meter_event_adjustments", &cancel("never-sent"))
        .await;
    fake.assert_error(
        &unknown,
        404,
        "invalid_request_error",
        Some("resource_missing"),
        Some("cancel[identifier]"),
    );
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_and_basic_auth_with_the_key_works() {
    let fake = Fake::start().await;
    let path = "/v1/billing/meters";
    let body = "display_name=D&event_name=e&default_aggregation[formula]=sum";
    let none = fake.post_with(path, body, None, None).await;
    fake.assert_error(&none, 401, "invalid_request_error", None, None);
    assert!(none.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("You did not provide an API key."));
    let wrong = fake
        .post_with(path, body, Some("sk_test_wrong_0000"), None)
        .await;
    fake.assert_error(&wrong, 401, "invalid_request_error", None, None);
    assert_eq!(
        wrong.body["error"]["message"],
        "Invalid API Key provided: sk_test_******0000"
    );
    let publishable = fake.post_with(path, body, Some("pk_test_abc"), None).await;
    fake.assert_error(
        &publishable,
        401,
        "invalid_request_error",
        Some("secret_key_required"),
        None,
    );
    // Authentication comes before parameter checks.
    let both = fake.post_with(path, "bogus=1", None, None).await;
    assert_eq!(both.status, 401);

    let basic = fake
        .send(
            fake.http
                .get(fake.url("/v1/billing/meters"))
                .basic_auth(KEY, Some("")),
        )
        .await;
    assert_eq!(basic.status, 200, "{}", basic.body);
}

#[tokio::test]
async fn an_idempotent_retry_replays_the_stored_answer_and_other_params_are_an_idempotency_error() {
    let fake = Fake::start().await;
    fake.meter("api", "sum").await;
    let now = fake.now().await;
    let body = format!("event_name=api&identifier=i1&timestamp={now}&payload[stripe_customer_id]=c&payload[value]=5");
    let path = "/v1/billing/meter_events";
    let first = fake.post_with(path, &body, Some(KEY), Some("key-1")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotent-replayed"), None);
    let replay = fake.post_with(path, &body, Some(KEY), Some("key-1")).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        replay.header("original-request"),
        first.header("request-id")
    );
    assert_ne!(replay.header("request-id"), first.header("request-id"));

    let other = body.replace("payload[value]=5", "payload[value]=6");
    let mismatch = fake.post_with(path, &other, Some(KEY), Some("key-1")).await;
    fake.assert_error(&mismatch, 400, "idempotency_error", None, None);
    assert!(mismatch.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("same parameters"));
    let elsewhere = fake
        .post_with(
            "/v1/billing/meter_event_adjustments",
            "event_name=api&type=cancel&cancel[identifier]=i1",
            Some(KEY),
            Some("key-1"),
        )
        .await;
    fake.assert_error(&elsewhere, 400, "idempotency_error", None, None);

    // A business refusal is stored and replayed too; a validation failure is not.
    let dup = fake.post_with(path, &body, Some(KEY), Some("key-2")).await;
    let dup_again = fake.post_with(path, &body, Some(KEY), Some("key-2")).await;
    assert_eq!((dup.status, dup_again.status), (400, 400));
    assert_eq!(dup_again.header("idempotent-replayed"), Some("true"));
    assert_eq!(dup_again.header("stripe-should-retry"), Some("false"));
    let invalid = fake
        .post_with(path, "event_name=api", Some(KEY), Some("key-3"))
        .await;
    assert_eq!(invalid.status, 400);
    let fixed = fake
        .post_with(
            path,
            &body.replace("identifier=i1", "identifier=i3"),
            Some(KEY),
            Some("key-3"),
        )
        .await;
    assert_eq!(fixed.status, 200, "{}", fixed.body);

    // Keys expire after 24 hours.
    fake.admin("/_fake/clock", json!({"advance_secs": 24 * 3600}))
        .await;
    let expired = fake.post_with(path, &other, Some(KEY), Some("key-1")).await;
    assert_ne!(
        expired.body["error"]["type"], "idempotency_error",
        "{}",
        expired.body
    );
}

// --- Faults -------------------------------------------------------------------

#[tokio::test]
async fn injected_429_and_500_look_like_stripes_and_run_out() {
    let fake = Fake::start().await;
    fake.admin(
        "/_fake/faults",
        json!([
            {"kind": "rate_limit", "count": 2, "retry_after_secs": 3, "should_retry": true, "path": "/v1/billing/meters"},
            {"kind": "server_error", "status": 503, "method": "GET"},
        ]),
    )
    .await;
    let body = "display_name=D&event_name=e&default_aggregation[formula]=sum";
    for _ in 0..2 {
        let limited = fake.post("/v1/billing/meters", body).await;
        fake.assert_error(
            &limited,
            429,
            "invalid_request_error",
            Some("rate_limit"),
            None,
        );
        assert_eq!(limited.header("retry-after"), Some("3"));
        assert_eq!(limited.header("stripe-should-retry"), Some("true"));
    }
    assert_eq!(fake.post("/v1/billing/meters", body).await.status, 200);
    let broken = fake.get("/v1/billing/meters").await;
    fake.assert_error(&broken, 503, "api_error", None, None);
    assert_eq!(fake.get("/v1/billing/meters").await.status, 200);
}

#[tokio::test]
async fn a_dropped_answer_is_replayed_to_the_retry_with_the_same_key() {
    let fake = Fake::start().await;
    fake.meter("api", "sum").await;
    fake.admin(
        "/_fake/faults",
        json!({"kind": "drop", "path": "/v1/billing/meter_events"}),
    )
    .await;
    let now = fake.now().await;
    let body = format!("event_name=api&identifier=d1&timestamp={now}&payload[stripe_customer_id]=c&payload[value]=5");
    let lost = fake
        .http
        .post(fake.url("/v1/billing/meter_events"))
        .bearer_auth(KEY)
        .header("idempotency-key", "drop-1")
        .body(body.clone())
        .send()
        .await;
    assert!(lost.is_err(), "the connection should have closed: {lost:?}");
    // The event was recorded before the connection dropped.
    assert_eq!(fake.dump().await["events"].as_array().unwrap().len(), 1);
    let retry = fake
        .post_with("/v1/billing/meter_events", &body, Some(KEY), Some("drop-1"))
        .await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let log: Vec<Value> = fake
        .http
        .get(fake.url("/_fake/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events: Vec<&Value> = log
        .iter()
        .filter(|r| r["path"] == "/v1/billing/meter_events")
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0]["status"].clone(), events[0]["fault"].clone()),
        (json!(0), json!("drop"))
    );
    assert_eq!(events[1]["replayed"], true);
}

#[tokio::test]
async fn a_retry_while_the_first_request_runs_is_409_idempotency_key_in_use() {
    let fake = Fake::start().await;
    fake.meter("api", "sum").await;
    fake.admin(
        "/_fake/faults",
        json!({"kind": "delay", "ms": 1500, "path": "/v1/billing/meter_events"}),
    )
    .await;
    let now = fake.now().await;
    let body = format!("event_name=api&identifier=s1&timestamp={now}&payload[stripe_customer_id]=c&payload[value]=5");
    let slow = {
        let request = fake
            .http
            .post(fake.url("/v1/billing/meter_events"))
            .bearer_auth(KEY)
            .header("idempotency-key", "slow-1")
            .body(body.clone());
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    };
    // The delay rule is used up once the slow request is being held.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending: Value = fake
            .http
            .get(fake.url("/_fake/faults"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if pending == json!([]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = fake
        .post_with("/v1/billing/meter_events", &body, Some(KEY), Some("slow-1"))
        .await;
    fake.assert_error(
        &busy,
        409,
        "invalid_request_error",
        Some("idempotency_key_in_use"),
        None,
    );
    assert_eq!(busy.header("stripe-should-retry"), Some("true"));
    assert_eq!(slow.await.unwrap(), 200);
    let after = fake
        .post_with("/v1/billing/meter_events", &body, Some(KEY), Some("slow-1"))
        .await;
    assert_eq!(after.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn unknown_urls_are_stripes_404() {
    let fake = Fake::start().await;
    let answer = fake.get("/v1/billing/meter_events").await;
    fake.assert_error(&answer, 404, "invalid_request_error", None, None);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Unrecognized request URL (GET: /v1/billing/meter_events)"));
}

// --- The binary ---------------------------------------------------------------

/// Runs `turnpike-dev stripe-fake` and returns it with the address it listens on.
fn spawn_binary(state: &std::path::Path, key: &str) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_turnpike-dev"))
        .args(["stripe-fake", "--listen", "127.0.0.1:0", "--state"])
        .arg(state)
        .env("TURNPIKE_STRIPE_FAKE_KEY", key)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the fake exited before listening")
            .unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, format!("http://{addr}"))
}

#[tokio::test]
async fn the_binary_takes_its_key_from_the_environment_and_keeps_state_across_restarts() {
    let dir = std::env::temp_dir().join(format!("stripe-fake-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let _ = std::fs::remove_file(&state);
    let key = "sk_test_from_env";
    let http = reqwest::Client::new();
    let post = |base: String, path: &'static str, body: String| {
        let http = http.clone();
        async move {
            let response = http
                .post(format!("{base}{path}"))
                .bearer_auth(key)
                .body(body)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (mut first, base) = spawn_binary(&state, key);
    let (status, _) = post(
        base.clone(),
        "/v1/billing/meters",
        "display_name=D&event_name=api&default_aggregation[formula]=sum".into(),
    )
    .await;
    assert_eq!(status, 200);
    let event =
        "event_name=api&identifier=persisted&payload[stripe_customer_id]=c&payload[value]=1"
            .to_owned();
    assert_eq!(
        post(base.clone(), "/v1/billing/meter_events", event.clone())
            .await
            .0,
        200
    );
    first.kill().unwrap();
    first.wait().unwrap();

    let (mut second, base) = spawn_binary(&state, key);
    let (status, body) = post(base.clone(), "/v1/billing/meter_events", event).await;
    assert_eq!(
        (status, body["error"]["message"].clone()),
        (
            400,
            json!("An event already exists with identifier persisted.")
        )
    );
    let wrong = http
        .get(format!("{base}/v1/billing/meters"))
        .bearer_auth(stripe_fake::DEFAULT_API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    second.kill().unwrap();
    second.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
