//! Usage-event delivery, run by the root context: POST batches from the VM's bounded
//! event buffer to the collector, retry failed batches with backoff, report overflow.
//!
//! HTTP contexts push straight into the buffer their VM shares with the root context
//! (same VM, same thread). A proxy-wasm shared queue would cost every request an
//! enqueue under a host lock, a cross-thread post and an `on_queue_ready` VM call.

use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use turnpike_wire::collector_paths;

use super::metrics::Metrics;
use super::now_ns;
use super::root::Vm;
use crate::config::{CollectorConfig, MAX_BATCH_BYTES};
use crate::events::{Backoff, Batch, Jitter};
use crate::log_budget::LogBudget;

/// Retry delays: from the flush interval up to this.
const MAX_BACKOFF_MS: u64 = 60_000;
/// Batches in flight at once: under load one round trip per batch would cap the rate
/// at one batch per collector latency.
const MAX_IN_FLIGHT: usize = 4;
/// Seconds between two log lines about delivery problems.
const LOG_INTERVAL_SECS: u64 = 10;

pub struct Flusher {
    vm: Rc<Vm>,
    config: CollectorConfig,
    backoff: Backoff,
    jitter: Jitter,
    next_attempt_ns: u64,
    in_flight: Vec<(u32, Batch)>,
    /// Events per batch now: halved when the collector says a batch is too large (or
    /// refuses one whole), back up after successes; never more than `max_batch`.
    batch_cap: usize,
    log: LogBudget,
    /// Overflow has its own budget, so batch-failure lines cannot hold it back, and
    /// drops not yet reported are summed until a line is allowed: never silent.
    overflow_log: LogBudget,
    unreported_drops: usize,
    /// This VM's share of the `buffer_depth` gauge. Every worker's VM (and the main
    /// thread's) has a buffer, all on one gauge: each adds its own changes.
    reported_depth: usize,
    /// The root's tick can be shorter than the flush interval (lease renewals go out
    /// on it): batches still go every flush interval, not every tick.
    next_flush_ns: u64,
    stopping: bool,
}

impl Flusher {
    pub fn new(vm: Rc<Vm>, config: CollectorConfig, seed: u64) -> Self {
        let base_ms = u64::try_from(config.flush_interval.as_millis()).unwrap_or(1000);
        let batch_cap = config.max_batch;
        Self {
            vm,
            backoff: Backoff::new(base_ms, MAX_BACKOFF_MS),
            config,
            jitter: Jitter::new(seed),
            next_attempt_ns: 0,
            in_flight: Vec::new(),
            batch_cap,
            log: LogBudget::new(LOG_INTERVAL_SECS),
            overflow_log: LogBudget::new(LOG_INTERVAL_SECS),
            unreported_drops: 0,
            reported_depth: 0,
            next_flush_ns: 0,
            stopping: false,
        }
    }

    /// A new configuration keeps the events already buffered.
    pub fn reconfigure(&mut self, config: CollectorConfig) {
        self.batch_cap = config.max_batch;
        self.config = config;
    }

    /// No batch in flight and none waiting.
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.vm.events.try_borrow().is_ok_and(|b| b.is_empty())
    }

    pub fn on_tick(&mut self) {
        let now = now_ns();
        if now < self.next_flush_ns {
            return;
        }
        let interval_ns = u64::try_from(self.config.flush_interval.as_nanos()).unwrap_or(u64::MAX);
        self.next_flush_ns = now.saturating_add(interval_ns);
        let (detail, billable) = self
            .vm
            .events
            .try_borrow_mut()
            .map_or((0, 0), |mut b| b.take_overflow());
        self.unreported_drops = self.unreported_drops.saturating_add(detail + billable);
        if self.unreported_drops > 0 && self.overflow_log.admit(now_ns()).is_some() {
            warn!(
                "usage event buffer full ({} events): dropped {} events ({billable} of them the only record of billable usage)",
                self.config.max_buffer, self.unreported_drops
            );
            self.unreported_drops = 0;
        }
        self.record_depth();
        self.send_if_due();
    }

    /// At VM shutdown, send everything now: `true` when nothing is left in flight.
    pub fn on_stop(&mut self) -> bool {
        self.stopping = true;
        self.next_attempt_ns = 0;
        self.send_if_due();
        self.in_flight.is_empty()
    }

    /// `Some(done)` if `token` was one of this flusher's batches; `done` tells a
    /// stopping VM that nothing is left in flight.
    pub fn on_response(&mut self, token: u32, status: Option<u16>) -> Option<bool> {
        let i = self.in_flight.iter().position(|(t, _)| *t == token)?;
        let (_, batch) = self.in_flight.swap_remove(i);
        let n = batch.len();
        match status {
            Some(200..=299) => {
                self.ack(batch);
                self.count(|m| m.events_sent, n);
                self.backoff.reset();
                self.next_attempt_ns = 0;
                self.batch_cap = (self.batch_cap * 2).min(self.config.max_batch);
            }
            // The collector takes no batch this large (413), or cannot read this one
            // (400): split it until the offending event is alone, so it costs none of
            // its neighbours; an event refused alone is dropped and counted.
            Some(400 | 413 | 415) if n > 1 => {
                self.batch_cap = (n / 2).max(1);
                self.requeue(batch);
                self.warn(&format!(
                    "collector refused a batch of {n} events ({status:?}); retrying in batches of {}",
                    self.batch_cap
                ));
            }
            Some(400 | 413 | 415) => {
                self.count(|m| m.events_rejected, n);
                if batch.essential() > 0 {
                    self.count(|m| m.billable_events_dropped, batch.essential());
                }
                self.warn(&format!(
                    "collector refused a single event ({status:?}): dropped it; {}",
                    String::from_utf8_lossy(&batch.body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ));
                self.ack(batch);
            }
            _ => {
                self.requeue(batch);
                let buffered = self.vm.events.try_borrow().map_or(0, |b| b.len());
                let delay_ms = self.backoff.next_delay_ms(self.jitter.next_u64());
                self.next_attempt_ns = now_ns().saturating_add(delay_ms.saturating_mul(1_000_000));
                self.warn(&format!(
                    "collector batch failed ({}); {buffered} events buffered, retry in {delay_ms} ms",
                    status.map_or_else(|| "no response".to_owned(), |s| format!("status {s}")),
                ));
            }
        }
        self.record_depth();
        // Keep up under load: the next batches go out at once. A stopping VM sends on
        // only after a success, never waiting out a backoff.
        if !self.stopping || self.next_attempt_ns == 0 {
            self.send_if_due();
        }
        Some(self.in_flight.is_empty())
    }

    fn ack(&mut self, batch: Batch) {
        if let Ok(mut buffer) = self.vm.events.try_borrow_mut() {
            buffer.ack(batch);
        }
    }

    fn requeue(&mut self, batch: Batch) {
        if let Ok(mut buffer) = self.vm.events.try_borrow_mut() {
            buffer.requeue(batch);
        }
    }

    fn send_if_due(&mut self) {
        while self.in_flight.len() < MAX_IN_FLIGHT && now_ns() >= self.next_attempt_ns {
            let batch = match self.vm.events.try_borrow_mut() {
                Ok(mut buffer) => buffer.take_batch(self.batch_cap, MAX_BATCH_BYTES),
                Err(_) => None,
            };
            let Some(batch) = batch else { return };
            let c = &self.config;
            let dispatched = hostcalls::dispatch_http_call(
                &c.cluster,
                vec![
                    (":method", "POST"),
                    (":path", collector_paths::EVENTS),
                    (":authority", &c.authority),
                    ("content-type", "application/cloudevents-batch+json"),
                    ("authorization", &c.authorization),
                ],
                Some(&batch.body),
                vec![],
                c.timeout,
            );
            match dispatched {
                Ok(token) => self.in_flight.push((token, batch)),
                Err(e) => {
                    self.requeue(batch);
                    let delay_ms = self.backoff.next_delay_ms(self.jitter.next_u64());
                    self.next_attempt_ns =
                        now_ns().saturating_add(delay_ms.saturating_mul(1_000_000));
                    self.warn(&format!(
                        "cannot dispatch to collector cluster {:?} ({e:?}); retry in {delay_ms} ms",
                        self.config.cluster
                    ));
                    return;
                }
            }
        }
    }

    fn record_depth(&mut self) {
        let Ok(depth) = self.vm.events.try_borrow().map(|b| b.len() + b.in_flight()) else {
            return;
        };
        if let (Some(m), true) = (&self.vm.metrics, depth != self.reported_depth) {
            let delta = i64::try_from(depth).unwrap_or(i64::MAX)
                - i64::try_from(self.reported_depth).unwrap_or(i64::MAX);
            let _ = hostcalls::increment_metric(m.buffer_depth, delta);
            self.reported_depth = depth;
        }
    }

    fn count(&self, pick: fn(&Metrics) -> u32, n: usize) {
        if let Some(m) = &self.vm.metrics {
            Metrics::add(pick(m), n);
        }
    }

    fn warn(&mut self, line: &str) {
        if let Some(suppressed) = self.log.admit(now_ns()) {
            warn!("{line} ({suppressed} similar lines suppressed)");
        }
    }
}
