//! Pairs made and dissolved by hand: the operations behind the admin API's pair routes. The
//! records come from the same pair decisions (`pairs`) as automatic pairing, in one batch.

use super::clusters::{find_cluster_id, find_node_id, OpError};
use super::core::Engine;
use super::fleet::Fleet;
use super::pairs::{cluster_pairs, install, pair_nodes, plan, PairPlan};
use crate::model::*;

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
        let plan = self.operator_plan(&t, &c, &nodes, d);
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
        let plan = self.operator_plan(&t, &c, &nodes, d);
        self.store().apply(plan.changes.clone())?;
        install(&mut t, &cid, plan);
        Ok(existing)
    }

    /// The plan of one pair decision an operator made (now, no automatic pairing beside it).
    fn operator_plan(
        &self,
        t: &Fleet,
        c: &ClusterRecord,
        nodes: &[crate::cluster::pairing::PairNode],
        d: crate::cluster::pairing::PairDecision,
    ) -> PairPlan {
        plan(
            t,
            c,
            nodes,
            vec![d],
            self.clock().unix_ms(),
            false,
            self.clock(),
        )
    }
}
