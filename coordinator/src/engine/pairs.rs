//! Pairs in `ha_pairs` clusters: turning the planner's decisions (`cluster::pairing`) into
//! durable changes.
//!
//! The planner decides; this module gives new pairs their ids, builds the records and events
//! for one batch, and returns the pair table to install with it. The engine applies them in
//! the same batch as the node change that caused them, so a promotion is never acted on (or
//! acknowledged) before it is durable.

use super::fleet::Fleet;
use crate::cluster::is_live;
use crate::cluster::pairing::{self, PairDecision, PairNode};
use crate::model::{ClusterMode, ClusterRecord, NewEvent, PairRecord, PairState};
use crate::store::Change;
use tandem_common::ids::NodeId;

/// The planner's view of one cluster's nodes; `event` overrides one node's liveness (the node
/// the event is about, whose record may not be updated yet).
pub fn pair_nodes(t: &Fleet, cluster: &str, event: Option<(&NodeId, bool)>) -> Vec<PairNode> {
    t.nodes
        .values()
        .filter(|e| e.record.cluster.as_deref() == Some(cluster))
        .map(|e| PairNode {
            id: e.record.id.clone(),
            model: e.record.hardware.model(),
            live: match event {
                Some((n, live)) if *n == e.record.id => live,
                _ => is_live(e.record.state),
            },
            created_ms: e.record.created_ms,
        })
        .collect()
}

/// The pairs of one cluster, oldest first.
pub fn cluster_pairs(t: &Fleet, cluster: &str) -> Vec<PairRecord> {
    let mut v: Vec<_> = t
        .pairs
        .values()
        .filter(|p| p.cluster == cluster)
        .cloned()
        .collect();
    v.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    v
}

/// A planned change to one cluster's pairs.
#[derive(Default)]
pub struct PairPlan {
    /// Records and events for the batch.
    pub changes: Vec<Change>,
    /// The cluster's pairs after the batch (to install in the table once it is durable).
    pub pairs: Vec<PairRecord>,
    /// Ids of pairs the batch deletes.
    pub deleted: Vec<String>,
    /// Whether anything changed.
    pub changed: bool,
}

fn node_name(t: &Fleet, id: &NodeId) -> String {
    t.nodes
        .get(id)
        .map(|e| e.record.name.clone())
        .unwrap_or_else(|| id.to_string())
}

/// Applies `decisions` (and then, when `auto`, automatic pairing) to the cluster's pairs.
/// An operator's unpairing runs without `auto`: the nodes must not be paired again at once.
pub fn plan(
    t: &Fleet,
    cluster: &ClusterRecord,
    nodes: &[PairNode],
    decisions: Vec<PairDecision>,
    now_ms: u64,
    auto: bool,
    clock: &dyn crate::clock::Clock,
) -> PairPlan {
    let mut out = PairPlan {
        pairs: cluster_pairs(t, &cluster.id),
        ..Default::default()
    };
    if cluster.mode != ClusterMode::HaPairs {
        return out;
    }
    let apply = |out: &mut PairPlan, d: PairDecision| {
        let message = match &d {
            PairDecision::Form {
                primary,
                standby,
                reason,
            } => {
                let rec = PairRecord {
                    id: crate::clock::short_id(clock, "p"),
                    cluster: cluster.id.clone(),
                    primary: primary.clone(),
                    standby: standby.clone(),
                    state: PairState::Healthy,
                    reason: reason.clone(),
                    created_ms: now_ms,
                    since_ms: now_ms,
                };
                let m = format!(
                    "cluster {}: pair {} formed, primary {}, standby {} ({reason})",
                    cluster.name,
                    rec.id,
                    node_name(t, primary),
                    node_name(t, standby)
                );
                out.pairs.push(rec);
                m
            }
            PairDecision::Unpair { pair, reason } => {
                out.pairs.retain(|p| p.id != *pair);
                out.deleted.push(pair.clone());
                format!("cluster {}: pair {pair} dissolved ({reason})", cluster.name)
            }
            other => {
                if !other.apply(&mut out.pairs) {
                    return;
                }
                match other {
                    PairDecision::Promote { pair, new_primary, old_primary, reason, .. } => format!(
                        "cluster {}: pair {pair}: {} promoted to primary, {} is now the standby ({reason})",
                        cluster.name,
                        node_name(t, new_primary),
                        node_name(t, old_primary)
                    ),
                    _ => format!("cluster {}: pair {}: {}", cluster.name, other.pair().unwrap_or("?"), other.reason()),
                }
            }
        };
        out.changed = true;
        out.changes.push(Change::Event(NewEvent {
            kind: "pair",
            node: None,
            message,
        }));
    };
    for d in decisions {
        apply(&mut out, d);
    }
    if auto {
        for d in pairing::auto_pair_decisions(nodes, &out.pairs) {
            apply(&mut out, d);
        }
    }
    if out.changed {
        let before = cluster_pairs(t, &cluster.id);
        for p in &out.pairs {
            if !before.contains(p) {
                out.changes.insert(0, Change::PutPair(p.clone()));
            }
        }
        for id in &out.deleted {
            out.changes.insert(0, Change::DeletePair(id.clone()));
        }
    }
    out
}

/// Installs a plan's pairs in the table (after the batch is durable).
pub fn install(t: &mut Fleet, cluster: &str, plan: PairPlan) {
    if !plan.changed {
        return;
    }
    t.pairs.retain(|_, p| p.cluster != cluster);
    for p in plan.pairs {
        t.pairs.insert(p.id.clone(), p);
    }
}
