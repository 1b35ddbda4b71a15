//! Exactness under concurrency: two Envoy workers, 64 concurrent clients, one limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use turnpike_tests::counter::prometheus_sum;
use turnpike_tests::redis::Redis;
use turnpike_tests::{avoid_window_end, Stack};

const LIMIT: usize = 500;
const REQUESTS: usize = 2_000;
const CLIENTS: usize = 64;

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "hourly", meter = "requests", window = "hour", max = 500 } ]
"#;

turnpike_tests::on_each_topology! {
    async fn sixty_four_concurrent_clients_get_exactly_the_limit_across_two_workers(topology) {
        let stack = Stack::builder(PLANS)
            .topology(topology)
            .concurrency(2)
            .generous_timeouts()
            .start()
            .await;
        let token = Arc::new(stack.token("bulk"));
        avoid_window_end(3_600, 60).await;

        let issued = Arc::new(AtomicUsize::new(0));
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let (http, url, token, issued) = (
                stack.http.clone(),
                stack.envoy.url("/v1/things"),
                token.clone(),
                issued.clone(),
            );
            clients.spawn(async move {
                let mut statuses = Vec::new();
                while issued.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                    let response = http.get(&url).bearer_auth(token.as_str()).send().await;
                    statuses.push(response.map(|r| r.status().as_u16()).unwrap_or(0));
                }
                statuses
            });
        }
        let mut statuses = Vec::new();
        while let Some(result) = clients.join_next().await {
            statuses.extend(result.expect("client task"));
        }

        let count = |code: u16| statuses.iter().filter(|&&s| s == code).count();
        assert_eq!(statuses.len(), REQUESTS);
        assert_eq!(
            (count(200), count(429)),
            (LIMIT, REQUESTS - LIMIT),
            "other answers: {:?}",
            statuses
                .iter()
                .filter(|&&s| s != 200 && s != 429)
                .collect::<Vec<_>>()
        );
        let (_, in_redis) = stack
            .redis
            .only_counter(&Redis::tenant_keys("bulk", "q:requests:hour:*"));
        assert_eq!(in_redis, LIMIT as u64);
        assert_eq!(stack.envoy.filter_stat("allowed").await, LIMIT as u64);
        assert_eq!(
            stack.envoy.filter_stat("denied").await,
            (REQUESTS - LIMIT) as u64
        );
        // Most of these consumes waited while others were out and went in batches:
        // the count above is the batched path's.
        let metrics = stack.counter.metrics().await;
        let batches = prometheus_sum(&metrics, "turnpike_counter_consume_batches_total");
        let batched = prometheus_sum(&metrics, "turnpike_counter_consume_batch_items_total");
        assert!(
            batches > 0 && batched >= 2 * batches && batched > REQUESTS as u64 / 4,
            "{batches} batches carried {batched} of {REQUESTS} consumes"
        );
        eprintln!("{batches} batches carried {batched} of {REQUESTS} consumes");
    }
}
