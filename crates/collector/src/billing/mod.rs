//! Billing: syncing usage from the ledger to a billing provider.

pub mod stripe;
