//! HTTP context: one per request. Finds the tenant, consumes quota through the counter,
//! then resumes, rejects, or applies the failure mode; refunds on upstream 5xx; hands
//! refunds it cannot wait for (the client went away) to the root context.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType, Status};
use turnpike_wire::{counter_paths, Decision};

use super::consumes::{self, Member};
use super::lease_wait;
use super::metrics::Metrics;
use super::now_ns;
use super::root::{Plugin, Refund, Vm};
use crate::callout::{self, CounterError};
use crate::claims::{parse_plan, parse_tenant};
use crate::coalesce::Arrival;
use crate::config::Mode;
use crate::decision::{decide, Verdict};
use crate::events::{encode_event, report_method, Pushed, UsageRecord, NO_RESPONSE_STATUS};
use crate::header_pairs;
use crate::problem;
use crate::ratelimit::RateLimitHeaders;
use crate::reserved;
use crate::routes::{Matched, Route};
use crate::usage::{self, Reading, Reserve, Settle, Settlement, UsageSpec};

/// Headers the filter owns towards the upstream; client-sent values are dropped.
const CONSUME_ID_HEADER: &str = "turnpike-consume-id";
const TENANT_HEADER: &str = "turnpike-tenant";
/// A counter answer larger than this is not a consume response.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the request headers, or not metered.
    Idle,
    /// Request paused, its own consume callout in flight.
    Consuming { token: u32, started_ns: u64 },
    /// Request paused, its consume waiting for (or in) a batch the root context sends.
    Queued,
    /// Counter admitted it.
    Allowed,
    /// Let through by fail_open without the counter's answer.
    Unverified,
    /// Answered locally (401, 403, 429, 503).
    Rejected,
    /// Response headers paused, refund callout in flight.
    Refunding { token: u32 },
    /// Admitted from a lease (no callout).
    Leased,
    /// Request headers paused until the body holds the reservation (a JSON field).
    AwaitingBody,
    /// Request paused until its lease's renewal is answered (`lease_wait`).
    AwaitingLease,
}

/// A consume that waits for the request body to know its reservation.
struct Pending {
    route: Rc<Route>,
    plan: Option<String>,
    method: &'static str,
}

/// A request admitted from a lease: what its report needs.
struct LeasedRequest {
    key: Rc<str>,
    lease: u64,
    route: Rc<Route>,
    /// Decision time on the counter's clock, unix ms.
    decided_ms: u64,
    /// Given back into the lease (upstream 5xx): not reported, not billed.
    refunded: bool,
}

pub struct HttpFilter {
    vm: Rc<Vm>,
    context_id: u32,
    /// This filter, for the batch it may wait in.
    me: Weak<RefCell<HttpFilter>>,
    plugin: Option<Rc<Plugin>>,
    stage: Stage,
    id: String,
    tenant: String,
    headers: RateLimitHeaders,
    /// What goes into the usage event; `None` when there is no event to send.
    usage: Option<Usage>,
    leased: Option<LeasedRequest>,
    /// The metered route.
    route: Option<Rc<Route>>,
    /// Reserved quantities of the route's settled meters.
    reserved: Vec<(String, u64)>,
    /// Reads the response for the settled meters (admitted requests of such routes).
    settlement: Option<Settlement>,
    /// Values of the headers (or trailers) the settlement reads.
    settle_values: Vec<(String, String)>,
    pending: Option<Pending>,
    /// The request had no body (its headers ended the stream).
    bodyless: bool,
    /// The request headers went upstream before the decision (a body-reserving route
    /// without `hold_headers_for_body`): no turnpike-* headers can be added to them.
    headers_forwarded: bool,
    /// The consume was given back (upstream 5xx): nothing is billed or settled.
    refunded: bool,
    /// What the usage event bills when settled (fixed costs and settled quantities).
    billed: Option<Vec<(String, u64)>>,
}

/// The parts of a metered exchange its usage event needs.
struct Usage {
    decision: Decision,
    route: Rc<Route>,
    method: &'static str,
    /// The counter's plan; for an unverified request, the claimed one.
    plan: Option<String>,
    started_ns: u64,
    /// When the counter decided (unix ms, its clock): the billing time.
    decided_ms: Option<u64>,
    /// Status sent to the client, once known.
    status: Option<u16>,
    /// The refund of an upstream 5xx went through: nothing is billed.
    refunded: bool,
    /// Admitted from this lease (leased mode).
    lease: Option<u64>,
}

/// What the tenant's lease did for a request.
enum LeaseSpend {
    Admitted,
    /// Its renewal is on its way: wait for it, until then (unix ms, our clock).
    Wait {
        /// The lease's shared key.
        key: Rc<str>,
        until_ms: u64,
    },
    /// Decide it with the counter.
    Exact,
}

/// The request headers the filter needs, from one hostcall, borrowed from its buffer.
#[derive(Default)]
struct RequestHead<'a> {
    path: &'a [u8],
    /// Empty if not UTF-8 (no route's method matches it; reported as another method).
    method: &'a str,
}

impl HttpFilter {
    /// A filter for the HTTP context `context_id`, shared with the batch it may wait in.
    pub fn shared(vm: Rc<Vm>, plugin: Option<Rc<Plugin>>, context_id: u32) -> HttpShell {
        HttpShell(Rc::new_cyclic(|me| {
            RefCell::new(HttpFilter::new(vm, plugin, context_id, me.clone()))
        }))
    }

    fn new(
        vm: Rc<Vm>,
        plugin: Option<Rc<Plugin>>,
        context_id: u32,
        me: Weak<RefCell<HttpFilter>>,
    ) -> Self {
        Self {
            vm,
            context_id,
            me,
            plugin,
            stage: Stage::Idle,
            id: String::new(),
            tenant: String::new(),
            headers: RateLimitHeaders::default(),
            usage: None,
            leased: None,
            route: None,
            reserved: Vec::new(),
            settlement: None,
            settle_values: Vec::new(),
            pending: None,
            bodyless: false,
            headers_forwarded: false,
            refunded: false,
            billed: None,
        }
    }

    fn count(&self, pick: fn(&Metrics) -> u32) {
        if let Some(m) = &self.vm.metrics {
            Metrics::inc(pick(m));
        }
    }

    fn start(&mut self, plugin: &Plugin, head: RequestHead<'_>) -> Action {
        let (matched, _) = plugin
            .config
            .matcher
            .classify_lazy(&mut || head.method.to_owned(), head.path);
        let route = match matched {
            Matched::Unmetered => {
                self.count(|m| m.exempt);
                return Action::Continue;
            }
            Matched::Metered(route) => route.clone(),
        };

        // The verified payload only: jwt_authn writes it, no client can.
        let tenant_raw = property(plugin.config.tenant.tenant.as_property_path());
        let Some(tenant) = tenant_raw.as_deref().and_then(parse_tenant) else {
            self.count(|m| m.missing_tenant);
            return self.reject(
                401,
                vec![("content-type", problem::CONTENT_TYPE)],
                &plugin.missing_tenant_body,
            );
        };
        let method = report_method(head.method);
        if route.mode == Mode::Leased {
            match self.spend_lease(plugin, tenant, &route, method) {
                LeaseSpend::Admitted => return Action::Continue,
                LeaseSpend::Wait { key, until_ms } => {
                    if self.wait_for_lease(key, tenant, &route, method, until_ms) {
                        return Action::Pause;
                    }
                }
                LeaseSpend::Exact => {}
            }
        }
        self.exactly(plugin, tenant, route, method, false)
    }

    /// Decide the request with the counter (`queue`: in the next batch, sent by the
    /// root context, never alone from this context).
    fn exactly(
        &mut self,
        plugin: &Plugin,
        tenant: &str,
        route: Rc<Route>,
        method: &'static str,
        queue: bool,
    ) -> Action {
        let plan_raw = plugin
            .config
            .tenant
            .plan
            .as_ref()
            .and_then(|p| property(p.as_property_path()));
        let plan = plan_raw.as_deref().and_then(parse_plan);

        self.id = self.vm.minter.mint();
        self.tenant = tenant.to_owned();
        self.route = Some(route.clone());
        if !route.usage.is_empty() {
            if route.reserves_from_body() && !self.bodyless {
                // The reservation is in the body: wait for it (bounded), then consume.
                self.pending = Some(Pending {
                    route,
                    plan: plan.map(str::to_owned),
                    method,
                });
                self.stage = Stage::AwaitingBody;
                // Envoy hands a Wasm filter the body after a paused header only when
                // the plugin allows it (allow_on_headers_stop_iteration); otherwise the
                // headers go on and the body is what waits for the counter.
                if plugin.config.hold_headers_for_body {
                    return Action::Pause;
                }
                self.headers_forwarded = true;
                return Action::Continue;
            }
            self.reserved = reservations(&route, None);
        }
        self.consume(plugin, route, plan, method, queue)
    }

    /// Wait for the renewal of the lease at `key` (`lease_wait`), at most until `until_ms`;
    /// `false` if it cannot (then it is decided exactly).
    fn wait_for_lease(
        &mut self,
        key: Rc<str>,
        tenant: &str,
        route: &Rc<Route>,
        method: &'static str,
        until_ms: u64,
    ) -> bool {
        let waiter = lease_wait::Waiter {
            key,
            context_id: self.context_id,
            filter: self.me.clone(),
            until_ms,
        };
        let Ok(mut waiters) = self.vm.lease_waiters.try_borrow_mut() else {
            return false;
        };
        waiters.push(waiter);
        drop(waiters);
        self.count(|m| m.lease_waits);
        self.tenant = tenant.to_owned();
        self.pending = Some(Pending {
            route: route.clone(),
            plan: None,
            method,
        });
        self.stage = Stage::AwaitingLease;
        true
    }

    /// Let go by `lease_wait` (this is the effective context): admit from the lease if
    /// it can now, else decide exactly.
    pub fn lease_waited(&mut self, plugin: &Plugin) {
        if self.stage != Stage::AwaitingLease {
            return;
        }
        let Some(p) = self.pending.take() else {
            return;
        };
        let tenant = std::mem::take(&mut self.tenant);
        self.stage = Stage::Idle;
        let action = match self.spend_lease(plugin, &tenant, &p.route, p.method) {
            LeaseSpend::Admitted => Action::Continue,
            LeaseSpend::Wait { .. } | LeaseSpend::Exact => {
                self.exactly(plugin, &tenant, p.route, p.method, true)
            }
        };
        if action == Action::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }

    /// Dispatch the consume: the route's fixed costs and its reservations.
    fn consume(
        &mut self,
        plugin: &Plugin,
        route: Rc<Route>,
        plan: Option<&str>,
        method: &'static str,
        queue: bool,
    ) -> Action {
        let meters_json = if self.reserved.is_empty() {
            route.meters_json.clone()
        } else {
            let mut all = route.meters.clone();
            all.extend(self.reserved.iter().cloned());
            callout::meters_json(&all)
        };
        let body = callout::consume_body(&self.id, &self.tenant, plan, &meters_json);
        let counter = &plugin.config.counter;
        let arrival = if queue {
            Arrival::Queue
        } else {
            self.vm
                .consumes
                .try_borrow()
                .map_or(Arrival::Alone, |c| c.arrive())
        };
        let dispatched = match arrival {
            Arrival::Alone => hostcalls::dispatch_http_call(
                &counter.cluster,
                counter_headers(plugin, counter_paths::CONSUME),
                Some(&body),
                vec![],
                counter.timeout,
            )
            .map(Some),
            Arrival::Queue => Ok(None),
        };
        // A clock read (a hostcall) for the usage event, or for the latency of a call
        // of its own; a batch's is read once for the batch.
        let events = self.vm.events_on.get();
        let started_ns = if events || matches!(dispatched, Ok(Some(_))) {
            now_ns()
        } else {
            0
        };
        if events {
            self.usage = Some(Usage {
                // Until the counter answers; only fail_open keeps this.
                decision: Decision::Unverified,
                route,
                method,
                plan: plan.map(str::to_owned),
                started_ns,
                decided_ms: None,
                status: None,
                refunded: false,
                lease: None,
            });
        }
        match dispatched {
            Ok(Some(token)) => {
                if let Ok(mut c) = self.vm.consumes.try_borrow_mut() {
                    c.alone_sent();
                }
                self.stage = Stage::Consuming { token, started_ns };
                Action::Pause
            }
            Ok(None) => {
                let member = Member {
                    context_id: self.context_id,
                    filter: self.me.clone(),
                    body,
                };
                let wake = self
                    .vm
                    .consumes
                    .try_borrow_mut()
                    .is_ok_and(|mut c| c.enqueue(member));
                consumes::wake_if(&self.vm, wake);
                self.stage = Stage::Queued;
                Action::Pause
            }
            Err(_) => self.apply(
                plugin,
                decide(Err(CounterError::Dispatch), counter.failure_mode),
            ),
        }
    }

    /// Admit the request from the tenant's lease on this route if it holds any; ask
    /// for more when it runs low (the root context sends it).
    fn spend_lease(
        &mut self,
        plugin: &Plugin,
        tenant: &str,
        route: &Rc<Route>,
        method: &'static str,
    ) -> LeaseSpend {
        // One clock read for the whole decision: each hostcall costs about a µs.
        let started_ns = now_ns();
        let now = started_ns / 1_000_000;
        let Ok(mut book) = self.vm.leases.try_borrow_mut() else {
            return LeaseSpend::Exact;
        };
        let Some(spend) = book.spend(tenant, route, &plugin.config.lease, now) else {
            return LeaseSpend::Exact;
        };
        let key = spend.key;
        if let Some(want) = spend.renew {
            let plan_raw = plugin
                .config
                .tenant
                .plan
                .as_ref()
                .and_then(|p| property(p.as_property_path()));
            let plan = plan_raw.as_deref().and_then(parse_plan);
            book.renew(&key, tenant, route, plan, want);
        }
        if !spend.admitted {
            return if spend.wait {
                LeaseSpend::Wait {
                    key,
                    until_ms: now.saturating_add(plugin.config.lease.tuning.renewal_wait_ms),
                }
            } else {
                LeaseSpend::Exact
            };
        }
        let decided_ms = spend.decided_ms;
        let (policy, remaining, warning) = book.headers(&key, spend.remaining, now);
        drop(book);
        // `allowed` and `leased` are added up here and sent to Envoy on the root's
        // next tick (10 ms with leased routes): two hostcalls fewer per request.
        self.vm
            .leased_admits
            .set(self.vm.leased_admits.get().saturating_add(1));
        if warning.is_some() {
            self.count(|m| m.soft_warnings);
        }
        self.headers = RateLimitHeaders {
            policy,
            remaining,
            warning,
        };
        self.id = self.vm.minter.mint();
        self.tenant = tenant.to_owned();
        if self.vm.events_on.get() {
            self.usage = Some(Usage {
                decision: Decision::Allowed,
                route: route.clone(),
                method,
                plan: None,
                started_ns,
                decided_ms: Some(decided_ms),
                status: None,
                refunded: false,
                lease: Some(spend.lease),
            });
        }
        self.leased = Some(LeasedRequest {
            key,
            lease: spend.lease,
            route: route.clone(),
            decided_ms,
            refunded: false,
        });
        self.stage = Stage::Leased;
        self.set_upstream_headers();
        LeaseSpend::Admitted
    }

    /// Act on a verdict. `Continue` means the request goes on to the upstream.
    fn apply(&mut self, plugin: &Plugin, verdict: Verdict) -> Action {
        match verdict {
            Verdict::Allow { headers, plan } => {
                match self.vm.batch_admits.get() {
                    Some(n) => self.vm.batch_admits.set(Some(n.saturating_add(1))),
                    None => self.count(|m| m.allowed),
                }
                if let Some(u) = &mut self.usage {
                    u.decision = Decision::Allowed;
                    u.plan = Some(plan);
                }
                if headers.warning.is_some() {
                    self.count(|m| m.soft_warnings);
                }
                self.headers = headers;
                self.stage = Stage::Allowed;
                if let Some(route) = self.route.as_ref().filter(|r| !r.usage.is_empty()) {
                    self.settlement = Some(Settlement::new(
                        &route.usage,
                        plugin.config.settle_body_max_bytes,
                        MAX_EVENT_LINE_BYTES,
                    ));
                }
                self.set_upstream_headers();
                Action::Continue
            }
            Verdict::Deny {
                status,
                retry_after,
                headers,
                body,
                plan,
            } => {
                self.count(|m| m.denied);
                if let Some(u) = &mut self.usage {
                    u.decision = Decision::Denied;
                    u.plan = Some(plan);
                    u.status = u16::try_from(status).ok();
                }
                let retry_after = retry_after.map(|s| s.to_string());
                let mut reply = vec![("content-type", problem::CONTENT_TYPE)];
                if let Some(retry_after) = &retry_after {
                    reply.push(("retry-after", retry_after.as_str()));
                }
                if let (Some(policy), Some(remaining)) = (&headers.policy, &headers.remaining) {
                    reply.push(("ratelimit-policy", policy));
                    reply.push(("ratelimit", remaining));
                }
                self.reject(status, reply, &body)
            }
            Verdict::FailOpen(e) => {
                self.count(|m| m.counter_errors);
                self.count(|m| m.fail_open_passes);
                self.log_counter_failure(plugin, e, "letting request through (fail_open)");
                self.stage = Stage::Unverified;
                self.set_upstream_headers();
                Action::Continue
            }
            Verdict::FailClosed(e) => {
                self.count(|m| m.counter_errors);
                self.count(|m| m.fail_closed_denials);
                // The client is refused: if the consume reached Redis after all (a slow
                // counter), give it back. Nothing was sent when the dispatch failed.
                if e != CounterError::Dispatch {
                    self.queue_refund();
                }
                self.usage = None;
                self.log_counter_failure(plugin, e, "answering 503 (fail_closed)");
                self.reject(
                    503,
                    vec![
                        ("content-type", problem::CONTENT_TYPE),
                        ("retry-after", "1"),
                    ],
                    &plugin.unavailable_body,
                )
            }
        }
    }

    fn reject(&mut self, status: u32, headers: Vec<(&str, &str)>, body: &str) -> Action {
        self.stage = Stage::Rejected;
        answer_locally(status, headers, body)
    }

    fn set_upstream_headers(&self) {
        // Headers already on their way upstream cannot be changed any more.
        if self.headers_forwarded
            || !self
                .plugin
                .as_ref()
                .is_some_and(|p| p.config.upstream_headers)
        {
            return;
        }
        for (name, value) in [(CONSUME_ID_HEADER, &self.id), (TENANT_HEADER, &self.tenant)] {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
        }
    }

    /// Hand a refund of this consume to the root context, which retries it until the
    /// counter confirms. A refund that reaches the counter before the consume cancels
    /// it there, so the order of the two calls does not matter.
    fn queue_refund(&self) {
        if self.hand_to_root(None) {
            self.count(|m| m.refunds_queued);
        } else {
            self.count(|m| m.refunds_abandoned);
        }
    }

    /// Queue this consume's refund (`settle` None) or settlement for the root context,
    /// and wake it when nothing it has out would send it soon; `false` when the queue
    /// is full.
    fn hand_to_root(&self, settle: Option<String>) -> bool {
        let queued = self.vm.refunds.try_borrow_mut().is_ok_and(|mut q| {
            q.push(Refund {
                id: self.id.clone(),
                tenant: self.tenant.clone(),
                settle,
            })
        });
        if queued {
            consumes::wake_for_refunds(&self.vm);
        }
        queued
    }

    fn log_counter_failure(&self, plugin: &Plugin, e: CounterError, action: &str) {
        let Ok(mut budget) = self.vm.counter_log.try_borrow_mut() else {
            return;
        };
        if let Some(suppressed) = budget.admit(now_ns()) {
            let hint = match e {
                CounterError::Status(401) => {
                    " (the counter refused the service token: check TURNPIKE_COUNTER_TOKEN and counter.token_env)"
                }
                _ => "",
            };
            warn!(
                "counter callout to cluster {:?} failed: {}{hint}; {action} ({suppressed} similar lines suppressed)",
                plugin.config.counter.cluster,
                e.describe()
            );
        }
    }

    fn consume_answered(&mut self, plugin: &Plugin, started_ns: u64, body_size: usize) {
        let status = call_response_status();
        let body = call_response_body(body_size);
        let outcome = match &body {
            Err(e) => Err(*e),
            // JSON from a counter that does not know the compact answer.
            Ok(Some(b)) if b.first() == Some(&b'{') => {
                callout::parse_consume_answer(status.as_deref(), Some(b))
            }
            Ok(body) => callout::parse_compact_answer(status.as_deref(), body.as_deref()),
        };
        if let Some(m) = &self.vm.metrics {
            Metrics::record(
                m.callout_latency_ms,
                now_ns().saturating_sub(started_ns) / 1_000_000,
            );
        }
        self.decided(plugin, outcome);
        self.alone_done();
    }

    /// Its own call is over (answered, or the client went away): requests that queued
    /// meanwhile may go now.
    fn alone_done(&self) {
        let wake = self
            .vm
            .consumes
            .try_borrow_mut()
            .is_ok_and(|mut c| c.alone_done());
        consumes::wake_if(&self.vm, wake);
    }

    /// The answer to this request's consume in a batch (the root context made this the
    /// effective context).
    pub fn batch_decided(
        &mut self,
        plugin: &Plugin,
        outcome: Result<callout::ConsumeAnswer<'_>, CounterError>,
    ) {
        if self.stage == Stage::Queued {
            self.decided(plugin, outcome);
        }
    }

    fn decided(
        &mut self,
        plugin: &Plugin,
        outcome: Result<callout::ConsumeAnswer<'_>, CounterError>,
    ) {
        if let (Ok(answer), Some(u)) = (&outcome, &mut self.usage) {
            u.decided_ms = answer.time_ms;
        }
        if self.apply(plugin, decide(outcome, plugin.config.counter.failure_mode))
            == Action::Continue
        {
            let _ = hostcalls::resume_http_request();
        }
    }

    fn refund_answered(&mut self, plugin: &Plugin, body_size: usize) {
        let status = call_response_status();
        let outcome = call_response_body(body_size)
            .and_then(|body| callout::parse_refund_answer(status.as_deref(), body.as_deref()));
        match outcome {
            Ok(true) => {
                self.count(|m| m.refunds);
                self.refunded = true;
                if let Some(u) = &mut self.usage {
                    u.refunded = true;
                }
            }
            Ok(false) => {}
            Err(e) => {
                self.count(|m| m.counter_errors);
                self.log_counter_failure(plugin, e, "refund handed to the retry queue");
                self.queue_refund();
                // Not confirmed: the root context's retries will give it back, and the
                // counter's usage stream records the refund when it happens.
                self.refunded = true;
                if let Some(u) = &mut self.usage {
                    u.refunded = true;
                }
            }
        }
        self.stage = Stage::Allowed;
        let _ = hostcalls::resume_http_response();
    }

    /// Dispatch the refund for an upstream 5xx; `true` when the response must wait for it.
    fn start_refund(&mut self, plugin: &Plugin) -> bool {
        let body = callout::refund_body(&self.id, &self.tenant);
        let counter = &plugin.config.counter;
        let dispatched = hostcalls::dispatch_http_call(
            &counter.cluster,
            counter_headers(plugin, counter_paths::REFUND),
            Some(&body),
            vec![],
            counter.timeout,
        );
        match dispatched {
            Ok(token) => {
                self.stage = Stage::Refunding { token };
                true
            }
            Err(_) => {
                self.count(|m| m.counter_errors);
                self.log_counter_failure(
                    plugin,
                    CounterError::Dispatch,
                    "refund handed to the retry queue",
                );
                self.queue_refund();
                if let Some(u) = &mut self.usage {
                    u.refunded = true;
                }
                false
            }
        }
    }

    /// The exchange ended: what it used of each settled meter, from the response (as
    /// far as it got: a client gone mid-stream is billed what the stream reported so
    /// far) or the policy; the counter is told through the root context.
    fn settle(&mut self) {
        let (Some(settlement), Some(route)) = (self.settlement.take(), self.route.clone()) else {
            return;
        };
        let values = std::mem::take(&mut self.settle_values);
        let mut lookup = |name: &str| {
            values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let mut finals = Vec::with_capacity(route.usage.len());
        for spec in &route.usage {
            let reserved = self
                .reserved
                .iter()
                .find(|(m, _)| *m == spec.meter)
                .map_or(0, |(_, q)| *q);
            let reading = settlement.reading(spec, &mut lookup);
            match reading {
                Reading::Found(_) => self.count(|m| m.settlements),
                Reading::Nothing => self.count(|m| m.settle_missing),
                Reading::Malformed => {
                    self.count(|m| m.settle_malformed);
                    if let Ok(mut budget) = self.vm.counter_log.try_borrow_mut() {
                        if let Some(suppressed) = budget.admit(now_ns()) {
                            warn!(
                                "route {:?}: the upstream reported an unusable {} quantity; billing per policy ({suppressed} similar lines suppressed)",
                                route.name, spec.meter
                            );
                        }
                    }
                }
            }
            finals.push((
                spec.meter.clone(),
                usage::settled(reading, reserved, spec.missing),
            ));
        }
        let mut billed = route.meters.clone();
        billed.extend(finals.iter().cloned());
        self.billed = Some(billed);
        if !self.hand_to_root(Some(callout::meters_json(&finals))) {
            self.count(|m| m.refunds_abandoned);
        }
    }

    /// Buffer the exchange's usage event for the root context's flusher.
    fn queue_event(&self, plugin: &Plugin, u: &Usage) {
        let now = now_ns();
        let meters: &[(String, u64)] = match (&self.billed, u.refunded) {
            (_, true) => &[],
            (Some(billed), false) => billed,
            (None, false) => &u.route.meters,
        };
        let record = UsageRecord {
            id: &self.id,
            tenant: &self.tenant,
            // The counter's time when it decided: a request admitted at the last
            // instant of a billing month is billed in that month.
            time_ms: u.decided_ms.unwrap_or(now / 1_000_000),
            meters,
            plan: u.plan.as_deref(),
            method: u.method,
            route: &u.route.name,
            status: u.status.unwrap_or(NO_RESPONSE_STATUS),
            request_bytes: size_property(vec!["request", "size"]),
            response_bytes: size_property(vec!["response", "size"]),
            duration_ms: now.saturating_sub(u.started_ns) / 1_000_000,
            decision: u.decision,
            settled: self.billed.is_some() && !u.refunded,
            lease: u.lease,
            // Back into the lease: without this the ledger would bill it (the counter
            // never hears of it to say otherwise).
            refunded: u.refunded,
        };
        let event = encode_event(&plugin.source_json, &record);
        // Only an unverified request has no record at the counter: its event is the
        // only trace of billable usage, so it is kept before any other.
        let essential = u.decision == Decision::Unverified;
        let pushed = self
            .vm
            .events
            .try_borrow_mut()
            .map_or(Pushed::Dropped, |mut b| b.push(event, essential));
        match pushed {
            Pushed::Queued => self.count(|m| m.events_queued),
            Pushed::QueuedEvicting => {
                self.count(|m| m.events_queued);
                self.count(|m| m.events_dropped);
            }
            Pushed::Dropped if essential => self.count(|m| m.billable_events_dropped),
            Pushed::Dropped => self.count(|m| m.events_dropped),
        }
    }
}

impl Context for HttpFilter {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        match self.stage {
            Stage::Consuming {
                token: t,
                started_ns,
            } if t == token => {
                self.consume_answered(&plugin, started_ns, body_size);
            }
            Stage::Refunding { token: t } if t == token => self.refund_answered(&plugin, body_size),
            _ => {}
        }
    }
}

impl HttpContext for HttpFilter {
    fn on_log(&mut self) {
        match self.stage {
            // Gone while it waited for its lease: nothing was taken for it.
            Stage::AwaitingLease => {
                self.count(|m| m.cancelled);
                lease_wait::forget(&self.vm, self.context_id);
            }
            // The client went away while the consume was in flight: whatever the
            // counter decides, give it back; the request never ran.
            Stage::Consuming { .. } | Stage::Queued => {
                self.count(|m| m.cancelled);
                let id = self.context_id;
                let sent = match self.stage {
                    Stage::Queued => !self
                        .vm
                        .consumes
                        .try_borrow_mut()
                        .is_ok_and(|mut c| c.withdraw(|m| m.context_id == id)),
                    _ => {
                        // Its answer will not reach this context any more.
                        self.alone_done();
                        true
                    }
                };
                // Never sent: nothing to give back.
                if sent {
                    self.queue_refund();
                }
                if let Some(u) = &mut self.usage {
                    u.decision = Decision::Cancelled;
                }
            }
            // The 5xx's refund was cut off with the stream: retry it from the root.
            Stage::Refunding { .. } => {
                self.queue_refund();
                self.refunded = true;
                if let Some(u) = &mut self.usage {
                    u.refunded = true;
                }
            }
            // Admitted: settle what the upstream reported (or the policy says).
            Stage::Allowed if !self.refunded => self.settle(),
            // Admitted from a lease: the counter learns of it in the next report.
            Stage::Leased => match self.leased.take() {
                Some(l) if l.refunded => {
                    if let Ok(mut book) = self.vm.leases.try_borrow_mut() {
                        book.refunded(&l.key, l.lease);
                    }
                }
                Some(l) => {
                    // The usage event below needs the id too; else it moves.
                    let id = if self.usage.is_some() {
                        self.id.clone()
                    } else {
                        std::mem::take(&mut self.id)
                    };
                    let recorded = self.vm.leases.try_borrow_mut().is_ok_and(|mut book| {
                        book.record(&l.key, &self.tenant, &l.route, l.lease, id, l.decided_ms)
                    });
                    if !recorded {
                        self.count(|m| m.lease_records_lost);
                    }
                }
                None => {}
            },
            _ => {}
        }
        let (Some(plugin), Some(usage)) = (self.plugin.clone(), self.usage.take()) else {
            return;
        };
        self.queue_event(&plugin, &usage);
    }

    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        // First, whatever follows: only the filter sets turnpike-* headers.
        let headers = serialized_request_headers();
        let head = read_head_and_strip_reserved(headers.as_deref().unwrap_or_default());
        self.bodyless = end_of_stream;
        match self.plugin.clone() {
            Some(plugin) => self.start(&plugin, head),
            // on_configure failed, yet Envoy asked for a context: refuse rather than
            // let traffic through unmetered.
            None => {
                self.stage = Stage::Rejected;
                refuse()
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if !matches!(
            self.stage,
            Stage::Allowed | Stage::Unverified | Stage::Leased
        ) {
            return Action::Continue;
        }
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        // A hostcall: read only for the usage event or a refund.
        let status = (self.usage.is_some() || plugin.config.refund_on_5xx)
            .then(response_status)
            .flatten();
        if let Some(u) = &mut self.usage {
            u.status = status;
        }
        if self.stage == Stage::Unverified {
            return Action::Continue;
        }
        if let (Some(settlement), Some(route)) = (&mut self.settlement, &self.route) {
            let content_type =
                hostcalls::get_map_value(MapType::HttpResponseHeaders, "content-type")
                    .ok()
                    .flatten();
            settlement.on_content_type(content_type.as_deref());
            read_settle_values(
                &route.usage,
                MapType::HttpResponseHeaders,
                &mut self.settle_values,
            );
        }
        let h = &self.headers;
        let ratelimit = plugin.config.ratelimit_headers;
        for (name, value) in [
            ("ratelimit-policy", h.policy.as_ref().filter(|_| ratelimit)),
            ("ratelimit", h.remaining.as_ref().filter(|_| ratelimit)),
            (
                plugin.config.soft_warning_header.as_str(),
                h.warning.as_ref(),
            ),
        ] {
            if let Some(value) = value {
                let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
            }
        }
        let failed = status.is_some_and(|s| s >= 500);
        if let (Stage::Leased, Some(l)) = (self.stage, &mut self.leased) {
            // Back into the lease it came from: no callout, nothing to report.
            if plugin.config.refund_on_5xx && failed {
                if let Ok(mut book) = self.vm.leases.try_borrow_mut() {
                    book.give_back(&l.key, l.lease);
                }
                l.refunded = true;
                self.count(|m| m.refunds);
                if let Some(u) = &mut self.usage {
                    u.refunded = true;
                }
            }
            return Action::Continue;
        }
        if plugin.config.refund_on_5xx && failed && self.start_refund(&plugin) {
            // Hold the response until the counter confirms (bounded by the callout
            // timeout); if the stream ends first, on_log hands the refund on.
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.stage {
            Stage::AwaitingBody => {}
            // Where Envoy hands over the body of a request whose headers are paused
            // (allow_on_headers_stop_iteration), going on here would send the request
            // upstream before the counter has decided: hold it too.
            Stage::Consuming { .. } | Stage::Queued | Stage::AwaitingLease => return Action::Pause,
            _ => return Action::Continue,
        }
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        let max = plugin.config.reserve_body_max_bytes;
        if !end_of_stream && body_size <= max {
            // Envoy buffers it until the body is whole (or past the bound).
            return Action::Pause;
        }
        let Some(pending) = self.pending.take() else {
            return Action::Continue;
        };
        let body = (body_size <= max)
            .then(|| {
                hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
                    .ok()
                    .flatten()
            })
            .flatten();
        self.reserved = reservations(&pending.route, body.as_deref());
        match self.consume(
            &plugin,
            pending.route,
            pending.plan.as_deref(),
            pending.method,
            false,
        ) {
            // Decided at once (a failed dispatch under fail_open): go on.
            Action::Continue => {
                let _ = hostcalls::resume_http_request();
                Action::Continue
            }
            other => other,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        // A 5xx waits for its refund: its body too (see on_http_request_body).
        if matches!(self.stage, Stage::Refunding { .. }) {
            return Action::Pause;
        }
        if let Some(settlement) = &mut self.settlement {
            if settlement.wants_body() {
                // Read as it passes; the response is never held back for it.
                let chunk = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                settlement.on_body(&chunk, end_of_stream);
            } else {
                settlement.on_skipped_body(body_size, end_of_stream);
            }
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if let (Some(settlement), Some(route)) = (&mut self.settlement, &self.route) {
            read_settle_values(
                &route.usage,
                MapType::HttpResponseTrailers,
                &mut self.settle_values,
            );
            settlement.complete = true;
        }
        Action::Continue
    }
}

/// Most bytes of one `text/event-stream` line kept while it arrives in pieces.
const MAX_EVENT_LINE_BYTES: usize = 64 * 1024;

/// The reservation of each settled meter of `route`, from the request's headers and
/// (when a reservation reads it) its `body`.
fn reservations(route: &Route, body: Option<&[u8]>) -> Vec<(String, u64)> {
    route
        .usage
        .iter()
        .map(|spec| {
            let quantity = match &spec.reserve {
                Reserve::Fixed(n) => *n,
                Reserve::Header { name, default, max } => {
                    let value = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                        .ok()
                        .flatten();
                    usage::reserve_from_header(value.as_deref(), *default, *max)
                }
                Reserve::Json {
                    pointer,
                    default,
                    max,
                } => body
                    .and_then(|b| usage::reserve_from_json(b, pointer))
                    .unwrap_or(*default)
                    .min(*max),
            };
            (spec.meter.clone(), quantity)
        })
        .collect()
}

/// The values of the headers (or trailers) that settle meters, first seen wins.
fn read_settle_values(specs: &[UsageSpec], map: MapType, values: &mut Vec<(String, String)>) {
    for spec in specs {
        if let Settle::Header(name) = &spec.settle {
            if values.iter().any(|(n, _)| n == name) {
                continue;
            }
            if let Some(v) = hostcalls::get_map_value(map, name).ok().flatten() {
                values.push((name.clone(), v));
            }
        }
    }
}

/// The headers of a callout to the counter at `path`.
pub(super) fn counter_headers<'a>(plugin: &'a Plugin, path: &'a str) -> Vec<(&'a str, &'a str)> {
    let counter = &plugin.config.counter;
    let mut headers = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", counter.authority.as_str()),
        ("content-type", "application/json"),
        ("accept", turnpike_wire::COMPACT_ANSWER),
    ];
    if let Some(auth) = &counter.authorization {
        headers.push(("authorization", auth.as_str()));
    }
    headers
}

/// `:path` (as bytes: HTTP/2 lets any octet in, and reading it as a String would trap
/// the VM on one that is not UTF-8) and `:method` from one read of every request
/// header, dropping every client-sent `turnpike-*` header on the way: one hostcall for
/// all three, plus one per reserved name found (usually none). The map is read in
/// place (`header_pairs`), not copied header by header.
fn read_head_and_strip_reserved(headers: &[u8]) -> RequestHead<'_> {
    let mut head = RequestHead::default();
    for (name, value) in header_pairs::pairs(headers) {
        match name {
            b":path" => head.path = value,
            b":method" => head.method = std::str::from_utf8(value).unwrap_or_default(),
            _ => {}
        }
    }
    let names = header_pairs::pairs(headers).filter_map(|(n, _)| std::str::from_utf8(n).ok());
    for name in reserved::distinct_reserved(names) {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }
    head
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// The request headers as the host serializes them, in one buffer. The SDK's
/// `get_map_bytes` makes the same call, then copies every header out (and traps the
/// VM on a status it does not expect); this keeps the buffer.
fn serialized_request_headers() -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated through the VM's
    // `proxy_on_memory_allocate` (a `Vec<u8>` of that capacity, leaked by the SDK),
    // which `from_raw_parts` takes back ownership of, as the SDK's own readers do.
    unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Some(Vec::from_raw_parts(data, size, size)),
            _ => None,
        }
    }
}

fn property(path: Vec<&str>) -> Option<Vec<u8>> {
    hostcalls::get_property(path).ok().flatten()
}

fn response_status() -> Option<u16> {
    hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u16>().ok())
}

/// A numeric property (Envoy hands an int64 as 8 little-endian bytes); 0 if absent.
fn size_property(path: Vec<&str>) -> u64 {
    property(path)
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, |b| u64::try_from(i64::from_le_bytes(b)).unwrap_or(0))
}

pub fn call_response_status() -> Option<String> {
    hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
}

pub fn call_response_body(size: usize) -> Result<Option<Vec<u8>>, CounterError> {
    if size > MAX_ANSWER_BYTES {
        return Err(CounterError::BadBody);
    }
    Ok(
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
            .ok()
            .flatten(),
    )
}

/// The HTTP context Envoy holds: the filter behind a shared cell, so that the root
/// context can hand it the answer of the batch its consume went in.
pub struct HttpShell(Rc<RefCell<HttpFilter>>);

impl HttpShell {
    /// The filter, unless it is already in use. Envoy does not call a context while a
    /// callback of it runs (its own calls are deferred until the VM returns), so this
    /// does not happen; if it did, the default answers instead of a trap.
    fn with<T>(&self, default: impl FnOnce() -> T, f: impl FnOnce(&mut HttpFilter) -> T) -> T {
        match self.0.try_borrow_mut() {
            Ok(mut filter) => f(&mut filter),
            Err(_) => default(),
        }
    }
}

/// A request the filter cannot look at is refused, never let through unmetered.
fn refuse() -> Action {
    let body = problem::counter_unavailable();
    answer_locally(503, vec![("content-type", problem::CONTENT_TYPE)], &body)
}

/// Answer the request from the filter (the stream is reset if that fails).
fn answer_locally(status: u32, headers: Vec<(&str, &str)>, body: &str) -> Action {
    if hostcalls::send_http_response(status, headers, Some(body.as_bytes())).is_err() {
        let _ = hostcalls::reset_http_request();
    }
    Action::Pause
}

impl Context for HttpShell {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        self.with(
            || (),
            |f| f.on_http_call_response(token, headers, body, trailers),
        );
    }
}

impl HttpContext for HttpShell {
    fn on_http_request_headers(&mut self, headers: usize, end_of_stream: bool) -> Action {
        self.with(refuse, |f| {
            f.on_http_request_headers(headers, end_of_stream)
        })
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.with(refuse, |f| f.on_http_request_body(size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, headers: usize, end_of_stream: bool) -> Action {
        self.with(
            || Action::Continue,
            |f| f.on_http_response_headers(headers, end_of_stream),
        )
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.with(
            || Action::Continue,
            |f| f.on_http_response_body(size, end_of_stream),
        )
    }

    fn on_http_response_trailers(&mut self, trailers: usize) -> Action {
        self.with(
            || Action::Continue,
            |f| f.on_http_response_trailers(trailers),
        )
    }

    fn on_log(&mut self) {
        self.with(|| (), HttpFilter::on_log);
    }
}
