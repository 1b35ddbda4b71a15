//! The connection: one Redis behind a `ConnectionManager`, or a Redis Cluster behind
//! redis-rs's async cluster client. Both reconnect by themselves; callers clone it
//! freely (clones share the underlying connections) and bound every call with their
//! own timeout.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::{try_join_all, FutureExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, Value,
};

use crate::config::{ConfigError, Mode, RedisConfig};
use crate::health::ClusterInfo;
use crate::scripts::{classify, is_noscript, ScriptBodies, ScriptCommand};
use crate::topology::{self, is_suspicious, CHECK_EVERY, STUCK_AFTER};

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

/// The cluster side: redis-rs's cluster connection (slot map, MOVED/ASK, reconnects),
/// the script bodies that make `NOSCRIPT` cheap to recover from (the `scripts`
/// module), and what it takes to build the connection again when the topology
/// changed under it (the `topology` module). Clones share all of it.
#[derive(Clone)]
pub struct ClusterConn {
    shared: Arc<ClusterShared>,
}

struct ClusterShared {
    client: ClusterClient,
    /// The seed nodes, credentials applied: where a topology check asks first.
    seeds: Vec<ConnectionInfo>,
    timeout: Duration,
    current: RwLock<ClusterConnection>,
    scripts: ScriptBodies,
    watch: Mutex<Watch>,
    /// When this connection was made; `last_success` counts from it.
    born: Instant,
    /// Milliseconds after `born` of the last call that went through.
    last_success_ms: AtomicU64,
}

/// The topology check's state.
#[derive(Default)]
struct Watch {
    running: bool,
    last_check: Option<Instant>,
    last_build: Option<Instant>,
    /// The masters (`CLUSTER SLOTS`) when the connection was last built; `None`
    /// until the first check.
    masters: Option<BTreeSet<String>>,
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
                let conn = ClusterConn::new_connection(&client, config.timeout);
                Ok(RedisConn::Cluster(ClusterConn {
                    shared: Arc::new(ClusterShared {
                        client,
                        seeds: config.connection_infos()?,
                        timeout: config.timeout,
                        current: RwLock::new(conn),
                        scripts: ScriptBodies::default(),
                        watch: Mutex::new(Watch::default()),
                        born: Instant::now(),
                        last_success_ms: AtomicU64::new(0),
                    }),
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
    /// A cluster connection that connects (and learns the slot map) in the background.
    fn new_connection(client: &ClusterClient, timeout: Duration) -> ClusterConnection {
        client.get_pending_async_connection_with_config(
            ClusterConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout),
        )
    }

    /// `CLUSTER INFO` from the first seed (else known master) that answers, each over a
    /// connection of its own: what the cluster thinks of itself when the cluster
    /// connection is what cannot answer (it may be rebuilding against a dead seed).
    pub async fn cluster_info_direct(&self) -> Option<ClusterInfo> {
        let known = self.shared.known_masters();
        self.shared.probe(&known).await.map(|p| p.info)
    }

    /// The connection calls go to now (a clone: cheap, and it outlives a rebuild).
    pub fn inner(&self) -> ClusterConnection {
        self.shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        self.send(cmd).await.and_then(Value::extract_error)
    }

    /// One command, with the script handling of the `scripts` module; a failure that
    /// may mean a changed topology (also the caller giving up on the call) has the
    /// topology checked.
    async fn send(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let this = &*self;
        this.checked(|_| this.send_unwatched(cmd)).await
    }

    /// Runs `op` on the current connection; a failure that may mean a changed
    /// topology, or the caller dropping the call unfinished, has the topology checked.
    pub(crate) async fn checked<F, Fut>(&self, op: F) -> RedisResult<Value>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: Future<Output = RedisResult<Value>>,
    {
        let mut watch = CallWatch {
            conn: self,
            settled: false,
        };
        let result = op(self.inner()).await;
        watch.settled = !is_suspicious(&result);
        if result.is_ok() {
            let ms = u64::try_from(self.shared.born.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.shared.last_success_ms.store(ms, Ordering::Relaxed);
        }
        result
    }

    async fn send_unwatched(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut conn = self.inner();
        match classify(cmd) {
            ScriptCommand::EvalSha => {
                let reply = conn.req_packed_command(cmd).await;
                if is_noscript(&reply) {
                    if let Some(eval) = self.shared.scripts.eval_for(cmd) {
                        tracing::debug!("NOSCRIPT on this slot's master: sending the body");
                        return conn.req_packed_command(&eval).await;
                    }
                }
                reply
            }
            ScriptCommand::Load(body) => {
                // One node is enough: the body is remembered, and every node that lacks
                // the script later gets it with its first EVAL.
                let reply = conn
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                    )
                    .await;
                if let Ok(Value::BulkString(sha)) = &reply {
                    if let Ok(sha) = std::str::from_utf8(sha) {
                        self.shared.scripts.remember(sha, body);
                    }
                }
                reply
            }
            ScriptCommand::Other => conn.req_packed_command(cmd).await,
        }
    }

    /// Have the topology checked (the `topology` module), in the background, unless a
    /// check runs or ran less than [`CHECK_EVERY`] ago.
    fn suspect(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut watch = self.shared.watch.lock().unwrap_or_else(|p| p.into_inner());
            let recent = watch.last_check.is_some_and(|t| t.elapsed() < CHECK_EVERY);
            if watch.running || recent {
                return;
            }
            watch.running = true;
            watch.last_check = Some(Instant::now());
        }
        let shared = self.shared.clone();
        runtime.spawn(async move {
            let known = shared.known_masters();
            let seen = shared.probe(&known).await;
            let mut watch = shared.watch.lock().unwrap_or_else(|p| p.into_inner());
            watch.running = false;
            let Some(Probe { masters, info }) = seen else {
                return;
            };
            let ok = info.is_ok();
            let stuck = ok
                && shared.since_last_success() >= STUCK_AFTER
                && watch.last_build.is_none_or(|t| t.elapsed() >= STUCK_AFTER);
            let moved = watch.masters.as_ref() != Some(&masters);
            if moved || stuck {
                tracing::info!(
                    masters = ?masters,
                    cause = if moved { "the masters changed" } else { "no call went through" },
                    "redis cluster: reconnecting from the seed nodes to learn the slot map"
                );
                let fresh = ClusterConn::new_connection(&shared.client, shared.timeout);
                *shared.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                watch.masters = Some(masters);
                watch.last_build = Some(Instant::now());
            }
        });
    }
}

/// What a topology check saw on one node.
struct Probe {
    masters: BTreeSet<String>,
    /// `CLUSTER INFO` as that node answered it.
    info: ClusterInfo,
}

impl ClusterShared {
    /// The masters the last topology check saw (none before the first).
    fn known_masters(&self) -> Vec<String> {
        let watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        watch.masters.iter().flatten().cloned().collect()
    }

    fn since_last_success(&self) -> Duration {
        let last = Duration::from_millis(self.last_success_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    /// `CLUSTER SLOTS` and `CLUSTER INFO` from the first seed (else known master)
    /// that answers, over a connection of its own: the cluster connection itself may
    /// be what is stuck.
    async fn probe(&self, known_masters: &[String]) -> Option<Probe> {
        let mut candidates = self.seeds.clone();
        for address in known_masters {
            let Some(template) = self.seeds.first() else {
                break;
            };
            let Some((host, port)) = address.rsplit_once(':') else {
                continue;
            };
            let Ok(port) = port.parse() else { continue };
            let addr = redis::ConnectionAddr::Tcp(host.to_owned(), port);
            candidates.push(template.clone().set_addr(addr));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        for info in candidates {
            let asked = async {
                let client = Client::open(info).ok()?;
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .ok()?;
                let slots: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                Some(Probe {
                    masters: topology::masters(&slots)?,
                    info: ClusterInfo::parse(&info),
                })
            };
            if let Ok(Some(probe)) = tokio::time::timeout(self.timeout * 3, asked).await {
                return Some(probe);
            }
        }
        None
    }
}

/// Has the topology checked when a call ends badly, or is dropped unfinished (its
/// caller's timeout fired first).
struct CallWatch<'a> {
    conn: &'a ClusterConn,
    settled: bool,
}

impl Drop for CallWatch<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.conn.suspect();
        }
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
            RedisConn::Cluster(cluster) => {
                let mut conn = cluster.inner();
                async move { conn.req_packed_commands(cmd, offset, count).await }.boxed()
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            RedisConn::Cluster(cluster) => cluster.inner().get_db(),
        }
    }
}
