use arc_swap::ArcSwap;
use turnpike_plans::Plans;

use crate::api::LogThrottle;
use crate::metrics::Metrics;
use crate::store::Store;

/// What every handler shares. `plans` is swapped whole on reload, so a request sees
/// either the old or the new plans, never a mix.
pub struct AppState {
    pub plans: ArcSwap<Plans>,
    pub store: Store,
    pub metrics: Metrics,
    pub(crate) error_log: LogThrottle,
}

impl AppState {
    pub fn new(plans: Plans, store: Store) -> AppState {
        AppState {
            plans: ArcSwap::from_pointee(plans),
            store,
            metrics: Metrics::default(),
            error_log: LogThrottle::default(),
        }
    }
}
