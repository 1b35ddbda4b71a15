//! Day-two operations as docs/operate.md describes them: the alert rules are valid,
//! behave as their thresholds say, and name metrics the services really export; a
//! running SQLite ledger is backed up and restored with `scripts/ledger-backup.sh`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use turnpike_tests::collector::Collector;
use turnpike_tests::paths::repo_root;
use turnpike_tests::secrets::INGEST_SECRET;
use turnpike_tests::Stack;

const RULES: &str = "deploy/prometheus/turnpike-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/turnpike-rules.test.yml";

fn promtool() -> std::path::PathBuf {
    let local = repo_root().join(".tools/bin/promtool");
    if local.is_file() {
        return local;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("promtool"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "promtool not found: install the tools with `make tools` (scripts/ensure-tools.sh)"
            )
        })
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let out = run(&promtool(), &["check", "rules", RULES]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));
    let out = run(&promtool(), &["test", "rules", RULE_TESTS]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Every `turnpike_*` name in the rules' expressions.
fn metric_names_in_rules() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(repo_root().join(RULES)).unwrap();
    let mut names = BTreeSet::new();
    let mut in_expr = false;
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("expr:") {
            in_expr = true;
        } else if trimmed.starts_with("for:")
            || trimmed.starts_with("labels:")
            || trimmed.starts_with("annotations:")
            || trimmed.starts_with("- alert:")
        {
            in_expr = false;
        }
        if !in_expr {
            continue;
        }
        let bytes = line.as_bytes();
        let mut i = 0;
        while let Some(found) = line[i..].find("turnpike_") {
            let start = i + found;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            let preceded =
                start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            if !preceded {
                names.insert(line[start..end].to_owned());
            }
            i = end;
        }
    }
    names
}

/// Whether an exposition (Prometheus or OpenMetrics text) has metric `name`: a series
/// of that name, or a family it belongs to (`_total` of a counter, `_bucket` of a
/// histogram) even before it has a series.
fn exposes(exposition: &str, name: &str) -> bool {
    exposition.lines().any(|line| {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let family = family.split_whitespace().next().unwrap_or("");
            return name == family
                || name
                    .strip_prefix(family)
                    .is_some_and(|rest| ["_total", "_bucket", "_count", "_sum"].contains(&rest));
        }
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

const PLANS: &str = r#"
default_plan = "free"
[plans.free]
limits = [ { name = "per-minute", meter = "requests", window = "minute", max = 100 } ]
"#;

#[tokio::test]
async fn every_metric_the_alert_rules_use_is_exported_by_the_filter_counter_or_collector() {
    let names = metric_names_in_rules();
    assert!(names.len() >= 20, "too few metric names found: {names:?}");
    let stack = Stack::builder(PLANS).with_collector().start().await;
    // One metered request, so that the filter's stats have values.
    let reply = stack.get("/v1/things", Some(&stack.token("acme"))).await;
    assert_eq!(reply.status, 200);
    let envoy = stack
        .http
        .get(stack.envoy.admin_url("/stats/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = stack.counter.metrics().await;
    let collector = stack.collector().metrics().await;
    // How the filter's stats are named in Prometheus: the rules rely on it.
    assert!(
        envoy.lines().any(|l| l.starts_with("turnpike_allowed")),
        "no turnpike_allowed in Envoy's /stats/prometheus:\n{}",
        envoy
            .lines()
            .filter(|l| l.contains("turnpike"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| {
            ![&envoy, &counter, &collector]
                .iter()
                .any(|text| exposes(text, name))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the alert rules use metrics nobody exports: {missing:?}"
    );
}

fn event(id: &str, tenant: &str) -> Value {
    let time = turnpike_devtools::token::format_utc(turnpike_devtools::token::now_unix());
    json!({
        "specversion": "1.0", "id": id, "source": "//turnpike/envoy/backup-test",
        "type": "dev.turnpike.usage.v1", "subject": tenant, "time": time,
        "datacontenttype": "application/json",
        "data": { "meters": [{"meter": "requests", "cost": 1}], "plan": "free",
                  "method": "GET", "route": "api", "status": 200, "request_bytes": 0,
                  "response_bytes": 42, "duration_ms": 3, "decision": "allowed" }
    })
}

async fn post(http: &reqwest::Client, collector_url: &str, events: &[Value]) {
    let response = http
        .post(collector_url)
        .bearer_auth(INGEST_SECRET)
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_vec(events).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

fn backup_script(args: &[&str]) -> Output {
    run(&repo_root().join("scripts/ledger-backup.sh"), args)
}

fn count_rows(db: &Path) -> u64 {
    let out = Command::new("sqlite3")
        .args([
            "-readonly",
            &db.display().to_string(),
            "SELECT count(*) FROM usage_events WHERE tenant = 'acme'",
        ])
        .output()
        .expect("sqlite3 (make tools installs it)");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test]
async fn a_running_sqlite_ledger_is_backed_up_and_restored_to_exactly_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path()).await;
    let db = dir.path().join("collector.db");
    let database = format!("sqlite://{}", db.display());
    let ingest = collector.url("/v1/events");
    let http = reqwest::Client::new();
    let before: Vec<Value> = (0..50)
        .map(|i| event(&format!("before-{i}"), "acme"))
        .collect();
    post(&http, &ingest, &before).await;

    // The backup runs while batches keep arriving.
    let writer = {
        let (http, ingest) = (http.clone(), ingest.clone());
        tokio::spawn(async move {
            for batch in 0..20 {
                let events: Vec<Value> = (0..10)
                    .map(|i| event(&format!("during-{batch}-{i}"), "acme"))
                    .collect();
                post(&http, &ingest, &events).await;
            }
        })
    };
    let backup = dir.path().join("backups/ledger-1.db");
    let (database_arg, backup_arg) = (database.clone(), backup.display().to_string());
    let out =
        tokio::task::spawn_blocking(move || backup_script(&["backup", &database_arg, &backup_arg]))
            .await
            .unwrap();
    writer.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("usage_events"), "{}", text(&out));
    let in_backup = count_rows(&backup);
    assert!(
        (50..=250).contains(&in_backup),
        "{in_backup} rows in the backup"
    );

    // A backup is never overwritten; `check` reads it back.
    let out = backup_script(&["backup", &database, &backup.display().to_string()]);
    assert!(
        !out.status.success() && text(&out).contains("exists"),
        "{}",
        text(&out)
    );
    let out = backup_script(&["check", &backup.display().to_string()]);
    assert!(
        out.status.success() && text(&out).contains("integrity ok"),
        "{}",
        text(&out)
    );

    let after: Vec<Value> = (0..30)
        .map(|i| event(&format!("after-{i}"), "acme"))
        .collect();
    post(&http, &ingest, &after).await;
    let all = collector.all_events("acme").await.unwrap().len() as u64;
    assert_eq!(all, 280);

    // Not while the collector has the ledger open: refused, nothing changed.
    let out = backup_script(&["restore", &backup.display().to_string(), &database]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("stop the collector first"),
        "{}",
        text(&out)
    );
    assert_eq!(
        collector.all_events("acme").await.unwrap().len() as u64,
        280
    );

    collector
        .process()
        .terminate(std::time::Duration::from_secs(10));
    let out = backup_script(&["restore", &backup.display().to_string(), &database]);
    assert!(out.status.success(), "{}", text(&out));
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.starts_with("collector.db.before-restore-")
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the replaced ledger is kept: {aside:?}");
    assert_eq!(count_rows(&dir.path().join(&aside[0])), 280);

    collector.restart().await;
    let restored = collector.all_events("acme").await.unwrap();
    assert_eq!(restored.len() as u64, in_backup);
    // What the backup held is what was posted before it, whole batches of what came during.
    let ids: BTreeSet<String> = restored
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert!((0..50).all(|i| ids.contains(&format!("before-{i}"))));
    assert!(!ids.iter().any(|id| id.starts_with("after-")));
    assert_eq!(
        ids.iter().filter(|id| id.starts_with("during-")).count() % 10,
        0
    );
}

/// The statements of docs/operate.md's `-- prune` SQL block.
fn prune_statements() -> Vec<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/operate.md")).unwrap();
    let block = doc
        .split("```sql\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or(""))
        .find(|block| block.starts_with("-- prune"))
        .expect("docs/operate.md has a ```sql block starting with `-- prune`");
    block
        .lines()
        .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_documented_retention_sql_prunes_old_rows_and_keeps_the_rest() {
    let statements = prune_statements();
    assert_eq!(statements.len(), 3, "{statements:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path()).await;
    let http = reqwest::Client::new();
    let now = turnpike_devtools::token::now_unix();
    let at = |id: &str, secs: u64| {
        let mut e = event(id, "acme");
        e["time"] = json!(turnpike_devtools::token::format_utc(secs));
        e
    };
    let old: Vec<Value> = (0..5)
        .map(|i| at(&format!("old-{i}"), now - 500 * 86_400))
        .collect();
    let recent: Vec<Value> = (0..7)
        .map(|i| at(&format!("recent-{i}"), now - 3 * 86_400))
        .collect();
    post(&http, &collector.url("/v1/events"), &old).await;
    post(&http, &collector.url("/v1/events"), &recent).await;
    assert_eq!(collector.all_events("acme").await.unwrap().len(), 12);

    // Pruned with the collector running, as the doc says.
    let db = dir.path().join("collector.db");
    let cutoff_ms = (now - 400 * 86_400) * 1000;
    // As the doc's command line: wait for the collector's write lock.
    let mut args = vec![
        db.display().to_string(),
        ".timeout 5000".to_owned(),
        format!(".parameter set :cutoff_ms {cutoff_ms}"),
    ];
    args.extend(statements);
    let out = Command::new("sqlite3")
        .args(&args)
        .output()
        .expect("sqlite3");
    assert!(out.status.success(), "{}", text(&out));

    let left = collector.all_events("acme").await.unwrap();
    let ids: BTreeSet<&str> = left.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 7, "{ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("recent-")));
    let meters = Command::new("sqlite3")
        .args([
            &db.display().to_string(),
            "SELECT count(*) FROM usage_meters",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&meters.stdout).trim(), "7");
    // The collector goes on storing after the prune.
    post(&http, &collector.url("/v1/events"), &[at("later", now)]).await;
    assert_eq!(collector.all_events("acme").await.unwrap().len(), 8);
    collector
        .process()
        .terminate(std::time::Duration::from_secs(5));
}
