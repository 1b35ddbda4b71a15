//! Turnpike: usage metering and quota enforcement for Envoy, as a proxy-wasm filter.
//!
//! Everything but [`wasm`] is host-agnostic logic that compiles and unit-tests natively;
//! [`wasm`] is the thin proxy-wasm glue, built only for `wasm32`.

// Tests may unwrap and index: a failing assertion is the point there.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod callout;
pub mod claims;
pub mod coalesce;
pub mod config;
pub mod consume_id;
pub mod decimal;
pub mod decision;
pub mod events;
pub mod header_pairs;
pub mod lease_state;
pub mod log_budget;
pub mod path;
pub mod problem;
pub mod ratelimit;
pub mod reserved;
pub mod retry_queue;
pub mod routes;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod wasm;
