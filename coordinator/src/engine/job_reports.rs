//! What agents report about their jobs (starts, exits, what they hold, logs), and the moves
//! that wait for an old copy to end: reconciled against the job records, never assumed.

use super::core::Engine;
use super::fleet::Fleet;
use super::job_state::{awaits_start, lock, send_in, start_cmd, start_msg, waits_for};
use crate::jobs::model::{Exit, JobRecord};
use crate::jobs::planner::{Event, Reported};
use crate::model::NewEvent;
use crate::store::{Change, StoreError};
use tandem_common::ids::NodeId;
use tandem_common::proto::{AgentMsg, CoordMsg, ExitCause, JobExitReport, StartJob};

impl Engine {
    /// A node's answer to `ReportJobs`: its exits are decided and acknowledged; a start it
    /// was sent, does not hold and has no exit for is sent again with the same token (the
    /// agent answers a start of a copy it holds without starting a second one).
    pub fn jobs_held(
        &self,
        node: &NodeId,
        held: &[tandem_common::proto::HeldJob],
        exited: &[JobExitReport],
    ) {
        self.exits_reported(node, exited);
        let t = self.lock();
        let resend: Vec<(String, u64)> = t
            .in_flight
            .unanswered
            .iter()
            .filter(|((job, token), (n, _))| {
                n == node
                    && !held
                        .iter()
                        .any(|h| h.job_id == *job && h.fencing_token == *token)
                    && !exited
                        .iter()
                        .any(|e| e.job_id == *job && e.fencing_token == *token)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (job, token) in resend {
            let Some(j) = t.jobs.get(&job).filter(|j| awaits_start(j, node, token)) else {
                continue;
            };
            let gpus = j
                .current
                .as_ref()
                .map(|p| p.gpus.clone())
                .unwrap_or_default();
            tracing::warn!(%node, %job, token, "the node does not hold a start it was sent; sending it again");
            let cmd = start_cmd(j, token, &gpus);
            send_in(&t, node, start_msg(&t, cmd));
        }
    }

    pub(super) fn control_of(
        &self,
        node: &NodeId,
    ) -> Option<std::sync::Arc<crate::outbox::Outbox>> {
        self.lock()
            .nodes
            .get(node)
            .and_then(|e| e.live.as_ref().map(|l| l.control.clone()))
    }

    pub(super) fn send_to(&self, node: &NodeId, msg: CoordMsg) {
        send_in(&self.lock(), node, msg)
    }

    /// An agent reports that a copy started.
    pub fn job_started(&self, node: &NodeId, job: String, token: u64) -> Result<(), StoreError> {
        self.job_event(Event::JobStarted {
            job,
            node: node.clone(),
            fencing_token: token,
        })
    }

    /// Copies' ends an agent reported (in its `Hello`, as they happen, or in an answer to
    /// `ReportJobs`): the moves waiting on them are released, then they are decided together,
    /// as one planner batch (see `Planner::handle_all` for why together), and once that is
    /// durable each is acknowledged ([`CoordMsg::ExitAck`]) and the agent forgets it; until
    /// then the agent keeps it and reports it again in its next `Hello`.
    pub fn exits_reported(&self, node: &NodeId, exits: &[JobExitReport]) {
        if exits.is_empty() {
            return;
        }
        self.record_refusals(node, exits);
        let events: Vec<Event> = exits.iter().map(|r| exit_event(node, r)).collect();
        // Decided before a move waiting for one of these copies is released: a copy that ran
        // to its end may end the job (`restart: never`), and then the move's start, checked
        // against the job's current placement, does not go out.
        // Not if they could not be recorded: the agent reports them again (no ack).
        match self.decide(&events) {
            Ok(()) => {
                for r in exits {
                    self.usage.ended(node, &r.job_id, r.fencing_token);
                }
                for r in exits {
                    self.release_waiting(|old_node, old_token, j| {
                        old_node == node && old_token == r.fencing_token && j == r.job_id
                    });
                }
                for r in exits {
                    self.send_to(
                        node,
                        CoordMsg::ExitAck {
                            job_id: r.job_id.clone(),
                            fencing_token: r.fencing_token,
                        },
                    );
                }
            }
            Err(e) => {
                tracing::error!(%node, exits = exits.len(), error = %e, "could not record job exits; the agent reports them again")
            }
        }
    }

    /// A start its node refused (not for want of a lease) says why in the events: the job's
    /// record only shows it as a failure to start. Only for the job's current placement on
    /// this node, so reports about copies a node does not hold cost nothing.
    fn record_refusals(&self, node: &NodeId, exits: &[JobExitReport]) {
        let refused: Vec<&JobExitReport> = exits
            .iter()
            .filter(|r| {
                r.cause == ExitCause::Refused
                    && !r.reason.contains(tandem_common::proto::REFUSED_NO_LEASE)
            })
            .collect();
        if refused.is_empty() {
            return;
        }
        let t = self.lock();
        let changes: Vec<Change> = refused
            .into_iter()
            .filter_map(|r| {
                let j = t.jobs.get(&r.job_id)?;
                let p = j.current.as_ref()?;
                (p.node == *node && p.fencing_token == r.fencing_token).then(|| {
                    let name = t.nodes.get(node).map_or("?", |e| e.record.name.as_str());
                    Change::Event(crate::model::NewEvent {
                        kind: "job",
                        node: Some(node.clone()),
                        message: format!(
                            "job {} ({}): {name} refused its start (token {}): {}",
                            j.spec.name, j.id, r.fencing_token, r.reason
                        ),
                    })
                })
            })
            .collect();
        if changes.is_empty() {
            return;
        }
        if let Err(e) = self.store.apply(changes) {
            tracing::error!(%node, error = %e, "could not record a refused start's reason");
        }
    }

    /// A node registered holding `held` and reporting `exited` (exits it kept on its disk).
    /// In order: those exits are decided and acknowledged, then its `NodeUp`, then a move
    /// waiting for a copy it no longer holds may go on. The exits come first: a copy whose
    /// end the node reports is over, and nothing the node's coming up decides (placing what it
    /// does not hold again, moving what a drain moves off it) may act on it as if it ran.
    /// (Before, the `NodeUp` counted such copies as held: on a draining node the drain moved a
    /// `restart: never` job that had run to its end, and its exit, decided next, was stale.
    /// The simulation found it.)
    pub fn node_reported(
        &self,
        node: &NodeId,
        held: &[tandem_common::proto::HeldJob],
        exited: &[JobExitReport],
    ) {
        // Only exits can place anything before the `NodeUp` (most registrations have none).
        let placed_before = if exited.is_empty() {
            Vec::new()
        } else {
            self.placed_on(node)
        };
        self.exits_reported(node, exited);
        // Placed, or released to start (a wait for an old copy that ended), meanwhile: their
        // starts went out after the report was made.
        let placed_since: Vec<Reported> = if exited.is_empty() {
            Vec::new()
        } else {
            self.placed_on(node)
                .into_iter()
                .filter(|p| !p.1 && !placed_before.contains(p))
                .map(|p| p.0)
                .collect()
        };
        let running: Vec<Reported> = held
            .iter()
            .map(|j| Reported {
                job: j.job_id.clone(),
                fencing_token: j.fencing_token,
            })
            .collect();
        if let Err(e) = self.job_event(Event::NodeUp {
            node: node.clone(),
            running,
            placed_since,
        }) {
            tracing::error!(%node, error = %e, "could not reconcile the node's jobs");
        }
        self.release_unheld(node, held);
    }

    /// The current placements on `node`, and whether each still waits for an old copy (its
    /// start not sent yet).
    pub(super) fn placed_on(&self, node: &NodeId) -> Vec<(Reported, bool)> {
        self.lock()
            .jobs
            .values()
            .filter_map(|j| {
                j.current
                    .as_ref()
                    .filter(|p| p.node == *node)
                    .map(|p| (j, p))
            })
            .map(|(j, p)| {
                (
                    Reported {
                        job: j.id.clone(),
                        fencing_token: p.fencing_token,
                    },
                    p.after.is_some(),
                )
            })
            .collect()
    }

    /// A node was declared down: its jobs are placed again, and moves waiting on its copies go.
    pub fn jobs_on_node_down(&self, node: &NodeId) -> Result<(), StoreError> {
        self.job_event(Event::NodeDown { node: node.clone() })?;
        self.release_waiting(|old_node, _, _| old_node == node);
        Ok(())
    }

    /// A removed node's lease is over: its jobs are placed again (see `Event::NodeRemoved`).
    pub fn jobs_on_node_removed(&self, node: &NodeId) -> Result<(), StoreError> {
        self.job_event(Event::NodeRemoved { node: node.clone() })?;
        self.release_waiting(|old_node, _, _| old_node == node);
        Ok(())
    }

    pub(super) fn release_waiting(&self, matches: impl Fn(&NodeId, u64, &str) -> bool) {
        // Taken, checked, made durable and sent under one lock.
        let mut t = self.lock();
        let w = &mut t.in_flight.waiting;
        let keys: Vec<String> = w
            .iter()
            .filter(|(j, (n, tok, _, _))| matches(n, *tok, j))
            .map(|(j, _)| j.clone())
            .collect();
        let ready: Vec<(NodeId, NodeId, StartJob)> = keys
            .into_iter()
            .filter_map(|k| w.remove(&k))
            .map(|(old_node, _, to, cmd)| (old_node, to, cmd))
            .collect();
        self.release_pending_waits(&mut t, &matches);
        // Only if it is still the job's current placement: checked, made durable (the wait is
        // over: a restarted coordinator must not wait again) and sent.
        let mut left: Vec<NodeId> = Vec::new();
        for (old_node, to, cmd) in ready {
            let Some(j) = t.jobs.get(&cmd.job_id) else {
                continue;
            };
            if j.current.as_ref().map(|p| p.fencing_token) != Some(cmd.fencing_token) {
                continue;
            }
            if j.current.as_ref().is_some_and(|p| p.after.is_some()) {
                let mut j = j.clone();
                if let Some(p) = j.current.as_mut() {
                    p.after = None;
                }
                if let Err(e) = self
                    .store()
                    .apply(vec![Change::PutJob(Box::new(j.clone()))])
                {
                    tracing::error!(job = %cmd.job_id, error = %e, "could not record that a move's old copy ended; its start waits");
                    continue;
                }
                t.jobs.insert(j.id.clone(), j);
                left.push(old_node);
            }
            self.start_sent(&mut t, &to, &cmd);
            send_in(&t, &to, start_msg(&t, cmd));
        }
        // The old copies held their room (GPUs included) on the nodes they left until now
        // (`placement::held_by_jobs`): a pending job may have waited for exactly that room.
        left.retain(|n| {
            t.nodes
                .get(n)
                .is_some_and(|e| crate::cluster::is_live(e.record.state))
        });
        self.plan_again(&mut t, left, "a move's old copy");
    }

    /// Plans `nodes` again (each once): the room that `what` held on them is free, and may be
    /// what a pending job waits for.
    fn plan_again(&self, t: &mut Fleet, mut nodes: Vec<NodeId>, what: &str) {
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            if let Err(e) = self.job_event_locked(t, &Event::NodeOpen { node }) {
                tracing::error!(error = %e, "could not place pending jobs in the room {what} left");
            }
        }
    }

    /// Pending jobs whose left-over wait (`JobRecord::waits_for`) is for a copy that `matches`
    /// (it ended, or its node is down): the wait is over, durably.
    pub(super) fn release_pending_waits(
        &self,
        t: &mut Fleet,
        matches: &impl Fn(&NodeId, u64, &str) -> bool,
    ) {
        let done: Vec<JobRecord> = t
            .jobs
            .values()
            .filter(|j| {
                j.waits_for
                    .as_ref()
                    .is_some_and(|a| matches(&a.node, a.fencing_token, &j.id))
            })
            .map(|j| {
                let mut j = j.clone();
                j.waits_for = None;
                j
            })
            .collect();
        if done.is_empty() {
            return;
        }
        // Stopped jobs whose last copy is over: their name and their room are free now.
        let freed: Vec<(NodeId, String)> = done
            .iter()
            .filter(|j| j.state.is_terminal())
            .filter_map(|j| {
                let old = t.jobs.get(&j.id)?.waits_for.clone()?;
                Some((old.node, format!("job {} ({}) has stopped: its last copy (token {}) has ended; its name is free", j.spec.name, j.id, old.fencing_token)))
            })
            .collect();
        let changes = done
            .iter()
            .map(|j| Change::PutJob(Box::new(j.clone())))
            .chain(freed.iter().map(|(node, message)| {
                Change::Event(NewEvent {
                    kind: "job",
                    node: Some(node.clone()),
                    message: message.clone(),
                })
            }))
            .collect();
        if let Err(e) = self.store().apply(changes) {
            tracing::error!(error = %e, "could not record that a pending job's old copy ended; it still waits");
            return;
        }
        for j in done {
            t.jobs.insert(j.id.clone(), j);
        }
        let nodes = freed.into_iter().map(|(n, _)| n).collect();
        self.plan_again(t, nodes, "a stopped job");
    }

    /// After a restart: the starts that wait for an older copy to end (moves in progress) are
    /// waited for again; one whose old node is gone or down is released at once.
    pub(super) fn rebuild_waiting(&self) {
        let gone: Vec<(NodeId, u64, String)> = {
            let mut t = self.lock();
            let mut w = Vec::new();
            let mut gone = Vec::new();
            let node_gone = |old_node: &NodeId| {
                !(t.nodes.get(old_node).is_some_and(|e| {
                    crate::cluster::is_live(e.record.state)
                        || e.record.state == crate::model::NodeState::Joining
                }) || t
                    .removing
                    .get(old_node)
                    .is_some_and(|r| r.state != crate::model::NodeState::Down))
            };
            // Stopped jobs too: a last copy on a node that is gone has ended.
            for j in t.jobs.values() {
                if let Some(a) = j.waits_for.as_ref().filter(|a| node_gone(&a.node)) {
                    gone.push((a.node.clone(), a.fencing_token, j.id.clone()));
                }
                let (Some((old_node, old_token)), Some(p)) = (waits_for(j), j.current.as_ref())
                else {
                    continue;
                };
                let alive = t.nodes.get(&old_node).is_some_and(|e| {
                    crate::cluster::is_live(e.record.state)
                        || e.record.state == crate::model::NodeState::Joining
                }) || t
                    .removing
                    .get(&old_node)
                    .is_some_and(|r| r.state != crate::model::NodeState::Down);
                if !alive {
                    gone.push((old_node.clone(), old_token, j.id.clone()));
                }
                w.push((
                    j.id.clone(),
                    (
                        old_node,
                        old_token,
                        p.node.clone(),
                        start_cmd(j, p.fencing_token, &p.gpus),
                    ),
                ));
            }
            t.in_flight.waiting.extend(w);
            gone
        };
        for (node, token, job) in gone {
            self.release_waiting(|n, t, j| *n == node && t == token && j == job);
        }
    }

    /// A node registered holding `held`: a move waiting for a copy of it that it does not
    /// hold may go on (its exit, if it had one to report, was decided just before).
    pub(super) fn release_unheld(&self, node: &NodeId, held: &[tandem_common::proto::HeldJob]) {
        // Nothing waits: neither a start (the waiting map) nor a pending job's left-over wait.
        // (Checking the map alone skipped the pending jobs: one waited for ever for a copy
        // its node, back without it after a power cut, no longer held. Found by a soak.)
        {
            let t = self.lock();
            if t.in_flight.waiting.is_empty() && !t.jobs.values().any(|j| j.waits_for.is_some()) {
                return;
            }
        }
        self.release_waiting(|n, t, j| {
            n == node && !held.iter().any(|h| h.job_id == j && h.fencing_token == t)
        });
    }

    /// Asks the node running `job` for the end of its logs. The runtime waits for the answer
    /// (`EngineHandle::job_logs`) and then calls `end_job_logs`.
    pub fn begin_job_logs(
        &self,
        job: &JobRecord,
        lines: u32,
    ) -> Result<(u64, tokio::sync::oneshot::Receiver<AgentMsg>), String> {
        let node = job
            .current
            .as_ref()
            .map(|p| p.node.clone())
            .or_else(|| job.history.last().map(|p| p.node.clone()));
        let Some(node) = node else {
            return Err("the job never ran".into());
        };
        let Some(control) = self.control_of(&node) else {
            return Err(format!("node {node} is not connected"));
        };
        let request = self.clock().random_u64();
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.jobs.logs).insert(request, tx);
        let sent = control
            .push(CoordMsg::TailLogs {
                request,
                job_id: job.id.clone(),
                lines,
            })
            .is_ok();
        if !sent {
            lock(&self.jobs.logs).remove(&request);
            return Err("the node's connection closed".to_string());
        }
        Ok((request, rx))
    }

    /// The log request `request` has ended (answered or not): its waiter is forgotten.
    pub fn end_job_logs(&self, request: u64) {
        lock(&self.jobs.logs).remove(&request);
    }

    /// A log answer arrived.
    pub fn logs_arrived(&self, msg: AgentMsg) {
        if let AgentMsg::Logs { request, .. } = &msg {
            if let Some(tx) = lock(&self.jobs.logs).remove(request) {
                let _ = tx.send(msg);
            }
        }
    }
}

/// The planner event a copy's end is. Only an exit of the job's own doing (or a refused
/// start) counts against its restart policy. A copy its agent fenced, or whose supervisor was
/// signalled or died, did not end the job: it is placed again ([`Event::CopyLost`]), so a
/// `restart: never` job that lost its lease is not marked failed, and one that completed is
/// never run again.
fn exit_event(node: &NodeId, r: &JobExitReport) -> Event {
    {
        let exit = match (r.code, r.signal) {
            // The agent reports an OOM kill as an exit with this reason (the wire's causes
            // predate it).
            _ if r.cause == ExitCause::Exited
                && r.reason == tandem_common::proto::REASON_OOM_KILLED =>
            {
                Exit::OomKilled
            }
            (_, Some(s)) => Exit::Signal(s),
            (Some(c), None) => Exit::Code(c),
            // Refused before it ran: report it as a failure to start.
            (None, None) => Exit::Code(127),
        };
        // A start refused for want of a lease never ran: the node was between leases (a
        // reconnect, or a start that waited past its session). Counting it as the job's exit
        // failed `restart: never` jobs that had not run at all; it is placed again instead.
        let no_lease = r.cause == ExitCause::Refused
            && r.reason.contains(tandem_common::proto::REFUSED_NO_LEASE);
        match r.cause {
            ExitCause::Refused if no_lease => Event::CopyLost {
                job: r.job_id.clone(),
                node: node.clone(),
                fencing_token: r.fencing_token,
                how: "refused by its agent: it held no lease".to_string(),
            },
            ExitCause::Exited | ExitCause::Refused => Event::JobExited {
                job: r.job_id.clone(),
                node: node.clone(),
                fencing_token: r.fencing_token,
                exit,
                by_the_job: r.cause == ExitCause::Exited,
            },
            // A stop the coordinator ordered ends the placement when it is decided, so its
            // exit is about an old copy; one that is still current was not decided here
            // (a decision lost with a crash) and is treated like a loss.
            ExitCause::Fenced | ExitCause::Lost | ExitCause::ShimSignalled | ExitCause::Stopped => {
                Event::CopyLost {
                    job: r.job_id.clone(),
                    node: node.clone(),
                    fencing_token: r.fencing_token,
                    how: match r.cause {
                        ExitCause::Fenced => "fenced by its agent (lease lost)".to_string(),
                        ExitCause::Lost => "lost (its supervisor died)".to_string(),
                        ExitCause::ShimSignalled => {
                            "ended by a signal to its supervisor".to_string()
                        }
                        _ => "stopped".to_string(),
                    },
                }
            }
        }
    }
}
