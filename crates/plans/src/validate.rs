//! Rules a parsed plans file must meet before it replaces the running one.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use toml::Spanned;

use crate::ids::{
    is_valid_limit_name, is_valid_meter, is_valid_plan_name, is_valid_stripe_customer,
    is_valid_stripe_event_name, is_valid_tenant,
};
use crate::raw::{RawBilling, RawFile, RawLimit, RawPlan, RawTenant};
use crate::{Limit, Plan, PlanError, Plans, TenantOverride, Window, MAX_UNITS};

const DEFAULT_ANCHOR_DAY: u8 = 1;

/// The file's text, to turn spans into line numbers for error messages.
struct Source<'a>(&'a str);

impl Source<'_> {
    fn invalid(
        &self,
        field: impl Into<String>,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> PlanError {
        let line = self
            .0
            .get(..span.start)
            .map(|before| before.bytes().filter(|&b| b == b'\n').count() + 1);
        PlanError::Invalid {
            field: field.into(),
            message: message.into(),
            line,
        }
    }
}

pub(crate) fn validate(file: RawFile, text: &str) -> Result<Plans, PlanError> {
    let src = Source(text);
    let mut plans = HashMap::with_capacity(file.plans.len());
    for (name, raw) in file.plans {
        let plan = validate_plan(&src, name, raw)?;
        plans.insert(plan.name.clone(), plan);
    }

    let default_plan = file.default_plan.get_ref();
    if !plans.contains_key(default_plan) {
        return Err(src.invalid(
            "default_plan",
            file.default_plan.span(),
            format!("\"{default_plan}\" names no plan in [plans]"),
        ));
    }

    let mut tenants = HashMap::with_capacity(file.tenants.len());
    for (tenant, raw) in file.tenants {
        let entry = validate_tenant(&src, &tenant, raw, &plans)?;
        tenants.insert(tenant, entry);
    }

    let billing_meters = match file.billing {
        Some(billing) => validate_billing(&src, billing, &plans)?,
        None => HashMap::new(),
    };

    Ok(Plans {
        default_plan: file.default_plan.into_inner(),
        plans,
        tenants,
        billing_meters,
    })
}

/// `[billing.meters]`: each key a meter name, each value a Stripe event name, and no
/// two meters on one event name (Stripe would add them up as one meter).
fn validate_billing(
    src: &Source,
    raw: RawBilling,
    plans: &HashMap<String, Plan>,
) -> Result<HashMap<String, String>, PlanError> {
    let mut by_event: HashMap<String, String> = HashMap::new();
    let mut raw_spans: HashMap<String, Range<usize>> = HashMap::new();
    let mut meters = HashMap::with_capacity(raw.meters.len());
    for (meter, event_name) in raw.meters {
        let field = format!("billing.meters.{meter}");
        if !is_valid_meter(&meter) {
            return Err(src.invalid(
                field,
                event_name.span(),
                "the key must be a meter name: 1..=32 of [a-z0-9_]",
            ));
        }
        if !is_valid_stripe_event_name(event_name.get_ref()) {
            return Err(src.invalid(
                field,
                event_name.span(),
                "must be a Stripe meter event name: 1..=100 of [A-Za-z0-9_.:-]",
            ));
        }
        if let Some(other) = by_event.insert(event_name.get_ref().clone(), meter.clone()) {
            return Err(src.invalid(
                field,
                event_name.span(),
                format!(
                    "meter \"{other}\" is already billed as \"{}\"; give each meter its own \
                     Stripe event name",
                    event_name.get_ref()
                ),
            ));
        }
        raw_spans.insert(meter.clone(), event_name.span());
        meters.insert(meter, event_name.into_inner());
    }
    // A meter billed under its own name (the default) must not share it with a
    // meter mapped onto that name. Only meters the plans' limits name are known here.
    let limited: HashSet<&str> = plans
        .values()
        .flat_map(|p| p.limits.iter().map(|l| l.meter.as_str()))
        .collect();
    for (event_name, meter) in &by_event {
        if event_name != meter
            && limited.contains(event_name.as_str())
            && !meters.contains_key(event_name)
        {
            return Err(src.invalid(
                format!("billing.meters.{meter}"),
                raw_spans[meter].clone(),
                format!(
                    "\"{event_name}\" is also the meter \"{event_name}\"'s own event name; \
                     map \"{event_name}\" to another name in [billing.meters]"
                ),
            ));
        }
    }
    Ok(meters)
}

fn validate_plan(src: &Source, name: String, raw: Spanned<RawPlan>) -> Result<Plan, PlanError> {
    let span = raw.span();
    let raw = raw.into_inner();
    let path = format!("plans.{name}");
    if !is_valid_plan_name(&name) {
        return Err(src.invalid(path, span, "plan name must be 1..=64 of [A-Za-z0-9._-]"));
    }
    let anchor_day = match raw.anchor_day {
        Some(day) => anchor(src, &format!("{path}.anchor_day"), &day)?,
        None => DEFAULT_ANCHOR_DAY,
    };
    if raw.limits.is_empty() {
        return Err(src.invalid(
            format!("{path}.limits"),
            span,
            "a plan needs at least one limit",
        ));
    }

    let mut names = HashSet::new();
    let mut meter_windows = HashSet::new();
    let mut limits = Vec::with_capacity(raw.limits.len());
    for (i, raw_limit) in raw.limits.iter().enumerate() {
        let field = format!("{path}.limits[{i}]");
        let limit = validate_limit(src, &field, raw_limit.get_ref())?;
        if !names.insert(limit.name.clone()) {
            return Err(src.invalid(
                format!("{field}.name"),
                raw_limit.get_ref().name.span(),
                format!("duplicate limit name \"{}\" in this plan", limit.name),
            ));
        }
        if !meter_windows.insert((limit.meter.clone(), limit.window)) {
            return Err(src.invalid(
                format!("{field}.window"),
                raw_limit.get_ref().window.span(),
                format!(
                    "this plan already has a limit on meter \"{}\" per {} (one limit per meter and window)",
                    limit.meter, limit.window
                ),
            ));
        }
        limits.push(limit);
    }
    Ok(Plan {
        name,
        anchor_day,
        limits,
    })
}

fn validate_limit(src: &Source, field: &str, raw: &RawLimit) -> Result<Limit, PlanError> {
    let name = raw.name.get_ref();
    if !is_valid_limit_name(name) {
        return Err(src.invalid(
            format!("{field}.name"),
            raw.name.span(),
            "must be 1..=64 of [A-Za-z0-9_-]",
        ));
    }
    let meter = raw.meter.get_ref();
    if !is_valid_meter(meter) {
        return Err(src.invalid(
            format!("{field}.meter"),
            raw.meter.span(),
            "must be 1..=32 of [a-z0-9_]",
        ));
    }
    let window: Window = raw.window.get_ref().parse().map_err(|e| {
        src.invalid(
            format!("{field}.window"),
            raw.window.span(),
            format!("\"{}\": {e}", raw.window.get_ref()),
        )
    })?;
    let max = units(src, &format!("{field}.max"), &raw.max)?;
    let soft = match &raw.soft {
        Some(soft) => {
            let value = units(src, &format!("{field}.soft"), soft)?;
            if value > max {
                return Err(src.invalid(
                    format!("{field}.soft"),
                    soft.span(),
                    format!("must be <= max ({max})"),
                ));
            }
            Some(value)
        }
        None => None,
    };
    Ok(Limit {
        name: name.clone(),
        meter: meter.clone(),
        window,
        max,
        soft,
    })
}

fn validate_tenant(
    src: &Source,
    tenant: &str,
    raw: Spanned<RawTenant>,
    plans: &HashMap<String, Plan>,
) -> Result<TenantOverride, PlanError> {
    let path = format!("tenants.{tenant}");
    if !is_valid_tenant(tenant) {
        return Err(src.invalid(
            path,
            raw.span(),
            "tenant id must be 1..=64 of [A-Za-z0-9._-]",
        ));
    }
    let raw = raw.into_inner();
    let plan = match raw.plan {
        Some(plan) if !plans.contains_key(plan.get_ref()) => {
            return Err(src.invalid(
                format!("{path}.plan"),
                plan.span(),
                format!("\"{}\" names no plan in [plans]", plan.get_ref()),
            ));
        }
        Some(plan) => Some(plan.into_inner()),
        None => None,
    };
    let anchor_day = match raw.anchor_day {
        Some(day) => Some(anchor(src, &format!("{path}.anchor_day"), &day)?),
        None => None,
    };
    let stripe_customer = match raw.stripe_customer {
        Some(customer) if !is_valid_stripe_customer(customer.get_ref()) => {
            return Err(src.invalid(
                format!("{path}.stripe_customer"),
                customer.span(),
                format!(
                    "\"{}\" is not a Stripe customer id (cus_ then letters, digits or _)",
                    customer.get_ref()
                ),
            ));
        }
        Some(customer) => Some(customer.into_inner()),
        None => None,
    };
    Ok(TenantOverride {
        plan,
        anchor_day,
        stripe_customer,
    })
}

fn anchor(src: &Source, field: &str, day: &Spanned<i64>) -> Result<u8, PlanError> {
    match u8::try_from(*day.get_ref()) {
        Ok(d @ 1..=31) => Ok(d),
        _ => Err(src.invalid(field, day.span(), "must be 1..=31")),
    }
}

fn units(src: &Source, field: &str, value: &Spanned<i64>) -> Result<u64, PlanError> {
    match u64::try_from(*value.get_ref()) {
        Ok(v @ 1..=MAX_UNITS) => Ok(v),
        Ok(v) if v > MAX_UNITS => {
            Err(src.invalid(field, value.span(), format!("must be <= {MAX_UNITS}")))
        }
        _ => Err(src.invalid(field, value.span(), "must be > 0")),
    }
}
