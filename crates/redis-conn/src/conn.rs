//! The connection: one Redis behind a `ConnectionManager`, or a Redis Cluster behind
//! redis-rs's async cluster client. Both reconnect by themselves; callers clone it
//! freely (clones share the underlying connections) and bound every call with their
//! own timeout.

use std::time::Duration;

use futures_util::future::{try_join_all, FutureExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::config::{ConfigError, Mode, RedisConfig};
use crate::scripts::{classify, is_noscript, ScriptBodies, ScriptCommand};

/// Few, quick retries inside one call: callers time out anyway, and the next call
/// after a failure starts over against a refreshed topology.
const RETRIES: u32 = 3;
const MIN_RETRY_WAIT_MS: u64 = 10;
const MAX_RETRY_WAIT_MS: u64 = 200;

/// A connection to the counter's Redis, in either mode. Implements
/// [`redis::aio::ConnectionLike`], so commands, pipelines and
/// `Script::invoke_async` work on it unchanged.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConn),
}

/// The cluster side: redis-rs's cluster connection (slot map, MOVED/ASK, reconnects)
/// plus the script bodies that make `NOSCRIPT` cheap to recover from (the `scripts` module).
#[derive(Clone)]
pub struct ClusterConn {
    conn: ClusterConnection,
    scripts: ScriptBodies,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

impl RedisConn {
    /// Connects in the background: this returns at once, also while Redis (or every
    /// seed node) is down, so a service starts and answers 503 until Redis is there.
    pub fn connect_lazy(config: &RedisConfig) -> Result<RedisConn, ConnectError> {
        let infos = config.connection_infos()?;
        match config.mode {
            Mode::Single => {
                let [info] = <[_; 1]>::try_from(infos).map_err(|infos| {
                    ConfigError(format!("single mode takes one URL, got {}", infos.len()))
                })?;
                let client = Client::open(info)?;
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.timeout))
                    .set_response_timeout(Some(config.timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
                    client, manager,
                )?))
            }
            Mode::Cluster => {
                let mut builder = ClusterClientBuilder::new(infos)
                    .connection_timeout(config.timeout)
                    .response_timeout(config.timeout)
                    // Redirections and retries count against the same budget as the
                    // caller's, not once more per attempt.
                    .overall_response_timeout(Some(config.timeout))
                    .retries(RETRIES)
                    .min_retry_wait(MIN_RETRY_WAIT_MS)
                    .max_retry_wait(MAX_RETRY_WAIT_MS);
                // Nodes learnt from the topology (never listed in --redis) get the same
                // credentials as the seeds.
                if let Some((user, pass)) = config.credential() {
                    builder = builder.password(pass);
                    if let Some(user) = user {
                        builder = builder.username(user);
                    }
                }
                let client = builder.build()?;
                let conn = client.get_pending_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(config.timeout)
                        .set_response_timeout(config.timeout),
                );
                Ok(RedisConn::Cluster(ClusterConn {
                    conn,
                    scripts: ScriptBodies::default(),
                }))
            }
        }
    }

    pub fn mode(&self) -> Mode {
        match self {
            RedisConn::Single(_) => Mode::Single,
            RedisConn::Cluster(_) => Mode::Cluster,
        }
    }

    /// Runs single-key commands that may each live in another slot (one per usage
    /// stream, say) and returns their replies in order; the first error fails the
    /// whole, as a pipeline would. One node: one pipeline, one round trip. A cluster:
    /// every command routed to its slot's master, all in flight at once (each node's
    /// multiplexed connection pipelines them), because a cluster pipeline must stay in
    /// one slot.
    pub async fn query_each(&mut self, cmds: &[Cmd]) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RedisConn::Single(conn) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd.clone());
                }
                pipe.query_async(conn).await
            }
            RedisConn::Cluster(cluster) => {
                try_join_all(cmds.iter().map(|cmd| {
                    let mut conn = cluster.clone();
                    async move { conn.query(cmd).await }
                }))
                .await
            }
        }
    }
}

impl ClusterConn {
    async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        self.send(cmd).await.and_then(Value::extract_error)
    }

    /// One command, with the script handling of the `scripts` module.
    async fn send(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match classify(cmd) {
            ScriptCommand::EvalSha => {
                let reply = self.conn.req_packed_command(cmd).await;
                if is_noscript(&reply) {
                    if let Some(eval) = self.scripts.eval_for(cmd) {
                        tracing::debug!("NOSCRIPT on this slot's master: sending the body");
                        return self.conn.req_packed_command(&eval).await;
                    }
                }
                reply
            }
            ScriptCommand::Load(body) => {
                // One node is enough: the body is remembered, and every node that lacks
                // the script later gets it with its first EVAL.
                let reply = self
                    .conn
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                    )
                    .await;
                if let Ok(Value::BulkString(sha)) = &reply {
                    if let Ok(sha) = std::str::from_utf8(sha) {
                        self.scripts.remember(sha, body);
                    }
                }
                reply
            }
            ScriptCommand::Other => self.conn.req_packed_command(cmd).await,
        }
    }

    /// The underlying redis-rs connection, for routing a command to chosen nodes.
    pub fn inner(&mut self) -> &mut ClusterConnection {
        &mut self.conn
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(cluster) => cluster.send(cmd).boxed(),
        }
    }

    /// A pipeline on a cluster must keep to one slot (redis-rs refuses one that does
    /// not); use [`RedisConn::query_each`] for commands spread over slots.
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(cluster) => cluster.conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            RedisConn::Cluster(cluster) => cluster.conn.get_db(),
        }
    }
}
