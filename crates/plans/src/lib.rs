//! Turnpike plans: parse and validate the plans TOML, resolve a tenant's plan, and
//! compute quota window bounds. Pure Rust: no I/O beyond [`Plans::load`], no async.
//!
//! ```toml
//! default_plan = "free"
//!
//! [plans.free]
//! limits = [ { name = "per-minute", meter = "requests", window = "minute", max = 60 } ]
//!
//! [tenants.acme]
//! plan = "free"
//! anchor_day = 15
//! stripe_customer = "cus_NffrFeUfNV2Hib"   # billed through Stripe (collector)
//!
//! [billing.meters]                          # Turnpike meter -> Stripe event name
//! requests = "api_requests"                 # default: the meter's own name
//! ```

mod error;
pub mod ids;
pub mod keys;
mod raw;
mod validate;
#[cfg(feature = "watch")]
pub mod watch;
mod window;

use std::collections::HashMap;
use std::path::Path;

pub use error::PlanError;
pub use window::{window_bounds, UnknownWindow, Window};

/// Largest `max`, `soft` or cost. Counters are compared inside Redis Lua, whose numbers
/// are doubles: with both terms <= 2^52, `used + cost` stays exact (<= 2^53).
pub const MAX_UNITS: u64 = 1 << 52;

/// A validated plans file, ready to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plans {
    default_plan: String,
    plans: HashMap<String, Plan>,
    tenants: HashMap<String, TenantOverride>,
    /// `[billing.meters]`: meter -> Stripe meter event name, where it differs.
    billing_meters: HashMap<String, String>,
}

/// One plan: its limits in file order and its billing-month anchor day.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    name: String,
    anchor_day: u8,
    limits: Vec<Limit>,
}

/// A `[tenants.NAME]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TenantOverride {
    plan: Option<String>,
    anchor_day: Option<u8>,
    stripe_customer: Option<String>,
}

/// One limit of a plan: at most `max` units of `meter` per `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub name: String,
    pub meter: String,
    pub window: Window,
    pub max: u64,
    pub soft: Option<u64>,
}

/// The plan a tenant is held to, with the anchor day that applies to this tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedPlan<'a> {
    pub name: &'a str,
    pub limits: &'a [Limit],
    pub anchor_day: u8,
}

impl Plans {
    /// Parse and validate plans TOML. The error names the field path (and line).
    pub fn parse(toml_text: &str) -> Result<Plans, PlanError> {
        let file: raw::RawFile =
            toml::from_str(toml_text).map_err(|e| PlanError::Syntax(Box::new(e)))?;
        validate::validate(file, toml_text)
    }

    /// Read and [`parse`](Plans::parse) a plans file.
    pub fn load(path: &Path) -> Result<Plans, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Plans::parse(&text)
    }

    /// The plan for `tenant`: tenant override > claimed plan (if it names a known
    /// plan) > default plan. The anchor day is the tenant's own if set, else the plan's.
    pub fn resolve(&self, tenant: &str, claimed_plan: Option<&str>) -> ResolvedPlan<'_> {
        let tenant_override = self.tenants.get(tenant);
        let plan = tenant_override
            .and_then(|t| t.plan.as_deref())
            .and_then(|name| self.plans.get(name))
            .or_else(|| claimed_plan.and_then(|name| self.plans.get(name)))
            .unwrap_or_else(|| self.default());
        ResolvedPlan {
            name: &plan.name,
            limits: &plan.limits,
            anchor_day: tenant_override
                .and_then(|t| t.anchor_day)
                .unwrap_or(plan.anchor_day),
        }
    }

    /// The plan called `name`, with the plan's own anchor day.
    pub fn plan(&self, name: &str) -> Option<ResolvedPlan<'_>> {
        self.plans.get(name).map(Plan::resolved)
    }

    /// Every plan, in no particular order.
    pub fn plans(&self) -> impl Iterator<Item = ResolvedPlan<'_>> {
        self.plans.values().map(Plan::resolved)
    }

    /// Name of the plan for tenants with no override and no known claimed plan.
    pub fn default_plan(&self) -> &str {
        &self.default_plan
    }

    /// The Stripe customer `tenant` is billed as, if the file maps it.
    pub fn stripe_customer(&self, tenant: &str) -> Option<&str> {
        self.tenants.get(tenant)?.stripe_customer.as_deref()
    }

    /// Every (tenant, Stripe customer) mapping, in no particular order.
    pub fn stripe_customers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tenants
            .iter()
            .filter_map(|(tenant, t)| Some((tenant.as_str(), t.stripe_customer.as_deref()?)))
    }

    /// The Stripe meter event name `meter` is reported under: `[billing.meters]`,
    /// else the meter's own name.
    pub fn stripe_event_name<'a>(&'a self, meter: &'a str) -> &'a str {
        self.billing_meters.get(meter).map_or(meter, String::as_str)
    }

    fn default(&self) -> &Plan {
        // Validation guarantees the default plan exists; this is the only lookup
        // that relies on it.
        &self.plans[&self.default_plan]
    }
}

impl Plan {
    fn resolved(&self) -> ResolvedPlan<'_> {
        ResolvedPlan {
            name: &self.name,
            limits: &self.limits,
            anchor_day: self.anchor_day,
        }
    }
}

#[cfg(test)]
mod tests;
