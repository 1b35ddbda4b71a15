//! Watch a plans file: a callback runs when the file (or the `..data` symlink that
//! Kubernetes swaps when a config map changes) is written, renamed or removed, and on
//! SIGHUP. Shared by the counter and the collector, so both reload the same way.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Editors and config-map updates write in several steps; wait for them to settle.
const SETTLE: Duration = Duration::from_millis(100);

const K8S_DATA_LINK: &str = "..data";

/// Keeps the file watcher alive; dropping it stops watching.
pub struct Reloader {
    _watcher: notify::RecommendedWatcher,
}

/// Start watching `path` and listening for SIGHUP; `reload(cause)` runs on each change
/// (`cause` is "file change" or "SIGHUP"). Must be called inside a tokio runtime.
pub fn spawn(
    path: PathBuf,
    reload: impl Fn(&str) + Send + 'static,
) -> Result<Reloader, std::io::Error> {
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
            reload(cause);
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, ModifyKind};
    use notify::Event;
    use std::path::PathBuf;

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
