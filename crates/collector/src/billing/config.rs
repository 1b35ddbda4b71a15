//! Billing sync flags, shared by the server and `turnpike-collector billing sync`.
//! The sync is on exactly when a Stripe secret key is configured; the key comes from
//! a file or the environment, never the command line (where `ps` shows it).

use std::path::PathBuf;
use std::time::Duration;

use super::stripe::{StripeClient, StripeConfig, DEFAULT_BASE_URL};
use super::sync::SyncSettings;
use crate::config::secret_from;

#[derive(Debug, Clone, clap::Args)]
pub struct BillingArgs {
    /// Stripe's API base URL (the fake's, `http://127.0.0.1:12111`, for tests).
    #[arg(long, env = "TURNPIKE_STRIPE_API_BASE", default_value = DEFAULT_BASE_URL)]
    pub stripe_api_base: String,

    /// File holding the Stripe secret key (`sk_live_…`, `sk_test_…` or a restricted
    /// `rk_…` with Billing Meters write access). Or TURNPIKE_STRIPE_KEY. Billing sync
    /// runs exactly when a key is configured.
    #[arg(long, env = "TURNPIKE_STRIPE_KEY_FILE")]
    pub stripe_key_file: Option<PathBuf>,

    /// Seconds between billing sync runs.
    #[arg(long, env = "TURNPIKE_BILLING_SYNC_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub billing_sync_interval_secs: u64,

    /// An hour is sent this many seconds after it ends, so late events make the first
    /// send (later ones still follow as corrections).
    #[arg(long, env = "TURNPIKE_BILLING_GRACE_SECS", default_value_t = 300)]
    pub billing_grace_secs: u64,

    /// Most Stripe requests per second. Stripe allows 25/s in test mode and 100/s
    /// (1,000/s for meter events) in live mode; one event per hour of a tenant's meter
    /// needs far less.
    #[arg(long, env = "TURNPIKE_STRIPE_RATE", default_value_t = 20.0)]
    pub stripe_rate: f64,

    /// Seconds between reconciliations with Stripe's event summaries.
    #[arg(long, env = "TURNPIKE_BILLING_RECONCILE_INTERVAL_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub billing_reconcile_interval_secs: u64,
}

impl BillingArgs {
    /// The Stripe secret key, if one is configured.
    pub fn stripe_key(&self) -> Result<Option<String>, String> {
        secret_from(
            "--stripe-key-file",
            self.stripe_key_file.as_deref(),
            "TURNPIKE_STRIPE_KEY",
        )
    }

    /// A client for `key`, paced at `--stripe-rate`.
    pub fn client(&self, key: String) -> Result<StripeClient, String> {
        let mut config = StripeConfig::new(self.stripe_api_base.clone(), key);
        config.requests_per_second = self.stripe_rate;
        StripeClient::new(config).map_err(|e| format!("Stripe: {e}"))
    }

    pub fn settings(&self, owner: impl Into<String>) -> SyncSettings {
        SyncSettings::new(owner, Duration::from_secs(self.billing_grace_secs))
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.billing_sync_interval_secs)
    }

    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(self.billing_reconcile_interval_secs)
    }
}
