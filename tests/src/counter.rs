//! The real `turnpike-counter` binary with a plans file in the test's directory.

use std::path::{Path, PathBuf};

use serde_json::Value;
use turnpike_wire::{ConsumeRequest, UsageResponse};

use crate::http::{client, Reply};
use crate::paths::counter_bin;
use crate::ports::free_port;
use crate::process::Process;
use crate::secrets::{READ_TOKEN, SERVICE_TOKEN};

pub struct Counter {
    pub port: u16,
    pub plans_path: PathBuf,
    process: Process,
    http: reqwest::Client,
}

impl Counter {
    /// Writes `plans_toml` to `<dir>/plans.toml` and starts the counter against
    /// `redis_url`, with `extra_args` appended; waits until `/healthz` says ok.
    pub async fn start(
        dir: &Path,
        redis_url: &str,
        plans_toml: &str,
        extra_args: &[String],
    ) -> Counter {
        let redis = ["--redis".to_owned(), redis_url.to_owned()];
        Self::start_named(dir, "counter", &redis, plans_toml, extra_args).await
    }

    /// A counter whose logs are `<dir>/<name>.stdout|.stderr`, with `redis_args`
    /// (`--redis URL [--redis-mode cluster]`); replicas share `<dir>/plans.toml`.
    pub async fn start_named(
        dir: &Path,
        name: &str,
        redis_args: &[String],
        plans_toml: &str,
        extra_args: &[String],
    ) -> Counter {
        let port = free_port();
        let plans_path = dir.join("plans.toml");
        std::fs::write(&plans_path, plans_toml)
            .unwrap_or_else(|e| panic!("cannot write plans: {e}"));
        let mut args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--plans".to_owned(),
            plans_path.display().to_string(),
        ];
        args.extend(redis_args.iter().cloned());
        args.extend(extra_args.iter().cloned());
        let envs = [
            ("RUST_LOG", "info"),
            ("NO_COLOR", "1"),
            ("TURNPIKE_SERVICE_TOKEN", SERVICE_TOKEN),
            ("TURNPIKE_READ_TOKEN", READ_TOKEN),
        ];
        let process = Process::spawn_with_env(name, &counter_bin(), args, envs, dir);
        let mut counter = Counter {
            port,
            plans_path,
            process,
            http: client(),
        };
        counter.wait_healthy().await;
        counter
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn wait_healthy(&mut self) {
        self.process.assert_running();
        crate::wait::until_http_ok(&self.http, &self.url("/healthz"), "the counter").await;
    }

    /// Rewrites the plans file in place (as an operator's editor would).
    pub fn write_plans(&self, plans_toml: &str) {
        std::fs::write(&self.plans_path, plans_toml)
            .unwrap_or_else(|e| panic!("cannot rewrite plans: {e}"));
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Restarts on the same port and waits for health.
    pub async fn restart(&mut self) {
        self.process.restart();
        self.wait_healthy().await;
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// `POST path` with the service token (what the filter sends).
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        Reply::from_request(
            self.http
                .post(self.url(path))
                .bearer_auth(SERVICE_TOKEN)
                .json(body),
        )
        .await
    }

    /// `GET path` with the read token.
    pub async fn get(&self, path: &str) -> Reply {
        Reply::from_request(self.http.get(self.url(path)).bearer_auth(READ_TOKEN)).await
    }

    /// A request with no credential, or another one, for the caller to send.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub async fn consume(&self, request: &ConsumeRequest) -> Reply {
        let body = serde_json::to_value(request).unwrap_or_default();
        self.post(turnpike_wire::counter_paths::CONSUME, &body)
            .await
    }

    /// The tenant's usage; panics unless the counter answers 200 with a UsageResponse.
    pub async fn usage(&self, tenant: &str) -> UsageResponse {
        let reply = self
            .get(&format!(
                "{}{tenant}/usage",
                turnpike_wire::counter_paths::USAGE_PREFIX
            ))
            .await;
        assert_eq!(reply.status, 200, "usage of {tenant}: {reply:?}");
        serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("usage body ({e}): {}", reply.body))
    }

    /// `used` of one limit of the tenant's plan.
    pub async fn used(&self, tenant: &str, limit: &str) -> u64 {
        let usage = self.usage(tenant).await;
        usage
            .limits
            .iter()
            .find(|l| l.name == limit)
            .map(|l| l.used)
            .unwrap_or_else(|| panic!("no limit {limit} in usage {usage:?}"))
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.body
    }

    /// `/metrics`, or None when the counter does not answer (killed, say).
    pub async fn metrics_if_running(&self) -> Option<String> {
        let response = self
            .http
            .get(self.url("/metrics"))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    }
}

/// Sum of every series of the Prometheus metric `name` in a text exposition.
pub fn prometheus_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .map(|v| v as u64)
        .sum()
}

impl Counter {
    /// All consumes the counter has handled, whatever their result.
    pub async fn consumes_total(&self) -> u64 {
        prometheus_sum(&self.metrics().await, "turnpike_counter_consumes_total")
    }

    /// Consumes this counter process admitted since it started.
    pub async fn consumes_allowed(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("turnpike_counter_consumes_total{result=\"allowed\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::prometheus_sum;

    #[test]
    fn prometheus_sum_adds_all_labelled_series_of_one_metric() {
        let text = "# TYPE a counter\na{result=\"x\"} 2\na{result=\"y\"} 3\nab 7\na_total 1\n";
        assert_eq!(prometheus_sum(text, "a"), 5);
        assert_eq!(prometheus_sum(text, "ab"), 7);
        assert_eq!(prometheus_sum(text, "missing"), 0);
    }
}
