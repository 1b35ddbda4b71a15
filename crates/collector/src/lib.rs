//! Turnpike collector: ingests CloudEvents usage batches from the proxies into an
//! exactly-once ledger (SQLite or PostgreSQL) and answers usage queries.
//!
//! Two ways in: the proxies' usage events (HTTP, [`api`]) and the counter's usage
//! streams ([`usage_stream`]); both become facts that [`merge`] folds into one row
//! per consume id in the [`ledger`]. Pure logic ([`event`], [`merge`],
//! [`stream_entry`], [`window`], [`cursor`]) is separate from I/O ([`ledger`], [`api`],
//! [`usage_stream`], [`server`]).

pub mod anomalies;
pub mod api;
pub mod billing;
pub mod config;
pub mod console;
pub mod cursor;
pub mod event;
pub mod ledger;
pub mod merge;
pub mod metrics;
pub mod problem;
pub mod reconcile;
pub mod server;
mod sqlite_path;
pub mod stream_entry;
pub mod stream_poll;
pub mod stream_round;
pub mod usage_stream;
pub mod window;
