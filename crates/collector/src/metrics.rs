//! Prometheus metrics of the collector (OpenMetrics text on `GET /metrics`).

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Why an ingest request was refused: one label value per problem type.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RejectReason {
    Unauthorized,
    UnsupportedMediaType,
    BodyTooLarge,
    BatchTooLong,
    MalformedJson,
    InvalidEvent,
    StorageUnavailable,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::UnsupportedMediaType => "unsupported_media_type",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::BatchTooLong => "batch_too_long",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::InvalidEvent => "invalid_event",
            RejectReason::StorageUnavailable => "storage_unavailable",
        }
    }
}

impl EncodeLabelValue for RejectReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    reason: RejectReason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The billing sync's metrics (`turnpike_collector_billing_*`).
#[derive(Default)]
pub struct BillingMetrics {
    runs: Family<OutcomeLabels, Counter>,
    pub events_sent: Counter,
    pub units_sent: Counter,
    pub already_delivered: Counter,
    pub cancels: Counter,
    pub credits_recorded: Counter,
    pub credit_units_recorded: Counter,
    pub pending_hours: Gauge,
    pub pending_units: Gauge,
    pub error_hours: Gauge,
    pub unmapped_tenants: Gauge,
    pub unmapped_units: Gauge,
    pub no_meter_units: Gauge,
    pub too_old_units: Gauge,
    pub open_credits: Gauge,
    pub open_credit_units: Gauge,
    pub drift_unexplained_units: Gauge,
    pub backlog_changes: Gauge,
    pub last_success_seconds: Gauge,
}

impl BillingMetrics {
    /// How a sync run ended: `ok`, `auth_failed`, `stripe_unavailable`, `busy`, `error`.
    pub fn run(&self, outcome: &'static str) {
        self.runs.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("billing");
        r.register(
            "sync_runs",
            "Billing sync runs, by outcome",
            self.runs.clone(),
        );
        r.register(
            "meter_events_sent",
            "Meter events Stripe accepted (one per tenant, meter, hour and revision)",
            self.events_sent.clone(),
        );
        r.register(
            "units_sent",
            "Units in the meter events Stripe accepted",
            self.units_sent.clone(),
        );
        r.register(
            "already_delivered",
            "Meter events found already at Stripe when an unconfirmed one was retried (crash recovery)",
            self.already_delivered.clone(),
        );
        r.register(
            "cancels",
            "Meter events cancelled at Stripe to correct a refund",
            self.cancels.clone(),
        );
        r.register(
            "credits_recorded",
            "Credits recorded for refunds Stripe could no longer cancel",
            self.credits_recorded.clone(),
        );
        r.register(
            "credit_units_recorded",
            "Units of the credits recorded",
            self.credit_units_recorded.clone(),
        );
        r.register(
            "pending_hours",
            "Closed hours with units not yet in Stripe",
            self.pending_hours.clone(),
        );
        r.register(
            "pending_units",
            "Billable units not yet in Stripe (open, pending and error hours)",
            self.pending_units.clone(),
        );
        r.register(
            "error_hours",
            "Hours Stripe refused a request for; retried later",
            self.error_hours.clone(),
        );
        r.register(
            "unmapped_tenants",
            "Tenants with usage but no stripe_customer in the plans file",
            self.unmapped_tenants.clone(),
        );
        r.register(
            "unmapped_units",
            "Units of tenants without a stripe_customer, not sent",
            self.unmapped_units.clone(),
        );
        r.register(
            "no_meter_units",
            "Units whose Stripe event name has no active Stripe meter, not sent",
            self.no_meter_units.clone(),
        );
        r.register(
            "too_old_units",
            "Units older than Stripe's 35-day window that were never sent",
            self.too_old_units.clone(),
        );
        r.register(
            "open_credits",
            "Credits to issue: refunds Stripe could no longer cancel",
            self.open_credits.clone(),
        );
        r.register(
            "open_credit_units",
            "Units of the credits to issue",
            self.open_credit_units.clone(),
        );
        r.register(
            "drift_unexplained_units",
            "Units Stripe holds beyond (or short of) what Turnpike sent, last reconciliation",
            self.drift_unexplained_units.clone(),
        );
        r.register(
            "backlog_changes",
            "Ledger changes not yet folded into the billing sync",
            self.backlog_changes.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "When the last successful billing sync run started",
            self.last_success_seconds.clone(),
        );
    }
}

/// All collector metrics; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    events_accepted: Counter,
    events_duplicate: Counter,
    batches_stored: Counter,
    rejected: Family<RejectLabels, Counter>,
    ingest_seconds: Histogram,
    quarantined: Family<OriginLabels, Counter>,
    stream_entries: Counter,
    stream_rows_changed: Counter,
    stream_errors: Counter,
    stream_backlog: Gauge,
    /// Units the counter's windows and the ledger disagree on, last reconciliation.
    pub reconcile_drift_units: Gauge,
    /// Consume ids found on one side only, last reconciliation.
    pub reconcile_differences: Gauge,
    /// When the last whole-ledger reconciliation finished (unix seconds; 0: not yet).
    pub reconcile_last_run: Gauge,
    pub anomaly: crate::anomalies::metrics::AnomalyMetrics,
    pub billing: BillingMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("turnpike_collector");
        let events_accepted = Counter::default();
        let events_duplicate = Counter::default();
        let batches_stored = Counter::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        // 0.5 ms .. ~4 s: an SQLite fsync to a large PostgreSQL batch under load.
        let ingest_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "events_accepted",
            "Events newly stored in the ledger",
            events_accepted.clone(),
        );
        registry.register(
            "events_duplicate",
            "Events skipped because their (source, id) was already stored or repeated in the batch",
            events_duplicate.clone(),
        );
        registry.register(
            "batches_stored",
            "Ingest requests committed to the ledger",
            batches_stored.clone(),
        );
        registry.register(
            "requests_rejected",
            "Ingest requests refused, by reason",
            rejected.clone(),
        );
        registry.register(
            "ingest_duration_seconds",
            "Time from request to commit of a stored batch",
            ingest_seconds.clone(),
        );
        let quarantined = Family::<OriginLabels, Counter>::default();
        registry.register(
            "events_quarantined",
            "Events kept aside because they were malformed, by origin (proxy events, usage stream)",
            quarantined.clone(),
        );
        let stream_entries = Counter::default();
        registry.register(
            "stream_entries",
            "Counter usage-stream entries committed to the ledger",
            stream_entries.clone(),
        );
        let stream_rows_changed = Counter::default();
        registry.register(
            "stream_rows_changed",
            "Ledger rows created or changed by usage-stream entries",
            stream_rows_changed.clone(),
        );
        let stream_errors = Counter::default();
        registry.register(
            "stream_errors",
            "Usage-stream rounds that failed (Redis or ledger away); retried",
            stream_errors.clone(),
        );
        let stream_backlog = Gauge::default();
        registry.register(
            "stream_backlog_entries",
            "Usage-stream entries not yet committed to the ledger (pending + undelivered)",
            stream_backlog.clone(),
        );
        let reconcile_drift_units = Gauge::default();
        registry.register(
            "reconcile_drift_units",
            "Units on which the counter's windows and the ledger disagreed at the last reconciliation",
            reconcile_drift_units.clone(),
        );
        let reconcile_differences = Gauge::default();
        registry.register(
            "reconcile_differences",
            "Consumes the counter admitted but the ledger does not bill as such, or the reverse, at the last reconciliation",
            reconcile_differences.clone(),
        );
        let reconcile_last_run = Gauge::default();
        registry.register(
            "reconcile_last_run_timestamp_seconds",
            "When the last whole-ledger reconciliation finished (unix seconds; 0: not yet)",
            reconcile_last_run.clone(),
        );
        let anomaly = crate::anomalies::metrics::AnomalyMetrics::register(&mut registry);
        let billing = BillingMetrics::default();
        billing.register(&mut registry);
        Metrics {
            billing,
            registry,
            reconcile_last_run,
            anomaly,
            events_accepted,
            events_duplicate,
            batches_stored,
            rejected,
            ingest_seconds,
            quarantined,
            stream_entries,
            stream_rows_changed,
            stream_errors,
            stream_backlog,
            reconcile_drift_units,
            reconcile_differences,
        }
    }

    pub fn batch_stored(&self, accepted: u64, duplicates: u64, seconds: f64) {
        self.events_accepted.inc_by(accepted);
        self.events_duplicate.inc_by(duplicates);
        self.batches_stored.inc();
        self.ingest_seconds.observe(seconds);
    }

    pub fn quarantined(&self, origin: &'static str, n: u64) {
        self.quarantined
            .get_or_create(&OriginLabels { origin })
            .inc_by(n);
    }

    pub fn stream_applied(&self, entries: u64, applied: crate::ledger::Applied) {
        self.stream_entries.inc_by(entries);
        self.stream_rows_changed
            .inc_by(applied.inserted + applied.updated);
    }

    pub fn stream_error(&self) {
        self.stream_errors.inc();
    }

    pub fn set_stream_backlog(&self, n: u64) {
        self.stream_backlog
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The usage-stream backlog as last measured.
    pub fn stream_backlog(&self) -> i64 {
        self.stream_backlog.get()
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_counters_and_reasons() {
        let m = Metrics::new();
        m.batch_stored(3, 1, 0.002);
        m.rejected(RejectReason::InvalidEvent);
        let text = m.encode();
        assert!(
            text.contains("turnpike_collector_events_accepted_total 3"),
            "{text}"
        );
        assert!(
            text.contains("turnpike_collector_events_duplicate_total 1"),
            "{text}"
        );
        assert!(
            text.contains("turnpike_collector_batches_stored_total 1"),
            "{text}"
        );
        assert!(
            text.contains("turnpike_collector_requests_rejected_total{reason=\"invalid_event\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("turnpike_collector_ingest_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn billing_metrics_are_exposed_under_their_prefix() {
        let m = Metrics::new();
        m.billing.run("auth_failed");
        m.billing.open_credit_units.set(7);
        let text = m.encode();
        assert!(
            text.contains("turnpike_collector_billing_sync_runs_total{outcome=\"auth_failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("turnpike_collector_billing_open_credit_units 7"),
            "{text}"
        );
    }
}
