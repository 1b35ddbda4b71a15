//! `make demo` as a new user meets it (scripts/demo.sh, detached: it starts, shows,
//! and leaves the stack running until `scripts/demo.sh stop`): the walkthrough and its
//! curl lines work; a second demo in the same state directory is refused without
//! touching the first; one in its own directory runs beside it; taken ports are refused
//! before anything is deleted; tokens are re-minted on demand.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use turnpike_tests::paths::{envoy_bin, repo_root, target_dir, wasm_path};
use turnpike_tests::ports::free_port;

/// Settings of the caller's environment that would change what the demo does.
const AMBIENT: &[&str] = &[
    "PORT_OFFSET",
    "PLANS",
    "FILTER_CONFIG",
    "ENVOY_TEMPLATE",
    "JWKS",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "TURNPIKE_DEMO_KEY",
    "JWT_KID",
    "JWT_TENANT_CLAIM",
    "TOKEN_TTL",
    "TENANTS",
    "API_ADDRESS",
    "DEMO_WALKTHROUGH",
];
const PORTS: &[&str] = &[
    "ENVOY_PORT",
    "ADMIN_PORT",
    "COUNTER_PORT",
    "COLLECTOR_PORT",
    "UPSTREAM_PORT",
    "REDIS_PORT",
    "STRIPE_PORT",
];

/// One demo instance: its state directory and ports. Stopped when dropped.
struct Demo {
    dir: PathBuf,
    ports: BTreeMap<&'static str, u16>,
}

impl Demo {
    fn new(dir: &Path) -> Demo {
        Demo {
            dir: dir.to_path_buf(),
            ports: PORTS.iter().map(|name| (*name, free_port())).collect(),
        }
    }

    fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut command = Command::new(repo_root().join("scripts/demo.sh"));
        command.args(args).current_dir(repo_root());
        for name in AMBIENT {
            command.env_remove(name);
        }
        command
            .env("DEMO_DIR", &self.dir)
            .env("DEMO_BUILD", "0")
            .env("DEMO_DETACH", "1")
            .env("DEMO_BIN_DIR", target_dir().join("debug"))
            .env("DEMO_WASM", wasm_path())
            .env("DEMO_ENVOY", envoy_bin());
        for (name, port) in &self.ports {
            command.env(name, port.to_string());
        }
        for (name, value) in extra {
            command.env(name, value);
        }
        command.output().expect("run scripts/demo.sh")
    }

    fn tokens(&self) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(self.dir.join("tokens.env")).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not NAME=value: {l}"));
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.run(&["stop"], &[]);
    }
}

fn output(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn status(http: &reqwest::Client, url: &str, bearer: Option<&str>) -> u16 {
    let mut request = http.get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_demo_runs_twice_side_by_side_and_refuses_to_share_a_state_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // The walkthrough's 5-a-minute tenant must not cross a minute boundary.
    turnpike_tests::avoid_window_end(60, 40).await;

    let first = Demo::new(&tmp.path().join("first"));
    let out = first.run(&[], &[]);
    let shown = output(&out);
    assert!(out.status.success(), "{shown}");
    for line in ["request 5 -> 200", "request 6 -> 429", "\"quantity\":5"] {
        assert!(
            shown.contains(line),
            "no `{line}` in the walkthrough:\n{shown}"
        );
    }
    // What Stripe holds after the first sync: last hour's sample usage.
    let stripe: Vec<&str> = shown.lines().filter(|l| l.contains("cus_demo_")).collect();
    assert!(
        stripe
            .iter()
            .any(|l| l.contains("acme") && l.contains("api_requests") && l.contains(" 42 ")),
        "{shown}"
    );
    assert!(
        stripe
            .iter()
            .any(|l| l.contains("acme") && l.contains("search_units") && l.contains(" 150 ")),
        "{shown}"
    );
    assert!(
        stripe
            .iter()
            .any(|l| l.contains("globex") && l.contains(" 4 ")),
        "{shown}"
    );

    // tokens.env: every credential the demo made, and the endpoints.
    let tokens = first.tokens();
    for name in [
        "ENVOY_URL",
        "COUNTER_URL",
        "COLLECTOR_URL",
        "STRIPE_URL",
        "ACME",
        "GLOBEX",
        "INITECH",
        "NOTENANT",
        "READ_TOKEN",
        "SERVICE_TOKEN",
        "INGEST_SECRET",
        "STRIPE_KEY",
    ] {
        assert!(
            tokens.get(name).is_some_and(|v| !v.is_empty()),
            "no {name} in tokens.env"
        );
    }
    // The printed "try it yourself" lines work as printed: initech has room left...
    let envoy = &tokens["ENVOY_URL"];
    assert!(
        shown.contains("curl -i -H \"Authorization: Bearer $INITECH\" \"$ENVOY_URL/v1/items/1\""),
        "{shown}"
    );
    assert_eq!(
        status(
            &http,
            &format!("{envoy}/v1/items/1"),
            Some(&tokens["INITECH"])
        )
        .await,
        200
    );
    assert_eq!(
        status(
            &http,
            &format!("{envoy}/v1/items/1"),
            Some(&tokens["NOTENANT"])
        )
        .await,
        401
    );
    // ...and the read token opens both read APIs.
    let read = Some(tokens["READ_TOKEN"].as_str());
    let counter_usage = format!("{}/v1/tenants/acme/usage", tokens["COUNTER_URL"]);
    let ledger_usage = format!(
        "{}/v1/tenants/acme/usage?window=month",
        tokens["COLLECTOR_URL"]
    );
    assert_eq!(status(&http, &counter_usage, read).await, 200);
    assert_eq!(status(&http, &ledger_usage, read).await, 200);
    assert_eq!(status(&http, &ledger_usage, None).await, 401);

    // A second demo in the same state directory (other ports) is refused, and the
    // first one's tokens and ledger are left alone.
    let tokens_before = std::fs::read(first.dir.join("tokens.env")).unwrap();
    let ledger_inode = std::fs::metadata(first.dir.join("ledger.db"))
        .unwrap()
        .ino();
    let same_dir = Demo::new(&first.dir);
    let out = same_dir.run(&[], &[]);
    let refused = output(&out);
    assert!(!out.status.success(), "{refused}");
    assert!(refused.contains("already running in"), "{refused}");
    std::mem::forget(same_dir); // its `stop` would stop the first demo
    assert_eq!(
        std::fs::read(first.dir.join("tokens.env")).unwrap(),
        tokens_before
    );
    assert_eq!(
        std::fs::metadata(first.dir.join("ledger.db"))
            .unwrap()
            .ino(),
        ledger_inode
    );
    assert_eq!(
        status(
            &http,
            &format!("{envoy}/v1/items/2"),
            Some(&tokens["INITECH"])
        )
        .await,
        200
    );

    // A second demo in its own directory, on its own ports, runs beside the first.
    let second = Demo::new(&tmp.path().join("second"));
    let out = second.run(&[], &[("DEMO_WALKTHROUGH", "0")]);
    assert!(out.status.success(), "{}", output(&out));
    let second_tokens = second.tokens();
    let ready = |demo: &Demo| format!("http://127.0.0.1:{}/ready", demo.port("ADMIN_PORT"));
    assert_eq!(status(&http, &ready(&first), None).await, 200);
    assert_eq!(status(&http, &ready(&second), None).await, 200);
    assert_eq!(
        status(
            &http,
            &format!("{}/v1/items/1", second_tokens["ENVOY_URL"]),
            Some(&second_tokens["ACME"])
        )
        .await,
        200
    );
    // Each demo has its own credentials.
    assert_ne!(second_tokens["READ_TOKEN"], tokens["READ_TOKEN"]);

    // Tokens re-minted on demand; the services' credentials stay.
    let out = first.run(&["tokens"], &[]);
    assert!(out.status.success(), "{}", output(&out));
    let fresh = first.tokens();
    assert_ne!(fresh["ACME"], tokens["ACME"]);
    assert_eq!(fresh["READ_TOKEN"], tokens["READ_TOKEN"]);
    assert_eq!(
        status(&http, &format!("{envoy}/v1/items/3"), Some(&fresh["ACME"])).await,
        200
    );

    // `stop` stops that demo only.
    let out = second.run(&["stop"], &[]);
    assert!(out.status.success(), "{}", output(&out));
    assert_eq!(status(&http, &ready(&second), None).await, 0);
    assert!(!second.run(&["status"], &[]).status.success());
    assert_eq!(status(&http, &ready(&first), None).await, 200);
}

#[test]
fn taken_ports_or_a_foreign_directory_are_refused_before_anything_is_touched() {
    let tmp = tempfile::tempdir().unwrap();
    // The state of an earlier demo that is no longer running.
    let dir = tmp.path().join("stale");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".turnpike-demo"), "state of scripts/demo.sh\n").unwrap();
    std::fs::write(dir.join("tokens.env"), "ACME=old\n").unwrap();
    std::fs::write(dir.join("ledger.db"), "old ledger").unwrap();
    let demo = Demo::new(&dir);
    let taken = TcpListener::bind(("127.0.0.1", demo.port("ENVOY_PORT"))).unwrap();
    let out = demo.run(&[], &[]);
    let shown = output(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("ENVOY_PORT={}", demo.port("ENVOY_PORT")))
            && shown.contains("Nothing was started or changed"),
        "{shown}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("tokens.env")).unwrap(),
        "ACME=old\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ledger.db")).unwrap(),
        "old ledger"
    );
    drop(taken);

    // A directory that is not a demo's is never replaced.
    let foreign = tmp.path().join("my-files");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let out = Demo::new(&foreign).run(&[], &[]);
    assert!(!out.status.success());
    assert!(
        output(&out).contains("not a demo state directory"),
        "{}",
        output(&out)
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "mine"
    );
}
