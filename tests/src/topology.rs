//! The two Redis topologies a stack can run on, behind one small API, so one test body
//! checks both (as Limitador runs its tests against each of its storages): a single
//! `redis-server`, or a six-node Redis Cluster ([`crate::redis_cluster`]).
//!
//! ```ignore
//! turnpike_tests::on_each_topology! {
//!     async fn the_limit_holds(topology) {
//!         let stack = Stack::builder(PLANS).topology(topology).start().await;
//!         ...
//!     }
//! }
//! // runs as `the_limit_holds::single_redis` and `the_limit_holds::redis_cluster`
//! ```

use std::path::Path;

use crate::redis::Redis;
use crate::redis_cluster::RedisCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    #[default]
    Single,
    Cluster,
}

impl Topology {
    /// What the counter's and the collector's `--redis-mode` take.
    pub fn mode(self) -> &'static str {
        match self {
            Topology::Single => "single",
            Topology::Cluster => "cluster",
        }
    }
}

/// The stack's Redis.
pub enum StackRedis {
    Single(Redis),
    Cluster(RedisCluster),
}

impl StackRedis {
    pub async fn start(topology: Topology, dir: &Path) -> StackRedis {
        match topology {
            Topology::Single => StackRedis::Single(Redis::start(dir).await),
            Topology::Cluster => StackRedis::Cluster(RedisCluster::start(dir).await),
        }
    }

    pub fn topology(&self) -> Topology {
        match self {
            StackRedis::Single(_) => Topology::Single,
            StackRedis::Cluster(_) => Topology::Cluster,
        }
    }

    /// What `--redis` takes: the URL, or every node's URL.
    pub fn url(&self) -> String {
        match self {
            StackRedis::Single(redis) => redis.url(),
            StackRedis::Cluster(cluster) => cluster.seeds(),
        }
    }

    /// `--redis URL --redis-mode MODE`, for a counter's or a collector's command line.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--redis".to_owned(),
            self.url(),
            "--redis-mode".to_owned(),
            self.topology().mode().to_owned(),
        ]
    }

    /// `redis-cli --raw` (following cluster redirections): single-key commands.
    pub fn cli(&self, args: &[&str]) -> String {
        match self {
            StackRedis::Single(redis) => redis.cli(args),
            StackRedis::Cluster(cluster) => cluster.cli(args),
        }
    }

    /// An integer key, None when absent.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        let out = self.cli(&["GET", key]);
        let text = out.trim();
        if text.is_empty() {
            return None;
        }
        Some(
            text.parse()
                .unwrap_or_else(|_| panic!("redis key {key} holds {text:?}, not an integer")),
        )
    }

    /// Keys matching a glob pattern (on every master of a cluster), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self {
            StackRedis::Single(redis) => redis.keys(pattern),
            StackRedis::Cluster(cluster) => cluster.keys(pattern),
        }
    }

    /// The single key matching `pattern` and its integer value; panics if not exactly one.
    pub fn only_counter(&self, pattern: &str) -> (String, u64) {
        let keys = self.keys(pattern);
        match keys.as_slice() {
            [key] => (key.clone(), self.get_u64(key).unwrap_or(0)),
            _ => panic!("expected exactly one key matching {pattern}, found {keys:?}"),
        }
    }

    /// Keys in Redis (summed over a cluster's masters).
    pub fn dbsize(&self) -> u64 {
        match self {
            StackRedis::Single(redis) => redis.dbsize(),
            StackRedis::Cluster(cluster) => cluster.dbsize(),
        }
    }

    /// The single server; panics on a cluster (a test of single-node behaviour).
    pub fn single(&mut self) -> &mut Redis {
        match self {
            StackRedis::Single(redis) => redis,
            StackRedis::Cluster(_) => panic!("this test needs a single Redis, not a cluster"),
        }
    }

    /// The cluster; panics on a single server.
    pub fn cluster(&self) -> &RedisCluster {
        match self {
            StackRedis::Cluster(cluster) => cluster,
            StackRedis::Single(_) => panic!("this test needs a Redis Cluster: use redis_cluster()"),
        }
    }

    pub fn cluster_mut(&mut self) -> &mut RedisCluster {
        match self {
            StackRedis::Cluster(cluster) => cluster,
            StackRedis::Single(_) => panic!("this test needs a Redis Cluster: use redis_cluster()"),
        }
    }

    /// SIGKILL the single server.
    pub fn stop(&mut self) {
        self.single().stop();
    }

    /// The single server again, on the same port, empty.
    pub async fn restart(&mut self) {
        self.single().restart().await;
    }
}

/// One test per Redis topology from one body: `NAME::single_redis` and
/// `NAME::redis_cluster`. The body gets the [`Topology`] under the name given.
/// `worker_threads = N;` first sets the test runtime's threads (default 2).
#[macro_export]
macro_rules! on_each_topology {
    (worker_threads = $threads:literal; $(#[$meta:meta])* async fn $name:ident($topology:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($topology: $crate::topology::Topology) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
            async fn single_redis() {
                run($crate::topology::Topology::Single).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
            async fn redis_cluster() {
                run($crate::topology::Topology::Cluster).await
            }
        }
    };
    ($(#[$meta:meta])* async fn $name:ident($topology:ident) $body:block) => {
        $crate::on_each_topology! {
            worker_threads = 2;
            $(#[$meta])* async fn $name($topology) $body
        }
    };
}
