use super::*;

const SAMPLE: &str = r#"
default_plan = "free"

[plans.free]
limits = [
  { name = "per-minute", meter = "requests", window = "minute", max = 60 },
  { name = "monthly", meter = "requests", window = "month", max = 10000, soft = 8000 },
]

[plans.pro]
anchor_day = 5
limits = [ { name = "per-second", meter = "requests", window = "second", max = 50 } ]

[tenants.acme]
plan = "pro"
anchor_day = 15

[tenants.globex]
anchor_day = 31
"#;

fn sample() -> Plans {
    Plans::parse(SAMPLE).unwrap()
}

/// The sample with one line replaced, to check one rule at a time.
fn sample_with(from: &str, to: &str) -> String {
    assert!(SAMPLE.contains(from), "sample lacks {from}");
    SAMPLE.replacen(from, to, 1)
}

fn invalid(text: &str) -> (String, String) {
    match Plans::parse(text) {
        Err(e @ PlanError::Invalid { .. }) => (e.field().unwrap().to_owned(), e.to_string()),
        other => panic!("expected a rule violation, got {other:?}"),
    }
}

#[test]
fn sample_parses_with_limits_in_file_order() {
    let plans = sample();
    let free = plans.plan("free").unwrap();
    assert_eq!(free.anchor_day, 1);
    assert_eq!(
        free.limits,
        &[
            Limit {
                name: "per-minute".into(),
                meter: "requests".into(),
                window: Window::Minute,
                max: 60,
                soft: None
            },
            Limit {
                name: "monthly".into(),
                meter: "requests".into(),
                window: Window::Month,
                max: 10000,
                soft: Some(8000)
            },
        ]
    );
    assert_eq!(plans.default_plan(), "free");
    assert_eq!(plans.plans().count(), 2);
}

#[test]
fn tenant_override_wins_over_claimed_plan() {
    let plans = sample();
    let r = plans.resolve("acme", Some("free"));
    assert_eq!((r.name, r.anchor_day), ("pro", 15));
}

#[test]
fn known_claimed_plan_wins_over_default() {
    let plans = sample();
    let r = plans.resolve("initech", Some("pro"));
    assert_eq!((r.name, r.anchor_day), ("pro", 5));
}

#[test]
fn unknown_claimed_plan_falls_back_to_default() {
    let plans = sample();
    assert_eq!(plans.resolve("initech", Some("platinum")).name, "free");
    assert_eq!(plans.resolve("initech", None).name, "free");
}

#[test]
fn tenant_with_only_an_anchor_keeps_the_claimed_plan_and_its_own_anchor() {
    let plans = sample();
    let r = plans.resolve("globex", Some("pro"));
    assert_eq!((r.name, r.anchor_day), ("pro", 31));
    let r = plans.resolve("globex", None);
    assert_eq!((r.name, r.anchor_day), ("free", 31));
}

#[test]
fn soft_above_max_is_refused_naming_the_field() {
    let text = sample_with("max = 10000, soft = 8000", "max = 60, soft = 61");
    let (field, msg) = invalid(&text);
    assert_eq!(field, "plans.free.limits[1].soft");
    assert!(
        msg.starts_with("plans.free.limits[1].soft: must be <= max (60)"),
        "{msg}"
    );
    assert!(msg.contains("(line 7)"), "{msg}");
}

#[test]
fn zero_or_negative_max_and_soft_are_refused() {
    let (field, _) = invalid(&sample_with("max = 60 }", "max = 0 }"));
    assert_eq!(field, "plans.free.limits[0].max");
    let (field, _) = invalid(&sample_with("max = 60 }", "max = -3 }"));
    assert_eq!(field, "plans.free.limits[0].max");
    let (field, _) = invalid(&sample_with("soft = 8000", "soft = 0"));
    assert_eq!(field, "plans.free.limits[1].soft");
    let (field, _) = invalid(&sample_with("max = 60 }", "max = 4503599627370497 }"));
    assert_eq!(field, "plans.free.limits[0].max");
}

#[test]
fn missing_default_plan_is_refused() {
    let (field, msg) = invalid(&sample_with(
        "default_plan = \"free\"",
        "default_plan = \"gold\"",
    ));
    assert_eq!(field, "default_plan");
    assert!(msg.contains("\"gold\""), "{msg}");
}

#[test]
fn tenant_override_to_unknown_plan_is_refused() {
    let (field, _) = invalid(&sample_with("plan = \"pro\"", "plan = \"gold\""));
    assert_eq!(field, "tenants.acme.plan");
}

#[test]
fn invalid_tenant_key_is_refused() {
    let (field, _) = invalid(&sample_with("[tenants.acme]", "[tenants.\"ac me\"]"));
    assert_eq!(field, "tenants.ac me");
}

#[test]
fn duplicate_limit_names_are_refused() {
    let (field, msg) = invalid(&sample_with("name = \"monthly\"", "name = \"per-minute\""));
    assert_eq!(field, "plans.free.limits[1].name");
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn two_limits_on_the_same_meter_and_window_are_refused() {
    let (field, _) = invalid(&sample_with("window = \"month\"", "window = \"minute\""));
    assert_eq!(field, "plans.free.limits[1].window");
}

#[test]
fn bad_charsets_are_refused() {
    let (field, _) = invalid(&sample_with(
        "name = \"per-minute\"",
        "name = \"per minute\"",
    ));
    assert_eq!(field, "plans.free.limits[0].name");
    let (field, _) = invalid(&sample_with(
        "meter = \"requests\", window = \"minute\"",
        "meter = \"Requests\", window = \"minute\"",
    ));
    assert_eq!(field, "plans.free.limits[0].meter");
}

#[test]
fn unknown_window_is_refused() {
    let (field, msg) = invalid(&sample_with("window = \"minute\"", "window = \"week\""));
    assert_eq!(field, "plans.free.limits[0].window");
    assert!(msg.contains("week"), "{msg}");
}

#[test]
fn anchor_day_out_of_range_is_refused() {
    let (field, _) = invalid(&sample_with("anchor_day = 5", "anchor_day = 32"));
    assert_eq!(field, "plans.pro.anchor_day");
    let (field, _) = invalid(&sample_with("anchor_day = 15", "anchor_day = 0"));
    assert_eq!(field, "tenants.acme.anchor_day");
}

#[test]
fn plan_without_limits_is_refused() {
    let text = sample_with(
        "limits = [ { name = \"per-second\", meter = \"requests\", window = \"second\", max = 50 } ]",
        "limits = []",
    );
    let (field, _) = invalid(&text);
    assert_eq!(field, "plans.pro.limits");
}

#[test]
fn unknown_fields_are_refused_with_their_name_and_line() {
    let text = sample_with("max = 60 }", "maxx = 60 }");
    let err = Plans::parse(&text).unwrap_err();
    assert!(matches!(err, PlanError::Syntax(_)));
    let msg = err.to_string();
    assert!(msg.contains("maxx"), "{msg}");
    assert!(msg.contains("line 6"), "{msg}");

    let err = Plans::parse(&sample_with("anchor_day = 5", "anchorday = 5")).unwrap_err();
    assert!(err.to_string().contains("anchorday"), "{err}");
}

#[test]
fn broken_toml_is_refused_with_a_line() {
    let err = Plans::parse("default_plan = \"free\"\n[plans.free\n").unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn missing_required_field_is_named() {
    let err = Plans::parse(&sample_with("default_plan = \"free\"", "")).unwrap_err();
    assert!(err.to_string().contains("default_plan"), "{err}");
}

#[test]
fn load_names_the_missing_file() {
    let err = Plans::load(Path::new("/nonexistent/plans.toml")).unwrap_err();
    assert!(matches!(err, PlanError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/plans.toml"), "{err}");
}

const BILLED: &str = r#"
[tenants.acme]
plan = "pro"
anchor_day = 15
stripe_customer = "cus_Acme123"

[billing.meters]
requests = "api_requests"
"#;

/// The sample with Stripe billing: acme mapped to a customer, `requests` renamed.
fn billed() -> String {
    sample_with("[tenants.acme]\nplan = \"pro\"\nanchor_day = 15\n", BILLED)
}

#[test]
fn tenants_map_to_stripe_customers_and_meters_to_event_names() {
    let plans = Plans::parse(&billed()).unwrap();
    assert_eq!(plans.stripe_customer("acme"), Some("cus_Acme123"));
    assert_eq!(plans.stripe_customer("globex"), None);
    assert_eq!(plans.stripe_customer("nobody"), None);
    assert_eq!(
        plans.stripe_customers().collect::<Vec<_>>(),
        vec![("acme", "cus_Acme123")]
    );
    assert_eq!(plans.stripe_event_name("requests"), "api_requests");
    // Unmapped meters are billed under their own name.
    assert_eq!(plans.stripe_event_name("search_units"), "search_units");
    // Billing fields change nothing else.
    assert_eq!(plans.resolve("acme", None).anchor_day, 15);
}

#[test]
fn a_file_without_billing_fields_still_parses_and_bills_meters_by_name() {
    let plans = sample();
    assert_eq!(plans.stripe_customers().count(), 0);
    assert_eq!(plans.stripe_event_name("requests"), "requests");
}

#[test]
fn a_malformed_stripe_customer_is_refused_naming_field_and_line() {
    let text = billed().replace("cus_Acme123", "acct_123");
    let (field, msg) = invalid(&text);
    assert_eq!(field, "tenants.acme.stripe_customer");
    assert!(
        msg.contains("\"acct_123\"") && msg.contains("(line 18)"),
        "{msg}"
    );
}

#[test]
fn billing_meters_need_a_meter_key_and_a_plain_event_name() {
    let (field, msg) =
        invalid(&billed().replace("requests = \"api_requests\"", "Requests = \"x\""));
    assert_eq!(field, "billing.meters.Requests");
    assert!(msg.contains("meter name"), "{msg}");
    let (field, msg) = invalid(&billed().replace("\"api_requests\"", "\"api requests\""));
    assert_eq!(field, "billing.meters.requests");
    assert!(msg.contains("(line 21)"), "{msg}");
    let err = Plans::parse(&billed().replace("[billing.meters]", "[billing.meterz]")).unwrap_err();
    assert!(err.to_string().contains("meterz"), "{err}");
}

#[test]
fn two_meters_on_one_stripe_event_name_are_refused() {
    let text = billed().replace(
        "requests = \"api_requests\"",
        "requests = \"api_requests\"\nsearch_units = \"api_requests\"",
    );
    let (field, msg) = invalid(&text);
    assert_eq!(field, "billing.meters.search_units");
    assert!(msg.contains("\"requests\""), "{msg}");
}

#[test]
fn a_meter_mapped_onto_another_meters_default_name_is_refused() {
    // The sample's plans limit `requests`; mapping another meter onto "requests"
    // while `requests` keeps its default name would add the two up at Stripe.
    let text = billed().replace("requests = \"api_requests\"", "exports = \"requests\"");
    let (field, _) = invalid(&text);
    assert_eq!(field, "billing.meters.exports");
}
