//! Request headers the filter owns. Upstreams trust `turnpike-*` headers (the tenant,
//! the consume id), so the filter drops every client-sent one from every request, and
//! only then sets its own on the requests it meters.

/// Every request header with this prefix (any case) is the filter's.
pub const PREFIX: &str = "turnpike-";

/// Whether a request header name is one of the filter's.
pub fn is_reserved(name: &str) -> bool {
    name.get(..PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(PREFIX))
}

/// The reserved names among `names`, each once (removing a header by name removes
/// all its values). Allocates only when a client sent one.
pub fn distinct_reserved<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut found: Vec<&str> = Vec::new();
    for name in names.filter(|n| is_reserved(n)) {
        if !found.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            found.push(name);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_case_of_the_prefix_is_reserved() {
        for name in [
            "turnpike-tenant",
            "Turnpike-Consume-Id",
            "TURNPIKE-PLAN",
            "turnpike-",
            "turnpike-quota-warning",
        ] {
            assert!(is_reserved(name), "{name}");
        }
        for name in [
            "turnpike",
            "turnpikes-x",
            "x-turnpike-tenant",
            "tenant",
            "",
            "turnpike_tenant",
            "é",
        ] {
            assert!(!is_reserved(name), "{name}");
        }
    }

    #[test]
    fn repeated_names_are_listed_once() {
        let names = [
            ":path",
            "turnpike-tenant",
            "authorization",
            "turnpike-tenant",
            "Turnpike-Tenant",
            "turnpike-x",
        ];
        assert_eq!(
            distinct_reserved(names.into_iter()),
            ["turnpike-tenant", "turnpike-x"]
        );
        assert!(distinct_reserved([":path", "host"].into_iter()).is_empty());
    }
}
