//! The plans file as written, before validation. Integers are `i64` (TOML's own
//! integer type) so that a negative `max` gets our message, not a serde one; spans
//! let validation errors point at a line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub default_plan: Spanned<String>,
    #[serde(default)]
    pub plans: BTreeMap<String, Spanned<RawPlan>>,
    #[serde(default)]
    pub tenants: BTreeMap<String, Spanned<RawTenant>>,
    /// How usage is billed through Stripe (the collector's billing sync).
    #[serde(default)]
    pub billing: Option<RawBilling>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBilling {
    /// Turnpike meter -> Stripe meter event name.
    #[serde(default)]
    pub meters: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlan {
    #[serde(default)]
    pub anchor_day: Option<Spanned<i64>>,
    pub limits: Vec<Spanned<RawLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    pub name: Spanned<String>,
    pub meter: Spanned<String>,
    pub window: Spanned<String>,
    pub max: Spanned<i64>,
    #[serde(default)]
    pub soft: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenant {
    #[serde(default)]
    pub plan: Option<Spanned<String>>,
    #[serde(default)]
    pub anchor_day: Option<Spanned<i64>>,
    #[serde(default)]
    pub stripe_customer: Option<Spanned<String>>,
}
