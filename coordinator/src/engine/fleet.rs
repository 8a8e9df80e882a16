//! The fleet's tables: every node (with its live session's outbox, never its connection),
//! cluster, pair and job, the nodes being removed, the job commands in flight, the job
//! planner's memory and the fence parameters waiting to be recorded. Plain data, owned by the [`Engine`] (`super::core`) and changed only under its lock: what a
//! decision checks and what it changes are one state (before, the commands in flight had
//! locks of their own, taken in a set order beside the table's).
//!
//! [`Engine`]: super::Engine

use crate::clock::Map as HashMap;
use crate::model::{ClusterRecord, NodeRecord, PairRecord};
use std::sync::Arc;
use tandem_common::ids::NodeId;
use tandem_common::proto::StartJob;

/// A start that waits out its restart backoff. It carries the placement's token and is checked
/// again when it fires, under the fleet lock it is sent under: a stop (or any other decision)
/// made during the backoff ends or replaces that placement, and the timer then does nothing.
/// (Before, a task slept and sent the start blindly: a stop during the backoff was undone.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DelayedStart {
    pub(crate) node: NodeId,
    pub(crate) job: String,
    pub(crate) token: u64,
}

/// The job commands in flight, kept in the fleet table ([`Fleet`]) and so changed only under
/// its lock, with the job records they are checked against.
#[derive(Default)]
pub struct InFlight {
    /// Delayed starts by due time (and a sequence number, to keep equal times apart).
    pub(crate) timers: std::collections::BTreeMap<(std::time::Instant, u64), DelayedStart>,
    pub(crate) timer_seq: u64,
    /// Starts waiting for an old copy to end, by job.
    pub(crate) waiting: HashMap<String, (NodeId, u64, NodeId, StartJob)>,
    /// Starts sent and not yet answered, by `(job, token)`: where, and when sent (or last
    /// asked about). See [`Engine::check_unanswered_starts`](super::Engine::check_unanswered_starts).
    pub(crate) unanswered: HashMap<(String, u64), (NodeId, std::time::Instant)>,
}

/// A node's live connection.
#[derive(Clone, Debug)]
pub struct Live {
    /// The connection's session number.
    pub session: u64,
    /// Commands to send on its control stream (never dropped: see `outbox`), and the way to
    /// close its connection: the connection itself belongs to the session task.
    pub control: Arc<crate::outbox::Outbox>,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct NodeEntry {
    /// What is stored.
    pub record: NodeRecord,
    /// Its connection, if it has one now.
    pub live: Option<Live>,
}

/// Everything membership decides on, under one lock so that decisions are serialised.
pub struct Fleet {
    /// Nodes by id.
    pub nodes: HashMap<NodeId, NodeEntry>,
    /// Clusters by id.
    pub clusters: HashMap<String, ClusterRecord>,
    /// Pairs by id.
    pub pairs: HashMap<String, PairRecord>,
    /// Jobs by id.
    pub jobs: HashMap<String, crate::jobs::model::JobRecord>,
    /// Nodes removed while they may still hold a lease, by id: out of the node table (their
    /// certificate is revoked, their name is free), kept as tombstones in the store, and shown
    /// to the job planner as live and draining until the detector declares them down.
    pub removing: HashMap<NodeId, NodeRecord>,
    /// The job commands in flight (delayed starts, starts waiting for an old copy, starts not
    /// answered yet): under the same lock as the records they are checked against, so a
    /// check and what it acts on never see two states.
    pub(crate) in_flight: InFlight,
    /// The job planner: what it remembers between decisions (failover holds, the downs its
    /// disruption guard counts). Only ever asked under this lock, with the tables it decides
    /// on.
    pub(crate) planner: crate::jobs::planner::Planner,
    /// The configured fence parameters, to be recorded as the ones in force once no node may
    /// hold older ones (see the detector's "Fence parameters"); `None` once recorded.
    pub(crate) fence_update: Option<crate::model::FenceParams>,
    /// Node ids by name (names are unique), kept with `nodes` by [`Fleet::insert_node`] and
    /// [`Fleet::remove_node`]: a join or a look-up by name must not compare every name of a
    /// large fleet (at 25,000 nodes those scans were a fifth of a join storm's CPU).
    names: HashMap<String, NodeId>,
}

impl Fleet {
    /// Empty tables around `planner` (made with the coordinator's lease: there is no default
    /// one, so no table can be made with a planner that has the wrong lease).
    pub fn new(planner: crate::jobs::planner::Planner) -> Self {
        Self {
            nodes: HashMap::default(),
            clusters: HashMap::default(),
            pairs: HashMap::default(),
            jobs: HashMap::default(),
            removing: HashMap::default(),
            in_flight: InFlight::default(),
            planner,
            fence_update: None,
            names: HashMap::default(),
        }
    }

    /// Adds (or replaces) a node, keeping the name index.
    pub fn insert_node(&mut self, entry: NodeEntry) {
        if let Some(old) = self.nodes.get(&entry.record.id) {
            if old.record.name != entry.record.name {
                self.names.remove(&old.record.name);
            }
        }
        self.names
            .insert(entry.record.name.clone(), entry.record.id.clone());
        self.nodes.insert(entry.record.id.clone(), entry);
    }

    /// Removes a node, keeping the name index.
    pub fn remove_node(&mut self, id: &NodeId) -> Option<NodeEntry> {
        let e = self.nodes.remove(id)?;
        if self.names.get(&e.record.name) == Some(id) {
            self.names.remove(&e.record.name);
        }
        Some(e)
    }

    /// The node named `name`.
    pub fn node_named(&self, name: &str) -> Option<&NodeEntry> {
        self.names.get(name).and_then(|id| self.nodes.get(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_index_follows_inserts_replacements_and_removals() {
        let mut f = Fleet::new(crate::jobs::planner::Planner::new(1000));
        let a = crate::model::test_node("a");
        let id = a.id.clone();
        f.insert_node(NodeEntry {
            record: a.clone(),
            live: None,
        });
        assert_eq!(f.node_named("a").map(|e| &e.record.id), Some(&id));
        // Replaced under another name: the old name is free.
        let mut b = a;
        b.name = "b".into();
        f.insert_node(NodeEntry {
            record: b,
            live: None,
        });
        assert!(f.node_named("a").is_none());
        assert_eq!(f.node_named("b").map(|e| &e.record.id), Some(&id));
        assert!(f.remove_node(&id).is_some());
        assert!(f.node_named("b").is_none() && f.nodes.is_empty());
        assert!(f.remove_node(&id).is_none());
    }
}
