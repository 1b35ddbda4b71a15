//! Scoring a detector's alerts against labelled windows: precision, window recall,
//! detection delay, false alarms per series-week, and the NAB score.
//!
//! **Windows.** A labelled window `[start, end)` (bucket indices) is detected if at least
//! one alert falls inside it; its delay is the first such alert's index minus `start`.
//! An alert inside some window is a true alert, any other alert a false alarm. Alerts
//! and windows in the probationary prefix are ignored (as NAB does).
//!
//! **NAB score** (Lavin & Ahmad 2015, "Evaluating real-time anomaly detection
//! algorithms – the Numenta Anomaly Benchmark"), as its scorer computes it. With
//! `σ(y) = 2 / (1 + e^{5y}) − 1`:
//! - a window `[L, R]` (inclusive, width `W = R − L + 1`) with alerts inside scores
//!   `A_TP · σ(y) / σ(−1)` for its best (earliest) alert `i`, where
//!   `y = −(R − i + 1) / W` (−1 at the window's first bucket, → 0 at its end); a window
//!   without one scores `−A_FN`;
//! - an alert outside every window scores `A_FP · σ(y)` with `y = (i − R') / (W' − 1)`
//!   measured from the end `R'` of the previous window (width `W'`), and
//!   `σ = −1` if there is no previous window or `y ≥ 3`: a late alert just after a window
//!   costs little, a stray one costs `A_FP`;
//! - normalised over all series: `100 · (S − S_null) / (S_perfect − S_null)`, where the
//!   null detector (no alerts) scores `−A_FN · N` and the perfect one (an alert on each
//!   window's first bucket) `A_TP · N`, for `N` windows.
//!
//! Profiles (A_TP, A_FP, A_FN): standard (1, 0.11, 1), reward_low_FP (1, 0.22, 1),
//! reward_low_FN (1, 0.11, 2). One difference with NAB: NAB thresholds a per-bucket
//! anomaly score and counts every bucket over the threshold; here the alerts are the
//! detector's own (one per episode), so there is no threshold to optimise.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::detector::Detector;
use crate::input::Bucket;
use crate::kinds::{Anomaly, Kind};
use crate::synth::{Label, Series};

/// An alert at bucket index `index` of its series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alert {
    pub index: usize,
    pub kind: Kind,
    pub anomaly: Option<Anomaly>,
}

/// NAB cost profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fp: 0.11,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FP",
        tp: 1.0,
        fp: 0.22,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FN",
        tp: 1.0,
        fp: 0.11,
        fn_: 2.0,
    },
];

fn scaled_sigmoid(y: f64) -> f64 {
    if y >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// Raw NAB score of one series and its number of scored windows.
pub fn nab_raw(alerts: &[Alert], labels: &[Label], probation: usize, p: &Profile) -> (f64, usize) {
    let max_tp = scaled_sigmoid(-1.0);
    let mut score = 0.0;
    let mut windows = 0;
    for l in labels
        .iter()
        .filter(|l| l.end > probation && l.end > l.start)
    {
        windows += 1;
        let right = l.end - 1;
        let width = (l.end - l.start) as f64;
        let best = alerts
            .iter()
            .filter(|a| a.index >= probation && a.index >= l.start && a.index < l.end)
            .map(|a| scaled_sigmoid(-((right - a.index + 1) as f64) / width) * p.tp / max_tp)
            .fold(None, |acc: Option<f64>, s| {
                Some(acc.map_or(s, |b| b.max(s)))
            });
        score += best.unwrap_or(-p.fn_);
    }
    for a in alerts.iter().filter(|a| a.index >= probation) {
        if labels.iter().any(|l| a.index >= l.start && a.index < l.end) {
            continue;
        }
        let prev = labels
            .iter()
            .filter(|l| l.end > l.start && l.end <= a.index)
            .max_by_key(|l| l.end);
        let s = match prev {
            None => -1.0,
            Some(l) => {
                let w = (l.end - l.start) as f64;
                let y = (a.index - (l.end - 1)) as f64 / (w - 1.0).max(1.0);
                scaled_sigmoid(y)
            }
        };
        score += s * p.fp;
    }
    (score, windows)
}

/// NAB's probationary prefix: 15 % of the series, at most 750 buckets.
pub fn nab_probation(len: usize) -> usize {
    ((0.15 * len as f64).floor()).min(750.0) as usize
}

/// Runs a fresh detector over each series; returns the alerts and the time spent in
/// `observe` alone.
pub fn replay(series: &[Series], config: &Config) -> (Vec<Vec<Alert>>, Duration, u64) {
    let mut all = Vec::with_capacity(series.len());
    let mut spent = Duration::ZERO;
    let mut buckets = 0u64;
    for s in series {
        let mut cfg = config.clone();
        cfg.interval_secs = s.interval_secs;
        let mut detector = Detector::new(cfg);
        let mut alerts = Vec::new();
        let t0 = Instant::now();
        for (i, b) in s.buckets.iter().enumerate() {
            let j = detector.observe(b);
            for a in j.alerts.iter() {
                alerts.push(Alert {
                    index: i,
                    kind: a.kind,
                    anomaly: Some(*a),
                });
            }
        }
        spent += t0.elapsed();
        buckets += s.buckets.len() as u64;
        all.push(alerts);
    }
    (all, spent, buckets)
}

/// Replay speed of `observe` alone over buckets already in memory, on one thread: each
/// series replayed `rounds` times through a fresh detector.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Buckets per second of wall-clock time.
    pub wall: f64,
    /// Buckets per second of this thread's CPU time (Linux; `None` elsewhere): the
    /// figure that does not depend on what else the machine is running.
    pub cpu: Option<f64>,
}

pub fn throughput(series: &[Series], config: &Config, rounds: usize) -> Throughput {
    let mut n = 0u64;
    let mut alerts = 0usize;
    let cpu0 = thread_cpu_secs();
    let t0 = Instant::now();
    for _ in 0..rounds {
        for s in series {
            let mut cfg = config.clone();
            cfg.interval_secs = s.interval_secs;
            let mut detector = Detector::new(cfg);
            for b in &s.buckets {
                alerts += detector.observe(std::hint::black_box(b)).alerts.len();
            }
            n += s.buckets.len() as u64;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = match (cpu0, thread_cpu_secs()) {
        (Some(a), Some(b)) if b > a => Some(n as f64 / (b - a)),
        _ => None,
    };
    std::hint::black_box(alerts);
    Throughput {
        wall: n as f64 / wall,
        cpu,
    }
}

/// This thread's user + system CPU time from `/proc/thread-self/stat` (clock ticks of
/// 1/100 s, the Linux default), if readable.
fn thread_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Recall and delay of one group of windows.
#[derive(Debug, Clone, Default)]
pub struct KindStats {
    pub windows: usize,
    pub detected: usize,
    /// Detected with an alert of the expected kind.
    pub kind_agrees: usize,
    pub delays: Vec<usize>,
}

/// Figures over a set of series.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub series: usize,
    pub buckets: u64,
    pub weeks: f64,
    pub windows: usize,
    pub detected: usize,
    pub alerts: usize,
    pub true_alerts: usize,
    pub false_alerts: usize,
    pub delays: Vec<usize>,
    pub by_kind: BTreeMap<&'static str, KindStats>,
    /// False alarms by kind of the alert.
    pub false_by_kind: BTreeMap<Kind, usize>,
    /// False alarms per series group (archetype).
    pub false_by_group: BTreeMap<&'static str, (usize, f64)>,
    pub nab: Vec<(&'static str, f64)>,
}

impl Report {
    pub fn recall(&self) -> f64 {
        ratio(self.detected, self.windows)
    }

    pub fn precision(&self) -> f64 {
        ratio(self.true_alerts, self.alerts)
    }

    pub fn false_per_week(&self) -> f64 {
        if self.weeks > 0.0 {
            self.false_alerts as f64 / self.weeks
        } else {
            0.0
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Scores `alerts[i]` against `series[i].labels`, ignoring the first `probation(len)`
/// buckets of each series.
pub fn score(
    series: &[Series],
    alerts: &[Vec<Alert>],
    probation: impl Fn(usize) -> usize,
) -> Report {
    let mut r = Report::default();
    let mut nab = [(0.0f64, 0usize); PROFILES.len()];
    for (s, alerts) in series.iter().zip(alerts) {
        let len = s.buckets.len();
        let skip = probation(len);
        let weeks = (len - skip.min(len)) as f64 * s.interval_secs as f64 / (7.0 * 86_400.0);
        r.series += 1;
        r.buckets += len as u64;
        r.weeks += weeks;
        for l in s.labels.iter().filter(|l| l.end > skip && l.end > l.start) {
            r.windows += 1;
            let stats = r.by_kind.entry(l.kind).or_default();
            stats.windows += 1;
            let inside: Vec<&Alert> = alerts
                .iter()
                .filter(|a| a.index >= skip && a.index >= l.start && a.index < l.end)
                .collect();
            if let Some(first) = inside.first() {
                r.detected += 1;
                stats.detected += 1;
                stats.delays.push(first.index - l.start);
                r.delays.push(first.index - l.start);
                if l.expect.is_none_or(|k| inside.iter().any(|a| a.kind == k)) {
                    stats.kind_agrees += 1;
                }
            }
        }
        let group = r.false_by_group.entry(s.archetype).or_default();
        group.1 += weeks;
        for a in alerts.iter().filter(|a| a.index >= skip) {
            r.alerts += 1;
            if s.labels
                .iter()
                .any(|l| a.index >= l.start && a.index < l.end)
            {
                r.true_alerts += 1;
            } else {
                r.false_alerts += 1;
                group.0 += 1;
                *r.false_by_kind.entry(a.kind).or_default() += 1;
            }
        }
        for (acc, p) in nab.iter_mut().zip(PROFILES.iter()) {
            let (raw, n) = nab_raw(alerts, &s.labels, skip, p);
            acc.0 += raw;
            acc.1 += n;
        }
    }
    r.nab = PROFILES
        .iter()
        .zip(nab)
        .map(|(p, (raw, n))| {
            let null = -p.fn_ * n as f64;
            let perfect = p.tp * n as f64;
            let normalised = if n == 0 {
                0.0
            } else {
                100.0 * (raw - null) / (perfect - null)
            };
            (p.name, normalised)
        })
        .collect();
    r
}

/// Quantile of a list of delays (nearest rank).
pub fn quantile(values: &[usize], q: f64) -> Option<usize> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v.get(rank - 1).copied()
}

/// Builds a series from plain values at a fixed interval (for tests and CSV input).
pub fn series_from_values(
    name: &str,
    start: i64,
    interval_secs: i64,
    values: &[f64],
    labels: Vec<Label>,
) -> Series {
    Series {
        name: name.to_string(),
        archetype: "csv",
        interval_secs,
        buckets: values
            .iter()
            .enumerate()
            .map(|(i, &v)| Bucket::new(start + i as i64 * interval_secs, v))
            .collect(),
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(start: usize, end: usize) -> Label {
        Label {
            start,
            end,
            kind: "window",
            expect: None,
        }
    }

    #[test]
    fn nab_perfect_null_and_late() {
        let labels = vec![label(100, 110)];
        let p = &PROFILES[0];
        let (perfect, n) = nab_raw(
            &[Alert {
                index: 100,
                kind: Kind::Spike,
                anomaly: None,
            }],
            &labels,
            0,
            p,
        );
        assert_eq!(n, 1);
        assert!((perfect - 1.0).abs() < 1e-12);
        let (null, _) = nab_raw(&[], &labels, 0, p);
        assert_eq!(null, -1.0);
        // Last bucket of the window: y = -1/W, a small positive reward.
        let (late, _) = nab_raw(
            &[Alert {
                index: 109,
                kind: Kind::Spike,
                anomaly: None,
            }],
            &labels,
            0,
            p,
        );
        assert!(late > 0.0 && late < 0.3, "{late}");
        // A stray alert before any window costs the full A_FP.
        let (stray, _) = nab_raw(
            &[Alert {
                index: 5,
                kind: Kind::Spike,
                anomaly: None,
            }],
            &labels,
            0,
            p,
        );
        assert!((stray - (-1.0 - 0.11)).abs() < 1e-12);
        // Probation hides the stray alert.
        let (hidden, _) = nab_raw(
            &[Alert {
                index: 5,
                kind: Kind::Spike,
                anomaly: None,
            }],
            &labels,
            10,
            p,
        );
        assert_eq!(hidden, -1.0);
    }

    #[test]
    fn report_counts_windows_and_false_alarms() {
        let s = series_from_values("s", 0, 300, &[0.0; 2016], vec![label(100, 110)]);
        let alerts = vec![vec![
            Alert {
                index: 103,
                kind: Kind::Spike,
                anomaly: None,
            },
            Alert {
                index: 500,
                kind: Kind::Drop,
                anomaly: None,
            },
        ]];
        let r = score(std::slice::from_ref(&s), &alerts, |_| 0);
        assert_eq!((r.windows, r.detected, r.false_alerts), (1, 1, 1));
        assert_eq!(r.delays, vec![3]);
        assert!((r.false_per_week() - 1.0).abs() < 1e-9);
        assert!((r.precision() - 0.5).abs() < 1e-12);
    }
}
