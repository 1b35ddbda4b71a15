//! Plugin configuration: the JSON Envoy hands to `on_configure`, parsed into serde
//! structs once and compiled into a ready-to-run [`Config`]. Every error names the field.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::claims::ClaimPath;
use crate::routes::{PathMatch, RequestMatcher, Route};

/// Longest callout timeout accepted: a request paused longer than this is a bug.
const MAX_TIMEOUT_MS: u64 = 60_000;

/// A configuration error: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// What to do when the counter errs or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let the request through, counted and marked unverified.
    FailOpen,
    /// Answer 503.
    FailClosed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tenant: RawTenant,
    counter: RawCounter,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    default_route: Option<RawDefaultRoute>,
    #[serde(default)]
    exempt: Vec<RawExempt>,
    #[serde(default)]
    refund_on_5xx: bool,
    #[serde(default = "default_warning_header")]
    soft_warning_header: String,
    /// Set `turnpike-tenant` and `turnpike-consume-id` on metered requests (two
    /// hostcalls each request: off when the upstream does not read them).
    #[serde(default = "default_true")]
    upstream_headers: bool,
    /// Add `RateLimit-Policy` and `RateLimit` to allowed answers (429s always carry
    /// them).
    #[serde(default = "default_true")]
    ratelimit_headers: bool,
    #[serde(default)]
    collector: Option<RawCollector>,
    #[serde(default)]
    lease: Option<RawLease>,
    /// Largest request body read for a JSON reservation; past it, the default.
    #[serde(default = "default_reserve_body_max_bytes")]
    reserve_body_max_bytes: usize,
    /// Hold a body-reserving request's headers until the counter has answered (needs
    /// Envoy's `allow_on_headers_stop_iteration: true` in the Wasm plugin config, Envoy
    /// 1.35 and later; without it Envoy never hands the body over and the request hangs).
    /// Off: the headers go upstream at once and only the body is held.
    #[serde(default)]
    hold_headers_for_body: bool,
    /// Largest JSON response body read for a settlement; past it, the missing policy.
    /// (Event streams are read line by line and have no such bound.)
    #[serde(default = "default_settle_body_max_bytes")]
    settle_body_max_bytes: usize,
}

fn default_reserve_body_max_bytes() -> usize {
    64 * 1024
}
fn default_settle_body_max_bytes() -> usize {
    1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    cluster: String,
    authority: String,
    /// The ingest secret inline. Prefer `secret_env`: plugin configuration shows in
    /// every Envoy's `/config_dump`.
    #[serde(default)]
    secret: Option<String>,
    /// Name of the VM environment variable holding the ingest secret.
    #[serde(default)]
    secret_env: Option<String>,
    #[serde(default = "default_flush_interval_ms")]
    flush_interval_ms: u64,
    #[serde(default = "default_max_batch")]
    max_batch: usize,
    #[serde(default = "default_max_buffer")]
    max_buffer: usize,
    #[serde(default = "default_collector_timeout_ms")]
    timeout_ms: u64,
    /// CloudEvents `source`; default `//turnpike/envoy/<node id>`.
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    claim: String,
    #[serde(default)]
    plan_claim: Option<String>,
    #[serde(default = "default_metadata_namespace")]
    metadata_namespace: String,
    #[serde(default = "default_payload_key")]
    payload_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCounter {
    cluster: String,
    authority: String,
    /// Name of the VM environment variable holding the counter's service token
    /// (sent as `Authorization: Bearer`). Absent: no credential is sent.
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_failure_mode")]
    failure_mode: FailureMode,
    /// Most consumes sent to the counter in one call while others are in flight
    /// (1: every request calls alone).
    #[serde(default = "default_consume_batch_max")]
    batch_max: usize,
    /// Consume calls in flight at once, per worker, before waiting requests queue for
    /// the next batch.
    #[serde(default = "default_calls_in_flight")]
    calls_in_flight: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path_exact: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    meters: BTreeMap<String, u64>,
    /// `exact` (one consume per request, the default) or `leased`.
    #[serde(default)]
    mode: Mode,
    /// Meters reserved before the upstream runs and settled from its answer.
    #[serde(default)]
    usage: Vec<RawUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsage {
    meter: String,
    reserve: RawReserve,
    settle: RawSettle,
    /// `reservation` (default): bill what was reserved when the upstream reported
    /// nothing usable; `zero`: bill nothing.
    #[serde(default)]
    missing: RawMissing,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReserve {
    #[serde(default)]
    fixed: Option<u64>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    json: Option<String>,
    #[serde(default)]
    default: Option<u64>,
    #[serde(default)]
    max: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettle {
    #[serde(default)]
    json: Option<String>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    response_bytes: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawMissing {
    #[default]
    Reservation,
    Zero,
}

/// How a route's requests are decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One consume per request: every decision is made in Redis.
    #[default]
    Exact,
    /// Requests come from a block leased from the counter and shared by the workers;
    /// near a limit (no lease granted) requests are decided exactly.
    Leased,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    #[serde(default = "default_lease_target_ms")]
    target_ms: u64,
    #[serde(default = "default_lease_max_request")]
    max_request: u64,
    #[serde(default = "default_lease_report_interval_ms")]
    report_interval_ms: u64,
    #[serde(default = "default_lease_idle_return_ms")]
    idle_return_ms: u64,
}

fn default_lease_target_ms() -> u64 {
    200
}
fn default_lease_max_request() -> u64 {
    10_000
}
fn default_lease_report_interval_ms() -> u64 {
    100
}
fn default_lease_idle_return_ms() -> u64 {
    2_000
}

/// How leased routes lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub tuning: crate::lease_state::LeaseTuning,
    /// Admitted requests are reported to the counter (and so the ledger) this often;
    /// also how often renewals and returns go out. What an Envoy killed outright had
    /// not reported yet is the most leased mode can lose.
    pub report_interval: Duration,
    /// A lease the tenant has not spent from for this long goes back.
    pub idle_return_ms: u64,
}

impl LeaseConfig {
    /// `report_interval` in ms, as the counter is told it (it sizes the report delay).
    pub fn report_interval_ms(&self) -> u64 {
        u64::try_from(self.report_interval.as_millis()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaultRoute {
    name: String,
    meters: BTreeMap<String, u64>,
    #[serde(default)]
    mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExempt {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path_exact: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_warning_header() -> String {
    "turnpike-quota-warning".to_owned()
}
fn default_metadata_namespace() -> String {
    "envoy.filters.http.jwt_authn".to_owned()
}
fn default_payload_key() -> String {
    "jwt_payload".to_owned()
}
fn default_timeout_ms() -> u64 {
    250
}
fn default_consume_batch_max() -> usize {
    64
}
fn default_calls_in_flight() -> usize {
    2
}
fn default_failure_mode() -> FailureMode {
    FailureMode::FailClosed
}
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_max_batch() -> usize {
    500
}
fn default_max_buffer() -> usize {
    50_000
}
fn default_collector_timeout_ms() -> u64 {
    2000
}

/// Largest batch the collector takes (its default `--max-batch-events`).
const MAX_BATCH: usize = 1000;
/// Batch bodies stay under half the collector's default 1 MiB body limit.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Where the tenant (and optional plan) come from: claims of the verified JWT payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSource {
    pub tenant: ClaimPath,
    pub plan: Option<ClaimPath>,
}

/// How to reach the counter service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterConfig {
    pub cluster: String,
    pub authority: String,
    /// `Bearer <token>`, built once; `None`: the counter takes no credential.
    pub authorization: Option<String>,
    pub timeout: Duration,
    pub failure_mode: FailureMode,
    /// Most consumes in one batched call; 1: no batches.
    pub batch_max: usize,
    /// Consume calls in flight at once per worker (batched or not).
    pub calls_in_flight: usize,
}

/// The validated, compiled configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub tenant: TenantSource,
    pub counter: CounterConfig,
    pub matcher: RequestMatcher,
    pub refund_on_5xx: bool,
    pub soft_warning_header: String,
    pub upstream_headers: bool,
    pub ratelimit_headers: bool,
    /// Where usage events go; `None`: no events.
    pub collector: Option<CollectorConfig>,
    /// How leased routes lease (defaults when the section is absent).
    pub lease: LeaseConfig,
    pub reserve_body_max_bytes: usize,
    pub hold_headers_for_body: bool,
    pub settle_body_max_bytes: usize,
}

/// How usage events reach the collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorConfig {
    pub cluster: String,
    pub authority: String,
    /// `Bearer <secret>`, built once.
    pub authorization: String,
    pub flush_interval: Duration,
    pub max_batch: usize,
    pub max_buffer: usize,
    pub timeout: Duration,
    pub source: Option<String>,
}

/// Reads a VM environment variable (Envoy hands the VM the host variables listed in
/// `vm_config.environment_variables`, so secrets stay out of `/config_dump`).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Parse and validate the plugin configuration JSON, reading secrets from the
    /// process environment.
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        Self::parse_with_env(json, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with secrets from `env`.
    pub fn parse_with_env(json: &[u8], env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            ConfigError::new(field, e.into_inner().to_string())
        })?;
        compile(raw, env)
    }
}

fn compile(raw: RawConfig, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    let tenant = TenantSource {
        tenant: compile_claim(&raw.tenant, &raw.tenant.claim, "tenant.claim")?,
        plan: raw
            .tenant
            .plan_claim
            .as_deref()
            .map(|c| compile_claim(&raw.tenant, c, "tenant.plan_claim"))
            .transpose()?,
    };
    let counter = compile_counter(raw.counter, env)?;
    let counter_timeout_ms = u64::try_from(counter.timeout.as_millis()).unwrap_or(u64::MAX);

    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let field = format!("routes[{i}]");
        if routes.iter().any(|known: &Route| known.name == r.name) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                "duplicate route name",
            ));
        }
        let path = compile_path(&field, r.path_exact, r.path_prefix)?;
        let method = compile_method(&field, r.method)?;
        let mut route = Route::new(
            check_route_name(&field, r.name)?,
            method,
            path,
            compile_meters(&field, r.meters)?,
        );
        route.mode = r.mode;
        route.usage = compile_usage(&field, r.usage, &route.meters)?;
        if route.mode == Mode::Leased && !route.usage.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.mode"),
                "a route with settled usage meters is decided exactly (a lease grants whole requests at fixed prices)",
            ));
        }
        routes.push(route);
    }
    let default_route = raw
        .default_route
        .map(|d| -> Result<Route, ConfigError> {
            let name = check_route_name("default_route", d.name)?;
            let mut route =
                Route::new(name, None, None, compile_meters("default_route", d.meters)?);
            route.mode = d.mode;
            Ok(route)
        })
        .transpose()?;

    let mut exempt = Vec::with_capacity(raw.exempt.len());
    for (i, e) in raw.exempt.into_iter().enumerate() {
        let field = format!("exempt[{i}]");
        let method = compile_method(&field, e.method)?;
        let path = compile_path(&field, e.path_exact, e.path_prefix)?;
        if method.is_none() && path.is_none() {
            return Err(ConfigError::new(
                field,
                "needs path_exact, path_prefix or method (an empty entry would exempt everything)",
            ));
        }
        exempt.push((method, path));
    }

    let header = raw.soft_warning_header;
    if !is_header_name(&header) {
        return Err(ConfigError::new(
            "soft_warning_header",
            "must be a lowercase header name of [a-z0-9-]",
        ));
    }

    Ok(Config {
        tenant,
        counter,
        matcher: RequestMatcher::new(routes, default_route, exempt),
        refund_on_5xx: raw.refund_on_5xx,
        soft_warning_header: header,
        upstream_headers: raw.upstream_headers,
        ratelimit_headers: raw.ratelimit_headers,
        collector: raw
            .collector
            .map(|c| compile_collector(c, env))
            .transpose()?,
        lease: compile_lease(raw.lease, counter_timeout_ms)?,
        hold_headers_for_body: raw.hold_headers_for_body,
        reserve_body_max_bytes: check_range(
            "reserve_body_max_bytes",
            raw.reserve_body_max_bytes,
            1,
            16 * 1024 * 1024,
        )?,
        settle_body_max_bytes: check_range(
            "settle_body_max_bytes",
            raw.settle_body_max_bytes,
            1,
            64 * 1024 * 1024,
        )?,
    })
}

/// The checks every callout target shares: an Envoy cluster, an `:authority` and a
/// timeout. `section` names the config section in errors.
fn check_callout_target(
    section: &str,
    cluster: &str,
    authority: &str,
    timeout_ms: u64,
) -> Result<(), ConfigError> {
    if cluster.trim().is_empty() {
        return Err(ConfigError::new(
            format!("{section}.cluster"),
            "must not be empty",
        ));
    }
    if authority.trim().is_empty() || authority.chars().any(|c| c.is_whitespace()) {
        return Err(ConfigError::new(
            format!("{section}.authority"),
            "must be a non-empty host[:port]",
        ));
    }
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(ConfigError::new(
            format!("{section}.timeout_ms"),
            format!("must be in 1..={MAX_TIMEOUT_MS}"),
        ));
    }
    Ok(())
}

fn check_range(field: &str, value: usize, min: usize, max: usize) -> Result<usize, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(field, format!("must be in {min}..={max}")))
    }
}

fn compile_usage(
    field: &str,
    raw: Vec<RawUsage>,
    fixed: &[(String, u64)],
) -> Result<Vec<crate::usage::UsageSpec>, ConfigError> {
    use crate::usage::{Missing, Reserve, Settle, UsageSpec, MAX_QUANTITY};
    let mut specs: Vec<UsageSpec> = Vec::with_capacity(raw.len());
    for (i, u) in raw.into_iter().enumerate() {
        let at = format!("{field}.usage[{i}]");
        if !is_meter_name(&u.meter) {
            return Err(ConfigError::new(
                format!("{at}.meter"),
                "must be 1..=32 of [a-z0-9_]",
            ));
        }
        if fixed.iter().any(|(m, _)| *m == u.meter) || specs.iter().any(|s| s.meter == u.meter) {
            return Err(ConfigError::new(
                format!("{at}.meter"),
                format!("{:?} is priced twice on this route", u.meter),
            ));
        }
        let bound = |name: &str, value: Option<u64>, default: u64| -> Result<u64, ConfigError> {
            let v = value.unwrap_or(default);
            if v > MAX_QUANTITY {
                return Err(ConfigError::new(
                    format!("{at}.reserve.{name}"),
                    format!("must be <= {MAX_QUANTITY}"),
                ));
            }
            Ok(v)
        };
        let r = u.reserve;
        let reserve = match (r.fixed, r.header, r.json) {
            (Some(n), None, None) if r.default.is_none() && r.max.is_none() => {
                Reserve::Fixed(bound("fixed", Some(n), 0)?)
            }
            (None, Some(name), None) => {
                if !is_header_name(&name) {
                    return Err(ConfigError::new(
                        format!("{at}.reserve.header"),
                        "must be a lowercase header name of [a-z0-9-]",
                    ));
                }
                let default = bound("default", r.default, 0)?;
                let max = bound("max", r.max, MAX_QUANTITY)?;
                if default > max {
                    return Err(ConfigError::new(
                        format!("{at}.reserve.default"),
                        "must not exceed max",
                    ));
                }
                Reserve::Header { name, default, max }
            }
            (None, None, Some(pointer)) => {
                if !pointer.starts_with('/') {
                    return Err(ConfigError::new(
                        format!("{at}.reserve.json"),
                        "must be a JSON pointer, e.g. /max_tokens",
                    ));
                }
                let default = bound("default", r.default, 0)?;
                let max = bound("max", r.max, MAX_QUANTITY)?;
                if default > max {
                    return Err(ConfigError::new(
                        format!("{at}.reserve.default"),
                        "must not exceed max",
                    ));
                }
                Reserve::Json {
                    pointer,
                    default,
                    max,
                }
            }
            _ => return Err(ConfigError::new(
                format!("{at}.reserve"),
                "give exactly one of fixed, header (with default, max) or json (with default, max)",
            )),
        };
        let s = u.settle;
        let settle = match (s.json, s.header, s.response_bytes) {
            (Some(pointer), None, false) if pointer.starts_with('/') => Settle::Json(pointer),
            (Some(_), None, false) => {
                return Err(ConfigError::new(
                    format!("{at}.settle.json"),
                    "must be a JSON pointer, e.g. /usage/total_tokens",
                ))
            }
            (None, Some(name), false) if is_header_name(&name) => Settle::Header(name),
            (None, Some(_), false) => {
                return Err(ConfigError::new(
                    format!("{at}.settle.header"),
                    "must be a lowercase header name of [a-z0-9-]",
                ))
            }
            (None, None, true) => Settle::ResponseBytes,
            _ => {
                return Err(ConfigError::new(
                    format!("{at}.settle"),
                    "give exactly one of json, header or response_bytes: true",
                ))
            }
        };
        specs.push(UsageSpec {
            meter: u.meter,
            reserve,
            settle,
            missing: match u.missing {
                RawMissing::Reservation => Missing::Reservation,
                RawMissing::Zero => Missing::Zero,
            },
        });
    }
    Ok(specs)
}

fn is_meter_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn compile_lease(
    raw: Option<RawLease>,
    counter_timeout_ms: u64,
) -> Result<LeaseConfig, ConfigError> {
    let raw = raw.unwrap_or(RawLease {
        target_ms: default_lease_target_ms(),
        max_request: default_lease_max_request(),
        report_interval_ms: default_lease_report_interval_ms(),
        idle_return_ms: default_lease_idle_return_ms(),
    });
    if !(10..=60_000).contains(&raw.target_ms) {
        return Err(ConfigError::new("lease.target_ms", "must be in 10..=60000"));
    }
    if !(1..=100_000).contains(&raw.max_request) {
        return Err(ConfigError::new(
            "lease.max_request",
            "must be in 1..=100000",
        ));
    }
    if !(10..=10_000).contains(&raw.report_interval_ms) {
        return Err(ConfigError::new(
            "lease.report_interval_ms",
            "must be in 10..=10000",
        ));
    }
    if raw.idle_return_ms < raw.report_interval_ms || raw.idle_return_ms > 3_600_000 {
        return Err(ConfigError::new(
            "lease.idle_return_ms",
            "must be in report_interval_ms..=3600000",
        ));
    }
    Ok(LeaseConfig {
        tuning: crate::lease_state::LeaseTuning {
            target_ms: raw.target_ms,
            max_request: raw.max_request,
            // A renewal goes out within a tick (2 ms) and takes one callout; the
            // report interval on top is slack for a loaded worker.
            renew_timeout_ms: raw.report_interval_ms + 2 * counter_timeout_ms,
            // The lease's end here is already early: it is counted from when the
            // renewal was sent, so it falls before the counter's end by the round trip.
            // What is left to cover is millisecond rounding on both clocks (1 ms each).
            expiry_margin_ms: 2,
            // A worker takes about 5 ms of traffic per compare-and-swap, and spends it
            // within 20 ms (half the idle return at most, so a quiet lease that goes
            // back has no hold left): two hostcalls fewer per request.
            hold_span_ms: 5,
            hold_valid_ms: (raw.idle_return_ms / 2).min(20),
            // Less than the counter's TURN_WAIT_MS (10) less a tick (2 ms): the ask
            // reaches the counter when it holds asks for the window to turn.
            turn_lead_ms: 8,
            // The successor of a lease that ended with its second comes a few ms
            // after the turn (the counter holds the ask until then, then a round
            // trip): requests wait for it rather than each cost an exact consume.
            // Bounded so that a counter slow to answer costs them little more.
            renewal_wait_ms: 30,
        },
        report_interval: Duration::from_millis(raw.report_interval_ms),
        idle_return_ms: raw.idle_return_ms,
    })
}

/// A secret from the VM environment variable `name` (for `field`).
fn secret_from_env(field: &str, name: &str, env: EnvLookup<'_>) -> Result<String, ConfigError> {
    let value = env(name).map(|v| v.trim().to_owned()).unwrap_or_default();
    if value.is_empty() {
        return Err(ConfigError::new(
            field,
            format!(
                "environment variable {name} is not set in the VM: set it for Envoy and list it \
                 in vm_config.environment_variables.host_env_keys"
            ),
        ));
    }
    Ok(value)
}

fn check_secret(field: &str, secret: &str) -> Result<(), ConfigError> {
    if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(field, "must be non-empty visible ASCII"));
    }
    Ok(())
}

fn compile_collector(
    raw: RawCollector,
    env: EnvLookup<'_>,
) -> Result<CollectorConfig, ConfigError> {
    check_callout_target("collector", &raw.cluster, &raw.authority, raw.timeout_ms)?;
    let secret = match (raw.secret, raw.secret_env) {
        (Some(secret), None) => {
            check_secret("collector.secret", &secret)?;
            secret
        }
        (None, Some(name)) => {
            let secret = secret_from_env("collector.secret_env", &name, env)?;
            check_secret("collector.secret_env", &secret)?;
            secret
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "collector.secret",
                "give secret_env or secret, not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::new(
                "collector.secret_env",
                "required: the VM environment variable holding the ingest secret",
            ))
        }
    };
    if !(10..=60_000).contains(&raw.flush_interval_ms) {
        return Err(ConfigError::new(
            "collector.flush_interval_ms",
            "must be in 10..=60000",
        ));
    }
    if !(1..=MAX_BATCH).contains(&raw.max_batch) {
        return Err(ConfigError::new(
            "collector.max_batch",
            format!("must be in 1..={MAX_BATCH}"),
        ));
    }
    if raw.max_buffer < raw.max_batch || raw.max_buffer > 1_000_000 {
        return Err(ConfigError::new(
            "collector.max_buffer",
            "must be in max_batch..=1000000",
        ));
    }
    if raw.source.as_deref().is_some_and(str::is_empty) {
        return Err(ConfigError::new("collector.source", "must not be empty"));
    }
    Ok(CollectorConfig {
        cluster: raw.cluster,
        authority: raw.authority,
        authorization: format!("Bearer {secret}"),
        flush_interval: Duration::from_millis(raw.flush_interval_ms),
        max_batch: raw.max_batch,
        max_buffer: raw.max_buffer,
        timeout: Duration::from_millis(raw.timeout_ms),
        source: raw.source,
    })
}

fn compile_claim(raw: &RawTenant, claim: &str, field: &str) -> Result<ClaimPath, ConfigError> {
    if raw.metadata_namespace.is_empty() {
        return Err(ConfigError::new(
            "tenant.metadata_namespace",
            "must not be empty",
        ));
    }
    if raw.payload_key.is_empty() {
        return Err(ConfigError::new("tenant.payload_key", "must not be empty"));
    }
    ClaimPath::new(&raw.metadata_namespace, &raw.payload_key, claim)
        .map_err(|reason| ConfigError::new(field, reason))
}

fn compile_counter(raw: RawCounter, env: EnvLookup<'_>) -> Result<CounterConfig, ConfigError> {
    check_callout_target("counter", &raw.cluster, &raw.authority, raw.timeout_ms)?;
    let authorization = match &raw.token_env {
        Some(name) => {
            let token = secret_from_env("counter.token_env", name, env)?;
            check_secret("counter.token_env", &token)?;
            Some(format!("Bearer {token}"))
        }
        None => None,
    };
    Ok(CounterConfig {
        authorization,
        cluster: raw.cluster,
        authority: raw.authority,
        timeout: Duration::from_millis(raw.timeout_ms),
        failure_mode: raw.failure_mode,
        batch_max: check_range(
            "counter.batch_max",
            raw.batch_max,
            1,
            turnpike_wire::MAX_CONSUME_BATCH,
        )?,
        calls_in_flight: check_range("counter.calls_in_flight", raw.calls_in_flight, 1, 64)?,
    })
}

fn check_route_name(field: &str, name: String) -> Result<String, ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(name)
    } else {
        Err(ConfigError::new(
            format!("{field}.name"),
            "must be 1..=64 chars of [A-Za-z0-9._-]",
        ))
    }
}

fn compile_method(field: &str, method: Option<String>) -> Result<Option<String>, ConfigError> {
    match method {
        None => Ok(None),
        Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Ok(Some(m)),
        Some(_) => Err(ConfigError::new(
            format!("{field}.method"),
            "must be an uppercase HTTP method, e.g. GET",
        )),
    }
}

fn compile_path(
    field: &str,
    exact: Option<String>,
    prefix: Option<String>,
) -> Result<Option<PathMatch>, ConfigError> {
    let check = |name: &str, p: &str| {
        if !p.starts_with('/') || p.contains(['?', '#']) {
            return Err(ConfigError::new(
                format!("{field}.{name}"),
                "must start with '/' and hold no query or fragment",
            ));
        }
        // Requests are matched on their normalised path: a rule spelled otherwise
        // could never match.
        let normal = crate::path::normalize(p.as_bytes());
        if normal != p {
            return Err(ConfigError::new(
                format!("{field}.{name}"),
                format!("must be a normalised path (`{p}` is matched as `{normal}`)"),
            ));
        }
        Ok(())
    };
    match (exact, prefix) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            field,
            "path_exact and path_prefix are mutually exclusive",
        )),
        (Some(e), None) => check("path_exact", &e).map(|()| Some(PathMatch::Exact(e))),
        (None, Some(p)) => check("path_prefix", &p).map(|()| Some(PathMatch::Prefix(p))),
        (None, None) => Ok(None),
    }
}

fn compile_meters(
    field: &str,
    meters: BTreeMap<String, u64>,
) -> Result<Vec<(String, u64)>, ConfigError> {
    if meters.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.meters"),
            "must not be empty",
        ));
    }
    for (meter, cost) in &meters {
        let valid = !meter.is_empty()
            && meter.len() <= 32
            && meter
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(ConfigError::new(
                format!("{field}.meters.{meter}"),
                "meter names are 1..=32 chars of [a-z0-9_]",
            ));
        }
        if *cost == 0 {
            return Err(ConfigError::new(
                format!("{field}.meters.{meter}"),
                "cost must be > 0",
            ));
        }
    }
    Ok(meters.into_iter().collect())
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "tenant": { "claim": "org.id", "plan_claim": "plan" },
      "counter": { "cluster": "outbound|8080||counter.svc", "authority": "turnpike-counter",
                   "timeout_ms": 250, "failure_mode": "fail_open" },
      "routes": [
        { "name": "search", "method": "GET", "path_prefix": "/v1/search",
          "meters": { "requests": 1, "search_units": 5 } },
        { "name": "export", "method": "POST", "path_exact": "/v1/exports",
          "meters": { "requests": 1, "exports": 1 } } ],
      "default_route": { "name": "api", "meters": { "requests": 1 } },
      "exempt": [ { "path_exact": "/healthz" } ],
      "refund_on_5xx": true,
      "soft_warning_header": "turnpike-quota-warning"
    }"#;

    fn parse_err(json: &str) -> String {
        match Config::parse(json.as_bytes()) {
            Ok(_) => String::from("parsed"),
            Err(e) => e.to_string(),
        }
    }

    fn with(patch: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        patch(&mut v);
        v.to_string()
    }

    #[test]
    fn documented_example_parses_with_istio_cluster_name() {
        let cfg = Config::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(cfg.counter.cluster, "outbound|8080||counter.svc");
        assert_eq!(cfg.counter.timeout, Duration::from_millis(250));
        assert_eq!(cfg.counter.failure_mode, FailureMode::FailOpen);
        assert!(cfg.refund_on_5xx);
        assert_eq!(
            cfg.tenant.tenant.segments(),
            [
                "metadata",
                "filter_metadata",
                "envoy.filters.http.jwt_authn",
                "jwt_payload",
                "org",
                "id"
            ]
        );
    }

    #[test]
    fn empty_meters_error_names_the_route_index() {
        let json = with(|v| v["routes"][1]["meters"] = serde_json::json!({}));
        assert_eq!(parse_err(&json), "routes[1].meters: must not be empty");
    }

    #[test]
    fn wrong_type_error_names_the_nested_field() {
        let json = with(|v| v["counter"]["timeout_ms"] = serde_json::json!("fast"));
        let err = parse_err(&json);
        assert!(err.starts_with("counter.timeout_ms: invalid type"), "{err}");
    }

    #[test]
    fn unknown_failure_mode_is_refused_naming_the_field() {
        let json = with(|v| v["counter"]["failure_mode"] = serde_json::json!("maybe"));
        assert!(parse_err(&json).starts_with("counter.failure_mode: unknown variant"));
    }

    #[test]
    fn misspelled_field_is_refused() {
        let json = with(|v| v["refund_on_5xxx"] = serde_json::json!(true));
        assert!(parse_err(&json).contains("unknown field `refund_on_5xxx`"));
    }

    #[test]
    fn missing_counter_section_is_refused() {
        let json = with(|v| {
            v.as_object_mut().unwrap().remove("counter");
        });
        assert!(parse_err(&json).contains("missing field `counter`"));
    }

    #[test]
    fn both_path_kinds_on_one_route_are_refused() {
        let json = with(|v| v["routes"][0]["path_exact"] = serde_json::json!("/v1/search"));
        assert_eq!(
            parse_err(&json),
            "routes[0]: path_exact and path_prefix are mutually exclusive"
        );
    }

    #[test]
    fn zero_cost_and_bad_meter_names_are_refused() {
        let json = with(|v| v["routes"][0]["meters"]["requests"] = serde_json::json!(0));
        assert_eq!(
            parse_err(&json),
            "routes[0].meters.requests: cost must be > 0"
        );
        let json = with(|v| v["default_route"]["meters"] = serde_json::json!({"Req-s": 1}));
        assert_eq!(
            parse_err(&json),
            "default_route.meters.Req-s: meter names are 1..=32 chars of [a-z0-9_]"
        );
    }

    #[test]
    fn timeout_out_of_range_is_refused() {
        let json = with(|v| v["counter"]["timeout_ms"] = serde_json::json!(0));
        assert_eq!(parse_err(&json), "counter.timeout_ms: must be in 1..=60000");
    }

    #[test]
    fn empty_claim_segment_is_refused() {
        let json = with(|v| v["tenant"]["claim"] = serde_json::json!("org..id"));
        assert!(parse_err(&json).starts_with("tenant.claim: "));
    }

    #[test]
    fn duplicate_route_names_are_refused() {
        let json = with(|v| v["routes"][1]["name"] = serde_json::json!("search"));
        assert_eq!(parse_err(&json), "routes[1].name: duplicate route name");
    }

    #[test]
    fn empty_exempt_entry_is_refused() {
        let json = with(|v| v["exempt"] = serde_json::json!([{}]));
        assert!(parse_err(&json).starts_with("exempt[0]: needs"));
    }

    #[test]
    fn lowercase_method_is_refused() {
        let json = with(|v| v["routes"][0]["method"] = serde_json::json!("get"));
        assert!(parse_err(&json).starts_with("routes[0].method: "));
    }

    #[test]
    fn paths_that_are_not_normalised_are_refused_naming_the_field() {
        let json = with(|v| v["routes"][0]["path_prefix"] = serde_json::json!("/v1//search"));
        assert_eq!(
            parse_err(&json),
            "routes[0].path_prefix: must be a normalised path (`/v1//search` is matched as `/v1/search`)"
        );
        let json = with(|v| v["exempt"][0]["path_exact"] = serde_json::json!("/%68ealthz"));
        assert_eq!(
            parse_err(&json),
            "exempt[0].path_exact: must be a normalised path (`/%68ealthz` is matched as `/healthz`)"
        );
        for bad in [
            "/v1/./x",
            "/v1/x/..",
            "/v1;p",
            "/v1\\x",
            "/v1/%2fx",
            "/v1/%c3%a9",
            "/a b",
        ] {
            let json = with(|v| v["routes"][1]["path_exact"] = serde_json::json!(bad));
            let err = parse_err(&json);
            assert!(
                err.starts_with("routes[1].path_exact: must be a normalised path"),
                "{bad}: {err}"
            );
        }
        for good in ["/v1/things:search", "/v1/search/", "/v1/%C3%A9", "/"] {
            let json = with(|v| v["routes"][1]["path_exact"] = serde_json::json!(good));
            assert_eq!(parse_err(&json), "parsed", "{good}");
        }
    }

    #[test]
    fn not_json_is_refused_with_a_reason() {
        assert!(parse_err("{").contains("EOF"));
    }

    #[test]
    fn collector_section_compiles_with_defaults() {
        let json = with(|v| {
            v["collector"] = serde_json::json!({
                "cluster": "turnpike_collector", "authority": "turnpike-collector", "secret": "s3cret"
            })
        });
        let cfg = Config::parse(json.as_bytes()).unwrap();
        let c = cfg.collector.unwrap();
        assert_eq!(c.authorization, "Bearer s3cret");
        assert_eq!((c.max_batch, c.max_buffer), (500, 50_000));
        assert_eq!(c.flush_interval, Duration::from_millis(1000));
    }

    #[test]
    fn the_collector_secret_comes_from_one_place() {
        let both = with(
            |v| v["collector"] = serde_json::json!({"cluster": "c", "authority": "a", "secret": "s", "secret_env": "X"}),
        );
        assert_eq!(
            parse_err(&both),
            "collector.secret: give secret_env or secret, not both"
        );
        let neither =
            with(|v| v["collector"] = serde_json::json!({"cluster": "c", "authority": "a"}));
        assert!(parse_err(&neither).starts_with("collector.secret_env: required"));
    }

    #[test]
    fn collector_limits_are_checked_naming_the_field() {
        let base = serde_json::json!({"cluster": "c", "authority": "a", "secret": "s"});
        let cases = [
            (
                "max_batch",
                serde_json::json!(0),
                "collector.max_batch: must be in 1..=1000",
            ),
            (
                "max_buffer",
                serde_json::json!(10),
                "collector.max_buffer: must be in max_batch..=1000000",
            ),
            (
                "secret",
                serde_json::json!("a b"),
                "collector.secret: must be non-empty visible ASCII",
            ),
            (
                "flush_interval_ms",
                serde_json::json!(1),
                "collector.flush_interval_ms: must be in 10..=60000",
            ),
        ];
        for (field, value, expected) in cases {
            let json = with(|v| {
                v["collector"] = base.clone();
                v["collector"][field] = value;
            });
            assert_eq!(parse_err(&json), expected);
        }
    }

    #[test]
    fn shipped_filter_config_is_valid_once_rendered() {
        let text = include_str!("../envoy/filter-config.json")
            .replace("${COUNTER_CLUSTER}", "turnpike_counter")
            .replace("${COLLECTOR_CLUSTER}", "turnpike_collector")
            .replace("${JWT_PAYLOAD_KEY}", "jwt_payload");
        assert!(
            !text.contains("${"),
            "unknown placeholder in envoy/filter-config.json"
        );
        let env = |name: &str| match name {
            "TURNPIKE_COUNTER_TOKEN" => Some("service-token-0123456789".to_owned()),
            "TURNPIKE_INGEST_SECRET" => Some("ingest-secret-0123456789".to_owned()),
            _ => None,
        };
        let cfg = Config::parse_with_env(text.as_bytes(), &env).unwrap();
        assert_eq!(cfg.counter.cluster, "turnpike_counter");
        assert_eq!(
            cfg.counter.authorization.as_deref(),
            Some("Bearer service-token-0123456789")
        );
        let collector = cfg.collector.unwrap();
        assert_eq!(collector.cluster, "turnpike_collector");
        assert_eq!(collector.authorization, "Bearer ingest-secret-0123456789");
        // Without the variables, the error names the field and the fix.
        let err = Config::parse_with_env(text.as_bytes(), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "counter.token_env: environment variable TURNPIKE_COUNTER_TOKEN is not set"
            ),
            "{err}"
        );
    }

    #[test]
    fn usage_meters_compile_and_their_mistakes_name_the_field() {
        let json = with(|v| {
            v["routes"][0]["usage"] = serde_json::json!([
                { "meter": "tokens", "reserve": { "json": "/max_tokens", "default": 256, "max": 4096 },
                  "settle": { "json": "/usage/total_tokens" } },
                { "meter": "bytes_out", "reserve": { "fixed": 0 }, "settle": { "response_bytes": true }, "missing": "zero" }
            ])
        });
        let cfg = Config::parse(json.as_bytes()).unwrap();
        let _ = cfg;
        let cases = [
            (
                serde_json::json!([{ "meter": "requests", "reserve": {"fixed": 1}, "settle": {"header": "x-n"} }]),
                "routes[0].usage[0].meter",
            ),
            (
                serde_json::json!([{ "meter": "t", "reserve": {"fixed": 1, "header": "x"}, "settle": {"header": "x-n"} }]),
                "routes[0].usage[0].reserve",
            ),
            (
                serde_json::json!([{ "meter": "t", "reserve": {"json": "max_tokens"}, "settle": {"header": "x-n"} }]),
                "routes[0].usage[0].reserve.json",
            ),
            (
                serde_json::json!([{ "meter": "t", "reserve": {"header": "x-max", "default": 9, "max": 5}, "settle": {"header": "x-n"} }]),
                "routes[0].usage[0].reserve.default",
            ),
            (
                serde_json::json!([{ "meter": "t", "reserve": {"fixed": 1}, "settle": {} }]),
                "routes[0].usage[0].settle",
            ),
            (
                serde_json::json!([{ "meter": "t", "reserve": {"fixed": 1}, "settle": {"header": "X-N"} }]),
                "routes[0].usage[0].settle.header",
            ),
        ];
        for (usage, field) in cases {
            let json = with(|v| v["routes"][0]["usage"] = usage.clone());
            let err = parse_err(&json);
            assert!(err.starts_with(&format!("{field}:")), "{usage}: {err}");
        }
        let leased = with(|v| {
            v["routes"][0]["mode"] = serde_json::json!("leased");
            v["routes"][0]["usage"] = serde_json::json!([{ "meter": "t", "reserve": {"fixed": 1}, "settle": {"header": "x-n"} }]);
        });
        assert!(parse_err(&leased).starts_with("routes[0].mode:"));
    }

    #[test]
    fn defaults_apply_when_optional_fields_are_absent() {
        let json = r#"{"tenant":{"claim":"tenant"},"counter":{"cluster":"c","authority":"a"}}"#;
        let cfg = Config::parse(json.as_bytes()).unwrap();
        assert_eq!(cfg.counter.failure_mode, FailureMode::FailClosed);
        assert_eq!(cfg.counter.timeout, Duration::from_millis(250));
        assert_eq!(cfg.soft_warning_header, "turnpike-quota-warning");
        assert!(!cfg.refund_on_5xx);
        assert!(cfg.tenant.plan.is_none());
    }
}
