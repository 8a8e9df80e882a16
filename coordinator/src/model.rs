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
    /// When it joined (Unix ms).
    pub created_ms: u64,
    /// The token it joined with.
    pub joined_with_token: String,
    /// Its last hardware report.
    pub hardware: HardwareReport,
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
}

impl TokenRecord {
    /// Whether it may still be used at `now_ms`, and why not.
    pub fn usable(&self, now_ms: u64) -> Result<(), &'static str> {
        if now_ms >= self.expires_ms {
            Err("the join token has expired")
        } else if self.uses >= self.uses_allowed {
            Err("the join token is used up")
        } else {
            Ok(())
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
