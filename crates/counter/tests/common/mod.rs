//! Test harness: a real `redis-server` and the real `turnpike-counter` binary on free
//! 127.0.0.1 ports. Guards kill their process on drop, also when a test panics, and
//! print the counter's log when it does.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// What the harness's counters accept for consume/refund, and for reads.
pub const SERVICE_TOKEN: &str = "test-service-token-0123456789";
pub const READ_TOKEN: &str = "test-read-token-0123456789";

/// The Redis key of `tenant`'s `meter` counter in the `window` starting at `start`.
pub fn window_key(tenant: &str, meter: &str, window: &str, start: i64) -> String {
    let window = window.parse().expect("a window name");
    turnpike_counter::keys::TenantKeys::new(tenant).window(meter, window, start)
}

/// A glob for every key of `tenant` matching `rest` (e.g. `q:requests:month:*`).
pub fn tenant_keys(tenant: &str, rest: &str) -> String {
    format!(
        "tp:{{{:03}}}:{tenant}:{rest}",
        turnpike_counter::keys::bucket(tenant)
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A throwaway redis-server without persistence.
pub struct Redis {
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// With extra `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with(extra: &[&str]) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let port = self.port;
        let needs_auth = self.extra.iter().any(|a| a == "--requirepass");
        wait_until("redis", Duration::from_secs(5), || {
            if needs_auth {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            } else {
                redis_ping(port)
            }
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Send a signal to the running redis-server (e.g. SIGSTOP to make it hang).
    pub fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("redis running");
        let pid = i32::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill redis");
    }

    /// The entries of `tenant`'s usage stream (its bucket's, filtered on `t`), oldest
    /// first, each with its stream id under `stream_id`.
    pub fn stream_entries(&self, tenant: &str) -> Vec<BTreeMap<String, String>> {
        let key = turnpike_counter::keys::TenantKeys::new(tenant).stream();
        let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query(&mut self.conn())
            .expect("XRANGE");
        reply
            .into_iter()
            .map(|(id, fields)| {
                let mut entry: BTreeMap<String, String> = fields.into_iter().collect();
                entry.insert("stream_id".into(), id);
                entry
            })
            .filter(|e| e.get("t").map(String::as_str) == Some(tenant))
            .collect()
    }

    pub fn conn(&self) -> redis::Connection {
        let url = match self.extra.iter().position(|a| a == "--requirepass") {
            Some(i) => format!(
                "redis://:{}@127.0.0.1:{}",
                self.extra.get(i + 1).map_or("", String::as_str),
                self.port
            ),
            None => self.url(),
        };
        redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// The integer at `key`, or None when absent.
    pub fn get(&self, key: &str) -> Option<u64> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.conn())
            .expect("GET")
    }

    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.conn())
            .expect("KEYS");
        keys.sort();
        keys
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A SIGSTOPped server ignores SIGKILL until continued? No: SIGKILL works on
        // stopped processes too, so a test that panics mid-hang still cleans up.
        self.stop();
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// The real counter binary with a plans file in its own temp dir.
pub struct Counter {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub plans: PathBuf,
    child: Child,
}

impl Counter {
    pub fn start(redis: &Redis, plans_toml: &str) -> Counter {
        Counter::start_with(redis, plans_toml, &[])
    }

    pub fn start_with(redis: &Redis, plans_toml: &str, extra: &[&str]) -> Counter {
        let dir = tempfile::tempdir().expect("temp dir");
        let plans = dir.path().join("plans.toml");
        std::fs::write(&plans, plans_toml).expect("write plans");
        Counter::start_on(redis, dir, plans, extra)
    }

    /// Start with a prepared `plans` path inside `dir`.
    pub fn start_on(
        redis: &Redis,
        dir: tempfile::TempDir,
        plans: PathBuf,
        extra: &[&str],
    ) -> Counter {
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("counter.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_turnpike-counter"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--redis")
            .arg(redis.url())
            .arg("--plans")
            .arg(&plans)
            .args(extra)
            .env("TURNPIKE_SERVICE_TOKEN", SERVICE_TOKEN)
            .env("TURNPIKE_READ_TOKEN", READ_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("counter starts");
        let counter = Counter {
            port,
            dir,
            plans,
            child,
        };
        wait_until("counter", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        counter
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill counter");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("counter.log")).unwrap_or_default()
    }

    /// Replace the plans file atomically (write + rename), as deploy tools do.
    pub fn write_plans(&self, toml: &str) {
        let tmp = self.dir.path().join("plans.toml.tmp");
        std::fs::write(&tmp, toml).expect("write plans");
        std::fs::rename(&tmp, &self.plans).expect("rename plans");
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        kill(&mut self.child);
        if std::thread::panicking() {
            eprintln!("---- counter log ----\n{}", self.log());
        }
    }
}

/// Exit status, stdout and stderr of `turnpike-counter --validate --plans FILE`.
pub fn validate(plans_toml: &str) -> (ExitStatus, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("plans.toml");
    std::fs::write(&path, plans_toml).expect("write plans");
    validate_path(&path)
}

pub fn validate_path(path: &Path) -> (ExitStatus, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_turnpike-counter"))
        .arg("--validate")
        .arg("--plans")
        .arg(path)
        .env_remove("TURNPIKE_COUNTER_LISTEN")
        .env_remove("TURNPIKE_REDIS_URL")
        .output()
        .expect("run --validate");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small HTTP client for the counter's API.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(counter: &Counter) -> Api {
        Api::with_client(counter, reqwest::Client::new())
    }

    pub fn h2c(counter: &Counter) -> Api {
        let http = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("h2c client");
        Api::with_client(counter, http)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn with_client(counter: &Counter, http: reqwest::Client) -> Api {
        Api {
            http,
            base: counter.url(""),
        }
    }

    /// POST /v1/consume; returns (status, JSON body).
    pub async fn consume(&self, id: &str, tenant: &str, meters: &[(&str, u64)]) -> (u16, Value) {
        let meters: Vec<Value> = meters
            .iter()
            .map(|(m, c)| serde_json::json!({ "meter": m, "cost": c }))
            .collect();
        self.post(
            "/v1/consume",
            serde_json::json!({ "id": id, "tenant": tenant, "meters": meters }),
        )
        .await
    }

    pub async fn refund(&self, id: &str, tenant: &str) -> (u16, Value) {
        self.post(
            "/v1/refund",
            serde_json::json!({ "id": id, "tenant": tenant }),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await.0
    }

    /// POST raw bytes; returns ((status, JSON body), content-type).
    pub async fn post_raw(&self, path: &str, body: String) -> ((u16, Value), String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(SERVICE_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let content_type = content_type(&resp);
        (
            (resp.status().as_u16(), json_body(resp).await),
            content_type,
        )
    }

    pub async fn get(&self, path: &str) -> (u16, String, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .expect("request sent");
        let content_type = content_type(&resp);
        let status = resp.status().as_u16();
        (status, content_type, resp.text().await.expect("body"))
    }

    /// The value of one series of `GET /metrics`, named with its labels as printed.
    pub async fn metric(&self, series: &str) -> u64 {
        let (_, _, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn json_body(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Wait (async) until `check` holds, up to `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
