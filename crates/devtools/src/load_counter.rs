//! `turnpike-dev load-counter`: consumes straight at the counter, no Envoy, as a
//! fleet of proxies would send them: HTTP/2 prior knowledge (h2c) over a few
//! long-lived connections, the service token, a fresh consume id per request, tenants
//! spread evenly. For the capacity model (bench/capacity.sh): what one counter and
//! its Redis sustain, and what each consume costs them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::DevError;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The counter's base URL, `http://host:port`.
    pub url: String,
    pub token: String,
    /// Tenants `load-00000` .. `load-<tenants - 1>`, taken in turn.
    pub tenants: u32,
    /// Requests in flight at any time.
    pub concurrency: usize,
    /// HTTP/2 connections the requests are spread over (Envoy keeps a few per worker).
    pub connections: usize,
    pub duration: Duration,
    /// Prefix of the consume ids, so runs against one Redis never collide.
    pub run_id: String,
    /// Meters and costs of every consume.
    pub meters: Vec<(String, u64)>,
}

/// What the run saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Answers other than 200 (5xx, 4xx) and transport errors.
    pub errors: u64,
    pub seconds: f64,
    pub consumes_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Mean request and answer body sizes, bytes (HTTP/2 framing and HPACK-compressed
    /// headers come on top).
    pub request_body_bytes: f64,
    pub response_body_bytes: f64,
}

#[derive(Default)]
struct Tally {
    allowed: u64,
    denied: u64,
    errors: u64,
    request_bytes: u64,
    response_bytes: u64,
    latencies_us: Vec<u32>,
}

pub async fn run(config: LoadConfig) -> Result<LoadReport, DevError> {
    if config.tenants == 0 || config.concurrency == 0 || config.connections == 0 {
        return Err(DevError::InvalidArg {
            field: "load-counter",
            reason: "--tenants, --concurrency and --connections must be at least 1".into(),
        });
    }
    let clients = (0..config.connections)
        .map(|_| {
            reqwest::Client::builder()
                .no_proxy()
                .http2_prior_knowledge()
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| DevError::InvalidArg {
                    field: "load-counter",
                    reason: format!("HTTP client: {e}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let url = format!(
        "{}{}",
        config.url.trim_end_matches('/'),
        turnpike_wire::counter_paths::CONSUME
    );
    let meters: Vec<serde_json::Value> = config
        .meters
        .iter()
        .map(|(meter, cost)| serde_json::json!({ "meter": meter, "cost": cost }))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..config.concurrency)
        .map(|task| {
            let client = clients[task % clients.len()].clone();
            let (url, token, meters, stop) = (
                url.clone(),
                config.token.clone(),
                meters.clone(),
                stop.clone(),
            );
            let (run_id, tenants, concurrency) =
                (config.run_id.clone(), config.tenants, config.concurrency);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Task t sends to tenants t, t + C, t + 2C, ...: every tenant in turn.
                    let tenant = (task as u64 + n * concurrency as u64) % u64::from(tenants);
                    let body = serde_json::json!({
                        "id": format!("{run_id}-{task}-{n}"),
                        "tenant": format!("load-{tenant:05}"),
                        "meters": meters,
                    })
                    .to_string();
                    n += 1;
                    tally.request_bytes += body.len() as u64;
                    let sent = Instant::now();
                    let answer = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let outcome = match answer {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let bytes = response.bytes().await.unwrap_or_default();
                            tally.response_bytes += bytes.len() as u64;
                            match status {
                                200 if contains(&bytes, b"\"allowed\":true") => Some(true),
                                200 => Some(false),
                                _ => None,
                            }
                        }
                        Err(_) => None,
                    };
                    let micros = sent.elapsed().as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                    match outcome {
                        Some(true) => tally.allowed += 1,
                        Some(false) => tally.denied += 1,
                        None => {
                            tally.errors += 1;
                            // A counter that fails fast must not turn this into a spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                tally
            })
        })
        .collect();
    tokio::time::sleep(config.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.map_err(|e| DevError::InvalidArg {
            field: "load-counter",
            reason: format!("a load task failed: {e}"),
        })?;
        total.allowed += tally.allowed;
        total.denied += tally.denied;
        total.errors += tally.errors;
        total.request_bytes += tally.request_bytes;
        total.response_bytes += tally.response_bytes;
        total.latencies_us.extend(tally.latencies_us);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(report(total, seconds))
}

fn report(mut tally: Tally, seconds: f64) -> LoadReport {
    tally.latencies_us.sort_unstable();
    let requests = tally.latencies_us.len() as u64;
    let per = |bytes: u64| bytes as f64 / requests.max(1) as f64;
    LoadReport {
        requests,
        allowed: tally.allowed,
        denied: tally.denied,
        errors: tally.errors,
        seconds,
        consumes_per_sec: (tally.allowed + tally.denied) as f64 / seconds.max(1e-9),
        p50_ms: percentile_ms(&tally.latencies_us, 50.0),
        p99_ms: percentile_ms(&tally.latencies_us, 99.0),
        request_body_bytes: per(tally.request_bytes),
        response_body_bytes: per(tally.response_bytes),
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted_us: &[u32], pct: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((pct / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    sorted_us
        .get(index)
        .map_or(0.0, |&us| f64::from(us) / 1000.0)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `meter=cost,meter=cost`.
pub fn parse_meters(text: &str) -> Result<Vec<(String, u64)>, String> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (meter, cost) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: expected meter=cost"))?;
            let cost = cost
                .trim()
                .parse()
                .map_err(|_| format!("{pair:?}: the cost is not a whole number"))?;
            Ok((meter.trim().to_owned(), cost))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 50.0), 50.0);
        assert_eq!(percentile_ms(&us, 99.0), 99.0);
        assert_eq!(percentile_ms(&[], 99.0), 0.0);
        assert_eq!(percentile_ms(&[7000], 1.0), 7.0);
    }

    #[test]
    fn meters_parse_as_meter_equals_cost() {
        assert_eq!(
            parse_meters("requests=1, units=5").unwrap(),
            [("requests".to_owned(), 1), ("units".to_owned(), 5)]
        );
        assert!(parse_meters("requests").is_err());
        assert!(parse_meters("requests=x").is_err());
    }

    #[test]
    fn the_report_counts_decisions_not_errors_as_consumes() {
        let tally = Tally {
            allowed: 8,
            denied: 2,
            errors: 5,
            request_bytes: 1500,
            response_bytes: 3000,
            latencies_us: vec![3000; 15],
        };
        let report = report(tally, 2.0);
        assert_eq!(report.requests, 15);
        assert_eq!(report.consumes_per_sec, 5.0);
        assert_eq!(report.request_body_bytes, 100.0);
    }
}
