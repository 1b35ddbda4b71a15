//! Reload the plans file on change and on SIGHUP. An invalid file is refused with a
//! log line naming the field; the running plans stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use turnpike_plans::watch::{self, Reloader};
use turnpike_plans::Plans;

use crate::metrics::Metrics;
use crate::state::AppState;

/// Start watching `path` and listening for SIGHUP.
pub fn spawn(state: Arc<AppState>, path: PathBuf) -> Result<Reloader, std::io::Error> {
    let file = path.clone();
    watch::spawn(path, move |cause| reload(&state, &file, cause))
}

/// Load `path` and swap it in if valid and different.
pub fn reload(state: &AppState, path: &Path, cause: &str) {
    match Plans::load(path) {
        Ok(plans) => {
            if **state.plans.load() == plans {
                tracing::debug!(cause, "plans file unchanged");
                return;
            }
            state.plans.store(Arc::new(plans));
            Metrics::inc(&state.metrics.reloads_ok);
            tracing::info!(cause, path = %path.display(), "plans reloaded");
        }
        Err(error) => {
            Metrics::inc(&state.metrics.reloads_failed);
            tracing::error!(cause, path = %path.display(), %error, "plans file refused; keeping the running plans");
        }
    }
}
