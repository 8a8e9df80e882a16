//! The agent's configuration: command-line flags, or a TOML file (`--config`) that the flags
//! override, checked by [`RawConfig::validate`] into a typed [`Config`].
//!
//! The join token is a secret: prefer `token_file`; `--token` exists for dev mode and tests.
//!
//! Errors are `tandem_common::config::ConfigError` (re-exported here): each names the file, or
//! the key and where its value came from (the file, a flag, the default).

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use tandem_common::token::JoinToken;

pub use tandem_common::config::ConfigError;
use tandem_common::config::Origin;

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
    /// The program run as each job's supervisor, as `PROGRAM shim --job-dir DIR` (default:
    /// the agent's own executable). An absolute path; for a wrapper that execs the agent's
    /// shim under a scheduling class or a profiler.
    pub shim_program: Option<PathBuf>,
    /// How to contain jobs: `auto` (a cgroup each where the host allows; the default) or
    /// `process-group` (never cgroups).
    pub containment: Option<String>,
    /// The user jobs run as (default: `nobody` when the agent runs as root, else the agent's
    /// own user, which it cannot switch from). `"root"` runs every job as root.
    pub job_user: Option<String>,
    /// The group jobs of the default user run under (default: that user's primary group).
    pub job_group: Option<String>,
    /// The users a job's spec may name to run as (default: none; `root` only if listed).
    pub allowed_job_users: Option<Vec<String>>,
    /// The groups a job's spec may name beyond its user's own (default: none).
    pub allowed_job_groups: Option<Vec<String>>,
    /// How long a finished job's dir, logs and working dir are kept, seconds (default 86400).
    pub job_retention_s: Option<u64>,
    /// The most bytes the finished jobs' dirs may take in all; the oldest go first past it
    /// (default: no cap).
    pub job_retention_bytes: Option<u64>,
    /// How often the node reports its jobs' usage and runs retention, milliseconds (default
    /// 10000).
    pub usage_report_ms: Option<u64>,
    /// A planned restart (SIGTERM) first asks the coordinator for a hand-over lease this long,
    /// so that the jobs keep running until the next agent run re-adopts them; 0: no
    /// hand-over (the jobs ride through only within the lease held). Default 10000.
    pub agent_handover_ms: Option<u64>,
    /// Where the values came from (the file, flags over it), for errors; not a key.
    #[serde(skip)]
    pub origin: Origin,
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
    /// How to contain jobs.
    pub containment: crate::containment::Choice,
    /// The user jobs run as (under `job_group` if set); `None`: the agent's own.
    pub job_user: Option<crate::containment::user::JobUser>,
    /// The users a job may name, each known on this host.
    pub allowed_job_users: Vec<String>,
    /// The groups a job may name beyond its user's own, each known on this host.
    pub allowed_job_groups: Vec<String>,
    /// When finished jobs' dirs are removed.
    pub retention: crate::retention::Policy,
    /// How often usage is reported (and retention runs).
    pub usage_interval: std::time::Duration,
    /// The hand-over a planned restart asks for (zero: none).
    pub agent_handover: std::time::Duration,
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (raw, origin) = tandem_common::config::load_toml::<RawConfig>(path)?;
        Ok(RawConfig { origin, ..raw })
    }

    /// Fields set in `over` (the command line's flags) replace ours; errors about them name
    /// the flag.
    pub fn overlay(mut self, over: RawConfig) -> Self {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() {
                self.$f = over.$f;
                self.origin.set_by_flag(stringify!($f));
            } )* };
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
            sample_interval_ms,
            containment,
            job_user,
            job_group,
            job_retention_s,
            job_retention_bytes,
            usage_report_ms,
            agent_handover_ms
        );
        self
    }

    /// Checks every field, reads the token file and resolves the coordinator's address.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let origin = &self.origin;
        let invalid = |key: &'static str, message: String| origin.invalid(key, message);
        let sample_interval_ms = self.sample_interval_ms.unwrap_or(5000);
        if !(100..=3_600_000).contains(&sample_interval_ms) {
            return Err(invalid(
                "sample_interval_ms",
                "must be between 100 and 3600000".into(),
            ));
        }
        let agent_handover_ms = self.agent_handover_ms.unwrap_or(10_000);
        if agent_handover_ms > 3_600_000 {
            return Err(invalid(
                "agent_handover_ms",
                "must be at most 3600000 (0: no hand-over)".into(),
            ));
        }
        let containment = match &self.containment {
            None => crate::containment::Choice::Auto,
            Some(c) => c.parse().map_err(|e| invalid("containment", e))?,
        };
        use crate::containment::user::{default_job_user, JobGroup, JobUser};
        let job_user = match (&self.job_user, default_job_user()) {
            (Some(u), _) => Some(JobUser::lookup(u).map_err(|e| invalid("job_user", e))?),
            (None, Some(d)) => Some(JobUser::lookup(d).map_err(|e| {
                invalid(
                    "job_user",
                    format!(
                        "the default, {d:?}, cannot be used: {e}; name the user jobs run as \
                         (\"root\" to run them as root)"
                    ),
                )
            })?),
            (None, None) => None,
        };
        let job_user = match (&self.job_group, job_user) {
            (None, u) => u,
            (Some(g), Some(u)) => {
                Some(u.with_group(&JobGroup::lookup(g).map_err(|e| invalid("job_group", e))?))
            }
            (Some(_), None) => {
                return Err(invalid(
                    "job_group",
                    "needs a job user: an agent that is not root runs jobs as itself".into(),
                ))
            }
        };
        let allowed_job_users = self.allowed_job_users.clone().unwrap_or_default();
        for u in &allowed_job_users {
            JobUser::lookup(u).map_err(|e| invalid("allowed_job_users", e))?;
        }
        let allowed_job_groups = self.allowed_job_groups.clone().unwrap_or_default();
        for g in &allowed_job_groups {
            JobGroup::lookup(g).map_err(|e| invalid("allowed_job_groups", e))?;
        }
        let retention = crate::retention::Policy {
            max_age: std::time::Duration::from_secs(
                self.job_retention_s
                    .unwrap_or(crate::retention::DEFAULT_RETENTION_S),
            ),
            max_bytes: self.job_retention_bytes,
        };
        let usage_report_ms = self.usage_report_ms.unwrap_or(10_000);
        if !(100..=3_600_000).contains(&usage_report_ms) {
            return Err(invalid(
                "usage_report_ms",
                "must be between 100 and 3600000".into(),
            ));
        }
        let state_dir = self
            .state_dir
            .ok_or_else(|| invalid("state_dir", "is required (--state-dir)".into()))?;
        let coordinator = self.coordinator.ok_or_else(|| {
            invalid(
                "coordinator",
                "is required (--coordinator HOST:PORT)".into(),
            )
        })?;
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
        let token = match (self.token, self.token_file) {
            (Some(t), _) => Some(
                t.parse::<JoinToken>()
                    .map_err(|e| invalid("token", format!("not a join token: {e}")))?,
            ),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Some(text.trim().parse::<JoinToken>().map_err(|e| {
                    invalid(
                        "token_file",
                        format!("{} does not hold a join token: {e}", path.display()),
                    )
                })?)
            }
            (None, None) => None,
        };
        let name = match self.name {
            Some(n) => n,
            None => sysinfo::System::host_name().unwrap_or_else(|_| "node".into()),
        };
        let shim_program = match self.shim_program {
            Some(p) if !p.is_absolute() => {
                return Err(invalid(
                    "shim_program",
                    format!("`{}` is not an absolute path", p.display()),
                ))
            }
            Some(p) if !p.is_file() => {
                return Err(invalid(
                    "shim_program",
                    format!("`{}` is not a file", p.display()),
                ))
            }
            other => other,
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
            shim_program,
            containment,
            job_user,
            allowed_job_users,
            allowed_job_groups,
            retention,
            usage_interval: std::time::Duration::from_millis(usage_report_ms),
            agent_handover: std::time::Duration::from_millis(agent_handover_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RunArgs;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn errors_name_the_file_or_the_flag_the_value_came_from() {
        let (_d, p) = file(
            "state_dir = \"/tmp/a\"\ncoordinator = \"127.0.0.1:7443\"\nsample_interval_ms = 5\n",
        );
        let args = RunArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        let e = args.to_raw().unwrap().validate().unwrap_err();
        assert_eq!(e.key(), Some("sample_interval_ms"));
        let msg = e.to_string();
        assert!(msg.contains(&format!("(from {})", p.display())), "{msg}");

        let args = RunArgs {
            config: Some(p.clone()),
            sample_interval_ms: Some(7),
            ..Default::default()
        };
        let msg = args.to_raw().unwrap().validate().unwrap_err().to_string();
        assert_eq!(
            msg,
            "config key `sample_interval_ms` (from --sample-interval-ms): must be between 100 and 3600000"
        );

        let args = RunArgs {
            coordinator: Some("127.0.0.1:7443".into()),
            ..Default::default()
        };
        let msg = args.to_raw().unwrap().validate().unwrap_err().to_string();
        assert_eq!(msg, "config key `state_dir`: is required (--state-dir)");
    }

    #[test]
    fn a_token_file_without_a_token_is_named() {
        let (d, _) = file("");
        let token = d.path().join("join.token");
        std::fs::write(&token, "not a token\n").unwrap();
        let raw = RawConfig {
            state_dir: Some(d.path().into()),
            coordinator: Some("127.0.0.1:7443".into()),
            token_file: Some(token.clone()),
            ..Default::default()
        };
        let e = raw.clone().validate().unwrap_err();
        assert_eq!(e.key(), Some("token_file"));
        assert!(
            e.to_string()
                .contains(&format!("{} does not hold a join token", token.display())),
            "{e}"
        );
        std::fs::remove_file(&token).unwrap();
        let e = raw.validate().unwrap_err();
        assert!(
            matches!(e, ConfigError::Read { ref path, .. } if *path == token),
            "{e}"
        );
    }

    #[test]
    fn a_shim_program_must_be_an_absolute_path_to_a_file() {
        let (d, _) = file("");
        let raw = |p: &str| RawConfig {
            state_dir: Some(d.path().into()),
            coordinator: Some("127.0.0.1:7443".into()),
            shim_program: Some(p.into()),
            ..Default::default()
        };
        let e = raw("bin/shim").validate().unwrap_err();
        assert_eq!(e.key(), Some("shim_program"));
        assert!(e.to_string().contains("not an absolute path"), "{e}");
        let missing = d.path().join("missing");
        let e = raw(missing.to_str().unwrap()).validate().unwrap_err();
        assert!(e.to_string().contains("is not a file"), "{e}");
        let shim = d.path().join("shim");
        std::fs::write(&shim, "#!/bin/sh\n").unwrap();
        let c = raw(shim.to_str().unwrap()).validate().unwrap();
        assert_eq!(c.shim_program, Some(shim));
    }

    #[test]
    fn jobs_run_as_nobody_by_default_when_the_agent_is_root() {
        let (d, _) = file("");
        let raw = || RawConfig {
            state_dir: Some(d.path().into()),
            coordinator: Some("127.0.0.1:7443".into()),
            ..Default::default()
        };
        let c = raw().validate().unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let u = c.job_user.expect("a default job user");
            assert_eq!(u.name, "nobody");
            assert_ne!(u.uid, 0);
        } else {
            assert!(c.job_user.is_none(), "a non-root agent runs jobs as itself");
        }
        let e = RawConfig {
            job_user: Some("root".into()),
            job_group: Some("no-such-group-tandem".into()),
            ..raw()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.key(), Some("job_group"), "{e}");
        let e = RawConfig {
            allowed_job_groups: Some(vec!["no-such-group-tandem".into()]),
            ..raw()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.key(), Some("allowed_job_groups"), "{e}");
        let e = RawConfig {
            usage_report_ms: Some(5),
            ..raw()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.key(), Some("usage_report_ms"), "{e}");
        let c = RawConfig {
            job_user: Some("root".into()),
            job_group: Some("root".into()),
            job_retention_s: Some(60),
            job_retention_bytes: Some(1 << 30),
            ..raw()
        }
        .validate()
        .unwrap();
        assert_eq!(c.job_user.map(|u| (u.uid, u.gid)), Some((0, 0)));
        assert_eq!(c.retention.max_age, std::time::Duration::from_secs(60));
        assert_eq!(c.retention.max_bytes, Some(1 << 30));
    }

    #[test]
    fn unknown_keys_and_unreadable_files_name_the_file() {
        let (_d, p) = file("state_dir = \"/tmp/a\"\nbogus = 1\n");
        let msg = RawConfig::load(&p).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{}: ", p.display())), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
        let missing = p.with_file_name("missing.toml");
        let msg = RawConfig::load(&missing).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("cannot read {}", missing.display())),
            "{msg}"
        );
    }
}
