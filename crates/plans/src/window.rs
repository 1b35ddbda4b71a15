//! Window kinds and their UTC bounds.
//!
//! The civil-date math (Howard Hinnant's `days_from_civil` / `civil_from_days`) is
//! written here rather than pulled from `time`/`chrono`: it is ~30 lines, needs no
//! time-zone data (everything is UTC), and keeps this crate dependency-light for the
//! collector and the counter's hot path.

use serde::{Deserialize, Serialize};

const DAY: i64 = 86_400;

/// The length of a quota window. `Month` is a billing month starting at an anchor day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Second,
    Minute,
    Hour,
    Day,
    Month,
}

impl Window {
    /// Every window kind, shortest first.
    pub const ALL: [Window; 5] = [
        Window::Second,
        Window::Minute,
        Window::Hour,
        Window::Day,
        Window::Month,
    ];

    /// The name used in the plans file, in Redis keys and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// Length in seconds of the fixed windows; `None` for `Month`, whose length varies.
    pub fn fixed_secs(self) -> Option<i64> {
        match self {
            Window::Second => Some(1),
            Window::Minute => Some(60),
            Window::Hour => Some(3_600),
            Window::Day => Some(DAY),
            Window::Month => None,
        }
    }

    /// Hours and longer: windows whose usage the ledger can give back after Redis
    /// loses it. Seconds and minutes simply start again.
    pub fn is_long(self) -> bool {
        matches!(self, Window::Hour | Window::Day | Window::Month)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Window {
    type Err = UnknownWindow;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Window::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or(UnknownWindow)
    }
}

/// A string that names no [`Window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown window, expected one of second, minute, hour, day, month")]
pub struct UnknownWindow;

/// `[start, end)` in unix seconds of the window containing `now_unix` (UTC).
///
/// Fixed windows are aligned to the unix epoch. A month window runs from this
/// period's anchor date 00:00 UTC to the next period's anchor date 00:00 UTC, the
/// anchor day clamped to the length of short months (anchor 31 → Feb 28/29).
/// `anchor_day` outside 1..=31 is clamped into it.
pub fn window_bounds(window: Window, anchor_day: u8, now_unix: i64) -> (i64, i64) {
    match window.fixed_secs() {
        Some(len) => {
            let start = now_unix.div_euclid(len) * len;
            (start, start + len)
        }
        None => month_bounds(anchor_day.clamp(1, 31), now_unix),
    }
}

fn month_bounds(anchor_day: u8, now_unix: i64) -> (i64, i64) {
    let (year, month, _) = civil_from_days(now_unix.div_euclid(DAY));
    let this_start = anchor_instant(year, month, anchor_day);
    if now_unix >= this_start {
        let (ny, nm) = next_month(year, month);
        (this_start, anchor_instant(ny, nm, anchor_day))
    } else {
        let (py, pm) = prev_month(year, month);
        (anchor_instant(py, pm, anchor_day), this_start)
    }
}

/// 00:00 UTC of the anchor day in the given month, clamped to the month's last day.
fn anchor_instant(year: i64, month: u32, anchor_day: u8) -> i64 {
    let day = u32::from(anchor_day).min(days_in_month(year, month));
    days_from_civil(year, month, day) * DAY
}

fn next_month(year: i64, month: u32) -> (i64, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

fn prev_month(year: i64, month: u32) -> (i64, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March-based month [0, 11]
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day count since 1970-01-01 (Hinnant).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // The ranges above make these conversions lossless.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of `YYYY-MM-DD hh:mm:ss` UTC.
    fn at(year: i64, month: u32, day: u32, h: i64, m: i64, s: i64) -> i64 {
        days_from_civil(year, month, day) * DAY + h * 3_600 + m * 60 + s
    }

    fn midnight(year: i64, month: u32, day: u32) -> i64 {
        at(year, month, day, 0, 0, 0)
    }

    #[test]
    fn civil_conversion_matches_known_dates_and_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(midnight(2026, 11, 27), 1_795_737_600);
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn fixed_windows_are_aligned_to_the_epoch() {
        let now = at(2026, 11, 27, 10, 17, 42);
        assert_eq!(window_bounds(Window::Second, 1, now), (now, now + 1));
        let minute = at(2026, 11, 27, 10, 17, 0);
        assert_eq!(window_bounds(Window::Minute, 1, now), (minute, minute + 60));
        let hour = at(2026, 11, 27, 10, 0, 0);
        assert_eq!(window_bounds(Window::Hour, 1, now), (hour, hour + 3_600));
        let day = midnight(2026, 11, 27);
        assert_eq!(window_bounds(Window::Day, 1, now), (day, day + DAY));
    }

    #[test]
    fn fixed_windows_ignore_the_anchor_day() {
        let now = at(2026, 2, 14, 23, 59, 59);
        for anchor in [1, 15, 31] {
            let (start, end) = window_bounds(Window::Day, anchor, now);
            assert_eq!((start, end), (midnight(2026, 2, 14), midnight(2026, 2, 15)));
        }
    }

    #[test]
    fn an_instant_on_a_boundary_starts_the_next_window() {
        let boundary = at(2026, 11, 27, 11, 0, 0);
        assert_eq!(window_bounds(Window::Hour, 1, boundary).0, boundary);
        assert_eq!(window_bounds(Window::Hour, 1, boundary - 1).1, boundary);
        assert_eq!(window_bounds(Window::Minute, 1, boundary).0, boundary);
        assert_eq!(
            window_bounds(Window::Second, 1, boundary),
            (boundary, boundary + 1)
        );
    }

    #[test]
    fn month_with_anchor_1_is_the_calendar_month() {
        let now = at(2026, 2, 10, 12, 0, 0);
        assert_eq!(
            window_bounds(Window::Month, 1, now),
            (midnight(2026, 2, 1), midnight(2026, 3, 1))
        );
    }

    #[test]
    fn month_boundary_exactly_at_the_instant_opens_the_new_month() {
        let boundary = midnight(2026, 3, 1);
        assert_eq!(
            window_bounds(Window::Month, 1, boundary),
            (boundary, midnight(2026, 4, 1))
        );
        assert_eq!(
            window_bounds(Window::Month, 1, boundary - 1),
            (midnight(2026, 2, 1), boundary)
        );
        let anchored = midnight(2026, 3, 15);
        assert_eq!(
            window_bounds(Window::Month, 15, anchored),
            (anchored, midnight(2026, 4, 15))
        );
        assert_eq!(
            window_bounds(Window::Month, 15, anchored - 1),
            (midnight(2026, 2, 15), anchored)
        );
    }

    #[test]
    fn month_with_anchor_15_spans_two_calendar_months() {
        let before_anchor = at(2026, 5, 3, 8, 0, 0);
        assert_eq!(
            window_bounds(Window::Month, 15, before_anchor),
            (midnight(2026, 4, 15), midnight(2026, 5, 15))
        );
        let after_anchor = at(2026, 5, 20, 8, 0, 0);
        assert_eq!(
            window_bounds(Window::Month, 15, after_anchor),
            (midnight(2026, 5, 15), midnight(2026, 6, 15))
        );
    }

    #[test]
    fn anchor_31_clamps_to_february_end_in_a_non_leap_year() {
        // 2026 is not a leap year: Jan 31 → Feb 28 → Mar 31.
        let mid_feb = at(2026, 2, 10, 0, 0, 0);
        assert_eq!(
            window_bounds(Window::Month, 31, mid_feb),
            (midnight(2026, 1, 31), midnight(2026, 2, 28))
        );
        let feb_end = at(2026, 2, 28, 6, 0, 0);
        assert_eq!(
            window_bounds(Window::Month, 31, feb_end),
            (midnight(2026, 2, 28), midnight(2026, 3, 31))
        );
        let mar_mid = at(2026, 3, 15, 0, 0, 0);
        assert_eq!(
            window_bounds(Window::Month, 31, mar_mid),
            (midnight(2026, 2, 28), midnight(2026, 3, 31))
        );
    }

    #[test]
    fn anchor_31_clamps_to_february_29_in_a_leap_year() {
        // 2028 is a leap year: Jan 31 → Feb 29 → Mar 31.
        let feb_28 = at(2028, 2, 28, 23, 59, 59);
        assert_eq!(
            window_bounds(Window::Month, 31, feb_28),
            (midnight(2028, 1, 31), midnight(2028, 2, 29))
        );
        let feb_29 = midnight(2028, 2, 29);
        assert_eq!(
            window_bounds(Window::Month, 31, feb_29),
            (feb_29, midnight(2028, 3, 31))
        );
    }

    #[test]
    fn anchor_30_clamps_in_february_and_returns_to_30_in_march() {
        assert_eq!(
            window_bounds(Window::Month, 30, at(2026, 3, 1, 0, 0, 0)),
            (midnight(2026, 2, 28), midnight(2026, 3, 30))
        );
        assert_eq!(
            window_bounds(Window::Month, 30, at(2028, 2, 29, 12, 0, 0)),
            (midnight(2028, 2, 29), midnight(2028, 3, 30))
        );
    }

    #[test]
    fn anchor_31_in_a_30_day_month_clamps_to_the_30th() {
        assert_eq!(
            window_bounds(Window::Month, 31, at(2026, 4, 30, 1, 0, 0)),
            (midnight(2026, 4, 30), midnight(2026, 5, 31))
        );
    }

    #[test]
    fn month_windows_roll_over_the_year() {
        assert_eq!(
            window_bounds(Window::Month, 1, at(2026, 12, 31, 23, 59, 59)),
            (midnight(2026, 12, 1), midnight(2027, 1, 1))
        );
        assert_eq!(
            window_bounds(Window::Month, 1, midnight(2027, 1, 1)),
            (midnight(2027, 1, 1), midnight(2027, 2, 1))
        );
        assert_eq!(
            window_bounds(Window::Month, 15, at(2027, 1, 3, 0, 0, 0)),
            (midnight(2026, 12, 15), midnight(2027, 1, 15))
        );
        assert_eq!(
            window_bounds(Window::Month, 20, at(2026, 12, 25, 0, 0, 0)),
            (midnight(2026, 12, 20), midnight(2027, 1, 20))
        );
    }

    #[test]
    fn window_names_round_trip() {
        for w in Window::ALL {
            assert_eq!(w.as_str().parse::<Window>(), Ok(w));
        }
        assert_eq!("week".parse::<Window>(), Err(UnknownWindow));
    }
}
