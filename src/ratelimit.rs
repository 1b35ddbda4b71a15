//! Response header values from the counter's answer: the IETF httpapi `RateLimit-Policy`
//! and `RateLimit` structured fields (one list member per limit), `Retry-After`, and
//! the soft-threshold warning.

use std::fmt::Write as _;

use crate::callout::{ConsumeAnswer, LimitAnswer};

/// Header values for one answer. `None` when the answer holds no limits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimitHeaders {
    /// `"per-minute";q=60;w=60, "monthly";q=10000;w=2592000`
    pub policy: Option<String>,
    /// `"per-minute";r=59;t=42, "monthly";r=9999;t=123456`
    pub remaining: Option<String>,
    /// `"monthly";used=8001;soft=8000;max=10000` for each limit past its soft threshold.
    pub warning: Option<String>,
}

impl RateLimitHeaders {
    pub fn from_limits(limits: &[LimitAnswer<'_>]) -> Self {
        if limits.is_empty() {
            return Self::default();
        }
        let mut policy = String::with_capacity(limits.len() * 40);
        let mut remaining = String::with_capacity(limits.len() * 40);
        let mut warning = String::new();
        for (i, l) in limits.iter().enumerate() {
            if i > 0 {
                policy.push_str(", ");
                remaining.push_str(", ");
            }
            push_sf_string(&mut policy, &l.name);
            push_params(&mut policy, &[(";q=", l.max), (";w=", l.window_secs)]);
            push_sf_string(&mut remaining, &l.name);
            push_params(&mut remaining, &[(";r=", l.remaining), (";t=", l.reset)]);
            if let (true, Some(soft)) = (l.soft_crossed, l.soft) {
                if !warning.is_empty() {
                    warning.push_str(", ");
                }
                push_sf_string(&mut warning, &l.name);
                push_params(
                    &mut warning,
                    &[(";used=", l.used), (";soft=", soft), (";max=", l.max)],
                );
            }
        }
        Self {
            policy: Some(policy),
            remaining: Some(remaining),
            warning: (!warning.is_empty()).then_some(warning),
        }
    }
}

/// What a lease's answer lets the proxy say about each limit afterwards: the fixed
/// policy, each limit's remaining room when granted and when its window resets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseLimits {
    pub policy: Option<String>,
    /// (name, remaining at grant, window end in unix ms on this proxy's clock).
    limits: Vec<(String, u64, u64)>,
    pub warning: Option<String>,
}

impl LeaseLimits {
    /// From a lease answer's limits, received at `now_ms` (this proxy's clock).
    pub fn from_grant(limits: &[LimitAnswer<'_>], now_ms: u64) -> Self {
        let base = RateLimitHeaders::from_limits(limits);
        LeaseLimits {
            policy: base.policy,
            limits: limits
                .iter()
                .map(|l| {
                    let end = now_ms.saturating_add(l.reset.saturating_mul(1000));
                    (l.name.to_string(), l.remaining, end)
                })
                .collect(),
            warning: base.warning,
        }
    }

    /// Bytes for the other workers of this proxy (shared data): a worker whose lease
    /// another one renewed has the grant's limits only from there. Lines: the policy,
    /// the warning, then `room end name` per limit; text, since every part is a header
    /// value already (names keep to printable ASCII in headers anyway).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(64 + self.limits.len() * 32);
        let line = |out: &mut String, v: &str| {
            out.extend(v.chars().filter(|c| *c != '\n'));
            out.push('\n');
        };
        line(&mut out, self.policy.as_deref().unwrap_or(""));
        line(&mut out, self.warning.as_deref().unwrap_or(""));
        for (name, room, end) in &self.limits {
            let _ = write!(out, "{room} {end} ");
            line(&mut out, name);
        }
        out.into_bytes()
    }

    /// What [`Self::encode`] wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<LeaseLimits> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.split_terminator('\n');
        let some = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        let policy = some(lines.next()?);
        let warning = some(lines.next()?);
        let mut limits = Vec::new();
        for l in lines {
            let mut parts = l.splitn(3, ' ');
            let room = parts.next()?.parse().ok()?;
            let end = parts.next()?.parse().ok()?;
            limits.push((parts.next()?.to_owned(), room, end));
        }
        Some(LeaseLimits {
            policy,
            limits,
            warning,
        })
    }

    /// `RateLimit` for a request admitted from a lease with `balance` requests left:
    /// conservative, `r` is never more than the lease still holds (other proxies may
    /// hold the rest of a window's room).
    pub fn remaining(&self, balance: u64, now_ms: u64) -> Option<String> {
        if self.limits.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(self.limits.len() * 32);
        for (i, (name, room, end)) in self.limits.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            push_sf_string(&mut out, name);
            let secs = end.saturating_sub(now_ms).div_ceil(1000).max(1);
            push_params(&mut out, &[(";r=", balance.min(*room)), (";t=", secs)]);
        }
        Some(out)
    }
}

/// Seconds a denied client should wait: the counter's `retry_after`, else the latest
/// reset among exhausted limits (never earlier than the window's end), at least 1.
pub fn retry_after_secs(answer: &ConsumeAnswer<'_>) -> u64 {
    answer
        .retry_after
        .or_else(|| {
            answer
                .limits
                .iter()
                .filter(|l| l.remaining == 0)
                .map(|l| l.reset)
                .max()
        })
        .unwrap_or(1)
        .max(1)
}

/// Integer parameters of a list member (`;r=59;t=42`), per request: no `write!`.
fn push_params(out: &mut String, params: &[(&str, u64)]) {
    for (prefix, n) in params {
        out.push_str(prefix);
        crate::decimal::push_str(out, *n);
    }
}

/// An RFC 8941 sf-string. Names come from the counter, so escape `"` and `\` and drop
/// anything outside printable ASCII rather than emit an invalid header.
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn limit(
        name: &str,
        max: u64,
        window_secs: u64,
        used: u64,
        reset: u64,
    ) -> LimitAnswer<'static> {
        LimitAnswer {
            name: Cow::Owned(name.to_owned()),
            window_secs,
            max,
            used,
            remaining: max.saturating_sub(used),
            reset,
            soft: None,
            soft_crossed: false,
        }
    }

    #[test]
    fn one_list_member_per_limit_in_counter_order() {
        let h = RateLimitHeaders::from_limits(&[
            limit("per-minute", 60, 60, 1, 42),
            limit("monthly", 10_000, 2_592_000, 1, 123_456),
        ]);
        assert_eq!(
            h.policy.as_deref(),
            Some(r#""per-minute";q=60;w=60, "monthly";q=10000;w=2592000"#)
        );
        assert_eq!(
            h.remaining.as_deref(),
            Some(r#""per-minute";r=59;t=42, "monthly";r=9999;t=123456"#)
        );
        assert_eq!(h.warning, None);
    }

    #[test]
    fn crossed_soft_threshold_yields_a_warning() {
        let mut monthly = limit("monthly", 10_000, 2_592_000, 8_001, 9);
        monthly.soft = Some(8_000);
        monthly.soft_crossed = true;
        let mut below = limit("daily", 500, 86_400, 10, 9);
        below.soft = Some(400);
        let h = RateLimitHeaders::from_limits(&[below, monthly]);
        assert_eq!(
            h.warning.as_deref(),
            Some(r#""monthly";used=8001;soft=8000;max=10000"#)
        );
    }

    #[test]
    fn no_limits_means_no_headers() {
        assert_eq!(
            RateLimitHeaders::from_limits(&[]),
            RateLimitHeaders::default()
        );
    }

    #[test]
    fn hostile_limit_names_are_escaped_or_dropped() {
        let h = RateLimitHeaders::from_limits(&[limit("a\"b\\c\r\nd", 1, 1, 0, 1)]);
        assert_eq!(h.policy.as_deref(), Some(r#""a\"b\\cd";q=1;w=1"#));
    }

    fn answer(
        retry_after: Option<u64>,
        limits: Vec<LimitAnswer<'static>>,
    ) -> ConsumeAnswer<'static> {
        ConsumeAnswer {
            allowed: false,
            plan: Cow::Borrowed("free"),
            limits,
            denied_by: None,
            retry_after,
            time_ms: None,
            exceeds_limit: None,
        }
    }

    #[test]
    fn lease_headers_never_promise_more_than_the_lease_holds() {
        let limits = vec![
            limit("per-minute", 60, 60, 50, 42),
            limit("monthly", 1000, 2_592_000, 900, 90_000),
        ];
        let l = LeaseLimits::from_grant(&limits, 1_000_000);
        assert_eq!(
            l.policy.as_deref(),
            Some(r#""per-minute";q=60;w=60, "monthly";q=1000;w=2592000"#)
        );
        assert_eq!(
            l.remaining(7, 1_002_000).as_deref(),
            Some(r#""per-minute";r=7;t=40, "monthly";r=7;t=89998"#)
        );
        assert_eq!(LeaseLimits::default().remaining(3, 0), None);
    }

    #[test]
    fn retry_after_prefers_the_counters_value() {
        assert_eq!(
            retry_after_secs(&answer(Some(30), vec![limit("m", 1, 60, 1, 5)])),
            30
        );
    }

    #[test]
    fn retry_after_falls_back_to_latest_exhausted_reset_and_is_at_least_one() {
        let limits = vec![
            limit("s", 1, 1, 1, 1),
            limit("m", 5, 60, 5, 40),
            limit("h", 100, 3600, 3, 900),
        ];
        assert_eq!(retry_after_secs(&answer(None, limits)), 40);
        assert_eq!(retry_after_secs(&answer(Some(0), vec![])), 1);
        assert_eq!(retry_after_secs(&answer(None, vec![])), 1);
    }

    #[test]
    fn lease_limits_go_to_the_other_workers_and_back_unchanged() {
        let mut daily = limit("daily limit", 5000, 86_400, 4100, 3600);
        daily.soft = Some(200);
        daily.soft_crossed = true;
        let limits = [daily, limit("per-second", 100, 1, 40, 1)];
        let l = LeaseLimits::from_grant(&limits, 1_000_000);
        let back = LeaseLimits::decode(&l.encode()).unwrap();
        assert_eq!(back, l);
        assert_eq!(back.remaining(30, 1_000_500), l.remaining(30, 1_000_500));
        let empty = LeaseLimits::default();
        assert_eq!(LeaseLimits::decode(&empty.encode()).unwrap(), empty);
        for bad in [
            &b""[..],
            b"p\n",
            b"p\nw\nx 1 n\n",
            b"p\nw\n1 2\n",
            b"\xff\n\n",
        ] {
            assert_eq!(LeaseLimits::decode(bad), None, "{bad:?}");
        }
    }
}
