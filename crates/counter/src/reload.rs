//! Reload the plans file on change and on SIGHUP. An invalid file is refused with a
//! log line naming the field; the running plans stay.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use turnpike_plans::Plans;

use crate::metrics::Metrics;
use crate::state::AppState;

/// Editors and config-map updates write in several steps; wait for them to settle.
const SETTLE: Duration = Duration::from_millis(100);

const K8S_DATA_LINK: &str = "..data";

/// Keeps the file watcher alive; dropping it stops watching.
pub struct Reloader {
    _watcher: notify::RecommendedWatcher,
}

/// Start watching `path` and listening for SIGHUP.
pub fn spawn(state: Arc<AppState>, path: PathBuf) -> Result<Reloader, std::io::Error> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let file_name = path.file_name().map(OsString::from);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if concerns_plans(&event, file_name.as_deref()) {
                // A full channel already has a reload pending.
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(std::io::Error::other)?;
    // Watch the directory, not the file: atomic renames and Kubernetes config-map
    // symlink swaps replace the file's inode, which a file watch would lose.
    watcher
        .watch(watch_dir(&path), RecursiveMode::NonRecursive)
        .map_err(std::io::Error::other)?;

    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let cause = tokio::select! {
                changed = rx.recv() => {
                    if changed.is_none() {
                        break;
                    }
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    "file change"
                }
                _ = hangup.recv() => "SIGHUP",
            };
            reload(&state, &path, cause);
        }
    });
    Ok(Reloader { _watcher: watcher })
}

/// Whether a directory event may have changed the plans file: a write, rename or
/// removal of the file itself, or of `..data`, the symlink Kubernetes swaps when a
/// config map changes. Reads (our own included) and other files are ignored.
fn concerns_plans(event: &notify::Event, file_name: Option<&OsStr>) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|p| {
        let name = p.file_name();
        name == file_name || name == Some(OsStr::new(K8S_DATA_LINK))
    })
}

fn watch_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, ModifyKind};
    use notify::Event;

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn writes_and_renames_of_the_plans_file_or_k8s_data_link_trigger_a_reload() {
        let name = Some(OsStr::new("plans.toml"));
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(concerns_plans(&event(modify, "/etc/tp/plans.toml"), name));
        assert!(concerns_plans(
            &event(EventKind::Create(CreateKind::File), "/etc/tp/..data"),
            name
        ));
        assert!(!concerns_plans(&event(modify, "/etc/tp/counter.log"), name));
        assert!(!concerns_plans(
            &event(EventKind::Access(AccessKind::Any), "/etc/tp/plans.toml"),
            name
        ));
    }
}
