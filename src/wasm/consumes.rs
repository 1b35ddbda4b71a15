//! Batched consumes, the glue of `crate::coalesce`: requests that wait for a batch,
//! the root context's wake-up through a shared queue, and the batched calls, which
//! the root context sends and owns so that no request's end cancels a call others
//! wait on. Each member's answer is handed to its own HTTP context (made the
//! effective context first, so its hostcalls act on its own stream).

use std::cell::RefCell;
use std::rc::Weak;

use log::warn;
use proxy_wasm::hostcalls;
use turnpike_wire::counter_paths;

use super::http::{call_response_body, call_response_status, counter_headers, HttpFilter};
use super::metrics::Metrics;
use super::now_ns;
use super::root::{Plugin, Vm};
use crate::callout::{self, CounterError};

/// A request waiting for (or in) a batch.
pub struct Member {
    pub context_id: u32,
    pub filter: Weak<RefCell<HttpFilter>>,
    /// Its `POST /v1/consume` body.
    pub body: Vec<u8>,
}

/// The wake-up: a shared queue only this worker's root context listens on. Envoy
/// calls the root back from its event loop, after the requests that arrive in the
/// same loop iteration have queued: they all go in one batch.
pub fn register_wake_queue() -> Option<u32> {
    let name = format!(
        "turnpike.consumes.{:016x}",
        crate::consume_id::entropy_u64()
    );
    hostcalls::register_shared_queue(&name).ok()
}

/// Wake the root context when the coalescer asked for it (`wake`). If the wake-up
/// cannot be sent, the root's next tick sends what waits.
pub fn wake_if(vm: &Vm, wake: bool) {
    let sent = wake
        && vm
            .wake_queue
            .get()
            .is_some_and(|q| hostcalls::enqueue_shared_queue(q, Some(b"w")).is_ok());
    if wake && !sent {
        if let Ok(mut c) = vm.consumes.try_borrow_mut() {
            c.woken();
        }
    }
}

/// A refund or settlement was queued. When no call of theirs is out (whose answer
/// would send it), wake the root context to send it now rather than on its next tick
/// (up to 500 ms away): a settlement gives a reservation back, and until it lands the
/// tenant's windows hold the whole reservation. Under load a call is out and nothing
/// wakes: the queued ones go together when it answers.
pub fn wake_for_refunds(vm: &Vm) {
    if vm.refunds_woken.get() || !vm.refunds.try_borrow().is_ok_and(|q| q.nothing_in_flight()) {
        return;
    }
    if let Some(queue) = vm.wake_queue.get() {
        if hostcalls::enqueue_shared_queue(queue, Some(b"r")).is_ok() {
            vm.refunds_woken.set(true);
        }
    }
}

/// The root context was woken: empty the queue.
pub fn drain_wake_queue(vm: &Vm, queue_id: u32) {
    if vm.wake_queue.get() == Some(queue_id) {
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        if let Ok(mut c) = vm.consumes.try_borrow_mut() {
            c.woken();
        }
    }
}

/// Send the batches that may go out now. Called from the root context only: the
/// calls are then the root's.
pub fn send_batches(vm: &Vm, plugin: &Plugin) {
    loop {
        let Some(members) = vm
            .consumes
            .try_borrow_mut()
            .ok()
            .and_then(|mut c| c.next_batch())
        else {
            return;
        };
        let mut members = members;
        // One alone goes to /v1/consume: every counter has it, and its compact answer
        // reads as a batch of one.
        let (path, body) = if let [member] = members.as_mut_slice() {
            // Sent alone, it is never sent again: its body is not kept.
            (counter_paths::CONSUME, std::mem::take(&mut member.body))
        } else {
            (
                counter_paths::CONSUME_BATCH,
                callout::batch_body(members.iter().map(|m| m.body.as_slice())),
            )
        };
        let counter = &plugin.config.counter;
        // The call's round trip is its members' callout latency: one clock read a
        // batch, none a member.
        let sent_ns = now_ns();
        let dispatched = hostcalls::dispatch_http_call(
            &counter.cluster,
            counter_headers(plugin, path),
            Some(&body),
            vec![],
            counter.timeout,
        );
        let Ok(mut c) = vm.consumes.try_borrow_mut() else {
            return;
        };
        match dispatched {
            Ok(token) => {
                if let (Some(m), n @ 2..) = (&vm.metrics, members.len()) {
                    Metrics::inc(m.consume_batches);
                    Metrics::add(m.consumes_batched, n);
                }
                c.batch_sent(token, members, sent_ns);
            }
            Err(_) => {
                c.batch_not_sent();
                drop(c);
                let outcomes = vec![Err(CounterError::Dispatch); members.len()];
                decide_members(vm, plugin, members, outcomes);
            }
        }
    }
}

/// `true` when `token` was a batch: its members have their answers.
pub fn batch_answered(vm: &Vm, plugin: &Plugin, token: u32, body_size: usize) -> bool {
    let Some((members, sent_ns)) = vm
        .consumes
        .try_borrow_mut()
        .ok()
        .and_then(|mut c| c.batch_done(token))
    else {
        return false;
    };
    if let Some(m) = &vm.metrics {
        Metrics::record(
            m.callout_latency_ms,
            now_ns().saturating_sub(sent_ns) / 1_000_000,
        );
    }
    let status = call_response_status();
    // More than one member: it went to /v1/consume/batch (one goes alone).
    if status.as_deref() == Some("404") && members.len() > 1 {
        // A counter that predates batches: send each alone from now on. The root
        // sends them when this returns.
        if !vm.batches_refused.replace(true) {
            warn!(
                "the counter has no {} (an older version): consumes go one by one",
                counter_paths::CONSUME_BATCH
            );
        }
        if let Ok(mut c) = vm.consumes.try_borrow_mut() {
            c.configure(1, plugin.config.counter.calls_in_flight);
            for m in members {
                c.requeue(m);
            }
        }
        return true;
    }
    let body = call_response_body(body_size);
    let outcomes = match &body {
        Ok(body) => callout::parse_batch_answer(status.as_deref(), body.as_deref(), members.len()),
        Err(e) => vec![Err(*e); members.len()],
    };
    decide_members(vm, plugin, members, outcomes);
    true
}

/// Hand each member its outcome, in its own context; then the root's again, so that
/// what the root does next (`done` when stopping) is its own.
fn decide_members(
    vm: &Vm,
    plugin: &Plugin,
    members: Vec<Member>,
    outcomes: Vec<Result<callout::ConsumeAnswer<'_>, CounterError>>,
) {
    // Per batch, not per member: one hostcall for `allowed`.
    vm.batch_admits.set(Some(0));
    for (member, outcome) in members.into_iter().zip(outcomes) {
        // Gone (the client went away): its on_log already gave the consume back.
        let Some(filter) = member.filter.upgrade() else {
            continue;
        };
        if hostcalls::set_effective_context(member.context_id).is_err() {
            continue;
        }
        if let Ok(mut filter) = filter.try_borrow_mut() {
            filter.batch_decided(plugin, outcome);
        };
    }
    let allowed = vm.batch_admits.take().unwrap_or(0);
    if let (Some(m), n @ 1..) = (&vm.metrics, usize::try_from(allowed).unwrap_or(usize::MAX)) {
        Metrics::add(m.allowed, n);
    }
    let _ = hostcalls::set_effective_context(vm.root_id);
}
