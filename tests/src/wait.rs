//! Polling helpers: the system under test is asynchronous, tests wait for a state with
//! a deadline instead of sleeping a guessed time.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Polls `probe` every 50 ms until it yields `Some`, or panics after `timeout` with
/// `what` (and the last `None`-reason the probe could not give, so: keep `what` clear).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds from now to the end of the current UTC-aligned window of `period` seconds.
pub fn secs_to_window_end(period: u64) -> u64 {
    period - now_unix() % period
}

/// If fewer than `margin` seconds remain in the current `period`-second window, sleeps
/// into the next one, so a test's requests all land in the same window.
pub async fn avoid_window_end(period: u64, margin: u64) {
    let left = secs_to_window_end(period);
    if left < margin {
        tokio::time::sleep(Duration::from_secs(left) + Duration::from_millis(200)).await;
    }
}

/// Waits until `GET url` answers 200 (a service's `/healthz`), or panics naming `who`.
pub async fn until_http_ok(http: &reqwest::Client, url: &str, who: &str) {
    eventually(
        &format!("{who}'s {url} to answer 200"),
        Duration::from_secs(15),
        || async move {
            let response = http.get(url).send().await.ok()?;
            (response.status().as_u16() == 200).then_some(())
        },
    )
    .await;
}

/// Unix milliseconds by this machine's clock.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
