//! `deploy/grafana/turnpike.json` against the running services: every metric the
//! dashboard queries is in what a running Envoy with the filter (`/stats/prometheus`),
//! counter and collector (`/metrics`) expose. Host-facing: how Envoy names the filter's
//! `wasmcustom` stats in Prometheus is Envoy's business (1.36–1.40: the namespace is
//! stripped and no `envoy_` prefix is added, `turnpike_allowed`), so `make test-matrix`
//! checks it on every supported Envoy. The dashboard's structure is checked offline in
//! `crates/collector/tests/grafana_dashboard.rs`.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;
use turnpike_tests::paths::repo_root;
use turnpike_tests::Stack;

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "daily", meter = "requests", window = "day", max = 1000 } ]
"#;

/// Sample names an exposition carries, and those its `# TYPE` lines imply (a family
/// without samples yet, `_total` of counters, the series of histograms).
fn exposed(text: &str, into: &mut HashSet<String>) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                into.insert(name.to_owned());
                if kind == "counter" {
                    into.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        into.insert(format!("{name}{suffix}"));
                    }
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            into.insert(line[..end].to_owned());
        }
    }
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else {
            if current.starts_with("turnpike_") {
                names.push(current.clone());
            }
            current.clear();
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_on_the_dashboard_is_scraped_from_the_running_services() {
    let stack = Stack::builder(PLANS).with_collector().start().await;
    let mut known = HashSet::new();
    for url in [
        stack.envoy.admin_url("/stats/prometheus"),
        stack.counter.url("/metrics"),
        stack.collector().url("/metrics"),
    ] {
        let response = stack.http.get(&url).send().await.expect("scrape");
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        exposed(&response.text().await.expect("body"), &mut known);
    }
    assert!(
        known.contains("turnpike_allowed"),
        "Envoy's name for the filter's stats"
    );

    let text = std::fs::read_to_string(repo_root().join("deploy/grafana/turnpike.json"))
        .expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("JSON");
    let mut missing = BTreeSet::new();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            for name in metric_names(target["expr"].as_str().expect("expr")) {
                checked += 1;
                if !known.contains(&name) {
                    missing.insert(name);
                }
            }
        }
    }
    assert!(checked > 30, "{checked}");
    assert!(missing.is_empty(), "queried but not exposed: {missing:?}");
}
