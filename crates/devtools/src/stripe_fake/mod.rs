//! A local, stateful stand-in for Stripe's Billing Meters API (v1), for tests and
//! demos where Stripe cannot be reached: `turnpike-dev stripe-fake`.
//!
//! # Stripe routes
//!
//! Authenticated with a secret key (`Authorization: Bearer sk_test_…`, or Basic
//! with the key as user name), form-encoded with bracket nesting, answering Stripe's
//! objects and Stripe's error bodies (`{"error": {"type", "code", "message",
//! "param", "doc_url", "request_log_url"}}`), a `Request-Id` header on every answer:
//!
//! | route | does |
//! | --- | --- |
//! | `POST /v1/billing/meters` | create a meter (`event_name` unique among active meters) |
//! | `GET /v1/billing/meters` | list, newest first, `status`, `limit`/`starting_after`/`ending_before` |
//! | `GET /v1/billing/meters/{id}` | retrieve |
//! | `POST /v1/billing/meters/{id}` | update `display_name` |
//! | `POST /v1/billing/meters/{id}/deactivate`, `…/reactivate` | change status |
//! | `GET /v1/billing/meters/{id}/event_summaries` | `customer`, `start_time`, `end_time`, optional `value_grouping_window` (`hour`/`day`); `sum`/`count`/`last`; chronological, paged |
//! | `POST /v1/billing/meter_events` | record an event |
//! | `POST /v1/billing/meter_event_adjustments` | `type=cancel`, `cancel[identifier]` |
//!
//! Rules enforced, from the spec: parameters unknown / missing / empty / too long /
//! not an integer / not in the enum are refused with `param` naming them
//! (`parameter_unknown`, `parameter_missing`, `parameter_invalid_empty`,
//! `parameter_invalid_integer`; a too-long string has no code, as at Stripe); an
//! event `identifier` repeated within 24 hours of the first is refused
//! (`400 invalid_request_error`, "An event already exists with identifier …",
//! `Stripe-Should-Retry: false`), after that it is accepted again: Stripe promises
//! uniqueness for at least 24 hours and the fake gives exactly that; `timestamp`
//! must lie within the past 35 days (35 × 86 400 s) and at most 5 minutes ahead; a
//! cancel must come within 24 hours of the event's receipt; summary bounds must be
//! minute-aligned (hour- or day-aligned with grouping).
//!
//! `Idempotency-Key` on POSTs: same key and parameters → the stored answer again,
//! with `Idempotent-Replayed: true` and `Original-Request`; same key with other
//! parameters or another endpoint → 400 `idempotency_error`; while the first request
//! is still running → 409 `idempotency_key_in_use`. Keys live 24 hours; requests
//! refused by parameter validation store nothing.
//!
//! Where Stripe's wording or timing is not documented the fake chooses and says so:
//! the messages for the timestamp window, the cancel window, an inactive meter, an
//! already cancelled event and payload errors are the fake's own (the `param` is
//! what a client should rely on). Events for a name no meter has are accepted (v1
//! reports those later, asynchronously); events for a name whose meter is inactive,
//! or whose payload lacks the customer or a whole-number value, are refused at once.
//! Cancels apply at once (`status: complete`); at Stripe they may be `pending` and
//! summaries are eventually consistent. Everything is test mode (`livemode: false`).
//! Not implemented: the v2 meter event routes (`/v2/billing/meter_events`,
//! `meter_event_session`, `meter_event_stream`, `meter_event_adjustments`), Stripe's
//! own rate limits (use a fault), `expand` (accepted; nothing here is expandable).
//!
//! # Admin routes (no authentication; for tests)
//!
//! | route | does |
//! | --- | --- |
//! | `POST /_fake/faults` | add a fault rule (or a JSON list of them), answer the pending rules |
//! | `GET /_fake/faults`, `DELETE /_fake/faults` | pending rules; clear them |
//! | `GET /_fake/clock` | `{"now", "offset_secs"}` |
//! | `POST /_fake/clock` | `{"advance_secs": N}`, `{"now": T}` or `{"offset_secs": N}` shifts the fake's now |
//! | `GET /_fake/events` | everything held: meters, events (with `meter`, `cancelled_at`), adjustments |
//! | `GET /_fake/requests`, `DELETE /_fake/requests` | the requests seen (id, method, path, idempotency key, status, replayed, fault); clear |
//! | `POST /_fake/reset` | forget all state, faults, the request log and the clock shift |
//!
//! A fault rule is `{"kind": K, "count": N (default 1), "method": M?, "path": P?}`
//! with `P` an exact path or a prefix ending in `*`, and `K` one of
//! `rate_limit` (`retry_after_secs`?, `should_retry`?), `server_error` (`status`
//! default 500, `should_retry`?), `delay` (`ms`; the request holds its idempotency
//! key meanwhile), `drop` (`after_processing`, default true: the request is processed
//! and stored, then the connection closes without an answer). 429 and 5xx faults
//! happen before processing, so nothing is stored under the idempotency key.

mod api;
mod auth;
pub mod error;
mod faults;
pub mod form;
mod handlers;
mod idempotency;
mod ids;
mod list;
pub mod model;
mod params;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use api::LoggedRequest;
pub use faults::{FaultAction, FaultRule};

/// The port Stripe's own mock server (stripe-mock) uses, so tools pointed at it work.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:12111";
/// The key accepted when none is configured.
pub const DEFAULT_API_KEY: &str = "sk_test_turnpike";

/// How to run the fake.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Secret keys accepted.
    pub api_keys: Vec<String>,
    /// Where to keep state across restarts (JSON); in memory only if `None`.
    pub state_file: Option<PathBuf>,
}

impl Default for FakeConfig {
    fn default() -> FakeConfig {
        FakeConfig {
            api_keys: vec![DEFAULT_API_KEY.to_owned()],
            state_file: None,
        }
    }
}

/// Keys from a key file: one per line, blank lines and `#` comments ignored.
pub fn parse_key_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Serves the fake on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: FakeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(api::Shared::new(config)?);
    api::serve(listener, api::router(shared), shutdown).await
}

/// A fake running in this process (for tests); stops when dropped.
pub struct RunningFake {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningFake {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningFake {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the fake on `addr` (port 0 for any free port) in a background task.
pub async fn start(addr: SocketAddr, config: FakeConfig) -> std::io::Result<RunningFake> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let shared = Arc::new(api::Shared::new(config)?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(api::serve(listener, api::router(shared), async {
        let _ = stopped.await;
    }));
    Ok(RunningFake {
        addr: local,
        stop: Some(stop),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_hold_one_key_per_line_with_comments() {
        assert_eq!(
            parse_key_file("# test keys\nsk_test_a\n\n  sk_test_b  \n"),
            vec!["sk_test_a".to_owned(), "sk_test_b".to_owned()]
        );
    }
}
