//! Turnpike developer tools, as a library so the integration-test harness can use
//! them in-process: JWT minting ([`token`]), JWKS ([`jwks`]), Envoy config rendering
//! ([`render`]), the demo upstream API ([`upstream`]), a local Stripe Billing
//! Meters stand-in ([`stripe_fake`]) and a counter-only load generator
//! ([`load_counter`]).

pub mod jwks;
pub mod load_counter;
pub mod render;
pub mod stripe_fake;
pub mod token;
pub mod upstream;

/// Everything that can go wrong in the dev tools; each names what it was about.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("invalid {field}: {reason}")]
    InvalidArg { field: &'static str, reason: String },
    #[error("{what}: {source}")]
    Key {
        what: &'static str,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("{what}: no value for placeholder(s) {names} (give them with --set NAME=VALUE)")]
    MissingPlaceholders { what: String, names: String },
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a file, naming it in the error.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, DevError> {
    std::fs::read(path).map_err(|source| DevError::Io {
        path: path.display().to_string(),
        source,
    })
}
