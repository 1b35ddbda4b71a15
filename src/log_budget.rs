//! Bounded-rate logging: at most one line per interval, reporting how many were held
//! back, so a dead counter at 20k req/s cannot flood Envoy's log.

#[derive(Debug, Clone)]
pub struct LogBudget {
    interval_ns: u64,
    last_ns: Option<u64>,
    suppressed: u64,
}

impl LogBudget {
    pub fn new(interval_secs: u64) -> Self {
        Self {
            interval_ns: interval_secs.saturating_mul(1_000_000_000),
            last_ns: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being the lines suppressed since the
    /// last one; `None` when this one is to be suppressed.
    pub fn admit(&mut self, now_ns: u64) -> Option<u64> {
        let due = self
            .last_ns
            .is_none_or(|last| now_ns.saturating_sub(last) >= self.interval_ns);
        if due {
            self.last_ns = Some(now_ns);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn first_line_is_logged_then_suppressed_within_the_interval() {
        let mut b = LogBudget::new(10);
        assert_eq!(b.admit(100 * SEC), Some(0));
        assert_eq!(b.admit(101 * SEC), None);
        assert_eq!(b.admit(109 * SEC), None);
    }

    #[test]
    fn next_line_after_the_interval_reports_the_suppressed_count() {
        let mut b = LogBudget::new(10);
        b.admit(0);
        for t in 1..=5 {
            assert_eq!(b.admit(t * SEC), None);
        }
        assert_eq!(b.admit(10 * SEC), Some(5));
        assert_eq!(b.admit(11 * SEC), None);
        assert_eq!(b.admit(20 * SEC), Some(1));
    }

    #[test]
    fn clock_going_backwards_does_not_unlock_logging() {
        let mut b = LogBudget::new(10);
        b.admit(50 * SEC);
        assert_eq!(b.admit(5 * SEC), None);
    }
}
