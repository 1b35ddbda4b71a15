//! The counter's and the collector's connection to Redis: one server, or a Redis
//! Cluster, chosen explicitly with `--redis-mode single|cluster`
//! (`TURNPIKE_REDIS_MODE`).
//!
//! Turnpike's key layout (`turnpike_plans::keys`) puts every key one consume touches
//! under its tenant's bucket hash tag, `tp:{NNN}:...`, so each script runs on one
//! slot and a cluster needs nothing from the scripts. What differs lives here: the
//! cluster client follows MOVED/ASK and refreshes its slot map (also when a master
//! dies silently: the `topology` module), scripts reach masters
//! that lack them (a promoted replica, a restarted node: the `scripts` module), commands
//! spread over slots are not pipelined across nodes ([`RedisConn::query_each`]), and
//! health is the cluster's own state ([`health`]).

mod config;
mod conn;
pub mod health;
mod scripts;
mod topology;

pub use config::{redacted, ConfigError, Mode, RedisConfig};
pub use conn::{ClusterConn, ConnectError, RedisConn};
pub use health::{ClusterInfo, Health};
