//! Real Envoy with the real filter: the repository's template rendered with fresh
//! ports, the freshly built wasm and the demo JWKS.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use turnpike_devtools::render::{render_envoy, values_with_defaults};

use crate::http::client;
use crate::paths::{envoy, repo_root, version_of_build, wasm_path};
use crate::ports::free_port;
use crate::process::Process;

/// What differs between test stacks.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    pub concurrency: u32,
    /// JSON merge patch for the filter config.
    pub filter_patch: Option<Value>,
    /// The filter config to render instead of `envoy/filter-config.json` (e.g. the
    /// pluginConfig of the Istio WasmPlugin manifest).
    pub filter_config: Option<String>,
    /// Template values that override the harness's own (cluster names, payload key).
    pub values: Vec<(String, String)>,
    pub upstream_port: u16,
    pub counter_port: u16,
    /// More endpoints of the counter cluster (counter replicas), after `counter_port`.
    pub more_counter_ports: Vec<u16>,
    /// The collector cluster's endpoints (round robin); at least one. The template has
    /// one endpoint; more are added to the rendered YAML.
    pub collector_ports: Vec<u16>,
}

pub struct Envoy {
    pub port: u16,
    pub admin_port: u16,
    process: Process,
    http: reqwest::Client,
}

impl Envoy {
    pub async fn start(dir: &Path, options: &EnvoyOptions) -> Envoy {
        let mut envoy = Envoy::launch(dir, options);
        envoy.wait_ready().await;
        envoy
    }

    /// Starts Envoy with a config it must refuse (e.g. a plugin configuration the filter
    /// rejects): waits for it to exit and returns everything it logged. Panics if it
    /// becomes ready instead, or is still running after 60 s.
    pub async fn start_refused(dir: &Path, options: &EnvoyOptions) -> String {
        let mut envoy = Envoy::launch(dir, options);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let url = envoy.admin_url("/ready");
        loop {
            if let Some(status) = envoy.process.exited() {
                assert!(
                    !status.success(),
                    "Envoy exited with {status}, not an error"
                );
                return envoy.process.logs();
            }
            if let Ok(response) = envoy.http.get(&url).send().await {
                if response.status().as_u16() == 200 {
                    panic!(
                        "Envoy started, but was expected to refuse its config; logs:\n{}",
                        envoy.process.log_tail(60)
                    );
                }
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "Envoy neither ready nor exited after 60 s; logs:\n{}",
                    envoy.process.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Renders the config and spawns Envoy, without waiting for it.
    fn launch(dir: &Path, options: &EnvoyOptions) -> Envoy {
        let root = repo_root();
        let read = |rel: &str| {
            std::fs::read_to_string(root.join(rel))
                .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
        };
        let (port, admin_port) = (free_port(), free_port());
        let (&first_collector_port, more_collector_ports) = options
            .collector_ports
            .split_first()
            .unwrap_or_else(|| panic!("EnvoyOptions::collector_ports is empty"));
        let mut values = values_with_defaults([
            ("ADMIN_ADDRESS", "127.0.0.1".to_owned()),
            ("ADMIN_PORT", admin_port.to_string()),
            ("LISTEN_ADDRESS", "127.0.0.1".to_owned()),
            ("LISTEN_PORT", port.to_string()),
            (
                "JWKS_PATH",
                root.join("config/demo/jwks.json").display().to_string(),
            ),
            ("WASM_PATH", wasm_path().display().to_string()),
            ("UPSTREAM_HOST", "127.0.0.1".to_owned()),
            ("UPSTREAM_PORT", options.upstream_port.to_string()),
            ("COUNTER_HOST", "127.0.0.1".to_owned()),
            ("COUNTER_PORT", options.counter_port.to_string()),
            ("COLLECTOR_HOST", "127.0.0.1".to_owned()),
            ("COLLECTOR_PORT", first_collector_port.to_string()),
        ]);
        values.extend(options.values.iter().cloned());
        let filter_config = match &options.filter_config {
            Some(text) => text.clone(),
            None => read("envoy/filter-config.json"),
        };
        let yaml = render_envoy(
            &read("envoy/envoy.yaml.tmpl"),
            &filter_config,
            &values,
            options.filter_patch.as_ref(),
        )
        .unwrap_or_else(|e| panic!("cannot render the Envoy config: {e}"));
        let collector_cluster = values
            .get("COLLECTOR_CLUSTER")
            .unwrap_or_else(|| panic!("no COLLECTOR_CLUSTER template value"));
        let yaml = add_endpoints(
            &yaml,
            collector_cluster,
            first_collector_port,
            more_collector_ports,
        );
        let counter_cluster = values
            .get("COUNTER_CLUSTER")
            .unwrap_or_else(|| panic!("no COUNTER_CLUSTER template value"));
        let yaml = add_endpoints(
            &yaml,
            counter_cluster,
            options.counter_port,
            &options.more_counter_ports,
        );
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, yaml)
            .unwrap_or_else(|e| panic!("cannot write envoy.yaml: {e}"));
        let log_path = dir.join("envoy.log");
        let args = [
            "-c".to_owned(),
            config_path.display().to_string(),
            "--concurrency".to_owned(),
            options.concurrency.to_string(),
            // Unique per running Envoy (the admin port is), so parallel tests never share
            // hot-restart shared memory.
            "--base-id".to_owned(),
            admin_port.to_string(),
            "-l".to_owned(),
            // TURNPIKE_ENVOY_LOG_LEVEL=debug when a test needs to see inside Envoy.
            std::env::var("TURNPIKE_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "warning".to_owned()),
            "--log-path".to_owned(),
            log_path.display().to_string(),
            // Tests read the log: flush it often (Envoy's default is every 10 s).
            "--file-flush-interval-msec".to_owned(),
            "100".to_owned(),
        ];
        let envoy_bin = envoy();
        // Captured with the test's output: a failure report names the Envoy it ran on.
        eprintln!(
            "envoy: starting Envoy {} ({}) in {}",
            envoy_bin.version,
            envoy_bin.path.display(),
            dir.display()
        );
        // Secrets reach the filter through Envoy's environment (vm_config
        // environment_variables), never through its configuration.
        let envs = [
            ("TURNPIKE_COUNTER_TOKEN", crate::secrets::SERVICE_TOKEN),
            ("TURNPIKE_INGEST_SECRET", crate::secrets::INGEST_SECRET),
        ];
        let mut process = Process::spawn_with_env("envoy", &envoy_bin.path, args, envs, dir);
        process.add_log_file(log_path);
        Envoy {
            port,
            admin_port,
            process,
            http: client(),
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let url = self.admin_url("/ready");
        loop {
            self.process.assert_running();
            if let Ok(response) = self.http.get(&url).send().await {
                if response.status().as_u16() == 200 {
                    return;
                }
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "Envoy not ready after 60 s; logs:\n{}",
                    self.process.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// The version the running Envoy reports on its admin `/server_info` (`1.36.4`).
    pub async fn server_version(&self) -> String {
        let info: Value = self
            .http
            .get(self.admin_url("/server_info"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("Envoy admin /server_info: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("Envoy /server_info JSON: {e}"));
        let build = info["version"]
            .as_str()
            .unwrap_or_else(|| panic!("no version in /server_info: {info}"));
        version_of_build(build).unwrap_or_else(|| panic!("no version in {build:?}"))
    }

    /// Counters and gauges whose name matches the regex `filter`.
    pub async fn stats(&self, filter: &str) -> BTreeMap<String, u64> {
        let response = self
            .http
            .get(self.admin_url("/stats"))
            .query(&[("format", "json"), ("filter", filter)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("Envoy admin /stats: {e}"));
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("Envoy /stats JSON: {e}"));
        body["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["value"].as_u64()?)))
            .collect()
    }

    /// The filter's counter `name` (`wasmcustom.turnpike.<name>`), 0 when not yet defined.
    pub async fn filter_stat(&self, name: &str) -> u64 {
        self.stat(&format!("wasmcustom.turnpike.{name}")).await
    }

    /// One stat by its full name (`cluster.upstream.upstream_rq_total`); 0 if absent.
    pub async fn stat(&self, full: &str) -> u64 {
        self.stats(&format!("^{}$", full.replace('.', "\\.")))
            .await
            .get(full)
            .copied()
            .unwrap_or(0)
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Adds an endpoint on each of `more_ports` to `cluster`'s load assignment in rendered
/// Envoy YAML, next to the existing endpoint on `port` (same host, same indentation).
/// Panics unless that endpoint is found exactly once inside the cluster's
/// `load_assignment`, so a changed template cannot silently leave one endpoint.
pub fn add_endpoints(yaml: &str, cluster: &str, port: u16, more_ports: &[u16]) -> String {
    if more_ports.is_empty() {
        return yaml.to_owned();
    }
    let anchor = format!("cluster_name: {cluster}\n");
    let starts: Vec<usize> = yaml.match_indices(&anchor).map(|(i, _)| i).collect();
    let [start] = starts.as_slice() else {
        panic!(
            "expected one `{}` in the Envoy config, found {}",
            anchor.trim(),
            starts.len()
        );
    };
    let section = &yaml[*start..];
    // The cluster's load assignment ends where the next top-level list item starts.
    let section_end = section
        .find("\n  - name:")
        .map_or(yaml.len(), |i| start + i + 1);
    let port_text = format!("port_value: {port} }}");
    let hits: Vec<usize> = yaml[*start..section_end]
        .match_indices(&port_text)
        .map(|(i, _)| start + i)
        .collect();
    let [hit] = hits.as_slice() else {
        panic!(
            "expected one endpoint with `{port_text}` in cluster {cluster}, found {}:\n{}",
            hits.len(),
            &yaml[*start..section_end]
        );
    };
    // The endpoint block: from its `- endpoint:` line to the end of its address line.
    let block_start = yaml[..*hit]
        .rfind("- endpoint:")
        .and_then(|i| yaml[..i].rfind('\n').map(|nl| nl + 1))
        .filter(|&i| i > *start)
        .unwrap_or_else(|| panic!("no `- endpoint:` before {port_text} in cluster {cluster}"));
    let block_end = yaml[*hit..].find('\n').map_or(yaml.len(), |i| hit + i + 1);
    let block = &yaml[block_start..block_end];
    let mut out = String::with_capacity(yaml.len() + more_ports.len() * block.len());
    out.push_str(&yaml[..block_end]);
    for more in more_ports {
        out.push_str(&block.replace(&port_text, &format!("port_value: {more} }}")));
    }
    out.push_str(&yaml[block_end..]);
    let added = out.matches("- endpoint:").count() - yaml.matches("- endpoint:").count();
    assert_eq!(added, more_ports.len(), "endpoints added to {cluster}");
    out
}

#[cfg(test)]
mod tests {
    use super::add_endpoints;

    const YAML: &str = "\
  clusters:
  - name: counter
    load_assignment:
      cluster_name: counter
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 7000 }

  - name: collector
    load_assignment:
      cluster_name: collector
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 7000 }
";

    #[test]
    fn more_endpoints_are_added_to_the_named_cluster_only() {
        let out = add_endpoints(YAML, "collector", 7000, &[7001, 7002]);
        let (counter, collector) = out.split_once("- name: collector").unwrap();
        assert_eq!(counter.matches("- endpoint:").count(), 1, "{out}");
        assert_eq!(collector.matches("- endpoint:").count(), 3, "{out}");
        for port in [7000, 7001, 7002] {
            let line = format!(
                "        - endpoint:\n            address:\n              \
                 socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n"
            );
            assert!(collector.contains(&line), "{port} in {out}");
        }
    }

    #[test]
    fn no_more_ports_leaves_the_config_alone() {
        assert_eq!(add_endpoints(YAML, "collector", 7000, &[]), YAML);
    }

    #[test]
    #[should_panic(expected = "expected one endpoint")]
    fn an_endpoint_that_is_not_in_the_cluster_is_an_error() {
        add_endpoints(YAML, "collector", 7999, &[7001]);
    }
}
