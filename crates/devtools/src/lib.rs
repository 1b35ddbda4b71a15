//! Turnpike developer tools, as a library so the integration-test harness can use
//! them in-process: JWT minting ([`token`]), JWKS ([`jwks`]), Envoy config rendering
//! ([`render`]), the demo upstream API ([`upstream`], with an LLM-shaped endpoint in
//! [`llm`]), a local Stripe Billing Meters stand-in ([`stripe_fake`]) and a
//! counter-only load generator ([`load_counter`]).

pub mod jwks;
pub mod llm;
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
    #[error(
        "no signing key found (tried {tried}); pass --key FILE or set TURNPIKE_DEMO_KEY \
         (the demo key is config/demo/jwt-signing-key.pem in the Turnpike repository)"
    )]
    KeyNotFound { tried: String },
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

/// The demo signing key, relative to the repository root.
pub const DEMO_KEY: &str = "config/demo/jwt-signing-key.pem";

/// The signing key to use: `explicit` (`--key`), else `$TURNPIKE_DEMO_KEY`, else the
/// repository's demo key, looked for above the working directory, above this binary
/// (`target/debug/turnpike-dev` sits inside the repository) and in the repository this
/// binary was built from. `env` reads an environment variable (a parameter for tests).
pub fn find_demo_key(
    explicit: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<std::path::PathBuf, DevError> {
    use std::path::PathBuf;
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = env("TURNPIKE_DEMO_KEY") {
        return Ok(PathBuf::from(path));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(PathBuf::from));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(PathBuf::from));
    }
    roots.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")));
    let mut tried = Vec::new();
    for root in roots {
        let candidate = root.join(DEMO_KEY);
        if candidate.is_file() {
            return Ok(candidate);
        }
        let shown = candidate.display().to_string();
        if !tried.contains(&shown) {
            tried.push(shown);
        }
    }
    Err(DevError::KeyNotFound {
        tried: tried.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_key_or_the_environment_wins() {
        let none = |_: &str| None;
        let key = find_demo_key(Some(std::path::Path::new("/k.pem")), &none).unwrap();
        assert_eq!(key, std::path::PathBuf::from("/k.pem"));
        let env = |name: &str| (name == "TURNPIKE_DEMO_KEY").then(|| "/env.pem".to_owned());
        assert_eq!(
            find_demo_key(None, &env).unwrap(),
            std::path::PathBuf::from("/env.pem")
        );
    }

    #[test]
    fn the_repository_key_is_found_without_a_flag() {
        let key = find_demo_key(None, &|_| None).unwrap();
        assert!(key.ends_with(DEMO_KEY), "{}", key.display());
        assert!(key.is_file());
    }
}
