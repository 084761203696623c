//! The configuration file of a shoal daemon (shoald, shoal-registry-ext): the steps both take
//! to read and parse it, and the error they report. Each daemon normalises and validates its
//! own sections in its own `Config::load`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config {path:?}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config {path:?}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl ConfigError {
    /// The configuration at `path` parsed but is not usable, because of `reason`.
    pub fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// The text of the configuration file at `path`.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `text` parsed as TOML into `T`; `path` only names it in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Section {
        port: u16,
    }

    #[test]
    fn errors_name_the_file() {
        let p = Path::new("/nonexistent/shoal.toml");
        let e = read(p).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/shoal.toml"), "{e}");
        let e = parse_toml::<Section>("port = \"x\"", Path::new("a.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }));
        assert!(e.to_string().contains("a.toml"), "{e}");
        assert_eq!(parse_toml::<Section>("port = 7", p).unwrap().port, 7);
        let e = ConfigError::invalid(p, "port 0");
        assert_eq!(
            e.to_string(),
            "invalid config \"/nonexistent/shoal.toml\": port 0"
        );
    }
}
