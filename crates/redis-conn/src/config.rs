//! Which Redis, and how to reach it: the mode an operator picks, the URLs, the secret.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use redis::{ConnectionInfo, IntoConnectionInfo};

/// A Redis deployment, chosen explicitly (as envoyproxy/ratelimit's `REDIS_TYPE`):
/// guessing from the server's answers would turn a misconfigured cluster into a
/// silently wrong single-node setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One server (or a primary behind a stable address, e.g. Sentinel-managed DNS).
    #[default]
    Single,
    /// A Redis Cluster: the URLs are seed nodes; the slot map is learnt from them.
    Cluster,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Cluster => "cluster",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Mode, ConfigError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "single" => Ok(Mode::Single),
            "cluster" => Ok(Mode::Cluster),
            other => Err(ConfigError(format!(
                "redis mode {other:?}: expected `single` or `cluster`"
            ))),
        }
    }
}

/// A configuration the operator must fix; the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Everything needed to connect, in either mode.
#[derive(Clone)]
pub struct RedisConfig {
    pub mode: Mode,
    /// One URL (single) or the seed nodes (cluster), in the order given.
    pub urls: Vec<String>,
    /// `password`, or `user password` for an ACL user; applied to every node,
    /// including the ones a cluster's topology reveals later.
    pub secret: Option<String>,
    /// Bounds connecting to a node and waiting for each reply (also the whole of a
    /// cluster request, redirections and retries included).
    pub timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode)
            .field("urls", &self.urls)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisConfig {
    /// `urls` is what `--redis` holds: one URL, or comma-separated seed URLs in
    /// cluster mode. Every URL is parsed here, so a typo stops the service at start.
    pub fn new(
        mode: Mode,
        urls: &str,
        secret: Option<String>,
        timeout: Duration,
    ) -> Result<RedisConfig, ConfigError> {
        let list: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        match (mode, list.len()) {
            (_, 0) => return Err(ConfigError("--redis: no URL given".into())),
            (Mode::Single, n) if n > 1 => {
                return Err(ConfigError(format!(
                    "--redis holds {n} URLs, but --redis-mode is single: give one URL, or \
                     --redis-mode cluster for a Redis Cluster's seed nodes"
                )))
            }
            _ => {}
        }
        let config = RedisConfig {
            mode,
            urls: list,
            secret: secret.filter(|s| !s.trim().is_empty()),
            timeout,
        };
        config.connection_infos()?;
        Ok(config)
    }

    /// The URLs as connection infos, with the secret applied.
    pub(crate) fn connection_infos(&self) -> Result<Vec<ConnectionInfo>, ConfigError> {
        self.urls
            .iter()
            .map(|url| {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| ConfigError(format!("--redis {}: {e}", redacted(url))))?;
                Ok(match self.credential() {
                    Some((user, pass)) => {
                        let mut settings = info.redis_settings().clone().set_password(pass);
                        if let Some(user) = user {
                            settings = settings.set_username(user);
                        }
                        info.set_redis_settings(settings)
                    }
                    None => info,
                })
            })
            .collect()
    }

    /// `(user, password)`: `user password` names an ACL user, a lone word is the
    /// password of `default`.
    pub(crate) fn credential(&self) -> Option<(Option<&str>, &str)> {
        let secret = self.secret.as_deref()?.trim();
        Some(match secret.split_once(' ') {
            Some((user, pass)) => (Some(user), pass.trim()),
            None => (None, secret),
        })
    }
}

/// A URL fit for a log line or an error: a password in it is replaced.
pub fn redacted(url: &str) -> String {
    turnpike_auth::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(100);

    #[test]
    fn modes_parse_case_insensitively_and_refuse_anything_else() {
        assert_eq!("cluster".parse::<Mode>().unwrap(), Mode::Cluster);
        assert_eq!(" Single ".parse::<Mode>().unwrap(), Mode::Single);
        assert!("sentinel".parse::<Mode>().is_err());
        assert_eq!(Mode::default(), Mode::Single);
    }

    #[test]
    fn cluster_mode_takes_comma_separated_seeds() {
        let config = RedisConfig::new(
            Mode::Cluster,
            "redis://10.0.0.1:7000, redis://10.0.0.2:7000,,",
            None,
            T,
        )
        .unwrap();
        assert_eq!(
            config.urls,
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
    }

    #[test]
    fn single_mode_refuses_several_urls_and_names_the_cluster_flag() {
        let err = RedisConfig::new(Mode::Single, "redis://a:1,redis://b:2", None, T).unwrap_err();
        assert!(err.0.contains("--redis-mode cluster"), "{err}");
        assert!(RedisConfig::new(Mode::Cluster, " , ", None, T).is_err());
    }

    #[test]
    fn a_bad_url_is_refused_without_showing_its_password() {
        let err = RedisConfig::new(Mode::Single, "http://:hunter2@x:1", None, T).unwrap_err();
        assert!(!err.0.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_secret_is_a_password_or_an_acl_user_and_password() {
        let with = |s: &str| RedisConfig::new(Mode::Single, "redis://x:1", Some(s.into()), T);
        let plain = with("s3cret").unwrap();
        assert_eq!(plain.credential(), Some((None, "s3cret")));
        let acl = with("turnpike s3cret").unwrap();
        assert_eq!(acl.credential(), Some((Some("turnpike"), "s3cret")));
        let info = &acl.connection_infos().unwrap()[0];
        assert_eq!(info.redis_settings().username(), Some("turnpike"));
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
        assert!(!format!("{acl:?}").contains("s3cret"));
        assert_eq!(with("  ").unwrap().credential(), None);
    }
}
