//! Usage-event delivery, run by the root context: POST batches from the VM's bounded
//! event buffer to the collector, retry failed batches with backoff, report overflow.
//!
//! HTTP contexts push straight into the buffer their VM shares with the root context
//! (same VM, same thread). A proxy-wasm shared queue would cost every request an
//! enqueue under a host lock, a cross-thread post and an `on_queue_ready` VM call.

use std::rc::Rc;
use std::time::Duration;

use log::warn;
use proxy_wasm::hostcalls;
use turnpike_wire::collector_paths;

use super::metrics::Metrics;
use super::now_ns;
use super::root::Vm;
use crate::config::{CollectorConfig, MAX_BATCH_BYTES};
use crate::events::{Backoff, Jitter};
use crate::log_budget::LogBudget;

/// Retry delays: from the flush interval up to this.
const MAX_BACKOFF_MS: u64 = 60_000;
/// Seconds between two log lines about delivery problems.
const LOG_INTERVAL_SECS: u64 = 10;

pub struct Flusher {
    vm: Rc<Vm>,
    config: CollectorConfig,
    backoff: Backoff,
    jitter: Jitter,
    next_attempt_ns: u64,
    in_flight: Option<u32>,
    log: LogBudget,
    /// Overflow has its own budget, so batch-failure lines cannot hold it back, and
    /// drops not yet reported are summed until a line is allowed: never silent.
    overflow_log: LogBudget,
    unreported_drops: usize,
    /// This VM's share of the `buffer_depth` gauge. Every worker's VM (and the main
    /// thread's) has a buffer, all on one gauge: each adds its own changes.
    reported_depth: usize,
    stopping: bool,
}

impl Flusher {
    pub fn new(vm: Rc<Vm>, config: CollectorConfig, seed: u64) -> Self {
        let base_ms = u64::try_from(config.flush_interval.as_millis()).unwrap_or(1000);
        Self {
            vm,
            backoff: Backoff::new(base_ms, MAX_BACKOFF_MS),
            config,
            jitter: Jitter::new(seed),
            next_attempt_ns: 0,
            in_flight: None,
            log: LogBudget::new(LOG_INTERVAL_SECS),
            overflow_log: LogBudget::new(LOG_INTERVAL_SECS),
            unreported_drops: 0,
            reported_depth: 0,
            stopping: false,
        }
    }

    /// A new configuration keeps the events already buffered.
    pub fn reconfigure(&mut self, config: CollectorConfig) {
        self.config = config;
    }

    pub fn stopping(&self) -> bool {
        self.stopping
    }

    pub fn tick_period(&self) -> Duration {
        self.config.flush_interval
    }

    pub fn on_tick(&mut self) {
        let overflow = self
            .vm
            .events
            .try_borrow_mut()
            .map_or(0, |mut b| b.take_overflow());
        self.unreported_drops = self.unreported_drops.saturating_add(overflow);
        if self.unreported_drops > 0 && self.overflow_log.admit(now_ns()).is_some() {
            warn!(
                "usage event buffer full ({} events): dropped {}",
                self.config.max_buffer, self.unreported_drops
            );
            self.unreported_drops = 0;
        }
        self.record_depth();
        self.send_if_due();
    }

    /// Best effort at VM shutdown: `true` when nothing is left in flight.
    pub fn on_stop(&mut self) -> bool {
        self.stopping = true;
        self.next_attempt_ns = 0;
        self.send_if_due();
        self.in_flight.is_none()
    }

    /// `Some(done)` if `token` was this flusher's batch; `done` tells a stopping VM that
    /// nothing is left in flight.
    pub fn on_response(&mut self, token: u32, status: Option<u16>) -> Option<bool> {
        if self.in_flight != Some(token) {
            return None;
        }
        self.in_flight = None;
        let Ok(mut buffer) = self.vm.events.try_borrow_mut() else {
            return Some(true);
        };
        match status {
            Some(200..=299) => {
                let n = buffer.ack();
                drop(buffer);
                self.count(|m| m.events_sent, n);
                self.backoff.reset();
                self.next_attempt_ns = 0;
            }
            // The collector refuses this batch's content: resending cannot help, and
            // would block every later event behind it.
            Some(400 | 413 | 415 | 422) => {
                let n = buffer.ack();
                drop(buffer);
                self.count(|m| m.events_dropped, n);
                self.warn(&format!(
                    "collector refused a batch ({status:?}); dropped {n} events"
                ));
            }
            _ => {
                buffer.nack();
                let buffered = buffer.len();
                drop(buffer);
                let delay_ms = self.backoff.next_delay_ms(self.jitter.next_u64());
                self.next_attempt_ns = now_ns().saturating_add(delay_ms.saturating_mul(1_000_000));
                self.warn(&format!(
                    "collector batch failed ({}); {buffered} events buffered, retry in {delay_ms} ms",
                    status.map_or_else(|| "no response".to_owned(), |s| format!("status {s}")),
                ));
            }
        }
        self.record_depth();
        // Keep up under load: more than one batch may wait. A stopping VM sends on
        // only after a success, never waiting out a backoff.
        if !self.stopping || self.next_attempt_ns == 0 {
            self.send_if_due();
        }
        Some(self.in_flight.is_none())
    }

    fn send_if_due(&mut self) {
        if self.in_flight.is_some() || now_ns() < self.next_attempt_ns {
            return;
        }
        let body = match self.vm.events.try_borrow_mut() {
            Ok(mut buffer) => buffer.take_batch(self.config.max_batch, MAX_BATCH_BYTES),
            Err(_) => None,
        };
        let Some(body) = body else { return };
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
            Some(&body),
            vec![],
            c.timeout,
        );
        match dispatched {
            Ok(token) => self.in_flight = Some(token),
            Err(e) => {
                if let Ok(mut buffer) = self.vm.events.try_borrow_mut() {
                    buffer.nack();
                }
                let delay_ms = self.backoff.next_delay_ms(self.jitter.next_u64());
                self.next_attempt_ns = now_ns().saturating_add(delay_ms.saturating_mul(1_000_000));
                self.warn(&format!(
                    "cannot dispatch to collector cluster {:?} ({e:?}); retry in {delay_ms} ms",
                    self.config.cluster
                ));
            }
        }
    }

    fn record_depth(&mut self) {
        let Ok(depth) = self.vm.events.try_borrow().map(|b| b.len()) else {
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
