//! The console's HTML: pure functions from the shared query results to markup.
//!
//! maud rather than askama: the templates are Rust expressions checked by the
//! compiler (a misspelt field fails the build, not a page), escaping is automatic,
//! and there are no template files to ship or find at run time.
//!
//! Every number taken from the data carries `data-k`, a stable key the browser test
//! reads to compare the page with the JSON API.

use maud::{html, Markup, DOCTYPE};

use super::assets::UPLOT_VERSION;
use super::data::{LimitUsage, Pipeline, RecentEvents, TenantSeries, TenantUsage, TenantsPage};
use crate::anomalies::http::{AnomalyPage, ListParams};
use crate::anomalies::AnomalyView;
use crate::billing::status::BillingStatus;

/// An integer with thousands separators.
pub fn int(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A real number with separators: whole numbers as such, others to two decimals.
pub fn num(x: f64) -> String {
    if !x.is_finite() || x.abs() >= 1e15 {
        return format!("{x}");
    }
    if x.fract() == 0.0 {
        return int(x as i64);
    }
    let text = format!("{:.2}", x.abs());
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, "00"));
    let sign = if x < 0.0 && text != "0.00" { "-" } else { "" };
    format!("{sign}{}.{fraction}", int(whole.parse().unwrap_or(0)))
}

fn meter_label(meter: &str) -> &str {
    if meter == crate::anomalies::series::REQUESTS {
        "all requests (rows)"
    } else {
        meter
    }
}

fn layout(title: &str, active: &str, body: Markup) -> Markup {
    let nav = [
        ("tenants", "/console/tenants", "Tenants"),
        ("anomalies", "/console/anomalies", "Anomalies"),
        ("pipeline", "/console/pipeline", "Pipeline"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Turnpike console" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href={ "/console/assets/uplot-" (UPLOT_VERSION) "/uPlot.min.css" };
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header {
                    a.brand href="/console/tenants" { "Turnpike" }
                    nav {
                        @for (key, href, label) in nav {
                            a href=(href) class=[(key == active).then_some("active")] { (label) }
                        }
                    }
                }
                main { (body) }
                script src={ "/console/assets/uplot-" (UPLOT_VERSION) "/uPlot.iife.min.js" } {}
                script src="/console/assets/console.js" {}
            }
        }
    }
}

pub fn error(status: u16, detail: &str) -> Markup {
    layout(
        "Error",
        "",
        html! {
            h1 { "Error " (status) }
            p.error { (detail) }
        },
    )
}

fn limit_bar(key: &str, l: &LimitUsage) -> Markup {
    let pct = |v: f64| (v / l.max.max(1) as f64 * 100.0).clamp(0.0, 100.0);
    let used_pct = pct(l.used as f64);
    html! {
        div class={ "limit " (l.state) } title={ (l.name) ": " (l.window) " window " (l.window_start) " to " (l.window_end) } {
            div.limit-label {
                span.limit-name { (l.meter) " / " (l.window) }
                span.limit-figures {
                    span data-k={ (key) ":used" } { (int(l.used)) }
                    " of "
                    span data-k={ (key) ":max" } { (int(l.max as i64)) }
                    @if let Some(soft) = l.soft {
                        " (soft " span data-k={ (key) ":soft" } { (int(soft as i64)) } ")"
                    }
                }
            }
            div.bar {
                div.fill style={ "width:" (format!("{used_pct:.1}")) "%" } {}
                @if let Some(soft) = l.soft {
                    div.mark.soft style={ "left:" (format!("{:.1}", pct(soft as f64))) "%" } title="soft limit" {}
                }
                div.mark.hard style="left:100%" title="hard limit" {}
            }
        }
    }
}

fn usage_cells(t: &TenantUsage) -> Markup {
    html! {
        td { (t.plan.as_deref().unwrap_or("—")) }
        td.period { (t.period_start.get(..10).unwrap_or(&t.period_start)) " → " (t.period_end.get(..10).unwrap_or(&t.period_end)) }
        td.limits {
            @for l in &t.limits {
                (limit_bar(&format!("tenant:{}:limit:{}", t.tenant, l.name), l))
            }
            @if t.limits.is_empty() {
                @for u in &t.usage {
                    div { (u.meter) ": " span data-k={ "tenant:" (t.tenant) ":usage:" (u.meter) } { (int(u.quantity)) } }
                }
                @if t.usage.is_empty() { span.muted { "no usage this period" } }
            }
        }
    }
}

pub fn tenants(page: &TenantsPage, q: &str, after: &str) -> Markup {
    layout(
        "Tenants",
        "tenants",
        html! {
            h1 { "Tenants" }
            form.filters method="get" action="/console/tenants" {
                input type="search" name="q" value=(q) placeholder="search tenants" aria-label="search tenants";
                button type="submit" { "Search" }
            }
            table.tenants {
                thead { tr { th { "Tenant" } th { "Plan" } th { "Billing period" } th { "Usage against limits (hour, day, month)" } } }
                tbody {
                    @for t in &page.tenants {
                        tr data-tenant=(t.tenant) {
                            td { a href={ "/console/tenants/" (t.tenant) } { (t.tenant) } }
                            (usage_cells(t))
                        }
                    }
                    @if page.tenants.is_empty() { tr { td colspan="4" .muted { "No tenants match." } } }
                }
            }
            div.pager {
                @if !after.is_empty() { a href={ "/console/tenants?q=" (q) } { "« first page" } }
                @if let Some(next) = &page.next_after {
                    a.next href={ "/console/tenants?q=" (q) "&after=" (next) } { "next page »" }
                }
            }
        },
    )
}

fn anomaly_rows(list: &[AnomalyView], with_tenant: bool) -> Markup {
    html! {
        table.anomalies {
            thead { tr {
                th { "Bucket (UTC)" }
                @if with_tenant { th { "Tenant" } }
                th { "Meter" } th { "Kind" } th.n { "Score" } th.n { "Expected" } th.n { "Observed" } th { "Episode start" }
            } }
            tbody {
                @for a in list {
                    tr data-anomaly=(a.id) {
                        td { (a.bucket) }
                        @if with_tenant { td { a href={ "/console/tenants/" (a.tenant) } { (a.tenant) } } }
                        td { (meter_label(&a.meter)) }
                        td { span class={ "kind " (a.kind) } { (a.kind) } }
                        td.n data-k={ "anomaly:" (a.id) ":score" } { (num(a.score)) }
                        td.n data-k={ "anomaly:" (a.id) ":expected" } { (num(a.expected)) }
                        td.n data-k={ "anomaly:" (a.id) ":observed" } { (num(a.observed)) }
                        td { (a.episode_start) }
                    }
                }
                @if list.is_empty() { tr { td colspan="8" .muted { "No anomalies." } } }
            }
        }
    }
}

pub fn tenant(usage: &TenantUsage, series: &TenantSeries, recent: &RecentEvents) -> Markup {
    let chart_data = serde_json::to_string(series).unwrap_or_default();
    layout(
        &usage.tenant,
        "tenants",
        html! {
            h1 { "Tenant " (usage.tenant) }
            table.tenants { tbody { tr { (usage_cells(usage)) } } }
            h2 { "Usage per " (series.bucket_secs) " s bucket, " (series.since) " to " (series.until) }
            p.muted { "Red points: anomalies (the bucket an alert was raised in)." }
            div.totals {
                @for s in &series.series {
                    span.total { (meter_label(&s.meter)) ": " b data-k={ "series:" (s.meter) ":total" } { (num(s.total)) } }
                }
            }
            div #charts data-series=(chart_data) {}
            h2 { "Anomalies (" span data-k="anomalies:count" { (series.anomalies.len()) } ")" }
            (anomaly_rows(&series.anomalies, false))
            h2 { "Recent events" }
            table.events {
                thead { tr { th { "Time (UTC)" } th { "Decision" } th { "Method" } th { "Route" } th.n { "Status" } th { "Meters" } th { "Billable" } } }
                tbody {
                    @for e in &recent.events {
                        tr data-event=(e.id) {
                            td { (e.time) } td { (e.decision) } td { (e.method) } td { (e.route) }
                            td.n { (e.status) } td { (e.meters.to_string()) } td { (if e.billable { "yes" } else { "no" }) }
                        }
                    }
                }
            }
        },
    )
}

pub fn anomalies(page: &AnomalyPage, p: &ListParams) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let kinds = ["", "spike", "drop", "denial_storm", "plan_burn"];
    let query = |after: &str| {
        let mut parts = Vec::new();
        for (k, val) in [
            ("tenant", v(&p.tenant)),
            ("meter", v(&p.meter)),
            ("kind", v(&p.kind)),
            ("since", v(&p.since)),
            ("until", v(&p.until)),
        ] {
            if !val.is_empty() {
                parts.push(format!("{k}={}", url_encode(&val)));
            }
        }
        parts.push(format!("after={after}"));
        parts.join("&")
    };
    html! {
        (layout("Anomalies", "anomalies", html! {
            h1 { "Anomalies" }
            form.filters method="get" action="/console/anomalies" {
                input name="tenant" value=(v(&p.tenant)) placeholder="tenant" aria-label="tenant";
                input name="meter" value=(v(&p.meter)) placeholder="meter (* = requests)" aria-label="meter";
                select name="kind" aria-label="kind" {
                    @for k in kinds {
                        option value=(k) selected[v(&p.kind) == k] { (if k.is_empty() { "any kind" } else { k }) }
                    }
                }
                input name="since" value=(v(&p.since)) placeholder="since (RFC 3339)" aria-label="since";
                input name="until" value=(v(&p.until)) placeholder="until (RFC 3339)" aria-label="until";
                button type="submit" { "Filter" }
            }
            p.muted { "Most recently detected first. " span data-k="anomalies:count" { (page.anomalies.len()) } " on this page." }
            (anomaly_rows(&page.anomalies, true))
            div.pager {
                @if page.more { a.next href={ "/console/anomalies?" (query(&page.next_cursor)) } { "older »" } }
            }
        }))
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn figure(key: &str, label: &str, value: String) -> Markup {
    html! {
        div.figure {
            div.value data-k={ "pipeline:" (key) } { (value) }
            div.label { (label) }
        }
    }
}

fn billing_panel(b: &BillingStatus) -> Markup {
    let when = |t: &Option<String>| t.clone().unwrap_or_else(|| "never".into());
    html! {
        section.billing {
            h2 { "Billing sync (Stripe)" }
            @if b.enabled == Some(true) {
                p.muted {
                    "Last run " (when(&b.last_run)) ", last success " (when(&b.last_success))
                    ", last reconciliation " (when(&b.last_reconcile)) ". "
                    a href="/v1/billing/status" { "Full status (JSON)" }
                }
                @if let Some(error) = &b.last_error {
                    p.error data-k="pipeline:billing:last_error" { (error) }
                }
            } @else {
                p.muted {
                    "Off in this collector (no Stripe key): the figures are what the ledger holds for it. "
                    a href="/v1/billing/status" { "Full status (JSON)" }
                }
            }
            div.figures {
                (figure("billing:pending_units", "units Stripe does not hold yet", int(b.pending_units)))
                (figure("billing:in_flight", "meter events in flight", int(b.in_flight)))
                (figure("billing:backlog", "ledger changes not yet folded in", int(b.ledger_seq - b.cursor_seq)))
                (figure("billing:unmapped_units", "units of tenants without a Stripe customer", int(b.unmapped_units)))
                (figure("billing:too_old_units", "units too old for Stripe", int(b.too_old_units)))
                (figure("billing:open_credits", "credits to issue", int(b.open_credits)))
            }
        }
    }
}

pub fn pipeline(p: &Pipeline, billing: &BillingStatus) -> Markup {
    let a = &p.anomalies;
    layout(
        "Pipeline",
        "pipeline",
        html! {
            h1 { "Pipeline health" }
            p.muted { "As of " (p.at) "." }
            section {
                h2 { "Ingest" }
                div.figures {
                    (figure("rows_received_last_5m", "ledger rows received, last 5 minutes", int(p.rows_received_last_5m)))
                    (figure("rows_received_last_hour", "ledger rows received, last hour", int(p.rows_received_last_hour)))
                    (figure("ledger_changes", "ledger changes, ever", int(p.ledger_changes)))
                    (figure("quarantined_total", "events quarantined, ever", int(p.quarantined_total)))
                    (figure("quarantined_last_24h", "quarantined, last 24 hours", int(p.quarantined_last_24h)))
                }
            }
            section {
                h2 { "Counter usage stream" }
                @if p.usage_stream {
                    div.figures { (figure("usage_stream_backlog", "entries not yet in the ledger (backlog)", int(p.usage_stream_backlog))) }
                } @else {
                    p.muted { "This collector does not read the counter's usage streams (no --redis)." }
                }
            }
            section {
                h2 { "Reconciliation" }
                p.muted { "Last run: " (p.reconciled_at.as_deref().unwrap_or("not yet (every 5 minutes)")) }
                div.figures {
                    (figure("reconcile_drift_units", "units counter and ledger disagree on", int(p.reconcile_drift_units)))
                    (figure("reconcile_differences", "consumes on one side only", int(p.reconcile_differences)))
                }
            }
            section {
                h2 { "Anomaly judge" }
                p.muted {
                    "Buckets of " (a.bucket_secs) " s, judged " (a.grace_secs) " s after they close. Judge: "
                    (a.judge.as_deref().unwrap_or("none")) (if a.this_replica { " (this replica)" } else { "" })
                }
                div.figures {
                    (figure("anomaly_series", "series tracked", int(a.series)))
                    (figure("judged_until", "every series judged up to", a.judged_until.clone().unwrap_or_else(|| "—".into())))
                    (figure("outbox_pending", "alerts waiting for the webhook", int(a.outbox_pending)))
                }
            }
            (billing_panel(billing))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_with_separators() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(-1234567), "-1,234,567");
        assert_eq!(num(2.5), "2.50");
        assert_eq!(num(1e6), "1,000,000");
        assert_eq!(num(3757.4321), "3,757.43");
        assert_eq!(num(-0.5), "-0.50");
    }

    #[test]
    fn tenant_names_are_escaped() {
        let page = TenantsPage {
            tenants: Vec::new(),
            next_after: None,
            more: false,
        };
        let html = tenants(&page, "<script>", "").into_string();
        assert!(!html.contains("<script>\""), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }
}
