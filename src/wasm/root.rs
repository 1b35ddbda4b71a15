//! Root context: parses the plugin configuration, owns per-VM state handed to every
//! request, and runs the usage-event flusher.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::consumes::{self, Member};
use super::flusher::Flusher;
use super::http::{call_response_body, call_response_status, HttpFilter};
use super::metrics::Metrics;
use super::now_ns;
use crate::callout::{self, CounterError};
use crate::coalesce::Coalescer;
use crate::config::Config;
use crate::consume_id::{entropy_u64, IdMinter};
use crate::events::{push_json_str, EventBuffer, Jitter};
use crate::log_budget::LogBudget;
use crate::problem;
use crate::retry_queue::{Failed, RetryQueue};
use turnpike_wire::counter_paths;

/// Refunds waiting for the counter, per worker; beyond this they are given up (and
/// counted): a dead counter must not grow the VM without bound.
const MAX_PENDING_REFUNDS: usize = 100_000;
/// Refund calls in flight at once from the root context.
const MAX_REFUNDS_IN_FLIGHT: usize = 16;
/// Attempts before a refund is given up (~10 minutes of backoff).
const MAX_REFUND_ATTEMPTS: u32 = 30;
/// The root context's tick when no collector sets a shorter one.
const DEFAULT_TICK: std::time::Duration = std::time::Duration::from_millis(500);
/// The tick with leased routes: a renewal goes out on the next tick, and a lease must
/// not run dry while it waits (its requests would fall back to exact consumes). A
/// per-second lease's successor is asked for `turn_lead_ms` (8 ms) before it ends, and
/// a tick of delay eats into that lead. Holds go back every
/// [`lease::HOLD_RETURN_MS`]; reports and returns keep the report interval.
const LEASE_TICK: std::time::Duration = std::time::Duration::from_millis(2);

/// A refund the root context owes the counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: String,
    pub tenant: String,
    /// `Some(meters JSON)`: not a refund but a settlement to these final quantities.
    pub settle: Option<String>,
}

impl Refund {
    fn what(&self) -> &'static str {
        if self.settle.is_some() {
            "settlement"
        } else {
            "refund"
        }
    }
}

/// Seconds between two log lines about failing counter callouts, per worker.
const COUNTER_LOG_INTERVAL_SECS: u64 = 10;

/// State that lives as long as the VM (one per worker): ids, stats, log budget, events.
pub struct Vm {
    pub minter: IdMinter,
    pub metrics: Option<Metrics>,
    pub counter_log: RefCell<LogBudget>,
    /// Whether usage events are collected (a collector is configured).
    pub events_on: Cell<bool>,
    /// Usage events waiting for the collector: filled by HTTP contexts, drained by the
    /// root context's flusher.
    pub events: RefCell<EventBuffer>,
    /// Refunds for requests that are gone (client reset, fail_closed on a slow
    /// counter, a 5xx whose refund was cut off): sent and retried by the root context.
    pub refunds: RefCell<RetryQueue<Refund>>,
    /// A wake-up for the refunds and settlements is on its way to the root context.
    pub refunds_woken: Cell<bool>,
    /// Leases this worker spends from, and what it owes the counter about them.
    pub leases: RefCell<super::lease::LeaseBook>,
    /// Requests admitted from leases not yet added to the `allowed` and `leased`
    /// stats (the root adds them on its tick).
    pub leased_admits: Cell<u64>,
    /// Requests paused until their lease's renewal is answered.
    pub lease_waiters: RefCell<Vec<super::lease_wait::Waiter>>,
    /// While the root hands a batch its answers: the members allowed so far, added
    /// to `allowed` in one hostcall when the batch is done (`None`: not in a batch).
    pub batch_admits: Cell<Option<u64>>,
    /// Consume calls in flight and the requests waiting to go in the next batch.
    pub consumes: RefCell<Coalescer<Member>>,
    /// The shared queue that wakes this worker's root context to send a batch.
    pub wake_queue: Cell<Option<u32>>,
    /// The counter answered 404 to a batch (it predates them): consumes go alone.
    pub batches_refused: Cell<bool>,
    /// The root context's id.
    pub root_id: u32,
}

/// One configuration, compiled, with what is precomputed from it.
pub struct Plugin {
    pub config: Config,
    pub missing_tenant_body: String,
    pub unavailable_body: String,
    /// The CloudEvents `source`, encoded as a JSON string.
    pub source_json: String,
}

pub struct Root {
    vm: Rc<Vm>,
    plugin: Option<Rc<Plugin>>,
    flusher: Option<Flusher>,
    jitter: Jitter,
    refund_log: LogBudget,
    stopping: bool,
}

impl Root {
    pub fn new(root_id: u32) -> Self {
        Self {
            vm: Rc::new(Vm {
                root_id,
                minter: IdMinter::from_entropy(),
                metrics: Metrics::define(),
                counter_log: RefCell::new(LogBudget::new(COUNTER_LOG_INTERVAL_SECS)),
                events_on: Cell::new(false),
                events: RefCell::new(EventBuffer::new(0)),
                refunds: RefCell::new(RetryQueue::new(
                    MAX_PENDING_REFUNDS,
                    MAX_REFUNDS_IN_FLIGHT,
                    MAX_REFUND_ATTEMPTS,
                )),
                refunds_woken: Cell::new(false),
                leases: RefCell::new(super::lease::LeaseBook::new()),
                leased_admits: Cell::new(0),
                lease_waiters: RefCell::new(Vec::new()),
                batch_admits: Cell::new(None),
                consumes: RefCell::new(Coalescer::new(1, 1)),
                wake_queue: Cell::new(None),
                batches_refused: Cell::new(false),
            }),
            plugin: None,
            flusher: None,
            jitter: Jitter::new(entropy_u64()),
            refund_log: LogBudget::new(COUNTER_LOG_INTERVAL_SECS),
            stopping: false,
        }
    }

    /// Nothing in flight or waiting: no refund, no batch, no lease call or report.
    fn idle(&self) -> bool {
        self.vm.refunds.try_borrow().is_ok_and(|q| q.is_empty())
            && self.vm.leases.try_borrow().is_ok_and(|b| b.idle())
            && self.flusher.as_ref().is_none_or(Flusher::idle)
    }

    fn lease_tick(&mut self) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let now = super::lease::now_ms();
        let beat =
            self.vm.leases.try_borrow_mut().is_ok_and(|mut book| {
                book.tick(&plugin, self.vm.metrics.as_ref(), now, self.stopping)
            });
        // Another worker's renewal may have come, or a wait run out.
        super::lease_wait::release(&self.vm, &plugin, now, self.stopping);
        // Envoy's stats lag by up to HOLD_RETURN_MS: a hostcall per stat per 2 ms tick
        // would cost more than the stats are worth.
        if beat {
            self.flush_lease_stats();
        }
    }

    /// `allowed` and `leased`, added up per request in the VM, into Envoy's stats.
    fn flush_lease_stats(&self) {
        let admitted = self.vm.leased_admits.replace(0);
        if let (Some(m), true) = (&self.vm.metrics, admitted > 0) {
            let n = usize::try_from(admitted).unwrap_or(usize::MAX);
            Metrics::add(m.allowed, n);
            Metrics::add(m.leased, n);
        }
    }

    fn count(&self, pick: fn(&Metrics) -> u32) {
        if let Some(m) = &self.vm.metrics {
            Metrics::inc(pick(m));
        }
    }

    /// Send the refunds and settlements that are due. Settlements due together go in
    /// one `POST /v1/settle/batch` (a busy LLM route settles every request).
    fn send_refunds(&mut self) {
        // Whatever a wake-up was for goes now; a lost one waits no longer than a tick.
        self.vm.refunds_woken.set(false);
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let counter = &plugin.config.counter;
        let now = now_ns();
        let batch_max = if self.vm.batches_refused.get() {
            1
        } else {
            counter.batch_max
        };
        loop {
            let jobs = self.vm.refunds.try_borrow_mut().map_or_else(
                |_| Vec::new(),
                |mut q| q.next_due_batch(now, batch_max, |r| r.settle.is_some()),
            );
            let (path, body) = match jobs.as_slice() {
                [] => return,
                [job] => match &job.item.settle {
                    Some(meters) => (
                        counter_paths::SETTLE,
                        callout::settle_body(&job.item.id, &job.item.tenant, meters),
                    ),
                    None => (
                        counter_paths::REFUND,
                        callout::refund_body(&job.item.id, &job.item.tenant),
                    ),
                },
                settles => {
                    let bodies: Vec<Vec<u8>> = settles
                        .iter()
                        .map(|j| {
                            let meters = j.item.settle.as_deref().unwrap_or("[]");
                            callout::settle_body(&j.item.id, &j.item.tenant, meters)
                        })
                        .collect();
                    (
                        counter_paths::SETTLE_BATCH,
                        callout::batch_body(bodies.iter().map(Vec::as_slice)),
                    )
                }
            };
            let mut headers = vec![
                (":method", "POST"),
                (":path", path),
                (":authority", counter.authority.as_str()),
                ("content-type", "application/json"),
            ];
            if let Some(auth) = &counter.authorization {
                headers.push(("authorization", auth.as_str()));
            }
            let dispatched = hostcalls::dispatch_http_call(
                &counter.cluster,
                headers,
                Some(&body),
                vec![],
                counter.timeout,
            );
            let Ok(mut queue) = self.vm.refunds.try_borrow_mut() else {
                return;
            };
            match dispatched {
                Ok(token) => queue.started(token, jobs),
                Err(_) => {
                    for job in jobs {
                        queue.not_started(job, now, 1_000);
                    }
                    return;
                }
            }
        }
    }

    /// `Some(())` when `token` was one of the refund or settlement calls.
    fn refund_answered(&mut self, token: u32, body_size: usize) -> Option<()> {
        let jobs = self.vm.refunds.try_borrow_mut().ok()?.answered(token);
        if jobs.is_empty() {
            return None;
        }
        let status = call_response_status();
        let body = call_response_body(body_size);
        let outcomes: Vec<Result<bool, CounterError>> = if jobs.len() == 1 {
            // A settlement answers {"settled": ..}: any 200 is done with.
            vec![body.and_then(|b| {
                callout::parse_refund_answer(status.as_deref(), b.as_deref()).or_else(|e| {
                    callout::parse_ok(status.as_deref())
                        .map(|()| false)
                        .map_err(|_| e)
                })
            })]
        } else if status.as_deref() == Some("404") {
            // A counter that predates batches: settle one by one from now on.
            if !self.vm.batches_refused.replace(true) {
                warn!(
                    "the counter has no {} (an older version): settlements go one by one",
                    counter_paths::SETTLE_BATCH
                );
            }
            let now = now_ns();
            if let Ok(mut queue) = self.vm.refunds.try_borrow_mut() {
                for job in jobs {
                    queue.not_started(job, now, 0);
                }
            }
            return Some(());
        } else {
            match body {
                Ok(b) => {
                    callout::parse_settle_batch_answer(status.as_deref(), b.as_deref(), jobs.len())
                }
                Err(e) => vec![Err(e); jobs.len()],
            }
        };
        let now = now_ns();
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            let random = self.jitter.next_u64();
            match outcome {
                Ok(refunded) => {
                    if refunded && job.item.settle.is_none() {
                        self.count(|m| m.refunds);
                    }
                }
                Err(e) => {
                    let failed = self
                        .vm
                        .refunds
                        .try_borrow_mut()
                        .ok()
                        .map(|mut q| q.retry(job, now, random));
                    if let Some(Failed::GaveUp(refund)) = failed {
                        self.count(|m| m.refunds_abandoned);
                        if let Some(suppressed) = self.refund_log.admit(now_ns()) {
                            error!(
                                "{} of consume {} (tenant {}) given up after {MAX_REFUND_ATTEMPTS} attempts: {} ({suppressed} similar lines suppressed); reconciliation lists it",
                                refund.what(), refund.id, refund.tenant, e.describe()
                            );
                        }
                    }
                }
            }
        }
        Some(())
    }

    fn start_events(&mut self, config: &Config) {
        let Some(collector) = config.collector.clone() else {
            // Events already buffered still go out to the previous collector.
            self.vm.events_on.set(false);
            return;
        };
        if let Ok(mut buffer) = self.vm.events.try_borrow_mut() {
            buffer.set_capacity(collector.max_buffer);
        }
        self.vm.events_on.set(true);
        let flusher = match self.flusher.take() {
            Some(mut f) => {
                f.reconfigure(collector);
                f
            }
            // A random jitter seed per VM, so workers' retries spread apart.
            None => Flusher::new(self.vm.clone(), collector, entropy_u64()),
        };
        self.flusher = Some(flusher);
    }

    /// Batched consumes: the wake-up queue (once per VM) and the limits. Without a
    /// queue every request calls alone, as it does with `batch_max` 1.
    fn start_batches(&self, config: &Config) {
        if config.counter.batch_max > 1 && self.vm.wake_queue.get().is_none() {
            let queue = consumes::register_wake_queue();
            if queue.is_none() {
                warn!("cannot register a shared queue: consumes are not batched");
            }
            self.vm.wake_queue.set(queue);
        }
        let batch_max = if self.vm.wake_queue.get().is_none() || self.vm.batches_refused.get() {
            1
        } else {
            config.counter.batch_max
        };
        if let Ok(mut c) = self.vm.consumes.try_borrow_mut() {
            c.configure(batch_max, config.counter.calls_in_flight);
        }
    }

    /// The root context's tick: the shortest of what it runs on it (refund retries,
    /// event flushes, lease reports and renewals).
    fn set_tick(&self, config: &Config) {
        let mut tick = DEFAULT_TICK;
        if let Some(c) = &config.collector {
            tick = tick.min(c.flush_interval);
        }
        if config.matcher.has_leased_routes() {
            tick = tick.min(config.lease.report_interval).min(LEASE_TICK);
        }
        if hostcalls::set_tick_period(tick).is_err() {
            error!("cannot set the tick period: refunds, usage events and lease reports will not be sent");
        }
    }
}

/// Where the host keeps this Envoy's node id, first hit wins. Envoy 1.33 removed the
/// older top-level `node` attribute from `get_property` ("use xds attributes instead",
/// its release notes), so on every Envoy the version matrix tests (1.36 to 1.40)
/// `node.id` is empty and only `xds.node.id` answers; `node.id` stays for older hosts.
const NODE_ID_PATHS: [&[&str]; 2] = [&["xds", "node", "id"], &["node", "id"]];

/// `collector.source`, else `//turnpike/envoy/<node id>`, as a JSON string.
fn source_json(config: &Config) -> String {
    let source = match config.collector.as_ref().and_then(|c| c.source.clone()) {
        Some(source) => source,
        None => {
            let node = NODE_ID_PATHS.iter().find_map(|path| {
                hostcalls::get_property(path.to_vec())
                    .ok()
                    .flatten()
                    .filter(|n| !n.is_empty())
            });
            let node = node.as_deref().and_then(|n| std::str::from_utf8(n).ok());
            let node = node.filter(|n| !n.is_empty()).unwrap_or("unknown");
            format!("//turnpike/envoy/{node}")
        }
    };
    let mut out = Vec::with_capacity(source.len() + 2);
    push_json_str(&mut out, &source);
    String::from_utf8(out).unwrap_or_else(|_| "\"//turnpike/envoy/unknown\"".to_owned())
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body: usize,
        _trailers: usize,
    ) {
        let lease_call = self.vm.leases.try_borrow().is_ok_and(|b| b.owns(token));
        let batch = self.vm.consumes.try_borrow().is_ok_and(|c| c.owns(token));
        if batch {
            if let Some(plugin) = self.plugin.clone() {
                consumes::batch_answered(&self.vm, &plugin, token, body);
                consumes::send_batches(&self.vm, &plugin);
            }
        } else if lease_call {
            if let Some(plugin) = self.plugin.clone() {
                if let Ok(mut book) = self.vm.leases.try_borrow_mut() {
                    book.answered(token, body, &plugin, self.vm.metrics.as_ref());
                }
                super::lease_wait::release(&self.vm, &plugin, super::lease::now_ms(), false);
            }
        } else if self.refund_answered(token, body).is_some() {
            self.send_refunds();
        } else if let Some(flusher) = &mut self.flusher {
            let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| s.parse::<u16>().ok());
            flusher.on_response(token, status);
        }
        if self.stopping && self.idle() {
            let _ = hostcalls::done();
        }
    }

    /// The VM is stopping (plugin removed or replaced, Envoy draining): send what is
    /// owed now, and tell Envoy to wait until the last answer is in.
    fn on_done(&mut self) -> bool {
        self.stopping = true;
        self.send_refunds();
        self.lease_tick();
        if let Some(flusher) = &mut self.flusher {
            flusher.on_stop();
        }
        self.idle()
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let raw = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(Some(raw)) => raw,
            _ => {
                error!("invalid plugin configuration: missing (expected a JSON object)");
                return false;
            }
        };
        let config = match Config::parse(&raw) {
            Ok(config) => config,
            Err(e) => {
                error!("invalid plugin configuration: {e}");
                return false;
            }
        };
        let routes: Vec<&str> = config.matcher.route_names().collect();
        info!(
            "configured: counter cluster {:?} ({:?}), routes {:?}, usage events {}",
            config.counter.cluster,
            config.counter.failure_mode,
            routes,
            config
                .collector
                .as_ref()
                .map_or("off".to_owned(), |c| format!("to {:?}", c.cluster))
        );
        if config.collector.is_none() && self.flusher.is_some() {
            warn!("collector section removed: no new usage events");
        }
        self.start_events(&config);
        self.set_tick(&config);
        self.start_batches(&config);
        self.plugin = Some(Rc::new(Plugin {
            missing_tenant_body: problem::missing_tenant(config.tenant.tenant.claim()),
            unavailable_body: problem::counter_unavailable(),
            source_json: source_json(&config),
            config,
        }));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        consumes::drain_wake_queue(&self.vm, queue_id);
        if let Some(plugin) = self.plugin.clone() {
            consumes::send_batches(&self.vm, &plugin);
        }
        if self.vm.refunds_woken.get() {
            self.send_refunds();
        }
    }

    fn on_tick(&mut self) {
        // What a lost wake-up left waiting.
        if let Some(plugin) = self.plugin.clone() {
            consumes::send_batches(&self.vm, &plugin);
        }
        self.send_refunds();
        self.lease_tick();
        if let Some(flusher) = &mut self.flusher {
            flusher.on_tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK traps on None, so an unconfigured plugin still gets a context, one
        // that refuses requests.
        Some(Box::new(HttpFilter::shared(
            self.vm.clone(),
            self.plugin.clone(),
            context_id,
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
