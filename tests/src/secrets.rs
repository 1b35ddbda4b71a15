//! The credentials every test stack uses: the counter's service and read tokens, and
//! the collector's ingest secret and read token. Envoy gets the service token and the
//! ingest secret through its environment, as a deployment would.

/// What the filter sends to the counter (consume, refund).
pub const SERVICE_TOKEN: &str = "test-service-token-0123456789";
/// What may read the counter's usage and the collector's ledger (and what the counter
/// uses to re-seed windows from the ledger).
pub const READ_TOKEN: &str = "test-read-token-0123456789";
/// What the filter sends to the collector with usage events.
pub const INGEST_SECRET: &str = "test-ingest-secret-0123456789";
