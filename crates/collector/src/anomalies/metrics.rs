//! The anomaly metrics, registered in the collector's registry by [`crate::metrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

pub struct AnomalyMetrics {
    found: Family<KindLabels, Counter>,
    /// Series this replica judges (0 on a replica without the lease).
    pub series: Gauge,
    /// Seconds from the end of the oldest series' last judged bucket to now.
    pub lag_seconds: Gauge,
    pub outbox_pending: Gauge,
    webhook: Family<OutcomeLabels, Counter>,
    pub ticks_failed: Counter,
}

impl AnomalyMetrics {
    pub fn register(registry: &mut Registry) -> AnomalyMetrics {
        let m = AnomalyMetrics {
            found: Family::default(),
            series: Gauge::default(),
            lag_seconds: Gauge::default(),
            outbox_pending: Gauge::default(),
            webhook: Family::default(),
            ticks_failed: Counter::default(),
        };
        registry.register(
            "anomalies",
            "Anomalies found and stored by this replica, by kind",
            m.found.clone(),
        );
        registry.register(
            "anomaly_series",
            "Series (tenant and meter) this replica judges; 0 without the judging lease",
            m.series.clone(),
        );
        registry.register(
            "anomaly_judging_lag_seconds",
            "Seconds from the end of the oldest series' last judged bucket to now (normally grace to grace plus one bucket)",
            m.lag_seconds.clone(),
        );
        registry.register(
            "anomaly_outbox_pending",
            "Anomaly CloudEvents not yet delivered to the webhook",
            m.outbox_pending.clone(),
        );
        registry.register(
            "anomaly_webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered, failed)",
            m.webhook.clone(),
        );
        registry.register(
            "anomaly_ticks_failed",
            "Judging rounds that failed (database away, lease lost); retried",
            m.ticks_failed.clone(),
        );
        m
    }

    pub fn found(&self, kind: turnpike_anomaly::Kind) {
        self.found
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn webhook(&self, outcome: &'static str) {
        self.webhook.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}
