//! Leases, the proxy-wasm side: the shared state every worker spends from (shared
//! data with compare-and-swap), and the per-worker book the root context keeps of what
//! it owes the counter: renewals to ask for, admitted requests to report, leases to
//! give back. The decisions are in [`crate::lease_state`].

use std::collections::HashMap;
use std::rc::Rc;

// The SDK's own map (foldhash), already in the .wasm: a lease is looked up twice a
// request by a key of ~30 bytes, which SipHash takes several times longer to hash.
// Keys are verified tenant ids, which the operator issues, not the client.
use hashbrown::HashMap as FastMap;

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
use crate::events::Jitter;
use crate::lease_state::{Hold, LeaseState, Running};
use crate::ratelimit::LeaseLimits;
use crate::retry_queue::{Failed, RetryQueue};
use crate::routes::Route;

/// Compare-and-swap attempts before a request gives up on the lease (and is decided
/// exactly): only contention from other workers makes one fail.
const CAS_ATTEMPTS: usize = 8;
/// Most admitted requests one report carries.
const REPORT_CHUNK: usize = 5_000;
/// A lease with this many admitted requests waiting is reported on the next tick, not
/// at the end of the report interval: a busy tenant's report is a burst of work for
/// the counter and its Redis (about 1 µs a request), and on a machine they share with
/// the proxy, a burst of milliseconds every interval is what the proxy's slowest
/// answers wait behind. Bounded, it is a fraction of a millisecond.
const REPORT_EARLY_RECORDS: usize = 500;
/// Most admitted requests waiting to be reported per worker; past it they are lost
/// (counted and logged): a counter away for that long must not grow the VM unbounded.
const MAX_PENDING_RECORDS: usize = 1_000_000;
/// Attempts to report one chunk before it is given up (counted and logged). Retried
/// with backoff (0.2 s doubling to 30 s): about 17 minutes of a counter away, not a
/// second of immediate retries against a counter that refuses connections.
const MAX_REPORT_ATTEMPTS: u32 = 40;
/// Report calls out at once per worker.
const MAX_REPORTS_IN_FLIGHT: usize = 16;
/// A report Envoy would not dispatch waits this long before the next try.
const REPORT_REDISPATCH_MS: u64 = 100;

/// How often a worker gives its holds back (and its leased requests' stats go to
/// Envoy): a hold is a few milliseconds of traffic that another worker may need.
pub const HOLD_RETURN_MS: u64 = 10;

/// The shared-data key of `tenant`'s lease on `route`, into `out` (cleared first): per
/// request, into a buffer the book keeps for it.
fn write_shared_key(out: &mut String, tenant: &str, route: &str) {
    out.clear();
    out.push_str("turnpike/lease/");
    out.push_str(tenant);
    out.push('/');
    out.push_str(route);
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

/// What a request got from its tenant's lease.
pub struct Spent {
    /// The lease's shared key (the book's own copy, shared, not copied per request).
    pub key: Rc<str>,
    /// Admitted (else: decide it with an exact consume).
    pub admitted: bool,
    /// Ask the counter for this many more (this worker won the right to).
    pub renew: Option<u64>,
    /// The lease it was admitted from.
    pub lease: u64,
    /// What the proxy can still admit from the lease, as this worker last saw it.
    pub remaining: u64,
    /// When an admitted request is billed: unix ms on the counter's clock, inside the
    /// lease's windows.
    pub decided_ms: u64,
    /// Not admitted, but the lease's renewal is on its way: the request may wait for
    /// it (`lease_state::Spend::wait`).
    pub wait: bool,
}

/// What a worker knows about a lease it spent from.
struct Entry {
    tenant: String,
    route: Rc<Route>,
    plan: Option<String>,
    limits: LeaseLimits,
    /// The grant `limits` came from: its lease and `counter_granted_ms`.
    limits_grant: (u64, u64),
    /// Requests to ask for at the next renewal (`None`: none due).
    renew: Option<u64>,
    /// The units this worker holds of the lease.
    hold: Hold,
    /// Requests admitted from the lease, waiting to be reported.
    records: Vec<Record>,
    /// Requests admitted on this worker and still running, per lease: while a lease
    /// that ended has some, the counter is told (a pin) not to give its units back.
    running: Running,
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
    /// A lease given back, or pinned: nothing to do with the answer.
    Close,
}

/// Admitted requests of one lease, reported in one call. Everything the call needs is
/// here: a report outlives the book's entry for its lease while it is retried.
struct Report {
    tenant: String,
    plan: Option<String>,
    route: Rc<Route>,
    lease: u64,
    /// The same on every attempt: the counter counts a report once.
    batch: String,
    records: Vec<(String, u64)>,
}

/// Per worker: the leases it spent from and what it owes the counter about them.
pub struct LeaseBook {
    entries: FastMap<Rc<str>, Entry>,
    /// The key of the request being decided, built here rather than allocated.
    key_buf: String,
    pending_records: usize,
    /// Keys with a renewal to ask for, in the order requests asked.
    renewals_due: Vec<String>,
    /// When reports and returns next go out (unix ms, our clock).
    next_report_ms: u64,
    /// A lease has [`REPORT_EARLY_RECORDS`] waiting: report it on the next tick.
    early_reports: bool,
    /// When holds next go back (unix ms, our clock).
    next_return_ms: u64,
    in_flight: HashMap<u32, Call>,
    /// Reports to send, and out: retried with backoff until the counter takes them.
    reports: RetryQueue<Report>,
    jitter: Jitter,
    /// The counter's clock minus ours, ms (learned from every lease answer).
    offset_ms: i64,
    failures_log: crate::log_budget::LogBudget,
}

impl LeaseBook {
    pub fn new() -> Self {
        LeaseBook {
            entries: FastMap::new(),
            key_buf: String::new(),
            pending_records: 0,
            renewals_due: Vec::new(),
            next_report_ms: 0,
            early_reports: false,
            next_return_ms: 0,
            in_flight: HashMap::new(),
            reports: RetryQueue::new(
                MAX_PENDING_RECORDS,
                MAX_REPORTS_IN_FLIGHT,
                MAX_REPORT_ATTEMPTS,
            ),
            jitter: Jitter::new(now_ns()),
            offset_ms: 0,
            failures_log: crate::log_budget::LogBudget::new(10),
        }
    }

    /// Our time on the counter's clock (an estimate: a request is billed at it clamped
    /// into its lease's span, `Hold::billed_at`).
    fn counter_time_ms(&self, local_ms: u64) -> u64 {
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

    /// The entry of `key`, made if missing (copying the key then).
    fn entry(&mut self, key: &str, tenant: &str, route: &Rc<Route>) -> &mut Entry {
        self.entries.entry_ref(key).or_insert_with(|| Entry {
            tenant: tenant.to_owned(),
            route: route.clone(),
            plan: None,
            limits: LeaseLimits::default(),
            limits_grant: (0, 0),
            renew: None,
            hold: Hold::default(),
            records: Vec::new(),
            running: Running::default(),
        })
    }

    /// One request for `tenant`'s lease on `route`: admitted from this worker's hold
    /// when it has a unit (no hostcall), else from the shared lease, taking a new hold
    /// in the same compare-and-swap. `None` when the host refused the shared data.
    pub fn spend(
        &mut self,
        tenant: &str,
        route: &Rc<Route>,
        config: &LeaseConfig,
        now_ms: u64,
    ) -> Option<Spent> {
        let mut key = std::mem::take(&mut self.key_buf);
        write_shared_key(&mut key, tenant, &route.name);
        let spent = self.spend_key(&key, tenant, route, config, now_ms);
        self.key_buf = key;
        spent
    }

    fn spend_key(
        &mut self,
        key: &str,
        tenant: &str,
        route: &Rc<Route>,
        config: &LeaseConfig,
        now_ms: u64,
    ) -> Option<Spent> {
        let estimate_ms = self.counter_time_ms(now_ms);
        let returning = match self.entries.get_key_value_mut(key) {
            Some((k, e)) => {
                if e.hold.spend(now_ms) {
                    e.running.started(e.hold.lease);
                    return Some(Spent {
                        key: k.clone(),
                        admitted: true,
                        renew: None,
                        lease: e.hold.lease,
                        remaining: e.hold.remaining(),
                        decided_ms: e.hold.billed_at(estimate_ms),
                        wait: false,
                    });
                }
                e.hold
            }
            None => Hold::default(),
        };
        let ((spend, hold), _) =
            update(key, |state| state.take(now_ms, &config.tuning, &returning))?;
        if !self.entries.contains_key(key) {
            self.entry(key, tenant, route);
        }
        let (k, e) = self.entries.get_key_value_mut(key)?;
        e.hold = hold;
        if spend.admitted {
            e.running.started(hold.lease);
        }
        // Granted to another worker's renewal (or to ours, before this entry was
        // made): its limits are in shared data. Once per grant, not per request.
        let grant = (hold.lease, hold.counter_granted_ms);
        if hold.lease != 0 && e.limits_grant != grant {
            if let Some(limits) = read_limits(key, grant) {
                e.limits = limits;
                e.limits_grant = grant;
            }
        }
        Some(Spent {
            key: k.clone(),
            admitted: spend.admitted,
            renew: spend.renew,
            lease: hold.lease,
            remaining: hold.remaining(),
            decided_ms: hold.billed_at(estimate_ms),
            wait: spend.wait,
        })
    }

    /// A refunded request (upstream 5xx) goes back into its lease, if still the same
    /// one: into this worker's hold when it came from there, else the shared lease.
    pub fn give_back(&mut self, key: &str, lease: u64) {
        if self
            .entries
            .get_mut(key)
            .is_some_and(|e| e.hold.refund(lease))
        {
            return;
        }
        let _ = update(key, |state| {
            if state.id == lease && lease != 0 {
                state.balance = state.balance.saturating_add(1);
            }
        });
    }

    /// Every hold goes back to its shared lease (on every tick: a hold is a few
    /// milliseconds of traffic, and what one worker does not spend another may).
    fn return_holds(&mut self, now_ms: u64) {
        for (key, e) in &mut self.entries {
            if e.hold == Hold::default() {
                continue;
            }
            let hold = std::mem::take(&mut e.hold);
            let _ = update(key, |state| state.give_back(&hold, now_ms));
        }
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

    /// A request admitted from lease `lease` of `key` completed: report it. `false`
    /// when too many wait to be reported (it is lost).
    pub fn record(
        &mut self,
        key: &str,
        tenant: &str,
        route: &Rc<Route>,
        lease: u64,
        id: String,
        at_ms: u64,
    ) -> bool {
        let full = self.pending_records >= MAX_PENDING_RECORDS;
        let e = match self.entries.get_mut(key) {
            Some(e) => e,
            None => self.entry(key, tenant, route),
        };
        e.running.finished(lease);
        if full {
            return false;
        }
        e.records.push(Record { lease, id, at_ms });
        self.early_reports |= e.records.len() >= REPORT_EARLY_RECORDS;
        self.pending_records += 1;
        true
    }

    /// A request admitted from lease `lease` of `key` completed and was given back into
    /// it (upstream 5xx): nothing to report.
    pub fn refunded(&mut self, key: &str, lease: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.running.finished(lease);
        }
    }

    pub fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.pending_records == 0
    }

    /// Whether `token` is one of the book's calls.
    pub fn owns(&self, token: u32) -> bool {
        self.in_flight.contains_key(&token) || self.reports.owns(token)
    }

    /// Send what is due: holds back to the shared leases every `HOLD_RETURN_MS`,
    /// renewals on every tick (a lease asked for on the next report tick instead ran
    /// dry while it waited, and its requests fell back to exact consumes), then every
    /// report interval (and when `stopping`) the reports and the leases to give back
    /// (all of them when `stopping`). Whether the holds went back this tick: the
    /// leased requests' stats go to Envoy on the same beat.
    pub fn tick(
        &mut self,
        plugin: &Plugin,
        metrics: Option<&Metrics>,
        now: u64,
        stopping: bool,
    ) -> bool {
        let beat = stopping || now >= self.next_return_ms;
        if beat {
            self.next_return_ms = now.saturating_add(HOLD_RETURN_MS);
            self.return_holds(now);
        }
        for key in std::mem::take(&mut self.renewals_due) {
            self.send_renewal(plugin, metrics, &key);
        }
        if !stopping && now < self.next_report_ms {
            if self.early_reports {
                self.early_reports = false;
                self.send_reports(plugin, REPORT_EARLY_RECORDS);
            }
            return beat;
        }
        let config = &plugin.config.lease;
        let interval = config.report_interval_ms();
        self.next_report_ms = now.saturating_add(interval);
        let keys: Vec<Rc<str>> = self.entries.keys().cloned().collect();
        for key in keys {
            // On stopping, another worker of this Envoy may still hold units of the
            // lease for up to `hold_valid_ms`: what it admits is reported late and
            // charged to the current windows (docs/guarantees.md). A quiet lease has
            // no live hold: holds take `last_spend_ms` forward and outlive it by less
            // than the idle return.
            // What the lease still held when it was dropped no worker took and none
            // will: the counter takes it back at once (the rest once reported).
            let updated = update(&key, |state| {
                if stopping || state.should_close(now, config.idle_return_ms) {
                    let (id, unspent) = (state.id, state.balance);
                    state.closed();
                    (id != 0).then_some((id, unspent))
                } else {
                    None
                }
            });
            let current = updated.as_ref().map_or(0, |(_, state)| state.id);
            if !stopping {
                self.send_pins(plugin, &key, current, interval);
            }
            if let Some((lease, unspent)) = updated.and_then(|(close, _)| close) {
                if let Some(entry) = self.entries.get(&key) {
                    let body = callout::lease_body(
                        &entry.tenant,
                        entry.plan.as_deref(),
                        &entry.route.meters_json,
                        0,
                        Some(lease),
                        Some(unspent),
                        interval,
                    );
                    if let Some(token) = dispatch(plugin, counter_paths::LEASE, &body) {
                        self.in_flight.insert(token, Call::Close);
                    }
                }
            }
        }
        self.early_reports = false;
        self.send_reports(plugin, 1);
        // Forget leases with nothing pending that no longer hold anything.
        self.entries.retain(|key, e| {
            e.renew.is_some()
                || !e.records.is_empty()
                || !e.running.is_empty()
                || read(key).is_some_and(|s| s.id != 0)
        });
        beat
    }

    /// Leases of `key` other than the `current` one that requests admitted on this
    /// worker still run on: the counter keeps their units out another report delay
    /// (it would give them back once the lease ended and the delay passed, and these
    /// requests, reported when they complete, would then be charged to windows that
    /// may have no room). Every report interval while they run; not retried.
    fn send_pins(&mut self, plugin: &Plugin, key: &str, current: u64, interval: u64) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        for (lease, running) in entry.running.to_pin(current) {
            let body = callout::pin_body(
                &entry.tenant,
                entry.plan.as_deref(),
                &entry.route.meters_json,
                lease,
                u64::from(running),
                interval,
            );
            if let Some(token) = dispatch(plugin, counter_paths::LEASE_REPORT, &body) {
                self.in_flight.insert(token, Call::Close);
            }
        }
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
            None,
            plugin.config.lease.report_interval_ms(),
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
        } else {
            // Nobody waits for a renewal that did not go out.
            let _ = update(key, |state| state.renewal_failed(now_ms()));
        }
    }

    /// Queue what each lease's admitted requests owe the counter (of the leases with
    /// at least `min_records` waiting), in chunks, and send what is due (new reports,
    /// and failed ones whose backoff has passed). On the report tick, and on the tick
    /// after a lease's waiting requests reached [`REPORT_EARLY_RECORDS`]: a report per
    /// interval or per that many requests, not one per answer.
    fn send_reports(&mut self, plugin: &Plugin, min_records: usize) {
        for entry in self.entries.values_mut() {
            if entry.records.is_empty() || entry.records.len() < min_records {
                continue;
            }
            let mut by_lease: HashMap<u64, Vec<(String, u64)>> = HashMap::new();
            for r in std::mem::take(&mut entry.records) {
                by_lease.entry(r.lease).or_default().push((r.id, r.at_ms));
            }
            for (lease, mut records) in by_lease {
                // Chunks moved out, not copied: a report is thousands of ids.
                while !records.is_empty() {
                    let rest = records.split_off(records.len().min(REPORT_CHUNK));
                    let chunk = std::mem::replace(&mut records, rest);
                    // Never refused: the queue holds as many reports as records are
                    // allowed to wait (`record` refuses past that).
                    let _ = self.reports.push(Report {
                        tenant: entry.tenant.clone(),
                        plan: entry.plan.clone(),
                        route: entry.route.clone(),
                        lease,
                        batch: plugin_batch_id(&chunk),
                        records: chunk,
                    });
                }
            }
        }
        self.send_due_reports(plugin);
    }

    /// Send the queued reports that are due, as far as calls may be out.
    fn send_due_reports(&mut self, plugin: &Plugin) {
        let now = now_ns();
        while let Some(job) = self.reports.next_due(now) {
            let r = &job.item;
            let body = callout::report_body(
                &r.tenant,
                r.plan.as_deref(),
                &r.route.meters_json,
                r.lease,
                &r.batch,
                &r.records,
            );
            match dispatch(plugin, counter_paths::LEASE_REPORT, &body) {
                Some(token) => self.reports.started(token, vec![job]),
                // Not sent (Envoy refused the call): again after a pause.
                None => {
                    self.reports.not_started(job, now, REPORT_REDISPATCH_MS);
                    break;
                }
            }
        }
    }

    /// The answer to a report: done, split in two (too large), or again later.
    fn report_answered(&mut self, token: u32, plugin: &Plugin, metrics: Option<&Metrics>) {
        let status = call_response_status();
        for job in self.reports.answered(token) {
            let n = job.item.records.len();
            match callout::parse_ok(status.as_deref()) {
                Ok(()) => self.pending_records = self.pending_records.saturating_sub(n),
                // Too large for the counter: nothing of it was counted, so its halves
                // go out as reports of their own (new batch ids).
                Err(_) if status.as_deref() == Some("413") && n > 1 => {
                    let Report {
                        tenant,
                        plan,
                        route,
                        lease,
                        mut records,
                        ..
                    } = job.item;
                    let second = records.split_off(n / 2);
                    for half in [records, second] {
                        let _ = self.reports.push(Report {
                            tenant: tenant.clone(),
                            plan: plan.clone(),
                            route: route.clone(),
                            lease,
                            batch: plugin_batch_id(&half),
                            records: half,
                        });
                    }
                }
                Err(e) => {
                    let lease = job.item.lease;
                    match self.reports.retry(job, now_ns(), self.jitter.next_u64()) {
                        Failed::Retry { delay_ms } => self.log(format!(
                            "reporting {n} leased requests of lease {lease} failed: {}; again in {delay_ms} ms",
                            e.describe()
                        )),
                        Failed::GaveUp(_) => {
                            self.pending_records = self.pending_records.saturating_sub(n);
                            if let Some(m) = metrics {
                                Metrics::add(m.lease_records_lost, n);
                            }
                            self.log(format!(
                                "gave up reporting {n} leased requests of lease {lease} after {MAX_REPORT_ATTEMPTS} attempts: {}",
                                e.describe()
                            ));
                        }
                    }
                }
            }
        }
        // The halves of a split report, and a report that waited for a free call,
        // without waiting a tick (the records admitted since wait for theirs).
        self.send_due_reports(plugin);
    }

    /// The answer to one of the book's calls.
    pub fn answered(
        &mut self,
        token: u32,
        body_size: usize,
        plugin: &Plugin,
        metrics: Option<&Metrics>,
    ) {
        if self.reports.owns(token) {
            self.report_answered(token, plugin, metrics);
            return;
        }
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
                        // Counted from when the renewal was sent (plus what the counter
                        // says it held it before deciding), not from when its answer
                        // came: the lease then ends here no later than it does on the
                        // counter's clock, and what it admits is billed inside the
                        // windows it was taken from (a per-second lease's requests in
                        // that second).
                        let expires = a
                            .expires_ms
                            .saturating_sub(a.time_ms)
                            .saturating_add(sent_ms)
                            .saturating_add(a.held_ms);
                        let updated = update(&key, |state| {
                            state.granted(a.lease, a.granted, expires, a.expires_ms, a.time_ms, now)
                        });
                        let limits = LeaseLimits::from_grant(&a.limits, now);
                        // For every worker of this proxy: the others spend from this
                        // grant too, and answer with its RateLimit fields.
                        let grant = updated.map(|(_, s)| (s.id, s.counter_granted_ms));
                        if let Some(grant) = grant {
                            write_limits(&key, grant, &limits);
                        }
                        if let Some(entry) = self.entries.get_mut(key.as_str()) {
                            entry.limits = limits;
                            entry.limits_grant = grant.unwrap_or((0, 0));
                        }
                        if a.granted == 0 {
                            count(metrics, |m| m.lease_empty_grants);
                        }
                    }
                    Err(e) => {
                        // Let another renewal go out after a short pause.
                        let _ = update(&key, |state| state.renewal_failed(now));
                        self.log(format!("lease renewal failed: {}", e.describe()));
                    }
                }
            }
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

/// The shared-data key of the limits of the lease at `key`, with the grant they
/// came with (lease id, then `counter_granted_ms`, 8 bytes each, little-endian).
fn limits_key(key: &str) -> String {
    format!("{key}/limits")
}

fn write_limits(key: &str, grant: (u64, u64), limits: &LeaseLimits) {
    let mut bytes = Vec::with_capacity(16 + 128);
    bytes.extend_from_slice(&grant.0.to_le_bytes());
    bytes.extend_from_slice(&grant.1.to_le_bytes());
    bytes.extend_from_slice(&limits.encode());
    // Unconditional: one renewal of a lease is out at a time, and a reader takes only
    // the limits of the grant its hold came from.
    let _ = hostcalls::set_shared_data(&limits_key(key), Some(&bytes), None);
}

/// The limits of `grant` of the lease at `key`, if those are what shared data holds.
fn read_limits(key: &str, grant: (u64, u64)) -> Option<LeaseLimits> {
    let (bytes, _) = hostcalls::get_shared_data(&limits_key(key)).ok()?;
    let bytes = bytes?;
    let (lease, rest) = bytes.split_first_chunk::<8>()?;
    let (granted_ms, rest) = rest.split_first_chunk::<8>()?;
    if (u64::from_le_bytes(*lease), u64::from_le_bytes(*granted_ms)) != grant {
        return None;
    }
    LeaseLimits::decode(rest)
}

pub(super) fn read(key: &str) -> Option<LeaseState> {
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
