//! RFC 9457 problem+json bodies of the filter's local replies.

use turnpike_wire::Problem;

pub const CONTENT_TYPE: &str = "application/problem+json";
pub const MISSING_TENANT: &str = "https://turnpike.dev/problems/missing-tenant";
pub const QUOTA_EXCEEDED: &str = "https://turnpike.dev/problems/quota-exceeded";
pub const COUNTER_UNAVAILABLE: &str = "https://turnpike.dev/problems/counter-unavailable";
pub const COST_EXCEEDS_LIMIT: &str = "https://turnpike.dev/problems/cost-exceeds-limit";

/// 401: the verified token names no (valid) tenant, or there is no verified token.
pub fn missing_tenant(claim: &str) -> String {
    encode(Problem {
        kind: MISSING_TENANT.to_owned(),
        title: "Missing tenant".to_owned(),
        status: 401,
        detail: Some(format!(
            "the verified token has no valid tenant claim `{claim}` (1..=64 chars of [A-Za-z0-9._-])"
        )),
    })
}

/// 429: the counter refused; `limit` is the limit that had no room.
pub fn quota_exceeded(limit: &str, plan: &str, retry_after: u64) -> String {
    encode(Problem {
        kind: QUOTA_EXCEEDED.to_owned(),
        title: "Quota exceeded".to_owned(),
        status: 429,
        detail: Some(format!(
            "limit \"{limit}\" of plan \"{plan}\" is exhausted; retry after {retry_after} s"
        )),
    })
}

/// 403: the request costs more than `limit` allows in a whole window: waiting cannot
/// help (so no Retry-After); only another plan or a smaller request can.
pub fn cost_exceeds_limit(limit: &str, plan: &str) -> String {
    encode(Problem {
        kind: COST_EXCEEDS_LIMIT.to_owned(),
        title: "Request exceeds the plan".to_owned(),
        status: 403,
        detail: Some(format!(
            "this request costs more than limit \"{limit}\" of plan \"{plan}\" allows in a whole window; it can never be allowed on this plan"
        )),
    })
}

/// 503: fail_closed and the counter did not answer usably.
pub fn counter_unavailable() -> String {
    encode(Problem {
        kind: COUNTER_UNAVAILABLE.to_owned(),
        title: "Quota service unavailable".to_owned(),
        status: 503,
        detail: Some("the quota could not be checked; retry shortly".to_owned()),
    })
}

fn encode(p: Problem) -> String {
    // A struct of strings and a number always serializes; keep a valid body regardless.
    serde_json::to_string(&p).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_exceeded_names_the_limit_and_escapes_hostile_names() {
        let body = quota_exceeded("per-\"minute", "free", 42);
        let p: Problem = serde_json::from_str(&body).unwrap();
        assert_eq!(p.kind, QUOTA_EXCEEDED);
        assert_eq!(p.status, 429);
        assert_eq!(
            p.detail.as_deref(),
            Some("limit \"per-\"minute\" of plan \"free\" is exhausted; retry after 42 s")
        );
    }

    #[test]
    fn missing_tenant_and_unavailable_carry_their_types() {
        let p: Problem = serde_json::from_str(&missing_tenant("org.id")).unwrap();
        assert_eq!((p.kind.as_str(), p.status), (MISSING_TENANT, 401));
        assert!(p.detail.unwrap().contains("org.id"));
        let p: Problem = serde_json::from_str(&counter_unavailable()).unwrap();
        assert_eq!((p.kind.as_str(), p.status), (COUNTER_UNAVAILABLE, 503));
        let p: Problem = serde_json::from_str(&cost_exceeds_limit("per-minute", "free")).unwrap();
        assert_eq!((p.kind.as_str(), p.status), (COST_EXCEEDS_LIMIT, 403));
        assert!(p.detail.unwrap().contains("never"));
    }
}
