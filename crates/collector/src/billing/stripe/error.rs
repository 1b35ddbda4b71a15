//! What can go wrong talking to Stripe, sorted into what a caller does about it.

use std::time::Duration;

use serde::Deserialize;

/// Stripe's error body: `{"error": {"type", "code", "message", "param", …}}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorDetail {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

/// The request an error belongs to, for the errors that only mean something for
/// one kind of request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    MeterEvent { identifier: String, timestamp: i64 },
    Cancel { identifier: String },
    Other,
}

fn rid(request_id: &Option<String>) -> String {
    request_id
        .as_deref()
        .map(|id| format!(" [request {id}]"))
        .unwrap_or_default()
}

fn param_text(param: &Option<String>) -> String {
    param
        .as_deref()
        .map(|p| format!(", param {p}"))
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe already holds an event with this identifier: it was delivered
    /// before. For an exactly-once sync this is success.
    #[error(
        "Stripe already holds a meter event with identifier {identifier}{}",
        rid(request_id)
    )]
    DuplicateIdentifier {
        identifier: String,
        request_id: Option<String>,
    },
    /// The event can no longer be cancelled: Stripe allows it only within 24 hours
    /// of receiving the event. Correct with a further (negative) event instead.
    #[error(
        "meter event {identifier} can no longer be cancelled (Stripe allows cancels only within \
         24 hours of receipt): {message}{}",
        rid(request_id)
    )]
    AdjustmentWindowPassed {
        identifier: String,
        message: String,
        request_id: Option<String>,
    },
    /// The event was cancelled before (a cancel whose answer was lost, retried after
    /// its idempotency key expired): for a sync, the cancel is done.
    #[error("meter event {identifier} is already cancelled{}", rid(request_id))]
    AlreadyCancelled {
        identifier: String,
        request_id: Option<String>,
    },
    /// The event's timestamp is more than 35 days back or 5 minutes ahead.
    #[error(
        "timestamp {timestamp} is outside Stripe's window (past 35 days to 5 minutes ahead): \
         {message}{}",
        rid(request_id)
    )]
    TimestampOutsideWindow {
        timestamp: i64,
        message: String,
        request_id: Option<String>,
    },
    /// The API key is missing, wrong, revoked, publishable, or lacks permission.
    #[error(
        "Stripe refused the API key (HTTP {status}): {message}; check the configured Stripe \
         secret key{}",
        rid(request_id)
    )]
    Authentication {
        status: u16,
        message: String,
        request_id: Option<String>,
    },
    /// Still rate limited when the retries ran out (or Stripe asked for a longer
    /// wait than the client holds a request): try again later.
    #[error("rate limited by Stripe after {attempts} attempt(s){}: {message}{}",
        retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default(),
        rid(request_id))]
    RateLimited {
        retry_after: Option<Duration>,
        attempts: u32,
        message: String,
        request_id: Option<String>,
    },
    /// 409: another request with the same idempotency key was still running (or a
    /// lock conflict) when the retries ran out: try again later.
    #[error(
        "conflicting concurrent request at Stripe after {attempts} attempt(s): {message}{}",
        rid(request_id)
    )]
    Conflict {
        attempts: u32,
        message: String,
        request_id: Option<String>,
    },
    /// 5xx when the retries ran out, or one Stripe said not to retry.
    #[error(
        "Stripe server error (HTTP {status}) after {attempts} attempt(s): {message}{}",
        rid(request_id)
    )]
    Server {
        status: u16,
        attempts: u32,
        message: String,
        request_id: Option<String>,
    },
    /// The idempotency key was used before with other parameters: the same logical
    /// request (same identifier) was built differently. A bug, not a transient.
    #[error("Stripe idempotency conflict: {message}{}", rid(request_id))]
    Idempotency {
        message: String,
        request_id: Option<String>,
    },
    /// Any other refusal (400, 402, 404, …): fix the request.
    #[error("Stripe refused the request (HTTP {status}{}{}): {message}{}",
        code.as_deref().map(|c| format!(", {c}")).unwrap_or_default(),
        param_text(param), rid(request_id))]
    InvalidRequest {
        status: u16,
        code: Option<String>,
        param: Option<String>,
        message: String,
        request_id: Option<String>,
    },
    /// No answer (connect failure, timeout, connection dropped) when the retries ran
    /// out.
    #[error("network error talking to Stripe after {attempts} attempt(s): {source}")]
    Network {
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    /// An answer that is not the JSON Stripe sends.
    #[error(
        "unexpected answer from Stripe (HTTP {status}): {detail}{}",
        rid(request_id)
    )]
    Decode {
        status: u16,
        detail: String,
        request_id: Option<String>,
    },
    #[error("invalid Stripe client configuration: {0}")]
    Config(String),
}

impl StripeError {
    /// The `Request-Id` of the failed request, when Stripe answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            StripeError::DuplicateIdentifier { request_id, .. }
            | StripeError::AdjustmentWindowPassed { request_id, .. }
            | StripeError::AlreadyCancelled { request_id, .. }
            | StripeError::TimestampOutsideWindow { request_id, .. }
            | StripeError::Authentication { request_id, .. }
            | StripeError::RateLimited { request_id, .. }
            | StripeError::Conflict { request_id, .. }
            | StripeError::Server { request_id, .. }
            | StripeError::Idempotency { request_id, .. }
            | StripeError::InvalidRequest { request_id, .. }
            | StripeError::Decode { request_id, .. } => request_id.as_deref(),
            StripeError::Network { .. } | StripeError::Config(_) => None,
        }
    }

    /// The meter event is in Stripe already: count it as delivered.
    pub fn is_already_delivered(&self) -> bool {
        matches!(self, StripeError::DuplicateIdentifier { .. })
    }

    /// Worth trying again later (the client's own retries ran out).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StripeError::RateLimited { .. }
                | StripeError::Conflict { .. }
                | StripeError::Server { .. }
                | StripeError::Network { .. }
        )
    }
}

/// Stripe's v1 message for a repeated identifier ("An event already exists with
/// identifier <id>."); v2 reports the same as code `duplicate_meter_event`.
const DUPLICATE_PREFIX: &str = "An event already exists with identifier";

/// Sorts an error answer. `attempts` is how many were made in all.
pub fn classify(
    op: &Operation,
    status: u16,
    body: &ErrorBody,
    request_id: Option<String>,
    retry_after: Option<Duration>,
    attempts: u32,
) -> StripeError {
    let detail = &body.error;
    let message = detail
        .message
        .clone()
        .unwrap_or_else(|| format!("HTTP {status} without a message"));
    let param = detail.param.as_deref();
    match (status, op) {
        (401 | 403, _) => StripeError::Authentication {
            status,
            message,
            request_id,
        },
        (429, _) => StripeError::RateLimited {
            retry_after,
            attempts,
            message,
            request_id,
        },
        (409, _) => StripeError::Conflict {
            attempts,
            message,
            request_id,
        },
        (s, _) if s >= 500 => StripeError::Server {
            status,
            attempts,
            message,
            request_id,
        },
        _ if detail.kind.as_deref() == Some("idempotency_error") => StripeError::Idempotency {
            message,
            request_id,
        },
        (400, Operation::MeterEvent { identifier, .. })
            if message.starts_with(DUPLICATE_PREFIX)
                || detail.code.as_deref() == Some("duplicate_meter_event") =>
        {
            StripeError::DuplicateIdentifier {
                identifier: identifier.clone(),
                request_id,
            }
        }
        (400, Operation::MeterEvent { timestamp, .. }) if param == Some("timestamp") => {
            StripeError::TimestampOutsideWindow {
                timestamp: *timestamp,
                message,
                request_id,
            }
        }
        // Nor does Stripe document the refusal of a second cancel; it names the
        // identifier and says it was cancelled.
        (400, Operation::Cancel { identifier })
            if param == Some("cancel[identifier]") && message.contains("already") =>
        {
            StripeError::AlreadyCancelled {
                identifier: identifier.clone(),
                request_id,
            }
        }
        // Stripe documents the 24-hour window but not its error; the refusal names
        // the identifier as `param` and cites the window.
        (400, Operation::Cancel { identifier })
            if param == Some("cancel[identifier]") && message.contains("24 hours") =>
        {
            StripeError::AdjustmentWindowPassed {
                identifier: identifier.clone(),
                message,
                request_id,
            }
        }
        _ => StripeError::InvalidRequest {
            status,
            code: detail.code.clone(),
            param: detail.param.clone(),
            message,
            request_id,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: &str, code: Option<&str>, message: &str, param: Option<&str>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                kind: Some(kind.into()),
                code: code.map(Into::into),
                message: Some(message.into()),
                param: param.map(Into::into),
            },
        }
    }

    fn event() -> Operation {
        Operation::MeterEvent {
            identifier: "id-1".into(),
            timestamp: 42,
        }
    }

    fn sort(op: &Operation, status: u16, b: &ErrorBody) -> StripeError {
        classify(op, status, b, Some("req_1".into()), None, 1)
    }

    #[test]
    fn a_repeated_identifier_is_already_delivered() {
        let v1 = body(
            "invalid_request_error",
            None,
            "An event already exists with identifier id-1.",
            None,
        );
        let err = sort(&event(), 400, &v1);
        assert!(err.is_already_delivered(), "{err:?}");
        assert_eq!(err.request_id(), Some("req_1"));
        let v2 = body(
            "invalid_request_error",
            Some("duplicate_meter_event"),
            "dup",
            None,
        );
        assert!(sort(&event(), 400, &v2).is_already_delivered());
        // The same words from another endpoint mean nothing special.
        assert!(!sort(&Operation::Other, 400, &v1).is_already_delivered());
    }

    #[test]
    fn a_timestamp_refusal_on_a_meter_event_is_outside_the_window() {
        let b = body("invalid_request_error", None, "too old", Some("timestamp"));
        assert!(matches!(
            sort(&event(), 400, &b),
            StripeError::TimestampOutsideWindow { timestamp: 42, .. }
        ));
    }

    #[test]
    fn a_cancel_refused_for_the_24_hour_window_is_told_apart_from_a_missing_event() {
        let op = Operation::Cancel {
            identifier: "id-1".into(),
        };
        let late = body(
            "invalid_request_error",
            None,
            "You can only cancel events within 24 hours of Stripe receiving them.",
            Some("cancel[identifier]"),
        );
        assert!(matches!(
            sort(&op, 400, &late),
            StripeError::AdjustmentWindowPassed { .. }
        ));
        let again = body(
            "invalid_request_error",
            None,
            "The meter event with identifier id-1 has already been cancelled.",
            Some("cancel[identifier]"),
        );
        assert!(matches!(
            sort(&op, 400, &again),
            StripeError::AlreadyCancelled { .. }
        ));
        let missing = body(
            "invalid_request_error",
            Some("resource_missing"),
            "No such meter event",
            Some("cancel[identifier]"),
        );
        assert!(matches!(
            sort(&op, 404, &missing),
            StripeError::InvalidRequest { status: 404, .. }
        ));
    }

    #[test]
    fn statuses_sort_into_auth_rate_limit_conflict_server_and_idempotency() {
        let b = body("invalid_request_error", None, "m", None);
        assert!(matches!(
            sort(&event(), 401, &b),
            StripeError::Authentication { .. }
        ));
        assert!(matches!(
            sort(&event(), 403, &b),
            StripeError::Authentication { .. }
        ));
        assert!(matches!(
            sort(&event(), 429, &b),
            StripeError::RateLimited { .. }
        ));
        assert!(matches!(
            sort(&event(), 409, &b),
            StripeError::Conflict { .. }
        ));
        assert!(matches!(
            sort(&event(), 502, &b),
            StripeError::Server { status: 502, .. }
        ));
        let idem = body(
            "idempotency_error",
            None,
            "Keys for idempotent requests …",
            None,
        );
        assert!(matches!(
            sort(&event(), 400, &idem),
            StripeError::Idempotency { .. }
        ));
        for status in [401, 409, 429, 500] {
            let err = sort(&event(), status, &b);
            assert_eq!(err.is_transient(), status != 401, "{status}");
        }
    }

    #[test]
    fn other_refusals_keep_code_and_param() {
        let b = body(
            "invalid_request_error",
            Some("parameter_unknown"),
            "Received unknown parameter: x",
            Some("x"),
        );
        let err = sort(&event(), 400, &b);
        match &err {
            StripeError::InvalidRequest { code, param, .. } => {
                assert_eq!(
                    (code.as_deref(), param.as_deref()),
                    (Some("parameter_unknown"), Some("x"))
                );
            }
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains("param x") && text.contains("req_1"), "{text}");
    }
}
