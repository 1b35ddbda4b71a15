//! The floor of leased mode: per request, only what any filter spending a lease shared
//! by the workers must do, with no counter behind it:
//!
//! - the tenant from the verified JWT payload (one property read),
//! - `:path` (one header read),
//! - one unit taken from shared data with compare-and-swap (a read and a write),
//! - the consume id and tenant headers for the upstream (two header writes),
//! - the `RateLimit` fields on the answer (two header writes),
//! - a usage record kept in memory (to report; here dropped in thousands).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};

use crate::claim;

/// Units a refill puts in the shared "lease" (standing in for a grant).
const REFILL: u64 = 1_000_000;
/// Records kept before they are dropped (standing in for a report).
const RECORDS_PER_REPORT: usize = 1_000;

pub fn start() {
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Floor {
            records: Rc::default(),
            next_id: Rc::default(),
        })
    });
}

struct Floor {
    records: Rc<RefCell<Vec<(String, String)>>>,
    next_id: Rc<RefCell<u64>>,
}

impl Context for Floor {}

impl RootContext for Floor {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            records: self.records.clone(),
            next_id: self.next_id.clone(),
            id: String::new(),
            tenant: String::new(),
            remaining: 0,
        }))
    }
}

struct Request {
    records: Rc<RefCell<Vec<(String, String)>>>,
    next_id: Rc<RefCell<u64>>,
    id: String,
    tenant: String,
    remaining: u64,
}

impl Context for Request {}

/// One unit from the shared balance of `key` (refilled when empty); what is left.
fn take(key: &str) -> Option<u64> {
    for _ in 0..8 {
        let (bytes, cas) = proxy_wasm::hostcalls::get_shared_data(key).ok()?;
        let balance = bytes
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        let left = balance.checked_sub(1).unwrap_or(REFILL - 1);
        match proxy_wasm::hostcalls::set_shared_data(key, Some(&left.to_le_bytes()), cas) {
            Ok(()) => return Some(left),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let tenant = claim("tenant");
        let path = self.get_http_request_header(":path");
        let (Some(tenant), Some(_path)) = (tenant, path) else {
            self.send_http_response(401, vec![], Some(b"no tenant"));
            return Action::Pause;
        };
        let Some(remaining) = take(&format!("floor/lease/{tenant}")) else {
            self.send_http_response(503, vec![], Some(b"no shared data"));
            return Action::Pause;
        };
        let mut next = self.next_id.borrow_mut();
        *next += 1;
        self.id = format!("{:032x}{:016x}", 0x7e57_u128, *next);
        drop(next);
        self.remaining = remaining;
        self.set_http_request_header("turnpike-consume-id", Some(&self.id));
        self.set_http_request_header("turnpike-tenant", Some(&tenant));
        self.tenant = tenant;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("ratelimit-policy", "\"requests\";q=1000000;w=60");
        let remaining = format!("\"requests\";r={};t=60", self.remaining);
        self.add_http_response_header("ratelimit", &remaining);
        Action::Continue
    }

    fn on_log(&mut self) {
        let mut records = self.records.borrow_mut();
        if records.len() >= RECORDS_PER_REPORT {
            records.clear();
        }
        records.push((
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.tenant),
        ));
    }
}
