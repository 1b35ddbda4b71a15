//! Crash points for tests: `TURNPIKE_BILLING_FAILPOINT=after_send:3` aborts the
//! process right after Stripe confirmed the third meter event and before the
//! confirmation is recorded, the crash the exactly-once design has to survive.
//! Points: `after_intent`, `after_send`, `after_cancel`. Unset (always, outside
//! tests), a hit costs one check of an initialised `OnceLock`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const VAR: &str = "TURNPIKE_BILLING_FAILPOINT";

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

/// `point:n` (n >= 1), or `point` for the first hit.
fn parse(text: &str) -> Option<(String, u64)> {
    let (point, n) = match text.split_once(':') {
        Some((point, n)) => (point, n.parse().ok().filter(|n| *n >= 1)?),
        None => (text, 1),
    };
    (!point.is_empty()).then(|| (point.to_owned(), n))
}

/// Abort the process if `point` is armed and this is its n-th hit.
pub fn hit(point: &str) {
    let armed = ARMED.get_or_init(|| std::env::var(VAR).ok().as_deref().and_then(parse));
    if let Some((name, n)) = armed {
        if name == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("{VAR}: aborting at {point} (hit {n})");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failpoints_name_a_point_and_which_hit_aborts() {
        assert_eq!(parse("after_send:3"), Some(("after_send".into(), 3)));
        assert_eq!(parse("after_intent"), Some(("after_intent".into(), 1)));
        for bad in ["", "after_send:0", "after_send:x", ":2"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
