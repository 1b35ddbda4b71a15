use std::path::PathBuf;

/// Why a plans file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read plans file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, a wrong type, a missing or an unknown field. The TOML error
    /// carries the line, column and the offending key.
    #[error("{0}")]
    Syntax(#[source] Box<toml::de::Error>),
    /// Well-formed TOML that breaks a rule; `field` is a path such as
    /// `plans.free.limits[1].soft`.
    #[error("{field}: {message}{}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        field: String,
        message: String,
        line: Option<usize>,
    },
}

impl PlanError {
    /// The field path of a rule violation, if this is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            PlanError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}
