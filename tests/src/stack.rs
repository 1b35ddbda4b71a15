//! One whole Turnpike deployment per test: Redis (one server, or a six-node Redis
//! Cluster with [`StackBuilder::redis_cluster`]), the counter (optionally several
//! replicas behind Envoy's counter cluster), the echo upstream and Envoy with the
//! filter (optionally one or more collectors, on SQLite or on a throwaway
//! PostgreSQL), all on fresh 127.0.0.1 ports, in a fresh temp dir. Nothing is shared
//! between tests. On a panic, every process's log tail is printed and the directory
//! is kept for inspection.

use std::path::Path;

use serde_json::Value;
use tempfile::TempDir;
use turnpike_devtools::token::{mint, sign, TokenSpec, DEFAULT_KID};

use crate::collector::Collector;
use crate::counter::Counter;
use crate::envoy::{Envoy, EnvoyOptions};
use crate::http::{client, Reply};
use crate::paths::repo_root;
use crate::ports::free_port;
use crate::postgres::{Durability, Postgres};
use crate::topology::{StackRedis, Topology};
use crate::upstream::Upstream;

pub struct StackBuilder {
    plans: String,
    filter_patch: Option<Value>,
    filter_config: Option<String>,
    values: Vec<(String, String)>,
    concurrency: u32,
    counter_args: Vec<String>,
    counters: usize,
    topology: Topology,
    collectors: usize,
    collector_postgres: bool,
    collector_stream: bool,
    collector_args: Vec<String>,
    generous_timeouts: bool,
}

impl StackBuilder {
    /// JSON merge patch applied to `envoy/filter-config.json`.
    pub fn filter_patch(mut self, patch: Value) -> Self {
        self.filter_patch = Some(patch);
        self
    }

    /// Render this filter config (JSON text) instead of `envoy/filter-config.json`.
    pub fn filter_config(mut self, json_text: &str) -> Self {
        self.filter_config = Some(json_text.to_owned());
        self
    }

    /// Fill the Envoy template's `${name}` with `value`, over the harness's own value.
    pub fn template_value(mut self, name: &str, value: &str) -> Self {
        self.values.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Envoy worker threads (default 1).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    pub fn counter_arg(mut self, arg: &str) -> Self {
        self.counter_args.push(arg.to_owned());
        self
    }

    /// Timeouts for a test that loads two cores with a debug counter and counts what
    /// gets in: the filter's callout 5 s, the counter's budget 4 s, its Redis calls
    /// 3 s, so that a slow moment does not become a `fail_closed` 503 that hides the
    /// count. Merged into the filter patch, whichever is set first.
    pub fn generous_timeouts(mut self) -> Self {
        self.generous_timeouts = true;
        self.counter_args
            .extend(["--budget-ms", "4000", "--redis-timeout-ms", "3000"].map(str::to_owned));
        self
    }

    /// `n` counter replicas (default 1), all endpoints of Envoy's counter cluster
    /// (round robin), all on the same Redis: [`Stack::counter`] is the first,
    /// [`Stack::counter_replicas`] the others.
    pub fn counter_replicas(mut self, n: usize) -> Self {
        assert!(n >= 1, "a stack needs a counter");
        self.counters = n;
        self
    }

    /// Run on this Redis topology (default: one server).
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// Run on a six-node Redis Cluster (three masters, three replicas): the counter
    /// and the collectors with `--redis-mode cluster` and every node as a seed.
    pub fn redis_cluster(self) -> Self {
        self.topology(Topology::Cluster)
    }

    /// The collectors do not read the counter's usage streams: the ledger holds only
    /// what the proxy's usage events say.
    pub fn collector_without_stream(mut self) -> Self {
        self.collector_stream = false;
        self
    }

    pub fn collector_arg(mut self, arg: &str) -> Self {
        self.collector_args.push(arg.to_owned());
        self
    }

    /// One collector (SQLite ledger in the test's directory) behind Envoy's collector
    /// cluster.
    pub fn with_collector(mut self) -> Self {
        self.collectors = self.collectors.max(1);
        self
    }

    /// `n` collector replicas, all endpoints of Envoy's collector cluster (round
    /// robin). More than one needs a shared ledger: see [`StackBuilder::collector_postgres`].
    pub fn collector_replicas(mut self, n: usize) -> Self {
        self.collectors = n;
        self
    }

    /// The collectors' ledger is a fresh PostgreSQL database (started for this stack,
    /// [`Stack::postgres`]) instead of SQLite. Implies [`StackBuilder::with_collector`].
    pub fn collector_postgres(mut self) -> Self {
        self.collector_postgres = true;
        self.with_collector()
    }

    pub async fn start(self) -> Stack {
        let dir = TestDir(Some(
            tempfile::Builder::new()
                .prefix("turnpike-e2e-")
                .tempdir()
                .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}")),
        ));
        let upstream = Upstream::start();
        let redis = StackRedis::start(self.topology, dir.path()).await;
        assert!(
            self.collectors <= 1 || self.collector_postgres,
            "{} collector replicas need a shared ledger: use collector_postgres()",
            self.collectors
        );
        let postgres = self.collector_postgres.then(|| {
            let pg = Postgres::start(Durability::Fast)
                .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
            pg.create_database(LEDGER_DATABASE)
                .unwrap_or_else(|e| panic!("cannot create the ledger database: {e}"));
            pg
        });
        let database_url = postgres.as_ref().map(|pg| pg.url(LEDGER_DATABASE));
        let mut collectors = Vec::new();
        // One after the other: the first one runs the ledger's migrations.
        for i in 0..self.collectors {
            let name = match i {
                0 => "collector".to_owned(),
                _ => format!("collector-{}", i + 1),
            };
            let mut args = self.collector_args.clone();
            if self.collector_stream {
                args.extend([
                    "--redis-mode".to_owned(),
                    redis.topology().mode().to_owned(),
                ]);
            }
            collectors.push(
                Collector::start_with_args(
                    dir.path(),
                    &name,
                    database_url.as_deref(),
                    self.collector_stream.then(|| redis.url()).as_deref(),
                    &args,
                )
                .await,
            );
        }
        // With a ledger, the counter re-seeds windows Redis lost from it.
        let mut counter_args = self.counter_args.clone();
        if let Some(first) = collectors.first() {
            counter_args.extend(["--ledger-url".to_owned(), first.url("")]);
        }
        let counter = Counter::start_named(
            dir.path(),
            "counter",
            &redis.args(),
            &self.plans,
            &counter_args,
        )
        .await;
        let mut counter_replicas = Vec::new();
        for i in 1..self.counters {
            counter_replicas.push(
                Counter::start_named(
                    dir.path(),
                    &format!("counter-{}", i + 1),
                    &redis.args(),
                    &self.plans,
                    &counter_args,
                )
                .await,
            );
        }
        let filter_patch = match (self.filter_patch, self.generous_timeouts) {
            (patch, false) => patch,
            (patch, true) => {
                let mut patch = patch.unwrap_or_else(|| serde_json::json!({}));
                patch["counter"]["timeout_ms"] = serde_json::json!(5000);
                Some(patch)
            }
        };
        let options = EnvoyOptions {
            concurrency: self.concurrency,
            filter_patch,
            filter_config: self.filter_config,
            values: self.values,
            upstream_port: upstream.port,
            counter_port: counter.port,
            more_counter_ports: counter_replicas.iter().map(|c| c.port).collect(),
            // Without a collector the filter's event flushes go to a closed port.
            collector_ports: match collectors.is_empty() {
                true => vec![free_port()],
                false => collectors.iter().map(|c| c.port).collect(),
            },
        };
        let envoy = Envoy::start(dir.path(), &options).await;
        let envoy_options = options.clone();
        let key_pem = std::fs::read(repo_root().join("config/demo/jwt-signing-key.pem"))
            .unwrap_or_else(|e| panic!("cannot read the demo signing key: {e}"));
        Stack {
            envoy,
            envoy_options,
            counter,
            counter_replicas,
            collectors,
            postgres,
            redis,
            upstream,
            http: client(),
            key_pem,
            dir,
        }
    }
}

/// The PostgreSQL database the collectors share.
pub const LEDGER_DATABASE: &str = "ledger";

/// Field order is drop order: Envoy goes first, the temp dir last.
pub struct Stack {
    pub envoy: Envoy,
    envoy_options: EnvoyOptions,
    /// The first counter (the only one unless [`StackBuilder::counter_replicas`]).
    pub counter: Counter,
    /// The other counter replicas, in the order of the counter cluster's endpoints.
    pub counter_replicas: Vec<Counter>,
    /// In the order of the collector cluster's endpoints; empty without collectors.
    pub collectors: Vec<Collector>,
    /// The collectors' ledger server, with [`StackBuilder::collector_postgres`].
    pub postgres: Option<Postgres>,
    pub redis: StackRedis,
    pub upstream: Upstream,
    pub http: reqwest::Client,
    key_pem: Vec<u8>,
    dir: TestDir,
}

/// The test's directory: removed when the test passes, kept (and its path printed)
/// when it panics, also while the stack is still starting.
struct TestDir(Option<TempDir>);

impl TestDir {
    fn path(&self) -> &Path {
        self.0
            .as_ref()
            .map(TempDir::path)
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("==== test files kept in {} ====", dir.keep().display());
            }
        }
    }
}

impl Stack {
    /// A stack whose counter uses these plans (TOML).
    pub fn builder(plans_toml: &str) -> StackBuilder {
        StackBuilder {
            plans: plans_toml.to_owned(),
            filter_patch: None,
            filter_config: None,
            values: Vec::new(),
            concurrency: 1,
            counter_args: Vec::new(),
            counters: 1,
            topology: Topology::Single,
            collectors: 0,
            collector_postgres: false,
            collector_stream: true,
            collector_args: Vec::new(),
            generous_timeouts: false,
        }
    }

    /// The (first) collector; panics if the stack has none.
    pub fn collector(&self) -> &Collector {
        self.collectors
            .first()
            .unwrap_or_else(|| panic!("this stack has no collector: use with_collector()"))
    }

    pub fn collector_mut(&mut self) -> &mut Collector {
        self.collectors
            .first_mut()
            .unwrap_or_else(|| panic!("this stack has no collector: use with_collector()"))
    }

    /// Runs `sql` on the collectors' PostgreSQL ledger; its rows (`psql -At`).
    pub fn ledger_sql(&self, sql: &str) -> String {
        let pg = self
            .postgres
            .as_ref()
            .unwrap_or_else(|| panic!("this stack has no PostgreSQL: use collector_postgres()"));
        pg.psql(LEDGER_DATABASE, sql)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Another Envoy configured like the first one (its own ports, in `<dir>/<name>`):
    /// a second proxy of the same fleet.
    pub async fn another_envoy(&self, name: &str) -> Envoy {
        let dir = self.dir().join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
        Envoy::start(&dir, &self.envoy_options).await
    }

    /// A valid demo token for `tenant`.
    pub fn token(&self, tenant: &str) -> String {
        self.mint(&TokenSpec::for_tenant(tenant))
    }

    /// A token signed with the demo key.
    pub fn mint(&self, spec: &TokenSpec) -> String {
        mint(spec, &self.key_pem, DEFAULT_KID).unwrap_or_else(|e| panic!("cannot mint: {e}"))
    }

    /// A token with exactly these claims, signed with the demo key: for claims that
    /// [`TokenSpec`] cannot express (a tenant that is a number, an object...).
    pub fn sign(&self, claims: &Value) -> String {
        sign(claims, &self.key_pem, DEFAULT_KID).unwrap_or_else(|e| panic!("cannot sign: {e}"))
    }

    /// A token signed with the forger's key (same kid, so only the signature is wrong).
    pub fn forged(&self, spec: &TokenSpec) -> String {
        let pem = std::fs::read(repo_root().join("tests/fixtures/forger-key.pem"))
            .unwrap_or_else(|e| panic!("cannot read the forger key: {e}"));
        mint(spec, &pem, DEFAULT_KID).unwrap_or_else(|e| panic!("cannot mint: {e}"))
    }

    /// A request through Envoy, for the caller to decorate and [`Stack::send`].
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.envoy.url(path))
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        Reply::from_request(request).await
    }

    /// `GET path` through Envoy, with a bearer token if given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.request(reqwest::Method::GET, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }
}
