//! Ingest-rate measurement, not a timed test. Run with:
//!
//! ```text
//! cargo test --release -p turnpike-collector --test ingest_bench -- --ignored --nocapture
//! ```
//!
//! Posts batches of 500 events into a collector backed by an SQLite file
//! (`synchronous=FULL`) and by PostgreSQL with its default durability, from one client
//! and from four concurrent clients, and prints events/s.

mod support;

use std::time::Instant;

use support::*;

const BATCH_LEN: usize = 500;
const BATCHES: usize = 40;

async fn measure(db: &TestDb, label: &str) {
    let c = Collector::start(db, &[]).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    for clients in [1, 4] {
        let bodies: Vec<Vec<u8>> = (0..BATCHES)
            .map(|k| {
                serde_json::to_vec(&events(&format!("{clients}-{k}"), "acme", BATCH_LEN))
                    .expect("json")
            })
            .collect();
        let started = Instant::now();
        let mut chunks: Vec<Vec<Vec<u8>>> = vec![Vec::new(); clients];
        for (i, body) in bodies.into_iter().enumerate() {
            chunks[i % clients].push(body);
        }
        let tasks: Vec<_> = chunks
            .into_iter()
            .map(|mine| {
                let client = client.clone();
                let url = c.url("/v1/events");
                tokio::spawn(async move {
                    for body in mine {
                        let r = client
                            .post(&url)
                            .bearer_auth(SECRET)
                            .header("content-type", BATCH)
                            .body(body)
                            .send()
                            .await
                            .expect("POST");
                        assert_eq!(r.status(), 200);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let secs = started.elapsed().as_secs_f64();
        let n = BATCHES * BATCH_LEN;
        println!(
            "{label:<10} {clients} client(s): {n} events in {BATCHES} batches of {BATCH_LEN}: {secs:.2} s, {:.0} events/s, {:.1} ms/batch",
            n as f64 / secs,
            secs * 1000.0 / BATCHES as f64 * clients as f64,
        );
    }
    assert_eq!(db.count().await as usize, 2 * BATCHES * BATCH_LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
async fn ingest_rate() {
    measure(&TestDb::sqlite(), "sqlite").await;
    measure(&TestDb::postgres_with(Durability::Durable), "postgres").await;
}
