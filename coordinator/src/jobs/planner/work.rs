//! The records of one planner call, with each decision applied as it is made, and the choice
//! of where a job goes.

use super::View;
use crate::jobs::decision::Decision;
use crate::jobs::model::JobRecord;
use crate::jobs::placement::{held_by_jobs, place, Choice, NodeView, Unplaceable};
use crate::model::{ClusterMode, ClusterRecord, PairRecord};
use std::collections::BTreeSet;
use tandem_common::ids::NodeId;

/// The records of one call, with the decisions applied as they are made.
pub(super) struct Work<'v> {
    pub(super) clusters: &'v [ClusterRecord],
    pub(super) pairs: &'v [PairRecord],
    pub(super) nodes: Vec<NodeView>,
    pub(super) jobs: Vec<JobRecord>,
    pub(super) now_ms: u64,
    pub(super) out: Vec<Decision>,
    /// The jobs made pending by this call (their reason is fresh; no second `Pending`).
    pub(super) pended: BTreeSet<String>,
}

impl<'v> Work<'v> {
    pub(super) fn new(view: &View<'v>, now_ms: u64) -> Self {
        Self {
            clusters: view.clusters,
            pairs: view.pairs,
            nodes: view.nodes.to_vec(),
            jobs: view.jobs.to_vec(),
            now_ms,
            out: Vec::new(),
            pended: BTreeSet::new(),
        }
    }

    pub(super) fn push(&mut self, d: Decision) {
        d.apply(&mut self.jobs, self.now_ms);
        if let Decision::Pending { job, .. } = &d {
            self.pended.insert(job.clone());
        }
        self.out.push(d);
    }

    pub(super) fn job(&self, id: &str) -> Option<JobRecord> {
        self.jobs.iter().find(|j| j.id == id).cloned()
    }

    pub(super) fn node(&self, id: &NodeId) -> Option<&NodeView> {
        self.nodes.iter().find(|n| &n.id == id)
    }

    pub(super) fn live(&self, id: &NodeId) -> bool {
        self.node(id).is_some_and(|n| n.live)
    }

    /// Whether `id` is a node of the view (not removed) that is down: what the disruption
    /// guard counts. A removed node never returns, so a hold that counted it would never end.
    pub(super) fn down_member(&self, id: &NodeId) -> bool {
        self.node(id).is_some_and(|n| !n.live)
    }

    pub(super) fn name(&self, id: &NodeId) -> String {
        self.node(id)
            .map_or_else(|| id.to_string(), |n| n.name.clone())
    }

    pub(super) fn set_node(&mut self, id: &NodeId, f: impl FnOnce(&mut NodeView)) {
        if let Some(n) = self.nodes.iter_mut().find(|n| &n.id == id) {
            f(n);
        }
    }

    pub(super) fn cluster_name(&self, id: &str) -> String {
        self.clusters
            .iter()
            .find(|c| c.id == id)
            .map_or_else(|| id.to_string(), |c| c.name.clone())
    }

    /// The ids of the cluster's jobs that are not over, in id order.
    pub(super) fn active(&self, cluster: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| j.spec.cluster == cluster && !j.state.is_terminal())
            .map(|j| j.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The jobs placed on `node`, in id order.
    pub(super) fn on_node(&self, node: &NodeId) -> Vec<JobRecord> {
        let mut jobs: Vec<JobRecord> = self
            .jobs
            .iter()
            .filter(|j| j.node() == Some(node) && !j.state.is_terminal())
            .cloned()
            .collect();
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        jobs
    }

    /// The clusters an event about `node` touches: its own and those of the jobs on it.
    pub(super) fn clusters_of(&self, node: &NodeId) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .on_node(node)
            .into_iter()
            .map(|j| j.spec.cluster)
            .collect();
        out.extend(self.node(node).and_then(|n| n.cluster.clone()));
        out
    }

    /// Where `job` goes: first `prefer`'s own place (the node itself in `pool`, its pair in
    /// `ha_pairs`), then anywhere. The job's own holding is not counted against it.
    pub(super) fn choose(
        &self,
        job: &JobRecord,
        prefer: Option<&NodeId>,
    ) -> Result<Choice, Unplaceable> {
        let Some(cluster) = self.clusters.iter().find(|c| c.id == job.spec.cluster) else {
            return Err(Unplaceable {
                reason: format!("cluster {} does not exist", job.spec.cluster),
                candidates: vec![],
            });
        };
        let held = held_by_jobs(
            self.jobs.iter().filter(|j| j.id != job.id),
            self.pairs,
            &self.nodes,
        );
        if let Some(p) = prefer {
            let first = match cluster.mode {
                ClusterMode::Pool => {
                    let one: Vec<NodeView> =
                        self.nodes.iter().filter(|n| &n.id == p).cloned().collect();
                    place(job, cluster, &one, self.pairs, &held)
                }
                ClusterMode::HaPairs => {
                    let own: Vec<PairRecord> = self
                        .pairs
                        .iter()
                        .filter(|x| &x.primary == p || &x.standby == p)
                        .cloned()
                        .collect();
                    place(job, cluster, &self.nodes, &own, &held)
                }
            };
            if first.is_ok() {
                return first;
            }
        }
        place(job, cluster, &self.nodes, self.pairs, &held)
    }

    pub(super) fn describe(&self, to: &Choice) -> String {
        let mut s = self.name(&to.node);
        if !to.gpus.is_empty() {
            s.push_str(&format!(" with GPUs {}", to.gpus.join(",")));
        }
        if let Some(r) = &to.reserve_on {
            s.push_str(&format!(", room kept on standby {}", self.name(r)));
        }
        s
    }
}
