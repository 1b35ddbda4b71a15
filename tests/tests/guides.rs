//! The guides in docs/ that a script can run are run here, as a user would follow
//! them: docs/meter-your-own-api.md is scripts/guide-own-api.sh.

use std::process::Command;

use turnpike_tests::paths::{envoy_bin, repo_root, target_dir, wasm_path};
use turnpike_tests::ports::free_port;

#[test]
fn meter_your_own_api_guide_works_step_by_step() {
    let work = tempfile::tempdir().unwrap();
    let mut command = Command::new(repo_root().join("scripts/guide-own-api.sh"));
    command
        .current_dir(repo_root())
        .env("GUIDE_DIR", work.path())
        .env("DEMO_BUILD", "0")
        .env("DEMO_BIN_DIR", target_dir().join("debug"))
        .env("DEMO_WASM", wasm_path())
        .env("DEMO_ENVOY", envoy_bin())
        .env("API_PORT", free_port().to_string());
    for name in [
        "ENVOY_PORT",
        "ADMIN_PORT",
        "COUNTER_PORT",
        "COLLECTOR_PORT",
        "UPSTREAM_PORT",
        "REDIS_PORT",
        "STRIPE_PORT",
    ] {
        command.env(name, free_port().to_string());
    }
    let out = command.output().expect("run scripts/guide-own-api.sh");
    let shown = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown}");
    // Each step's checks ran (the script exits at the first failed one).
    for step in 0..=10 {
        assert!(
            shown.contains(&format!("[guide] {step}. ")),
            "step {step} missing:\n{shown}"
        );
    }
    assert!(
        shown.contains("every step of docs/meter-your-own-api.md worked"),
        "{shown}"
    );
}
