//! Minimal parsing of the structured-field lists Turnpike emits
//! (`RateLimit`, `RateLimit-Policy`, the soft warning): `"name";k=v;k=v, ...`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub params: BTreeMap<String, String>,
}

impl Member {
    /// An integer parameter, panicking with the member if absent or not a number.
    pub fn int(&self, key: &str) -> u64 {
        self.params
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("member {self:?} has no integer parameter `{key}`"))
    }
}

/// Parses a list whose members are quoted strings with parameters. Panics on anything
/// else: the header is what the test checks.
pub fn parse_list(header: &str) -> Vec<Member> {
    header
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|member| {
            let mut parts = member.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let name = name
                .strip_prefix('"')
                .and_then(|n| n.strip_suffix('"'))
                .unwrap_or_else(|| {
                    panic!("member name {name:?} is not a quoted string in {header:?}")
                });
            let params = parts
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, "?1"));
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            Member {
                name: name.to_owned(),
                params,
            }
        })
        .collect()
}

/// The member named `name`, panicking with the whole list when it is absent.
pub fn member<'a>(list: &'a [Member], name: &str) -> &'a Member {
    list.iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no member {name:?} in {list:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ietf_ratelimit_members() {
        let list = parse_list(r#""per-minute";q=60;w=60, "monthly";q=10000;w=2592000"#);
        assert_eq!(list.len(), 2);
        assert_eq!(member(&list, "per-minute").int("q"), 60);
        assert_eq!(member(&list, "monthly").int("w"), 2_592_000);
    }

    #[test]
    #[should_panic(expected = "not a quoted string")]
    fn unquoted_name_is_refused() {
        parse_list("per-minute;q=1");
    }
}
