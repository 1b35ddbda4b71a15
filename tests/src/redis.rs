//! A throwaway `redis-server` (no persistence) and reads through `redis-cli`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::paths::{redis_cli_bin, redis_server_bin};
use crate::ports::free_port;
use crate::process::Process;
use crate::wait::eventually;

pub struct Redis {
    pub port: u16,
    process: Process,
}

impl Redis {
    pub async fn start(dir: &Path) -> Redis {
        let port = free_port();
        let args = [
            "--port".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
        ];
        let process = Process::spawn("redis", &redis_server_bin(), args, dir);
        let mut redis = Redis { port, process };
        redis.wait_ready().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn wait_ready(&mut self) {
        let port = self.port;
        self.process.assert_running();
        eventually(
            "redis to answer PING",
            Duration::from_secs(10),
            || async move { (cli(port, &["PING"]).trim() == "PONG").then_some(()) },
        )
        .await;
    }

    /// SIGKILL: Redis disappears (connections reset, port closed).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts again on the same port (empty: no persistence).
    pub async fn restart(&mut self) {
        self.process.restart();
        self.wait_ready().await;
    }

    /// Runs `redis-cli --raw` against this server and returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
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

    /// Keys matching a glob pattern, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(&["--scan", "--pattern", pattern])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    }

    /// A glob for `tenant`'s keys: `rest` after the tenant, e.g. `q:requests:day:*`.
    pub fn tenant_keys(tenant: &str, rest: &str) -> String {
        format!(
            "tp:{{{:03}}}:{tenant}:{rest}",
            turnpike_plans::keys::bucket(tenant)
        )
    }

    /// The single key matching `pattern` and its integer value; panics if not exactly one.
    pub fn only_counter(&self, pattern: &str) -> (String, u64) {
        let keys = self.keys(pattern);
        match keys.as_slice() {
            [key] => {
                let value = self.get_u64(key).unwrap_or(0);
                (key.clone(), value)
            }
            _ => panic!("expected exactly one key matching {pattern}, found {keys:?}"),
        }
    }

    pub fn dbsize(&self) -> u64 {
        self.cli(&["DBSIZE"]).trim().parse().unwrap_or(0)
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(redis_cli_bin())
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
