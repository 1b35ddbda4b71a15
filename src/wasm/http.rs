//! HTTP context: one per request. Finds the tenant, consumes quota through the counter,
//! then resumes, rejects, or applies the failure mode; refunds on upstream 5xx.

use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use turnpike_wire::{counter_paths, Decision};

use super::metrics::Metrics;
use super::now_ns;
use super::root::{Plugin, Vm};
use crate::callout::{self, CounterError};
use crate::claims::{parse_plan, parse_tenant};
use crate::decision::{decide, Verdict};
use crate::events::{encode_event, UsageRecord, NO_RESPONSE_STATUS};
use crate::problem;
use crate::ratelimit::RateLimitHeaders;
use crate::reserved;
use crate::routes::{Matched, Route};

/// Headers the filter owns towards the upstream; client-sent values are dropped.
const CONSUME_ID_HEADER: &str = "turnpike-consume-id";
const TENANT_HEADER: &str = "turnpike-tenant";
/// A counter answer larger than this is not a consume response.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the request headers, or not metered.
    Idle,
    /// Request paused, consume callout in flight.
    Consuming { token: u32, started_ns: u64 },
    /// Counter admitted it.
    Allowed,
    /// Let through by fail_open without the counter's answer.
    Unverified,
    /// Answered locally (401, 429, 503).
    Rejected,
    /// Response headers paused, refund callout in flight.
    Refunding { token: u32 },
}

pub struct HttpFilter {
    vm: Rc<Vm>,
    plugin: Option<Rc<Plugin>>,
    stage: Stage,
    id: String,
    tenant: String,
    headers: RateLimitHeaders,
    /// What goes into the usage event; `None` when there is no event to send.
    usage: Option<Usage>,
}

/// The parts of a metered exchange its usage event needs.
struct Usage {
    decision: Decision,
    route: Rc<Route>,
    method: String,
    /// The counter's plan; for an unverified request, the claimed one.
    plan: Option<String>,
    started_ns: u64,
    /// Status sent to the client, once known.
    status: Option<u16>,
    /// The refund of an upstream 5xx went through: nothing is billed.
    refunded: bool,
}

impl HttpFilter {
    pub fn new(vm: Rc<Vm>, plugin: Option<Rc<Plugin>>) -> Self {
        Self {
            vm,
            plugin,
            stage: Stage::Idle,
            id: String::new(),
            tenant: String::new(),
            headers: RateLimitHeaders::default(),
            usage: None,
        }
    }

    fn count(&self, pick: fn(&Metrics) -> u32) {
        if let Some(m) = &self.vm.metrics {
            Metrics::inc(pick(m));
        }
    }

    fn start(&mut self, plugin: &Plugin) -> Action {
        // As bytes: HTTP/2 lets any octet into `:path`, and the SDK's String read
        // panics (trapping the VM) on one that is not UTF-8.
        let path = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path")
            .ok()
            .flatten()
            .unwrap_or_default();
        // The method is a hostcall away: read it only if a rule or the event needs it.
        let (matched, method) = plugin
            .config
            .matcher
            .classify_lazy(&mut || request_header(":method").unwrap_or_default(), &path);
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
        let plan_raw = plugin
            .config
            .tenant
            .plan
            .as_ref()
            .and_then(|p| property(p.as_property_path()));
        let plan = plan_raw.as_deref().and_then(parse_plan);

        self.id = self.vm.minter.mint();
        self.tenant = tenant.to_owned();
        let body = callout::consume_body(&self.id, tenant, plan, &route.meters_json);
        let counter = &plugin.config.counter;
        let dispatched = hostcalls::dispatch_http_call(
            &counter.cluster,
            vec![
                (":method", "POST"),
                (":path", counter_paths::CONSUME),
                (":authority", &counter.authority),
                ("content-type", "application/json"),
            ],
            Some(&body),
            vec![],
            counter.timeout,
        );
        let started_ns = now_ns();
        if self.vm.events_on.get() {
            self.usage = Some(Usage {
                // Until the counter answers; only fail_open keeps this.
                decision: Decision::Unverified,
                route,
                method: method.unwrap_or_else(|| request_header(":method").unwrap_or_default()),
                plan: plan.map(str::to_owned),
                started_ns,
                status: None,
                refunded: false,
            });
        }
        match dispatched {
            Ok(token) => {
                self.stage = Stage::Consuming { token, started_ns };
                Action::Pause
            }
            Err(_) => self.apply(
                plugin,
                decide(Err(CounterError::Dispatch), counter.failure_mode),
            ),
        }
    }

    /// Act on a verdict. `Continue` means the request goes on to the upstream.
    fn apply(&mut self, plugin: &Plugin, verdict: Verdict) -> Action {
        match verdict {
            Verdict::Allow { headers, plan } => {
                self.count(|m| m.allowed);
                if let Some(u) = &mut self.usage {
                    u.decision = Decision::Allowed;
                    u.plan = Some(plan);
                }
                if headers.warning.is_some() {
                    self.count(|m| m.soft_warnings);
                }
                self.headers = headers;
                self.stage = Stage::Allowed;
                self.set_upstream_headers();
                Action::Continue
            }
            Verdict::Deny {
                retry_after,
                headers,
                body,
                plan,
            } => {
                self.count(|m| m.denied);
                if let Some(u) = &mut self.usage {
                    u.decision = Decision::Denied;
                    u.plan = Some(plan);
                    u.status = Some(429);
                }
                let retry_after = retry_after.to_string();
                let mut reply = vec![
                    ("content-type", problem::CONTENT_TYPE),
                    ("retry-after", retry_after.as_str()),
                ];
                if let (Some(policy), Some(remaining)) = (&headers.policy, &headers.remaining) {
                    reply.push(("ratelimit-policy", policy));
                    reply.push(("ratelimit", remaining));
                }
                self.reject(429, reply, &body)
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
                // Nothing was consumed and nothing reached the upstream: no event.
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
        if hostcalls::send_http_response(status, headers, Some(body.as_bytes())).is_err() {
            let _ = hostcalls::reset_http_request();
        }
        Action::Pause
    }

    fn set_upstream_headers(&self) {
        // Envoy's replace drops every client-sent value of the header, then sets ours
        // (checked against Envoy 1.40 with repeated client headers).
        for (name, value) in [(CONSUME_ID_HEADER, &self.id), (TENANT_HEADER, &self.tenant)] {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
        }
    }

    fn log_counter_failure(&self, plugin: &Plugin, e: CounterError, action: &str) {
        let Ok(mut budget) = self.vm.counter_log.try_borrow_mut() else {
            return;
        };
        if let Some(suppressed) = budget.admit(now_ns()) {
            warn!(
                "counter callout to cluster {:?} failed: {}; {action} ({suppressed} similar lines suppressed)",
                plugin.config.counter.cluster,
                e.describe()
            );
        }
    }

    fn consume_answered(&mut self, plugin: &Plugin, started_ns: u64, body_size: usize) {
        if let Some(m) = &self.vm.metrics {
            Metrics::record(
                m.callout_latency_ms,
                now_ns().saturating_sub(started_ns) / 1_000_000,
            );
        }
        let status = call_response_status();
        let body = call_response_body(body_size);
        let outcome = match &body {
            Err(e) => Err(*e),
            Ok(body) => callout::parse_consume_answer(status.as_deref(), body.as_deref()),
        };
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
                if let Some(u) = &mut self.usage {
                    u.refunded = true;
                }
            }
            Ok(false) => {}
            Err(e) => {
                self.count(|m| m.counter_errors);
                self.log_counter_failure(plugin, e, "refund not confirmed");
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
            vec![
                (":method", "POST"),
                (":path", counter_paths::REFUND),
                (":authority", &counter.authority),
                ("content-type", "application/json"),
            ],
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
                self.log_counter_failure(plugin, CounterError::Dispatch, "refund not sent");
                false
            }
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

impl HttpFilter {
    /// Buffer the exchange's usage event for the root context's flusher.
    fn queue_event(&self, plugin: &Plugin, u: &Usage) {
        let now = now_ns();
        let meters: &[(String, u64)] = if u.refunded { &[] } else { &u.route.meters };
        let record = UsageRecord {
            id: &self.id,
            tenant: &self.tenant,
            time_ms: now / 1_000_000,
            meters,
            plan: u.plan.as_deref(),
            method: &u.method,
            route: &u.route.name,
            status: u.status.unwrap_or(NO_RESPONSE_STATUS),
            request_bytes: size_property(vec!["request", "size"]),
            response_bytes: size_property(vec!["response", "size"]),
            duration_ms: now.saturating_sub(u.started_ns) / 1_000_000,
            decision: u.decision,
        };
        let event = encode_event(&plugin.source_json, &record);
        let pushed = self
            .vm
            .events
            .try_borrow_mut()
            .is_ok_and(|mut b| b.push(event));
        if pushed {
            self.count(|m| m.events_queued);
        } else {
            self.count(|m| m.events_dropped);
        }
    }
}

impl HttpContext for HttpFilter {
    fn on_log(&mut self) {
        let (Some(plugin), Some(usage)) = (self.plugin.clone(), self.usage.take()) else {
            return;
        };
        self.queue_event(&plugin, &usage);
    }

    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // First, whatever follows: only the filter sets turnpike-* headers.
        strip_reserved_headers();
        match self.plugin.clone() {
            Some(plugin) => self.start(&plugin),
            // on_configure failed, yet Envoy asked for a context: refuse rather than
            // let traffic through unmetered.
            None => {
                let body = problem::counter_unavailable();
                self.reject(503, vec![("content-type", problem::CONTENT_TYPE)], &body)
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if !matches!(self.stage, Stage::Allowed | Stage::Unverified) {
            return Action::Continue;
        }
        let status = response_status();
        if let Some(u) = &mut self.usage {
            u.status = status;
        }
        if self.stage != Stage::Allowed {
            return Action::Continue;
        }
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        let h = &self.headers;
        for (name, value) in [
            ("ratelimit-policy", &h.policy),
            ("ratelimit", &h.remaining),
            (plugin.config.soft_warning_header.as_str(), &h.warning),
        ] {
            if let Some(value) = value {
                let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
            }
        }
        let failed = status.is_some_and(|s| s >= 500);
        if plugin.config.refund_on_5xx && failed && self.start_refund(&plugin) {
            // Hold the response until the counter confirms (bounded by the callout
            // timeout): a callout still in flight when the stream ends is cancelled.
            return Action::Pause;
        }
        Action::Continue
    }
}

/// Drops every client-sent `turnpike-*` request header. Listing the names takes one
/// hostcall (all headers, values as bytes: they may hold any octet); removing takes one
/// per name found, usually none.
fn strip_reserved_headers() {
    let Ok(headers) = hostcalls::get_map_bytes(MapType::HttpRequestHeaders) else {
        return;
    };
    for name in reserved::distinct_reserved(headers.iter().map(|(n, _)| n.as_str())) {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }
}

fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
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

fn call_response_status() -> Option<String> {
    hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
}

fn call_response_body(size: usize) -> Result<Option<Vec<u8>>, CounterError> {
    if size > MAX_ANSWER_BYTES {
        return Err(CounterError::BadBody);
    }
    Ok(
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
            .ok()
            .flatten(),
    )
}
