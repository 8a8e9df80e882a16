//! Pairs in `ha_pairs` clusters: turning the planner's decisions (`cluster::pairing`) into
//! durable changes, and the operator's pair operations (made and dissolved by hand).
//!
//! The planner decides; this module gives new pairs their ids, builds the records and events
//! for one batch, and returns the pair table to install with it. The engine applies them in
//! the same batch as the node change that caused them, so a promotion is never acted on (or
//! acknowledged) before it is durable.

use super::clusters::{find_cluster_id, find_node_id, OpError};
use super::core::Engine;
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

impl Engine {
    /// Pairs two nodes of an `ha_pairs` cluster by hand.
    pub fn create_pair(
        &self,
        cluster: &str,
        primary: &str,
        standby: &str,
    ) -> Result<PairRecord, OpError> {
        let mut t = self.lock();
        let cid = find_cluster_id(&t.clusters, cluster)?;
        let c = t.clusters[&cid].clone();
        if c.mode != ClusterMode::HaPairs {
            return Err(OpError::FailedPrecondition(format!(
                "cluster {} is not an ha_pairs cluster",
                c.name
            )));
        }
        let p = find_node_id(&t, primary)?;
        let s = find_node_id(&t, standby)?;
        let nodes = pair_nodes(&t, &cid, None);
        let current = cluster_pairs(&t, &cid);
        let d = crate::cluster::pairing::manual_pair(&nodes, &current, &p, &s)
            .map_err(|e| OpError::FailedPrecondition(e.to_string()))?;
        let plan = plan(
            &t,
            &c,
            &nodes,
            vec![d],
            self.clock().unix_ms(),
            false,
            self.clock(),
        );
        let made = plan
            .pairs
            .iter()
            .find(|x| x.primary == p && x.standby == s)
            .cloned()
            .ok_or_else(|| OpError::FailedPrecondition("the pair could not be formed".into()))?;
        self.store().apply(plan.changes.clone())?;
        install(&mut t, &cid, plan);
        // A job waits for a pair in `ha_pairs`: the new one may take it now (the simulation
        // found jobs pending "no primary/standby pair yet" beside a pair made by hand).
        self.job_event_locked(
            &mut t,
            &crate::jobs::planner::Event::NodeOpen { node: p.clone() },
        )?;
        Ok(made)
    }

    /// Dissolves a pair. Its nodes are not paired again automatically until one of them
    /// changes state.
    pub fn delete_pair(&self, cluster: &str, pair: &str) -> Result<PairRecord, OpError> {
        let mut t = self.lock();
        let cid = find_cluster_id(&t.clusters, cluster)?;
        let c = t.clusters[&cid].clone();
        let existing = t
            .pairs
            .get(pair)
            .filter(|p| p.cluster == cid)
            .cloned()
            .ok_or_else(|| OpError::NotFound(format!("no pair `{pair}` in cluster {}", c.name)))?;
        let nodes = pair_nodes(&t, &cid, None);
        let d = crate::cluster::pairing::PairDecision::Unpair {
            pair: pair.to_string(),
            reason: "unpaired by an operator".into(),
        };
        let plan = plan(
            &t,
            &c,
            &nodes,
            vec![d],
            self.clock().unix_ms(),
            false,
            self.clock(),
        );
        self.store().apply(plan.changes.clone())?;
        install(&mut t, &cid, plan);
        Ok(existing)
    }
}
