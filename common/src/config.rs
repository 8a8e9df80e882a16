//! What the agent's and the coordinator's configurations share: the one [`ConfigError`], where
//! a key's value came from ([`Origin`]), and reading a TOML file ([`load_toml`]).
//!
//! Each daemon reads a TOML file into its own `RawConfig` (flags override some keys), then
//! checks it into a typed `Config`. Every error names what to fix: the file that could not be
//! read or parsed, or the key whose value cannot work and where that value came from — the
//! file, a flag, or the default.

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration that cannot be used, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read: the config file, or a file it names (a token file).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not TOML of the expected shape: a syntax error, a key that does not
    /// exist, a value of the wrong type. The parser's message names the line and the key.
    #[error("{}: {message}", path.display())]
    Parse {
        /// Which file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key's value cannot work, or a required key has none.
    #[error("config key `{key}`{from}: {message}")]
    Invalid {
        /// The key, as the file spells it (`lease_ms`).
        key: &'static str,
        /// Where its value came from.
        from: Source,
        /// What is wrong, and what would do.
        message: String,
    },
}

impl ConfigError {
    /// The key an [`Invalid`](ConfigError::Invalid) names.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Where a key's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The config file (or, for a key it does not set, the default, with this file read).
    File(PathBuf),
    /// The command-line flag of the key's name (`lease_ms` is `--lease-ms`).
    Flag(&'static str),
    /// Neither: the default, or no value at all.
    Default,
}

impl fmt::Display for Source {
    /// ` (from FILE)`, ` (from --flag)` or nothing: written right after the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, " (from {})", p.display()),
            Source::Flag(key) => write!(f, " (from --{})", key.replace('_', "-")),
            Source::Default => Ok(()),
        }
    }
}

/// Where a `RawConfig`'s values came from: the file it was read from, if any, and the keys
/// that flags set over it. Errors made through [`Origin::invalid`] name the right one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    file: Option<PathBuf>,
    flags: Vec<&'static str>,
}

impl Origin {
    /// Values read from `path`.
    pub fn file(path: &Path) -> Origin {
        Origin {
            file: Some(path.to_path_buf()),
            flags: Vec::new(),
        }
    }

    /// The flag of `key` set its value, over the file's.
    pub fn set_by_flag(&mut self, key: &'static str) {
        if !self.flags.contains(&key) {
            self.flags.push(key);
        }
    }

    /// Where the value of `key` came from.
    pub fn source(&self, key: &'static str) -> Source {
        if self.flags.contains(&key) {
            Source::Flag(key)
        } else if let Some(p) = &self.file {
            Source::File(p.clone())
        } else {
            Source::Default
        }
    }

    /// The error for a value of `key` that cannot work.
    pub fn invalid(&self, key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            from: self.source(key),
            message: message.into(),
        }
    }
}

/// Reads and parses the TOML file `path`; its values' origin is that file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<(T, Origin), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    Ok((value, Origin::file(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        lease_ms: u64,
    }

    #[test]
    fn invalid_names_the_key_and_where_its_value_came_from() {
        let mut o = Origin::file(Path::new("/etc/tandem/coordinator.toml"));
        o.set_by_flag("admin_addr");
        let e = o.invalid("lease_ms", "must be at most 600000").to_string();
        assert_eq!(
            e,
            "config key `lease_ms` (from /etc/tandem/coordinator.toml): must be at most 600000"
        );
        let e = o.invalid("admin_addr", "`x` is not an IP:port address");
        assert_eq!(e.key(), Some("admin_addr"));
        assert_eq!(
            e.to_string(),
            "config key `admin_addr` (from --admin-addr): `x` is not an IP:port address"
        );
        let e = Origin::default().invalid("state_dir", "is required (--state-dir)");
        assert_eq!(
            e.to_string(),
            "config key `state_dir`: is required (--state-dir)"
        );
    }

    #[test]
    fn load_names_the_file_and_the_parser_the_key() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("missing.toml");
        let e = load_toml::<Conf>(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e
            .to_string()
            .starts_with(&format!("cannot read {}: ", missing.display())));
        let bad = d.path().join("bad.toml");
        std::fs::write(&bad, "lease_ms = 1000\nbogus = 1\n").unwrap();
        let e = load_toml::<Conf>(&bad).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", bad.display())), "{e}");
        assert!(e.contains("bogus"), "{e}");
        std::fs::write(&bad, "lease_ms = 7\n").unwrap();
        let (conf, origin) = load_toml::<Conf>(&bad).unwrap();
        assert_eq!(conf.lease_ms, 7);
        assert_eq!(origin.source("lease_ms"), Source::File(bad.clone()));
    }
}
