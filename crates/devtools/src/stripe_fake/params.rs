//! Checks a decoded form against an endpoint's parameter list the way Stripe does:
//! unknown parameters first, then missing required ones, then each value (empty,
//! type, enum, length). Each endpoint's list is transcribed from the spec's request
//! schema (`additionalProperties: false`, `required`, `maxLength`, `enum`).

use std::collections::BTreeMap;

use super::error::ApiError;
use super::form::{bracket_name, Form, FormValue};

/// What a parameter's value must be.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Str {
        max: usize,
    },
    /// Integer (unix seconds, limits).
    Int,
    Enum(&'static [&'static str]),
    Object(&'static [Field]),
    /// An object with free keys and string values (`payload`).
    StringMap,
    /// `expand[]`.
    StringList {
        max: usize,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

pub const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

pub const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

/// `expand`, accepted by every v1 route; nothing on a meter object is expandable.
pub const EXPAND: Field = opt("expand", Kind::StringList { max: 5000 });

/// Validates `form` against `fields`; the first problem is the error.
pub fn validate(form: &Form, fields: &[Field]) -> Result<(), ApiError> {
    check_unknown(form, fields, &[])?;
    check_missing(form, fields, &[])?;
    check_values(form, fields, &[])
}

fn path_with<'a>(parent: &[&'a str], name: &'a str) -> Vec<&'a str> {
    let mut path = parent.to_vec();
    path.push(name);
    path
}

fn check_unknown(
    map: &BTreeMap<String, FormValue>,
    fields: &[Field],
    parent: &[&str],
) -> Result<(), ApiError> {
    for (name, value) in map {
        let path = path_with(parent, name);
        let Some(field) = fields.iter().find(|f| f.name == name) else {
            return Err(ApiError::unknown_param(&bracket_name(&path)));
        };
        if let (Kind::Object(inner), FormValue::Map(sub)) = (field.kind, value) {
            check_unknown(sub, inner, &path)?;
        }
    }
    Ok(())
}

fn check_missing(
    map: &BTreeMap<String, FormValue>,
    fields: &[Field],
    parent: &[&str],
) -> Result<(), ApiError> {
    for field in fields {
        let path = path_with(parent, field.name);
        match (map.get(field.name), field.kind) {
            (None, _) if field.required => {
                return Err(ApiError::missing_param(&bracket_name(&path)))
            }
            (Some(FormValue::Map(sub)), Kind::Object(inner)) => check_missing(sub, inner, &path)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_values(
    map: &BTreeMap<String, FormValue>,
    fields: &[Field],
    parent: &[&str],
) -> Result<(), ApiError> {
    for field in fields {
        let Some(value) = map.get(field.name) else {
            continue;
        };
        let path = path_with(parent, field.name);
        let name = bracket_name(&path);
        if matches!(value, FormValue::Str(s) if s.is_empty()) {
            return Err(ApiError::empty_param(&name));
        }
        match (field.kind, value) {
            (Kind::Str { max }, FormValue::Str(s)) => {
                if s.chars().count() > max {
                    return Err(ApiError::string_too_long(&name, s, max));
                }
            }
            (Kind::Int, FormValue::Str(s)) => {
                if s.parse::<i64>().is_err() {
                    return Err(ApiError::invalid_integer(&name, s));
                }
            }
            (Kind::Enum(allowed), FormValue::Str(s)) => {
                if !allowed.contains(&s.as_str()) {
                    return Err(ApiError::invalid_enum(&name, allowed));
                }
            }
            (Kind::Object(inner), FormValue::Map(sub)) => check_values(sub, inner, &path)?,
            (Kind::StringMap, FormValue::Map(sub)) => {
                for (key, v) in sub {
                    if !matches!(v, FormValue::Str(_)) {
                        return Err(ApiError::invalid_shape(
                            &bracket_name(&path_with(&path, key)),
                            "string",
                        ));
                    }
                }
            }
            (Kind::StringList { max }, FormValue::List(items)) => {
                for item in items {
                    match item {
                        FormValue::Str(s) if s.chars().count() > max => {
                            return Err(ApiError::string_too_long(&name, s, max))
                        }
                        FormValue::Str(_) => {}
                        _ => return Err(ApiError::invalid_shape(&name, "array")),
                    }
                }
            }
            (Kind::Object(_) | Kind::StringMap, _) => {
                return Err(ApiError::invalid_shape(&name, "object"))
            }
            (Kind::StringList { .. }, _) => return Err(ApiError::invalid_shape(&name, "array")),
            (Kind::Str { .. } | Kind::Int | Kind::Enum(_), _) => {
                return Err(ApiError::invalid_shape(&name, "string"))
            }
        }
    }
    Ok(())
}

/// Typed reads of an already validated form.
pub struct Params<'a>(pub &'a Form);

impl<'a> Params<'a> {
    /// The string at a bracket path (`["cancel", "identifier"]`).
    pub fn str(&self, path: &[&str]) -> Option<&'a str> {
        let (first, rest) = path.split_first()?;
        let mut value = self.0.get(*first)?;
        for step in rest {
            let FormValue::Map(map) = value else {
                return None;
            };
            value = map.get(*step)?;
        }
        match value {
            FormValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.str(&[name]).and_then(|s| s.parse().ok())
    }

    /// A string map (`payload`), empty when absent.
    pub fn string_map(&self, name: &str) -> BTreeMap<String, String> {
        match self.0.get(name) {
            Some(FormValue::Map(map)) => map
                .iter()
                .filter_map(|(k, v)| match v {
                    FormValue::Str(s) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::form::decode;
    use super::*;

    const CANCEL: &[Field] = &[opt("identifier", Kind::Str { max: 100 })];
    const FIELDS: &[Field] = &[
        req("event_name", Kind::Str { max: 100 }),
        req("payload", Kind::StringMap),
        opt("timestamp", Kind::Int),
        opt("type", Kind::Enum(&["cancel"])),
        opt("cancel", Kind::Object(CANCEL)),
        EXPAND,
    ];

    fn check(body: &str) -> Result<(), ApiError> {
        validate(&decode(body.as_bytes()).unwrap(), FIELDS)
    }

    fn refused(body: &str) -> (Option<&'static str>, Option<String>) {
        let err = check(body).unwrap_err();
        (err.code, err.param)
    }

    #[test]
    fn accepts_a_complete_request() {
        check("event_name=e&payload[value]=1&timestamp=5&expand[]=x&cancel[identifier]=i").unwrap();
    }

    #[test]
    fn unknown_parameters_are_refused_before_missing_ones() {
        assert_eq!(
            refused("bogus=1"),
            (Some("parameter_unknown"), Some("bogus".into()))
        );
        assert_eq!(
            refused("event_name=e&payload[v]=1&cancel[nope]=1"),
            (Some("parameter_unknown"), Some("cancel[nope]".into()))
        );
    }

    #[test]
    fn missing_required_parameters_are_named() {
        assert_eq!(
            refused("payload[value]=1"),
            (Some("parameter_missing"), Some("event_name".into()))
        );
        let err = check("event_name=e").unwrap_err();
        assert_eq!(err.message, "Missing required param: payload.");
    }

    #[test]
    fn values_are_checked_for_emptiness_type_enum_and_length() {
        assert_eq!(
            refused("event_name=&payload[v]=1"),
            (Some("parameter_invalid_empty"), Some("event_name".into()))
        );
        assert_eq!(
            refused("event_name=e&payload[v]=1&timestamp=soon"),
            (Some("parameter_invalid_integer"), Some("timestamp".into()))
        );
        assert_eq!(
            refused("event_name=e&payload[v]=1&type=delete"),
            (None, Some("type".into()))
        );
        let long = "x".repeat(101);
        assert_eq!(
            refused(&format!(
                "event_name=e&payload[v]=1&cancel[identifier]={long}"
            )),
            (None, Some("cancel[identifier]".into()))
        );
        // Exactly at the limit is fine: the limit counts characters, not bytes.
        check(&format!(
            "event_name=e&payload[v]=1&cancel[identifier]={}",
            "é".repeat(100)
        ))
        .unwrap();
    }

    #[test]
    fn shapes_must_match() {
        assert_eq!(refused("event_name=e&payload=1").1, Some("payload".into()));
        assert_eq!(
            refused("event_name=e&payload[a][b]=1").1,
            Some("payload[a]".into())
        );
        assert_eq!(
            refused("event_name[x]=e&payload[a]=1").1,
            Some("event_name".into())
        );
    }

    #[test]
    fn typed_reads_follow_bracket_paths() {
        let form =
            decode(b"event_name=e&payload[value]=7&cancel[identifier]=i&timestamp=9").unwrap();
        let params = Params(&form);
        assert_eq!(params.str(&["cancel", "identifier"]), Some("i"));
        assert_eq!(params.int("timestamp"), Some(9));
        assert_eq!(params.string_map("payload")["value"], "7");
        assert_eq!(params.str(&["missing"]), None);
    }
}
