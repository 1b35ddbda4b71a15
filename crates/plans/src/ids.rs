//! Identifier syntax shared by the plans file and the services' APIs.
//!
//! These end up inside Redis keys (`tp:{TENANT}:q:METER:...`), so the charsets
//! exclude `{`, `}`, `:` in meters, spaces and anything a key parser could trip on.

/// Tenant id: 1..=64 of `[A-Za-z0-9._-]`.
pub fn is_valid_tenant(s: &str) -> bool {
    valid(s, 64, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
    })
}

/// Meter name: 1..=32 of `[a-z0-9_]`.
pub fn is_valid_meter(s: &str) -> bool {
    valid(s, 32, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
    })
}

/// Limit name: 1..=64 of `[A-Za-z0-9_-]`.
pub fn is_valid_limit_name(s: &str) -> bool {
    valid(s, 64, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
    })
}

/// Plan name: 1..=64 of `[A-Za-z0-9._-]`, like a tenant id.
pub fn is_valid_plan_name(s: &str) -> bool {
    is_valid_tenant(s)
}

/// Consume id: 1..=64 of `[A-Za-z0-9_-]`.
pub fn is_valid_consume_id(s: &str) -> bool {
    is_valid_limit_name(s)
}

/// Stripe customer id: `cus_` then 1..=250 of `[A-Za-z0-9_]` (Stripe's ids are
/// `cus_` and letters and digits; test fixtures add underscores).
pub fn is_valid_stripe_customer(s: &str) -> bool {
    s.strip_prefix("cus_")
        .is_some_and(|rest| valid(rest, 250, |b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// Stripe meter event name: 1..=100 of `[A-Za-z0-9_.:-]` (Stripe caps it at 100
/// characters; the charset keeps names safe in logs, identifiers and URLs).
pub fn is_valid_stripe_event_name(s: &str) -> bool {
    valid(s, 100, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
    })
}

fn valid(s: &str, max_len: usize, allowed: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.len() <= max_len && s.bytes().all(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_allow_dots_and_dashes_but_not_braces_or_colons() {
        assert!(is_valid_tenant("acme.eu-west_1"));
        assert!(is_valid_tenant(&"a".repeat(64)));
        assert!(!is_valid_tenant(&"a".repeat(65)));
        assert!(!is_valid_tenant(""));
        for bad in ["a{b", "a}b", "a:b", "a b", "é", "a/b"] {
            assert!(!is_valid_tenant(bad), "{bad}");
        }
    }

    #[test]
    fn meters_are_lowercase_snake_case_up_to_32() {
        assert!(is_valid_meter("search_units2"));
        assert!(is_valid_meter(&"m".repeat(32)));
        assert!(!is_valid_meter(&"m".repeat(33)));
        for bad in ["", "Requests", "a-b", "a.b", "a:b"] {
            assert!(!is_valid_meter(bad), "{bad}");
        }
    }

    #[test]
    fn limit_names_and_consume_ids_exclude_dots() {
        assert!(is_valid_limit_name("per-minute_1"));
        assert!(!is_valid_limit_name("per.minute"));
        assert!(is_valid_consume_id("01J9Z-abc_def"));
        assert!(!is_valid_consume_id("id with space"));
        assert!(!is_valid_consume_id(&"x".repeat(65)));
    }

    #[test]
    fn stripe_customers_start_with_cus_and_event_names_are_short_and_plain() {
        assert!(is_valid_stripe_customer("cus_NffrFeUfNV2Hib"));
        assert!(is_valid_stripe_customer("cus_test_1"));
        for bad in [
            "", "cus_", "cus", "acct_123", "cus_a b", "cus_a-b", "CUS_abc",
        ] {
            assert!(!is_valid_stripe_customer(bad), "{bad}");
        }
        assert!(is_valid_stripe_event_name("api_requests"));
        assert!(is_valid_stripe_event_name("turnpike.search-units:v2"));
        assert!(is_valid_stripe_event_name(&"e".repeat(100)));
        assert!(!is_valid_stripe_event_name(&"e".repeat(101)));
        for bad in ["", "api requests", "api/requests", "é"] {
            assert!(!is_valid_stripe_event_name(bad), "{bad}");
        }
    }
}
