//! Billing: Turnpike keeps the usage; Stripe is told, per customer, meter and closed
//! hour, one aggregated quantity, exactly once, and reconciled against it.
//!
//! - [`plan`], [`identifier`]: pure decisions (what an hour needs) and names.
//! - [`store`]: the durable sync state next to the ledger (`0003_billing.sql`).
//! - [`sync`]: the run (fold ledger changes, decide, write the intent, call Stripe,
//!   record), entry point [`sync::Syncer::run_once`] and the server's
//!   [`sync::run_periodically`].
//! - [`reconcile`]: ledger vs what was sent vs Stripe's summaries, per customer,
//!   event name and billing period.
//! - [`status`], [`http`], [`cli`]: what an operator sees and does.
//! - [`stripe`]: the Stripe Billing Meters client.

pub mod cli;
pub mod config;
pub mod failpoint;
pub mod http;
pub mod identifier;
pub mod plan;
pub mod reconcile;
pub mod status;
pub mod store;
pub mod stripe;
pub mod sync;
