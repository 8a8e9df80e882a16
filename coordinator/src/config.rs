//! The coordinator's configuration: `DATA_DIR/coordinator.toml`, read with serde, then checked
//! by [`RawConfig::validate`] into a typed [`Config`].
//!
//! Secrets never sit in the TOML: the admin token is read from `admin_token_file`.
//!
//! Errors are `tandem_common::config::ConfigError` (re-exported here): each names the file, or
//! the key and where its value came from (the file, a flag, the default).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use tandem_common::config::ConfigError;
use tandem_common::config::Origin;

/// The file as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// The admin HTTP endpoint.
    pub admin_addr: String,
    /// The QUIC endpoint agents connect to.
    pub quic_addr: String,
    /// The file holding the admin bearer token (relative paths are under the data dir).
    pub admin_token_file: String,
    /// Agents beat this often.
    pub heartbeat_ms: u64,
    /// Each acked beat grants this lease.
    pub lease_ms: u64,
    /// How long an agent gives a job between SIGTERM and SIGKILL when it fences itself.
    pub fence_kill_timeout_ms: u64,
    /// Missed beats before a node is shown as suspect.
    pub suspect_after_missed: u32,
    /// After a restart, nobody is declared down before this (at least lease + fence grace).
    pub restart_grace_ms: u64,
    /// A planned restart (SIGTERM) first holds every down for this long and gives every node a
    /// lease that ends before it, so that jobs ride through the restart; 0: no hold (jobs are
    /// fenced after one lease). Absent: sized from the fleet ([`default_restart_hold`]).
    pub restart_hold_ms: Option<u64>,
    /// The longest hand-over an agent's planned restart may ask for ("this node is not
    /// declared down before T", so that its jobs ride through the restart); a longer one is
    /// refused with the reason. 0: no hand-overs (an agent restart keeps its jobs only within
    /// the lease it held).
    pub max_handover_ms: u64,
    /// Lifetime of node certificates.
    pub cert_validity_days: u32,
    /// Lifetime of node certificates in seconds, overriding `cert_validity_days` (for tests
    /// and very short-lived fleets; at least 10).
    pub cert_validity_s: Option<u64>,
    /// Serve the admin endpoint over HTTPS with a server certificate from the coordinator's CA
    /// (`tandemctl --ca-file DATA_DIR/ca.pem`).
    pub admin_tls: bool,
    /// Extra host names and IP addresses the admin HTTPS certificate names, besides
    /// `localhost` and the bind address (the names operators reach the endpoint by).
    pub admin_tls_names: Vec<String>,
    /// Admin connections held at most, by every client together; more are answered 429.
    pub admin_max_connections: usize,
    /// Admin connections one client address holds at most; more are answered 429.
    pub admin_max_connections_per_client: usize,
    /// Largest control-stream frame accepted.
    pub max_frame_bytes: usize,
    /// Kernel receive and send buffer of the QUIC socket that every agent shares.
    pub udp_buffer_bytes: usize,
    /// Clusters this coordinator holds at most.
    pub max_clusters: usize,
    /// Nodes one cluster holds at most.
    pub max_nodes_per_cluster: usize,
    /// Finished jobs (completed, failed, stopped) are deleted this long after they ended.
    pub finished_job_retention_s: u64,
    /// Used-up or expired join tokens are deleted this long after they were created.
    pub token_retention_s: u64,
    /// Finished operations are deleted this long after they finished.
    pub operation_retention_s: u64,
    /// Where the values came from (the file, flags over it), for errors; not a key.
    #[serde(skip)]
    pub origin: Origin,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            admin_addr: "127.0.0.1:7070".into(),
            quic_addr: "127.0.0.1:7443".into(),
            admin_token_file: "admin.token".into(),
            heartbeat_ms: 200,
            lease_ms: 1000,
            fence_kill_timeout_ms: 250,
            suspect_after_missed: 3,
            restart_grace_ms: 5000,
            restart_hold_ms: None,
            max_handover_ms: 60_000,
            cert_validity_days: 30,
            cert_validity_s: None,
            admin_tls: false,
            admin_tls_names: Vec::new(),
            admin_max_connections: crate::admin::serve::ConnectionLimits::default().total,
            admin_max_connections_per_client: crate::admin::serve::ConnectionLimits::default()
                .per_client,
            max_frame_bytes: tandem_common::codec::DEFAULT_MAX_FRAME,
            udp_buffer_bytes: 16 << 20,
            max_clusters: 50,
            max_nodes_per_cluster: 100,
            finished_job_retention_s: 7 * 86_400,
            token_retention_s: 7 * 86_400,
            operation_retention_s: 7 * 86_400,
            origin: Origin::default(),
        }
    }
}

/// How long a planned restart holds downs (see the detector's "hold").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartHold {
    /// No hold: a stop is a plain stop, and agents fence after their lease.
    Off,
    /// This long.
    Fixed(Duration),
    /// [`default_restart_hold`] for the fleet at the time of the stop.
    SizedFromFleet,
}

impl RestartHold {
    /// The hold for a fleet of `nodes`, if any.
    pub fn for_fleet(self, nodes: usize) -> Option<Duration> {
        match self {
            RestartHold::Off => None,
            RestartHold::Fixed(d) => Some(d),
            RestartHold::SizedFromFleet => Some(default_restart_hold(nodes)),
        }
    }
}

/// The default hold of a planned restart for a fleet of `nodes`: at least 15 s, and long enough
/// for every node to reconnect at 125 nodes a second, plus 5 s. BENCHMARKS.md measured 25,000
/// nodes reconnecting in 59.8 s after a crash on a quiet machine (about 420 a second) and in
/// 126 s on a loaded one (about 200 a second, when a hold sized for 250 a second let 1,685 of
/// their leases run out): the hold is the one chance the jobs of a node that reconnects late
/// have, so it errs long.
pub fn default_restart_hold(nodes: usize) -> Duration {
    Duration::from_secs(15).max(Duration::from_secs(5) + Duration::from_millis(8) * nodes as u32)
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where state, the CA and the config live.
    pub data_dir: PathBuf,
    /// The admin HTTP endpoint.
    pub admin_addr: SocketAddr,
    /// The QUIC endpoint.
    pub quic_addr: SocketAddr,
    /// The admin bearer token.
    pub admin_token: String,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Lease per acked beat.
    pub lease: Duration,
    /// The agent's kill timeout when fencing.
    pub fence_kill_timeout: Duration,
    /// `fence_kill_timeout + 5% of lease + 50 ms`: see the detector's module docs.
    pub fence_grace: Duration,
    /// Missed beats before suspect.
    pub suspect_after_missed: u32,
    /// Restart grace.
    pub restart_grace: Duration,
    /// How long a planned restart holds downs.
    pub restart_hold: RestartHold,
    /// The longest agent hand-over granted (zero: none).
    pub max_handover: Duration,
    /// Node certificate lifetime.
    pub cert_validity: Duration,
    /// HTTPS for the admin endpoint.
    pub admin_tls: bool,
    /// Extra IPs the admin certificate names.
    pub admin_tls_ips: Vec<std::net::IpAddr>,
    /// Extra DNS names the admin certificate names.
    pub admin_tls_dns: Vec<String>,
    /// How many admin connections are held at most.
    pub admin_connections: crate::admin::serve::ConnectionLimits,
    /// How long finished records are kept.
    pub retention: crate::retention::Retention,
    /// Largest frame.
    pub max_frame_bytes: usize,
    /// QUIC socket buffers.
    pub udp_buffer_bytes: usize,
    /// Cluster quotas.
    pub quotas: crate::engine::Quotas,
}

/// A host name of dot-separated labels of letters, digits and `-`.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl RawConfig {
    /// Reads `DATA_DIR/coordinator.toml`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (raw, origin) = tandem_common::config::load_toml::<RawConfig>(path)?;
        Ok(RawConfig { origin, ..raw })
    }

    /// Sets `admin_addr` from its flag, over the file.
    pub fn set_admin_addr(&mut self, addr: String) {
        self.admin_addr = addr;
        self.origin.set_by_flag("admin_addr");
    }

    /// Sets `quic_addr` from its flag, over the file.
    pub fn set_quic_addr(&mut self, addr: String) {
        self.quic_addr = addr;
        self.origin.set_by_flag("quic_addr");
    }

    /// Checks that `admin_addr` and `quic_addr` are IP:port addresses.
    pub fn addresses(&self) -> Result<(SocketAddr, SocketAddr), ConfigError> {
        let addr = |key: &'static str, s: &str| {
            s.parse().map_err(|_| {
                self.origin
                    .invalid(key, format!("`{s}` is not an IP:port address"))
            })
        };
        Ok((
            addr("admin_addr", &self.admin_addr)?,
            addr("quic_addr", &self.quic_addr)?,
        ))
    }

    /// Checks every field and reads the token file.
    pub fn validate(self, data_dir: &Path) -> Result<Config, ConfigError> {
        let (admin_addr, quic_addr) = self.addresses()?;
        let invalid = |key: &'static str, message: &str| self.origin.invalid(key, message);
        if !(10..=60_000).contains(&self.heartbeat_ms) {
            return Err(invalid("heartbeat_ms", "must be between 10 and 60000"));
        }
        if self.lease_ms < 2 * self.heartbeat_ms || self.lease_ms > 600_000 {
            return Err(invalid(
                "lease_ms",
                &format!(
                    "must be at least twice heartbeat_ms ({}) and at most 600000",
                    self.heartbeat_ms
                ),
            ));
        }
        if self.fence_kill_timeout_ms > 60_000 {
            return Err(invalid("fence_kill_timeout_ms", "must be at most 60000"));
        }
        let min_grace = self.lease_ms + self.fence_kill_timeout_ms + self.lease_ms / 20 + 50;
        if self.restart_grace_ms < min_grace || self.restart_grace_ms > 600_000 {
            return Err(invalid(
                "restart_grace_ms",
                &format!("must be at least lease + fence grace ({min_grace}) and at most 600000"),
            ));
        }
        let restart_hold = match self.restart_hold_ms {
            None => RestartHold::SizedFromFleet,
            Some(0) => RestartHold::Off,
            Some(ms) if ms < min_grace + 1000 || ms > 3_600_000 => {
                return Err(invalid(
                    "restart_hold_ms",
                    &format!(
                        "must be 0 (no hold), or at least lease + fence grace + 1 s ({}) and at most 3600000",
                        min_grace + 1000
                    ),
                ))
            }
            Some(ms) => RestartHold::Fixed(Duration::from_millis(ms)),
        };
        if self.max_handover_ms > 3_600_000 {
            return Err(invalid("max_handover_ms", "must be at most 3600000"));
        }
        if self.suspect_after_missed == 0 {
            return Err(invalid("suspect_after_missed", "must be at least 1"));
        }
        if !(1..=3650).contains(&self.cert_validity_days) {
            return Err(invalid("cert_validity_days", "must be between 1 and 3650"));
        }
        let mut admin_tls_ips = Vec::new();
        let mut admin_tls_dns = Vec::new();
        for name in &self.admin_tls_names {
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                admin_tls_ips.push(ip);
            } else if is_dns_name(name) {
                admin_tls_dns.push(name.clone());
            } else {
                return Err(invalid(
                    "admin_tls_names",
                    &format!("`{name}` is neither an IP address nor a DNS name"),
                ));
            }
        }
        if !(64 * 1024..=1 << 30).contains(&self.udp_buffer_bytes) {
            return Err(invalid(
                "udp_buffer_bytes",
                "must be between 64 KiB and 1 GiB",
            ));
        }
        if let Some(s) = self.cert_validity_s {
            if !(10..=3650 * 86_400).contains(&s) {
                return Err(invalid(
                    "cert_validity_s",
                    "must be between 10 and 315360000 (3650 days)",
                ));
            }
        }
        if !(64 * 1024..=64 * 1024 * 1024).contains(&self.max_frame_bytes) {
            return Err(invalid(
                "max_frame_bytes",
                "must be between 64 KiB and 64 MiB",
            ));
        }
        if !(1..=100_000).contains(&self.max_clusters) {
            return Err(invalid("max_clusters", "must be between 1 and 100000"));
        }
        if !(1..=1_000_000).contains(&self.max_nodes_per_cluster) {
            return Err(invalid(
                "max_nodes_per_cluster",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=1_000_000).contains(&self.admin_max_connections) {
            return Err(invalid(
                "admin_max_connections",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=self.admin_max_connections).contains(&self.admin_max_connections_per_client) {
            return Err(invalid(
                "admin_max_connections_per_client",
                "must be at least 1 and at most admin_max_connections",
            ));
        }
        let token_path = data_dir.join(&self.admin_token_file);
        let admin_token = std::fs::read_to_string(&token_path)
            .map_err(|source| ConfigError::Read {
                path: token_path.clone(),
                source,
            })?
            .trim()
            .to_string();
        if admin_token.len() < 16 {
            return Err(invalid(
                "admin_token_file",
                &format!(
                    "the token in {} must be at least 16 characters",
                    token_path.display()
                ),
            ));
        }
        for (field, v) in [
            ("finished_job_retention_s", self.finished_job_retention_s),
            ("token_retention_s", self.token_retention_s),
            ("operation_retention_s", self.operation_retention_s),
        ] {
            if v < 60 {
                return Err(invalid(field, "must be at least 60 (seconds)"));
            }
        }
        let lease = Duration::from_millis(self.lease_ms);
        let fence_kill_timeout = Duration::from_millis(self.fence_kill_timeout_ms);
        Ok(Config {
            data_dir: data_dir.to_path_buf(),
            admin_addr,
            quic_addr,
            admin_token,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            lease,
            fence_kill_timeout,
            fence_grace: fence_kill_timeout + lease / 20 + Duration::from_millis(50),
            suspect_after_missed: self.suspect_after_missed,
            restart_grace: Duration::from_millis(self.restart_grace_ms),
            restart_hold,
            max_handover: Duration::from_millis(self.max_handover_ms),
            cert_validity: Duration::from_secs(
                self.cert_validity_s
                    .unwrap_or(u64::from(self.cert_validity_days) * 86_400),
            ),
            admin_tls: self.admin_tls,
            admin_tls_ips,
            admin_tls_dns,
            admin_connections: crate::admin::serve::ConnectionLimits {
                total: self.admin_max_connections,
                per_client: self.admin_max_connections_per_client,
            },
            max_frame_bytes: self.max_frame_bytes,
            udp_buffer_bytes: self.udp_buffer_bytes,
            quotas: crate::engine::Quotas {
                max_clusters: self.max_clusters,
                max_nodes_per_cluster: self.max_nodes_per_cluster,
            },
            retention: crate::retention::Retention {
                finished_jobs: Duration::from_secs(self.finished_job_retention_s),
                tokens: Duration::from_secs(self.token_retention_s),
                operations: Duration::from_secs(self.operation_retention_s),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_token() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("admin.token"), "0123456789abcdef0123\n").unwrap();
        d
    }

    #[test]
    fn defaults_validate_and_grace_follows_the_formula() {
        let d = dir_with_token();
        let c = RawConfig::default().validate(d.path()).unwrap();
        assert_eq!(c.fence_grace, Duration::from_millis(250 + 50 + 50));
        assert_eq!(c.admin_token, "0123456789abcdef0123");
    }

    #[test]
    fn bad_values_name_their_field() {
        let d = dir_with_token();
        let raw = RawConfig {
            lease_ms: 300,
            ..Default::default()
        };
        let e = raw.validate(d.path()).unwrap_err().to_string();
        assert!(e.contains("lease_ms"), "{e}");
        let raw = RawConfig {
            quic_addr: "nowhere".into(),
            ..Default::default()
        };
        assert!(raw
            .validate(d.path())
            .unwrap_err()
            .to_string()
            .contains("quic_addr"));
        let raw = RawConfig {
            admin_max_connections: 10,
            admin_max_connections_per_client: 11,
            ..Default::default()
        };
        let e = raw.validate(d.path()).unwrap_err().to_string();
        assert!(e.contains("admin_max_connections_per_client"), "{e}");
        let e = toml::from_str::<RawConfig>("bogus = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn errors_name_the_file_or_the_flag() {
        let d = dir_with_token();
        let path = d.path().join("coordinator.toml");
        std::fs::write(&path, "lease_ms = 300\nbogus = 1\n").unwrap();
        let e = RawConfig::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
        assert!(e.contains("bogus"), "{e}");
        std::fs::write(&path, "lease_ms = 300\n").unwrap();
        let mut raw = RawConfig::load(&path).unwrap();
        let e = raw.clone().validate(d.path()).unwrap_err();
        assert_eq!(e.key(), Some("lease_ms"));
        assert!(
            e.to_string().starts_with(&format!(
                "config key `lease_ms` (from {}): ",
                path.display()
            )),
            "{e}"
        );
        raw.lease_ms = 1000;
        raw.set_quic_addr("nowhere".into());
        assert_eq!(
            raw.validate(d.path()).unwrap_err().to_string(),
            "config key `quic_addr` (from --quic-addr): `nowhere` is not an IP:port address"
        );
        std::fs::write(d.path().join("admin.token"), "short\n").unwrap();
        let e = RawConfig {
            lease_ms: 1000,
            ..RawConfig::load(&path).unwrap()
        }
        .validate(d.path())
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("admin.token") && e.contains("at least 16"),
            "{e}"
        );
    }
}
