//! The v1 meter routes: path matching, each route's parameters (transcribed from the
//! spec's request schemas) and the call into the [`Store`]. No HTTP here: a route
//! takes the decoded form and answers a JSON object or an [`ApiError`].

use serde_json::Value;

use super::error::ApiError;
use super::form::Form;
use super::ids::IdGen;
use super::list::{list_json, paginate, Page};
use super::model::{Formula, Grouping};
use super::params::{opt, req, validate, Field, Kind, Params, EXPAND};
use super::store::{NewEvent, NewMeter, Store};

const STR100: Kind = Kind::Str { max: 100 };
const STR250: Kind = Kind::Str { max: 250 };
const STR5000: Kind = Kind::Str { max: 5000 };
const WINDOWS: Kind = Kind::Enum(&["day", "hour"]);

const CREATE_METER: &[Field] = &[
    opt(
        "customer_mapping",
        Kind::Object(&[
            req("event_payload_key", STR100),
            req("type", Kind::Enum(&["by_id"])),
        ]),
    ),
    req(
        "default_aggregation",
        Kind::Object(&[req("formula", Kind::Enum(Formula::NAMES))]),
    ),
    req("display_name", STR250),
    req("event_name", STR100),
    opt("event_time_window", WINDOWS),
    EXPAND,
    opt(
        "value_settings",
        Kind::Object(&[req("event_payload_key", STR100)]),
    ),
];
const LIST_METERS: &[Field] = &[
    opt("ending_before", STR5000),
    EXPAND,
    opt("limit", Kind::Int),
    opt("starting_after", STR5000),
    opt("status", Kind::Enum(&["active", "inactive"])),
];
const ONLY_EXPAND: &[Field] = &[EXPAND];
const UPDATE_METER: &[Field] = &[opt("display_name", STR250), EXPAND];
const EVENT_SUMMARIES: &[Field] = &[
    req("customer", STR5000),
    req("end_time", Kind::Int),
    opt("ending_before", STR5000),
    EXPAND,
    opt("limit", Kind::Int),
    req("start_time", Kind::Int),
    opt("starting_after", STR5000),
    opt("value_grouping_window", WINDOWS),
];
const CREATE_EVENT: &[Field] = &[
    req("event_name", STR100),
    EXPAND,
    opt("identifier", STR100),
    req("payload", Kind::StringMap),
    opt("timestamp", Kind::Int),
];
const CREATE_ADJUSTMENT: &[Field] = &[
    opt("cancel", Kind::Object(&[opt("identifier", STR100)])),
    req("event_name", STR100),
    EXPAND,
    req("type", Kind::Enum(&["cancel"])),
];

/// A route's answer.
#[derive(Debug)]
pub struct Answer {
    pub body: Value,
    /// Whether the store changed (so a persisted state must be written).
    pub mutated: bool,
}

fn read(body: Value) -> Answer {
    Answer {
        body,
        mutated: false,
    }
}

fn wrote(body: Value) -> Answer {
    Answer {
        body,
        mutated: true,
    }
}

/// Runs one v1 request against the store.
pub fn dispatch(
    store: &mut Store,
    ids: &IdGen,
    method: &str,
    path: &str,
    form: &Form,
    now: i64,
) -> Result<Answer, ApiError> {
    let segments: Vec<&str> = path
        .strip_prefix("/v1/billing/")
        .map(|rest| rest.split('/').collect())
        .unwrap_or_default();
    let checked = |fields: &[Field]| validate(form, fields).map(|()| Params(form));
    match (method, segments.as_slice()) {
        ("GET", ["meters"]) => list_meters(store, checked(LIST_METERS)?),
        ("POST", ["meters"]) => create_meter(store, ids, checked(CREATE_METER)?, now),
        ("GET", ["meters", id]) if !id.is_empty() => {
            checked(ONLY_EXPAND)?;
            Ok(read(store.meter(id)?.to_json()))
        }
        ("POST", ["meters", id]) if !id.is_empty() => {
            let params = checked(UPDATE_METER)?;
            let name = params.str(&["display_name"]).map(str::to_owned);
            Ok(wrote(store.update_meter(id, name, now)?.to_json()))
        }
        ("POST", ["meters", id, "deactivate"]) => {
            checked(ONLY_EXPAND)?;
            Ok(wrote(store.deactivate(id, now)?.to_json()))
        }
        ("POST", ["meters", id, "reactivate"]) => {
            checked(ONLY_EXPAND)?;
            Ok(wrote(store.reactivate(id, now)?.to_json()))
        }
        ("GET", ["meters", id, "event_summaries"]) => {
            event_summaries(store, id, checked(EVENT_SUMMARIES)?)
        }
        ("POST", ["meter_events"]) => create_event(store, ids, checked(CREATE_EVENT)?, now),
        ("POST", ["meter_event_adjustments"]) => {
            create_adjustment(store, checked(CREATE_ADJUSTMENT)?, now)
        }
        _ => Err(ApiError::unrecognized_url(method, path)),
    }
}

fn page(params: &Params) -> Page {
    Page {
        limit: params.int("limit"),
        starting_after: params.str(&["starting_after"]).map(str::to_owned),
        ending_before: params.str(&["ending_before"]).map(str::to_owned),
    }
}

fn list_meters(store: &Store, params: Params) -> Result<Answer, ApiError> {
    let active = params.str(&["status"]).map(|s| s == "active");
    let meters = store.list_meters(active);
    let (items, has_more) = paginate(&meters, |m| &m.id, &page(&params), "billing.meter")?;
    let data = items.into_iter().map(|m| m.to_json()).collect();
    Ok(read(list_json("/v1/billing/meters", data, has_more)))
}

fn create_meter(store: &mut Store, ids: &IdGen, p: Params, now: i64) -> Result<Answer, ApiError> {
    let owned = |path: &[&str]| p.str(path).map(str::to_owned);
    let new = NewMeter {
        display_name: owned(&["display_name"]).unwrap_or_default(),
        event_name: owned(&["event_name"]).unwrap_or_default(),
        formula: p
            .str(&["default_aggregation", "formula"])
            .and_then(Formula::parse)
            .unwrap_or(Formula::Sum),
        customer_key: owned(&["customer_mapping", "event_payload_key"]),
        value_key: owned(&["value_settings", "event_payload_key"]),
        event_time_window: owned(&["event_time_window"]),
    };
    let id = ids.make("mtr_test_61", 30);
    Ok(wrote(store.create_meter(new, id, now)?.to_json()))
}

fn event_summaries(store: &Store, meter_id: &str, p: Params) -> Result<Answer, ApiError> {
    let grouping = p.str(&["value_grouping_window"]).and_then(Grouping::parse);
    let summaries = store.summaries(
        meter_id,
        p.str(&["customer"]).unwrap_or_default(),
        p.int("start_time").unwrap_or_default(),
        p.int("end_time").unwrap_or_default(),
        grouping,
    )?;
    let (items, has_more) = paginate(
        &summaries,
        |s| &s.id,
        &page(&p),
        "billing.meter_event_summary",
    )?;
    let data = items.into_iter().map(|s| s.to_json()).collect();
    let url = format!("/v1/billing/meters/{meter_id}/event_summaries");
    Ok(read(list_json(&url, data, has_more)))
}

fn create_event(store: &mut Store, ids: &IdGen, p: Params, now: i64) -> Result<Answer, ApiError> {
    let new = NewEvent {
        event_name: p.str(&["event_name"]).unwrap_or_default().to_owned(),
        identifier: p.str(&["identifier"]).map(str::to_owned),
        payload: p.string_map("payload"),
        timestamp: p.int("timestamp"),
    };
    let generated = ids.make("", 32);
    Ok(wrote(store.record_event(new, generated, now)?.to_json()))
}

fn create_adjustment(store: &mut Store, p: Params, now: i64) -> Result<Answer, ApiError> {
    // `cancel` is optional in the schema (other adjustment types may come), but a
    // cancel needs to say which event.
    if p.0.get("cancel").is_none() {
        return Err(ApiError::missing_param("cancel"));
    }
    let Some(identifier) = p.str(&["cancel", "identifier"]) else {
        return Err(ApiError::missing_param("cancel[identifier]"));
    };
    let event_name = p.str(&["event_name"]).unwrap_or_default();
    Ok(wrote(
        store.cancel_event(event_name, identifier, now)?.to_json(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::form::decode;
    use super::*;

    const NOW: i64 = 1_700_000_000 - 1_700_000_000 % 86_400;

    fn call(store: &mut Store, method: &str, path: &str, body: &str) -> Result<Value, ApiError> {
        let form = decode(body.as_bytes()).unwrap();
        dispatch(store, &IdGen::new(7), method, path, &form, NOW).map(|a| a.body)
    }

    #[test]
    fn creating_a_meter_applies_stripe_defaults() {
        let mut store = Store::default();
        let meter = call(
            &mut store,
            "POST",
            "/v1/billing/meters",
            "display_name=API&event_name=api&default_aggregation[formula]=sum",
        )
        .unwrap();
        assert!(meter["id"].as_str().unwrap().starts_with("mtr_test_"));
        assert_eq!(
            meter["customer_mapping"]["event_payload_key"],
            "stripe_customer_id"
        );
        assert_eq!(meter["value_settings"]["event_payload_key"], "value");
        assert_eq!(meter["status"], "active");
    }

    #[test]
    fn a_cancel_needs_the_event_identifier() {
        let mut store = Store::default();
        let err = call(
            &mut store,
            "POST",
            "/v1/billing/meter_event_adjustments",
            "event_name=a&type=cancel",
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("cancel"));
        let err = call(
            &mut store,
            "POST",
            "/v1/billing/meter_event_adjustments",
            "event_name=a&type=cancel&cancel[identifier]=",
        )
        .unwrap_err();
        assert_eq!(err.code, Some("parameter_invalid_empty"));
    }

    #[test]
    fn unknown_routes_and_methods_are_unrecognized_urls() {
        let mut store = Store::default();
        for (method, path) in [
            ("GET", "/v1/billing/meter_events"),
            ("DELETE", "/v1/billing/meters/mtr_1"),
            ("GET", "/v1/customers"),
            ("GET", "/v1/billing/meters/"),
        ] {
            let err = call(&mut store, method, path, "").unwrap_err();
            assert_eq!(err.status, 404, "{method} {path}");
            assert!(err.message.starts_with("Unrecognized request URL"));
        }
    }

    #[test]
    fn listing_filters_by_status_newest_first() {
        let mut store = Store::default();
        for name in ["a", "b", "c"] {
            call(
                &mut store,
                "POST",
                "/v1/billing/meters",
                &format!(
                    "display_name={name}&event_name={name}&default_aggregation[formula]=count"
                ),
            )
            .unwrap();
        }
        let a = store.meters[0].id.clone();
        call(
            &mut store,
            "POST",
            &format!("/v1/billing/meters/{a}/deactivate"),
            "",
        )
        .unwrap();
        let list = call(&mut store, "GET", "/v1/billing/meters", "status=active").unwrap();
        let names: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["event_name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["c", "b"]);
        assert_eq!(list["url"], "/v1/billing/meters");
    }
}
