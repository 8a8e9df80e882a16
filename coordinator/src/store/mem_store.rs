//! An in-memory [`StateStore`] with crash semantics, for simulations and tests.
//!
//! Batches are applied in order to a working copy, as sled applies them, and become durable
//! only when a ticket covering them is waited for ([`StateStore::wait_durable`] or
//! [`StateStore::durable`]). [`MemStore::crash`] then gives the store a restarted coordinator
//! would find: every durable batch, none of the others. That is exactly the property the
//! fencing argument needs from the disk ("durable before acted on"), so a simulation can crash
//! the coordinator between any persist and its send and check that nothing acted on was lost.
//!
//! Time does not pass here and nothing blocks: a wait makes the batches durable at once.

use super::{Change, StateStore, StoreError, Ticket};
use crate::jobs::model::JobRecord;
use crate::model::{
    ClusterRecord, Event, FenceParams, NodeRecord, OperationRecord, PairRecord, TokenRecord,
};
use std::collections::BTreeMap;
use std::sync::Mutex;
use tandem_common::ids::NodeId;

/// Everything a store holds.
#[derive(Clone, Debug, Default)]
struct Tables {
    nodes: BTreeMap<String, NodeRecord>,
    tokens: BTreeMap<String, TokenRecord>,
    clusters: BTreeMap<String, ClusterRecord>,
    pairs: BTreeMap<String, PairRecord>,
    operations: BTreeMap<String, OperationRecord>,
    jobs: BTreeMap<String, JobRecord>,
    events: BTreeMap<u64, Event>,
    fence: Option<FenceParams>,
    restart_hold: Option<crate::model::RestartHold>,
    node_holds: std::collections::BTreeMap<NodeId, crate::model::RestartHold>,
    serial: u64,
    event_seq: u64,
}

impl Tables {
    fn apply(&mut self, changes: &[Change], now_ms: u64) -> Vec<Event> {
        let mut recorded = Vec::new();
        for c in changes {
            match c {
                Change::PutNode(n) => {
                    self.nodes.insert(n.id.as_str().to_string(), (**n).clone());
                }
                Change::DeleteNode(id) => {
                    self.nodes.remove(id.as_str());
                }
                Change::PutToken(t) => {
                    self.tokens.insert(t.id.clone(), t.clone());
                }
                Change::DeleteToken(id) => {
                    self.tokens.remove(id);
                }
                Change::PutCluster(c) => {
                    self.clusters.insert(c.id.clone(), (**c).clone());
                }
                Change::DeleteCluster(id) => {
                    self.clusters.remove(id);
                }
                Change::PutPair(p) => {
                    self.pairs.insert(p.id.clone(), p.clone());
                }
                Change::DeletePair(id) => {
                    self.pairs.remove(id);
                }
                Change::PutOperation(o) => {
                    self.operations.insert(o.id.clone(), o.clone());
                }
                Change::DeleteOperation(id) => {
                    self.operations.remove(id);
                }
                Change::PutJob(j) => {
                    self.jobs.insert(j.id.clone(), (**j).clone());
                }
                Change::DeleteJob(id) => {
                    self.jobs.remove(id);
                }
                Change::PutFenceParams(f) => self.fence = Some(*f),
                Change::PutRestartHold(h) => self.restart_hold = h.clone(),
                Change::PutNodeHold(n, h) => match h {
                    Some(h) => {
                        self.node_holds.insert(n.clone(), h.clone());
                    }
                    None => {
                        self.node_holds.remove(n);
                    }
                },
                Change::Event(e) => {
                    self.event_seq += 1;
                    let ev = Event {
                        seq: self.event_seq,
                        time_ms: now_ms,
                        kind: e.kind.to_string(),
                        node: e.node.as_ref().map(|n| n.0.clone()),
                        message: e.message.clone(),
                    };
                    self.events.insert(ev.seq, ev.clone());
                    recorded.push(ev);
                }
            }
        }
        recorded
    }
}

#[derive(Debug, Default)]
struct State {
    /// What the coordinator sees: every batch applied so far.
    working: Tables,
    /// What survives a crash.
    durable: Tables,
    /// Batches applied but not durable yet, with their tickets, oldest first.
    pending: Vec<(Ticket, Vec<Change>, u64)>,
    /// The last ticket handed out.
    applied: Ticket,
    /// Serials reserved and not yet covered by a durable batch.
    pending_serial: Option<(Ticket, u64)>,
    /// A deliberate bug for the simulation: flushes are acknowledged and not done.
    lying: bool,
}

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemStore {
    state: Mutex<State>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store with a deliberate bug: it says a batch is durable without making it so, as a
    /// coordinator that acted before its persist had finished would. Only for showing that the
    /// simulation catches that bug; never for running a coordinator.
    pub fn with_lying_flush() -> Self {
        let s = Self::default();
        s.state().lying = true;
        s
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store a coordinator restarted after a crash at this moment would open: what was
    /// durable, nothing else.
    pub fn crash(&self) -> MemStore {
        let s = self.state();
        MemStore {
            state: Mutex::new(State {
                working: s.durable.clone(),
                durable: s.durable.clone(),
                pending: Vec::new(),
                applied: s.applied,
                pending_serial: None,
                lying: s.lying,
            }),
        }
    }

    /// How many batches are applied and not yet durable.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    fn make_durable(&self, ticket: Ticket) {
        let mut s = self.state();
        if s.lying {
            return;
        }
        let due: Vec<_> = {
            let split = s.pending.partition_point(|(t, _, _)| *t <= ticket);
            s.pending.drain(..split).collect()
        };
        for (_, changes, now_ms) in due {
            s.durable.apply(&changes, now_ms);
        }
        if let Some((t, serial)) = s.pending_serial {
            if t <= ticket {
                s.durable.serial = s.durable.serial.max(serial);
                s.pending_serial = None;
            }
        }
    }
}

impl StateStore for MemStore {
    fn apply(&self, changes: Vec<Change>) -> Result<(Vec<Event>, Ticket), StoreError> {
        let now_ms = tandem_common::time::unix_ms();
        let mut s = self.state();
        let events = s.working.apply(&changes, now_ms);
        s.applied += 1;
        let ticket = s.applied;
        s.pending.push((ticket, changes, now_ms));
        Ok((events, ticket))
    }

    fn wait_durable(&self, ticket: Ticket) {
        self.make_durable(ticket);
    }

    fn last_ticket(&self) -> Ticket {
        self.state().applied
    }

    fn durable(
        &self,
        ticket: Ticket,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.make_durable(ticket);
        Box::pin(std::future::ready(()))
    }

    fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self.state().working.nodes.get(id.as_str()).cloned())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(self.state().working.nodes.values().cloned().collect())
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.state().working.tokens.get(id).cloned())
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        Ok(self
            .state()
            .working
            .events
            .range(after + 1..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let s = self.state();
        let mut v: Vec<Event> = s
            .working
            .events
            .values()
            .rev()
            .take(limit)
            .cloned()
            .collect();
        v.reverse();
        Ok(v)
    }

    fn reserve_serial(&self) -> Result<(u64, Ticket), StoreError> {
        let mut s = self.state();
        s.working.serial = s.working.serial.max(1) + 1;
        s.applied += 1;
        let (serial, ticket) = (s.working.serial, s.applied);
        s.pending_serial = Some((ticket, serial));
        Ok((serial, ticket))
    }

    fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        Ok(self.state().working.clusters.values().cloned().collect())
    }

    fn pairs(&self) -> Result<Vec<PairRecord>, StoreError> {
        Ok(self.state().working.pairs.values().cloned().collect())
    }

    fn operation(&self, id: &str) -> Result<Option<OperationRecord>, StoreError> {
        Ok(self.state().working.operations.get(id).cloned())
    }

    fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        Ok(self.state().working.jobs.values().cloned().collect())
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(self.state().working.tokens.values().cloned().collect())
    }

    fn operations(&self) -> Result<Vec<OperationRecord>, StoreError> {
        Ok(self.state().working.operations.values().cloned().collect())
    }

    fn fence_params(&self) -> Result<Option<FenceParams>, StoreError> {
        Ok(self.state().working.fence)
    }

    fn restart_hold(&self) -> Result<Option<crate::model::RestartHold>, StoreError> {
        Ok(self.state().working.restart_hold.clone())
    }

    fn node_holds(&self) -> Result<Vec<(NodeId, crate::model::RestartHold)>, StoreError> {
        Ok(self
            .state()
            .working
            .node_holds
            .iter()
            .map(|(n, h)| (n.clone(), h.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{test_node, NewEvent};

    fn put(name: &str) -> (NodeRecord, Change) {
        let n = test_node(name);
        (n.clone(), Change::PutNode(Box::new(n)))
    }

    #[test]
    fn what_was_not_made_durable_is_lost_in_a_crash() {
        let s = MemStore::new();
        let (a, ca) = put("a");
        let (b, cb) = put("b");
        s.commit(vec![ca]).unwrap();
        let (_, t) = s.apply(vec![cb]).unwrap();
        // The coordinator sees both ...
        assert_eq!(s.nodes().unwrap().len(), 2);
        assert_eq!(s.pending(), 1);
        // ... a crash keeps only the durable one.
        let after = s.crash();
        assert_eq!(after.nodes().unwrap(), vec![a.clone()]);
        // Made durable before the crash, it survives.
        s.wait_durable(t);
        let after = s.crash();
        let mut names: Vec<_> = after.nodes().unwrap().into_iter().map(|n| n.name).collect();
        names.sort();
        assert_eq!(names, vec![a.name, b.name]);
    }

    #[test]
    fn a_ticket_covers_every_batch_before_it_and_none_after() {
        let s = MemStore::new();
        let (_, c1) = put("one");
        let (_, c2) = put("two");
        let (_, c3) = put("three");
        let (_, _t1) = s.apply(vec![c1]).unwrap();
        let (_, t2) = s.apply(vec![c2]).unwrap();
        let (_, _t3) = s.apply(vec![c3]).unwrap();
        s.wait_durable(t2);
        let mut names: Vec<_> = s
            .crash()
            .nodes()
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        names.sort();
        assert_eq!(names, vec!["one", "two"]);
    }

    #[test]
    fn deletes_events_and_serials_follow_the_same_rule() {
        let s = MemStore::new();
        let (a, ca) = put("a");
        s.commit(vec![
            ca,
            Change::Event(NewEvent {
                kind: "node_joined",
                node: None,
                message: "a joined".into(),
            }),
        ])
        .unwrap();
        let (serial, t) = s.reserve_serial().unwrap();
        s.apply(vec![Change::DeleteNode(a.id.clone())]).unwrap();
        assert!(s.nodes().unwrap().is_empty());
        let after = s.crash();
        assert_eq!(
            after.nodes().unwrap().len(),
            1,
            "the delete was not durable"
        );
        assert_eq!(after.recent_events(10).unwrap().len(), 1);
        // The serial was not durable either: the restarted store hands it out again, which
        // is fine because nothing used it durably. Once durable, it never comes back.
        assert_eq!(after.reserve_serial().unwrap().0, serial);
        s.wait_durable(t);
        assert!(s.crash().reserve_serial().unwrap().0 > serial);
    }
}
