//! Test support: a ledger database per test (SQLite file or throwaway PostgreSQL), the
//! real `turnpike-collector` binary as a child process, and event builders.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use turnpike_collector::ledger::Ledger;

pub use turnpike_tests::ports::free_port;
pub use turnpike_tests::postgres::{Durability, Postgres};

pub const SECRET: &str = "test-ingest-secret-0123";
pub const READ_TOKEN: &str = "test-read-token-0123456";
pub const BATCH: &str = "application/cloudevents-batch+json";

/// The ledger database one test uses.
pub struct TestDb {
    url: String,
    pub dir: tempfile::TempDir,
    _postgres: Option<Postgres>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        TestDb {
            url,
            dir,
            _postgres: None,
        }
    }

    /// Fails the test (never skips it) when PostgreSQL cannot be started.
    pub fn postgres() -> TestDb {
        Self::postgres_with(Durability::Fast)
    }

    pub fn postgres_with(durability: Durability) -> TestDb {
        let pg =
            Postgres::start(durability).unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
        pg.create_database("ledger")
            .unwrap_or_else(|e| panic!("cannot create database: {e}"));
        let url = pg.url("ledger");
        let dir = tempfile::tempdir().expect("temp dir");
        TestDb {
            url,
            dir,
            _postgres: Some(pg),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A second, direct connection to the ledger, to check what is stored.
    pub async fn ledger(&self) -> Ledger {
        Ledger::open(&self.url, 2).await.expect("open ledger")
    }

    pub async fn count(&self) -> i64 {
        let ledger = self.ledger().await;
        let n = ledger.count_events().await.expect("count events");
        ledger.close().await;
        n
    }
}

/// A running `turnpike-collector`; SIGKILLed when dropped.
pub struct Collector {
    child: Child,
    pub base: String,
    log: PathBuf,
}

impl Collector {
    pub async fn start(db: &TestDb, extra_args: &[&str]) -> Collector {
        Self::start_with_env(db, extra_args, &[]).await
    }

    /// Like [`Collector::start`], with extra environment variables.
    pub async fn start_with_env(
        db: &TestDb,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Collector {
        let port = free_port();
        let log = db.dir.path().join(format!("collector-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_turnpike-collector"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database",
                db.url(),
            ])
            .args(extra_args)
            .env("TURNPIKE_INGEST_SECRET", SECRET)
            .env("TURNPIKE_READ_TOKEN", READ_TOKEN)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn turnpike-collector");
        let mut collector = Collector {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        collector.wait_healthy().await;
        collector
    }

    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("collector exited early ({status}):\n{}", self.log_text());
            }
            if let Ok(r) = client.get(self.url("/healthz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "collector not healthy in 30 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The exit status, if the process has exited (a failpoint aborted it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: no shutdown, no flush, like a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.child.wait().expect("wait collector")
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A valid usage event.
pub fn event(id: &str, tenant: &str, time: &str, decision: &str, meters: &[(&str, u64)]) -> Value {
    let meters: Vec<Value> = meters
        .iter()
        .map(|(m, c)| json!({ "meter": m, "cost": c }))
        .collect();
    json!({
        "specversion": "1.0", "id": id, "source": "//turnpike/envoy/test",
        "type": "dev.turnpike.usage.v1", "subject": tenant, "time": time,
        "datacontenttype": "application/json",
        "data": { "meters": meters, "plan": "free", "method": "GET", "route": "api",
                  "status": if decision == "denied" { 429 } else { 200 },
                  "request_bytes": 0, "response_bytes": 42, "duration_ms": 3, "decision": decision }
    })
}

/// `n` allowed events for `tenant`, ids `{prefix}-{i}`.
pub fn events(prefix: &str, tenant: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            event(
                &format!("{prefix}-{i}"),
                tenant,
                "2026-03-01T12:00:00Z",
                "allowed",
                &[("requests", 1)],
            )
        })
        .collect()
}

/// POST a batch with the right secret and content type; returns status and JSON body.
pub async fn post_batch(
    client: &reqwest::Client,
    collector: &Collector,
    batch: &[Value],
) -> (u16, Value) {
    post_raw(
        client,
        collector,
        Some(SECRET),
        BATCH,
        serde_json::to_vec(batch).expect("json"),
    )
    .await
}

pub async fn post_raw(
    client: &reqwest::Client,
    collector: &Collector,
    secret: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = client
        .post(collector.url("/v1/events"))
        .header("content-type", content_type)
        .body(body);
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.expect("POST /v1/events");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

pub async fn get_json(client: &reqwest::Client, collector: &Collector, path: &str) -> (u16, Value) {
    let response = client
        .get(collector.url(path))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (
        status,
        response.json::<Value>().await.unwrap_or(Value::Null),
    )
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}
