//! Making a SQLite ledger path work, or saying exactly why it cannot: the directory
//! is created when missing, and the usual failures (no permission, read-only
//! directory, a directory where the file should be) name the path and the fix.

use std::path::Path;

use crate::ledger::LedgerError;

/// Create the ledger file's directory if it does not exist yet.
pub fn prepare(file: &Path) -> Result<(), LedgerError> {
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if file.is_dir() {
        return Err(LedgerError::Path(format!(
            "{} is a directory; give the ledger file's path, e.g. sqlite://{}/ledger.db",
            file.display(),
            file.display()
        )));
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| {
            LedgerError::Path(format!(
                "cannot create the ledger directory {}: {e}; create it (and make it writable \
                 by this user) or choose another --database path",
                dir.display()
            ))
        })?;
        tracing::info!(dir = %dir.display(), "created the ledger directory");
    }
    Ok(())
}

/// Turn SQLite's terse open errors into ones that name the path and the fix.
pub fn explain(file: &Path, err: sqlx::Error) -> LedgerError {
    let text = err.to_string();
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    if text.contains("readonly") || text.contains("read-only") || text.contains("code: 8") {
        return LedgerError::Path(format!(
            "the ledger {} is read-only for this user: make {} and the file writable \
             (SQLite also writes {}-wal and {}-shm next to it)",
            file.display(),
            dir.display(),
            file.display(),
            file.display()
        ));
    }
    if text.contains("unable to open") || text.contains("code: 14") {
        return LedgerError::Path(format!(
            "cannot open the ledger {}: check that {} exists and is writable by this user \
             (SQLite creates the file and its -wal/-shm companions there)",
            file.display(),
            dir.display()
        ));
    }
    LedgerError::Sqlx(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/b/ledger.db");
        prepare(&file).unwrap();
        assert!(dir.path().join("a/b").is_dir());
    }

    #[test]
    fn a_directory_in_place_of_the_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = prepare(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
    }
}
