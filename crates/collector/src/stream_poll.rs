//! Which usage streams a collector round reads. A stream that gave entries is read
//! again at the next round; one found empty waits before it is read again, the wait
//! doubling from [`FIRST_WAIT`] up to [`MAX_WAIT`] while it stays empty. So a round
//! costs Redis and the collector a command per busy stream, not one per stream: under
//! load, traffic sits in few of the 256 buckets' streams, and reading all of them every
//! round cost more than the entries themselves (six `XREADGROUP`s per exact consume).
//! An entry in a quiet stream waits at most [`MAX_WAIT`] to be read, as it did when the
//! whole collector idled.

use std::time::{Duration, Instant};

/// The first wait of a stream found empty.
pub const FIRST_WAIT: Duration = Duration::from_millis(50);
/// The longest wait of a stream that stays empty.
pub const MAX_WAIT: Duration = Duration::from_millis(800);

#[derive(Debug, Clone, Copy)]
struct Poll {
    due: Instant,
    /// Zero while the stream gives entries.
    wait: Duration,
}

/// When each stream is due, by its index in the collector's list of streams.
#[derive(Debug)]
pub struct PollSchedule {
    streams: Vec<Poll>,
}

impl PollSchedule {
    /// `n` streams, all due at `now`.
    pub fn new(n: usize, now: Instant) -> PollSchedule {
        PollSchedule {
            streams: vec![
                Poll {
                    due: now,
                    wait: Duration::ZERO
                };
                n
            ],
        }
    }

    /// The streams to read at `now`, in index order.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        (0..self.streams.len())
            .filter(|&i| self.streams[i].due <= now)
            .collect()
    }

    /// Stream `i` was read at `now` and gave `entries` entries.
    pub fn read(&mut self, i: usize, entries: usize, now: Instant) {
        let Some(poll) = self.streams.get_mut(i) else {
            return;
        };
        poll.wait = if entries > 0 {
            Duration::ZERO
        } else if poll.wait.is_zero() {
            FIRST_WAIT
        } else {
            (poll.wait * 2).min(MAX_WAIT)
        };
        poll.due = now + poll.wait;
    }

    /// When the next stream is due (`now` when there are none: nothing to wait for).
    pub fn next_due(&self, now: Instant) -> Instant {
        self.streams.iter().map(|p| p.due).min().unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn every_stream_is_read_first() {
        let t0 = Instant::now();
        assert_eq!(PollSchedule::new(4, t0).due(t0), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_busy_stream_is_read_every_round_and_an_empty_one_ever_less_often_up_to_the_cap() {
        let t0 = Instant::now();
        let mut s = PollSchedule::new(2, t0);
        s.read(0, 7, t0);
        s.read(1, 0, t0);
        assert_eq!(s.due(t0 + MS), vec![0]);
        assert_eq!(s.due(t0 + 50 * MS), vec![0, 1]);
        // Stream 1 found empty each time it is due: 50, 100, 200, 400, 800, 800 ms.
        let (mut at, mut waits) = (t0, Vec::new());
        for _ in 0..5 {
            at = s.streams[1].due;
            s.read(1, 0, at);
            waits.push((s.streams[1].due - at).as_millis());
        }
        assert_eq!(waits, vec![100, 200, 400, 800, 800]);
        assert_eq!(s.due(at + 799 * MS), vec![0]);
    }

    #[test]
    fn a_quiet_stream_that_gives_entries_is_read_at_once_again() {
        let t0 = Instant::now();
        let mut s = PollSchedule::new(1, t0);
        s.read(0, 0, t0);
        s.read(0, 0, t0 + 50 * MS);
        assert_eq!(s.next_due(t0), t0 + 150 * MS);
        s.read(0, 3, t0 + 150 * MS);
        assert_eq!(s.due(t0 + 150 * MS), vec![0]);
    }

    #[test]
    fn the_next_due_stream_sets_how_long_an_idle_collector_sleeps() {
        let t0 = Instant::now();
        let mut s = PollSchedule::new(3, t0);
        for i in 0..3 {
            s.read(i, 0, t0);
        }
        s.read(1, 0, t0 + 50 * MS);
        // 0 and 2 are due at 50 ms, 1 at 150 ms.
        assert_eq!(s.next_due(t0 + 50 * MS), t0 + 50 * MS);
        assert_eq!(s.due(t0 + 50 * MS), vec![0, 2]);
        assert_eq!(PollSchedule::new(0, t0).next_due(t0), t0);
    }
}
