//! Claims of the JWT payload that `jwt_authn` verified and stored in dynamic metadata.
//!
//! Envoy resolves a property path through the metadata Struct down to the leaf, and
//! hands a string leaf back as its raw bytes. So the whole lookup is one hostcall and the
//! filter never decodes the payload itself. A non-string leaf comes back in another
//! encoding (a number as 8 bytes of f64, a Struct as protobuf); the id checks below
//! refuse those.

/// Longest tenant id (and plan name) accepted.
pub const MAX_ID_LEN: usize = 64;

/// The full property path to one claim: `metadata.filter_metadata.<ns>.<key>.<claim...>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    claim: String,
    segments: Vec<String>,
}

impl ClaimPath {
    /// `claim` is a dotted path for nested claims (`org.id`).
    pub fn new(namespace: &str, payload_key: &str, claim: &str) -> Result<Self, &'static str> {
        if claim.is_empty() {
            return Err("must not be empty");
        }
        if claim.split('.').any(str::is_empty) {
            return Err("a dotted claim path must not have empty segments");
        }
        let mut segments = vec![
            "metadata".to_owned(),
            "filter_metadata".to_owned(),
            namespace.to_owned(),
            payload_key.to_owned(),
        ];
        segments.extend(claim.split('.').map(str::to_owned));
        Ok(Self {
            claim: claim.to_owned(),
            segments,
        })
    }

    /// The claim as configured, dotted.
    pub fn claim(&self) -> &str {
        &self.claim
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The path in the shape proxy-wasm's `get_property` takes.
    pub fn as_property_path(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }
}

/// A tenant id: 1..=64 chars of `[A-Za-z0-9._-]`. `None` for anything else, including
/// non-string claim values.
pub fn parse_tenant(raw: &[u8]) -> Option<&str> {
    parse_id(raw)
}

/// A plan name from a claim, same alphabet as tenant ids. An invalid plan claim is
/// ignored (the counter then uses the tenant override or the default plan) rather than
/// refused: the plan only selects among configured plans.
pub fn parse_plan(raw: &[u8]) -> Option<&str> {
    parse_id(raw)
}

fn parse_id(raw: &[u8]) -> Option<&str> {
    let valid = !raw.is_empty()
        && raw.len() <= MAX_ID_LEN
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        // Checked ASCII above, so this cannot fail.
        std::str::from_utf8(raw).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_claim_becomes_extra_path_segments() {
        let p = ClaimPath::new("envoy.filters.http.jwt_authn", "jwt_payload", "org.id").unwrap();
        assert_eq!(
            p.as_property_path(),
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
    fn empty_claim_or_segment_is_refused() {
        assert!(ClaimPath::new("ns", "k", "").is_err());
        assert!(ClaimPath::new("ns", "k", "org.").is_err());
        assert!(ClaimPath::new("ns", "k", ".id").is_err());
    }

    #[test]
    fn tenant_ids_of_the_allowed_alphabet_pass() {
        assert_eq!(parse_tenant(b"acme"), Some("acme"));
        assert_eq!(parse_tenant(b"Acme-Corp_1.eu"), Some("Acme-Corp_1.eu"));
        assert_eq!(parse_tenant(&[b'a'; 64]).map(str::len), Some(64));
    }

    #[test]
    fn hostile_tenant_values_are_refused() {
        assert_eq!(parse_tenant(b""), None);
        assert_eq!(parse_tenant(&[b'a'; 65]), None);
        assert_eq!(parse_tenant(b"acme corp"), None);
        assert_eq!(parse_tenant(b"acme\"},{"), None);
        assert_eq!(parse_tenant(b"a:b"), None);
        assert_eq!(parse_tenant("ac\u{e9}".as_bytes()), None);
        assert_eq!(parse_tenant(b"acme\n"), None);
    }

    #[test]
    fn numeric_claim_bytes_are_not_a_tenant() {
        // How Envoy hands back a number leaf: the f64's 8 bytes.
        assert_eq!(parse_tenant(&12345f64.to_le_bytes()), None);
        assert_eq!(parse_tenant(&1f64.to_le_bytes()), None);
    }

    #[test]
    fn serialized_struct_is_not_a_tenant() {
        // A Struct leaf comes back as protobuf: field tags and lengths are control bytes.
        assert_eq!(parse_tenant(b"\n\x0b\n\x02id\x12\x05\x1a\x03abc"), None);
    }
}
