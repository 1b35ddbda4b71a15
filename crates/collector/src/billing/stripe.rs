//! A Stripe client for Billing Meters, modelled on Stripe's official client
//! libraries, that works unchanged against `https://api.stripe.com` and against
//! the local fake (`turnpike-dev stripe-fake`).
//!
//! - Requests are form-encoded with bracket nesting (`payload[value]=5`) and
//!   authenticated with the secret key as a Bearer token.
//! - Every POST carries an `Idempotency-Key` derived from what the request *is*
//!   ([`idempotency_key`]), not drawn at random: every retry of one logical
//!   request, including one made after a crash and restart, reuses it, so Stripe
//!   answers a retry of a request it already executed with the stored result.
//! - Failed attempts are retried a bounded number of times with exponential backoff
//!   and jitter ([`retry`]): network failures, 409, 429 and 5xx, unless Stripe says
//!   `Stripe-Should-Retry: false`; never sooner than `Retry-After`.
//! - A token bucket ([`rate_limit`]) paces requests (default 100/s, well under
//!   Stripe's 1,000/s live-mode meter event limit).
//! - Every failure is logged with its `Request-Id` (tracing fields) and the final
//!   error keeps it; errors are sorted by what the caller does about them
//!   ([`StripeError`]), a repeated identifier being "already delivered".

pub mod error;
pub mod rate_limit;
pub mod retry;
pub mod types;

use std::time::Duration;

use base64::Engine;
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use sha2::Digest;

pub use error::{Operation, StripeError};
pub use types::{
    Formula, Grouping, List, Meter, MeterEvent, MeterEventAdjustment, MeterEventSummary,
    MeterStatus, NewMeter,
};

use error::{classify, ErrorBody, ErrorDetail};
use rate_limit::RateLimiter;
use retry::{parse_retry_after, should_retry, Backoff};

pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";
/// Stripe's default payload keys for a meter's customer and value.
pub const CUSTOMER_PAYLOAD_KEY: &str = "stripe_customer_id";
pub const VALUE_PAYLOAD_KEY: &str = "value";
/// The page size used when reading whole lists (Stripe's maximum).
const PAGE_SIZE: &str = "100";

/// How the client talks to Stripe.
#[derive(Clone)]
pub struct StripeConfig {
    /// `https://api.stripe.com`, or the fake's `http://127.0.0.1:12111`.
    pub base_url: String,
    /// The secret key (`sk_live_…`, `sk_test_…` or a restricted `rk_…`).
    pub api_key: String,
    /// Retries after the first attempt (Stripe's libraries default to 1–2).
    pub max_network_retries: u32,
    pub initial_retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// A `Retry-After` longer than this ends the retries with `RateLimited`.
    pub max_retry_after: Duration,
    /// Per attempt.
    pub timeout: Duration,
    pub requests_per_second: f64,
    pub burst: u32,
    /// `Stripe-Version` to pin; the account's default version if `None`.
    pub api_version: Option<String>,
}

impl StripeConfig {
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> StripeConfig {
        StripeConfig {
            base_url: base_url.into(),
            api_key: api_key.into(),
            max_network_retries: 3,
            initial_retry_delay: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            requests_per_second: 100.0,
            burst: 10,
            api_version: None,
        }
    }
}

/// The key stays out of logs: only its kind and last four characters show.
impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail: String = {
            let chars: Vec<char> = self.api_key.chars().collect();
            chars[chars.len().saturating_sub(4)..].iter().collect()
        };
        let kind = self
            .api_key
            .split('_')
            .take(2)
            .collect::<Vec<_>>()
            .join("_");
        f.debug_struct("StripeConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &format!("{kind}_…{tail}"))
            .field("max_network_retries", &self.max_network_retries)
            .field("initial_retry_delay", &self.initial_retry_delay)
            .field("max_retry_delay", &self.max_retry_delay)
            .field("max_retry_after", &self.max_retry_after)
            .field("timeout", &self.timeout)
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .field("api_version", &self.api_version)
            .finish()
    }
}

/// Which logical request an idempotency key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    MeterEvent,
    Cancel,
    CreateMeter,
}

/// The longest `Idempotency-Key` Stripe accepts.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The `Idempotency-Key` of a logical request: the kind plus its identity (the
/// event identifier, or the meter's event name). An identity that is not plain
/// printable ASCII is base64url-encoded so the key is a valid header value, and
/// one still too long for Stripe's 255 characters is replaced by its SHA-256.
pub fn idempotency_key(kind: KeyKind, identity: &str) -> String {
    let prefix = match kind {
        KeyKind::MeterEvent => "turnpike-meter-event:",
        KeyKind::Cancel => "turnpike-meter-event-cancel:",
        KeyKind::CreateMeter => "turnpike-create-meter:",
    };
    let plain = !identity.is_empty() && identity.bytes().all(|b| b.is_ascii_graphic());
    let key = if plain {
        format!("{prefix}{identity}")
    } else {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(identity);
        format!("{prefix}b64:{encoded}")
    };
    if key.len() <= MAX_IDEMPOTENCY_KEY {
        return key;
    }
    let digest = sha2::Sha256::digest(identity.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}sha256:{hex}")
}

/// One logical request.
struct Call {
    op: Operation,
    /// For logs: `meter_event`, `cancel`, ….
    what: &'static str,
    method: Method,
    url: Url,
    params: Vec<(String, String)>,
    idempotency_key: Option<String>,
}

pub struct StripeClient {
    http: reqwest::Client,
    config: StripeConfig,
    base: Url,
    limiter: RateLimiter,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl StripeClient {
    pub fn new(config: StripeConfig) -> Result<StripeClient, StripeError> {
        let base = Url::parse(&config.base_url)
            .map_err(|e| StripeError::Config(format!("base URL {}: {e}", config.base_url)))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(StripeError::Config(format!(
                "base URL {} is not an http(s) URL",
                config.base_url
            )));
        }
        if config.api_key.trim().is_empty() {
            return Err(StripeError::Config("the Stripe API key is empty".into()));
        }
        // Also refuses NaN.
        if !config.requests_per_second.is_finite() || config.requests_per_second <= 0.0 {
            return Err(StripeError::Config(format!(
                "requests_per_second must be positive, got {}",
                config.requests_per_second
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("turnpike-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StripeError::Config(format!("HTTP client: {e}")))?;
        Ok(StripeClient {
            http,
            limiter: RateLimiter::new(config.requests_per_second, config.burst),
            base,
            config,
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.config.initial_retry_delay,
            max: self.config.max_retry_delay,
            max_retry_after: self.config.max_retry_after,
        }
    }

    /// Creates a meter (setup tooling). Its idempotency key is the event name, so a
    /// repeated setup run within 24 hours gets the same meter back.
    pub async fn create_meter(&self, meter: &NewMeter) -> Result<Meter, StripeError> {
        let mut params = vec![
            ("display_name".to_owned(), meter.display_name.clone()),
            ("event_name".to_owned(), meter.event_name.clone()),
            (
                "default_aggregation[formula]".to_owned(),
                meter.formula.as_str().to_owned(),
            ),
        ];
        if let Some(key) = &meter.customer_payload_key {
            params.push(("customer_mapping[event_payload_key]".into(), key.clone()));
            params.push(("customer_mapping[type]".into(), "by_id".into()));
        }
        if let Some(key) = &meter.value_payload_key {
            params.push(("value_settings[event_payload_key]".into(), key.clone()));
        }
        self.execute(&Call {
            op: Operation::Other,
            what: "create_meter",
            method: Method::POST,
            url: self.url(&["v1", "billing", "meters"]),
            params,
            idempotency_key: Some(idempotency_key(KeyKind::CreateMeter, &meter.event_name)),
        })
        .await
    }

    /// All meters (every page), newest first; only those with `status` if given.
    pub async fn list_meters(
        &self,
        status: Option<MeterStatus>,
    ) -> Result<Vec<Meter>, StripeError> {
        let mut params = Vec::new();
        if let Some(status) = status {
            params.push(("status".to_owned(), status.as_str().to_owned()));
        }
        self.all_pages(
            "list_meters",
            self.url(&["v1", "billing", "meters"]),
            params,
            |m: &Meter| m.id.clone(),
        )
        .await
    }

    /// Sends one meter event with Stripe's default payload keys. A
    /// [`StripeError::DuplicateIdentifier`] means Stripe already has it
    /// ([`StripeError::is_already_delivered`]).
    pub async fn send_meter_event(
        &self,
        event_name: &str,
        customer: &str,
        value: i64,
        timestamp: i64,
        identifier: &str,
    ) -> Result<MeterEvent, StripeError> {
        self.execute(&Call {
            op: Operation::MeterEvent {
                identifier: identifier.to_owned(),
                timestamp,
            },
            what: "meter_event",
            method: Method::POST,
            url: self.url(&["v1", "billing", "meter_events"]),
            params: vec![
                ("event_name".into(), event_name.to_owned()),
                ("identifier".into(), identifier.to_owned()),
                ("timestamp".into(), timestamp.to_string()),
                (
                    format!("payload[{CUSTOMER_PAYLOAD_KEY}]"),
                    customer.to_owned(),
                ),
                (format!("payload[{VALUE_PAYLOAD_KEY}]"), value.to_string()),
            ],
            idempotency_key: Some(idempotency_key(KeyKind::MeterEvent, identifier)),
        })
        .await
    }

    /// Cancels the meter event `identifier` of `event_name` (Stripe needs both).
    /// Possible within 24 hours of Stripe receiving the event, else
    /// [`StripeError::AdjustmentWindowPassed`].
    pub async fn cancel_meter_event(
        &self,
        event_name: &str,
        identifier: &str,
    ) -> Result<MeterEventAdjustment, StripeError> {
        self.execute(&Call {
            op: Operation::Cancel {
                identifier: identifier.to_owned(),
            },
            what: "cancel_meter_event",
            method: Method::POST,
            url: self.url(&["v1", "billing", "meter_event_adjustments"]),
            params: vec![
                ("event_name".into(), event_name.to_owned()),
                ("type".into(), "cancel".into()),
                ("cancel[identifier]".into(), identifier.to_owned()),
            ],
            idempotency_key: Some(idempotency_key(KeyKind::Cancel, identifier)),
        })
        .await
    }

    /// What Stripe holds for `customer` on a meter over `[start, end)` (unix
    /// seconds, minute-aligned; hour- or day-aligned with a grouping), every page,
    /// in the order Stripe lists them.
    pub async fn event_summaries(
        &self,
        meter_id: &str,
        customer: &str,
        start: i64,
        end: i64,
        grouping: Option<Grouping>,
    ) -> Result<Vec<MeterEventSummary>, StripeError> {
        let mut params = vec![
            ("customer".to_owned(), customer.to_owned()),
            ("start_time".to_owned(), start.to_string()),
            ("end_time".to_owned(), end.to_string()),
        ];
        if let Some(grouping) = grouping {
            params.push(("value_grouping_window".into(), grouping.as_str().into()));
        }
        let url = self.url(&["v1", "billing", "meters", meter_id, "event_summaries"]);
        self.all_pages("event_summaries", url, params, |s: &MeterEventSummary| {
            s.id.clone()
        })
        .await
    }

    /// Follows `has_more` with `starting_after` until the list ends.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        what: &'static str,
        url: Url,
        params: Vec<(String, String)>,
        id_of: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, StripeError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut page_params = params.clone();
            page_params.push(("limit".into(), PAGE_SIZE.into()));
            if let Some(after) = &after {
                page_params.push(("starting_after".into(), after.clone()));
            }
            let page: List<T> = self
                .execute(&Call {
                    op: Operation::Other,
                    what,
                    method: Method::GET,
                    url: url.clone(),
                    params: page_params,
                    idempotency_key: None,
                })
                .await?;
            let last = page.data.last().map(&id_of);
            all.extend(page.data);
            match (page.has_more, last) {
                (false, _) => return Ok(all),
                (true, Some(last)) => after = Some(last),
                // More promised but nothing to continue from: stop rather than loop.
                (true, None) => {
                    return Err(StripeError::Decode {
                        status: 200,
                        detail: format!("{what}: an empty page claims has_more"),
                        request_id: None,
                    })
                }
            }
        }
    }

    /// Sends `call`, retrying as Stripe's libraries do, and decodes the answer.
    async fn execute<T: DeserializeOwned>(&self, call: &Call) -> Result<T, StripeError> {
        let attempts_allowed = self.config.max_network_retries + 1;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            self.limiter.acquire().await;
            let mut request = self
                .http
                .request(call.method.clone(), call.url.clone())
                .bearer_auth(&self.config.api_key);
            request = if call.method == Method::GET {
                request.query(&call.params)
            } else {
                request.form(&call.params)
            };
            if let Some(key) = &call.idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(version) = &self.config.api_version {
                request = request.header("Stripe-Version", version);
            }
            let retries_left = attempt < attempts_allowed;

            let response = match request.send().await {
                Ok(response) => response,
                Err(err) => {
                    if retries_left {
                        self.wait_before_retry(call, attempt, None, None, None, &err.to_string())
                            .await;
                        continue;
                    }
                    tracing::warn!(
                        op = call.what,
                        attempt,
                        idempotency_key = call.idempotency_key.as_deref(),
                        error = %err,
                        "Stripe request failed: network"
                    );
                    return Err(StripeError::Network {
                        attempts: attempt,
                        source: err,
                    });
                }
            };
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let request_id = header("request-id");
            let stripe_should_retry =
                header("stripe-should-retry").and_then(|v| match v.as_str() {
                    "true" => Some(true),
                    "false" => Some(false),
                    _ => None,
                });
            let retry_after = header("retry-after").as_deref().and_then(parse_retry_after);
            let replayed = header("idempotent-replayed").as_deref() == Some("true");
            let bytes = match response.bytes().await {
                Ok(bytes) => bytes,
                // The answer broke off: as good as no answer.
                Err(err) => {
                    if retries_left {
                        self.wait_before_retry(
                            call,
                            attempt,
                            None,
                            request_id.as_deref(),
                            None,
                            &err.to_string(),
                        )
                        .await;
                        continue;
                    }
                    return Err(StripeError::Network {
                        attempts: attempt,
                        source: err,
                    });
                }
            };

            if (200..300).contains(&status) {
                tracing::debug!(
                    op = call.what,
                    attempt,
                    status,
                    request_id = request_id.as_deref(),
                    replayed,
                    "Stripe request succeeded"
                );
                return serde_json::from_slice(&bytes).map_err(|e| StripeError::Decode {
                    status,
                    detail: format!("{}: {e}", call.what),
                    request_id,
                });
            }

            let body = error_body(status, &bytes);
            let too_long_wait = retry_after.is_some_and(|d| d > self.config.max_retry_after);
            if retries_left && !too_long_wait && should_retry(Some(status), stripe_should_retry) {
                let reason = body.error.message.clone().unwrap_or_default();
                self.wait_before_retry(
                    call,
                    attempt,
                    Some(&body.error),
                    request_id.as_deref(),
                    Some((status, retry_after)),
                    &reason,
                )
                .await;
                continue;
            }
            let err = classify(&call.op, status, &body, request_id, retry_after, attempt);
            let level_is_info = err.is_already_delivered();
            if level_is_info {
                tracing::info!(
                    op = call.what,
                    request_id = err.request_id(),
                    idempotency_key = call.idempotency_key.as_deref(),
                    "Stripe already holds this meter event"
                );
            } else {
                tracing::warn!(
                    op = call.what,
                    attempt,
                    status,
                    request_id = err.request_id(),
                    error_type = body.error.kind.as_deref(),
                    code = body.error.code.as_deref(),
                    param = body.error.param.as_deref(),
                    idempotency_key = call.idempotency_key.as_deref(),
                    error = %err,
                    "Stripe request failed"
                );
            }
            return Err(err);
        }
    }

    /// Logs a failed attempt and sleeps before the next one.
    async fn wait_before_retry(
        &self,
        call: &Call,
        attempt: u32,
        detail: Option<&ErrorDetail>,
        request_id: Option<&str>,
        answer: Option<(u16, Option<Duration>)>,
        reason: &str,
    ) {
        let retry_after = answer.and_then(|(_, after)| after);
        let wait = retry::delay(&self.backoff(), attempt - 1, fastrand::f64(), retry_after);
        tracing::warn!(
            op = call.what,
            attempt,
            status = answer.map(|(status, _)| status),
            request_id,
            error_type = detail.and_then(|d| d.kind.as_deref()),
            code = detail.and_then(|d| d.code.as_deref()),
            idempotency_key = call.idempotency_key.as_deref(),
            retry_in_ms = wait.as_millis() as u64,
            reason,
            "Stripe request failed; retrying"
        );
        tokio::time::sleep(wait).await;
    }
}

/// Stripe's error body, or one made from whatever came instead (a proxy's HTML page).
fn error_body(status: u16, bytes: &[u8]) -> ErrorBody {
    serde_json::from_slice(bytes).unwrap_or_else(|_| {
        let text: String = String::from_utf8_lossy(bytes).chars().take(200).collect();
        ErrorBody {
            error: ErrorDetail {
                message: Some(if text.trim().is_empty() {
                    format!("HTTP {status} with an empty body")
                } else {
                    format!("HTTP {status}: {text}")
                }),
                ..ErrorDetail::default()
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_follow_the_request_identity_only() {
        assert_eq!(
            idempotency_key(KeyKind::MeterEvent, "tenant-a:api:2026-11-29T10"),
            "turnpike-meter-event:tenant-a:api:2026-11-29T10"
        );
        assert_eq!(
            idempotency_key(KeyKind::MeterEvent, "x"),
            idempotency_key(KeyKind::MeterEvent, "x")
        );
        assert_ne!(
            idempotency_key(KeyKind::MeterEvent, "x"),
            idempotency_key(KeyKind::Cancel, "x")
        );
    }

    #[test]
    fn identities_that_are_not_header_safe_are_encoded() {
        let key = idempotency_key(KeyKind::MeterEvent, "größe 1");
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key}");
        assert_ne!(key, idempotency_key(KeyKind::MeterEvent, "grösse 1"));
        // Any identity fits Stripe's 255 characters and stays distinct.
        let longest = idempotency_key(KeyKind::Cancel, &"é".repeat(100));
        assert!(longest.len() <= 255, "{}", longest.len());
        assert_ne!(longest, idempotency_key(KeyKind::Cancel, &"é".repeat(99)));
        assert!(idempotency_key(KeyKind::MeterEvent, &"x".repeat(300)).len() <= 255);
    }

    #[test]
    fn the_config_debug_hides_the_key() {
        let config = StripeConfig::new(DEFAULT_BASE_URL, "sk_live_verysecretvalue9876");
        let text = format!("{config:?}");
        assert!(!text.contains("verysecret"), "{text}");
        assert!(text.contains("sk_live_…9876"), "{text}");
    }

    #[test]
    fn bad_configuration_is_refused_up_front() {
        let bad_url = StripeClient::new(StripeConfig::new("not a url", "sk_test_x"));
        assert!(matches!(bad_url, Err(StripeError::Config(_))));
        let no_key = StripeClient::new(StripeConfig::new(DEFAULT_BASE_URL, " "));
        assert!(matches!(no_key, Err(StripeError::Config(_))));
        let mut zero_rate = StripeConfig::new(DEFAULT_BASE_URL, "sk_test_x");
        zero_rate.requests_per_second = 0.0;
        assert!(matches!(
            StripeClient::new(zero_rate),
            Err(StripeError::Config(_))
        ));
    }

    #[test]
    fn urls_keep_a_base_path_and_encode_segments() {
        let client =
            StripeClient::new(StripeConfig::new("http://127.0.0.1:12111/", "sk_test_x")).unwrap();
        assert_eq!(
            client
                .url(&["v1", "billing", "meters", "mtr 1", "event_summaries"])
                .as_str(),
            "http://127.0.0.1:12111/v1/billing/meters/mtr%201/event_summaries"
        );
        let prefixed =
            StripeClient::new(StripeConfig::new("http://proxy/stripe", "sk_test_x")).unwrap();
        assert_eq!(
            prefixed.url(&["v1", "billing", "meters"]).as_str(),
            "http://proxy/stripe/v1/billing/meters"
        );
    }

    #[test]
    fn a_non_json_error_body_still_gives_a_message() {
        let body = error_body(502, b"<html>Bad Gateway</html>");
        assert_eq!(
            body.error.message.as_deref(),
            Some("HTTP 502: <html>Bad Gateway</html>")
        );
        assert_eq!(
            error_body(503, b"").error.message.as_deref(),
            Some("HTTP 503 with an empty body")
        );
    }
}
