//! The filter's Envoy stats (`wasmcustom.turnpike.<name>` in admin `/stats`).

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Metric ids, defined once per VM by the root context.
#[derive(Debug, Clone, Copy)]
pub struct Metrics {
    pub allowed: u32,
    pub denied: u32,
    pub soft_warnings: u32,
    pub missing_tenant: u32,
    pub counter_errors: u32,
    pub fail_open_passes: u32,
    pub fail_closed_denials: u32,
    pub refunds: u32,
    pub exempt: u32,
    pub callout_latency_ms: u32,
    pub events_queued: u32,
    pub events_sent: u32,
    pub events_dropped: u32,
    pub billable_events_dropped: u32,
    pub events_rejected: u32,
    pub buffer_depth: u32,
    pub cancelled: u32,
    pub refunds_queued: u32,
    pub refunds_abandoned: u32,
    pub leased: u32,
    pub lease_renewals: u32,
    pub lease_empty_grants: u32,
    pub lease_records_lost: u32,
    pub lease_waits: u32,
    pub settlements: u32,
    pub settle_missing: u32,
    pub settle_malformed: u32,
    pub consume_batches: u32,
    pub consumes_batched: u32,
}

impl Metrics {
    pub fn define() -> Option<Self> {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        Some(Self {
            allowed: counter("turnpike.allowed")?,
            denied: counter("turnpike.denied")?,
            soft_warnings: counter("turnpike.soft_warnings")?,
            missing_tenant: counter("turnpike.missing_tenant")?,
            counter_errors: counter("turnpike.counter_errors")?,
            fail_open_passes: counter("turnpike.fail_open_passes")?,
            fail_closed_denials: counter("turnpike.fail_closed_denials")?,
            refunds: counter("turnpike.refunds")?,
            exempt: counter("turnpike.exempt")?,
            events_queued: counter("turnpike.events_queued")?,
            events_sent: counter("turnpike.events_sent")?,
            events_dropped: counter("turnpike.events_dropped")?,
            billable_events_dropped: counter("turnpike.billable_events_dropped")?,
            events_rejected: counter("turnpike.events_rejected")?,
            cancelled: counter("turnpike.cancelled")?,
            refunds_queued: counter("turnpike.refunds_queued")?,
            refunds_abandoned: counter("turnpike.refunds_abandoned")?,
            leased: counter("turnpike.leased")?,
            lease_renewals: counter("turnpike.lease_renewals")?,
            lease_empty_grants: counter("turnpike.lease_empty_grants")?,
            lease_records_lost: counter("turnpike.lease_records_lost")?,
            lease_waits: counter("turnpike.lease_waits")?,
            settlements: counter("turnpike.settlements")?,
            settle_missing: counter("turnpike.settle_missing")?,
            settle_malformed: counter("turnpike.settle_malformed")?,
            consume_batches: counter("turnpike.consume_batches")?,
            consumes_batched: counter("turnpike.consumes_batched")?,
            buffer_depth: hostcalls::define_metric(MetricType::Gauge, "turnpike.buffer_depth")
                .ok()?,
            callout_latency_ms: hostcalls::define_metric(
                MetricType::Histogram,
                "turnpike.callout_latency_ms",
            )
            .ok()?,
        })
    }

    /// Stats are best effort: a failed increment must not fail the request.
    pub fn inc(id: u32) {
        Self::add(id, 1);
    }

    pub fn add(id: u32, n: usize) {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn record(id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}
