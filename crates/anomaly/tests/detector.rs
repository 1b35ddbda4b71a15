//! Behaviour of the detector on small, clear cases.

use turnpike_anomaly::synth::Rng;
use turnpike_anomaly::{Anomaly, Bucket, Config, Detector, Judgement, Kind, Quota, Verdict};

const T0: i64 = 1_767_571_200; // a Monday, 00:00 UTC
const FIVE_MIN: i64 = 300;
const DAY: usize = 288;

/// A tenant with a daily rhythm (quiet nights, busy afternoons), Poisson-like noise
/// (normal approximation, rounded), `days` long.
fn seasonal_counts(days: usize, base: f64, seed: u64) -> Vec<f64> {
    weekly_counts(days, base, 1.0, seed)
}

/// The same with weekends at `weekend` times the weekday level.
fn weekly_counts(days: usize, base: f64, weekend: f64, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..days * DAY)
        .map(|i| {
            let hour = (i % DAY) as f64 / 12.0;
            let day = i / DAY;
            let wave = 1.0 + 0.6 * (2.0 * std::f64::consts::PI * (hour - 15.0) / 24.0).cos();
            let weekend = if day % 7 >= 5 { weekend } else { 1.0 };
            let mean = base * wave * weekend;
            (mean + mean.sqrt() * rng.normal()).round().max(0.0)
        })
        .collect()
}

fn run(detector: &mut Detector, values: &[f64]) -> Vec<Judgement> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| detector.observe(&Bucket::new(T0 + i as i64 * FIVE_MIN, v)))
        .collect()
}

fn alerts(judgements: &[Judgement]) -> Vec<(usize, Anomaly)> {
    judgements
        .iter()
        .enumerate()
        .flat_map(|(i, j)| j.alerts.iter().map(move |a| (i, *a)))
        .collect()
}

#[test]
fn long_clean_seasonal_series_does_not_alarm() {
    let values = seasonal_counts(28, 200.0, 1);
    let mut d = Detector::new(Config::default());
    let found = alerts(&run(&mut d, &values));
    assert!(found.is_empty(), "false alarms: {found:?}");
    assert_eq!(d.period(), Some(86_400), "the daily rhythm is found");
}

#[test]
fn weekly_rhythm_is_learned_after_the_first_weekend() {
    // Weekends at 60 %: the first one is news (it may alarm once, and Monday is a
    // recovery), from the second on it is the rhythm.
    let values = weekly_counts(35, 200.0, 0.6, 11);
    let mut d = Detector::new(Config::default());
    let found = alerts(&run(&mut d, &values));
    assert!(found.len() <= 1, "{found:?}");
    assert!(found.iter().all(|(i, _)| *i < 7 * DAY), "{found:?}");
    assert_eq!(d.period(), Some(7 * 86_400), "the weekly rhythm is found");
}

#[test]
fn white_noise_has_no_season_and_no_alarm() {
    let mut rng = Rng::new(3);
    let values: Vec<f64> = (0..10 * DAY).map(|_| 20.0 + 1.5 * rng.normal()).collect();
    let mut d = Detector::new(Config::default());
    let found = alerts(&run(&mut d, &values));
    assert!(found.is_empty(), "false alarms: {found:?}");
    assert_eq!(d.period(), Some(0));
}

#[test]
fn spike_is_one_alert_with_expected_and_observed() {
    let mut values = seasonal_counts(14, 200.0, 2);
    let at = 10 * DAY + 150;
    for v in &mut values[at..at + 8] {
        *v += 2000.0; // a retry loop for 40 minutes
    }
    let mut d = Detector::new(Config::default());
    let js = run(&mut d, &values);
    let found = alerts(&js);
    assert_eq!(found.len(), 1, "{found:?}");
    let (i, a) = found[0];
    assert_eq!(i, at);
    assert_eq!(a.kind, Kind::Spike);
    assert_eq!(a.bucket, T0 + at as i64 * FIVE_MIN);
    assert!(
        a.observed > 2000.0 && a.expected < 600.0 && a.score > 5.0,
        "{a:?}"
    );
    // The whole incident is one episode; the buckets after it are normal again.
    assert!(js[at + 5].verdict == Verdict::Anomalous(Kind::Spike));
    assert_eq!(js[at + 30].verdict, Verdict::Normal);
}

#[test]
fn a_new_episode_after_recovery_alerts_again() {
    let mut values = seasonal_counts(14, 200.0, 4);
    let first = 9 * DAY + 140;
    let second = 11 * DAY + 160;
    for at in [first, second] {
        for v in &mut values[at..at + 4] {
            *v += 3000.0;
        }
    }
    let mut d = Detector::new(Config::default());
    let found = alerts(&run(&mut d, &values));
    let at: Vec<usize> = found.iter().map(|(i, _)| *i).collect();
    assert_eq!(at, vec![first, second]);
}

#[test]
fn silence_of_an_active_tenant_is_a_drop() {
    let mut values = seasonal_counts(14, 100.0, 5);
    let at = 10 * DAY + 130; // early afternoon
    for v in &mut values[at..at + 48] {
        *v = 0.0;
    }
    let mut d = Detector::new(Config::default());
    let js = run(&mut d, &values);
    let found = alerts(&js);
    assert_eq!(found.len(), 1, "{found:?}");
    let (i, a) = found[0];
    assert_eq!(a.kind, Kind::Drop);
    assert!((at..at + 3).contains(&i), "alert at {i}, silence from {at}");
    assert!(a.episode_start <= a.bucket);
}

#[test]
fn persistent_level_shift_alarms_at_onset_then_becomes_normal() {
    let mut values = seasonal_counts(21, 100.0, 6);
    let at = 9 * DAY + 100;
    let mut rng = Rng::new(60);
    for v in &mut values[at..] {
        // The customer grew: three times the traffic, from now on.
        let m = *v * 3.0;
        *v = (m + m.sqrt() * rng.normal()).round().max(0.0);
    }
    let mut d = Detector::new(Config::default());
    let js = run(&mut d, &values);
    let found = alerts(&js);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1.kind, Kind::Spike);
    assert!((at..at + 6).contains(&found[0].0));
    // A week later the new level is simply normal.
    let late = &js[at + 2 * DAY..];
    assert!(late.iter().all(|j| j.verdict == Verdict::Normal));
}

#[test]
fn denial_storm() {
    let values = seasonal_counts(7, 200.0, 7);
    let mut rng = Rng::new(70);
    let at = 5 * DAY + 160;
    let mut d = Detector::new(Config::default());
    let mut found = Vec::new();
    for (i, &v) in values.iter().enumerate() {
        let total = v + 5.0;
        let share = if (at..at + 12).contains(&i) {
            0.6
        } else {
            0.02
        };
        let denied = rng.poisson(total * share).min(total);
        let b = Bucket::new(T0 + i as i64 * FIVE_MIN, v).with_requests(total, denied);
        found.extend(d.observe(&b).alerts.iter().map(|a| (i, *a)));
    }
    assert_eq!(found.len(), 1, "{found:?}");
    let (i, a) = found[0];
    assert_eq!((i, a.kind), (at, Kind::DenialStorm));
    assert!(a.expected < 0.05 && a.observed > 0.4, "{a:?}");
}

#[test]
fn new_tenant_burning_its_plan_on_day_one() {
    // 30-day plan of 100k units; the tenant does 50 per 5 minutes from sign-up, which
    // projects to 432k by the period's end.
    let start = T0 + 3 * 86_400;
    let quota = |used| Quota {
        limit: 100_000.0,
        period_start: start,
        period_end: start + 30 * 86_400,
        used: Some(used),
    };
    let mut d = Detector::new(Config::default());
    let mut used = 0.0;
    let mut found = Vec::new();
    for i in 0..DAY {
        let v = 50.0 + (i % 5) as f64;
        used += v;
        let b = Bucket::new(start + i as i64 * FIVE_MIN, v).with_quota(quota(used));
        found.extend(d.observe(&b).alerts.iter().map(|a| (i, *a)));
    }
    assert_eq!(found.len(), 1, "{found:?}");
    let (i, a) = found[0];
    assert_eq!(a.kind, Kind::PlanBurn);
    assert_eq!(i, Config::default().plan_min_buckets as usize - 1);
    assert_eq!(a.expected, 100_000.0);
    assert!(a.observed > 300_000.0 && a.score > 3.0, "{a:?}");

    // The same tenant on a plan it fits in says nothing.
    let mut d = Detector::new(Config::default());
    let mut used = 0.0;
    for i in 0..DAY {
        let v = 50.0 + (i % 5) as f64;
        used += v;
        let q = Quota {
            limit: 1_000_000.0,
            ..quota(used)
        };
        let b = Bucket::new(start + i as i64 * FIVE_MIN, v).with_quota(q);
        assert!(d.observe(&b).alerts.is_empty());
    }
}

#[test]
fn three_points_do_not_alarm() {
    let mut d = Detector::new(Config::default());
    let js = run(&mut d, &[1.0, 5000.0, 0.0]);
    assert!(js
        .iter()
        .all(|j| j.alerts.is_empty() && j.verdict == Verdict::Warmup));
}

#[test]
fn zeros_only() {
    let mut d = Detector::new(Config::default());
    let js = run(&mut d, &vec![0.0; 3 * DAY]);
    assert!(js.iter().all(|j| j.alerts.is_empty() && j.score == 0.0));
    assert_eq!(js.last().map(|j| j.verdict), Some(Verdict::Normal));
}

#[test]
fn a_stuck_meter_that_moves_alarms_but_a_silent_tenants_first_request_does_not() {
    let mut values = vec![5.0; 2 * DAY];
    values.extend(vec![6.0; 50]);
    let found = alerts(&run(&mut Detector::new(Config::default()), &values));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0, found[0].1.kind), (2 * DAY, Kind::Spike));

    let mut values = vec![0.0; 2 * DAY];
    values[DAY + 7] = 1.0;
    values[DAY + 100] = 2.0;
    let found = alerts(&run(&mut Detector::new(Config::default()), &values));
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn real_valued_negative_series_with_hourly_buckets() {
    // A temperature-like gauge around −5 with a daily wave, hourly buckets, 6 weeks.
    let mut rng = Rng::new(8);
    let hourly: Vec<f64> = (0..42 * 24)
        .map(|i| {
            let h = (i % 24) as f64;
            -5.0 + 4.0 * (2.0 * std::f64::consts::PI * h / 24.0).sin() + 0.5 * rng.normal()
        })
        .collect();
    let mut spiked = hourly.clone();
    let at = 35 * 24 + 7;
    spiked[at] += 8.0;
    let mut d = Detector::new(Config::with_interval(3600));
    let mut found = Vec::new();
    for (i, &v) in spiked.iter().enumerate() {
        let j = d.observe(&Bucket::new(T0 + i as i64 * 3600, v));
        found.extend(j.alerts.iter().map(|a| (i, a.kind)));
    }
    assert_eq!(found, vec![(at, Kind::Spike)]);
    assert_eq!(d.period(), Some(86_400));
}

#[test]
fn out_of_order_and_non_finite_buckets_are_skipped() {
    let mut d = Detector::new(Config::default());
    run(&mut d, &[1.0; 20]);
    let before = d.clone();
    let j = d.observe(&Bucket::new(T0, 1.0));
    assert_eq!(j.verdict, Verdict::Skipped);
    let j = d.observe(&Bucket::new(T0 + 10_000 * FIVE_MIN, f64::NAN));
    assert_eq!(j.verdict, Verdict::Skipped);
    assert_eq!(d, before);
}

#[test]
fn state_round_trips_through_serde_and_continues_identically() {
    let mut values = seasonal_counts(10, 150.0, 9);
    for v in &mut values[8 * DAY + 100..8 * DAY + 110] {
        *v *= 6.0;
    }
    let split = 7 * DAY + 13;
    let mut straight = Detector::new(Config::default());
    let all = run(&mut straight, &values);

    let mut first = Detector::new(Config::default());
    let mut resumed_js = run(&mut first, &values[..split]);
    let json = serde_json::to_string(&first).unwrap();
    let mut resumed: Detector = serde_json::from_str(&json).unwrap();
    assert_eq!(resumed, first);
    for (i, &v) in values.iter().enumerate().skip(split) {
        resumed_js.push(resumed.observe(&Bucket::new(T0 + i as i64 * FIVE_MIN, v)));
    }
    assert_eq!(all, resumed_js);
    assert_eq!(straight, resumed);
    assert!(!alerts(&all).is_empty(), "the comparison covers an alert");
    // The state is small: a few kilobytes of JSON per series.
    assert!(json.len() < 12_000, "state is {} bytes of JSON", json.len());
}

#[test]
fn deterministic() {
    let values = seasonal_counts(9, 80.0, 10);
    let a = run(&mut Detector::new(Config::default()), &values);
    let b = run(&mut Detector::new(Config::default()), &values);
    assert_eq!(a, b);
}
