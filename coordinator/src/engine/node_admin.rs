//! Node administration: edit, drain, move to another cluster and remove (both waiting out the
//! node's lease or its copies' confirmed end, exactly as a drain or a down does), recycle.

use super::clusters::{
    admission, event, find_cluster_id, find_node_id, NodePatch, OpError, Recycled,
};
use super::core::Engine;
use crate::cluster::validate::{self};
use crate::model::*;
use crate::store::Change;
use tandem_common::wire::CloseCode;

impl Engine {
    /// Edits a node's protection, labels and taints.
    pub fn patch_node(&self, id_or_name: &str, patch: NodePatch) -> Result<NodeRecord, OpError> {
        let mut t = self.lock();
        let id = find_node_id(&t, id_or_name)?;
        let mut rec = t.nodes[&id].record.clone();
        if let Some(p) = patch.protected {
            rec.protected = p;
        }
        if let Some(l) = &patch.labels {
            let merged = validate::merge_labels(&rec.labels, l);
            validate::check_labels(&merged)?;
            rec.labels = merged;
        }
        if let Some(taints) = patch.taints {
            validate::check_taints(&taints)?;
            rec.taints = taints;
        }
        let placement_changed = {
            let old = &t.nodes[&id].record;
            old.labels != rec.labels || old.taints != rec.taints
        };
        self.store().apply(vec![
            Change::PutNode(Box::new(rec.clone())),
            event(
                "node_edited",
                Some(id.clone()),
                format!("node {} edited", rec.name),
            ),
        ])?;
        if let Some(e) = t.nodes.get_mut(&id) {
            e.record = rec.clone();
        }
        // New labels, or a taint taken off, may be what a pending job waits for: its cluster
        // is planned again, under this lock. (Before, the job stayed pending until some other
        // event looked at the cluster.) Jobs already running stay where they are, as in
        // Kubernetes: a label or a `no_schedule` taint only steers new placements.
        if placement_changed {
            let open = crate::jobs::planner::Event::NodeOpen { node: id };
            self.job_event_locked(&mut t, &open)?;
        }
        Ok(rec)
    }

    /// Sets or clears a node's drain flag.
    pub fn set_draining(&self, id_or_name: &str, draining: bool) -> Result<NodeRecord, OpError> {
        let mut t = self.lock();
        let id = find_node_id(&t, id_or_name)?;
        let mut rec = t.nodes[&id].record.clone();
        // Draining moves the node's jobs away (old copy stopped first); the end of a drain
        // lets jobs that waited for room be placed on it. Decided under the lock the record
        // changes under, and again for a repeated request (a drain recorded just before a
        // crash has its jobs moved then).
        let planned = if draining {
            crate::jobs::planner::Event::Drain { node: id.clone() }
        } else {
            crate::jobs::planner::Event::NodeOpen { node: id.clone() }
        };
        if rec.draining == draining {
            self.job_event_locked(&mut t, &planned)?;
            return Ok(rec);
        }
        rec.draining = draining;
        let what = if draining {
            "draining: no new work"
        } else {
            "no longer draining"
        };
        self.store().apply(vec![
            Change::PutNode(Box::new(rec.clone())),
            event(
                "node_drain",
                Some(id.clone()),
                format!("node {} is {what}", rec.name),
            ),
        ])?;
        if let Some(e) = t.nodes.get_mut(&id) {
            e.record = rec.clone();
        }
        self.job_event_locked(&mut t, &planned)?;
        Ok(rec)
    }

    /// Removes a node: refused while protected. Its record goes, so its certificate is no
    /// longer accepted (registration checks the record and its serial), its open connection is
    /// closed, and a pair it was in is dissolved.
    ///
    /// # No way around the lease
    /// A node that may still hold a lease (the detector has not declared it down) may still
    /// run its jobs: closing its connection stops its beats, but its agent fences them only
    /// when its last lease runs out. Placing them elsewhere at once ran two copies for up to a
    /// lease. So such a node leaves the table but is kept as a tombstone (durably, in the
    /// same batch), shown to the job planner as live and draining: its jobs move only once
    /// their copies there have ended or the detector declares the node down, exactly as after
    /// a crash. A node already down, joining or gone holds no lease and goes at once.
    pub fn remove_node(&self, id_or_name: &str, why: &str) -> Result<NodeRecord, OpError> {
        let mut t = self.lock();
        let id = find_node_id(&t, id_or_name)?;
        let rec = t.nodes[&id].record.clone();
        let may_hold_lease =
            matches!(rec.state, NodeState::Ready | NodeState::Suspect) && self.may_hold_lease(&id);
        if rec.protected {
            return Err(OpError::FailedPrecondition(format!(
                "node {} is protected; clear its protection first (PATCH protected=false)",
                rec.name
            )));
        }
        let pairs: Vec<PairRecord> = t
            .pairs
            .values()
            .filter(|p| p.primary == id || p.standby == id)
            .cloned()
            .collect();
        let mut tomb = rec.clone();
        tomb.removed_ms = Some(self.clock().unix_ms());
        tomb.draining = true;
        let mut changes = vec![if may_hold_lease {
            Change::PutNode(Box::new(tomb.clone()))
        } else {
            Change::DeleteNode(id.clone())
        }];
        changes.push(event(
            "node_removed",
            Some(id.clone()),
            format!(
                "node {} removed ({why}); certificate serial {} revoked{}",
                rec.name,
                rec.cert_serial,
                if may_hold_lease {
                    "; its jobs move once their copies there end or its lease is over"
                } else {
                    ""
                }
            ),
        ));
        for p in &pairs {
            changes.push(Change::DeletePair(p.id.clone()));
            let partner = if p.primary == id {
                &p.standby
            } else {
                &p.primary
            };
            let partner = t
                .nodes
                .get(partner)
                .map_or_else(|| partner.to_string(), |e| e.record.name.clone());
            let cluster = t
                .clusters
                .get(&p.cluster)
                .map_or_else(|| p.cluster.clone(), |c| c.name.clone());
            changes.push(event(
                "pair",
                None,
                format!(
                    "cluster {cluster}: pair {} dissolved (its member {} was removed: {why}); {partner} is unpaired",
                    p.id, rec.name
                ),
            ));
        }
        self.store().apply(changes)?;
        for p in pairs {
            t.pairs.remove(&p.id);
        }
        // Revoked: the TLS layer refuses this certificate from now on.
        self.set_member_serial(rec.cert_serial, false);
        if let Some(previous) = rec.previous_cert_serial {
            self.set_member_serial(previous, false);
        }
        if let Some(e) = t.remove_node(&id) {
            if let Some(live) = e.live {
                live.control.close_connection(
                    CloseCode::Removed,
                    "node removed: its certificate is revoked",
                );
            }
        }
        // Decided under the lock of the removal (the detector's lock comes after the table's).
        if may_hold_lease {
            t.removing.insert(id.clone(), tomb);
            // Its jobs start moving now (stop first, as a drain does); none starts elsewhere
            // before its copy there has ended or the node is declared down.
            self.job_event_locked(
                &mut t,
                &crate::jobs::planner::Event::Drain { node: id.clone() },
            )?;
        } else {
            self.forget(&id);
            // A failover hold that counted it (it went down with more than half of its
            // cluster) must not wait for it to return.
            self.job_event_locked(
                &mut t,
                &crate::jobs::planner::Event::NodeRemoved { node: id.clone() },
            )?;
        }
        Ok(rec)
    }

    /// Moves a node to cluster `to` (id or name), under the rules a join meets there (its
    /// quota, its minimums, the same model in `ha_pairs`). Its pair in its old cluster is
    /// dissolved (the partner is paired again automatically where it can be), and in an
    /// `ha_pairs` cluster it is paired automatically like a node that joined.
    ///
    /// # Its jobs move under the lease rule
    /// The node's jobs belong to its old cluster. They move exactly as a drain moves them
    /// (`Event::Drain` for this one pass of the planner, the record itself is not marked
    /// draining): the old copy is stopped first and the new one starts only once its end is
    /// reported or the node is declared down, never while the node may still run it. A job
    /// that fits nowhere else in its cluster keeps running where it is (and says so in an
    /// event), as with a drain; the planner moves it from a node outside its cluster at any
    /// later reconciliation of its cluster, so such a job, or a move whose coordinator was
    /// killed before the jobs' batch, still leaves once it can. The node's record, the cluster's model and the pair changes
    /// are one batch, applied before anything is acted on; the answer waits for it to be
    /// durable (`admin::durable_replies`), every command for the node for its ticket.
    ///
    /// Moving a node to the cluster it is in changes nothing (a retried request).
    pub fn move_node(&self, id_or_name: &str, to: &str) -> Result<NodeRecord, OpError> {
        use crate::cluster::pairing::{self, PairNode};
        let mut t = self.lock();
        let id = find_node_id(&t, id_or_name)?;
        let cid = find_cluster_id(&t.clusters, to)?;
        let mut rec = t.nodes[&id].record.clone();
        if rec.cluster.as_deref() == Some(cid.as_str()) {
            return Ok(rec);
        }
        let target = admission(&t, self.quotas, &t.clusters[&cid], &rec.name, &rec.hardware)?;
        let now = self.clock().unix_ms();
        let from = rec.cluster.clone();
        let from_name = from.as_ref().and_then(|c| t.clusters.get(c)).map_or_else(
            || "no cluster".to_string(),
            |c| format!("cluster {}", c.name),
        );
        rec.cluster = Some(cid.clone());
        let mut changes = vec![
            Change::PutNode(Box::new(rec.clone())),
            event(
                "node_moved",
                Some(id.clone()),
                format!(
                    "node {} moved from {from_name} to cluster {}; its jobs move away, each old copy stopped first",
                    rec.name, target.name
                ),
            ),
        ];
        if target.model != t.clusters[&cid].model {
            changes.push(Change::PutCluster(Box::new(target.clone())));
        }
        // The old cluster: its pair dissolved, the rest paired again where they can be.
        let old_plan = from.as_ref().and_then(|old| {
            let c = t.clusters.get(old)?;
            let nodes: Vec<PairNode> = super::pairs::pair_nodes(&t, old, None)
                .into_iter()
                .filter(|n| n.id != id)
                .collect();
            let current = super::pairs::cluster_pairs(&t, old);
            let d = pairing::on_node_removed(&current, &id);
            let plan = super::pairs::plan(&t, c, &nodes, d, now, true, self.clock());
            Some((old.clone(), plan))
        });
        // The new cluster: paired as a node that joined it.
        let mut nodes = super::pairs::pair_nodes(&t, &cid, None);
        nodes.push(PairNode {
            id: id.clone(),
            model: rec.hardware.model(),
            live: crate::cluster::is_live(rec.state),
            created_ms: rec.created_ms,
        });
        let new_plan = super::pairs::plan(&t, &target, &nodes, Vec::new(), now, true, self.clock());
        if let Some((_, p)) = &old_plan {
            changes.extend(p.changes.iter().cloned());
        }
        changes.extend(new_plan.changes.iter().cloned());
        self.store().apply(changes)?;
        // A pair formed in the old cluster may take the jobs pending there for want of one (the
        // simulation found one stranded: seed 1043135).
        let mut reopened = Vec::new();
        if let Some((old, p)) = old_plan {
            if p.changed {
                reopened.extend(p.pairs.iter().map(|x| x.primary.clone()));
            }
            super::pairs::install(&mut t, &old, p);
        }
        super::pairs::install(&mut t, &cid, new_plan);
        t.clusters.insert(cid, target);
        if let Some(e) = t.nodes.get_mut(&id) {
            e.record = rec.clone();
        }
        // Its jobs start moving now, as a drain moves them (old copy stopped first), and then
        // the jobs of its new cluster that wait for room may take it; both under the lock of
        // the move.
        self.job_event_locked(
            &mut t,
            &crate::jobs::planner::Event::Drain { node: id.clone() },
        )?;
        self.job_event_locked(&mut t, &crate::jobs::planner::Event::NodeOpen { node: id })?;
        for node in reopened {
            self.job_event_locked(&mut t, &crate::jobs::planner::Event::NodeOpen { node })?;
        }
        Ok(rec)
    }

    /// Removes every unprotected node that has been down longer than `down_for_ms`.
    pub fn recycle(&self, down_for_ms: u64) -> Result<Recycled, OpError> {
        let now = self.clock().unix_ms();
        let candidates: Vec<NodeRecord> = self
            .lock()
            .nodes
            .values()
            .filter(|e| {
                e.record.state == NodeState::Down
                    && now.saturating_sub(e.record.state_since_ms) >= down_for_ms
            })
            .map(|e| e.record.clone())
            .collect();
        let (mut removed, mut skipped) = (Vec::new(), Vec::new());
        for c in candidates {
            match self.remove_node(
                c.id.as_str(),
                &format!("recycled: down for more than {} s", down_for_ms / 1000),
            ) {
                Ok(r) => removed.push(r),
                Err(e) => skipped.push((c.name, e.to_string())),
            }
        }
        Ok((removed, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{NewCluster, Quotas};
    use crate::store::{MemStore, StateStore};
    use std::sync::Arc;
    use tandem_common::hardware::HardwareReport;
    use tandem_common::ids::NodeId;

    fn engine(max_nodes_per_cluster: usize) -> (Engine, Arc<MemStore>) {
        let (e, store) = Engine::for_tests();
        let e = e.with_quotas(Quotas {
            max_clusters: 50,
            max_nodes_per_cluster,
        });
        (e, store)
    }

    fn cluster(e: &Engine, name: &str, mode: ClusterMode, min: Option<MinNode>) -> ClusterRecord {
        e.create_cluster(
            NewCluster {
                name: name.into(),
                alias: String::new(),
                description: String::new(),
                mode,
                labels: Default::default(),
                deletion_protection: false,
                min_node: min,
                failback: false,
            },
            e.quotas,
        )
        .unwrap()
        .0
    }

    /// A node of CPU `brand` joined to `c` the way a join records it.
    fn join(e: &Engine, name: &str, brand: &str, c: &ClusterRecord) -> NodeId {
        let mut hw = HardwareReport::default();
        hw.cpu.brand = brand.into();
        hw.cpu.logical_cores = 4;
        hw.memory.total_bytes = 8 << 30;
        let admitted = e.admit_to_cluster(&c.id, name, &hw).unwrap();
        let id = NodeId::random();
        let rec = NodeRecord {
            id: id.clone(),
            name: name.into(),
            state: NodeState::Joining,
            state_reason: "joined".into(),
            state_since_ms: 0,
            address: "127.0.0.1:1".into(),
            agent_version: "test".into(),
            cert_serial: 1,
            cert_not_after_unix: 0,
            previous_cert_serial: None,
            previous_cert_not_after_unix: 0,
            key_sha256: String::new(),
            created_ms: 0,
            joined_with_token: "t".into(),
            hardware: hw,
            cluster: Some(c.id.clone()),
            labels: Default::default(),
            taints: Vec::new(),
            protected: false,
            draining: false,
            removed_ms: None,
        };
        let token = TokenRecord {
            id: "t".into(),
            secret_sha256: String::new(),
            created_ms: 0,
            expires_ms: u64::MAX,
            uses_allowed: 100,
            uses: 0,
            cluster: Some(c.id.clone()),
            revoked_ms: None,
        };
        e.record_join(rec, token, Some(admitted)).unwrap();
        id
    }

    fn stored_cluster(store: &MemStore, id: &NodeId) -> Option<String> {
        store.node(id).unwrap().unwrap().cluster
    }

    #[test]
    fn a_move_meets_the_join_rules_of_its_target_and_a_refusal_changes_nothing() {
        let (e, store) = engine(2);
        let pool = cluster(&e, "p", ClusterMode::Pool, None);
        let ha = cluster(&e, "ha", ClusterMode::HaPairs, None);
        let big = cluster(
            &e,
            "big",
            ClusterMode::Pool,
            Some(MinNode {
                cores: 64,
                memory_bytes: 0,
            }),
        );
        let full = cluster(&e, "full", ClusterMode::Pool, None);
        join(&e, "x", "Brand X", &ha);
        join(&e, "f1", "Brand X", &full);
        join(&e, "f2", "Brand X", &full);
        let y = join(&e, "y", "Brand Y", &pool);

        let model = e.move_node("y", "ha").unwrap_err();
        assert!(
            matches!(&model, OpError::FailedPrecondition(m) if m.contains("model")),
            "{model}"
        );
        let min = e.move_node("y", &big.name).unwrap_err();
        assert!(
            matches!(&min, OpError::FailedPrecondition(m) if m.contains("needs at least")),
            "{min}"
        );
        let quota = e.move_node("y", "full").unwrap_err();
        assert!(
            matches!(&quota, OpError::Quota(m) if m.contains("max_nodes_per_cluster")),
            "{quota}"
        );
        assert!(matches!(
            e.move_node("y", "nope"),
            Err(OpError::NotFound(_))
        ));
        assert!(matches!(
            e.move_node("nobody", "p"),
            Err(OpError::NotFound(_))
        ));
        assert_eq!(stored_cluster(&store, &y), Some(pool.id.clone()));
        assert_eq!(e.find("y").unwrap().record.cluster, Some(pool.id.clone()));
        // The first node of an empty ha_pairs cluster fixes its model, durably.
        let ha2 = cluster(&e, "ha2", ClusterMode::HaPairs, None);
        let moved = e.move_node("y", "ha2").unwrap();
        assert_eq!(moved.cluster, Some(ha2.id.clone()));
        assert_eq!(stored_cluster(&store, &y), Some(ha2.id.clone()));
        let c = store
            .clusters()
            .unwrap()
            .into_iter()
            .find(|c| c.id == ha2.id)
            .unwrap();
        assert_eq!(c.model.as_deref(), Some(moved.hardware.model().as_str()));
        // Again to where it is: nothing changes.
        let before = store.last_ticket();
        e.move_node("y", "ha2").unwrap();
        assert_eq!(store.last_ticket(), before);
    }

    #[test]
    fn a_moved_node_leaves_its_pair_in_the_same_batch_as_its_new_cluster() {
        let (e, store) = engine(100);
        let ha = cluster(&e, "ha", ClusterMode::HaPairs, None);
        let pool = cluster(&e, "p", ClusterMode::Pool, None);
        let a = join(&e, "a", "Brand X", &ha);
        let b = join(&e, "b", "Brand X", &ha);
        let pair = PairRecord {
            id: "p-1".into(),
            cluster: ha.id.clone(),
            primary: a.clone(),
            standby: b.clone(),
            state: PairState::Healthy,
            reason: "test".into(),
            created_ms: 0,
            since_ms: 0,
        };
        store.apply(vec![Change::PutPair(pair.clone())]).unwrap();
        e.lock().pairs.insert(pair.id.clone(), pair);
        let before = store.last_ticket();
        e.move_node("a", "p").unwrap();
        assert_eq!(store.last_ticket(), before + 1, "one batch");
        assert_eq!(stored_cluster(&store, &a), Some(pool.id.clone()));
        assert!(
            store.pairs().unwrap().is_empty(),
            "the pair is dissolved durably"
        );
        assert!(e.lock().pairs.is_empty());
        let events = store.recent_events(10).unwrap();
        assert!(events.iter().any(|ev| ev.kind == "node_moved"));
        assert!(events
            .iter()
            .any(|ev| ev.kind == "pair" && ev.message.contains("dissolved")));
    }

    #[test]
    fn a_cluster_is_not_deleted_while_a_job_or_a_removed_node_may_still_run_there() {
        use crate::jobs::planner::Event;
        let (e, store) = engine(100);
        let c = cluster(&e, "c", ClusterMode::Pool, None);
        let a = join(&e, "a", "Brand X", &c);
        let mut hw = HardwareReport::default();
        hw.cpu.logical_cores = 4;
        hw.memory.total_bytes = 8 << 30;
        let out = Arc::new(crate::outbox::Outbox::new(store.clone()));
        let now = std::time::Instant::now();
        e.register(
            &a,
            1,
            "127.0.0.1:1".parse().unwrap(),
            "0.1.0".into(),
            hw,
            out,
            now,
        )
        .unwrap();
        // A live node that is removed may still run jobs until its lease is over.
        e.remove_node("a", "test").unwrap();
        assert!(e.lock().removing.contains_key(&a));
        let err = e.delete_cluster("c").unwrap_err();
        assert!(
            matches!(&err, OpError::FailedPrecondition(m) if m.contains("being removed")),
            "{err}"
        );
        assert!(e.cluster("c").is_some());

        // A cluster without nodes that still has a job that has not ended.
        let empty = cluster(&e, "empty", ClusterMode::Pool, None);
        let mut spec = crate::jobs::testkit::spec(100, 1 << 20, 0);
        spec.cluster = empty.id.clone();
        let job = crate::jobs::testkit::job(7, spec);
        e.submit_job(job.clone()).unwrap();
        let err = e.delete_cluster("empty").unwrap_err();
        assert!(
            matches!(&err, OpError::FailedPrecondition(m) if m.contains("1 job(s)") && m.contains("job-7")),
            "{err}"
        );
        assert!(store.clusters().unwrap().iter().any(|k| k.id == empty.id));
        // Once it is stopped (it never ran: no copy to wait for), the cluster goes.
        e.job_event(Event::StopRequested {
            job: job.id.clone(),
        })
        .unwrap();
        e.delete_cluster("empty").unwrap();
        assert!(!store.clusters().unwrap().iter().any(|k| k.id == empty.id));
    }
}
