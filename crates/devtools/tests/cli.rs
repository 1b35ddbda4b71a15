//! `turnpike-dev` as a user runs it: from any directory, with the key found by itself,
//! saying how long the token lives.

use std::path::Path;
use std::process::Command;

fn dev(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_turnpike-dev"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TURNPIKE_DEMO_KEY")
        .output()
        .expect("run turnpike-dev")
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn mint_works_from_another_directory_and_says_when_the_token_expires() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = dev(
        elsewhere.path(),
        &["mint", "--tenant", "acme", "--ttl-secs", "120"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    assert!(
        stderr.contains("tenant acme") && stderr.contains("(2 min, --ttl-secs)"),
        "{stderr}"
    );
    assert!(stderr.contains("Jwt is expired"), "{stderr}");

    // -q: the token alone, for scripts.
    let out = dev(elsewhere.path(), &["mint", "--tenant", "acme", "-q"]);
    assert!(out.status.success() && out.stderr.is_empty(), "{:?}", out);

    // The JWKS from elsewhere is the committed one: the key found is the demo key.
    let out = dev(elsewhere.path(), &["jwks"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("config/demo/jwks.json")).unwrap())
            .unwrap();
    assert_eq!(printed, committed);
}

#[test]
fn the_key_comes_from_the_flag_or_the_environment_and_a_wrong_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("my-key.pem");
    std::fs::copy(repo().join("config/demo/jwt-signing-key.pem"), &copy).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_turnpike-dev"))
        .args(["mint", "--tenant", "acme", "-q"])
        .current_dir(dir.path())
        .env("TURNPIKE_DEMO_KEY", &copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = dev(
        dir.path(),
        &["mint", "--tenant", "acme", "--key", "nope.pem"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("turnpike-dev: nope.pem: "), "{stderr}");
}
