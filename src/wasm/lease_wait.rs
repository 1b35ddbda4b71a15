//! Requests that wait for a lease's renewal. When a worker finds its tenant's lease
//! spent (most often: a per-second lease ended with its second, and its successor,
//! asked for before the turn, is a round trip away), the request pauses here instead
//! of costing an exact consume, and is let go when the renewal is answered (by this
//! worker, or seen in the shared state on the root's next tick), when it is known not
//! to come, or after `renewal_wait_ms`. A request let go is decided from the lease if
//! it can be, else exactly. Each is handled in its own HTTP context (made the effective
//! context first), as a batch's members are.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use proxy_wasm::hostcalls;

use super::consumes;
use super::http::HttpFilter;
use super::lease;
use super::root::{Plugin, Vm};

/// A paused request and the lease it waits for.
pub struct Waiter {
    /// The lease's shared key (the lease book's, shared).
    pub key: Rc<str>,
    pub context_id: u32,
    pub filter: Weak<RefCell<HttpFilter>>,
    /// It waits no longer than this (unix ms, our clock).
    pub until_ms: u64,
}

/// The request of `context_id` no longer waits (its client went away).
pub fn forget(vm: &Vm, context_id: u32) {
    if let Ok(mut waiters) = vm.lease_waiters.try_borrow_mut() {
        waiters.retain(|w| w.context_id != context_id);
    }
}

/// Let go the waiters whose lease can be spent again, whose renewal is no longer on
/// its way, or whose time is up (all of them when `all`: the VM is stopping). Called
/// from the root context only; the consumes of those decided exactly go out at once.
pub fn release(vm: &Vm, plugin: &Plugin, now_ms: u64, all: bool) {
    let ready = {
        let Ok(mut waiters) = vm.lease_waiters.try_borrow_mut() else {
            return;
        };
        if waiters.is_empty() {
            return;
        }
        let tuning = &plugin.config.lease.tuning;
        // One read of the shared state per lease, however many wait for it.
        let mut verdicts: Vec<(String, bool)> = Vec::new();
        let mut go = |key: &str| match verdicts.iter().find(|(k, _)| k == key) {
            Some((_, v)) => *v,
            None => {
                let v = lease::read(key)
                    .is_none_or(|s| s.usable(now_ms, tuning) || !s.renewal_on_its_way(now_ms));
                verdicts.push((key.to_owned(), v));
                v
            }
        };
        let (ready, still): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut *waiters)
            .into_iter()
            .partition(|w| all || now_ms >= w.until_ms || go(&w.key));
        *waiters = still;
        ready
    };
    if ready.is_empty() {
        return;
    }
    for w in ready {
        let Some(filter) = w.filter.upgrade() else {
            continue;
        };
        if hostcalls::set_effective_context(w.context_id).is_err() {
            continue;
        }
        if let Ok(mut filter) = filter.try_borrow_mut() {
            filter.lease_waited(plugin);
        };
    }
    let _ = hostcalls::set_effective_context(vm.root_id);
    consumes::send_batches(vm, plugin);
}
