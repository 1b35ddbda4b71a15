//! The floors of Turnpike's two modes on the machine at hand: what one request costs
//! Envoy in a proxy-wasm filter that does only what any filter doing that mode's job
//! must, with the same SDK as Turnpike's and none of Turnpike's logic.
//!
//! - Leased mode (`lease.rs`, the default build): the request decided from a lease
//!   shared by the workers, with no counter behind it. `bench/run.sh` runs it as the
//!   `floor` variant.
//! - Exact mode (`exact.rs`, `--features exact`): every request decided at the counter,
//!   in batches as Turnpike sends them. `bench/run.sh` runs it as `floor-exact`.
//!
//! Both answer 401 when the tenant property is missing, so a wrong path fails the
//! bench's first request instead of measuring nothing.

#[cfg(feature = "exact")]
mod exact;
#[cfg(not(feature = "exact"))]
mod lease;

/// A claim of the verified JWT payload, where `jwt_authn` keeps it
/// (`payload_in_metadata: jwt_payload`, as `turnpike-dev render-envoy` renders it): one
/// property read. `None` when absent or not UTF-8.
pub(crate) fn claim(name: &str) -> Option<String> {
    let path = vec![
        "metadata",
        "filter_metadata",
        "envoy.filters.http.jwt_authn",
        "jwt_payload",
        name,
    ];
    let bytes = proxy_wasm::hostcalls::get_property(path).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

#[cfg(feature = "exact")]
proxy_wasm::main! {{
    exact::start();
}}

#[cfg(not(feature = "exact"))]
proxy_wasm::main! {{
    lease::start();
}}
