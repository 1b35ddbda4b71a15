//! Turnpike collector: ingests CloudEvents usage batches from the proxies into an
//! exactly-once ledger (SQLite or PostgreSQL) and answers usage queries.
//!
//! Pure logic ([`event`], [`window`], [`cursor`]) is separate from I/O ([`ledger`],
//! [`api`], [`server`]).

pub mod api;
pub mod billing;
pub mod config;
pub mod cursor;
pub mod event;
pub mod ledger;
pub mod metrics;
pub mod problem;
pub mod server;
pub mod window;
