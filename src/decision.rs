//! What to do with a request once the counter answered (or did not).

use crate::callout::{ConsumeAnswer, CounterError};
use crate::config::FailureMode;
use crate::problem;
use crate::ratelimit::{retry_after_secs, RateLimitHeaders};

/// The filter's verdict on a metered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Resume; add these headers to the response. `plan` is the one the counter used.
    Allow {
        headers: RateLimitHeaders,
        plan: String,
    },
    /// Reply `status` (429, or 403 when the request can never fit the plan) with the
    /// rate-limit headers and a problem body; `Retry-After` only when waiting helps.
    Deny {
        status: u32,
        retry_after: Option<u64>,
        headers: RateLimitHeaders,
        body: String,
        plan: String,
    },
    /// The counter failed and the deployment fails open: resume, unverified.
    FailOpen(CounterError),
    /// The counter failed and the deployment fails closed: reply 503.
    FailClosed(CounterError),
}

pub fn decide(outcome: Result<ConsumeAnswer<'_>, CounterError>, mode: FailureMode) -> Verdict {
    match outcome {
        Ok(answer) if answer.allowed => Verdict::Allow {
            headers: RateLimitHeaders::from_limits(&answer.limits),
            plan: answer.plan.into_owned(),
        },
        Ok(answer) if answer.exceeds_limit.is_some() => {
            let limit = answer.exceeds_limit.as_deref().unwrap_or("quota");
            Verdict::Deny {
                status: 403,
                retry_after: None,
                headers: RateLimitHeaders::from_limits(&answer.limits),
                body: problem::cost_exceeds_limit(limit, &answer.plan),
                plan: answer.plan.into_owned(),
            }
        }
        Ok(answer) => {
            let retry_after = retry_after_secs(&answer);
            let limit = answer
                .denied_by
                .as_deref()
                .or_else(|| {
                    answer
                        .limits
                        .iter()
                        .find(|l| l.remaining == 0)
                        .map(|l| &*l.name)
                })
                .unwrap_or("quota");
            Verdict::Deny {
                status: 429,
                retry_after: Some(retry_after),
                headers: RateLimitHeaders::from_limits(&answer.limits),
                body: problem::quota_exceeded(limit, &answer.plan, retry_after),
                plan: answer.plan.into_owned(),
            }
        }
        Err(e) => match mode {
            FailureMode::FailOpen => Verdict::FailOpen(e),
            FailureMode::FailClosed => Verdict::FailClosed(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::parse_consume_answer;

    const ALLOWED: &[u8] = br#"{"allowed":true,"plan":"free","limits":[{"name":"per-minute","meter":"requests","window":"minute","window_secs":60,"max":60,"used":1,"remaining":59,"reset":42}],"replayed":false}"#;
    const DENIED: &[u8] = br#"{"allowed":false,"plan":"free","limits":[{"name":"per-minute","meter":"requests","window":"minute","window_secs":60,"max":60,"used":60,"remaining":0,"reset":17}],"denied_by":"per-minute","retry_after":17}"#;

    #[test]
    fn allowed_answer_resumes_with_ratelimit_headers() {
        let v = decide(
            parse_consume_answer(Some("200"), Some(ALLOWED)),
            FailureMode::FailClosed,
        );
        let Verdict::Allow { headers, plan } = v else {
            panic!("{v:?}")
        };
        assert_eq!(
            headers.remaining.as_deref(),
            Some(r#""per-minute";r=59;t=42"#)
        );
        assert_eq!(plan, "free");
    }

    #[test]
    fn denied_answer_is_429_naming_the_limit_with_retry_after() {
        let v = decide(
            parse_consume_answer(Some("200"), Some(DENIED)),
            FailureMode::FailOpen,
        );
        let Verdict::Deny {
            status,
            retry_after,
            headers,
            body,
            ..
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!((status, retry_after), (429, Some(17)));
        assert_eq!(headers.policy.as_deref(), Some(r#""per-minute";q=60;w=60"#));
        assert!(
            body.contains(r#"limit \"per-minute\" of plan \"free\""#),
            "{body}"
        );
    }

    #[test]
    fn a_request_that_can_never_fit_is_403_without_retry_after() {
        let json = br#"{"allowed":false,"plan":"free","limits":[{"name":"per-minute","meter":"requests","window":"minute","window_secs":60,"max":5,"used":0,"remaining":5,"reset":17}],"denied_by":"per-minute","exceeds_limit":"per-minute"}"#;
        let v = decide(
            parse_consume_answer(Some("200"), Some(json)),
            FailureMode::FailOpen,
        );
        let Verdict::Deny {
            status,
            retry_after,
            body,
            ..
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!((status, retry_after), (403, None));
        assert!(body.contains("cost-exceeds-limit"), "{body}");
    }

    #[test]
    fn counter_timeout_follows_the_failure_mode() {
        assert_eq!(
            decide(parse_consume_answer(None, None), FailureMode::FailClosed),
            Verdict::FailClosed(CounterError::NoResponse)
        );
        assert_eq!(
            decide(
                parse_consume_answer(Some("500"), None),
                FailureMode::FailOpen
            ),
            Verdict::FailOpen(CounterError::Status(500))
        );
    }

    #[test]
    fn garbage_from_the_counter_never_allows_when_failing_closed() {
        let v = decide(
            parse_consume_answer(Some("200"), Some(b"{\"allowed\":true}")),
            FailureMode::FailClosed,
        );
        assert_eq!(v, Verdict::FailClosed(CounterError::BadBody));
    }
}
