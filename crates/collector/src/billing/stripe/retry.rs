//! When and how long to wait before retrying a Stripe request, as Stripe's official
//! client libraries do: network failures, 409, 429 and 5xx are retried unless Stripe
//! says `Stripe-Should-Retry: false` (it can also say `true` for others);
//! exponential backoff from an initial delay up to a cap, with jitter (50–100 % of
//! the step, never below the initial delay), and never sooner than `Retry-After`.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A `Retry-After` longer than this ends the retries: the caller is better off
    /// coming back later than holding the request open.
    pub max_retry_after: Duration,
}

/// Whether a failed attempt may be retried. `status` is `None` for a network
/// failure (no answer, or the connection broke mid-answer).
pub fn should_retry(status: Option<u16>, stripe_should_retry: Option<bool>) -> bool {
    if let Some(advice) = stripe_should_retry {
        return advice;
    }
    match status {
        None => true,
        Some(409 | 429) => true,
        Some(s) => s >= 500,
    }
}

/// The wait before retry number `retry` (0 for the first retry). `jitter` is a
/// uniform draw from `[0, 1)`.
pub fn delay(
    backoff: &Backoff,
    retry: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let step = backoff
        .initial
        .saturating_mul(2u32.saturating_pow(retry.min(16)))
        .min(backoff.max);
    let jittered = step.mul_f64(0.5 * (1.0 + jitter.clamp(0.0, 1.0)));
    let wait = jittered.max(backoff.initial);
    match retry_after {
        Some(after) if after <= backoff.max_retry_after => wait.max(after),
        _ => wait,
    }
}

/// `Retry-After` in seconds. (The HTTP-date form is not used by Stripe.)
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(8),
        max_retry_after: Duration::from_secs(60),
    };

    #[test]
    fn network_conflict_rate_limit_and_server_errors_are_retried() {
        assert!(should_retry(None, None));
        for status in [409, 429, 500, 502, 503] {
            assert!(should_retry(Some(status), None), "{status}");
        }
        for status in [400, 401, 402, 403, 404] {
            assert!(!should_retry(Some(status), None), "{status}");
        }
    }

    #[test]
    fn stripe_should_retry_overrides_the_status() {
        assert!(!should_retry(Some(500), Some(false)));
        assert!(!should_retry(Some(429), Some(false)));
        assert!(should_retry(Some(400), Some(true)));
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let full = |retry| delay(&BACKOFF, retry, 1.0, None);
        assert_eq!(full(0), Duration::from_millis(500));
        assert_eq!(full(1), Duration::from_secs(1));
        assert_eq!(full(2), Duration::from_secs(2));
        assert_eq!(full(5), Duration::from_secs(8));
        assert_eq!(full(40), Duration::from_secs(8));
    }

    #[test]
    fn jitter_takes_half_to_all_of_the_step_but_never_less_than_the_initial_delay() {
        assert_eq!(delay(&BACKOFF, 2, 0.0, None), Duration::from_secs(1));
        assert_eq!(delay(&BACKOFF, 2, 0.5, None), Duration::from_millis(1500));
        assert_eq!(delay(&BACKOFF, 0, 0.0, None), Duration::from_millis(500));
    }

    #[test]
    fn retry_after_is_a_lower_bound_when_it_is_not_absurd() {
        let after = Some(Duration::from_secs(3));
        assert_eq!(delay(&BACKOFF, 0, 0.0, after), Duration::from_secs(3));
        assert_eq!(
            delay(&BACKOFF, 4, 1.0, Some(Duration::from_secs(1))),
            Duration::from_secs(8)
        );
        let absurd = Some(Duration::from_secs(3600));
        assert_eq!(delay(&BACKOFF, 0, 0.0, absurd), Duration::from_millis(500));
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
