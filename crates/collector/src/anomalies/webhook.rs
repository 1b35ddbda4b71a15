//! The webhook: each anomaly as a CloudEvent (`dev.turnpike.anomaly.v1`), delivered
//! from the durable outbox at least once, with retries and backoff.
//!
//! The contract: the event `id` is the anomaly's deterministic id, the same on every
//! attempt and from every replica, and the body is byte-identical on every attempt; a
//! receiver dedupes on `id`. An event is marked delivered only after a 2xx answer; any
//! other answer, a timeout or a refused connection is retried with exponential
//! backoff (1 s doubling to 5 min, ±20 % jitter), forever: an outage delays alerts,
//! it never drops them.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::series::Detected;
use super::store::{self, OutboxItem};
use super::Status;
use crate::event::format_time_ms;
use crate::ledger::Ledger;
use crate::metrics::Metrics;

pub const EVENT_TYPE: &str = "dev.turnpike.anomaly.v1";
pub const EVENT_SOURCE: &str = "//turnpike/collector/anomalies";
/// One attempt's time budget; a claim lasts a little longer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const CLAIM_MS: i64 = 15_000;
const BASE_BACKOFF_MS: i64 = 1_000;
const MAX_BACKOFF_MS: i64 = 300_000;

/// Where anomalies are posted.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    /// Sent as `Authorization: Bearer <secret>`.
    pub secret: Option<String>,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    subject: String,
    time: String,
    datacontenttype: &'static str,
    data: super::AnomalyView,
}

/// The CloudEvent (structured JSON) of an anomaly. Deterministic: `time` is the
/// bucket's start, not the moment of detection.
pub fn cloud_event(d: &Detected) -> String {
    let event = CloudEvent {
        specversion: "1.0",
        id: &d.id,
        source: EVENT_SOURCE,
        kind: EVENT_TYPE,
        subject: format!("{}/{}", d.tenant, d.meter),
        time: format_time_ms(d.bucket.saturating_mul(1000)),
        datacontenttype: "application/json",
        data: super::AnomalyView::from_detected(d, None),
    };
    // A struct of strings and numbers always serialises.
    serde_json::to_string(&event).unwrap_or_default()
}

/// Delay before attempt `attempts + 1`, given `attempts` failures, and a jitter draw
/// in [0, 1).
pub fn backoff_ms(attempts: i64, jitter: f64) -> i64 {
    let exp = attempts.clamp(0, 20) as u32;
    let base = BASE_BACKOFF_MS
        .saturating_mul(1i64 << exp)
        .min(MAX_BACKOFF_MS);
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    (base as f64 * factor) as i64
}

/// Delivers due outbox events while this replica holds the judging lease.
pub async fn run(ledger: Ledger, webhook: Webhook, status: Arc<Status>, metrics: Arc<Metrics>) {
    let client = match reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).build() {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "anomaly webhook: cannot build an HTTP client");
            return;
        }
    };
    loop {
        if status.holding() {
            match deliver_due(&ledger, &client, &webhook, &metrics).await {
                Ok(0) => {}
                Ok(_) => continue, // more may be due
                Err(error) => tracing::warn!(%error, "anomaly outbox: reading failed"),
            }
            if let Ok((pending, _)) = store::outbox_pending(&ledger).await {
                metrics.anomaly.outbox_pending.set(pending);
            }
        }
        tokio::select! {
            _ = status.outbox_notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// One pass over due events, in creation order; returns how many were attempted.
async fn deliver_due(
    ledger: &Ledger,
    client: &reqwest::Client,
    webhook: &Webhook,
    metrics: &Metrics,
) -> Result<usize, store::StoreError> {
    let now = crate::api::now_ms();
    let due = store::outbox_due(ledger, now, 100).await?;
    let mut attempted = 0;
    for item in due {
        let now = crate::api::now_ms();
        if !store::outbox_claim(ledger, &item.id, now, now + CLAIM_MS).await? {
            continue;
        }
        attempted += 1;
        match post(client, webhook, &item).await {
            Ok(()) => {
                store::outbox_delivered(ledger, &item.id, crate::api::now_ms()).await?;
                metrics.anomaly.webhook("delivered");
                tracing::info!(id = %item.id, attempts = item.attempts + 1, "anomaly delivered");
            }
            Err(error) => {
                let delay = backoff_ms(item.attempts, fastrand::f64());
                store::outbox_failed(ledger, &item.id, crate::api::now_ms() + delay, &error)
                    .await?;
                metrics.anomaly.webhook("failed");
                tracing::warn!(id = %item.id, attempts = item.attempts + 1, retry_in_ms = delay, %error, "anomaly webhook failed");
                // The receiver is likely down: keep the order, try the rest later.
                break;
            }
        }
    }
    Ok(attempted)
}

async fn post(
    client: &reqwest::Client,
    webhook: &Webhook,
    item: &OutboxItem,
) -> Result<(), String> {
    let mut request = client
        .post(&webhook.url)
        .header("content-type", "application/cloudevents+json")
        .body(item.payload.clone());
    if let Some(secret) = &webhook.secret {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", response.status().as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnpike_anomaly::Kind;

    #[test]
    fn backoff_doubles_to_a_cap_with_bounded_jitter() {
        assert_eq!(backoff_ms(0, 0.5), 1000);
        assert_eq!(backoff_ms(3, 0.5), 8000);
        assert_eq!(backoff_ms(40, 0.5), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(0, 0.0), 800);
        assert_eq!(backoff_ms(0, 1.0), 1200);
    }

    #[test]
    fn the_cloud_event_is_deterministic_and_carries_the_anomaly_id() {
        let d = Detected {
            id: "0123456789abcdef0123456789abcdef".into(),
            tenant: "acme".into(),
            meter: "requests".into(),
            kind: Kind::Spike,
            bucket: 1_772_323_200,
            bucket_secs: 300,
            episode_start: 1_772_323_200,
            score: 12.5,
            expected: 100.0,
            observed: 900.0,
        };
        let a = cloud_event(&d);
        assert_eq!(a, cloud_event(&d));
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], d.id.as_str());
        assert_eq!(v["type"], EVENT_TYPE);
        assert_eq!(v["subject"], "acme/requests");
        assert_eq!(v["time"], "2026-03-01T00:00:00Z");
        assert_eq!(v["data"]["kind"], "spike");
        assert_eq!(v["data"]["observed"], 900.0);
    }
}
