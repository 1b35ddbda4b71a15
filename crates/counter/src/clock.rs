use std::time::{SystemTime, UNIX_EPOCH};

/// Whole unix seconds, truncated (so "seconds until the window ends" never undershoots).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
