//! Billing: syncing usage from the ledger to a billing provider.

pub mod identifier;
pub mod plan;
pub mod stripe;
