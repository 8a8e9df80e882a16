//! The detector's decisions carried out: each tick's transitions (suspect, recovered, down,
//! a removal's end) recorded one by one and followed up (close the session, move the jobs);
//! the fence parameters in force; retention.

use super::core::{lock, Engine};
use super::fleet::Live;
use crate::cluster::pairing::{self, PairDecision};
use crate::detector::{Liveness, Transition};
use crate::model::*;
use crate::store::{Change, StoreError};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tandem_common::ids::NodeId;
use tandem_common::wire::CloseCode;

impl Engine {
    /// Records the configured fence parameters as the ones in force once no node may hold
    /// the old ones any more.
    pub(super) fn maybe_record_fence_params(&self, now: Instant) {
        let mut t = self.lock();
        let Some(p) = t.fence_update else { return };
        if lock(&self.detector).legacy_left(now) {
            return;
        }
        // Applied, not waited for: until it is durable a restart reads the older (larger)
        // parameters, which is the safe side.
        match self.store.apply(vec![
            Change::PutFenceParams(p),
            Change::Event(NewEvent {
                kind: "fence",
                node: None,
                message: format!(
                    "every node holds the new fence parameters (lease {} ms, fence kill timeout {} ms); they are the ones in force",
                    p.lease_ms, p.fence_kill_timeout_ms
                ),
            }),
        ]) {
            Ok(_) => {
                tracing::info!(lease_ms = p.lease_ms, fence_kill_timeout_ms = p.fence_kill_timeout_ms, "every node holds the new fence parameters");
                t.fence_update = None;
            }
            Err(err) => tracing::error!(%err, "could not record the fence parameters in force"),
        }
    }

    /// Deletes the finished jobs, spent tokens and finished operations past their retention,
    /// in one durable batch. Run now and then (it reads every token and operation).
    pub fn sweep(&self, now_ms: u64) -> Result<crate::retention::Expired, StoreError> {
        let tokens = self.store.tokens()?;
        let operations = self.store.operations()?;
        let mut t = self.lock();
        let e = crate::retention::expired(
            &self.retention,
            now_ms,
            t.jobs.values(),
            &tokens,
            &operations,
        );
        if e.is_empty() {
            return Ok(e);
        }
        let mut changes: Vec<Change> = Vec::new();
        changes.extend(e.jobs.iter().cloned().map(Change::DeleteJob));
        changes.extend(e.tokens.iter().cloned().map(Change::DeleteToken));
        changes.extend(e.operations.iter().cloned().map(Change::DeleteOperation));
        self.store.apply(changes)?;
        for id in &e.jobs {
            t.jobs.remove(id);
        }
        drop(t);
        let m = &self.metrics;
        m.retention_jobs_deleted
            .fetch_add(e.jobs.len() as u64, Ordering::Relaxed);
        m.retention_tokens_deleted
            .fetch_add(e.tokens.len() as u64, Ordering::Relaxed);
        m.retention_operations_deleted
            .fetch_add(e.operations.len() as u64, Ordering::Relaxed);
        tracing::info!(
            jobs = e.jobs.len(),
            tokens = e.tokens.len(),
            operations = e.operations.len(),
            "deleted finished records past their retention"
        );
        Ok(e)
    }

    /// Runs the detector at `now` and applies what it decides.
    pub fn tick(&self, now: Instant) {
        self.fire_job_timers(now);
        self.maybe_record_fence_params(now);
        self.check_unanswered_starts(now);
        let transitions = lock(&self.detector).handle_tick(now);
        // A wave (a stalled network, a rack losing power) brings thousands of transitions in
        // one tick. Each is recorded and acted on before the next one is even recorded: the
        // job planner's disruption guard counts the downs it has been told of against the
        // nodes it sees, and must see them one by one. Nothing here waits for the disk: what
        // a down leads to (its jobs' starts elsewhere, its connection's close) is queued to
        // outboxes, which send only once the down's batch is durable, so a wave's downs share
        // flushes instead of paying one each.
        let (downs, others): (Vec<_>, Vec<_>) = transitions
            .into_iter()
            .partition(|t| matches!(t, Transition::Down { .. }));
        for tr in others {
            if let Some((_, f)) = self.record_transition(tr) {
                self.follow_up(f);
            }
        }
        for tr in downs {
            if let Some((_, f)) = self.record_transition(tr) {
                self.follow_up(f);
            }
        }
    }

    /// A transition outside the tick (a suspect beat again): recorded, then acted on. What it
    /// leads to (job decisions) is applied after this record and leaves once durable.
    pub(super) fn apply(&self, tr: Transition) {
        if let Some((_, f)) = self.record_transition(tr) {
            self.follow_up(f);
        }
    }

    /// Acts on a recorded transition.
    fn follow_up(&self, f: FollowUp) {
        match f {
            FollowUp::Down { node, live } => {
                if let Some(live) = live {
                    live.control
                        .close_connection(CloseCode::DeclaredDown, "declared down: register again");
                }
                // The node's lease and fence grace are over: its jobs may start elsewhere.
                if let Err(err) = self.jobs_on_node_down(&node) {
                    tracing::error!(node = %node, %err, "could not place the node's jobs again");
                }
            }
            FollowUp::Removed { node } => {
                // Shown to the planner as removed for this one event, then gone.
                if let Err(err) = self.jobs_on_node_removed(&node) {
                    tracing::error!(node = %node, %err, "could not place a removed node's jobs again");
                }
                self.lock().removing.remove(&node);
                self.forget(&node);
                self.usage.forget(&node);
            }
            FollowUp::Recovered { node } => {
                // A failover that waited to see whether this suspect goes down too goes on.
                let event = crate::jobs::planner::Event::Recovered { node: node.clone() };
                if let Err(err) = self.job_event(event) {
                    tracing::error!(node = %node, %err, "could not reconcile jobs after a recovery");
                }
            }
            FollowUp::Nothing => {}
        }
    }

    /// Applies a transition to the table and the store (not yet durable: see the callers).
    fn record_transition(&self, tr: Transition) -> Option<(crate::store::Ticket, FollowUp)> {
        let (node, state, reason) = match &tr {
            Transition::Suspect { node, silent_for } => (
                node,
                NodeState::Suspect,
                format!("no heartbeat for {} ms", silent_for.as_millis()),
            ),
            Transition::Recovered { node } => (node, NodeState::Ready, "heartbeats resumed".into()),
            Transition::Down { node, silent_for } => (
                node,
                NodeState::Down,
                format!(
                    "no heartbeat for {} ms: its lease and fence grace ran out",
                    silent_for.as_millis()
                ),
            ),
        };
        let mut t = lock(&self.table);
        // The detector decided on what it knew when it scanned; the downs of a wave are then
        // recorded one by one, each waiting for its flush. A node that registered again in
        // between (a new session, Alive again) must not be overwritten: that would close its
        // live connection and place its running jobs elsewhere. Registration changes the
        // detector under this same table lock, so what is checked here is what is acted on.
        let expected = match &tr {
            Transition::Suspect { .. } => Liveness::Suspect,
            Transition::Recovered { .. } => Liveness::Alive,
            Transition::Down { .. } => Liveness::Down,
        };
        let now_is = lock(&self.detector).liveness(node);
        if now_is != Some(expected) {
            tracing::info!(node = %node, to = state.as_str(), ?now_is, "state change not recorded: the node registered again (or recovered) since the detector decided");
            return None;
        }
        if let Some(tomb) = t.removing.get_mut(node) {
            if state != NodeState::Down {
                return None;
            }
            // A removed node's lease is over: its removal ends, and its jobs may move.
            let name = tomb.name.clone();
            let ticket = match self.store.apply(vec![
                Change::DeleteNode(node.clone()),
                Change::Event(NewEvent {
                    kind: "node_removed",
                    node: Some(node.clone()),
                    message: format!("node {name}: removal complete, its lease is over ({reason}); its jobs may run elsewhere"),
                }),
            ]) {
                Ok((_, ticket)) => ticket,
                Err(err) => {
                    tracing::error!(node = %node, %err, "could not record the end of a removal");
                    return None;
                }
            };
            tomb.state = NodeState::Down;
            tomb.state_reason = reason;
            tracing::info!(node = %node, %name, "removal complete: the node's lease is over");
            return Some((ticket, FollowUp::Removed { node: node.clone() }));
        }
        let current = t.nodes.get(node).map(|e| e.record.clone())?;
        if current.state == state || current.state == NodeState::Left {
            return None;
        }
        let mut rec = current;
        rec.state = state;
        rec.state_reason = reason.clone();
        rec.state_since_ms = self.clock.unix_ms();
        let mut changes = vec![
            Change::PutNode(Box::new(rec.clone())),
            Change::Event(NewEvent {
                kind: "node_state",
                node: Some(node.clone()),
                message: format!("node {} is {}: {reason}", rec.name, state.as_str()),
            }),
        ];
        // Only `down` changes a pair: a suspect node may still hold its lease.
        let plan = if state == NodeState::Down {
            let now_ms = rec.state_since_ms;
            let silent = match &tr {
                Transition::Down { silent_for, .. } => silent_for.as_millis(),
                _ => 0,
            };
            self.plan_pairs(&t, &rec, false, now_ms, |nodes, pairs, _| {
                let mut d = pairing::on_node_down(nodes, pairs, node, now_ms);
                for x in &mut d {
                    if let PairDecision::Promote { reason, .. } = x {
                        reason.push_str(&format!("; {silent} ms after its last heartbeat"));
                    }
                }
                d
            })
        } else {
            None
        };
        if let Some((_, p)) = &plan {
            changes.extend(p.changes.iter().cloned());
        }
        let ticket = match self.store.apply(changes) {
            Ok((_, ticket)) => ticket,
            // Nothing is acted on without a record. The detector has moved on and refuses
            // this node's beats, so the node will register again, which is recorded.
            Err(err) => {
                tracing::error!(node = %node, %err, "could not record a state change");
                return None;
            }
        };
        if let Transition::Down { silent_for, .. } = &tr {
            self.metrics
                .nodes_declared_down
                .fetch_add(1, Ordering::Relaxed);
            self.metrics.detection.observe(*silent_for);
        }
        tracing::info!(node = %node, name = %rec.name, state = state.as_str(), %reason, "node state changed");
        if let Some((cid, p)) = plan {
            super::pairs::install(&mut t, &cid, p);
        }
        let mut live = None;
        if let Some(e) = t.nodes.get_mut(node) {
            e.record = rec;
            if state == NodeState::Down {
                live = e.live.take();
            }
        }
        let follow = match tr {
            Transition::Down { .. } => FollowUp::Down {
                node: node.clone(),
                live,
            },
            Transition::Recovered { .. } => FollowUp::Recovered { node: node.clone() },
            Transition::Suspect { .. } => FollowUp::Nothing,
        };
        Some((ticket, follow))
    }
}

/// What is left to do once a transition is recorded.
enum FollowUp {
    /// Close the node's connection and move its jobs.
    Down {
        /// The node.
        node: NodeId,
        /// Its connection, taken from the table.
        live: Option<Live>,
    },
    /// A removed node's lease is over: place its jobs again, then forget it.
    Removed {
        /// The node.
        node: NodeId,
    },
    /// Let held failovers go on.
    Recovered {
        /// The node.
        node: NodeId,
    },
    /// Shown only.
    Nothing,
}
