//! The floor of exact mode (built with `--features exact`): what one request costs
//! Envoy in a proxy-wasm filter that decides every request at the counter, batching
//! as Turnpike does, and does nothing else:
//!
//! - the tenant and plan claims from the verified JWT payload (two property reads),
//! - `:path` (one header read),
//! - the request paused, its consume (the body Turnpike sends) queued, and the root
//!   context woken through a shared queue when no wake-up is pending,
//! - the root sending what waits, one call to the counter (`/v1/consume/batch`, or
//!   `/v1/consume` for one alone) while fewer than two are out, and reading each
//!   answer's body,
//! - each request of the answered call made the effective context, given its two
//!   upstream headers and resumed,
//! - the `RateLimit` fields on the answer (two header writes, as long as Turnpike's for
//!   the bench's plan).
//!
//! The counter and Redis do the same work as for Turnpike's exact mode; the answer is
//! read but not parsed (no Turnpike logic at all). `bench/run.sh` runs it as the
//! `floor-exact` variant, so that exact mode is measured against it as well.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::claim;

/// As `turnpike-dev render-envoy` renders the counter's cluster, and Turnpike's defaults.
const CLUSTER: &str = "turnpike_counter";
const AUTHORITY: &str = "turnpike-counter";
const CALLS_IN_FLIGHT: usize = 2;
const POLICY: &str = r#""per-second";q=1000000000;w=1, "per-minute";q=1000000000;w=60, "monthly";q=1000000000000;w=2678400"#;
const REMAINING: &str = r#""per-second";r=999999870;t=1, "per-minute";r=999999870;t=1, "monthly";r=999999999870;t=2524561"#;
const TIMEOUT: Duration = Duration::from_millis(250);

pub fn start() {
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|root_id| -> Box<dyn RootContext> {
        let vm = Vm {
            root_id,
            id_prefix: RandomState::new().hash_one(root_id),
            ..Vm::default()
        };
        Box::new(Root {
            vm: Rc::new(RefCell::new(vm)),
            authorization: String::new(),
        })
    });
}

#[derive(Default)]
struct Vm {
    /// Requests waiting for the next call, with their consume bodies.
    waiting: Vec<(Member, Vec<u8>)>,
    /// Calls out, by token, and their requests.
    calls: HashMap<u32, Vec<Member>>,
    queue: Option<u32>,
    woken: bool,
    root_id: u32,
    /// Consume ids: this VM's random prefix (a consume id seen before is a replay,
    /// which costs the counter less) and a sequence.
    id_prefix: u64,
    next_id: u64,
}

/// A request in a call: its context, consume id and tenant (for the upstream headers).
struct Member {
    context_id: u32,
    id: String,
    tenant: String,
}

struct Root {
    vm: Rc<RefCell<Vm>>,
    authorization: String,
}

impl Root {
    fn send(&self) {
        let mut vm = self.vm.borrow_mut();
        while vm.calls.len() < CALLS_IN_FLIGHT && !vm.waiting.is_empty() {
            let members = std::mem::take(&mut vm.waiting);
            let (path, body) = if let [(_, one)] = members.as_slice() {
                ("/v1/consume", one.clone())
            } else {
                let mut body = vec![b'['];
                for (i, (_, one)) in members.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(one);
                }
                body.push(b']');
                ("/v1/consume/batch", body)
            };
            let headers = vec![
                (":method", "POST"),
                (":path", path),
                (":authority", AUTHORITY),
                ("content-type", "application/json"),
                ("accept", "application/vnd.turnpike.consume"),
                ("authorization", self.authorization.as_str()),
            ];
            let ids: Vec<Member> = members.into_iter().map(|(m, _)| m).collect();
            match hostcalls::dispatch_http_call(CLUSTER, headers, Some(&body), vec![], TIMEOUT) {
                Ok(token) => {
                    vm.calls.insert(token, ids);
                }
                Err(_) => {
                    for m in ids {
                        if hostcalls::set_effective_context(m.context_id).is_ok() {
                            let _ = hostcalls::send_http_response(503, vec![], None);
                        }
                    }
                    let _ = hostcalls::set_effective_context(vm.root_id);
                }
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let members = self
            .vm
            .borrow_mut()
            .calls
            .remove(&token)
            .unwrap_or_default();
        // Read the answer, as any filter deciding by it must (not parsed here).
        let ok = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .is_some_and(|b| !b.is_empty());
        for m in members {
            if hostcalls::set_effective_context(m.context_id).is_err() {
                continue;
            }
            if ok {
                let headers = MapType::HttpRequestHeaders;
                let _ = hostcalls::set_map_value(headers, "turnpike-consume-id", Some(&m.id));
                let _ = hostcalls::set_map_value(headers, "turnpike-tenant", Some(&m.tenant));
                let _ = hostcalls::resume_http_request();
            } else {
                let _ = hostcalls::send_http_response(503, vec![], Some(b"no answer"));
            }
        }
        let root_id = self.vm.borrow().root_id;
        let _ = hostcalls::set_effective_context(root_id);
        self.send();
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        let token = std::env::var("TURNPIKE_COUNTER_TOKEN").unwrap_or_default();
        self.authorization = format!("Bearer {token}");
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let queue = format!("floor.exact.{:p}", Rc::as_ptr(&self.vm));
        let mut vm = self.vm.borrow_mut();
        vm.queue = hostcalls::register_shared_queue(&queue).ok();
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        self.vm.borrow_mut().woken = false;
        self.send();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            vm: self.vm.clone(),
            context_id,
        }))
    }
}

struct Request {
    vm: Rc<RefCell<Vm>>,
    context_id: u32,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let (tenant, plan) = (claim("tenant"), claim("plan"));
        let path = self.get_http_request_header(":path");
        let (Some(tenant), Some(_path)) = (tenant, path) else {
            self.send_http_response(401, vec![], Some(b"no tenant"));
            return Action::Pause;
        };
        let mut vm = self.vm.borrow_mut();
        vm.next_id += 1;
        let id = format!("{:016x}{:032x}", vm.id_prefix, vm.next_id);
        let plan = plan.map_or(String::new(), |p| format!(r#","plan":"{p}""#));
        let body = format!(
            r#"{{"id":"{id}","tenant":"{tenant}"{plan},"meters":[{{"meter":"requests","cost":1}}]}}"#
        );
        let member = Member {
            context_id: self.context_id,
            id,
            tenant,
        };
        vm.waiting.push((member, body.into_bytes()));
        if !vm.woken && vm.calls.len() < CALLS_IN_FLIGHT {
            if let Some(queue) = vm.queue {
                vm.woken = hostcalls::enqueue_shared_queue(queue, Some(b"w")).is_ok();
            }
        }
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        // The RateLimit fields of a plan with three windows, as long as Turnpike's
        // answer for the bench's plan (bench/plans.toml): what the job sends.
        self.add_http_response_header("ratelimit-policy", POLICY);
        self.add_http_response_header("ratelimit", REMAINING);
        Action::Continue
    }
}
