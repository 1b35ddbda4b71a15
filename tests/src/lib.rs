//! The end-to-end test harness: real processes on 127.0.0.1, one small API.
//!
//! Each test builds its own [`Stack`] (Redis, counter, echo upstream, Envoy with the
//! filter, optionally the collector) on fresh ports in a fresh temp dir. Tests never
//! run cargo: build first (`make build`). Artefacts are found in the target dir
//! (`$CARGO_TARGET_DIR`, else the one this test binary was built into); override with
//! `TURNPIKE_ENVOY`, `TURNPIKE_COUNTER_BIN`, `TURNPIKE_COLLECTOR_BIN`, `TURNPIKE_WASM`.
//! `ENVOY_VERSION=1.37` (a minor or a full version) runs another installed Envoy: see
//! [`paths::envoy`].
//!
//! ```ignore
//! let stack = Stack::builder(PLANS).concurrency(2).start().await;
//! let reply = stack.get("/v1/things", Some(&stack.token("acme"))).await;
//! assert_eq!(reply.status, 200);
//! ```

pub mod collector;
pub mod counter;
pub mod envoy;
pub mod fields;
pub mod http;
pub mod load;
pub mod paths;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod secrets;
pub mod stack;
pub mod topology;
pub mod upstream;
pub mod wait;

pub use fields::{member, parse_list, Member};
pub use http::Reply;
pub use stack::Stack;
pub use topology::Topology;
pub use turnpike_devtools::token::TokenSpec;
pub use wait::{avoid_window_end, eventually, now_unix, secs_to_window_end};

/// Problem types the filter answers with.
pub mod problems {
    pub const MISSING_TENANT: &str = "https://turnpike.dev/problems/missing-tenant";
    pub const QUOTA_EXCEEDED: &str = "https://turnpike.dev/problems/quota-exceeded";
    pub const COUNTER_UNAVAILABLE: &str = "https://turnpike.dev/problems/counter-unavailable";
}
