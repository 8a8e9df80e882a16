//! The agent's configuration: command-line flags, or a TOML file (`--config`) that the flags
//! override, checked by [`RawConfig::validate`] into a typed [`Config`].
//!
//! The join token is a secret: prefer `token_file`; `--token` exists for dev mode and tests.

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use tandem_common::token::JoinToken;

/// Config problems, each naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown fields.
    #[error("{path}: {message}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        message: String,
    },
}

/// The file as written; every field optional so flags can fill in.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where the agent keeps its identity and job state.
    pub state_dir: Option<PathBuf>,
    /// The coordinator's QUIC address, `HOST:PORT`.
    pub coordinator: Option<String>,
    /// The join token (prefer `token_file`).
    pub token: Option<String>,
    /// A file holding the join token.
    pub token_file: Option<PathBuf>,
    /// The node name to ask for (default: the host name).
    pub name: Option<String>,
    /// The local IP to send from.
    pub bind_addr: Option<IpAddr>,
    /// A GPU fixture file (testing aid): replaces NVML readings.
    pub gpu_fixture: Option<PathBuf>,
    /// Send heartbeats on a stream even where datagrams work (testing aid).
    pub force_stream_heartbeats: Option<bool>,
    /// How often to sample the hardware, in milliseconds (default 5000).
    pub sample_interval_ms: Option<u64>,
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// State directory.
    pub state_dir: PathBuf,
    /// The coordinator's address as given (for logs).
    pub coordinator: String,
    /// The coordinator's address, resolved.
    pub coordinator_addr: SocketAddr,
    /// The join token, if one was given.
    pub token: Option<JoinToken>,
    /// The node name.
    pub name: String,
    /// The local address to bind.
    pub bind_addr: IpAddr,
    /// GPU fixture.
    pub gpu_fixture: Option<PathBuf>,
    /// Heartbeats on a stream (testing aid).
    pub force_stream_heartbeats: bool,
    /// Hardware sampling interval.
    pub sample_interval: std::time::Duration,
    /// The program run as the per-job supervisor (`<it> shim --job-dir DIR`); default: the
    /// agent's own executable.
    pub shim_program: Option<PathBuf>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Fields set in `over` replace ours.
    pub fn overlay(mut self, over: RawConfig) -> Self {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            state_dir,
            coordinator,
            token,
            token_file,
            name,
            bind_addr,
            gpu_fixture,
            force_stream_heartbeats,
            sample_interval_ms
        );
        self
    }

    /// Checks every field, reads the token file and resolves the coordinator's address.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let sample_interval_ms = self.sample_interval_ms.unwrap_or(5000);
        if !(100..=3_600_000).contains(&sample_interval_ms) {
            return Err(invalid(
                "sample_interval_ms",
                "must be between 100 and 3600000",
            ));
        }
        let state_dir = self
            .state_dir
            .ok_or_else(|| invalid("state_dir", "is required (--state-dir)"))?;
        let coordinator = self
            .coordinator
            .ok_or_else(|| invalid("coordinator", "is required (--coordinator HOST:PORT)"))?;
        let coordinator_addr = coordinator
            .to_socket_addrs()
            .map_err(|e| {
                invalid(
                    "coordinator",
                    format!("`{coordinator}` does not resolve: {e}"),
                )
            })?
            .next()
            .ok_or_else(|| {
                invalid(
                    "coordinator",
                    format!("`{coordinator}` resolves to no address"),
                )
            })?;
        let token_text = match (self.token, self.token_file) {
            (Some(t), _) => Some(t),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read { path, source })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let token = token_text
            .map(|t| {
                t.parse::<JoinToken>()
                    .map_err(|e| invalid("token", format!("not a join token: {e}")))
            })
            .transpose()?;
        let name = match self.name {
            Some(n) => n,
            None => sysinfo::System::host_name().unwrap_or_else(|_| "node".into()),
        };
        let bind_addr = self.bind_addr.unwrap_or(if coordinator_addr.is_ipv6() {
            IpAddr::from([0u16; 8])
        } else {
            IpAddr::from([0u8; 4])
        });
        Ok(Config {
            state_dir,
            coordinator,
            coordinator_addr,
            token,
            name,
            bind_addr,
            gpu_fixture: self.gpu_fixture,
            force_stream_heartbeats: self.force_stream_heartbeats.unwrap_or(false),
            sample_interval: std::time::Duration::from_millis(sample_interval_ms),
            shim_program: None,
        })
    }
}
