//! Episodes: one alert when an anomaly starts, silence while it lasts, and a fresh alert
//! only after the series has been normal for `cooldown` buckets.

use serde::{Deserialize, Serialize};

use crate::kinds::Kind;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Episode {
    pub kind: Option<Kind>,
    /// Buckets since the episode opened.
    pub len: u32,
    /// Consecutive normal buckets.
    pub quiet: u32,
}

/// What became of an open episode after one more bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Ongoing,
    /// Normal for `cooldown` buckets: over.
    Closed,
    /// Still abnormal after `adapt_after` buckets: a new normal.
    Persisted,
}

impl Episode {
    pub fn is_open(&self) -> bool {
        self.kind.is_some()
    }

    pub fn open(&mut self, kind: Kind) {
        *self = Episode {
            kind: Some(kind),
            len: 0,
            quiet: 0,
        };
    }

    pub fn close(&mut self) {
        *self = Episode::default();
    }

    pub fn step(&mut self, abnormal: bool, cooldown: u32, adapt_after: u32) -> Step {
        self.len = self.len.saturating_add(1);
        if abnormal {
            self.quiet = 0;
        } else {
            self.quiet += 1;
        }
        if self.quiet >= cooldown {
            self.close();
            Step::Closed
        } else if self.len >= adapt_after && adapt_after > 0 {
            self.close();
            Step::Persisted
        } else {
            Step::Ongoing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_after_cooldown_and_persists_after_adapt() {
        let mut e = Episode::default();
        e.open(Kind::Spike);
        assert_eq!(e.step(true, 3, 10), Step::Ongoing);
        assert_eq!(e.step(false, 3, 10), Step::Ongoing);
        assert_eq!(e.step(false, 3, 10), Step::Ongoing);
        assert_eq!(e.step(false, 3, 10), Step::Closed);
        assert!(!e.is_open());
        e.open(Kind::Drop);
        let steps: Vec<Step> = (0..10).map(|_| e.step(true, 3, 10)).collect();
        assert_eq!(steps.last(), Some(&Step::Persisted));
        assert!(!e.is_open());
    }
}
