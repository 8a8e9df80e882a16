//! The records the coordinator keeps: what a node, a join token and an event are.
//!
//! These are stored (as JSON, so that a person can read a dump and old records can gain fields
//! with defaults) and shown by the admin API.

use serde::{Deserialize, Serialize};
use tandem_common::hardware::HardwareReport;
use tandem_common::ids::NodeId;

/// A node's membership state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Has a certificate, has not registered with it yet.
    Joining,
    /// Registered and beating.
    Ready,
    /// Late with its beats; nothing is done about it yet.
    Suspect,
    /// Its deadline passed: its lease is over, its work may move.
    Down,
    /// Left on purpose (the agent said goodbye).
    Left,
}

impl NodeState {
    /// All states, for metrics.
    pub const ALL: [NodeState; 5] = [
        Self::Joining,
        Self::Ready,
        Self::Suspect,
        Self::Down,
        Self::Left,
    ];

    /// The name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Ready => "ready",
            Self::Suspect => "suspect",
            Self::Down => "down",
            Self::Left => "left",
        }
    }
}

/// A node as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The id in its certificate.
    pub id: NodeId,
    /// Its name (unique).
    pub name: String,
    /// Its state.
    pub state: NodeState,
    /// Why it is in that state.
    pub state_reason: String,
    /// Since when (Unix ms).
    pub state_since_ms: u64,
    /// The address it last connected from.
    pub address: String,
    /// The agent's version.
    pub agent_version: String,
    /// The serial of the certificate it holds; another serial is refused.
    pub cert_serial: u64,
    /// When the certificate runs out (Unix s).
    pub cert_not_after_unix: i64,
    /// After a renewal, the serial the renewal was asked on, still accepted until the node
    /// connects with the new one: if the answer was lost (either side crashed), the node comes
    /// back with the old certificate and must not be locked out.
    #[serde(default)]
    pub previous_cert_serial: Option<u64>,
    /// When that previous certificate runs out (Unix s).
    #[serde(default)]
    pub previous_cert_not_after_unix: i64,
    /// SHA-256 (hex) of the public key of its current certificate. A join retried with the
    /// same key while the node has not registered yet is the same node whose answer was lost.
    #[serde(default)]
    pub key_sha256: String,
    /// When it joined (Unix ms).
    pub created_ms: u64,
    /// The token it joined with.
    pub joined_with_token: String,
    /// Its last hardware report.
    pub hardware: HardwareReport,
    /// The cluster it belongs to (from its join token), if any.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Labels (label rules).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Taints.
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// A protected node cannot be removed.
    #[serde(default)]
    pub protected: bool,
    /// Draining: no new work; its work is moved away.
    #[serde(default)]
    pub draining: bool,
    /// Removed by an operator while it may still hold a lease (Unix ms of the removal): the
    /// record is kept as a tombstone, out of the node table, until the detector declares the
    /// lease over; only then may the node's jobs run elsewhere (see `engine::node_admin`).
    #[serde(default)]
    pub removed_ms: Option<u64>,
}

/// A join token as stored: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public id.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// When it was made (Unix ms).
    pub created_ms: u64,
    /// When it stops working (Unix ms).
    pub expires_ms: u64,
    /// Joins it allows in all.
    pub uses_allowed: u32,
    /// Joins it was used for.
    pub uses: u32,
    /// The cluster a node joining with it enters.
    #[serde(default)]
    pub cluster: Option<String>,
    /// When an operator revoked it (Unix ms); a revoked token admits nobody, not even the
    /// retry of a join whose answer was lost. Absent in records written before revocation
    /// existed.
    #[serde(default)]
    pub revoked_ms: Option<u64>,
}

/// The reason a revoked token gives.
pub const TOKEN_REVOKED: &str = "the join token was revoked";

impl TokenRecord {
    /// The record of `tok`, just issued at `now_ms`: it stores only the secret's hash.
    pub fn issued(
        tok: &tandem_common::token::JoinToken,
        now_ms: u64,
        ttl_ms: u64,
        uses_allowed: u32,
        cluster: Option<String>,
    ) -> Self {
        TokenRecord {
            id: tok.id.clone(),
            secret_sha256: hex::encode(tandem_common::token::hash_secret(&tok.secret)),
            created_ms: now_ms,
            expires_ms: now_ms + ttl_ms,
            uses_allowed,
            uses: 0,
            cluster,
            revoked_ms: None,
        }
    }

    /// Whether it may still be used at `now_ms`, and why not.
    pub fn usable(&self, now_ms: u64) -> Result<(), &'static str> {
        if self.revoked_ms.is_some() {
            Err(TOKEN_REVOKED)
        } else if now_ms >= self.expires_ms {
            Err("the join token has expired")
        } else if self.uses >= self.uses_allowed {
            Err("the join token is used up")
        } else {
            Ok(())
        }
    }

    /// `active`, `revoked`, `expired` or `used_up` at `now_ms` (the admin API's `state`).
    pub fn state(&self, now_ms: u64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if now_ms >= self.expires_ms {
            "expired"
        } else if self.uses >= self.uses_allowed {
            "used_up"
        } else {
            "active"
        }
    }
}

/// A recorded event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Grows with every event.
    pub seq: u64,
    /// When (Unix ms).
    pub time_ms: u64,
    /// What kind, e.g. `node_joined`, `node_state`.
    pub kind: String,
    /// The node it is about, if any.
    pub node: Option<String>,
    /// What happened, in words.
    pub message: String,
}

/// An event to record (the store gives it its sequence number).
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// What kind.
    pub kind: &'static str,
    /// The node it is about.
    pub node: Option<NodeId>,
    /// What happened.
    pub message: String,
}

/// How a cluster places and moves work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    /// Nodes of one hardware model form primary/standby pairs; work runs on the primary and
    /// moves to the standby.
    HaPairs,
    /// Work goes to any node with room and moves to another.
    Pool,
}

/// The least a node must have to join a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinNode {
    /// Logical cores.
    #[serde(default)]
    pub cores: u32,
    /// Memory in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
}

/// A cluster as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// `c-` and 12 hex digits.
    pub id: String,
    /// Unique name (1-63 letters, digits, CJK characters and `-`).
    pub name: String,
    /// Optional second name.
    pub alias: String,
    /// Free text.
    pub description: String,
    /// Placement mode.
    pub mode: ClusterMode,
    /// Labels (at most 20).
    pub labels: std::collections::BTreeMap<String, String>,
    /// A protected cluster cannot be deleted.
    pub deletion_protection: bool,
    /// Node minimums enforced at join.
    pub min_node: Option<MinNode>,
    /// Whether a recovered old primary takes its role back.
    pub failback: bool,
    /// In `ha_pairs`: the hardware model of the first node; every node must match it.
    pub model: Option<String>,
    /// When it was made (Unix ms).
    pub created_ms: u64,
}

/// How a primary/standby pair stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairState {
    /// Both members up.
    Healthy,
    /// One member is down and the other holds the primary role (no failover was needed, or
    /// the standby is the one missing).
    Degraded,
    /// The primary went down and the standby was promoted.
    FailedOver,
}

/// A primary/standby pair as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    /// `p-` and 12 hex digits.
    pub id: String,
    /// The cluster's id.
    pub cluster: String,
    /// Runs the work.
    pub primary: NodeId,
    /// Takes over when the primary goes down.
    pub standby: NodeId,
    /// How it stands.
    pub state: PairState,
    /// Why it is in that state.
    pub reason: String,
    /// When it was formed (Unix ms).
    pub created_ms: u64,
    /// When its state last changed (Unix ms).
    pub since_ms: u64,
}

/// A taint: nodes with one get no new work unless the work tolerates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taint {
    /// The key (label rules).
    pub key: String,
    /// The value (label rules).
    #[serde(default)]
    pub value: String,
    /// Only `no_schedule` for now.
    pub effect: TaintEffect,
}

/// What a taint does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaintEffect {
    /// No new work is placed on the node.
    NoSchedule,
}

/// How an operation went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Still running.
    Pending,
    /// Finished.
    Done,
    /// Failed; see `error`.
    Failed,
}

/// A long-running action that can be polled (`GET /v1/operations/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// `op-` and 12 hex digits.
    pub id: String,
    /// What it does, e.g. `create_cluster`.
    pub kind: String,
    /// The object it acts on.
    pub target: String,
    /// How it went.
    pub state: OperationState,
    /// The error when failed.
    pub error: Option<String>,
    /// When it started (Unix ms).
    pub created_ms: u64,
    /// When it ended (Unix ms).
    pub done_ms: Option<u64>,
}

/// A ready node record named `name`, for tests.
#[cfg(test)]
pub(crate) fn test_node(name: &str) -> NodeRecord {
    NodeRecord {
        id: tandem_common::ids::NodeId::random(),
        name: name.into(),
        state: NodeState::Ready,
        state_reason: "registered".into(),
        state_since_ms: 1,
        address: "127.0.0.1:1".into(),
        agent_version: "0.1.0".into(),
        cert_serial: 2,
        cert_not_after_unix: 0,
        previous_cert_serial: None,
        previous_cert_not_after_unix: 0,
        key_sha256: String::new(),
        created_ms: 1,
        joined_with_token: "t".into(),
        hardware: Default::default(),
        cluster: None,
        labels: Default::default(),
        taints: Vec::new(),
        protected: false,
        draining: false,
        removed_ms: None,
    }
}

/// The fence parameters agents were given: the lease each ack grants and the SIGTERM-to-SIGKILL
/// time they fence with. Stored, because a coordinator restarted with new values must still
/// allow for agents that hold the old ones (see `crate::detector`, "Fence parameters").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceParams {
    /// The lease, ms.
    pub lease_ms: u64,
    /// The fence kill timeout, ms.
    pub fence_kill_timeout_ms: u64,
}

impl FenceParams {
    /// The larger of each value: what any agent may hold while some hold `self` and others
    /// `other`.
    pub fn max(self, other: FenceParams) -> FenceParams {
        FenceParams {
            lease_ms: self.lease_ms.max(other.lease_ms),
            fence_kill_timeout_ms: self.fence_kill_timeout_ms.max(other.fence_kill_timeout_ms),
        }
    }

    /// The lease.
    pub fn lease(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.lease_ms)
    }

    /// `fence_kill_timeout + 5% of lease + 50 ms`, as the config computes it.
    pub fn fence_grace(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.fence_kill_timeout_ms + self.lease_ms / 20 + 50)
    }
}

/// A planned restart's hold: no node is declared down before it ends, so that every node may
/// be given a lease that runs until just before it, and the jobs ride through the restart.
/// Stored before any such lease is granted; the restarted coordinator honours it.
///
/// The end is kept twice: as wall-clock time, and as `CLOCK_BOOTTIME` with the kernel's boot
/// id. A coordinator restarted on the same boot reads the boot clock, which no clock step can
/// move; after a reboot (or on another machine) only the wall clock is left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartHold {
    /// When the hold ends, Unix ms.
    pub until_unix_ms: u64,
    /// The boot the next field belongs to (`/proc/sys/kernel/random/boot_id`; empty if unknown).
    pub boot_id: String,
    /// When the hold ends on that boot's `CLOCK_BOOTTIME`, ms.
    pub until_boottime_ms: u64,
}

impl RestartHold {
    /// A hold of `hold` from now (`unix_ms` on the wall clock, `boot` on the boot clock).
    pub fn new(hold: std::time::Duration, unix_ms: u64, boot: &crate::clock::BootTime) -> Self {
        let ms = hold.as_millis() as u64;
        RestartHold {
            until_unix_ms: unix_ms + ms,
            boot_id: boot.boot_id.clone(),
            until_boottime_ms: boot.ms + ms,
        }
    }

    /// How much of the hold is left now: by the boot clock on the same boot, else by the
    /// wall clock.
    pub fn left(&self, unix_ms: u64, boot: &crate::clock::BootTime) -> std::time::Duration {
        let ms = if !self.boot_id.is_empty() && self.boot_id == boot.boot_id {
            self.until_boottime_ms.saturating_sub(boot.ms)
        } else {
            self.until_unix_ms.saturating_sub(unix_ms)
        };
        std::time::Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(uses: u32, revoked: bool) -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            secret_sha256: String::new(),
            created_ms: 0,
            expires_ms: 1_000,
            uses_allowed: 2,
            uses,
            cluster: None,
            revoked_ms: revoked.then_some(10),
        }
    }

    #[test]
    fn a_token_state_and_its_usability_agree_and_revocation_wins() {
        let cases = [
            (token(0, false), 999, "active"),
            (token(1, false), 999, "active"),
            (token(2, false), 999, "used_up"),
            (token(0, false), 1_000, "expired"),
            (token(2, false), 1_000, "expired"),
            (token(0, true), 0, "revoked"),
            (token(2, true), 5_000, "revoked"),
        ];
        for (t, now, state) in cases {
            assert_eq!(t.state(now), state, "{t:?} at {now}");
            assert_eq!(t.usable(now).is_ok(), state == "active", "{t:?} at {now}");
        }
        assert_eq!(token(0, true).usable(0), Err(TOKEN_REVOKED));
    }

    #[test]
    fn a_token_record_without_revocation_still_loads() {
        let old = r#"{"id":"t1","secret_sha256":"","created_ms":0,"expires_ms":1000,"uses_allowed":1,"uses":0}"#;
        let t: TokenRecord = serde_json::from_str(old).unwrap();
        assert!(t.revoked_ms.is_none() && t.cluster.is_none());
        assert_eq!(t.state(0), "active");
    }
}
