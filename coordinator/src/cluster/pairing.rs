//! Primary/standby pairs in an `ha_pairs` cluster: who pairs with whom, who is promoted when a
//! member goes down or comes back, and what the cluster's status is.
//!
//! The caller (membership) feeds events — a node went down, came back, was removed — together
//! with a view of the cluster ([`PairNode`]: which nodes are live, of which model) and the
//! cluster's pairs as stored, and gets [`PairDecision`]s back. It persists each decision, then
//! acts on it, then records an event with the decision's reason. After any event it also calls
//! [`auto_pairs`] / [`auto_pair_decisions`], which pairs the nodes left alone (a node whose pair
//! was dissolved, a node that came up unpaired).
//!
//! # Liveness
//! `live` is `Ready` or `Suspect` ([`super::is_live`]). Acting on `Suspect` would break the
//! fencing argument (the node may still hold its lease and run its work), so only `Down`
//! (and `Left`) call [`on_node_down`]. The event functions take the view *after* the event, but
//! the event's own node counts as down (resp. up) whatever the view says, so a slightly stale
//! view cannot make a node promote itself from the grave.
//!
//! # The states, and what they promise
//! The decisions keep these invariants (checked by a proptest over random event sequences):
//! - `healthy`: both members are up.
//! - `failed_over`: the primary is up and the standby is down, and the standby is the node the
//!   primary role was taken from. That is the failback bookkeeping: no extra field is needed,
//!   because a promotion swaps the roles, so "the original primary" is exactly the `standby` of
//!   a `failed_over` pair.
//! - `degraded`: the standby is down (and the primary is up, or no member is up at all).
//! - Whenever any member is up, the primary is up: a standby is promoted as soon as it is the
//!   only live member (when the primary goes down, or when it comes back while the primary is
//!   down). A member that is not up is never promoted.
//!
//! # Failback
//! When the standby of a `failed_over` pair comes back, it stays the standby and the pair is
//! `healthy` (roles stay swapped, no second interruption), unless the cluster sets `failback`:
//! then it takes the primary role back ([`PairDecision::Promote`] with state `healthy`). Only
//! that case fails back: once both members have been down, the pair is `degraded`, and whichever
//! comes back first simply becomes the primary.
//!
//! # Cluster status
//! See [`cluster_status`].

use crate::model::{ClusterMode, PairRecord, PairState};
use serde::{Deserialize, Serialize};
use tandem_common::ids::NodeId;

/// What the planner needs to know about one node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairNode {
    /// The node.
    pub id: NodeId,
    /// Its hardware model (`HardwareReport::model`).
    pub model: String,
    /// `Ready` or `Suspect`.
    pub live: bool,
    /// When it joined (Unix ms): the older node of a new pair is the primary.
    pub created_ms: u64,
}

/// A cluster's status, as shown by the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterStatus {
    /// Nothing can run yet: `pool` without a live node, `ha_pairs` without a pair.
    Uninitialized,
    /// `pool` with a live node; `ha_pairs` with every pair healthy.
    Running,
    /// `ha_pairs` with a pair that has lost a member.
    Degraded,
}

impl ClusterStatus {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uninitialized => "uninitialized",
            Self::Running => "running",
            Self::Degraded => "degraded",
        }
    }
}

/// A change to the cluster's pairs. Persist it, then act on it, then record an event with
/// its `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairDecision {
    /// Make a new pair (state `healthy`); the caller gives it an id.
    Form {
        /// The primary.
        primary: NodeId,
        /// The standby.
        standby: NodeId,
        /// Why, for the event.
        reason: String,
    },
    /// Swap the roles of `pair`: `new_primary` (its standby, live) takes the primary role and
    /// `old_primary` becomes the standby. `state` is `failed_over` after a failure, `healthy`
    /// after a failback.
    Promote {
        /// The pair's id.
        pair: String,
        /// The member promoted (the pair's current standby).
        new_primary: NodeId,
        /// The member demoted (the pair's current primary).
        old_primary: NodeId,
        /// The pair's state afterwards.
        state: PairState,
        /// Why, for the event.
        reason: String,
        /// When it was decided (Unix ms): the pair's new `since_ms`.
        at_ms: u64,
    },
    /// Change `pair`'s state (roles unchanged).
    SetState {
        /// The pair's id.
        pair: String,
        /// The new state.
        state: PairState,
        /// Why, for the event.
        reason: String,
        /// When it was decided (Unix ms): the pair's new `since_ms`.
        at_ms: u64,
    },
    /// Dissolve `pair`; both members become unpaired.
    Unpair {
        /// The pair's id.
        pair: String,
        /// Why, for the event.
        reason: String,
    },
}

impl PairDecision {
    /// Why, for the event.
    pub fn reason(&self) -> &str {
        match self {
            Self::Form { reason, .. }
            | Self::Promote { reason, .. }
            | Self::SetState { reason, .. }
            | Self::Unpair { reason, .. } => reason,
        }
    }

    /// The pair it is about (`None` for `Form`: the pair does not exist yet).
    pub fn pair(&self) -> Option<&str> {
        match self {
            Self::Form { .. } => None,
            Self::Promote { pair, .. }
            | Self::SetState { pair, .. }
            | Self::Unpair { pair, .. } => Some(pair),
        }
    }

    /// Applies a `Promote`, `SetState` or `Unpair` to `pairs` (the stored records, or a copy
    /// to persist). Returns false, changing nothing, for a `Form` (it needs a fresh id: build
    /// the record yourself), for an unknown pair, or for a `Promote` whose roles no longer
    /// match the record (a stale decision).
    pub fn apply(&self, pairs: &mut Vec<PairRecord>) -> bool {
        match self {
            Self::Form { .. } => false,
            Self::Promote {
                pair,
                new_primary,
                old_primary,
                state,
                reason,
                at_ms,
            } => match pairs.iter_mut().find(|p| &p.id == pair) {
                Some(p) if &p.primary == old_primary && &p.standby == new_primary => {
                    std::mem::swap(&mut p.primary, &mut p.standby);
                    p.state = *state;
                    p.reason = reason.clone();
                    p.since_ms = *at_ms;
                    true
                }
                _ => false,
            },
            Self::SetState {
                pair,
                state,
                reason,
                at_ms,
            } => match pairs.iter_mut().find(|p| &p.id == pair) {
                Some(p) => {
                    p.state = *state;
                    p.reason = reason.clone();
                    p.since_ms = *at_ms;
                    true
                }
                None => false,
            },
            Self::Unpair { pair, .. } => {
                let before = pairs.len();
                pairs.retain(|p| &p.id != pair);
                pairs.len() != before
            }
        }
    }
}

/// Why two nodes cannot be paired by hand.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// The same node was named as primary and standby.
    #[error("a pair needs two nodes, but {node} was named as both primary and standby")]
    SameNode {
        /// The node.
        node: NodeId,
    },
    /// A named node is not a node of this cluster.
    #[error("node {node} is not in this cluster")]
    NotInCluster {
        /// The node.
        node: NodeId,
    },
    /// A named node is already a member of a pair (unpair it first).
    #[error("node {node} is already in pair {pair}; unpair it first")]
    AlreadyPaired {
        /// The node.
        node: NodeId,
        /// The pair it is in.
        pair: String,
    },
    /// The two nodes are of different hardware models.
    #[error(
        "{primary} is a {primary_model:?} and {standby} is a {standby_model:?}: \
         both members of a pair must be the same model"
    )]
    ModelMismatch {
        /// The primary named.
        primary: NodeId,
        /// Its model.
        primary_model: String,
        /// The standby named.
        standby: NodeId,
        /// Its model.
        standby_model: String,
    },
    /// A named node is not up: a pair formed with it would start without a working member.
    #[error("node {node} is not up (ready or suspect); only live nodes can be paired")]
    NotLive {
        /// The node.
        node: NodeId,
    },
}

fn find<'a>(nodes: &'a [PairNode], id: &NodeId) -> Option<&'a PairNode> {
    nodes.iter().find(|n| &n.id == id)
}

fn pair_of<'a>(pairs: &'a [PairRecord], id: &NodeId) -> Option<&'a PairRecord> {
    pairs.iter().find(|p| &p.primary == id || &p.standby == id)
}

/// Whether `id` is live, `event` (a node and its liveness) overriding the view.
fn is_live(nodes: &[PairNode], id: &NodeId, event: (&NodeId, bool)) -> bool {
    if id == event.0 {
        event.1
    } else {
        find(nodes, id).is_some_and(|n| n.live)
    }
}

/// The pairs to form automatically: live, unpaired nodes of the same model, oldest first
/// (by `created_ms`, then id), two by two; the older of each two is the primary. An odd node
/// of a model is left unpaired until another one comes. Ordered by the primaries' age.
pub fn auto_pairs(nodes: &[PairNode], pairs: &[PairRecord]) -> Vec<(NodeId, NodeId)> {
    let mut free: Vec<&PairNode> = nodes
        .iter()
        .filter(|n| n.live && pair_of(pairs, &n.id).is_none())
        .collect();
    free.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    let mut waiting: Vec<&PairNode> = Vec::new(); // at most one per model
    let mut out = Vec::new();
    for n in free {
        match waiting.iter().position(|w| w.model == n.model) {
            Some(i) => {
                let older = waiting.remove(i);
                out.push((older.id.clone(), n.id.clone()));
            }
            None => waiting.push(n),
        }
    }
    out.sort_by_key(|(primary, _)| find(nodes, primary).map(|n| (n.created_ms, n.id.clone())));
    out
}

/// [`auto_pairs`] as `Form` decisions, with their reasons.
pub fn auto_pair_decisions(nodes: &[PairNode], pairs: &[PairRecord]) -> Vec<PairDecision> {
    auto_pairs(nodes, pairs)
        .into_iter()
        .map(|(primary, standby)| {
            let model = find(nodes, &primary)
                .map(|n| n.model.as_str())
                .unwrap_or("");
            PairDecision::Form {
                reason: format!(
                    "paired automatically: {primary} and {standby} are live, unpaired and both \
                     {model:?}; the older, {primary}, is the primary"
                ),
                primary,
                standby,
            }
        })
        .collect()
}

/// Whether `primary` and `standby` may be paired by hand: two distinct nodes of the cluster,
/// both live, neither in a pair, of the same model.
pub fn validate_manual_pair(
    nodes: &[PairNode],
    pairs: &[PairRecord],
    primary: &NodeId,
    standby: &NodeId,
) -> Result<(), PairError> {
    if primary == standby {
        return Err(PairError::SameNode {
            node: primary.clone(),
        });
    }
    let p = find(nodes, primary).ok_or_else(|| PairError::NotInCluster {
        node: primary.clone(),
    })?;
    let s = find(nodes, standby).ok_or_else(|| PairError::NotInCluster {
        node: standby.clone(),
    })?;
    for n in [p, s] {
        if let Some(pair) = pair_of(pairs, &n.id) {
            return Err(PairError::AlreadyPaired {
                node: n.id.clone(),
                pair: pair.id.clone(),
            });
        }
    }
    if p.model != s.model {
        return Err(PairError::ModelMismatch {
            primary: p.id.clone(),
            primary_model: p.model.clone(),
            standby: s.id.clone(),
            standby_model: s.model.clone(),
        });
    }
    for n in [p, s] {
        if !n.live {
            return Err(PairError::NotLive { node: n.id.clone() });
        }
    }
    Ok(())
}

/// [`validate_manual_pair`], then the `Form` decision.
pub fn manual_pair(
    nodes: &[PairNode],
    pairs: &[PairRecord],
    primary: &NodeId,
    standby: &NodeId,
) -> Result<PairDecision, PairError> {
    validate_manual_pair(nodes, pairs, primary, standby)?;
    Ok(PairDecision::Form {
        primary: primary.clone(),
        standby: standby.clone(),
        reason: format!("paired by hand: {primary} is the primary, {standby} the standby"),
    })
}

/// A `SetState`, unless it changes nothing: the same state (a `degraded` pair may change its
/// reason, e.g. from "standby down" to "no member is up").
fn set_state(p: &PairRecord, state: PairState, reason: String, at_ms: u64) -> Option<PairDecision> {
    let changes = p.state != state || (state == PairState::Degraded && p.reason != reason);
    changes.then(|| PairDecision::SetState {
        pair: p.id.clone(),
        state,
        reason,
        at_ms,
    })
}

/// `node` went down (or left): promote its partner if it was the primary and the partner is
/// live; otherwise mark the pair `degraded`. Never promotes a member that is not live.
pub fn on_node_down(
    nodes: &[PairNode],
    pairs: &[PairRecord],
    node: &NodeId,
    now_ms: u64,
) -> Vec<PairDecision> {
    let ev = (node, false);
    let mut out = Vec::new();
    for p in pairs
        .iter()
        .filter(|p| &p.primary == node || &p.standby == node)
    {
        let (pr, sb) = (&p.primary, &p.standby);
        let decision = if node == pr {
            if is_live(nodes, sb, ev) {
                Some(PairDecision::Promote {
                    pair: p.id.clone(),
                    new_primary: sb.clone(),
                    old_primary: pr.clone(),
                    state: PairState::FailedOver,
                    reason: format!("primary {pr} is down; standby {sb} promoted to primary"),
                    at_ms: now_ms,
                })
            } else {
                set_state(
                    p,
                    PairState::Degraded,
                    format!(
                        "primary {pr} is down and standby {sb} is not up: no member is up, \
                         nothing to promote"
                    ),
                    now_ms,
                )
            }
        } else if is_live(nodes, pr, ev) {
            // In `failed_over` the standby is already down: a repeated report changes nothing
            // (and must not erase the failback bookkeeping).
            if p.state == PairState::FailedOver {
                None
            } else {
                set_state(
                    p,
                    PairState::Degraded,
                    format!("standby {sb} is down; {pr} stays primary without a standby"),
                    now_ms,
                )
            }
        } else {
            set_state(
                p,
                PairState::Degraded,
                format!("standby {sb} is down and primary {pr} is not up: no member is up"),
                now_ms,
            )
        };
        out.extend(decision);
    }
    out
}

/// `node` came back (registered again, `Ready`). If it is the standby and the primary is down,
/// it is promoted; if it is the standby of a `failed_over` pair and `failback` is set, it takes
/// the primary role back; otherwise the pair is `healthy` when both members are up, `degraded`
/// when the other one is still down.
pub fn on_node_up(
    nodes: &[PairNode],
    pairs: &[PairRecord],
    node: &NodeId,
    failback: bool,
    now_ms: u64,
) -> Vec<PairDecision> {
    let ev = (node, true);
    let mut out = Vec::new();
    for p in pairs
        .iter()
        .filter(|p| &p.primary == node || &p.standby == node)
    {
        let (pr, sb) = (&p.primary, &p.standby);
        let decision = if node == sb {
            if !is_live(nodes, pr, ev) {
                Some(PairDecision::Promote {
                    pair: p.id.clone(),
                    new_primary: sb.clone(),
                    old_primary: pr.clone(),
                    state: PairState::FailedOver,
                    reason: format!(
                        "{sb} is back and primary {pr} is down; {sb} promoted to primary"
                    ),
                    at_ms: now_ms,
                })
            } else if failback && p.state == PairState::FailedOver {
                Some(PairDecision::Promote {
                    pair: p.id.clone(),
                    new_primary: sb.clone(),
                    old_primary: pr.clone(),
                    state: PairState::Healthy,
                    reason: format!(
                        "{sb} is back and the cluster fails back: {sb} takes the primary role \
                         again, {pr} is the standby"
                    ),
                    at_ms: now_ms,
                })
            } else {
                set_state(
                    p,
                    PairState::Healthy,
                    format!("{sb} is back as the standby; both members are up"),
                    now_ms,
                )
            }
        } else if is_live(nodes, sb, ev) {
            set_state(
                p,
                PairState::Healthy,
                format!("{pr} is back; both members are up"),
                now_ms,
            )
        } else if p.state == PairState::FailedOver {
            // The primary of a `failed_over` pair is up already: nothing new.
            None
        } else {
            set_state(
                p,
                PairState::Degraded,
                format!("{pr} is back as primary; standby {sb} is still down"),
                now_ms,
            )
        };
        out.extend(decision);
    }
    out
}

/// `node` was removed from the cluster: its pair is dissolved, and its partner is left
/// unpaired (for [`auto_pairs`] to pair again).
pub fn on_node_removed(pairs: &[PairRecord], node: &NodeId) -> Vec<PairDecision> {
    pairs
        .iter()
        .filter(|p| &p.primary == node || &p.standby == node)
        .map(|p| {
            let other = if &p.primary == node {
                &p.standby
            } else {
                &p.primary
            };
            PairDecision::Unpair {
                pair: p.id.clone(),
                reason: format!(
                    "node {node} was removed from the cluster; pair {} is dissolved and {other} \
                     is unpaired",
                    p.id
                ),
            }
        })
        .collect()
}

/// The cluster's status.
///
/// - `pool`: `running` while some node is live, `uninitialized` otherwise (no node, or none
///   up: nothing can run there). Pairs are ignored.
/// - `ha_pairs`: `uninitialized` while it has no pair (unpaired nodes cannot fail over);
///   `running` when it has pairs and every one is `healthy`; `degraded` as soon as one is not
///   (`degraded` or `failed_over`: it has lost a member and could not survive another
///   failure). Unpaired nodes do not change the status.
pub fn cluster_status(
    mode: ClusterMode,
    nodes: &[PairNode],
    pairs: &[PairRecord],
) -> ClusterStatus {
    match mode {
        ClusterMode::Pool => {
            if nodes.iter().any(|n| n.live) {
                ClusterStatus::Running
            } else {
                ClusterStatus::Uninitialized
            }
        }
        ClusterMode::HaPairs => {
            if pairs.is_empty() {
                ClusterStatus::Uninitialized
            } else if pairs.iter().all(|p| p.state == PairState::Healthy) {
                ClusterStatus::Running
            } else {
                ClusterStatus::Degraded
            }
        }
    }
}

#[cfg(test)]
mod tests;
