//! Minting RS256 JWTs for the demo and the tests: the claims are built by a pure
//! function, signing is a thin wrapper over `jsonwebtoken`.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::DevError;

/// Default issuer and audience; they match the Envoy template's defaults.
pub const DEFAULT_ISSUER: &str = "https://auth.turnpike.example";
pub const DEFAULT_AUDIENCE: &str = "turnpike-api";
pub const DEFAULT_KID: &str = "turnpike-demo";

/// What goes into a token. `tenant: None` mints a valid token without a tenant claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub tenant: Option<String>,
    pub plan: Option<String>,
    /// Dotted path of the tenant claim (`org.id` → `{"org":{"id":..}}`).
    pub tenant_claim: String,
    pub plan_claim: String,
    pub issuer: String,
    pub audience: String,
    pub ttl_secs: u64,
    /// Mint a token whose `exp` lies well past Envoy's default 60 s clock skew.
    pub expired: bool,
}

impl TokenSpec {
    /// A valid token for `tenant` with the demo issuer and audience.
    pub fn for_tenant(tenant: &str) -> Self {
        TokenSpec {
            tenant: Some(tenant.to_owned()),
            plan: None,
            tenant_claim: "tenant".to_owned(),
            plan_claim: "plan".to_owned(),
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            ttl_secs: 3600,
            expired: false,
        }
    }

    pub fn with_plan(mut self, plan: &str) -> Self {
        self.plan = Some(plan.to_owned());
        self
    }

    pub fn with_tenant_claim(mut self, dotted: &str) -> Self {
        self.tenant_claim = dotted.to_owned();
        self
    }

    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.issuer = issuer.to_owned();
        self
    }

    pub fn without_tenant(mut self) -> Self {
        self.tenant = None;
        self
    }

    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }

    /// The JWT payload for this spec at `now_unix`.
    pub fn claims(&self, now_unix: u64) -> Result<Value, DevError> {
        let (iat, exp) = if self.expired {
            // Both instants in the past, beyond any reasonable clock-skew allowance.
            let exp = now_unix.saturating_sub(600);
            (exp.saturating_sub(self.ttl_secs), exp)
        } else {
            (now_unix, now_unix + self.ttl_secs)
        };
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("iat".into(), iat.into());
        claims.insert("exp".into(), exp.into());
        let sub = self
            .tenant
            .clone()
            .unwrap_or_else(|| "anonymous".to_owned());
        claims.insert("sub".into(), sub.into());
        if let Some(tenant) = &self.tenant {
            insert_dotted(&mut claims, &self.tenant_claim, tenant.clone().into())?;
        }
        if let Some(plan) = &self.plan {
            insert_dotted(&mut claims, &self.plan_claim, plan.clone().into())?;
        }
        Ok(Value::Object(claims))
    }
}

/// Puts `value` at a dotted path, creating nested objects on the way.
fn insert_dotted(root: &mut Map<String, Value>, path: &str, value: Value) -> Result<(), DevError> {
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(DevError::InvalidArg {
            field: "claim",
            reason: format!("`{path}` is not a dotted path of non-empty names"),
        });
    }
    let (last, parents) = segments.split_last().ok_or_else(|| DevError::InvalidArg {
        field: "claim",
        reason: "empty claim path".into(),
    })?;
    let mut node = root;
    for segment in parents {
        let child = node
            .entry((*segment).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        node = child.as_object_mut().ok_or_else(|| DevError::InvalidArg {
            field: "claim",
            reason: format!("`{segment}` in `{path}` already holds a non-object claim"),
        })?;
    }
    node.insert((*last).to_owned(), value);
    Ok(())
}

/// Signs claims with an RSA private key (PKCS#8 or PKCS#1 PEM), RS256, header `kid`.
pub fn sign(claims: &Value, key_pem: &[u8], kid: &str) -> Result<String, DevError> {
    let key = EncodingKey::from_rsa_pem(key_pem).map_err(|source| DevError::Key {
        what: "RSA private key PEM",
        source,
    })?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).map_err(|source| DevError::Key {
        what: "signing the token",
        source,
    })
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mints a token for `spec` now.
pub fn mint(spec: &TokenSpec, key_pem: &[u8], kid: &str) -> Result<String, DevError> {
    sign(&spec.claims(now_unix())?, key_pem, kid)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time.
pub fn format_utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// What `turnpike-dev mint` says about the token it printed: who it is for and when it
/// stops working.
pub fn lifetime_note(spec: &TokenSpec, now_unix: u64) -> String {
    let who = match (&spec.tenant, &spec.plan) {
        (Some(t), Some(p)) => format!("tenant {t}, plan claim {p}"),
        (Some(t), None) => format!("tenant {t}"),
        (None, _) => "no tenant claim".to_owned(),
    };
    let exp = spec
        .claims(now_unix)
        .ok()
        .and_then(|c| c["exp"].as_u64())
        .unwrap_or(now_unix);
    if spec.expired {
        return format!(
            "token ({who}) expired at {} on purpose (--expired)",
            format_utc(exp)
        );
    }
    let ttl = spec.ttl_secs;
    let span = if ttl.is_multiple_of(3600) {
        format!("{} h", ttl / 3600)
    } else if ttl.is_multiple_of(60) {
        format!("{} min", ttl / 60)
    } else {
        format!("{ttl} s")
    };
    format!(
        "token ({who}) valid until {} ({span}, --ttl-secs); after that Envoy answers 401 \
         `Jwt is expired`: mint another",
        format_utc(exp)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_tenant_claim_lands_at_the_dotted_path() {
        let claims = TokenSpec::for_tenant("acme")
            .with_tenant_claim("org.id")
            .with_plan("pro")
            .claims(1000)
            .unwrap();
        assert_eq!(claims["org"]["id"], "acme");
        assert_eq!(claims["plan"], "pro");
        assert!(claims.get("tenant").is_none());
    }

    #[test]
    fn token_without_tenant_has_no_tenant_claim_but_is_otherwise_valid() {
        let claims = TokenSpec::for_tenant("acme")
            .without_tenant()
            .claims(1000)
            .unwrap();
        assert!(claims.get("tenant").is_none());
        assert_eq!(claims["iss"], DEFAULT_ISSUER);
        assert_eq!(claims["exp"], 4600);
    }

    #[test]
    fn expired_token_expired_beyond_clock_skew() {
        let claims = TokenSpec::for_tenant("acme")
            .expired()
            .claims(10_000)
            .unwrap();
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp + 300 < 10_000, "exp {exp}");
        assert!(claims["iat"].as_u64().unwrap() < exp);
    }

    #[test]
    fn utc_times_and_the_lifetime_note() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_798_761_599), "2026-12-31T23:59:59Z");
        let note = lifetime_note(&TokenSpec::for_tenant("acme"), 0);
        assert_eq!(
            note,
            "token (tenant acme) valid until 1970-01-01T01:00:00Z (1 h, --ttl-secs); after \
             that Envoy answers 401 `Jwt is expired`: mint another"
        );
        let note = lifetime_note(&TokenSpec::for_tenant("acme").expired(), 10_000);
        assert!(note.contains("expired at 1970-01-01T02:36:40Z"), "{note}");
    }

    #[test]
    fn claim_path_with_empty_segment_is_refused() {
        let err = TokenSpec::for_tenant("acme")
            .with_tenant_claim("org..id")
            .claims(1)
            .unwrap_err();
        assert!(err.to_string().contains("claim"), "{err}");
    }

    #[test]
    fn signed_token_has_rs256_header_with_kid() {
        let pem = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/demo/jwt-signing-key.pem"
        ))
        .unwrap();
        let token = mint(&TokenSpec::for_tenant("acme"), &pem, "k1").unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("k1"));
    }
}
