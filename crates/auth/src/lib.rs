//! Who may call what. The filter holds the *service* credential (consume, refund);
//! operators and the collector hold the *read* credential (usage reads). Credentials
//! come from files or environment variables, never from the command line, where any
//! local user could read them in the process list. A file may hold several tokens,
//! one per line, so a token can be rotated without a moment when none works.

use std::path::{Path, PathBuf};

use http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// Tokens accepted for one kind of access. Empty means the check is off (only when
/// the operator explicitly allowed unauthenticated access).
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<Vec<u8>>);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what}: no token in {where_}; put one token per line (at least 16 visible characters)"
    )]
    Empty { what: &'static str, where_: String },
    #[error("{what}: a token in {where_} is shorter than 16 characters or has spaces")]
    Weak { what: &'static str, where_: String },
}

impl Tokens {
    /// Tokens from `file` (one per line) or else the value of `env` (one token, or
    /// several separated by commas). `Ok(None)` when neither is set.
    pub fn load(
        what: &'static str,
        file: Option<&Path>,
        env_value: Option<String>,
    ) -> Result<Option<Tokens>, TokenError> {
        let (text, where_) = match (file, env_value) {
            (Some(path), _) => (
                std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                    path: path.to_path_buf(),
                    source,
                })?,
                path.display().to_string(),
            ),
            (None, Some(value)) => (value.replace(',', "\n"), "the environment".to_owned()),
            (None, None) => return Ok(None),
        };
        let tokens: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if tokens.is_empty() {
            return Err(TokenError::Empty { what, where_ });
        }
        if tokens
            .iter()
            .any(|t| t.len() < 16 || !t.iter().all(u8::is_ascii_graphic))
        {
            return Err(TokenError::Weak { what, where_ });
        }
        Ok(Some(Tokens(tokens)))
    }

    /// The first token, e.g. to call a service that shares it.
    pub fn first(&self) -> Option<String> {
        self.0
            .first()
            .map(|t| String::from_utf8_lossy(t).into_owned())
    }

    pub fn from_values(values: &[&str]) -> Tokens {
        Tokens(values.iter().map(|v| v.as_bytes().to_vec()).collect())
    }

    /// Whether `Authorization: Bearer <token>` names one of these tokens (constant
    /// time per token). An empty set accepts everything.
    pub fn allow(&self, headers: &HeaderMap) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(presented) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        self.0.iter().fold(false, |ok, t| {
            ok | bool::from(t.as_slice().ct_eq(presented))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn any_listed_token_is_accepted_and_nothing_else() {
        let t = Tokens::from_values(&["old-token-0123456789", "new-token-0123456789"]);
        assert!(t.allow(&headers("Bearer old-token-0123456789")));
        assert!(t.allow(&headers("Bearer new-token-0123456789")));
        assert!(!t.allow(&headers("Bearer new-token-012345678")));
        assert!(!t.allow(&headers("new-token-0123456789")));
        assert!(!t.allow(&HeaderMap::new()));
    }

    #[test]
    fn files_hold_one_token_per_line_and_weak_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# rotated 2026-11\nfirst-token-0123456789\n\nsecond-token-0123456789\n",
        )
        .unwrap();
        let t = Tokens::load("service token", Some(&path), None)
            .unwrap()
            .unwrap();
        assert_eq!(t.0.len(), 2);
        std::fs::write(&path, "short\n").unwrap();
        assert!(Tokens::load("service token", Some(&path), None).is_err());
        std::fs::write(&path, "\n# nothing\n").unwrap();
        let err = Tokens::load("service token", Some(&path), None).unwrap_err();
        assert!(err.to_string().contains("no token"), "{err}");
        assert!(Tokens::load("x", None, None).unwrap().is_none());
        let env = Tokens::load(
            "x",
            None,
            Some("a-token-from-env-0001,b-token-from-env-0002".into()),
        );
        assert_eq!(env.unwrap().unwrap().0.len(), 2);
    }
}

/// A URL for an error message: any password replaced by `***` (also in a URL too
/// malformed to parse).
pub fn redact_url(url: &str) -> String {
    let Some((userinfo, host)) = url.rsplit_once('@') else {
        return url.to_owned();
    };
    let (scheme, userinfo) = userinfo.split_once("://").unwrap_or(("", userinfo));
    let scheme = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}{user}:***@{host}"),
        None => format!("{scheme}***@{host}"),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_error_messages() {
        assert_eq!(
            redact_url("redis://u:pw@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(
            redact_url("postgres://me:pw@db/ledger"),
            "postgres://me:***@db/ledger"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("notaurl"), "notaurl");
        assert_eq!(redact_url("redis//u:secret@x"), "redis//u:***@x");
        assert_eq!(redact_url("redis://secret@h"), "redis://***@h");
    }
}
