//! A checker for the JSON-Schema subset Stripe's OpenAPI components use: `$ref`,
//! `anyOf`, `nullable`, `type`, `enum`, `maxLength`, `pattern`, `required`,
//! `properties`, `additionalProperties`, `items`. Written here rather than taken from
//! a JSON Schema crate because OpenAPI 3.0 schemas are not JSON Schema (`nullable`
//! has no JSON Schema meaning, `$ref`s point into `#/components`), and because it is
//! strict where a general validator is lenient: an object with declared
//! `properties` is closed, so a field Stripe does not have is an error, and any
//! keyword the checker does not know fails the check instead of being skipped.

use regex::Regex;
use serde_json::Value;

/// Keywords that carry no constraint.
const ANNOTATIONS: &[&str] = &["description", "title", "format"];

pub struct Spec {
    pub doc: Value,
}

impl Spec {
    pub fn load() -> Spec {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/stripe-meter-api.json"
        );
        let text = std::fs::read_to_string(path).expect("the spec excerpt");
        Spec {
            doc: serde_json::from_str(&text).expect("the spec excerpt is JSON"),
        }
    }

    pub fn component(&self, name: &str) -> &Value {
        self.doc["components"]["schemas"]
            .get(name)
            .unwrap_or_else(|| panic!("no component {name}"))
    }

    /// `#/paths/<path>/<method>`.
    pub fn operation(&self, path: &str, method: &str) -> &Value {
        &self.doc["paths"][path][method]
    }

    pub fn response_schema(&self, path: &str, method: &str) -> &Value {
        &self.operation(path, method)["responses"]["200"]["content"]["application/json"]["schema"]
    }

    pub fn fixture(&self, name: &str) -> &Value {
        &self.doc["x-fixtures"][name]
    }

    fn resolve<'a>(&'a self, reference: &str) -> &'a Value {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
        self.component(name)
    }

    /// Every violation of `schema` by `value`, as `path: problem`.
    pub fn check(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.walk(schema, value, "$", &mut errors);
        errors
    }

    fn walk(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let Some(obj) = schema.as_object() else {
            errors.push(format!("{at}: schema is not an object"));
            return;
        };
        for key in obj.keys() {
            let known = matches!(
                key.as_str(),
                "$ref"
                    | "anyOf"
                    | "nullable"
                    | "type"
                    | "enum"
                    | "maxLength"
                    | "pattern"
                    | "required"
                    | "properties"
                    | "additionalProperties"
                    | "items"
            ) || ANNOTATIONS.contains(&key.as_str())
                || key.starts_with("x-");
            if !known {
                errors.push(format!(
                    "{at}: the checker does not support keyword `{key}`"
                ));
            }
        }
        if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
            self.walk(self.resolve(reference), value, at, errors);
            return;
        }
        if value.is_null() {
            if obj.get("nullable") != Some(&Value::Bool(true)) {
                errors.push(format!("{at}: null but not nullable"));
            }
            return;
        }
        if let Some(branches) = obj.get("anyOf").and_then(Value::as_array) {
            let ok = branches.iter().any(|b| {
                let mut sub = Vec::new();
                self.walk(b, value, at, &mut sub);
                sub.is_empty()
            });
            if !ok {
                errors.push(format!("{at}: matches no anyOf branch"));
            }
        }
        if let Some(kind) = obj.get("type").and_then(Value::as_str) {
            let ok = match kind {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                other => {
                    errors.push(format!("{at}: unknown type {other}"));
                    true
                }
            };
            if !ok {
                errors.push(format!("{at}: expected {kind}, got {value}"));
                return;
            }
        }
        if let Some(allowed) = obj.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                errors.push(format!("{at}: {value} not in {allowed:?}"));
            }
        }
        if let (Some(max), Some(s)) = (obj.get("maxLength").and_then(Value::as_u64), value.as_str())
        {
            if s.chars().count() as u64 > max {
                errors.push(format!("{at}: longer than {max}"));
            }
        }
        if let (Some(pattern), Some(s)) =
            (obj.get("pattern").and_then(Value::as_str), value.as_str())
        {
            let re = Regex::new(pattern).expect("spec patterns are regexes");
            if !re.is_match(s) {
                errors.push(format!("{at}: {s:?} does not match {pattern}"));
            }
        }
        if let Some(items) = obj.get("items") {
            for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                self.walk(items, item, &format!("{at}[{i}]"), errors);
            }
        }
        if let Some(map) = value.as_object() {
            for name in obj
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = name.as_str().unwrap_or_default();
                if !map.contains_key(name) {
                    errors.push(format!("{at}: missing required `{name}`"));
                }
            }
            let properties = obj.get("properties").and_then(Value::as_object);
            for (key, field) in map {
                let here = format!("{at}.{key}");
                match (
                    properties.and_then(|p| p.get(key)),
                    obj.get("additionalProperties"),
                ) {
                    (Some(sub), _) => self.walk(sub, field, &here, errors),
                    (None, Some(Value::Bool(false))) => {
                        errors.push(format!("{at}: unexpected field `{key}`"))
                    }
                    (None, Some(extra @ Value::Object(_))) => {
                        self.walk(extra, field, &here, errors)
                    }
                    // Strict: Stripe's objects declare all their fields.
                    (None, _) if properties.is_some() => {
                        errors.push(format!("{at}: field `{key}` is not in Stripe's schema"))
                    }
                    (None, _) => {}
                }
            }
        }
    }
}

/// The shape of a JSON value: object keys and leaf types, recursively.
pub fn same_shape(ours: &Value, stripe: &Value, at: &str, errors: &mut Vec<String>) {
    match (ours, stripe) {
        // A null on either side says nothing about the type of the other.
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => same_shape(x, y, &format!("{at}.{key}"), errors),
                    (Some(_), None) => errors.push(format!("{at}.{key}: ours only")),
                    (None, Some(_)) => errors.push(format!("{at}.{key}: Stripe's only")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if let (Some(x), Some(y)) = (a.first(), b.first()) {
                same_shape(x, y, &format!("{at}[0]"), errors);
            }
        }
        (a, b) => {
            let kind = |v: &Value| match v {
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_f64() => "number",
                Value::Number(_) => "integer",
                Value::String(_) => "string",
                _ => "container",
            };
            if kind(a) != kind(b) {
                errors.push(format!(
                    "{at}: ours is {}, Stripe's is {}",
                    kind(a),
                    kind(b)
                ));
            }
        }
    }
}
