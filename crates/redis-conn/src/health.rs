//! What `/healthz` reports about Redis.
//!
//! One node: it answers PING. A cluster: a node answers `CLUSTER INFO` with
//! `cluster_state:ok`, which Redis only says when every one of the 16384 slots is
//! served by a reachable master (with the default `cluster-require-full-coverage
//! yes`, a cluster in `fail` state refuses every command, so the counter could not
//! consume for any tenant). The node asked is any one the client is connected to:
//! asking every master of the client's slot map would report a dead, already
//! replaced master as unhealthy until something made the client refresh its map.

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisError, RedisResult, Value};

use crate::config::Mode;
use crate::conn::RedisConn;

/// The cluster's own view of itself (`CLUSTER INFO`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    /// `ok` or `fail`.
    pub state: String,
    pub slots_assigned: u64,
    pub slots_ok: u64,
    pub slots_pfail: u64,
    pub slots_fail: u64,
    pub known_nodes: u64,
    /// Masters serving at least one slot.
    pub size: u64,
}

impl ClusterInfo {
    pub fn parse(text: &str) -> ClusterInfo {
        let mut info = ClusterInfo::default();
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            let number = || value.trim().parse().unwrap_or(0);
            match key {
                "cluster_state" => info.state = value.trim().to_owned(),
                "cluster_slots_assigned" => info.slots_assigned = number(),
                "cluster_slots_ok" => info.slots_ok = number(),
                "cluster_slots_pfail" => info.slots_pfail = number(),
                "cluster_slots_fail" => info.slots_fail = number(),
                "cluster_known_nodes" => info.known_nodes = number(),
                "cluster_size" => info.size = number(),
                _ => {}
            }
        }
        info
    }

    pub fn is_ok(&self) -> bool {
        self.state == "ok"
    }
}

/// Redis as `/healthz` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub mode: Mode,
    /// In cluster mode.
    pub cluster: Option<ClusterInfo>,
}

impl Health {
    pub fn is_ok(&self) -> bool {
        self.cluster.as_ref().is_none_or(ClusterInfo::is_ok)
    }
}

impl RedisConn {
    /// A cluster's `CLUSTER INFO`, asked of its nodes directly, not through the cluster
    /// connection (`None` for one node, or when no node answers).
    pub async fn cluster_info_direct(&self) -> Option<ClusterInfo> {
        match self {
            RedisConn::Single(_) => None,
            RedisConn::Cluster(cluster) => cluster.cluster_info_direct().await,
        }
    }

    /// PING (one node) or `CLUSTER INFO` (a cluster). An error when Redis cannot be
    /// reached at all; otherwise the state, which [`Health::is_ok`] judges.
    pub async fn health(&mut self) -> RedisResult<Health> {
        match self {
            RedisConn::Single(conn) => {
                let _: Value = redis::cmd("PING")
                    .query_async::<Value>(conn)
                    .await?
                    .extract_error()?;
                Ok(Health {
                    mode: Mode::Single,
                    cluster: None,
                })
            }
            RedisConn::Cluster(cluster) => {
                let reply = cluster
                    .checked(|mut conn| async move {
                        conn.route_command(
                            redis::cmd("CLUSTER").arg("INFO").clone(),
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                        )
                        .await
                    })
                    .await?
                    .extract_error()?;
                let text: String = redis::from_redis_value(reply).map_err(RedisError::from)?;
                Ok(Health {
                    mode: Mode::Cluster,
                    cluster: Some(ClusterInfo::parse(&text)),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "cluster_state:fail\r\ncluster_slots_assigned:16384\r\n\
        cluster_slots_ok:10923\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:5461\r\n\
        cluster_known_nodes:6\r\ncluster_size:3\r\ncluster_current_epoch:7\r\n";

    #[test]
    fn cluster_info_is_read_field_by_field() {
        let info = ClusterInfo::parse(INFO);
        assert_eq!(
            info,
            ClusterInfo {
                state: "fail".into(),
                slots_assigned: 16384,
                slots_ok: 10923,
                slots_pfail: 0,
                slots_fail: 5461,
                known_nodes: 6,
                size: 3,
            }
        );
        assert!(!info.is_ok());
        assert!(ClusterInfo::parse(&INFO.replace("state:fail", "state:ok")).is_ok());
    }

    #[test]
    fn a_single_node_that_answered_is_healthy() {
        let health = Health {
            mode: Mode::Single,
            cluster: None,
        };
        assert!(health.is_ok());
    }
}
