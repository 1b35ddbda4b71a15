//! When the counter cannot start, it says so once, on one plain line, naming the flag,
//! the path or address, and what to do; and it exits 1.

use std::net::TcpListener;
use std::process::{Command, Output};

const PLANS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/plans.toml");

fn counter(args: &[&str], tokens: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_turnpike-counter"));
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("TURNPIKE_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    if tokens {
        command
            .env("TURNPIKE_SERVICE_TOKEN", "startup-test-service-token")
            .env("TURNPIKE_READ_TOKEN", "startup-test-read-token-0");
    }
    command.output().expect("run turnpike-counter")
}

/// The one error line; panics unless the exit status is 1, the error is printed
/// exactly once, and nothing is coloured.
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI codes in: {stderr:?}");
    assert!(
        !stderr.contains("ERROR"),
        "the error was also logged: {stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("turnpike-counter: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_owned()
}

fn has_all(line: &str, parts: &[&str]) {
    for part in parts {
        assert!(line.contains(part), "`{part}` missing in: {line}");
    }
}

#[test]
fn a_missing_or_invalid_plans_file_names_the_flag_the_path_and_the_fix() {
    let base = ["--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1"];
    let line = error_line(&counter(
        &[&base[..], &["--plans", "/missing-dir/plans.toml"]].concat(),
        true,
    ));
    has_all(
        &line,
        &[
            "--plans",
            "/missing-dir/plans.toml",
            "No such file",
            "TURNPIKE_PLANS",
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("plans.toml");
    std::fs::write(&bad, "default_plan = \"gold\"\n").unwrap();
    let bad = bad.display().to_string();
    let line = error_line(&counter(&[&base[..], &["--plans", &bad]].concat(), true));
    has_all(
        &line,
        &["--plans", &bad, "default_plan", "(line 1)", "--validate"],
    );
}

#[test]
fn a_malformed_redis_url_is_named_without_its_password() {
    let out = counter(
        &[
            "--listen",
            "127.0.0.1:0",
            "--plans",
            PLANS,
            "--redis",
            "redis//app:hunter2@cache:6379",
        ],
        true,
    );
    let line = error_line(&out);
    has_all(
        &line,
        &["--redis", "redis//app:***@cache:6379", "expected redis://"],
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

#[test]
fn an_unreadable_credential_file_names_the_file_and_the_flag() {
    let out = counter(
        &[
            "--listen",
            "127.0.0.1:0",
            "--plans",
            PLANS,
            "--redis",
            "redis://127.0.0.1:1",
            "--service-token-file",
            "/missing-dir/service-tokens",
            "--read-token-file",
            "/missing-dir/read-tokens",
        ],
        false,
    );
    has_all(
        &error_line(&out),
        &[
            "/missing-dir/service-tokens",
            "--service-token-file",
            "TURNPIKE_SERVICE_TOKEN",
        ],
    );
}

#[test]
fn a_port_in_use_is_named_with_what_to_do() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = counter(
        &[
            "--listen",
            &addr,
            "--plans",
            PLANS,
            "--redis",
            "redis://127.0.0.1:1",
        ],
        true,
    );
    has_all(
        &error_line(&out),
        &[
            &format!("cannot listen on {addr}"),
            "another --listen",
            "in use",
        ],
    );
}
