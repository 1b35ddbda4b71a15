//! Rendering `envoy/envoy.yaml.tmpl`: `${NAME}` placeholders are filled from a set of
//! values, the filter config is rendered the same way, optionally merge-patched, then
//! inlined as compact JSON into the template's single-quoted `${FILTER_CONFIG}`.
//! Any placeholder left without a value is an error that names it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::DevError;

/// Values used when the caller gives none (they match common.md).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("COUNTER_CLUSTER", "turnpike_counter"),
    ("COLLECTOR_CLUSTER", "turnpike_collector"),
    ("JWT_ISSUER", crate::token::DEFAULT_ISSUER),
    ("JWT_AUDIENCE", crate::token::DEFAULT_AUDIENCE),
    // Where jwt_authn puts the verified payload and the filter reads it (Istio: "payload").
    ("JWT_PAYLOAD_KEY", "jwt_payload"),
    ("NODE_ID", "turnpike-envoy"),
    // Envoy's path normalisation (docs/path-normalization.md). Only the tests turn it
    // off, to show the filter prices every spelling of a path on its own.
    ("NORMALIZE_PATH", "true"),
    ("MERGE_SLASHES", "true"),
    ("PATH_WITH_ESCAPED_SLASHES_ACTION", "REJECT_REQUEST"),
];

/// Placeholder values: defaults first, then whatever the caller sets.
pub fn values_with_defaults<I, K, V>(overrides: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let mut values: BTreeMap<String, String> = DEFAULTS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    values.extend(overrides.into_iter().map(|(k, v)| (k.into(), v.into())));
    values
}

/// Parses `NAME=VALUE` (from `--set`).
pub fn parse_assignment(arg: &str) -> Result<(String, String), DevError> {
    match arg.split_once('=') {
        Some((name, value)) if is_placeholder_name(name) => Ok((name.to_owned(), value.to_owned())),
        _ => Err(DevError::InvalidArg {
            field: "set",
            reason: format!("`{arg}` is not NAME=VALUE with NAME in [A-Z0-9_]"),
        }),
    }
}

fn is_placeholder_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Replaces every `${NAME}`; fails naming all placeholders without a value.
pub fn substitute(
    text: &str,
    values: &BTreeMap<String, String>,
    what: &str,
) -> Result<String, DevError> {
    let mut out = String::with_capacity(text.len());
    let mut missing = BTreeSet::new();
    substitute_into(text, values, &mut out, &mut missing);
    finish(out, missing, what)
}

/// Like [`substitute`], but YAML comment lines are copied verbatim: a template may
/// mention `${NAME}` in its prose.
pub fn substitute_yaml(
    text: &str,
    values: &BTreeMap<String, String>,
    what: &str,
) -> Result<String, DevError> {
    let mut out = String::with_capacity(text.len());
    let mut missing = BTreeSet::new();
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            substitute_into(line, values, &mut out, &mut missing);
        }
    }
    finish(out, missing, what)
}

fn finish(out: String, missing: BTreeSet<String>, what: &str) -> Result<String, DevError> {
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(DevError::MissingPlaceholders {
            what: what.to_owned(),
            names: missing.into_iter().collect::<Vec<_>>().join(", "),
        })
    }
}

fn substitute_into(
    text: &str,
    values: &BTreeMap<String, String>,
    out: &mut String,
    missing: &mut BTreeSet<String>,
) {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) if is_placeholder_name(&after[..end]) => {
                let name = &after[..end];
                match values.get(name) {
                    Some(value) => out.push_str(value),
                    None => {
                        missing.insert(name.to_owned());
                    }
                }
                rest = &after[end + 1..];
            }
            // Not a placeholder (e.g. `${` inside some other text): keep it verbatim.
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

/// RFC 7396 JSON merge patch: objects merge recursively, `null` deletes, anything
/// else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target_map) = target {
        for (key, patch_value) in patch_map {
            if patch_value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(
                    target_map.entry(key.clone()).or_insert(Value::Null),
                    patch_value,
                );
            }
        }
    }
}

/// The filter config: placeholders filled, patched, as compact JSON.
pub fn render_filter_config(
    text: &str,
    values: &BTreeMap<String, String>,
    patch: Option<&Value>,
) -> Result<String, DevError> {
    let filled = substitute(text, values, "filter config")?;
    let mut config: Value = serde_json::from_str(&filled).map_err(|source| DevError::Json {
        what: "filter config".into(),
        source,
    })?;
    if let Some(patch) = patch {
        merge_patch(&mut config, patch);
    }
    serde_json::to_string(&config).map_err(|source| DevError::Json {
        what: "filter config".into(),
        source,
    })
}

/// Escapes text for a YAML single-quoted scalar: the only escape is `''` for `'`.
pub fn yaml_single_quoted(text: &str) -> String {
    text.replace('\'', "''")
}

/// The full Envoy YAML. `values` must not contain `FILTER_CONFIG`; it is computed.
pub fn render_envoy(
    template: &str,
    filter_config: &str,
    values: &BTreeMap<String, String>,
    patch: Option<&Value>,
) -> Result<String, DevError> {
    let compact = render_filter_config(filter_config, values, patch)?;
    let mut all = values.clone();
    all.insert("FILTER_CONFIG".to_owned(), yaml_single_quoted(&compact));
    substitute_yaml(template, &all, "envoy template")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vals(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        values_with_defaults(pairs.iter().map(|(k, v)| (*k, *v)))
    }

    #[test]
    fn missing_placeholders_are_all_named() {
        let err = substitute(
            "a ${ONE} b ${TWO} ${ONE} ${SET}",
            &vals(&[("SET", "x")]),
            "t",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ONE, TWO"), "{msg}");
        assert!(!msg.contains("SET"), "{msg}");
    }

    #[test]
    fn yaml_comment_lines_keep_their_placeholders() {
        let out =
            substitute_yaml("# fill ${NAME}\nport: ${P}\n", &vals(&[("P", "1")]), "t").unwrap();
        assert_eq!(out, "# fill ${NAME}\nport: 1\n");
        assert!(substitute_yaml("port: ${P} # ${Q}\n", &vals(&[("P", "1")]), "t").is_err());
    }

    #[test]
    fn non_placeholder_dollar_brace_is_kept() {
        let out = substitute("x ${lower} ${A}", &vals(&[("A", "1")]), "t").unwrap();
        assert_eq!(out, "x ${lower} 1");
    }

    #[test]
    fn defaults_fill_cluster_names_and_can_be_overridden() {
        let v = vals(&[("COUNTER_CLUSTER", "outbound|8080||counter.svc")]);
        assert_eq!(v["COUNTER_CLUSTER"], "outbound|8080||counter.svc");
        assert_eq!(v["COLLECTOR_CLUSTER"], "turnpike_collector");
        assert_eq!(v["JWT_AUDIENCE"], "turnpike-api");
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": [1], "e": 1});
        merge_patch(
            &mut target,
            &json!({"a": {"b": null, "x": 3}, "d": {"k": 1}, "e": null}),
        );
        assert_eq!(target, json!({"a": {"c": 2, "x": 3}, "d": {"k": 1}}));
    }

    #[test]
    fn filter_config_is_inlined_compact_with_quotes_doubled() {
        let template = "value: '${FILTER_CONFIG}'\ncluster: ${COUNTER_CLUSTER}\n";
        let config = r#"{ "counter": { "cluster": "${COUNTER_CLUSTER}" }, "note": "it's" }"#;
        let out = render_envoy(
            template,
            config,
            &vals(&[]),
            Some(&json!({"refund_on_5xx": false})),
        )
        .unwrap();
        assert_eq!(
            out,
            "value: '{\"counter\":{\"cluster\":\"turnpike_counter\"},\"note\":\"it''s\",\"refund_on_5xx\":false}'\ncluster: turnpike_counter\n"
        );
    }

    #[test]
    fn invalid_filter_config_json_is_an_error() {
        let err = render_filter_config("{ nope", &vals(&[]), None).unwrap_err();
        assert!(err.to_string().contains("filter config"), "{err}");
    }

    #[test]
    fn repository_template_renders_with_all_values_given() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let template = std::fs::read_to_string(format!("{root}/envoy/envoy.yaml.tmpl")).unwrap();
        let config = std::fs::read_to_string(format!("{root}/envoy/filter-config.json")).unwrap();
        let given = [
            "ADMIN_ADDRESS",
            "ADMIN_PORT",
            "LISTEN_ADDRESS",
            "LISTEN_PORT",
            "JWKS_PATH",
            "WASM_PATH",
            "UPSTREAM_HOST",
            "UPSTREAM_PORT",
            "COUNTER_HOST",
            "COUNTER_PORT",
            "COLLECTOR_HOST",
            "COLLECTOR_PORT",
        ];
        let err = render_envoy(&template, &config, &vals(&[]), None).unwrap_err();
        assert!(err.to_string().contains("ADMIN_PORT"), "{err}");
        let values = vals(&given.iter().map(|n| (*n, "1")).collect::<Vec<_>>());
        let out = render_envoy(&template, &config, &values, None).unwrap();
        let unfilled = out
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("${"));
        assert!(!unfilled, "{out}");
        assert!(out.contains("\"cluster\":\"turnpike_counter\""));
        // Secrets are not in the configuration: the VM reads them from Envoy's
        // environment.
        assert!(out.contains("host_env_keys: [ TURNPIKE_COUNTER_TOKEN, TURNPIKE_INGEST_SECRET ]"));
        assert!(out.contains("\"secret_env\":\"TURNPIKE_INGEST_SECRET\""));
        for setting in [
            "normalize_path: true",
            "merge_slashes: true",
            "path_with_escaped_slashes_action: REJECT_REQUEST",
        ] {
            assert!(out.contains(setting), "{setting} in {out}");
        }
    }
}
