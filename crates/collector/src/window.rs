//! Which aggregation window a usage query means: pure logic over turnpike-plans'
//! window math, so the collector's billing month is exactly the counter's.

use turnpike_plans::{window_bounds, Window};

/// The windows the usage API aggregates over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageWindow {
    Hour,
    Day,
    /// Billing month from the tenant's anchor day.
    Month,
}

impl UsageWindow {
    pub fn parse(text: &str) -> Option<UsageWindow> {
        match text {
            "hour" => Some(UsageWindow::Hour),
            "day" => Some(UsageWindow::Day),
            "month" => Some(UsageWindow::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UsageWindow::Hour => "hour",
            UsageWindow::Day => "day",
            UsageWindow::Month => "month",
        }
    }

    /// `[start, end)` in unix milliseconds of the window containing `at_ms`.
    pub fn bounds_ms(self, anchor_day: u8, at_ms: i64) -> (i64, i64) {
        let window = match self {
            UsageWindow::Hour => Window::Hour,
            UsageWindow::Day => Window::Day,
            UsageWindow::Month => Window::Month,
        };
        let (start, end) = window_bounds(window, anchor_day, at_ms.div_euclid(1000));
        (start.saturating_mul(1000), end.saturating_mul(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{format_time_ms, parse_time_ms};

    fn bounds(window: UsageWindow, anchor: u8, at: &str) -> (String, String) {
        let (s, e) = window.bounds_ms(anchor, parse_time_ms(at).unwrap());
        (format_time_ms(s), format_time_ms(e))
    }

    #[test]
    fn hour_and_day_are_utc_aligned() {
        assert_eq!(
            bounds(UsageWindow::Hour, 1, "2026-03-01T10:59:59.999Z"),
            ("2026-03-01T10:00:00Z".into(), "2026-03-01T11:00:00Z".into())
        );
        assert_eq!(
            bounds(UsageWindow::Day, 1, "2026-03-01T01:30:00+02:00"),
            ("2026-02-28T00:00:00Z".into(), "2026-03-01T00:00:00Z".into())
        );
    }

    #[test]
    fn month_anchor_31_clamps_to_end_of_february() {
        assert_eq!(
            bounds(UsageWindow::Month, 31, "2026-02-27T23:59:59.999Z"),
            ("2026-01-31T00:00:00Z".into(), "2026-02-28T00:00:00Z".into())
        );
        assert_eq!(
            bounds(UsageWindow::Month, 31, "2026-02-28T00:00:00Z"),
            ("2026-02-28T00:00:00Z".into(), "2026-03-31T00:00:00Z".into())
        );
    }

    #[test]
    fn the_last_tenth_of_a_second_of_a_billing_month_belongs_to_it() {
        let last = parse_time_ms("2026-11-30T23:59:59.900Z").unwrap();
        let (start, end) = UsageWindow::Month.bounds_ms(1, last);
        assert_eq!(format_time_ms(start), "2026-11-01T00:00:00Z");
        assert_eq!(format_time_ms(end), "2026-12-01T00:00:00Z");
        assert!(start <= last && last < end);
        // With the anchor on the 15th, the 14th's last instant closes that period.
        let last = parse_time_ms("2026-12-14T23:59:59.999Z").unwrap();
        let (_, end) = UsageWindow::Month.bounds_ms(15, last);
        assert_eq!(format_time_ms(end), "2026-12-15T00:00:00Z");
    }

    #[test]
    fn only_known_windows_parse() {
        assert_eq!(UsageWindow::parse("month"), Some(UsageWindow::Month));
        assert_eq!(UsageWindow::parse("minute"), None);
    }
}
