//! Cluster administration: the operations behind the admin API's cluster routes (the pair
//! routes' are in `pair_admin`), and the cluster rules a joining node must meet.
//!
//! Every operation checks its input (the rules live in `cluster::validate`), decides under the
//! fleet lock, applies the records and an event to the store, and only then changes the
//! in-memory table. Nothing here waits for the disk: the admin endpoint answers only once
//! every batch applied before the answer is durable (`admin::durable_replies`), and what goes
//! to a node waits in its outbox for the same (see `outbox`). So an acknowledged change
//! survives a `kill -9` at any moment, and no flush is waited for under the fleet lock.

use super::core::Engine;
use super::fleet::Fleet;
use super::nodes::MembershipError;
use super::quotas::Quotas;
use crate::cluster::validate::{self, ValidationError};
use crate::model::*;
use crate::store::{Change, StoreError};
use std::collections::BTreeMap;
use tandem_common::hardware::HardwareReport;
use tandem_common::ids::NodeId;
use tandem_common::proto::RejectCode;

/// Why an administrative operation was refused or failed. Each maps to one API error code.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A field is malformed or out of range (`invalid_argument`).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such object (`not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The name is taken (`already_exists`).
    #[error("{0}")]
    AlreadyExists(String),
    /// The object's state forbids this (`failed_precondition`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A quota would be exceeded (`quota_exceeded`).
    #[error("{0}")]
    Quota(String),
    /// The store failed (`internal`).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A member of a cluster as its overview shows it.
#[derive(Clone, Debug)]
pub struct Member {
    /// The node.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: NodeState,
    /// Whether it is draining.
    pub draining: bool,
    /// Its hardware model.
    pub model: String,
    /// When it joined (Unix ms).
    pub created_ms: u64,
}

/// What a recycle did: the nodes removed, and `(name, reason)` for those it could not remove.
pub type Recycled = (Vec<NodeRecord>, Vec<(String, String)>);

/// A new cluster as asked for.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCluster {
    /// Unique name.
    pub name: String,
    /// Second name.
    #[serde(default)]
    pub alias: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Placement mode.
    pub mode: ClusterMode,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Deletion protection.
    #[serde(default)]
    pub deletion_protection: bool,
    /// Node minimums.
    #[serde(default)]
    pub min_node: Option<MinNode>,
    /// Fail back to a recovered primary.
    #[serde(default)]
    pub failback: bool,
}

/// Edits to a cluster; absent fields stay as they are, a `null` label value deletes the label.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPatch {
    /// New alias.
    pub alias: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Labels to set (`null` deletes).
    pub labels: Option<BTreeMap<String, Option<String>>>,
    /// New deletion protection.
    pub deletion_protection: Option<bool>,
    /// New minimums (`null` clears them).
    #[serde(default, deserialize_with = "double_option")]
    pub min_node: Option<Option<MinNode>>,
    /// New failback setting.
    pub failback: Option<bool>,
}

/// Edits to a node.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePatch {
    /// Node protection.
    pub protected: Option<bool>,
    /// Labels to set (`null` deletes).
    pub labels: Option<BTreeMap<String, Option<String>>>,
    /// The node's whole taint list.
    pub taints: Option<Vec<Taint>>,
}

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(d).map(Some)
}

pub(super) fn event(kind: &'static str, node: Option<NodeId>, message: String) -> Change {
    Change::Event(NewEvent {
        kind,
        node,
        message,
    })
}

impl Engine {
    /// Finds a cluster by id or name.
    pub fn cluster(&self, id_or_name: &str) -> Option<ClusterRecord> {
        let t = self.lock();
        t.clusters
            .get(id_or_name)
            .or_else(|| t.clusters.values().find(|c| c.name == id_or_name))
            .cloned()
    }

    /// Every cluster, oldest first.
    pub fn clusters(&self) -> Vec<ClusterRecord> {
        let mut v: Vec<_> = self.lock().clusters.values().cloned().collect();
        v.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.name.cmp(&b.name)));
        v
    }

    /// The pairs of a cluster.
    pub fn pairs_of(&self, cluster: &str) -> Vec<PairRecord> {
        let mut v: Vec<_> = self
            .lock()
            .pairs
            .values()
            .filter(|p| p.cluster == cluster)
            .cloned()
            .collect();
        v.sort_by_key(|p| p.created_ms);
        v
    }

    /// A cluster's members, pairs, status and capacity, read together under the lock.
    ///
    /// The members are summaries, not records: a record carries the node's whole hardware
    /// report (kilobytes), and cloning ten thousand of them under the fleet lock for a listing
    /// cost more than everything else it does.
    pub fn cluster_overview(
        &self,
        cid: &str,
    ) -> (
        Vec<Member>,
        Vec<PairRecord>,
        crate::cluster::pairing::ClusterStatus,
        crate::cluster::capacity::Capacity,
    ) {
        let t = self.lock();
        let Some(c) = t.clusters.get(cid) else {
            return (
                Vec::new(),
                Vec::new(),
                crate::cluster::pairing::ClusterStatus::Uninitialized,
                Default::default(),
            );
        };
        let nodes: Vec<&NodeRecord> = t
            .nodes
            .values()
            .filter(|e| e.record.cluster.as_deref() == Some(cid))
            .map(|e| &e.record)
            .collect();
        let pairs = super::pairs::cluster_pairs(&t, cid);
        let view = super::pairs::pair_nodes(&t, cid, None);
        let status = crate::cluster::pairing::cluster_status(c.mode, &view, &pairs);
        // What jobs hold (and, in ha_pairs, reserve on standbys) is not free.
        let held = if t.jobs.is_empty() {
            Default::default()
        } else {
            let views: Vec<_> = t
                .nodes
                .values()
                .map(|e| crate::jobs::placement::NodeView::from_record(&e.record))
                .collect();
            let all_pairs: Vec<_> = t.pairs.values().cloned().collect();
            crate::jobs::placement::held_by_jobs(t.jobs.values(), &all_pairs, &views)
        };
        // Draining nodes take no new work: their capacity counts in the totals, none of it
        // as free (as if all of it were held). Looked up by id, not by a scan per node: a
        // cluster of 10,000 nodes took over a second to show that way.
        let draining: std::collections::HashMap<&NodeId, &NodeRecord> = nodes
            .iter()
            .filter(|n| n.draining)
            .map(|n| (&n.id, *n))
            .collect();
        let capacity =
            crate::cluster::capacity::capacity(nodes.iter().copied(), |id| {
                match draining.get(id) {
                    Some(n) => crate::cluster::capacity::Held {
                        cpu_millis: u64::from(n.hardware.cpu.logical_cores) * 1000,
                        memory_bytes: n.hardware.memory.total_bytes,
                        gpu_uuids: n.hardware.gpus.iter().map(|g| g.uuid.clone()).collect(),
                    },
                    None => held.get(id).cloned().unwrap_or_default(),
                }
            });
        let mut members: Vec<Member> = nodes
            .iter()
            .map(|n| Member {
                id: n.id.clone(),
                name: n.name.clone(),
                state: n.state,
                draining: n.draining,
                model: n.hardware.model(),
                created_ms: n.created_ms,
            })
            .collect();
        drop(t);
        members.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.name.cmp(&b.name)));
        (members, pairs, status, capacity)
    }

    /// The jobs of a cluster, oldest first.
    pub fn jobs_of(&self, cid: &str) -> Vec<crate::jobs::model::JobRecord> {
        let mut v: Vec<_> = self
            .lock()
            .jobs
            .values()
            .filter(|j| j.spec.cluster == cid)
            .cloned()
            .collect();
        v.sort_by_key(|j| j.created_ms);
        v
    }

    /// An operation record.
    pub fn operation(&self, id: &str) -> Result<Option<OperationRecord>, StoreError> {
        self.store().operation(id)
    }

    /// Creates a cluster; returns it and the id of its (finished) operation.
    pub fn create_cluster(
        &self,
        req: NewCluster,
        quotas: Quotas,
    ) -> Result<(ClusterRecord, String), OpError> {
        validate::check_cluster_name(&req.name)?;
        validate::check_alias(&req.alias)?;
        validate::check_description(&req.description)?;
        validate::check_labels(&req.labels)?;
        let mut t = self.lock();
        if let Some(c) = t.clusters.values().find(|c| c.name == req.name) {
            return Err(OpError::AlreadyExists(format!(
                "a cluster named `{}` already exists ({})",
                req.name, c.id
            )));
        }
        if t.clusters.len() >= quotas.max_clusters {
            return Err(OpError::Quota(format!(
                "this coordinator already has {} clusters, its quota (max_clusters = {})",
                t.clusters.len(),
                quotas.max_clusters
            )));
        }
        let now = self.clock().unix_ms();
        let c = ClusterRecord {
            id: crate::clock::short_id(self.clock(), "c"),
            name: req.name,
            alias: req.alias,
            description: req.description,
            mode: req.mode,
            labels: req.labels,
            deletion_protection: req.deletion_protection,
            min_node: req.min_node,
            failback: req.failback,
            model: None,
            created_ms: now,
        };
        let op = OperationRecord {
            id: crate::clock::short_id(self.clock(), "op"),
            kind: "create_cluster".into(),
            target: c.id.clone(),
            state: OperationState::Done,
            error: None,
            created_ms: now,
            done_ms: Some(now),
        };
        self.store().apply(vec![
            Change::PutCluster(Box::new(c.clone())),
            Change::PutOperation(op.clone()),
            event(
                "cluster",
                None,
                format!("cluster {} ({}) created, mode {:?}", c.name, c.id, c.mode),
            ),
        ])?;
        t.clusters.insert(c.id.clone(), c.clone());
        Ok((c, op.id))
    }

    /// Edits a cluster.
    pub fn patch_cluster(
        &self,
        id_or_name: &str,
        patch: ClusterPatch,
    ) -> Result<ClusterRecord, OpError> {
        let mut t = self.lock();
        let id = find_cluster_id(&t.clusters, id_or_name)?;
        let mut c = t.clusters[&id].clone();
        if let Some(a) = patch.alias {
            validate::check_alias(&a)?;
            c.alias = a;
        }
        if let Some(d) = patch.description {
            validate::check_description(&d)?;
            c.description = d;
        }
        if let Some(l) = &patch.labels {
            let merged = validate::merge_labels(&c.labels, l);
            validate::check_labels(&merged)?;
            c.labels = merged;
        }
        if let Some(p) = patch.deletion_protection {
            c.deletion_protection = p;
        }
        if let Some(m) = patch.min_node {
            c.min_node = m;
        }
        if let Some(f) = patch.failback {
            c.failback = f;
        }
        self.store().apply(vec![
            Change::PutCluster(Box::new(c.clone())),
            event("cluster", None, format!("cluster {} edited", c.name)),
        ])?;
        t.clusters.insert(id, c.clone());
        Ok(c)
    }

    /// Deletes an empty, unprotected cluster.
    pub fn delete_cluster(&self, id_or_name: &str) -> Result<ClusterRecord, OpError> {
        let mut t = self.lock();
        let id = find_cluster_id(&t.clusters, id_or_name)?;
        let c = t.clusters[&id].clone();
        if c.deletion_protection {
            return Err(OpError::FailedPrecondition(format!(
                "cluster {} has deletion protection on; clear it first (PATCH deletion_protection=false)",
                c.name
            )));
        }
        let members = t
            .nodes
            .values()
            .filter(|e| e.record.cluster.as_deref() == Some(id.as_str()))
            .count();
        if members > 0 {
            return Err(OpError::FailedPrecondition(format!(
                "cluster {} still has {members} node(s); remove them first",
                c.name
            )));
        }
        // A removed node may still run the cluster's jobs until its lease is over; deleting
        // the cluster under it would leave them pending for a cluster that does not exist.
        let removing = t
            .removing
            .values()
            .filter(|r| r.cluster.as_deref() == Some(id.as_str()))
            .count();
        if removing > 0 {
            return Err(OpError::FailedPrecondition(format!(
                "cluster {} still has {removing} node(s) being removed whose lease may not have ended; try again once they are gone",
                c.name
            )));
        }
        let mut jobs: Vec<&str> = t
            .jobs
            .values()
            .filter(|j| j.spec.cluster == id)
            .filter(|j| !j.state.is_terminal() || j.stopping().is_some())
            .map(|j| j.spec.name.as_str())
            .collect();
        if !jobs.is_empty() {
            jobs.sort_unstable();
            let n = jobs.len();
            jobs.truncate(5);
            return Err(OpError::FailedPrecondition(format!(
                "cluster {} still has {n} job(s) that have not ended ({}{}); stop them first",
                c.name,
                jobs.join(", "),
                if n > 5 { ", ..." } else { "" }
            )));
        }
        self.store().apply(vec![
            Change::DeleteCluster(id.clone()),
            event(
                "cluster",
                None,
                format!("cluster {} ({}) deleted", c.name, c.id),
            ),
        ])?;
        t.clusters.remove(&id);
        Ok(c)
    }

    /// Checks that a node may join cluster `cid`. Returns the cluster, with its hardware model
    /// fixed by this node when it is the first of an `ha_pairs` cluster.
    pub fn admit_to_cluster(
        &self,
        cid: &str,
        name: &str,
        hw: &HardwareReport,
    ) -> Result<ClusterRecord, MembershipError> {
        let refused = |reason: String| MembershipError::Refused {
            code: RejectCode::NotAdmitted,
            reason,
        };
        let t = self.lock();
        let Some(c) = t.clusters.get(cid) else {
            return Err(refused(format!(
                "the join token names cluster {cid}, which no longer exists"
            )));
        };
        admission(&t, self.quotas, c, name, hw).map_err(|r| refused(r.to_string()))
    }
}

/// Which of a cluster's rules for its members a node fails: the same at a join and at a move.
#[derive(Debug, thiserror::Error)]
pub(super) enum Inadmissible {
    /// The cluster holds `max_nodes_per_cluster` nodes already (`quota_exceeded`).
    #[error("{0}")]
    Full(String),
    /// The node has fewer cores or less memory than the cluster's minimums.
    #[error("{0}")]
    BelowMinimums(String),
    /// An `ha_pairs` cluster holds nodes of another hardware model.
    #[error("{0}")]
    OtherModel(String),
}

impl From<Inadmissible> for OpError {
    fn from(e: Inadmissible) -> Self {
        match e {
            Inadmissible::Full(m) => OpError::Quota(m),
            Inadmissible::BelowMinimums(m) | Inadmissible::OtherModel(m) => {
                OpError::FailedPrecondition(m)
            }
        }
    }
}

/// Whether node `name` with `hw` may become a member of cluster `c` (it is not one now): its
/// quota, minimums and, for `ha_pairs`, the same-model rule. Returns the cluster, with its
/// hardware model fixed by this node when it is the first of an `ha_pairs` cluster.
pub(super) fn admission(
    t: &Fleet,
    quotas: Quotas,
    c: &ClusterRecord,
    name: &str,
    hw: &HardwareReport,
) -> Result<ClusterRecord, Inadmissible> {
    let members = t
        .nodes
        .values()
        .filter(|e| e.record.cluster.as_deref() == Some(c.id.as_str()))
        .count();
    if members >= quotas.max_nodes_per_cluster {
        return Err(Inadmissible::Full(format!(
            "cluster {} is full: {members} nodes, its quota (max_nodes_per_cluster = {})",
            c.name, quotas.max_nodes_per_cluster
        )));
    }
    if let Some(min) = c.min_node {
        let cores = hw.cpu.logical_cores;
        let mem = hw.memory.total_bytes;
        if cores < min.cores || mem < min.memory_bytes {
            return Err(Inadmissible::BelowMinimums(format!(
                "node {name} has {cores} cores and {} MiB of memory; cluster {} needs at least {} cores and {} MiB",
                mem >> 20,
                c.name,
                min.cores,
                min.memory_bytes >> 20
            )));
        }
    }
    let mut c = c.clone();
    if c.mode == ClusterMode::HaPairs {
        let model = hw.model();
        match &c.model {
            Some(m) if *m != model => {
                return Err(Inadmissible::OtherModel(format!(
                    "cluster {} is ha_pairs and holds nodes of model `{m}`; node {name} is model `{model}`",
                    c.name
                )))
            }
            Some(_) => {}
            None => c.model = Some(model),
        }
    }
    Ok(c)
}

pub(super) fn find_cluster_id(
    clusters: &crate::clock::Map<String, ClusterRecord>,
    id_or_name: &str,
) -> Result<String, OpError> {
    if clusters.contains_key(id_or_name) {
        return Ok(id_or_name.to_string());
    }
    clusters
        .values()
        .find(|c| c.name == id_or_name)
        .map(|c| c.id.clone())
        .ok_or_else(|| OpError::NotFound(format!("no cluster with id or name `{id_or_name}`")))
}

pub(super) fn find_node_id(t: &Fleet, id_or_name: &str) -> Result<NodeId, OpError> {
    if let Some(id) = NodeId::parse(id_or_name).filter(|id| t.nodes.contains_key(id)) {
        return Ok(id);
    }
    t.node_named(id_or_name)
        .map(|e| e.record.id.clone())
        .ok_or_else(|| OpError::NotFound(format!("no node with id or name `{id_or_name}`")))
}
