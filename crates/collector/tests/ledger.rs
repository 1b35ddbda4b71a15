//! The collector binary against a real SQLite file and a real PostgreSQL server: every
//! test body below runs once per backend (see `backend_tests!` at the end).

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

async fn reposted_batch_is_stored_once(db: &TestDb) {
    let c = Collector::start(db, &[]).await;
    let client = reqwest::Client::new();
    let batch = events("r", "acme", 3);
    assert_eq!(
        post_batch(&client, &c, &batch).await,
        (
            200,
            json!({"accepted": 3, "duplicates": 0, "quarantined": 0})
        )
    );
    assert_eq!(
        post_batch(&client, &c, &batch).await,
        (
            200,
            json!({"accepted": 0, "duplicates": 3, "quarantined": 0})
        )
    );
    assert_eq!(db.count().await, 3);
}

async fn duplicates_inside_one_batch_are_stored_once(db: &TestDb) {
    let c = Collector::start(db, &[]).await;
    let client = reqwest::Client::new();
    let a = event(
        "a",
        "acme",
        "2026-03-01T00:00:00Z",
        "allowed",
        &[("requests", 1)],
    );
    let b = event(
        "b",
        "acme",
        "2026-03-01T00:00:00Z",
        "allowed",
        &[("requests", 1)],
    );
    let (status, body) = post_batch(&client, &c, &[a.clone(), b, a]).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"accepted": 2, "duplicates": 1, "quarantined": 0})
        )
    );
    assert_eq!(db.count().await, 2);
    // Billed once, too.
    let (_, usage) = get_json(
        &client,
        &c,
        "/v1/tenants/acme/usage?window=day&at=2026-03-01T12:00:00Z",
    )
    .await;
    assert_eq!(
        usage["meters"],
        json!([{"meter": "requests", "quantity": 2}])
    );
}

async fn ingest_works_over_h2c_prior_knowledge(db: &TestDb) {
    let c = Collector::start(db, &[]).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = client
        .post(c.url("/v1/events"))
        .bearer_auth(SECRET)
        .header("content-type", BATCH)
        .body(serde_json::to_vec(&events("h2", "acme", 2)).expect("json"))
        .send()
        .await
        .expect("h2c POST");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(db.count().await, 2);
}

/// A request the collector must refuse, and the answer it must give.
struct Refusal {
    what: &'static str,
    secret: Option<&'static str>,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    /// Problem type slug.
    kind: &'static str,
    /// Text the problem detail must contain.
    detail: &'static str,
}

impl Refusal {
    fn new(
        what: &'static str,
        body: Vec<u8>,
        status: u16,
        kind: &'static str,
        detail: &'static str,
    ) -> Self {
        Refusal {
            what,
            secret: Some(SECRET),
            content_type: BATCH,
            body,
            status,
            kind,
            detail,
        }
    }
}

async fn refused_requests_get_a_clear_4xx_and_store_nothing(db: &TestDb) {
    let c = Collector::start(
        db,
        &["--max-body-bytes", "20000", "--max-batch-events", "5"],
    )
    .await;
    let client = reqwest::Client::new();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let valid = serde_json::to_vec(&events("v", "acme", 2)).expect("json");
    let big: Vec<Value> = (0..200)
        .map(|i| {
            event(
                &format!("big-{i}"),
                "acme",
                "2026-03-01T00:00:00Z",
                "allowed",
                &[("requests", 1)],
            )
        })
        .collect();
    let json = |v: &Vec<Value>| serde_json::to_vec(v).expect("json");
    let cases = [
        Refusal::new(
            "malformed JSON",
            b"[{\"id\": ".to_vec(),
            400,
            "malformed-json",
            "",
        ),
        Refusal::new("oversized body", json(&big), 413, "body-too-large", "20000"),
        Refusal::new(
            "too-long batch",
            json(&events("l", "acme", 6)),
            413,
            "batch-too-long",
            "6 events",
        ),
        Refusal {
            secret: Some("guess"),
            ..Refusal::new("wrong secret", valid.clone(), 401, "unauthorized", "")
        },
        Refusal {
            secret: None,
            ..Refusal::new("missing secret", valid.clone(), 401, "unauthorized", "")
        },
        Refusal {
            content_type: "application/json",
            ..Refusal::new(
                "wrong content type",
                valid.clone(),
                415,
                "unsupported-media-type",
                "",
            )
        },
    ];
    for Refusal {
        what,
        secret,
        content_type,
        body,
        status,
        kind,
        detail,
    } in cases
    {
        // The collector answers 413 without reading the rest of an oversized body. Over
        // HTTP/1.1 the client may still be writing when the connection closes and lose
        // the answer; HTTP/2 (what Envoy's collector cluster speaks) delivers it.
        let via = if what == "oversized body" {
            &h2
        } else {
            &client
        };
        let response = {
            let mut r = via
                .post(c.url("/v1/events"))
                .header("content-type", content_type)
                .body(body);
            if let Some(secret) = secret {
                r = r.bearer_auth(secret);
            }
            r.send().await.unwrap_or_else(|e| panic!("{what}: {e}"))
        };
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let problem: Value = response.json().await.expect("problem json");
        assert_eq!(
            problem["type"],
            format!("https://turnpike.dev/problems/{kind}"),
            "{what}"
        );
        assert_eq!(problem["status"], status, "{what}");
        let text = problem["detail"].as_str().unwrap_or_default();
        assert!(
            text.contains(detail),
            "{what}: detail {text:?} should mention {detail:?}"
        );
    }
    assert_eq!(db.count().await, 0, "a refused request must store nothing");
    let metrics = client
        .get(c.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for reason in [
        "malformed_json",
        "body_too_large",
        "batch_too_long",
        "unsupported_media_type",
    ] {
        assert!(
            metrics.contains(&format!("requests_rejected_total{{reason=\"{reason}\"}} 1")),
            "{reason}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("requests_rejected_total{reason=\"unauthorized\"} 2"),
        "{metrics}"
    );
}

async fn one_bad_event_is_quarantined_and_its_neighbours_are_stored(db: &TestDb) {
    let c = Collector::start(db, &[]).await;
    let client = reqwest::Client::new();
    let mut batch = events("q", "acme", 500);
    batch[137]["time"] = json!("yesterday");
    let (status, body) = post_batch(&client, &c, &batch).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"accepted": 499, "duplicates": 0, "quarantined": 1})
        )
    );
    assert_eq!(db.count().await, 499);
    let (status, listed) = get_json(&client, &c, "/v1/quarantine").await;
    assert_eq!(status, 200, "{listed}");
    let bad = &listed["events"][0];
    assert_eq!(bad["field"], "events[137].time", "{listed}");
    assert!(
        bad["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("yesterday"),
        "{listed}"
    );
    assert!(
        bad["raw"].as_str().unwrap_or_default().contains("q-137"),
        "{listed}"
    );
    assert_eq!(listed["events"].as_array().map(Vec::len), Some(1));
    let metrics = client
        .get(c.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("events_quarantined_total{origin=\"events\"} 1"),
        "{metrics}"
    );
    // The same batch again: nothing new, and the bad event is quarantined again (it
    // is the proxy's problem to fix, and the count shows it).
    let (_, body) = post_batch(&client, &c, &batch).await;
    assert_eq!(
        body,
        json!({"accepted": 0, "duplicates": 499, "quarantined": 1})
    );
}

async fn unusual_methods_are_stored_as_other(db: &TestDb) {
    let c = Collector::start(db, &[]).await;
    let client = reqwest::Client::new();
    let mut batch = events("m", "acme", 3);
    batch[1]["data"]["method"] = json!("X-FOO");
    let (status, body) = post_batch(&client, &c, &batch).await;
    assert_eq!((status, body["accepted"].clone()), (200, json!(3)));
    let (_, page) = get_json(&client, &c, "/v1/tenants/acme/events").await;
    let methods: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["GET", "OTHER", "GET"]);
}

async fn aggregates_sum_billable_usage_across_hour_day_and_month_boundaries(db: &TestDb) {
    let plans = write_file(
        db.dir.path(),
        "plans.toml",
        r#"
default_plan = "free"
[plans.free]
limits = [ { name = "monthly", meter = "requests", window = "month", max = 1000000 } ]
[tenants.acme]
anchor_day = 31
"#,
    );
    let c = Collector::start(db, &["--plans", plans.to_str().expect("utf-8 path")]).await;
    let client = reqwest::Client::new();
    let ev = |id: &str, time: &str, decision: &str, meters: &[(&str, u64)]| {
        event(id, "acme", time, decision, meters)
    };
    let batch = vec![
        ev(
            "dec",
            "2026-01-30T23:59:59Z",
            "allowed",
            &[("requests", 32)],
        ),
        ev(
            "jan31",
            "2026-01-31T00:00:00Z",
            "allowed",
            &[("requests", 64)],
        ),
        ev(
            "h22",
            "2026-02-27T22:59:59.999Z",
            "allowed",
            &[("requests", 1), ("search_units", 5)],
        ),
        ev(
            "h23a",
            "2026-02-27T23:00:00Z",
            "allowed",
            &[("requests", 2)],
        ),
        ev(
            "h23b",
            "2026-02-27T23:59:59.999Z",
            "unverified",
            &[("requests", 4)],
        ),
        // 00:30 at +01:00 is 23:30 UTC on the 27th.
        ev(
            "offset",
            "2026-02-28T00:30:00+01:00",
            "allowed",
            &[("requests", 16)],
        ),
        ev(
            "denied",
            "2026-02-27T23:10:00Z",
            "denied",
            &[("requests", 100)],
        ),
        ev(
            "feb28",
            "2026-02-28T00:00:00Z",
            "allowed",
            &[("requests", 8)],
        ),
    ];
    assert_eq!(post_batch(&client, &c, &batch).await.0, 200);
    let usage = |window: &'static str, at: &'static str| {
        let client = client.clone();
        let c = &c;
        async move {
            let (status, body) = get_json(
                &client,
                c,
                &format!("/v1/tenants/acme/usage?window={window}&at={at}"),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    let quantities = |body: &Value| -> Vec<(String, i64)> {
        body["meters"]
            .as_array()
            .expect("meters")
            .iter()
            .map(|m| {
                (
                    m["meter"].as_str().expect("meter").to_owned(),
                    m["quantity"].as_i64().expect("qty"),
                )
            })
            .collect()
    };
    let req = |n: i64| vec![("requests".to_owned(), n)];

    let h = usage("hour", "2026-02-27T22:30:00Z").await;
    assert_eq!(
        quantities(&h),
        vec![("requests".to_owned(), 1), ("search_units".to_owned(), 5)]
    );
    let h = usage("hour", "2026-02-27T23:30:00Z").await;
    assert_eq!(
        (h["start"].clone(), h["end"].clone()),
        (json!("2026-02-27T23:00:00Z"), json!("2026-02-28T00:00:00Z"))
    );
    assert_eq!(
        quantities(&h),
        req(2 + 4 + 16),
        "denied usage is not billed"
    );

    let d = usage("day", "2026-02-27T12:00:00Z").await;
    assert_eq!(
        quantities(&d),
        vec![
            ("requests".to_owned(), 1 + 2 + 4 + 16),
            ("search_units".to_owned(), 5)
        ]
    );
    assert_eq!(
        quantities(&usage("day", "2026-02-28T12:00:00Z").await),
        req(8)
    );

    // Anchor day 31: the billing month runs Jan 31 .. Feb 28, then Feb 28 .. Mar 31.
    let m = usage("month", "2026-02-15T00:00:00Z").await;
    assert_eq!(
        (m["start"].clone(), m["end"].clone()),
        (json!("2026-01-31T00:00:00Z"), json!("2026-02-28T00:00:00Z"))
    );
    assert_eq!(m["anchor_day"], 31);
    assert_eq!(
        quantities(&m),
        vec![
            ("requests".to_owned(), 64 + 1 + 2 + 4 + 16),
            ("search_units".to_owned(), 5)
        ]
    );
    let m = usage("month", "2026-02-28T05:00:00Z").await;
    assert_eq!(
        (m["start"].clone(), m["end"].clone()),
        (json!("2026-02-28T00:00:00Z"), json!("2026-03-31T00:00:00Z"))
    );
    assert_eq!(quantities(&m), req(8));
    assert_eq!(
        quantities(&usage("month", "2026-01-30T00:00:00Z").await),
        req(32)
    );

    // A tenant without an override bills by calendar month (the plan's anchor, day 1).
    let (status, body) = get_json(
        &client,
        &c,
        "/v1/tenants/beta/usage?window=month&at=2026-02-15T00:00:00Z",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["start"].clone(), body["end"].clone()),
        (json!("2026-02-01T00:00:00Z"), json!("2026-03-01T00:00:00Z"))
    );
    assert_eq!(body["meters"], json!([]));

    let (status, body) = get_json(&client, &c, "/v1/tenants/acme/usage?window=week").await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("window"),
        "{body}"
    );
}

async fn denied_events_are_listed_but_not_billed(db: &TestDb) {
    let c = Collector::start(db, &[]).await;
    let client = reqwest::Client::new();
    let batch = vec![
        event(
            "ok",
            "acme",
            "2026-03-01T10:00:00Z",
            "allowed",
            &[("requests", 1)],
        ),
        event(
            "no",
            "acme",
            "2026-03-01T10:00:01Z",
            "denied",
            &[("requests", 1)],
        ),
    ];
    assert_eq!(post_batch(&client, &c, &batch).await.0, 200);
    let (_, page) = get_json(&client, &c, "/v1/tenants/acme/events").await;
    let mut listed: Vec<(String, Value, Value, Value)> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or_default().to_owned(),
                e["decision"].clone(),
                e["billable"].clone(),
                e["status"].clone(),
            )
        })
        .collect();
    listed.sort_by(|a, b| b.0.cmp(&a.0));
    assert_eq!(
        listed,
        vec![
            ("ok".to_owned(), json!("allowed"), json!(true), json!(200)),
            ("no".to_owned(), json!("denied"), json!(false), json!(429))
        ]
    );
    let (_, usage) = get_json(
        &client,
        &c,
        "/v1/tenants/acme/usage?window=hour&at=2026-03-01T10:30:00Z",
    )
    .await;
    assert_eq!(
        usage["meters"],
        json!([{"meter": "requests", "quantity": 1}])
    );
}

async fn paging_returns_every_event_exactly_once(db: &TestDb) {
    let c = Collector::start(db, &[]).await;
    let client = reqwest::Client::new();
    let all = events("p", "acme", 250);
    assert_eq!(post_batch(&client, &c, &all[..125]).await.0, 200);
    assert_eq!(post_batch(&client, &c, &all[125..]).await.0, 200);
    assert_eq!(
        post_batch(&client, &c, &events("x", "other-tenant", 5))
            .await
            .0,
        200
    );

    // Read to the end, page by page; the last page still hands back a cursor.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = tail(&client, &c, None, &mut seen).await;
    assert_eq!(seen.len(), 250);

    // Late events (old timestamps, e.g. after an outage) and a change to an event
    // already read come after the cursor: a tailing reader misses none of them.
    let mut late = events("late", "acme", 20);
    for e in &mut late {
        e["time"] = json!("2026-01-01T00:00:00Z");
    }
    assert_eq!(post_batch(&client, &c, &late).await.0, 200);
    let mut more = Vec::new();
    cursor = tail(&client, &c, Some(cursor), &mut more).await;
    let mut expected: Vec<String> = (0..20).map(|i| format!("late-{i}")).collect();
    more.sort();
    expected.sort();
    assert_eq!(more, expected);
    // Nothing new: an empty page, the same cursor.
    let (_, page) = get_json(
        &client,
        &c,
        &format!("/v1/tenants/acme/events?after={cursor}"),
    )
    .await;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(0));
    assert_eq!(page["next_cursor"], json!(cursor));

    seen.extend(more);
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), 270, "an event was listed twice");

    let (status, _) = get_json(&client, &c, "/v1/tenants/acme/events?after=bogus").await;
    assert_eq!(status, 400);
    let (status, _) = get_json(&client, &c, "/v1/tenants/acme/events?limit=0").await;
    assert_eq!(status, 400);
}

/// Follow `/v1/tenants/acme/events` from `after` until no more rows; ids into `seen`.
async fn tail(
    client: &reqwest::Client,
    c: &Collector,
    mut after: Option<String>,
    seen: &mut Vec<String>,
) -> String {
    for _ in 0..100 {
        let path = match &after {
            Some(cursor) => format!("/v1/tenants/acme/events?limit=7&after={cursor}"),
            None => "/v1/tenants/acme/events?limit=7".to_owned(),
        };
        let (status, page) = get_json(client, c, &path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["events"].as_array().expect("events");
        assert!(items.len() <= 7);
        seen.extend(
            items
                .iter()
                .map(|e| e["id"].as_str().expect("id").to_owned()),
        );
        after = Some(
            page["next_cursor"]
                .as_str()
                .expect("a cursor on every page")
                .to_owned(),
        );
        if page["more"] == json!(false) {
            return after.unwrap_or_default();
        }
    }
    panic!("paging does not terminate");
}

async fn two_collectors_on_one_database_store_each_id_once(db: &TestDb) {
    let a = Collector::start(db, &[]).await;
    let b = Collector::start(db, &[]).await;
    let client = reqwest::Client::new();
    // Batch k holds ids [50k, 50k+100): each id is in two batches, and each batch is
    // posted to both collectors at once, so every id races four times.
    let batches: Vec<Vec<Value>> = (0..20)
        .map(|k| {
            (50 * k..50 * k + 100)
                .map(|i| {
                    event(
                        &format!("c{i}"),
                        "acme",
                        "2026-03-01T00:00:00Z",
                        "allowed",
                        &[("requests", 1)],
                    )
                })
                .collect()
        })
        .collect();
    let mut tasks = Vec::new();
    for batch in &batches {
        for target in [&a, &b] {
            let client = client.clone();
            let url = target.url("/v1/events");
            let body = serde_json::to_vec(batch).expect("json");
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(SECRET)
                    .header("content-type", BATCH)
                    .body(body)
                    .send()
                    .await;
                let r = r.expect("POST");
                assert_eq!(r.status(), 200);
                r.json::<Value>().await.expect("json")
            }));
        }
    }
    let mut accepted = 0;
    let mut duplicates = 0;
    for t in tasks {
        let body = t.await.expect("task");
        accepted += body["accepted"].as_i64().expect("accepted");
        duplicates += body["duplicates"].as_i64().expect("duplicates");
    }
    let unique = 50 * 19 + 100;
    assert_eq!(accepted, unique, "acknowledged as new exactly once per id");
    assert_eq!(accepted + duplicates, 20 * 100 * 2);
    assert_eq!(db.count().await, unique);
    let (_, usage) = get_json(
        &client,
        &a,
        "/v1/tenants/acme/usage?window=day&at=2026-03-01T00:00:00Z",
    )
    .await;
    assert_eq!(
        usage["meters"],
        json!([{"meter": "requests", "quantity": unique}])
    );
}

async fn collector_killed_mid_stream_loses_nothing_and_doubles_nothing(db: &TestDb) {
    let mut c = Collector::start(db, &[]).await;
    let client = reqwest::Client::new();
    const BATCH_LEN: usize = 200;
    const POSTERS: usize = 4;
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let attempted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut posters = Vec::new();
    for _ in 0..POSTERS {
        let (client, url, acked, attempted, stop) = (
            client.clone(),
            c.url("/v1/events"),
            acked.clone(),
            attempted.clone(),
            stop.clone(),
        );
        posters.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let k = attempted.fetch_add(1, Ordering::SeqCst);
                let body =
                    serde_json::to_vec(&events(&format!("k{k}"), "acme", BATCH_LEN)).expect("json");
                let sent = client
                    .post(&url)
                    .bearer_auth(SECRET)
                    .header("content-type", BATCH)
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => acked.lock().expect("lock").push(k),
                    // The collector died under this request: the proxy would retry it.
                    _ => return,
                }
            }
        }));
    }
    // Let a stream build up, then crash the collector while batches are in flight.
    while acked.lock().expect("lock").len() < 12 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.kill();
    stop.store(true, Ordering::SeqCst);
    for p in posters {
        p.await.expect("poster");
    }
    let acked: Vec<usize> = acked.lock().expect("lock").clone();
    let attempted = attempted.load(Ordering::SeqCst);

    let c = Collector::start(db, &[]).await;
    // Nothing acknowledged was lost.
    let stored_after_crash = db.count().await as usize;
    assert!(
        stored_after_crash >= acked.len() * BATCH_LEN,
        "{stored_after_crash} < {} acked",
        acked.len() * BATCH_LEN
    );
    assert_eq!(stored_after_crash % BATCH_LEN, 0, "a batch was half stored");
    // The proxy re-posts everything not acknowledged (and here, for good measure, all).
    let mut newly = 0;
    for k in 0..attempted {
        let (status, body) =
            post_batch(&client, &c, &events(&format!("k{k}"), "acme", BATCH_LEN)).await;
        assert_eq!(status, 200, "{body}");
        let accepted = body["accepted"].as_u64().expect("accepted") as usize;
        if acked.contains(&k) {
            assert_eq!(accepted, 0, "acknowledged batch {k} stored twice");
        }
        assert!(
            accepted == 0 || accepted == BATCH_LEN,
            "batch {k} partly stored: {accepted}"
        );
        newly += accepted;
    }
    assert_eq!(stored_after_crash + newly, attempted * BATCH_LEN);
    assert_eq!(db.count().await as usize, attempted * BATCH_LEN);
}

async fn sigterm_drains_and_exits_cleanly(db: &TestDb) {
    let mut c = Collector::start(db, &[]).await;
    let client = reqwest::Client::new();
    assert_eq!(
        post_batch(&client, &c, &events("t", "acme", 1)).await.0,
        200
    );
    let status = c.terminate();
    assert!(status.success(), "exit {status}:\n{}", c.log_text());
    assert!(
        c.log_text().contains("turnpike-collector stopped"),
        "{}",
        c.log_text()
    );
}

/// One test per (backend, body): `sqlite::name` and `postgres::name`.
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::support::TestDb::sqlite();
                    super::$name(&db).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::support::TestDb::postgres();
                    super::$name(&db).await;
                }
            )+
        }
    };
}

backend_tests!(
    reposted_batch_is_stored_once,
    duplicates_inside_one_batch_are_stored_once,
    ingest_works_over_h2c_prior_knowledge,
    refused_requests_get_a_clear_4xx_and_store_nothing,
    one_bad_event_is_quarantined_and_its_neighbours_are_stored,
    unusual_methods_are_stored_as_other,
    aggregates_sum_billable_usage_across_hour_day_and_month_boundaries,
    denied_events_are_listed_but_not_billed,
    paging_returns_every_event_exactly_once,
    two_collectors_on_one_database_store_each_id_once,
    collector_killed_mid_stream_loses_nothing_and_doubles_nothing,
    sigterm_drains_and_exits_cleanly,
);
