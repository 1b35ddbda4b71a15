//! Stripe's v1 error responses: `{"error": {"code", "doc_url", "message", "param",
//! "request_log_url", "type"}}` with the HTTP status and the `Stripe-Should-Retry`
//! header Stripe sends with them.
//!
//! Messages are Stripe's where they are known (parameter errors, authentication,
//! idempotency, rate limiting, duplicate identifiers); where Stripe's wording is not
//! documented (timestamp window, cancel window, inactive meter) the message is this
//! fake's and the module doc of [`super`] says so.

use serde::Serialize;

use super::form::FormError;

/// Stripe's error `type`s. The spec enumerates these four; Stripe reports
/// authentication failures and rate limiting as `invalid_request_error` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    ApiError,
    IdempotencyError,
    InvalidRequestError,
}

/// One error answer: status, body fields and retry advice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: ErrorType,
    pub code: Option<&'static str>,
    pub message: String,
    pub param: Option<String>,
    /// `Stripe-Should-Retry` header value, if Stripe sends one with this error.
    pub should_retry: Option<bool>,
    /// Whether an idempotent result may be stored for it: Stripe stores results only
    /// once the endpoint started executing, not for requests refused by validation.
    pub storable: bool,
}

/// The serialized body, in Stripe's field names (absent fields are left out).
#[derive(Debug, Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Debug, Serialize)]
struct Inner<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    doc_url: Option<String>,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_log_url: Option<String>,
    #[serde(rename = "type")]
    kind: ErrorType,
}

impl ApiError {
    fn invalid(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind: ErrorType::InvalidRequestError,
            code: None,
            message: message.into(),
            param: None,
            should_retry: None,
            storable: false,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// Marks a refusal made by the endpoint's own logic (after validation): its
    /// result is stored under the request's idempotency key.
    pub fn stored(mut self) -> ApiError {
        self.storable = true;
        self
    }

    pub fn retry_advice(mut self, should_retry: bool) -> ApiError {
        self.should_retry = Some(should_retry);
        self
    }

    /// The JSON body. `request_log_url` points at the dashboard log of the request,
    /// as Stripe adds to errors of requests it logged (not to authentication
    /// failures, which are not logged against an account).
    pub fn body(&self, request_id: &str, now: i64) -> serde_json::Value {
        let logged = self.status != 401 && self.kind != ErrorType::ApiError;
        let body = Body {
            error: Inner {
                code: self.code,
                doc_url: self.code.map(|c| {
                    format!(
                        "https://stripe.com/docs/error-codes/{}",
                        c.replace('_', "-")
                    )
                }),
                message: &self.message,
                param: self.param.as_deref(),
                request_log_url: logged.then(|| {
                    format!("https://dashboard.stripe.com/test/logs/{request_id}?t={now}")
                }),
                kind: self.kind,
            },
        };
        serde_json::to_value(body).unwrap_or_default()
    }

    // --- Parameter validation (never stored) ---

    pub fn unknown_param(name: &str) -> ApiError {
        ApiError::invalid(400, format!("Received unknown parameter: {name}"))
            .with_code("parameter_unknown")
            .with_param(name)
    }

    pub fn missing_param(name: &str) -> ApiError {
        ApiError::invalid(400, format!("Missing required param: {name}."))
            .with_code("parameter_missing")
            .with_param(name)
    }

    pub fn empty_param(name: &str) -> ApiError {
        ApiError::invalid(
            400,
            format!(
                "You passed an empty string for '{name}'. We assume empty values are an \
                 attempt to unset a parameter; however '{name}' cannot be unset. You should \
                 remove '{name}' from your request or supply a non-empty value."
            ),
        )
        .with_code("parameter_invalid_empty")
        .with_param(name)
    }

    pub fn invalid_integer(name: &str, value: &str) -> ApiError {
        ApiError::invalid(400, format!("Invalid integer: {value}"))
            .with_code("parameter_invalid_integer")
            .with_param(name)
    }

    pub fn string_too_long(name: &str, value: &str, max: usize) -> ApiError {
        ApiError::invalid(
            400,
            format!(
                "Invalid string: {}; must be at most {max} characters",
                elide(value)
            ),
        )
        .with_param(name)
    }

    pub fn invalid_enum(name: &str, allowed: &[&str]) -> ApiError {
        ApiError::invalid(
            400,
            format!("Invalid {name}: must be one of {}", one_of(allowed)),
        )
        .with_param(name)
    }

    /// A value of the wrong shape (`payload=x` where an object is expected).
    pub fn invalid_shape(name: &str, expected: &str) -> ApiError {
        ApiError::invalid(400, format!("Invalid {expected}")).with_param(name)
    }

    pub fn invalid_value(name: &str, message: impl Into<String>) -> ApiError {
        ApiError::invalid(400, message).with_param(name)
    }

    pub fn bad_form(err: &FormError) -> ApiError {
        match err {
            FormError::Conflict(name) => ApiError::invalid(
                400,
                format!("Invalid request: {name} is given both as a value and as an object"),
            )
            .with_param(name.clone()),
            FormError::BadKey(name) => ApiError::unknown_param(name),
        }
    }

    // --- Authentication ---

    pub fn no_api_key() -> ApiError {
        ApiError::invalid(
            401,
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
             YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, \
             or we can help at https://support.stripe.com/.",
        )
    }

    pub fn invalid_api_key(presented: &str) -> ApiError {
        ApiError::invalid(
            401,
            format!("Invalid API Key provided: {}", mask_key(presented)),
        )
    }

    pub fn publishable_key() -> ApiError {
        ApiError::invalid(
            401,
            "This API call cannot be made with a publishable API key. Please use a secret \
             API key. You can find a list of your API keys at \
             https://dashboard.stripe.com/account/apikeys.",
        )
        .with_code("secret_key_required")
    }

    // --- Resources and business rules (stored under an idempotency key) ---

    pub fn no_such(what: &str, id: &str, param: &str) -> ApiError {
        ApiError::invalid(404, format!("No such {what}: '{id}'"))
            .with_code("resource_missing")
            .with_param(param)
            .stored()
    }

    pub fn business(message: impl Into<String>) -> ApiError {
        ApiError::invalid(400, message).stored()
    }

    pub fn unrecognized_url(method: &str, path: &str) -> ApiError {
        ApiError::invalid(
            404,
            format!(
                "Unrecognized request URL ({method}: {path}). Please see \
                 https://stripe.com/docs or we can help at https://support.stripe.com/."
            ),
        )
    }

    // --- Idempotency ---

    pub fn idempotency_params_mismatch(key: &str) -> ApiError {
        ApiError {
            kind: ErrorType::IdempotencyError,
            ..ApiError::invalid(
                400,
                format!(
                    "Keys for idempotent requests can only be used with the same parameters \
                     they were first used with. Try using a key other than '{key}' if you \
                     meant to execute a different request."
                ),
            )
        }
    }

    pub fn idempotency_endpoint_mismatch(key: &str, first: &str, now: &str) -> ApiError {
        ApiError {
            kind: ErrorType::IdempotencyError,
            ..ApiError::invalid(
                400,
                format!(
                    "Keys for idempotent requests can only be used for the same endpoint they \
                     were first used for ('{first}' vs '{now}'). Try using a key other than \
                     '{key}' if you meant to execute a different request."
                ),
            )
        }
    }

    pub fn idempotency_in_use(key: &str) -> ApiError {
        ApiError::invalid(
            409,
            format!(
                "There is currently another in-progress request using this Idempotent Key \
                 (that probably means you submitted twice, and the other request is still \
                 going through): {key}. Please try again later."
            ),
        )
        .with_code("idempotency_key_in_use")
        .retry_advice(true)
    }

    // --- Injected faults ---

    pub fn rate_limited() -> ApiError {
        ApiError::invalid(
            429,
            "Request rate limit exceeded. You can learn more about rate limits here \
             https://stripe.com/docs/rate-limits.",
        )
        .with_code("rate_limit")
    }

    pub fn server_error(status: u16) -> ApiError {
        ApiError {
            kind: ErrorType::ApiError,
            ..ApiError::invalid(status, "An unknown error occurred")
        }
    }
}

/// `a, b, or c`, as Stripe lists allowed values.
fn one_of(allowed: &[&str]) -> String {
    match allowed {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [a, b] => format!("{a} or {b}"),
        [init @ .., last] => format!("{}, or {last}", init.join(", ")),
    }
}

/// Long values are shortened in messages the way Stripe does (`aaaa...aaaa`).
fn elide(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 40 {
        return value.to_owned();
    }
    let head: String = chars[..20].iter().collect();
    let tail: String = chars[chars.len() - 10..].iter().collect();
    format!("{head}...{tail}")
}

/// `sk_test_abcdefgh1234` → `sk_test_********1234`: the key's prefix and last four.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let prefix_len = [
        "sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_",
    ]
    .iter()
    .find(|p| key.starts_with(**p))
    .map_or(0, |p| p.len());
    if chars.len() <= prefix_len + 4 {
        return "*".repeat(chars.len());
    }
    let middle = chars.len() - prefix_len - 4;
    let prefix: String = chars[..prefix_len].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}{}{tail}", "*".repeat(middle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_stripe_fields_and_a_doc_url_for_coded_errors() {
        let body = ApiError::missing_param("event_name").body("req_1", 1700000000);
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "code": "parameter_missing",
                "doc_url": "https://stripe.com/docs/error-codes/parameter-missing",
                "message": "Missing required param: event_name.",
                "param": "event_name",
                "request_log_url": "https://dashboard.stripe.com/test/logs/req_1?t=1700000000",
                "type": "invalid_request_error",
            }})
        );
    }

    #[test]
    fn authentication_and_server_errors_have_no_log_url() {
        let auth = ApiError::invalid_api_key("sk_test_nope1234").body("req_1", 0);
        assert!(auth["error"].get("request_log_url").is_none());
        assert_eq!(auth["error"]["type"], "invalid_request_error");
        let server = ApiError::server_error(500).body("req_1", 0);
        assert_eq!(
            server,
            serde_json::json!({"error": {"message": "An unknown error occurred", "type": "api_error"}})
        );
    }

    #[test]
    fn keys_are_masked_but_for_prefix_and_last_four() {
        assert_eq!(mask_key("sk_test_abcdefgh1234"), "sk_test_********1234");
        assert_eq!(mask_key("whatever99"), "******er99");
        assert_eq!(mask_key("abc"), "***");
    }

    #[test]
    fn enum_errors_list_the_allowed_values() {
        assert_eq!(
            ApiError::invalid_enum("formula", &["count", "last", "sum"]).message,
            "Invalid formula: must be one of count, last, or sum"
        );
        assert_eq!(
            ApiError::invalid_enum("status", &["active", "inactive"]).message,
            "Invalid status: must be one of active or inactive"
        );
    }

    #[test]
    fn too_long_values_are_elided_in_the_message() {
        let long = "x".repeat(101);
        let err = ApiError::string_too_long("identifier", &long, 100);
        assert_eq!(err.param.as_deref(), Some("identifier"));
        assert!(err.message.ends_with("; must be at most 100 characters"));
        assert!(err.message.contains("..."));
    }
}
