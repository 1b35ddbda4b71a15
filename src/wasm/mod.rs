//! proxy-wasm glue: the root context (configuration, metrics, per-VM state) and the HTTP
//! context (one per request). Hostcalls go through `proxy_wasm::hostcalls` directly so
//! a host error becomes a value, not a trap (the trait helpers unwrap).

mod consumes;
mod flusher;
mod http;
mod lease;
mod lease_wait;
mod metrics;
mod root;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(root::Root::new(context_id))
    });
}}

/// Nanoseconds since the Unix epoch by the host's clock; 0 if the host cannot tell.
fn now_ns() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
