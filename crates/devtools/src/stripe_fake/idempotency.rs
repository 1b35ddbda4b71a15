//! Stripe's idempotent requests: the first POST with an `Idempotency-Key` stores its
//! result; a later POST with the same key and the same parameters gets that result
//! again (`Idempotent-Replayed: true`), with other parameters or another endpoint an
//! `idempotency_error`, and while the first is still running a 409
//! `idempotency_key_in_use`. Results are kept for 24 hours. Requests refused by
//! parameter validation store nothing (Stripe saves results only once the endpoint
//! began executing).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How long Stripe keeps a key's result.
pub const KEY_TTL_SECS: i64 = 24 * 3600;
/// The longest key Stripe accepts.
pub const MAX_KEY_LEN: usize = 255;

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
    /// `Request-Id` of the request that produced it (`Original-Request` on replays).
    pub request_id: String,
    pub should_retry: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    endpoint: String,
    fingerprint: String,
    created: i64,
    /// `None` while the first request is still executing.
    response: Option<StoredResponse>,
}

/// What to do with a request carrying a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// First use: execute, then [`Table::finish`] or [`Table::abandon`].
    Fresh,
    Replay(StoredResponse),
    InUse,
    EndpointMismatch {
        first: String,
    },
    ParamsMismatch,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Table {
    entries: BTreeMap<String, Entry>,
}

impl Table {
    /// `endpoint` is `METHOD /path`; `fingerprint` a canonical form of the params.
    pub fn begin(&mut self, key: &str, endpoint: &str, fingerprint: &str, now: i64) -> Begin {
        self.entries
            .retain(|_, e| e.response.is_none() || now - e.created < KEY_TTL_SECS);
        match self.entries.get(key) {
            None => {
                self.entries.insert(
                    key.to_owned(),
                    Entry {
                        endpoint: endpoint.to_owned(),
                        fingerprint: fingerprint.to_owned(),
                        created: now,
                        response: None,
                    },
                );
                Begin::Fresh
            }
            Some(e) if e.endpoint != endpoint => Begin::EndpointMismatch {
                first: e.endpoint.clone(),
            },
            Some(e) if e.fingerprint != fingerprint => Begin::ParamsMismatch,
            Some(Entry { response: None, .. }) => Begin::InUse,
            Some(Entry {
                response: Some(r), ..
            }) => Begin::Replay(r.clone()),
        }
    }

    /// Stores the result of a [`Begin::Fresh`] request.
    pub fn finish(&mut self, key: &str, response: StoredResponse) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.response = Some(response);
        }
    }

    /// Forgets a [`Begin::Fresh`] request that stored nothing (validation failure,
    /// or the request was abandoned mid-way).
    pub fn abandon(&mut self, key: &str) {
        if matches!(self.entries.get(key), Some(Entry { response: None, .. })) {
            self.entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(id: &str) -> StoredResponse {
        StoredResponse {
            status: 200,
            body: serde_json::json!({"id": id}),
            request_id: "req_first".into(),
            should_retry: None,
        }
    }

    #[test]
    fn same_key_and_params_replays_the_stored_result() {
        let mut table = Table::default();
        assert_eq!(table.begin("k", "POST /a", "x=1", 0), Begin::Fresh);
        table.finish("k", ok("1"));
        assert_eq!(
            table.begin("k", "POST /a", "x=1", 10),
            Begin::Replay(ok("1"))
        );
    }

    #[test]
    fn other_params_or_endpoint_with_the_same_key_are_mismatches() {
        let mut table = Table::default();
        table.begin("k", "POST /a", "x=1", 0);
        table.finish("k", ok("1"));
        assert_eq!(table.begin("k", "POST /a", "x=2", 1), Begin::ParamsMismatch);
        assert_eq!(
            table.begin("k", "POST /b", "x=1", 1),
            Begin::EndpointMismatch {
                first: "POST /a".into()
            }
        );
    }

    #[test]
    fn a_key_still_executing_is_in_use() {
        let mut table = Table::default();
        table.begin("k", "POST /a", "x=1", 0);
        assert_eq!(table.begin("k", "POST /a", "x=1", 0), Begin::InUse);
    }

    #[test]
    fn abandoned_requests_store_nothing() {
        let mut table = Table::default();
        table.begin("k", "POST /a", "x=1", 0);
        table.abandon("k");
        assert_eq!(table.begin("k", "POST /a", "x=2", 0), Begin::Fresh);
    }

    #[test]
    fn results_expire_after_24_hours() {
        let mut table = Table::default();
        table.begin("k", "POST /a", "x=1", 0);
        table.finish("k", ok("1"));
        assert!(matches!(
            table.begin("k", "POST /a", "x=1", KEY_TTL_SECS - 1),
            Begin::Replay(_)
        ));
        assert_eq!(
            table.begin("k", "POST /a", "x=2", KEY_TTL_SECS),
            Begin::Fresh
        );
    }
}
