//! What an Istio sidecar would run, short of a cluster: the manifests in deploy/istio/
//! pass offline validation, and Envoy configured with the WasmPlugin's own pluginConfig
//! (callout clusters under Istio's `outbound|PORT||FQDN` names, the verified payload under
//! Istio's metadata key, credentials named by environment variable) meters requests end
//! to end. The config is used exactly as the WasmPlugin carries it: the test's Envoy has
//! the two variables in its own environment, as the sidecar has them from the
//! `istio-proxy` container's Secret-backed env (deploy/istio/demo-api.yaml), and hands
//! them to the VM as the WasmPlugin's `vmConfig.env ... valueFrom: HOST` does.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use turnpike_tests::paths::repo_root;
use turnpike_tests::{eventually, Stack};

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "daily", meter = "requests", window = "day", max = 3 } ]
"#;

fn validate(args: &[&str]) -> std::process::Output {
    let script = repo_root().join("deploy/istio/validate.sh");
    Command::new(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
}

#[test]
fn istio_manifests_pass_offline_schema_validation() {
    let out = validate(&[]);
    assert!(
        out.status.success(),
        "deploy/istio/validate.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasmplugin_config_with_istio_cluster_names_meters_requests() {
    let out = validate(&["--print-plugin-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin_config = String::from_utf8(out.stdout).expect("UTF-8 plugin config");
    let config: Value = serde_json::from_str(&plugin_config).expect("plugin config is JSON");
    let counter_cluster = config["counter"]["cluster"]
        .as_str()
        .expect("counter.cluster");
    let collector_cluster = config["collector"]["cluster"]
        .as_str()
        .expect("collector.cluster");
    assert!(
        counter_cluster.starts_with("outbound|"),
        "{counter_cluster}"
    );
    assert_eq!(config["tenant"]["payload_key"], "payload");
    // Credentials come from the VM's environment, never inline in the plugin config
    // (which istioctl and Envoy's /config_dump show to anyone who can read them).
    assert_eq!(config["counter"]["token_env"], "TURNPIKE_COUNTER_TOKEN");
    assert_eq!(config["collector"]["secret_env"], "TURNPIKE_INGEST_SECRET");
    for (section, inline) in [("counter", "token"), ("collector", "secret")] {
        assert!(
            config[section].get(inline).is_none(),
            "pluginConfig {section}.{inline} is inline: {plugin_config}"
        );
    }

    let stack = Stack::builder(PLANS)
        .with_collector()
        .filter_config(&plugin_config)
        .template_value("COUNTER_CLUSTER", counter_cluster)
        .template_value("COLLECTOR_CLUSTER", collector_cluster)
        // Istio (>= 1.21) has jwt_authn store the verified payload under `payload`.
        .template_value("JWT_PAYLOAD_KEY", "payload")
        .start()
        .await;

    let token = stack.token("istio-tenant");
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(stack.get("/v1/things", Some(&token)).await.status);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429]);

    let stats = stack.envoy.stats("upstream_rq_total").await;
    let callouts = stats
        .get(&format!("cluster.{counter_cluster}.upstream_rq_total"))
        .copied();
    assert_eq!(
        callouts,
        Some(4),
        "callouts through {counter_cluster}: {stats:#?}"
    );

    let collector = stack.collector();
    let requests = eventually(
        "3 billable requests in the ledger",
        Duration::from_secs(20),
        || async {
            let usage = collector
                .get_json("/v1/tenants/istio-tenant/usage?window=day")
                .await?;
            let total = usage["meters"]
                .as_array()?
                .iter()
                .find(|m| m["meter"] == "requests")?["quantity"]
                .as_u64()?;
            (total == 3).then_some(total)
        },
    )
    .await;
    assert_eq!(requests, 3);
}
