//! The public half of a signing key as a JWKS document, for Envoy's `jwt_authn`.

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::DevError;

/// The JWKS (one RSA key: `kty`, `n`, `e`, `kid`, `alg`, `use`) for a private key PEM.
pub fn jwks_for_private_key(key_pem: &[u8], kid: &str) -> Result<JwkSet, DevError> {
    let key = EncodingKey::from_rsa_pem(key_pem).map_err(|source| DevError::Key {
        what: "RSA private key PEM",
        source,
    })?;
    let mut jwk =
        Jwk::from_encoding_key(&key, Algorithm::RS256).map_err(|source| DevError::Key {
            what: "deriving the public key",
            source,
        })?;
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(JwkSet { keys: vec![jwk] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{mint, TokenSpec, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
    use jsonwebtoken::{DecodingKey, Validation};

    fn key(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../../{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn verify(
        token: &str,
        jwks: &JwkSet,
    ) -> Result<serde_json::Value, jsonwebtoken::errors::Error> {
        let decoding = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[DEFAULT_ISSUER]);
        validation.set_audience(&[DEFAULT_AUDIENCE]);
        jsonwebtoken::decode::<serde_json::Value>(token, &decoding, &validation).map(|d| d.claims)
    }

    #[test]
    fn minted_token_verifies_against_the_derived_jwks() {
        let pem = key("config/demo/jwt-signing-key.pem");
        let jwks = jwks_for_private_key(&pem, "turnpike-demo").unwrap();
        let token = mint(&TokenSpec::for_tenant("acme"), &pem, "turnpike-demo").unwrap();
        assert_eq!(verify(&token, &jwks).unwrap()["tenant"], "acme");
    }

    #[test]
    fn forged_token_does_not_verify_against_the_demo_jwks() {
        let jwks =
            jwks_for_private_key(&key("config/demo/jwt-signing-key.pem"), "turnpike-demo").unwrap();
        let forged = mint(
            &TokenSpec::for_tenant("acme"),
            &key("tests/fixtures/forger-key.pem"),
            "turnpike-demo",
        )
        .unwrap();
        assert!(verify(&forged, &jwks).is_err());
    }

    #[test]
    fn jwks_names_kid_and_algorithm() {
        let jwks = jwks_for_private_key(&key("config/demo/jwt-signing-key.pem"), "k9").unwrap();
        let json = serde_json::to_value(&jwks).unwrap();
        let k = &json["keys"][0];
        assert_eq!(k["kty"], "RSA");
        assert_eq!(k["kid"], "k9");
        assert_eq!(k["alg"], "RS256");
        assert_eq!(k["e"], "AQAB");
        assert!(k["n"].as_str().unwrap().len() > 300);
    }

    #[test]
    fn garbage_pem_is_an_error_naming_the_key() {
        let err = jwks_for_private_key(b"not a key", "k").unwrap_err();
        assert!(err.to_string().contains("RSA private key PEM"), "{err}");
    }
}
