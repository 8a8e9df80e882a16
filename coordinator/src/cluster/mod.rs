//! Clusters and primary/standby pairs: the decisions, without the doing.
//!
//! Everything here is plain code: no store, no sockets, no clock. The admin API and the
//! membership table call it with what they hold (records, a liveness view, `now_ms`) and get
//! back either a verdict (`Ok`/an error naming the field) or a list of decisions. They persist
//! each decision before acting on it, so a crash between deciding and doing replays the same
//! decision instead of inventing a second one; and because nothing here touches the outside
//! world, every rule can be unit-tested with injected events.
//!
//! # Layout
//! - [`validate`]: the input rules of issue 4 (names, aliases, descriptions, labels, taints,
//!   quotas), each failing with a message that names the field and says what is allowed.
//! - [`capacity`]: a cluster's total and free cores, memory, GPUs and CU, from the hardware its
//!   live nodes reported minus what is held on them.
//! - [`pairing`]: in an `ha_pairs` cluster, which nodes pair up, who is promoted when a member
//!   goes down or comes back, and the cluster's status.

pub mod capacity;
pub mod pairing;
pub mod validate;

use crate::model::NodeState;

/// Whether a node in `state` counts as up for pairing, promotion, status and capacity.
///
/// `Suspect` counts: a suspect node may still hold its lease (see `detector`), so acting on
/// suspicion would break the fencing argument. Only `Down` (its lease is over) and `Left` end
/// a node's turn; `Joining` has not started one.
pub fn is_live(state: NodeState) -> bool {
    matches!(state, NodeState::Ready | NodeState::Suspect)
}
