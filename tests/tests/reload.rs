//! Plans are reloaded without a restart; a broken plans file is refused and the old
//! plans stay in force.

use std::time::Duration;

use turnpike_tests::{avoid_window_end, eventually, Stack};

fn plans_with_max(max: u64) -> String {
    format!(
        r#"
default_plan = "free"
[plans.free]
limits = [ {{ name = "daily", meter = "requests", window = "day", max = {max} }} ]
"#
    )
}

async fn statuses(stack: &Stack, token: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(stack.get("/v1/things", Some(token)).await.status);
    }
    out
}

async fn wait_for_max(stack: &Stack, max: u64) {
    eventually(
        &format!("the counter to apply max = {max}"),
        Duration::from_secs(10),
        || async move {
            let usage = stack.counter.usage("acme").await;
            (usage.limits.first().map(|l| l.max) == Some(max)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_plans_file_takes_effect_without_restart() {
    let stack = Stack::builder(&plans_with_max(2)).start().await;
    let token = stack.token("acme");
    avoid_window_end(86_400, 30).await;
    assert_eq!(statuses(&stack, &token, 3).await, [200, 200, 429]);

    stack.counter.write_plans(&plans_with_max(4));
    wait_for_max(&stack, 4).await;
    assert_eq!(statuses(&stack, &token, 3).await, [200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plans_file_is_refused_naming_the_field_and_old_limits_hold() {
    let mut stack = Stack::builder(&plans_with_max(3)).start().await;
    let token = stack.token("acme");
    avoid_window_end(86_400, 30).await;
    assert_eq!(statuses(&stack, &token, 1).await, [200]);

    let log_before = stack.counter.logs().len();
    stack
        .counter
        .write_plans(&plans_with_max(3).replace("max = 3", "max = 0"));
    let counter_ref = &stack.counter;
    let complaint = eventually(
        "the counter to log the refused plans file",
        Duration::from_secs(10),
        || async move {
            let logs = counter_ref.logs();
            let new = logs.get(log_before..).unwrap_or_default().to_owned();
            new.lines().find(|l| l.contains("max")).map(str::to_owned)
        },
    )
    .await;
    assert!(
        complaint.to_lowercase().contains("plans") || complaint.contains("limits"),
        "{complaint}"
    );
    stack.counter.process().assert_running();

    wait_for_max(&stack, 3).await;
    assert_eq!(statuses(&stack, &token, 3).await, [200, 200, 429]);
}
