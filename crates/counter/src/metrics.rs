//! Prometheus metrics, rendered by hand in the text format: a handful of atomics
//! is all the hot path should pay for.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), plus +Inf last.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        if let Some(inf) = self.counts.last() {
            cumulative += inf.load(Relaxed);
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Which API endpoint a latency belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    Consume,
    ConsumeBatch,
    Refund,
    Usage,
    Lease,
}

#[derive(Default)]
pub struct Metrics {
    pub consumes_allowed: AtomicU64,
    pub consumes_denied: AtomicU64,
    pub consumes_error: AtomicU64,
    pub consumes_replayed: AtomicU64,
    pub consume_batches: AtomicU64,
    pub consume_batch_items: AtomicU64,
    /// Batch items decided in a script with others of their tenant.
    pub consumes_grouped: AtomicU64,
    pub settle_batches: AtomicU64,
    /// Batched settlements applied in a script with others of their tenant.
    pub settles_grouped: AtomicU64,
    pub refunds_refunded: AtomicU64,
    pub refunds_noop: AtomicU64,
    pub refunds_error: AtomicU64,
    pub refunds_cancelled: AtomicU64,
    pub stale_tickets: AtomicU64,
    pub seeds: AtomicU64,
    pub seeded_units: AtomicU64,
    pub seed_errors: AtomicU64,
    pub seeds_skipped: AtomicU64,
    pub leases_granted: AtomicU64,
    pub leased_requests: AtomicU64,
    pub leases_closed: AtomicU64,
    pub leases_expired: AtomicU64,
    pub lease_returned_requests: AtomicU64,
    pub lease_reported_requests: AtomicU64,
    pub lease_late_requests: AtomicU64,
    pub lease_repeated_reports: AtomicU64,
    pub lease_pins: AtomicU64,
    pub settles_applied: AtomicU64,
    pub settles_noop: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub redis_errors: AtomicU64,
    pub invalid_requests: AtomicU64,
    latency_consume: Histogram,
    latency_consume_batch: Histogram,
    latency_refund: Histogram,
    latency_usage: Histogram,
    latency_lease: Histogram,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn observe(&self, endpoint: Endpoint, elapsed: Duration) {
        match endpoint {
            Endpoint::Consume => &self.latency_consume,
            Endpoint::ConsumeBatch => &self.latency_consume_batch,
            Endpoint::Refund => &self.latency_refund,
            Endpoint::Usage => &self.latency_usage,
            Endpoint::Lease => &self.latency_lease,
        }
        .observe(elapsed);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, series: &[(&str, &AtomicU64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in series {
                let value = value.load(Relaxed);
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        };
        counter(
            &mut out,
            "turnpike_counter_consumes_total",
            "Consume requests by result.",
            &[
                ("result=\"allowed\"", &self.consumes_allowed),
                ("result=\"denied\"", &self.consumes_denied),
                ("result=\"error\"", &self.consumes_error),
            ],
        );
        counter(
            &mut out,
            "turnpike_counter_consumes_replayed_total",
            "Consumes answered from an earlier consume with the same id.",
            &[("", &self.consumes_replayed)],
        );
        counter(
            &mut out,
            "turnpike_counter_consume_batches_total",
            "Consume batches received (their consumes count in turnpike_counter_consumes_total).",
            &[("", &self.consume_batches)],
        );
        counter(
            &mut out,
            "turnpike_counter_consume_batch_items_total",
            "Consumes that came in batches.",
            &[("", &self.consume_batch_items)],
        );
        counter(
            &mut out,
            "turnpike_counter_consumes_grouped_total",
            "Batched consumes decided in one Redis script with others of their tenant (the rest of a batch goes alone).",
            &[("", &self.consumes_grouped)],
        );
        counter(
            &mut out,
            "turnpike_counter_settle_batches_total",
            "Settle batches received (their settlements count in turnpike_counter_settles_total).",
            &[("", &self.settle_batches)],
        );
        counter(
            &mut out,
            "turnpike_counter_settles_grouped_total",
            "Batched settlements applied in one Redis script with others of their tenant (the rest of a batch goes alone).",
            &[("", &self.settles_grouped)],
        );
        counter(
            &mut out,
            "turnpike_counter_refunds_total",
            "Refund requests by result.",
            &[
                ("result=\"refunded\"", &self.refunds_refunded),
                ("result=\"cancelled\"", &self.refunds_cancelled),
                ("result=\"noop\"", &self.refunds_noop),
                ("result=\"error\"", &self.refunds_error),
            ],
        );
        counter(
            &mut out,
            "turnpike_counter_settles_total",
            "Settlements by result (noop: unknown, refunded, cancelled or settled before).",
            &[
                ("result=\"settled\"", &self.settles_applied),
                ("result=\"noop\"", &self.settles_noop),
            ],
        );
        counter(
            &mut out,
            "turnpike_counter_stale_tickets_total",
            "Consumes computed for a window Redis's clock had left; retried.",
            &[("", &self.stale_tickets)],
        );
        counter(
            &mut out,
            "turnpike_counter_seeds_total",
            "Tenants whose long windows were re-seeded from the ledger.",
            &[("", &self.seeds)],
        );
        counter(
            &mut out,
            "turnpike_counter_seeded_units_total",
            "Units put back into windows from the ledger after Redis lost them.",
            &[("", &self.seeded_units)],
        );
        counter(
            &mut out,
            "turnpike_counter_seed_errors_total",
            "Re-seeds that failed (ledger unreachable).",
            &[("", &self.seed_errors)],
        );
        counter(
            &mut out,
            "turnpike_counter_seeds_skipped_total",
            "Best-effort seeds (new month, plan or anchor; Redis kept its data) done without the ledger.",
            &[("", &self.seeds_skipped)],
        );
        counter(
            &mut out,
            "turnpike_counter_lease_grants_total",
            "Lease calls that granted requests.",
            &[("", &self.leases_granted)],
        );
        counter(
            &mut out,
            "turnpike_counter_leased_requests_total",
            "Requests granted to proxies in leases.",
            &[("", &self.leased_requests)],
        );
        counter(
            &mut out,
            "turnpike_counter_leases_closed_total",
            "Leases ended: given up by their proxy (or at the turn of their windows), or swept after expiry unreturned (their proxy went away).",
            &[
                ("by=\"proxy\"", &self.leases_closed),
                ("by=\"expiry\"", &self.leases_expired),
            ],
        );
        counter(
            &mut out,
            "turnpike_counter_lease_returned_requests_total",
            "Leased requests given back to their windows unspent (those no worker took when the proxy gave the lease back, the rest a report delay after it ended).",
            &[("", &self.lease_returned_requests)],
        );
        counter(
            &mut out,
            "turnpike_counter_lease_reported_requests_total",
            "Requests admitted from leases and recorded in the usage stream.",
            &[("", &self.lease_reported_requests)],
        );
        counter(
            &mut out,
            "turnpike_counter_lease_late_requests_total",
            "Leased requests reported after their lease closed, or beyond what it can account for: charged to the current windows.",
            &[("", &self.lease_late_requests)],
        );
        counter(
            &mut out,
            "turnpike_counter_lease_pins_total",
            "Leases kept out another report delay because requests admitted from them were still running on their proxy.",
            &[("", &self.lease_pins)],
        );
        counter(
            &mut out,
            "turnpike_counter_lease_repeated_reports_total",
            "Lease reports received twice (a proxy retried after a lost answer): counted once.",
            &[("", &self.lease_repeated_reports)],
        );
        counter(
            &mut out,
            "turnpike_counter_plan_reloads_total",
            "Plans file reloads by result.",
            &[
                ("result=\"ok\"", &self.reloads_ok),
                ("result=\"failed\"", &self.reloads_failed),
            ],
        );
        counter(
            &mut out,
            "turnpike_counter_redis_errors_total",
            "Redis calls that failed or timed out.",
            &[("", &self.redis_errors)],
        );
        counter(
            &mut out,
            "turnpike_counter_invalid_requests_total",
            "Requests refused with 400/422.",
            &[("", &self.invalid_requests)],
        );
        let name = "turnpike_counter_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} API request latency.\n# TYPE {name} histogram"
        );
        self.latency_consume
            .render(&mut out, name, "endpoint=\"consume\"");
        self.latency_consume_batch
            .render(&mut out, name, "endpoint=\"consume_batch\"");
        self.latency_refund
            .render(&mut out, name, "endpoint=\"refund\"");
        self.latency_usage
            .render(&mut out, name, "endpoint=\"usage\"");
        self.latency_lease
            .render(&mut out, name, "endpoint=\"lease\"");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let m = Metrics::default();
        m.observe(Endpoint::Consume, Duration::from_micros(200));
        m.observe(Endpoint::Consume, Duration::from_millis(3));
        m.observe(Endpoint::Consume, Duration::from_secs(2));
        let text = m.render();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
                .to_owned()
        };
        let b = "turnpike_counter_request_duration_seconds_bucket{endpoint=\"consume\"";
        assert!(line(&format!("{b},le=\"0.00025\"}}")).ends_with(" 1"));
        assert!(line(&format!("{b},le=\"0.005\"}}")).ends_with(" 2"));
        assert!(line(&format!("{b},le=\"1\"}}")).ends_with(" 2"));
        assert!(line(&format!("{b},le=\"+Inf\"}}")).ends_with(" 3"));
        assert!(
            line("turnpike_counter_request_duration_seconds_count{endpoint=\"consume\"}")
                .ends_with(" 3")
        );
        assert!(
            line("turnpike_counter_request_duration_seconds_sum{endpoint=\"consume\"}")
                .ends_with(" 2.0032")
        );
    }

    #[test]
    fn counters_render_with_result_labels() {
        let m = Metrics::default();
        Metrics::inc(&m.consumes_denied);
        Metrics::inc(&m.consumes_denied);
        let text = m.render();
        assert!(
            text.contains("turnpike_counter_consumes_total{result=\"denied\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("turnpike_counter_redis_errors_total 0\n"),
            "{text}"
        );
    }
}
