//! The counter's clock is Redis's: every script reply carries Redis's `TIME`, and the
//! counter keeps the offset between it and its own clock. Tickets are built for
//! Redis's "now" as last learned; the script re-checks against its own `TIME` and asks
//! for a new ticket when a window does not contain it, so replicas whose clocks
//! disagree still count in the same windows.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct Clock {
    /// Redis's clock minus the local clock, milliseconds.
    offset_ms: AtomicI64,
    /// Added to the local clock: lets tests run replicas whose clocks disagree.
    skew_ms: i64,
}

impl Clock {
    pub fn with_skew(skew_ms: i64) -> Clock {
        Clock {
            offset_ms: AtomicI64::new(0),
            skew_ms,
        }
    }

    fn local_ms(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        now.saturating_add(self.skew_ms)
    }

    /// Redis's time as last learned, unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.local_ms().saturating_add(self.offset_ms.load(Relaxed))
    }

    /// Whole unix seconds of [`Clock::now_ms`], truncated (so "seconds until the
    /// window ends" never undershoots).
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Redis said its time is `redis_ms`.
    pub fn learn(&self, redis_ms: u64) {
        let redis_ms = i64::try_from(redis_ms).unwrap_or(i64::MAX);
        self.offset_ms
            .store(redis_ms.saturating_sub(self.local_ms()), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_clock_follows_redis_once_it_has_learned() {
        let clock = Clock::with_skew(-30_000);
        let truth = Clock::default().now_ms();
        assert!((clock.now_ms() - (truth - 30_000)).abs() < 1_000);
        clock.learn(u64::try_from(truth).unwrap());
        assert!((clock.now_ms() - truth).abs() < 1_000);
        assert_eq!(clock.now_secs(), clock.now_ms().div_euclid(1000));
    }
}
