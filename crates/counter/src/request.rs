//! Decoding and validating request bodies. Every error names the offending field.

use serde::de::DeserializeOwned;
use turnpike_plans::ids::{is_valid_consume_id, is_valid_meter, is_valid_tenant};
use turnpike_plans::MAX_UNITS;
use turnpike_wire::{ConsumeRequest, RefundRequest};

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON at all (or truncated): 400.
    #[error("body is not valid JSON: {0}")]
    Syntax(String),
    /// JSON of the wrong shape, or a value that breaks a rule: 422.
    #[error("{field}: {message}")]
    Field { field: String, message: String },
}

impl RequestError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError::Field {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parse a JSON body, naming the path of a mistyped or missing field.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    // Tracking the path allocates for every key it passes: only a body that fails
    // pays for it, read a second time to name the field.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_data() {
            // serde_json says "missing field `x`" at the parent's path: "." for the root.
            let field = if path == "." { "body".to_owned() } else { path };
            RequestError::field(field, strip_position(&inner.to_string()))
        } else {
            RequestError::Syntax(inner.to_string())
        }
    })
}

/// serde_json appends " at line L column C"; for one-line bodies it only adds noise.
fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |i| message.get(..i).unwrap_or(message))
}

pub fn check_consume(req: &ConsumeRequest) -> Result<(), RequestError> {
    check_id(&req.id)?;
    check_tenant(&req.tenant)?;
    check_meters(&req.meters)
}

/// Meters of a request: 1..=64 distinct names of `[a-z0-9_]`, costs bounded.
pub fn check_meters(meters: &[turnpike_wire::MeterCost]) -> Result<(), RequestError> {
    if meters.is_empty() {
        return Err(RequestError::field("meters", "must not be empty"));
    }
    if meters.len() > 64 {
        return Err(RequestError::field("meters", "at most 64"));
    }
    for (i, m) in meters.iter().enumerate() {
        if !is_valid_meter(&m.meter) {
            return Err(RequestError::field(
                format!("meters[{i}].meter"),
                "must be 1..=32 of [a-z0-9_]",
            ));
        }
        if m.cost > MAX_UNITS {
            return Err(RequestError::field(
                format!("meters[{i}].cost"),
                format!("must be <= {MAX_UNITS}"),
            ));
        }
        if meters
            .get(..i)
            .is_some_and(|before| before.iter().any(|b| b.meter == m.meter))
        {
            return Err(RequestError::field(
                format!("meters[{i}].meter"),
                format!("duplicate meter \"{}\"", m.meter),
            ));
        }
    }
    // `plan` is not checked: an unknown or odd claimed plan falls back to the default.
    Ok(())
}

/// The request's meters as the usage stream and the idempotency record carry them:
/// `meter=quantity,meter=quantity` (meter names are `[a-z0-9_]`, nothing to escape).
pub fn meters_text(meters: &[turnpike_wire::MeterCost]) -> String {
    let mut out = String::with_capacity(meters.len() * 16);
    for (i, m) in meters.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&m.meter);
        out.push('=');
        out.push_str(&m.cost.to_string());
    }
    out
}

pub fn check_refund(req: &RefundRequest) -> Result<(), RequestError> {
    check_id(&req.id)?;
    check_tenant(&req.tenant)
}

pub fn check_tenant(tenant: &str) -> Result<(), RequestError> {
    if is_valid_tenant(tenant) {
        Ok(())
    } else {
        Err(RequestError::field(
            "tenant",
            "must be 1..=64 of [A-Za-z0-9._-]",
        ))
    }
}

fn check_id(id: &str) -> Result<(), RequestError> {
    check_id_at("id", id)
}

/// A consume id in `field`.
pub fn check_id_at(field: &str, id: &str) -> Result<(), RequestError> {
    if is_valid_consume_id(id) {
        Ok(())
    } else {
        Err(RequestError::field(
            field,
            "must be 1..=64 of [A-Za-z0-9_-]",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consume(json: &str) -> Result<ConsumeRequest, RequestError> {
        let req: ConsumeRequest = decode(json.as_bytes())?;
        check_consume(&req).map(|()| req)
    }

    fn field_of(err: RequestError) -> String {
        match err {
            RequestError::Field { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_consume_passes() {
        let req = consume(r#"{"id":"c-1","tenant":"acme","plan":"whatever plan","meters":[{"meter":"requests","cost":1}]}"#).unwrap();
        assert_eq!(req.meters.len(), 1);
    }

    #[test]
    fn broken_json_is_a_syntax_error() {
        assert!(matches!(consume("{\"id\":"), Err(RequestError::Syntax(_))));
        assert!(matches!(consume("not json"), Err(RequestError::Syntax(_))));
    }

    #[test]
    fn mistyped_nested_field_is_named_by_path() {
        let err =
            consume(r#"{"id":"c","tenant":"acme","meters":[{"meter":"requests","cost":-1}]}"#)
                .unwrap_err();
        assert_eq!(field_of(err), "meters[0].cost");
    }

    #[test]
    fn missing_field_is_named_in_the_message() {
        let err = consume(r#"{"id":"c","meters":[]}"#).unwrap_err();
        assert!(err.to_string().contains("tenant"), "{err}");
    }

    #[test]
    fn bad_tenant_id_and_consume_id_are_named() {
        let err =
            consume(r#"{"id":"c","tenant":"ac{me}","meters":[{"meter":"requests","cost":1}]}"#)
                .unwrap_err();
        assert_eq!(field_of(err), "tenant");
        let err =
            consume(r#"{"id":"c 1","tenant":"acme","meters":[{"meter":"requests","cost":1}]}"#)
                .unwrap_err();
        assert_eq!(field_of(err), "id");
    }

    #[test]
    fn empty_duplicate_or_bad_meters_are_named() {
        let err = consume(r#"{"id":"c","tenant":"acme","meters":[]}"#).unwrap_err();
        assert_eq!(field_of(err), "meters");
        let err = consume(r#"{"id":"c","tenant":"acme","meters":[{"meter":"requests","cost":1},{"meter":"requests","cost":2}]}"#).unwrap_err();
        assert_eq!(field_of(err), "meters[1].meter");
        let err = consume(r#"{"id":"c","tenant":"acme","meters":[{"meter":"Requests","cost":1}]}"#)
            .unwrap_err();
        assert_eq!(field_of(err), "meters[0].meter");
        let err = consume(
            r#"{"id":"c","tenant":"acme","meters":[{"meter":"r","cost":4503599627370497}]}"#,
        )
        .unwrap_err();
        assert_eq!(field_of(err), "meters[0].cost");
    }
}
