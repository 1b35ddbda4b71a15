//! `deploy/grafana/turnpike.json` is a valid dashboard, and every metric it queries is
//! one the services expose: the collector's and the counter's real expositions (their
//! metrics code, rendered here), and the filter's stats as Envoy's `/stats/prometheus`
//! names them. Envoy exports the `wasmcustom` stat namespace without the `envoy_` prefix
//! and without the namespace: `wasmcustom.turnpike.allowed` is `turnpike_allowed`, and
//! its histogram `turnpike_callout_latency_ms_bucket` (`tests/tests/grafana.rs` scrapes
//! a running Envoy, counter and collector to hold this to what they really expose).

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/turnpike.json"))
        .expect("deploy/grafana/turnpike.json");
    serde_json::from_str(&text).expect("valid JSON")
}

/// Sample names an exposition can carry: every sample line's name, and for each
/// `# TYPE` line the names its type implies.
fn exposed(text: &str, into: &mut HashSet<String>) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            into.insert(name.to_owned());
            match kind {
                "counter" => {
                    into.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        into.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {}
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            into.insert(line[..end].to_owned());
        }
    }
}

/// The filter's stats: the `turnpike.<name>` literals it defines, as Envoy names them.
fn filter_stats(into: &mut HashSet<String>) {
    let source = std::fs::read_to_string(repo().join("src/wasm/metrics.rs")).expect("metrics.rs");
    for piece in source.split('"').skip(1).step_by(2) {
        if let Some(name) = piece.strip_prefix("turnpike.") {
            let name = format!("turnpike_{}", name.replace('.', "_"));
            for suffix in ["", "_bucket", "_sum", "_count"] {
                into.insert(format!("{name}{suffix}"));
            }
        }
    }
}

/// Identifiers in a PromQL expression that name Turnpike metrics.
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

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(d["schemaVersion"].as_u64() >= Some(30));
    let variables = d["templating"]["list"].as_array().expect("templating");
    assert!(variables
        .iter()
        .any(|v| v["name"] == "datasource" && v["type"] == "datasource"));
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() > 10);
    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().expect("x"),
            g["y"].as_u64().expect("y"),
            g["w"].as_u64().expect("w"),
            g["h"].as_u64().expect("h"),
        );
        assert!(w >= 1 && h >= 1 && x + w <= 24, "panel {id}: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "panel {id} overlaps another at {cx},{cy}"
                );
            }
        }
        match p["type"].as_str() {
            Some("row") => continue,
            Some("timeseries" | "stat" | "gauge" | "table") => {}
            other => panic!("panel {id}: unexpected type {other:?}"),
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {id}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} queries nothing");
        let mut refs = HashSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().expect("refId")));
            let expr = t["expr"].as_str().expect("expr");
            let depth = expr.chars().try_fold(0i32, |d, c| {
                let d = d + match c {
                    '(' | '{' | '[' => 1,
                    ')' | '}' | ']' => -1,
                    _ => 0,
                };
                (d >= 0).then_some(d)
            });
            assert_eq!(depth, Some(0), "unbalanced brackets in {expr}");
            assert!(
                !metric_names(expr).is_empty(),
                "{expr} names no Turnpike metric"
            );
        }
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_exposed_by_a_service() {
    let mut known = HashSet::new();
    exposed(
        &turnpike_collector::metrics::Metrics::new().encode(),
        &mut known,
    );
    exposed(
        &turnpike_counter::metrics::Metrics::default().render(),
        &mut known,
    );
    filter_stats(&mut known);
    assert!(known.contains("turnpike_collector_anomalies_total"));
    assert!(known.contains("turnpike_counter_consumes_total"));
    assert!(known.contains("turnpike_allowed"));

    let d = dashboard();
    let mut missing = BTreeSet::new();
    let mut used = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            for name in metric_names(t["expr"].as_str().expect("expr")) {
                if !known.contains(&name) {
                    missing.insert(name.clone());
                }
                used.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not exposed by any service: {missing:?}"
    );
    // Each of the three components is on the dashboard.
    for prefix in [
        "turnpike_collector_",
        "turnpike_counter_consumes",
        "turnpike_allowed",
    ] {
        assert!(used.iter().any(|n| n.starts_with(prefix)), "{prefix}");
    }
}
