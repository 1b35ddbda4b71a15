//! Leases, the proxy-wasm side: the shared state every worker spends from (shared
//! data with compare-and-swap), and the per-worker book the root context keeps of what
//! it owes the counter: renewals to ask for, admitted requests to report, leases to
//! give back. The decisions are in [`crate::lease_state`].

use std::collections::HashMap;
use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use turnpike_wire::counter_paths;

use super::http::{call_response_body, call_response_status};
use super::metrics::Metrics;
use super::now_ns;
use super::root::Plugin;
use crate::callout;
use crate::config::LeaseConfig;
use crate::lease_state::{LeaseState, Spend};
use crate::ratelimit::LeaseLimits;
use crate::routes::Route;

/// Compare-and-swap attempts before a request gives up on the lease (and is decided
/// exactly): only contention from other workers makes one fail.
const CAS_ATTEMPTS: usize = 8;
/// Most admitted requests one report carries.
const REPORT_CHUNK: usize = 5_000;
/// Most admitted requests waiting to be reported per worker; past it they are lost
/// (counted and logged): a counter away for that long must not grow the VM unbounded.
const MAX_PENDING_RECORDS: usize = 1_000_000;
/// Attempts to report one chunk before it is given up (counted and logged).
const MAX_REPORT_ATTEMPTS: u32 = 50;

/// The shared-data key of a tenant's lease on a route.
pub fn shared_key(tenant: &str, route: &str) -> String {
    format!("turnpike/lease/{tenant}/{route}")
}

pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// Read, change and write the shared state of `key`, retrying on a concurrent write.
/// `None` when the host refuses (then the caller decides exactly).
pub fn update<R>(
    key: &str,
    mut change: impl FnMut(&mut LeaseState) -> R,
) -> Option<(R, LeaseState)> {
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = hostcalls::get_shared_data(key).ok()?;
        let mut state = bytes
            .as_deref()
            .and_then(LeaseState::decode)
            .unwrap_or_default();
        let result = change(&mut state);
        match hostcalls::set_shared_data(key, Some(&state.encode()), cas) {
            Ok(()) => return Some((result, state)),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// One request of `route` for `tenant` arrives: spend from the shared lease if it can.
pub fn spend(key: &str, config: &LeaseConfig, now_ms: u64) -> Option<(Spend, LeaseState)> {
    update(key, |state| state.spend(now_ms, &config.tuning))
}

/// A refunded request (upstream 5xx) goes back into its lease, if still the same one.
pub fn give_back(key: &str, lease: u64) {
    let _ = update(key, |state| {
        if state.id == lease && lease != 0 {
            state.balance = state.balance.saturating_add(1);
        }
    });
}

/// What a worker knows about a lease it spent from.
struct Entry {
    tenant: String,
    route: Rc<Route>,
    plan: Option<String>,
    limits: LeaseLimits,
    /// Requests to ask for at the next renewal (`None`: none due).
    renew: Option<u64>,
}

/// A request admitted from a lease, waiting to be reported.
struct Record {
    lease: u64,
    id: String,
    /// Decision time, unix ms on the counter's clock.
    at_ms: u64,
}

enum Call {
    Renew {
        key: String,
        /// When it was sent (our clock): the grant happened after this.
        sent_ms: u64,
    },
    Report {
        key: String,
        lease: u64,
        /// The same on every attempt: the counter counts a report once.
        batch: String,
        records: Vec<(String, u64)>,
        attempts: u32,
    },
    Close,
}

/// Per worker: the leases it spent from and what it owes the counter about them.
pub struct LeaseBook {
    entries: HashMap<String, Entry>,
    /// Admitted requests by lease key.
    records: HashMap<String, Vec<Record>>,
    pending_records: usize,
    /// Keys with a renewal to ask for, in the order requests asked.
    renewals_due: Vec<String>,
    /// When reports and returns next go out (unix ms, our clock).
    next_report_ms: u64,
    in_flight: HashMap<u32, Call>,
    /// The counter's clock minus ours, ms (learned from every lease answer).
    offset_ms: i64,
    failures_log: crate::log_budget::LogBudget,
}

impl LeaseBook {
    pub fn new() -> Self {
        LeaseBook {
            entries: HashMap::new(),
            records: HashMap::new(),
            pending_records: 0,
            renewals_due: Vec::new(),
            next_report_ms: 0,
            in_flight: HashMap::new(),
            offset_ms: 0,
            failures_log: crate::log_budget::LogBudget::new(10),
        }
    }

    /// Our time on the counter's clock (what admitted requests are billed at).
    pub fn counter_time_ms(&self, local_ms: u64) -> u64 {
        u64::try_from(
            i64::try_from(local_ms)
                .unwrap_or(i64::MAX)
                .saturating_add(self.offset_ms),
        )
        .unwrap_or(0)
    }

    /// A request found the lease of `key` running low (or missing): ask for `want` more
    /// at the next tick.
    pub fn renew(
        &mut self,
        key: &str,
        tenant: &str,
        route: &Rc<Route>,
        plan: Option<&str>,
        want: u64,
    ) {
        let entry = self.entry(key, tenant, route);
        entry.plan = plan.map(str::to_owned);
        if entry.renew.replace(want).is_none() {
            self.renewals_due.push(key.to_owned());
        }
    }

    fn entry(&mut self, key: &str, tenant: &str, route: &Rc<Route>) -> &mut Entry {
        self.entries.entry(key.to_owned()).or_insert_with(|| Entry {
            tenant: tenant.to_owned(),
            route: route.clone(),
            plan: None,
            limits: LeaseLimits::default(),
            renew: None,
        })
    }

    /// `RateLimit` header values for a request admitted from `key` with `balance` left.
    pub fn headers(
        &self,
        key: &str,
        balance: u64,
        now_ms: u64,
    ) -> (Option<String>, Option<String>, Option<String>) {
        match self.entries.get(key) {
            Some(e) => (
                e.limits.policy.clone(),
                e.limits.remaining(balance, now_ms),
                e.limits.warning.clone(),
            ),
            None => (None, None, None),
        }
    }

    /// A request admitted from lease `lease` of `key` completed: report it.
    pub fn record(
        &mut self,
        key: &str,
        tenant: &str,
        route: &Rc<Route>,
        lease: u64,
        id: String,
        at_ms: u64,
    ) -> bool {
        if self.pending_records >= MAX_PENDING_RECORDS {
            return false;
        }
        self.entry(key, tenant, route);
        self.records
            .entry(key.to_owned())
            .or_default()
            .push(Record { lease, id, at_ms });
        self.pending_records += 1;
        true
    }

    pub fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.pending_records == 0
    }

    /// Whether `token` is one of the book's calls.
    pub fn owns(&self, token: u32) -> bool {
        self.in_flight.contains_key(&token)
    }

    /// Send what is due: renewals on every tick (a lease asked for on the next report
    /// tick instead ran dry while it waited, and its requests fell back to exact
    /// consumes), then every report interval (and when `stopping`) the reports and the
    /// leases to give back (all of them when `stopping`).
    pub fn tick(&mut self, plugin: &Plugin, metrics: Option<&Metrics>, stopping: bool) {
        for key in std::mem::take(&mut self.renewals_due) {
            self.send_renewal(plugin, metrics, &key);
        }
        let now = now_ms();
        if !stopping && now < self.next_report_ms {
            return;
        }
        let config = &plugin.config.lease;
        let interval = u64::try_from(config.report_interval.as_millis()).unwrap_or(u64::MAX);
        self.next_report_ms = now.saturating_add(interval);
        let keys: Vec<String> = self.entries.keys().cloned().collect();
        for key in keys {
            let close = update(&key, |state| {
                if stopping || state.should_close(now, config.idle_return_ms) {
                    let id = state.id;
                    state.closed();
                    (id != 0).then_some(id)
                } else {
                    None
                }
            })
            .and_then(|(id, _)| id);
            if let Some(lease) = close {
                if let Some(entry) = self.entries.get(&key) {
                    let body = callout::lease_body(
                        &entry.tenant,
                        entry.plan.as_deref(),
                        &entry.route.meters_json,
                        0,
                        Some(lease),
                        true,
                    );
                    if let Some(token) = dispatch(plugin, counter_paths::LEASE, &body) {
                        self.in_flight.insert(token, Call::Close);
                    }
                }
            }
        }
        self.send_reports(plugin);
        // Forget leases with nothing pending that no longer hold anything.
        self.entries.retain(|key, e| {
            e.renew.is_some()
                || self.records.contains_key(key)
                || read(key).is_some_and(|s| s.id != 0)
        });
    }

    fn send_renewal(&mut self, plugin: &Plugin, metrics: Option<&Metrics>, key: &str) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let Some(want) = entry.renew.take() else {
            return;
        };
        let held = read(key).map(|s| s.id).filter(|id| *id != 0);
        let body = callout::lease_body(
            &entry.tenant,
            entry.plan.as_deref(),
            &entry.route.meters_json,
            want,
            held,
            false,
        );
        if let Some(token) = dispatch(plugin, counter_paths::LEASE, &body) {
            let sent_ms = now_ms();
            self.in_flight.insert(
                token,
                Call::Renew {
                    key: key.to_owned(),
                    sent_ms,
                },
            );
            count(metrics, |m| m.lease_renewals);
        }
    }

    fn send_reports(&mut self, plugin: &Plugin) {
        let keys: Vec<String> = self.records.keys().cloned().collect();
        for key in keys {
            let Some(records) = self.records.remove(&key) else {
                continue;
            };
            let mut by_lease: HashMap<u64, Vec<(String, u64)>> = HashMap::new();
            for r in records {
                by_lease.entry(r.lease).or_default().push((r.id, r.at_ms));
            }
            for (lease, records) in by_lease {
                for chunk in records.chunks(REPORT_CHUNK) {
                    let batch = plugin_batch_id(chunk);
                    self.send_report(plugin, &key, lease, batch, chunk.to_vec(), 0);
                }
            }
        }
    }

    fn send_report(
        &mut self,
        plugin: &Plugin,
        key: &str,
        lease: u64,
        batch: String,
        records: Vec<(String, u64)>,
        attempts: u32,
    ) {
        let Some(entry) = self.entries.get(key) else {
            self.pending_records = self.pending_records.saturating_sub(records.len());
            return;
        };
        let body = callout::report_body(
            &entry.tenant,
            entry.plan.as_deref(),
            &entry.route.meters_json,
            lease,
            &batch,
            &records,
        );
        match dispatch(plugin, counter_paths::LEASE_REPORT, &body) {
            Some(token) => {
                self.in_flight.insert(
                    token,
                    Call::Report {
                        key: key.to_owned(),
                        lease,
                        batch,
                        records,
                        attempts,
                    },
                );
            }
            // Not sent: back in the queue for the next tick.
            None => {
                let queue = self.records.entry(key.to_owned()).or_default();
                queue.extend(
                    records
                        .into_iter()
                        .map(|(id, at_ms)| Record { lease, id, at_ms }),
                );
            }
        }
    }

    /// The answer to one of the book's calls.
    pub fn answered(
        &mut self,
        token: u32,
        body_size: usize,
        plugin: &Plugin,
        metrics: Option<&Metrics>,
    ) {
        let Some(call) = self.in_flight.remove(&token) else {
            return;
        };
        let status = call_response_status();
        let now = now_ms();
        match call {
            Call::Renew { key, sent_ms } => {
                let body = call_response_body(body_size);
                let answer = body
                    .as_ref()
                    .map_err(|e| *e)
                    .and_then(|b| callout::parse_lease_answer(status.as_deref(), b.as_deref()));
                match answer {
                    Ok(a) => {
                        self.offset_ms =
                            i64::try_from(a.time_ms).unwrap_or(0) - i64::try_from(now).unwrap_or(0);
                        // Counted from when the renewal was sent, not from when its
                        // answer came: the lease then ends here no later than it does on
                        // the counter's clock, and what it admits is billed inside the
                        // windows it was taken from (a per-second lease's requests in
                        // that second).
                        let expires = a
                            .expires_ms
                            .saturating_sub(a.time_ms)
                            .saturating_add(sent_ms);
                        let _ = update(&key, |state| {
                            state.granted(a.lease, a.granted, expires, a.expires_ms, now)
                        });
                        if let Some(entry) = self.entries.get_mut(&key) {
                            entry.limits = LeaseLimits::from_grant(&a.limits, now);
                        }
                        if a.granted == 0 {
                            count(metrics, |m| m.lease_empty_grants);
                        }
                    }
                    Err(e) => {
                        // Let another renewal go out after a short pause.
                        let _ = update(&key, |state| state.renewing_until_ms = now + 250);
                        self.log(format!("lease renewal failed: {}", e.describe()));
                    }
                }
            }
            Call::Report {
                key,
                lease,
                batch,
                records,
                attempts,
            } => match callout::parse_ok(status.as_deref()) {
                Ok(()) => {
                    self.pending_records = self.pending_records.saturating_sub(records.len());
                }
                // Too large for the counter: nothing of it was counted, so its halves
                // go out as reports of their own (new batch ids).
                Err(_) if status.as_deref() == Some("413") && records.len() > 1 => {
                    let mut first = records;
                    let second = first.split_off(first.len() / 2);
                    for half in [first, second] {
                        let batch = plugin_batch_id(&half);
                        self.send_report(plugin, &key, lease, batch, half, attempts);
                    }
                }
                Err(e) if attempts + 1 >= MAX_REPORT_ATTEMPTS => {
                    self.pending_records = self.pending_records.saturating_sub(records.len());
                    if let Some(m) = metrics {
                        Metrics::add(m.lease_records_lost, records.len());
                    }
                    self.log(format!(
                        "gave up reporting {} leased requests of lease {lease}: {}",
                        records.len(),
                        e.describe()
                    ));
                }
                Err(e) => {
                    self.log(format!(
                        "reporting leased requests failed: {}; retrying",
                        e.describe()
                    ));
                    self.send_report(plugin, &key, lease, batch, records, attempts + 1);
                }
            },
            Call::Close => {}
        }
    }

    fn log(&mut self, line: String) {
        if let Some(suppressed) = self.failures_log.admit(now_ns()) {
            warn!("{line} ({suppressed} similar lines suppressed)");
        }
    }
}

/// A report's id: its first consume id (unique: consume ids are) and its length, so
/// a retry of the same report has the same id.
fn plugin_batch_id(records: &[(String, u64)]) -> String {
    let first = records.first().map_or("empty", |(id, _)| id.as_str());
    format!("{first}-{}", records.len())
}

fn read(key: &str) -> Option<LeaseState> {
    let (bytes, _) = hostcalls::get_shared_data(key).ok()?;
    bytes.as_deref().and_then(LeaseState::decode)
}

fn count(metrics: Option<&Metrics>, pick: fn(&Metrics) -> u32) {
    if let Some(m) = metrics {
        Metrics::inc(pick(m));
    }
}

fn dispatch(plugin: &Plugin, path: &str, body: &[u8]) -> Option<u32> {
    let counter = &plugin.config.counter;
    let mut headers = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", counter.authority.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(auth) = &counter.authorization {
        headers.push(("authorization", auth.as_str()));
    }
    hostcalls::dispatch_http_call(
        &counter.cluster,
        headers,
        Some(body),
        vec![],
        counter.timeout,
    )
    .ok()
}
