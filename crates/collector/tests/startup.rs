//! Start-up as an operator meets it: a SQLite ledger in a directory that does not exist
//! yet just works (the directory is made); what cannot work is said once, on one plain
//! line naming the flag, the path or address, and what to do, with exit status 1.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const READ_TOKEN: &str = "startup-test-read-token-0";

fn collector() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_turnpike-collector"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TURNPIKE_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
        .env("TURNPIKE_INGEST_SECRET", "startup-test-ingest-secret")
        .env("TURNPIKE_READ_TOKEN", READ_TOKEN);
    command
}

fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI codes in: {stderr:?}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("turnpike-collector: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        !stderr.contains("ERROR"),
        "the error was also logged: {stderr}"
    );
    lines[0].to_owned()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_sqlite_ledger_in_a_missing_directory_is_created_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing-dir/nested/ledger.db");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = collector()
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--database", &format!("sqlite://{}", db.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = running.0.try_wait() {
            panic!("the collector exited: {status}");
        }
        let answered = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.starts_with("HTTP/1.1 200")
        });
        if answered {
            break;
        }
        assert!(Instant::now() < deadline, "no healthy collector on :{port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(db.is_file(), "{} was not created", db.display());
}

#[test]
fn a_ledger_path_that_cannot_work_is_named_with_the_fix() {
    // /proc refuses new files, for root too.
    let out = collector()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database",
            "sqlite:///proc/turnpike/ledger.db",
        ])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(line.contains("/proc/turnpike"), "{line}");
    assert!(line.contains("--database"), "{line}");

    let dir = tempfile::tempdir().unwrap();
    let out = collector()
        .args(["--listen", "127.0.0.1:0"])
        .args(["--database", &format!("sqlite://{}", dir.path().display())])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains("is a directory") && line.contains("ledger.db"),
        "{line}"
    );
}

#[test]
fn a_port_in_use_a_missing_plans_file_or_secret_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/ledger.db", dir.path().display());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = collector()
        .args(["--listen", &addr, "--database", &database])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains(&format!("--listen {addr}")) && line.contains("another --listen"),
        "{line}"
    );

    let out = collector()
        .args(["--listen", "127.0.0.1:0", "--database", &database])
        .args(["--plans", "/missing-dir/plans.toml"])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains("--plans") && line.contains("/missing-dir/plans.toml"),
        "{line}"
    );

    let out = collector()
        .args(["--listen", "127.0.0.1:0", "--database", &database])
        .args(["--ingest-secret-file", "/missing-dir/ingest"])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains("/missing-dir/ingest") && line.contains("--ingest-secret-file"),
        "{line}"
    );
}

#[test]
fn a_postgres_url_is_shown_without_its_password() {
    let out = collector()
        .args(["--listen", "127.0.0.1:0"])
        .args([
            "--database",
            "postgres://turnpike:hunter2@127.0.0.1:1/ledger",
        ])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains("postgres://turnpike:***@127.0.0.1:1/ledger"),
        "{line}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}
