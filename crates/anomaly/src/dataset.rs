//! Reading labelled real series: CSV files of `timestamp,value[,label]` and windows in
//! NAB's `combined_windows.json` layout or a `file,start,end` CSV.
//!
//! Timestamps are unix seconds (milliseconds if larger than 10¹¹) or
//! `YYYY-MM-DD HH:MM[:SS[.ffffff]]` (a `T` separator and a trailing `Z` are accepted),
//! read as UTC. The bucket interval is the median gap between rows. A label column
//! marks anomalous rows with `1`/`true`; each run of them is one window.

use std::path::Path;

use crate::evaluate::series_from_values;
use crate::synth::{Label, Series};

/// A labelled window given by timestamps, for the series whose path ends with `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeWindow {
    pub key: String,
    pub start: i64,
    pub end: i64,
}

/// Days from 1970-01-01 to a civil date (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a timestamp to unix seconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let t = text.trim().trim_matches('"');
    if let Ok(n) = t.parse::<i64>() {
        return Some(if n.abs() > 100_000_000_000 {
            n / 1000
        } else {
            n
        });
    }
    if let Ok(f) = t.parse::<f64>() {
        return f.is_finite().then_some(f as i64);
    }
    let t = t.trim_end_matches('Z');
    let (date, time) = t.split_once([' ', 'T']).unwrap_or((t, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut parts = time.split(':');
    let h = parts.next()?.parse::<i64>().ok()?;
    let mi = parts.next().unwrap_or("0").parse::<i64>().ok()?;
    let s = parts
        .next()
        .unwrap_or("0")
        .split('.')
        .next()?
        .parse::<i64>()
        .ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return None;
    }
    Some(days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Reads a `timestamp,value[,label]` CSV (header optional) into a series.
pub fn read_series(path: &Path) -> Result<(Series, Vec<i64>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_series(&path.display().to_string(), &text)
}

pub fn parse_series(name: &str, text: &str) -> Result<(Series, Vec<i64>), String> {
    let mut times = Vec::new();
    let mut values = Vec::new();
    let mut flags = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut cols = line.split(',');
        let (Some(ts), Some(v)) = (cols.next(), cols.next()) else {
            return Err(format!("{name}:{}: expected timestamp,value", n + 1));
        };
        let (Some(t), Ok(v)) = (
            parse_timestamp(ts),
            v.trim().trim_matches('"').parse::<f64>(),
        ) else {
            if times.is_empty() {
                continue; // header
            }
            return Err(format!("{name}:{}: cannot read {line:?}", n + 1));
        };
        let flag = cols
            .next()
            .map(|l| matches!(l.trim().trim_matches('"'), "1" | "1.0" | "true" | "TRUE"));
        times.push(t);
        values.push(v);
        flags.push(flag);
    }
    if times.len() < 2 {
        return Err(format!("{name}: fewer than two rows"));
    }
    let mut gaps: Vec<i64> = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| *g > 0)
        .collect();
    gaps.sort_unstable();
    let interval = gaps.get(gaps.len() / 2).copied().unwrap_or(1).max(1);
    let mut labels = Vec::new();
    let mut run: Option<usize> = None;
    for (i, f) in flags.iter().enumerate() {
        match (f, run) {
            (Some(true), None) => run = Some(i),
            (Some(true), Some(_)) => {}
            (_, Some(s)) => {
                labels.push(window_label(s, i));
                run = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run {
        labels.push(window_label(s, flags.len()));
    }
    let mut series = series_from_values(name, times[0], interval, &values, labels);
    // Keep the file's own timestamps (gaps included): the detector reads phases from them.
    for (b, &t) in series.buckets.iter_mut().zip(&times) {
        b.start = t;
    }
    Ok((series, times))
}

fn window_label(start: usize, end: usize) -> Label {
    Label {
        start,
        end,
        kind: "window",
        expect: None,
    }
}

/// Reads windows from NAB's `combined_windows.json` (an object from file name to a list
/// of `[start, end]` timestamp pairs) or from a CSV of `file,start,end`.
pub fn read_windows(path: &Path) -> Result<Vec<TimeWindow>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.trim_start().starts_with('{') {
        parse_nab_windows(&text)
    } else {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = line
                .split(',')
                .map(|c| c.trim().trim_matches('"'))
                .collect();
            let [key, start, end] = cols.as_slice() else {
                return Err(format!(
                    "{}: expected file,start,end in {line:?}",
                    path.display()
                ));
            };
            match (parse_timestamp(start), parse_timestamp(end)) {
                (Some(start), Some(end)) => out.push(TimeWindow {
                    key: key.to_string(),
                    start,
                    end,
                }),
                _ if out.is_empty() => {} // header
                _ => return Err(format!("{}: bad window {line:?}", path.display())),
            }
        }
        Ok(out)
    }
}

/// The JSON subset NAB's label file uses: strings, arrays, one object level.
pub fn parse_nab_windows(text: &str) -> Result<Vec<TimeWindow>, String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut key = String::new();
    let mut pair: Vec<String> = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => {
                if depth == 3 {
                    if let [start, end] = pair.as_slice() {
                        match (parse_timestamp(start), parse_timestamp(end)) {
                            (Some(start), Some(end)) => out.push(TimeWindow {
                                key: key.clone(),
                                start,
                                end,
                            }),
                            _ => return Err(format!("bad window [{start}, {end}]")),
                        }
                    }
                    pair.clear();
                }
                depth = depth.saturating_sub(1);
            }
            '"' => {
                let mut s = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    s.push(c);
                }
                match depth {
                    1 => key = s,
                    3 => pair.push(s),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Adds the windows whose key the series' name ends with, converted to row indices.
pub fn attach_windows(series: &mut Series, times: &[i64], windows: &[TimeWindow]) {
    for w in windows
        .iter()
        .filter(|w| series.name.ends_with(&w.key) || w.key == "*")
    {
        let start = times.partition_point(|&t| t < w.start);
        let end = times.partition_point(|&t| t <= w.end);
        if end > start {
            series.labels.push(window_label(start, end));
        }
    }
    series.labels.sort_by_key(|l| l.start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_timestamp("2014-04-01 00:05:00"), Some(1_396_310_700));
        assert_eq!(
            parse_timestamp("2014-04-01T00:05:00.000000Z"),
            Some(1_396_310_700)
        );
        assert_eq!(parse_timestamp("1396310700000"), Some(1_396_310_700));
        assert_eq!(parse_timestamp("value"), None);
    }

    #[test]
    fn csv_with_label_column() {
        let text = "timestamp,value,label\n0,1.5,0\n60,2,1\n120,3,1\n180,2.5,0\n240,1,1\n";
        let (s, times) = parse_series("x.csv", text).unwrap();
        assert_eq!(s.interval_secs, 60);
        assert_eq!(times.len(), 5);
        assert_eq!(s.buckets[1].value, 2.0);
        let w: Vec<(usize, usize)> = s.labels.iter().map(|l| (l.start, l.end)).collect();
        assert_eq!(w, vec![(1, 3), (4, 5)]);
    }

    #[test]
    fn nab_windows_json() {
        let json = r#"{
            "artificialNoAnomaly/art_daily_no_noise.csv": [],
            "realKnownCause/nyc_taxi.csv": [
                ["2014-10-30 15:30:00.000000", "2014-11-03 22:30:00.000000"],
                ["2014-11-25 12:00:00.000000", "2014-11-29 19:00:00.000000"]
            ]
        }"#;
        let w = parse_nab_windows(json).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].key, "realKnownCause/nyc_taxi.csv");
        assert_eq!(w[0].start, parse_timestamp("2014-10-30 15:30:00").unwrap());
        let text = "timestamp,value\n2014-10-30 15:00:00,1\n2014-10-30 15:30:00,2\n2014-10-30 16:00:00,3\n";
        let (mut s, times) = parse_series("data/realKnownCause/nyc_taxi.csv", text).unwrap();
        attach_windows(&mut s, &times, &w);
        assert_eq!((s.labels[0].start, s.labels[0].end), (1, 3));
    }
}
