//! Decoding of Stripe's v1 request encoding: `application/x-www-form-urlencoded`
//! (bodies and query strings) with bracket keys for nesting, the way Stripe's own
//! clients encode them: `payload[value]=5`, `cancel[identifier]=x`, `expand[]=a` or
//! `expand[0]=a`.

use std::collections::BTreeMap;

/// One decoded parameter: a string, a nested object or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormValue {
    Str(String),
    Map(BTreeMap<String, FormValue>),
    List(Vec<FormValue>),
}

/// A decoded request: top-level parameter names to values.
pub type Form = BTreeMap<String, FormValue>;

/// Why a form could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormError {
    /// The same name is used as a plain value and as a nested object or list
    /// (`a=1&a[b]=2`). Carries the full bracket name.
    Conflict(String),
    /// A key whose brackets do not close (`payload[value`).
    BadKey(String),
}

/// Decodes `a=1&b[c]=2` into a tree. Later plain values for the same name win, as in
/// Stripe's (Rack-style) parser.
pub fn decode(raw: &[u8]) -> Result<Form, FormError> {
    let mut form = Form::new();
    for (key, value) in form_urlencoded::parse(raw) {
        let path = split_key(&key).ok_or_else(|| FormError::BadKey(key.to_string()))?;
        insert(&mut form, &key, &path, value.into_owned())?;
    }
    Ok(form)
}

/// One step of a bracket path: a name, an explicit index, or `[]` (append).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Name(String),
    Index(usize),
    Append,
}

/// `payload[a][b]` → `payload`, `a`, `b`; `expand[]` → `expand`, append.
fn split_key(key: &str) -> Option<Vec<Step>> {
    let (head, mut rest) = match key.find('[') {
        Some(at) => (&key[..at], &key[at..]),
        None => (key, ""),
    };
    if head.is_empty() {
        return None;
    }
    let mut steps = vec![Step::Name(head.to_owned())];
    while !rest.is_empty() {
        let inner_end = rest.strip_prefix('[')?.find(']')?;
        let inner = &rest[1..=inner_end];
        steps.push(if inner.is_empty() {
            Step::Append
        } else if let Ok(i) = inner.parse::<usize>() {
            Step::Index(i)
        } else {
            Step::Name(inner.to_owned())
        });
        rest = &rest[inner_end + 2..];
    }
    Some(steps)
}

fn insert(form: &mut Form, key: &str, path: &[Step], value: String) -> Result<(), FormError> {
    let conflict = || FormError::Conflict(key.to_owned());
    let Some((Step::Name(first), rest)) = path.split_first() else {
        return Err(FormError::BadKey(key.to_owned()));
    };
    if rest.is_empty() {
        if matches!(
            form.get(first),
            Some(FormValue::Map(_) | FormValue::List(_))
        ) {
            return Err(conflict());
        }
        form.insert(first.clone(), FormValue::Str(value));
        return Ok(());
    }
    let slot = form
        .entry(first.clone())
        .or_insert_with(|| container_for(&rest[0]));
    insert_into(slot, rest, value).ok_or_else(conflict)
}

fn container_for(step: &Step) -> FormValue {
    match step {
        Step::Name(_) => FormValue::Map(BTreeMap::new()),
        Step::Index(_) | Step::Append => FormValue::List(Vec::new()),
    }
}

/// Inserts below `slot`; `None` when the shapes conflict.
fn insert_into(slot: &mut FormValue, path: &[Step], value: String) -> Option<()> {
    let (step, rest) = path.split_first()?;
    let leaf = |rest: &[Step], value: String| {
        if rest.is_empty() {
            Some(FormValue::Str(value))
        } else {
            let mut child = container_for(&rest[0]);
            insert_into(&mut child, rest, value)?;
            Some(child)
        }
    };
    match (slot, step) {
        (FormValue::Map(map), Step::Name(name)) => {
            if rest.is_empty() {
                if matches!(map.get(name), Some(FormValue::Map(_) | FormValue::List(_))) {
                    return None;
                }
                map.insert(name.clone(), FormValue::Str(value));
                return Some(());
            }
            match map.get_mut(name) {
                Some(existing) => insert_into(existing, rest, value),
                None => {
                    map.insert(name.clone(), leaf(rest, value)?);
                    Some(())
                }
            }
        }
        (FormValue::List(list), Step::Append) => {
            list.push(leaf(rest, value)?);
            Some(())
        }
        (FormValue::List(list), Step::Index(i)) => {
            // Stripe's clients send `expand[0]`, `expand[1]`, … in order; an index
            // that is already there extends that element (`items[0][a]`, `items[0][b]`).
            if let Some(existing) = list.get_mut(*i) {
                if rest.is_empty() {
                    *existing = FormValue::Str(value);
                    return Some(());
                }
                return insert_into(existing, rest, value);
            }
            list.push(leaf(rest, value)?);
            Some(())
        }
        _ => None,
    }
}

/// The bracket name of a nested parameter, as Stripe names it in `param`:
/// `["cancel", "identifier"]` → `cancel[identifier]`.
pub fn bracket_name(path: &[&str]) -> String {
    let mut out = String::new();
    for (i, part) in path.iter().enumerate() {
        if i == 0 {
            out.push_str(part);
        } else {
            out.push('[');
            out.push_str(part);
            out.push(']');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> FormValue {
        FormValue::Str(v.to_owned())
    }

    #[test]
    fn decodes_flat_and_percent_encoded_values() {
        let form = decode(b"event_name=api+calls&identifier=a%2Fb%26c").unwrap();
        assert_eq!(form["event_name"], s("api calls"));
        assert_eq!(form["identifier"], s("a/b&c"));
    }

    #[test]
    fn nests_bracket_keys_including_encoded_brackets() {
        let form = decode(b"payload[value]=5&payload%5Bstripe_customer_id%5D=cus_1").unwrap();
        let FormValue::Map(payload) = &form["payload"] else {
            panic!("payload is not a map: {form:?}");
        };
        assert_eq!(payload["value"], s("5"));
        assert_eq!(payload["stripe_customer_id"], s("cus_1"));
    }

    #[test]
    fn collects_lists_from_empty_and_indexed_brackets() {
        let form = decode(b"expand[]=a&expand[]=b").unwrap();
        assert_eq!(form["expand"], FormValue::List(vec![s("a"), s("b")]));
        let form = decode(b"expand[0]=a&expand[1]=b").unwrap();
        assert_eq!(form["expand"], FormValue::List(vec![s("a"), s("b")]));
    }

    #[test]
    fn deeper_nesting_builds_maps_inside_maps() {
        let form = decode(b"a[b][c]=1&a[b][d]=2&a[e]=3").unwrap();
        let mut b = BTreeMap::new();
        b.insert("c".to_owned(), s("1"));
        b.insert("d".to_owned(), s("2"));
        let mut a = BTreeMap::new();
        a.insert("b".to_owned(), FormValue::Map(b));
        a.insert("e".to_owned(), s("3"));
        assert_eq!(form["a"], FormValue::Map(a));
    }

    #[test]
    fn a_later_plain_value_replaces_an_earlier_one() {
        let form = decode(b"event_name=a&event_name=b").unwrap();
        assert_eq!(form["event_name"], s("b"));
    }

    #[test]
    fn refuses_a_name_used_both_plain_and_nested() {
        assert_eq!(
            decode(b"payload=1&payload[value]=2"),
            Err(FormError::Conflict("payload[value]".into()))
        );
        assert_eq!(
            decode(b"payload[value]=2&payload=1"),
            Err(FormError::Conflict("payload".into()))
        );
    }

    #[test]
    fn refuses_unclosed_brackets_and_empty_names() {
        assert_eq!(
            decode(b"payload[value=2"),
            Err(FormError::BadKey("payload[value".into()))
        );
        assert_eq!(decode(b"[x]=2"), Err(FormError::BadKey("[x]".into())));
    }

    #[test]
    fn empty_body_is_an_empty_form() {
        assert!(decode(b"").unwrap().is_empty());
    }

    #[test]
    fn bracket_name_renders_nested_paths() {
        assert_eq!(bracket_name(&["event_name"]), "event_name");
        assert_eq!(
            bracket_name(&["cancel", "identifier"]),
            "cancel[identifier]"
        );
    }
}
