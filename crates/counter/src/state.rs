use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use turnpike_plans::Plans;

use crate::api::LogThrottle;
use crate::auth::Tokens;
use crate::clock::Clock;
use crate::ledger::LedgerClient;
use crate::metrics::Metrics;
use crate::store::Store;

/// Re-seeding a tenant is serialised per shard of tenants, so a burst of requests
/// after Redis lost its data makes one ledger call per tenant, not one per request.
const SEED_SHARDS: usize = 64;

/// What every handler shares. `plans` is swapped whole on reload, so a request sees
/// either the old or the new plans, never a mix.
pub struct AppState {
    pub plans: ArcSwap<Plans>,
    pub store: Store,
    pub metrics: Metrics,
    pub clock: Clock,
    /// Who may consume and refund (the proxies).
    pub service_tokens: Tokens,
    /// Who may read usage.
    pub read_tokens: Tokens,
    /// Where windows come back from after Redis lost them.
    pub ledger: Option<LedgerClient>,
    /// Upper bound on one consume, all Redis calls and a re-seed included.
    pub budget: std::time::Duration,
    /// How grants are sized.
    pub lease_policy: crate::lease::LeasePolicy,
    pub(crate) seed_locks: Vec<Mutex<()>>,
    pub(crate) error_log: LogThrottle,
    /// When the ledger last failed (unix s): best-effort seeds skip it for a while.
    ledger_failed_at: std::sync::atomic::AtomicI64,
}

impl AppState {
    pub fn new(plans: Plans, store: Store) -> AppState {
        AppState {
            plans: ArcSwap::from_pointee(plans),
            store,
            metrics: Metrics::default(),
            clock: Clock::default(),
            service_tokens: Tokens::default(),
            read_tokens: Tokens::default(),
            ledger: None,
            budget: std::time::Duration::from_millis(150),
            lease_policy: crate::lease::LeasePolicy::default(),
            seed_locks: (0..SEED_SHARDS).map(|_| Mutex::new(())).collect(),
            error_log: LogThrottle::default(),
            ledger_failed_at: std::sync::atomic::AtomicI64::new(i64::MIN / 2),
        }
    }

    /// Seconds a failed ledger is not asked for best-effort seeds.
    const LEDGER_BACKOFF_SECS: i64 = 10;

    pub(crate) fn note_ledger_failure(&self) {
        self.ledger_failed_at
            .store(self.clock.now_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn ledger_recently_failed(&self) -> bool {
        let at = self
            .ledger_failed_at
            .load(std::sync::atomic::Ordering::Relaxed);
        self.clock.now_secs() - at < Self::LEDGER_BACKOFF_SECS
    }

    pub(crate) fn seed_lock(&self, tenant: &str) -> &Mutex<()> {
        let shard = crate::keys::bucket(tenant) as usize % SEED_SHARDS;
        // SEED_SHARDS locks were made in `new`.
        &self.seed_locks[shard]
    }
}
