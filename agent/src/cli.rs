//! Command-line arguments of `tandem-agent run`, and of `check` and `status`, which read the
//! same config file.

use crate::config::RawConfig;
use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;

/// `tandem-agent run` arguments. Flags override the `--config` file.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// A TOML config file (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the agent keeps its identity and state.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The coordinator's QUIC address, HOST:PORT.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// The join token; needed only until the node has its certificate.
    #[arg(long, env = "TANDEM_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the join token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The node name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The local IP address to send from.
    #[arg(long)]
    pub bind_addr: Option<IpAddr>,
    /// Testing aid: a JSON list of GPUs that replaces the NVML readings.
    #[arg(long)]
    pub gpu_fixture: Option<PathBuf>,
    /// Testing aid: send heartbeats on a stream even where datagrams work.
    #[arg(long, hide = true)]
    pub force_stream_heartbeats: bool,
    /// How often to sample the hardware, in milliseconds (default 5000).
    #[arg(long)]
    pub sample_interval_ms: Option<u64>,
    /// How to contain jobs: `auto` (a cgroup each where the host allows) or `process-group`.
    #[arg(long)]
    pub containment: Option<String>,
    /// The user jobs run as (default: `nobody` when the agent runs as root, else the agent's
    /// own user).
    #[arg(long)]
    pub job_user: Option<String>,
    /// The group jobs of the default user run under (default: that user's primary group).
    #[arg(long)]
    pub job_group: Option<String>,
    /// How long a finished job's dir, logs and working dir are kept, seconds (default 86400).
    #[arg(long)]
    pub job_retention_s: Option<u64>,
    /// How often the node reports its jobs' usage and runs retention, ms (default 10000).
    #[arg(long)]
    pub usage_report_ms: Option<u64>,
    /// The hand-over lease a planned restart (SIGTERM) asks for, in milliseconds (default
    /// 10000; 0: none).
    #[arg(long)]
    pub agent_handover_ms: Option<u64>,
}

impl RunArgs {
    /// The file (if any) overlaid with the flags.
    pub fn to_raw(&self) -> Result<RawConfig, crate::config::ConfigError> {
        let base = match &self.config {
            Some(p) => RawConfig::load(p)?,
            None => RawConfig::default(),
        };
        Ok(base.overlay(RawConfig {
            state_dir: self.state_dir.clone(),
            coordinator: self.coordinator.clone(),
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            name: self.name.clone(),
            bind_addr: self.bind_addr,
            gpu_fixture: self.gpu_fixture.clone(),
            force_stream_heartbeats: self.force_stream_heartbeats.then_some(true),
            sample_interval_ms: self.sample_interval_ms,
            shim_program: None,
            containment: self.containment.clone(),
            job_user: self.job_user.clone(),
            job_group: self.job_group.clone(),
            job_retention_s: self.job_retention_s,
            usage_report_ms: self.usage_report_ms,
            agent_handover_ms: self.agent_handover_ms,
            ..Default::default()
        }))
    }
}

/// `tandem-agent check` arguments. Flags override the `--config` file (the agent's own).
#[derive(Args, Debug, Clone, Default)]
pub struct CheckArgs {
    /// The agent's TOML config file (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The coordinator's QUIC address, HOST:PORT.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// The join token to check.
    #[arg(long, env = "TANDEM_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the join token to check.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Without a token: the state dir of a node that has joined (its certificate is checked).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The node name to check (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The local IP address to send from.
    #[arg(long)]
    pub bind_addr: Option<IpAddr>,
    /// Testing aid: a JSON list of GPUs that replaces the NVML readings.
    #[arg(long)]
    pub gpu_fixture: Option<PathBuf>,
    /// How long the handshake (and the coordinator's answer) may take, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
}

impl CheckArgs {
    /// The file (if any) overlaid with the flags. A token given by flag replaces both the
    /// file's `token` and `token_file`.
    pub fn to_raw(&self) -> Result<RawConfig, crate::config::ConfigError> {
        let mut base = match &self.config {
            Some(p) => RawConfig::load(p)?,
            None => RawConfig::default(),
        };
        if self.token.is_some() || self.token_file.is_some() {
            base.token = None;
            base.token_file = None;
        }
        Ok(base.overlay(RawConfig {
            state_dir: self.state_dir.clone(),
            coordinator: self.coordinator.clone(),
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            name: self.name.clone(),
            bind_addr: self.bind_addr,
            gpu_fixture: self.gpu_fixture.clone(),
            ..Default::default()
        }))
    }
}
