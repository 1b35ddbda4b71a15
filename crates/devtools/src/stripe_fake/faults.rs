//! Injected failures, set over `POST /_fake/faults`: the next `count` matching
//! requests are answered 429 or 5xx, delayed, or have their connection dropped.
//! Rules are tried in the order they were added; the first matching rule with
//! requests left applies and uses one up.

use serde::{Deserialize, Serialize};

/// What happens to a request a rule hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// 429 `rate_limit`, before the request is processed (nothing is stored).
    RateLimit {
        /// `Retry-After` header, in seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
        /// `Stripe-Should-Retry` header.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        should_retry: Option<bool>,
    },
    /// A 5xx `api_error`, before the request is processed (nothing is stored).
    ServerError {
        #[serde(default = "default_server_status")]
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        should_retry: Option<bool>,
    },
    /// Holds the request this long while it counts as executing (a retry with the
    /// same idempotency key meanwhile gets 409), then processes it normally.
    Delay { ms: u64 },
    /// Closes the connection without an answer. With `after_processing` (the
    /// default) the request is processed and its result stored first: the answer is
    /// lost in transit, as when a network fails after Stripe did the work.
    Drop {
        #[serde(default = "yes")]
        after_processing: bool,
    },
}

fn default_server_status() -> u16 {
    500
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// One rule: an action for the next `count` requests matching `method`/`path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    #[serde(flatten)]
    pub action: FaultAction,
    #[serde(default = "one")]
    pub count: u32,
    /// HTTP method to match (any if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path to match exactly, or a prefix when it ends in `*` (any if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl FaultRule {
    fn matches(&self, method: &str, path: &str) -> bool {
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method));
        let path_ok = match self.path.as_deref() {
            None => true,
            Some(p) => match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => p == path,
            },
        };
        method_ok && path_ok
    }
}

/// The rules still pending.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    rules: Vec<FaultRule>,
}

impl Faults {
    pub fn add(&mut self, rule: FaultRule) {
        if rule.count > 0 {
            self.rules.push(rule);
        }
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    pub fn pending(&self) -> &[FaultRule] {
        &self.rules
    }

    /// The action for this request, if a rule hits it.
    pub fn take(&mut self, method: &str, path: &str) -> Option<FaultAction> {
        let index = self.rules.iter().position(|r| r.matches(method, path))?;
        let rule = &mut self.rules[index];
        let action = rule.action.clone();
        rule.count -= 1;
        if rule.count == 0 {
            self.rules.remove(index);
        }
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: &str) -> FaultRule {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rules_parse_with_defaults() {
        assert_eq!(
            rule(r#"{"kind": "server_error"}"#),
            FaultRule {
                action: FaultAction::ServerError {
                    status: 500,
                    should_retry: None
                },
                count: 1,
                method: None,
                path: None
            }
        );
        assert_eq!(
            rule(r#"{"kind": "drop"}"#).action,
            FaultAction::Drop {
                after_processing: true
            }
        );
        assert!(serde_json::from_str::<FaultRule>(r#"{"kind": "explode"}"#).is_err());
    }

    #[test]
    fn a_rule_applies_count_times_then_is_gone() {
        let mut faults = Faults::default();
        faults.add(rule(
            r#"{"kind": "rate_limit", "count": 2, "retry_after_secs": 1}"#,
        ));
        assert!(faults.take("POST", "/v1/x").is_some());
        assert!(faults.take("GET", "/v1/y").is_some());
        assert_eq!(faults.take("POST", "/v1/x"), None);
        assert!(faults.pending().is_empty());
    }

    #[test]
    fn rules_match_method_and_exact_or_prefix_path_in_order() {
        let mut faults = Faults::default();
        faults.add(rule(
            r#"{"kind": "delay", "ms": 5, "method": "post", "path": "/v1/billing/meter_events"}"#,
        ));
        faults.add(rule(
            r#"{"kind": "server_error", "status": 503, "path": "/v1/billing/meters*"}"#,
        ));
        assert_eq!(faults.take("GET", "/v1/billing/meter_events"), None);
        assert_eq!(
            faults.take("POST", "/v1/billing/meter_events"),
            Some(FaultAction::Delay { ms: 5 })
        );
        assert_eq!(
            faults.take("GET", "/v1/billing/meters/mtr_1"),
            Some(FaultAction::ServerError {
                status: 503,
                should_retry: None
            })
        );
    }
}
