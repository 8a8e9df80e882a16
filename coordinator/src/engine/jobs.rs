//! Jobs at the engine: the planner's decisions (`jobs::planner`) made durable, then
//! carried out.
//!
//! # Order of things (the fencing argument's coordinator side)
//! Every decision is applied to the job records and to the store — with its new fencing token
//! — under the fleet lock, and its commands are queued to the sessions' outboxes under the same
//! lock; an outbox writes a command only once every batch applied before it is on disk (see
//! `outbox`). So a decision is durable *before* any command leaves for an agent, and nobody
//! waits for the disk under the lock. A `kill -9` of the coordinator at
//! any point therefore either loses a decision that nobody acted on, or keeps one whose token
//! the agents will honour; never a start that the store does not know about. A node's jobs are
//! placed again only after the detector declared it `down`, which happens only after its lease
//! and fence grace ran out: by then its per-job supervisors have killed every copy (see the
//! agent's `supervisor` module).
//!
//! A move (drain, failback) stops the old copy first and starts the new one only when the old
//! copy's exit is reported, or its node is declared down.

use super::core::Engine;
use super::fleet::{DelayedStart, Fleet};
use super::job_state::{
    awaits_start, send_in, start_cmd, start_msg, waits_for, Outgoing, SubmitError, START_DEADLINE,
    USER_KILL_TIMEOUT_MS,
};
use crate::jobs::decision::Decision;
use crate::jobs::model::JobRecord;
use crate::jobs::placement::NodeView;
use crate::jobs::planner::{Event, Planner, View};
use crate::model::NewEvent;
use crate::store::{Change, StoreError};
use std::time::Duration;
use tandem_common::ids::NodeId;
use tandem_common::proto::{CoordMsg, StartJob};

impl Engine {
    /// Feeds one event to the planner, makes its decisions durable, and sends the commands.
    pub fn job_event(&self, event: Event) -> Result<(), StoreError> {
        self.job_event_locked(&mut self.lock(), &event)
    }

    /// [`Engine::job_event`] for a caller that holds the fleet lock and has just changed the
    /// table the event is about: decided under the same lock as the change (check and act
    /// under one state).
    pub(super) fn job_event_locked(&self, t: &mut Fleet, event: &Event) -> Result<(), StoreError> {
        // The planner's view holds every node: building it costs O(fleet). In a fleet
        // without jobs, a node coming up (or back) holding nothing, going down, or opening
        // to work cannot lead to any decision; in a join storm, or a mass failure, of
        // thousands of nodes that cost would be paid once per node (seconds of CPU at 5,000
        // nodes). The guard's memory of recent downs only matters to jobs, and a job
        // submitted later is placed on live nodes only.
        let idle = match event {
            Event::NodeUp { running, .. } => running.is_empty(),
            Event::Recovered { .. }
            | Event::NodeDown { .. }
            | Event::NodeRemoved { .. }
            | Event::NodeOpen { .. } => true,
            _ => false,
        };
        if idle && t.jobs.is_empty() {
            return Ok(());
        }
        let out = self.run_planner(t, |p, v, now| p.handle(v, event, now))?;
        self.dispatch(t, out);
        Ok(())
    }

    /// Feeds `events` to the planner as one batch, makes its decisions durable, and sends
    /// the commands.
    pub(super) fn decide(&self, events: &[Event]) -> Result<(), StoreError> {
        let mut t = self.lock();
        let out = self.run_planner(&mut t, |p, v, now| p.handle_all(v, events, now))?;
        self.dispatch(&mut t, out);
        Ok(())
    }

    /// Runs the planner's start-up reconciliation (after a coordinator restart).
    pub fn reconcile_jobs(&self) -> Result<(), StoreError> {
        self.rebuild_waiting();
        let mut t = self.lock();
        let out = self.run_planner(&mut t, |p, v, now| p.reconcile(v, now))?;
        self.dispatch(&mut t, out);
        Ok(())
    }

    /// Operator override of the disruption guard for a cluster.
    pub fn force_failover(&self, cluster: &str) -> Result<(), StoreError> {
        let mut t = self.lock();
        let out = self.run_planner(&mut t, |p, v, now| p.force_failover(v, cluster, now))?;
        self.dispatch(&mut t, out);
        Ok(())
    }

    /// Records a new job and places it. The name is checked under the same lock the job is
    /// inserted under: two submits of one name at once cannot both pass. A name stays taken
    /// after a stop until the stopped job's last copy has ended.
    pub fn submit_job(&self, job: JobRecord) -> Result<(), SubmitError> {
        {
            let mut t = self.lock();
            for j in t.jobs.values().filter(|j| j.spec.name == job.spec.name) {
                if !j.state.is_terminal() {
                    return Err(SubmitError::NameTaken {
                        name: job.spec.name.clone(),
                        state: j.state.as_str(),
                        id: j.id.clone(),
                    });
                }
                if let Some(c) = j.stopping() {
                    return Err(SubmitError::NameStopping {
                        name: job.spec.name.clone(),
                        id: j.id.clone(),
                        node: t
                            .nodes
                            .get(&c.node)
                            .map_or_else(|| c.node.to_string(), |e| e.record.name.clone()),
                        token: c.fencing_token,
                    });
                }
            }
            self.store().apply(vec![
                Change::PutJob(Box::new(job.clone())),
                Change::Event(NewEvent {
                    kind: "job",
                    node: None,
                    message: format!("job {} ({}) submitted", job.spec.name, job.id),
                }),
            ])?;
            t.jobs.insert(job.id.clone(), job.clone());
        }
        Ok(self.job_event(Event::Submitted { job: job.id })?)
    }

    pub(super) fn run_planner(
        &self,
        t: &mut Fleet,
        decide: impl FnOnce(&mut Planner, &View, u64) -> Vec<Decision>,
    ) -> Result<Vec<Outgoing>, StoreError> {
        let now = self.clock().unix_ms();
        let clusters: Vec<_> = t.clusters.values().cloned().collect();
        let nodes: Vec<NodeView> = t
            .nodes
            .values()
            .map(|e| {
                let mut v = NodeView::from_record(&e.record);
                // An agent older than job users would run a job that names one as itself.
                v.named_users = e.live.as_ref().is_none_or(|l| {
                    l.control.protocol() >= tandem_common::proto::LIMITS_PROTOCOL_VERSION
                });
                v
            })
            // A node being removed may still run its jobs until its lease is over: the
            // planner sees it as live and draining (its jobs move only once their copies
            // there have ended, or the node is down), and places nothing new on it.
            .chain(t.removing.values().map(|r| {
                let mut v = NodeView::from_record(r);
                v.draining = true;
                v
            }))
            .collect();
        let pairs: Vec<_> = t.pairs.values().cloned().collect();
        let mut jobs: Vec<JobRecord> = t.jobs.values().cloned().collect();
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        let decisions = {
            let view = View {
                clusters: &clusters,
                nodes: &nodes,
                pairs: &pairs,
                jobs: &jobs,
            };
            decide(&mut t.planner, &view, now)
        };
        if decisions.is_empty() {
            return Ok(Vec::new());
        }
        let before = jobs.clone();
        let mut changes = Vec::new();
        let mut out = Vec::new();
        for d in &decisions {
            let applied = d.apply(&mut jobs, now);
            let job = |id: &str| jobs.iter().find(|j| j.id == id);
            let name = |id: &str| {
                job(id)
                    .map(|j| j.spec.name.clone())
                    .unwrap_or_else(|| id.to_string())
            };
            match d {
                Decision::Ignore { .. } | Decision::Keep { .. } => {
                    tracing::debug!(reason = d.reason(), "job decision without effect");
                    continue;
                }
                Decision::Hold {
                    cluster, reason, ..
                }
                | Decision::Resume { cluster, reason } => {
                    changes.push(Change::Event(NewEvent {
                        kind: "failover_guard",
                        node: None,
                        message: format!("cluster {cluster}: {reason}"),
                    }));
                    continue;
                }
                _ => {}
            }
            if !applied && !matches!(d, Decision::Stop { .. } | Decision::KillStale { .. }) {
                tracing::debug!(reason = d.reason(), "stale job decision");
                continue;
            }
            let (id, node) = match d {
                Decision::KillStale { job, node, .. } => (job.clone(), Some(node.clone())),
                Decision::Start { job, to, .. }
                | Decision::Replace { job, to, .. }
                | Decision::Move { job, to, .. }
                | Decision::Restart { job, to, .. } => (job.clone(), Some(to.node.clone())),
                Decision::Stop { job, node, .. } => (job.clone(), node.clone()),
                Decision::Started { job, .. }
                | Decision::Pending { job, .. }
                | Decision::Failed { job, .. }
                | Decision::Completed { job, .. } => (job.clone(), None),
                _ => continue,
            };
            // A kill of a copy of a job there is no record of (never submitted, or deleted by
            // retention) is logged, not recorded: a node reporting starts of made-up jobs must
            // not push real events out of the store's window, nor cost a write.
            if matches!(d, Decision::KillStale { .. }) && job(&id).is_none() {
                tracing::info!(job = %id, node = ?node, reason = d.reason(), "killing a copy of a job with no record");
            } else {
                changes.push(Change::Event(NewEvent {
                    kind: "job",
                    node,
                    message: format!("job {}: {}", name(&id), d.reason()),
                }));
            }
            match d {
                Decision::Start {
                    job,
                    to,
                    fencing_token,
                    ..
                }
                | Decision::Replace {
                    job,
                    to,
                    fencing_token,
                    ..
                } => {
                    if let Some(j) = jobs.iter().find(|j| j.id == *job) {
                        out.push(Outgoing::Start {
                            node: to.node.clone(),
                            cmd: start_cmd(j, *fencing_token, &to.gpus),
                            delay: Duration::ZERO,
                            // A replacement of a start still waiting for an older copy waits
                            // for it too (the record carries the wait).
                            after: waits_for(j),
                        });
                    }
                }
                Decision::Restart {
                    job,
                    to,
                    fencing_token,
                    backoff_ms,
                    ..
                } => {
                    if let Some(j) = jobs.iter().find(|j| j.id == *job) {
                        out.push(Outgoing::Start {
                            node: to.node.clone(),
                            cmd: start_cmd(j, *fencing_token, &to.gpus),
                            delay: Duration::from_millis(*backoff_ms),
                            after: None,
                        });
                    }
                }
                Decision::Move {
                    job,
                    from,
                    old_token,
                    to,
                    fencing_token,
                    ..
                } => {
                    out.push(Outgoing::Stop {
                        node: from.clone(),
                        job: job.clone(),
                        token: *old_token,
                        kill_timeout_ms: USER_KILL_TIMEOUT_MS,
                    });
                    if let Some(j) = jobs.iter().find(|j| j.id == *job) {
                        out.push(Outgoing::Start {
                            node: to.node.clone(),
                            cmd: start_cmd(j, *fencing_token, &to.gpus),
                            delay: Duration::ZERO,
                            // The record carries the wait: the old copy, or the older copy
                            // the old placement itself still waited for.
                            after: waits_for(j).or_else(|| Some((from.clone(), *old_token))),
                        });
                    }
                }
                Decision::Stop {
                    job,
                    node: Some(n),
                    fencing_token: Some(tok),
                    ..
                } => out.push(Outgoing::Stop {
                    node: n.clone(),
                    job: job.clone(),
                    token: *tok,
                    kill_timeout_ms: USER_KILL_TIMEOUT_MS,
                }),
                Decision::KillStale {
                    node,
                    job,
                    fencing_token,
                    ..
                } => out.push(Outgoing::Stop {
                    node: node.clone(),
                    job: job.clone(),
                    token: *fencing_token,
                    kill_timeout_ms: self.jobs.fence_kill_timeout_ms,
                }),
                _ => {}
            }
        }
        for j in &jobs {
            if !before.iter().any(|b| b == j) {
                changes.insert(0, Change::PutJob(Box::new(j.clone())));
            }
        }
        // Applied here, under the fleet lock, and never waited for: a batch that changes a job
        // is durable before any command leaves, because the commands are queued to the
        // sessions' outboxes, which send only once every batch applied before them is durable
        // (see `outbox`). Nobody waits for the disk under the lock, and the flusher thread
        // covers many decisions with one flush.
        if !changes.is_empty() {
            self.store().apply(changes)?;
        }
        for j in jobs {
            t.jobs.insert(j.id.clone(), j);
        }
        Ok(out)
    }

    /// Queues decided commands to the agents that hold a live connection, under the fleet lock
    /// `t` they were decided under: a session's commands leave in the order of the decisions
    /// (two decisions dispatched after the lock was released could overtake each other: a
    /// stop queued before the start it stops). A command for a node without a session is
    /// not queued: when the node registers again, the planner sees what it holds.
    pub(super) fn dispatch(&self, t: &mut Fleet, out: Vec<Outgoing>) {
        for o in out {
            match o {
                Outgoing::Start {
                    node,
                    cmd,
                    after: Some((old_node, old_token)),
                    ..
                } => {
                    t.in_flight
                        .waiting
                        .insert(cmd.job_id.clone(), (old_node, old_token, node, cmd));
                }
                Outgoing::Start {
                    node,
                    cmd,
                    delay,
                    after: None,
                } if !delay.is_zero() => {
                    let seq = t.in_flight.timer_seq;
                    t.in_flight.timer_seq += 1;
                    t.in_flight.timers.insert(
                        (self.clock().now() + delay, seq),
                        DelayedStart {
                            node,
                            job: cmd.job_id,
                            token: cmd.fencing_token,
                        },
                    );
                }
                Outgoing::Start { node, cmd, .. } => {
                    self.start_sent(t, &node, &cmd);
                    send_in(t, &node, start_msg(t, cmd))
                }
                Outgoing::Stop {
                    node,
                    job,
                    token,
                    kill_timeout_ms,
                } => {
                    // A start of that copy still queued is taken back: it must not begin
                    // after the stop (the simulation found a copy beginning just after the
                    // user was told the job was stopped). The stop still goes: the node
                    // answers that it holds no such copy, and the placement ends.
                    if let Some(live) = t.nodes.get(&node).and_then(|e| e.live.as_ref()) {
                        if live.control.retract_start(&job, token) {
                            tracing::info!(%job, token, %node, "took back a start not yet sent: the job was stopped");
                        }
                    }
                    send_in(
                        t,
                        &node,
                        CoordMsg::StopJob {
                            job_id: job,
                            fencing_token: token,
                            kill_timeout_ms,
                        },
                    )
                }
            }
        }
    }

    /// Fires the delayed starts due at `now`. Each is sent only if its placement is still the
    /// job's current one and has not started: checked and sent under the same fleet lock.
    pub fn fire_job_timers(&self, now: std::time::Instant) {
        let mut t = self.lock();
        let later = t.in_flight.timers.split_off(&(now, u64::MAX));
        let due: Vec<DelayedStart> = std::mem::replace(&mut t.in_flight.timers, later)
            .into_values()
            .collect();
        for d in due {
            let Some(job) = t.jobs.get(&d.job) else {
                continue;
            };
            if !awaits_start(job, &d.node, d.token) {
                tracing::info!(job = %d.job, token = d.token, "delayed start dropped: the placement it was for was ended or replaced during the backoff");
                continue;
            }
            let gpus = job
                .current
                .as_ref()
                .map(|p| p.gpus.clone())
                .unwrap_or_default();
            let cmd = start_cmd(job, d.token, &gpus);
            self.start_sent(&mut t, &d.node, &cmd);
            send_in(&t, &d.node, start_msg(&t, cmd));
        }
    }

    pub(super) fn start_sent(&self, t: &mut Fleet, node: &NodeId, cmd: &StartJob) {
        t.in_flight.unanswered.insert(
            (cmd.job_id.clone(), cmd.fencing_token),
            (node.clone(), self.clock().now()),
        );
    }

    /// Delivery is reconciled, never assumed: a start still unanswered [`START_DEADLINE`]
    /// after it was sent (or last asked about) makes the coordinator ask its node what it
    /// holds ([`CoordMsg::ReportJobs`]); the answer ([`Engine::jobs_held`]) decides.
    /// Starts whose placement has since started, ended or been replaced are forgotten.
    pub fn check_unanswered_starts(&self, now: std::time::Instant) {
        let mut t = self.lock();
        if t.in_flight.unanswered.is_empty() {
            return;
        }
        let mut ask: Vec<NodeId> = Vec::new();
        let Fleet {
            jobs, in_flight, ..
        } = &mut *t;
        in_flight.unanswered.retain(|(job, token), (node, since)| {
            let waiting = jobs.get(job).is_some_and(|j| awaits_start(j, node, *token));
            if waiting && now.duration_since(*since) >= START_DEADLINE {
                *since = now;
                if !ask.contains(node) {
                    ask.push(node.clone());
                }
            }
            waiting
        });
        for node in ask {
            tracing::warn!(%node, "a start is unanswered after {} s; asking the node what it holds", START_DEADLINE.as_secs());
            send_in(
                &t,
                &node,
                CoordMsg::ReportJobs {
                    request: self.clock().random_u64(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::detector::{DetectorConfig, FailureDetector};
    use crate::engine::Engine;
    use crate::jobs::model::JobState;
    use crate::jobs::testkit::{cluster, job, spec, C};
    use crate::model::ClusterMode;
    use crate::outbox::Outbox;
    use crate::store::{Change, MemStore, StateStore};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tandem_common::hardware::HardwareReport;

    /// One pool node, registered on a session of `protocol`.
    fn engine_with(protocol: u16) -> (Engine, Arc<Outbox>) {
        let now = Instant::now();
        let store = Arc::new(MemStore::new());
        let mut rec = crate::model::test_node("a1");
        rec.cluster = Some(C.into());
        let node = rec.id.clone();
        store
            .commit(vec![
                Change::PutCluster(Box::new(cluster(C, ClusterMode::Pool))),
                Change::PutNode(Box::new(rec)),
            ])
            .expect("stored");
        let detector = FailureDetector::new(
            DetectorConfig {
                heartbeat: Duration::from_millis(200),
                lease: Duration::from_secs(1),
                fence_grace: Duration::from_millis(300),
                suspect_after_missed: 3,
                restart_grace: Duration::from_secs(2),
            },
            now,
        );
        let e = Engine::load(store.clone(), detector, Default::default(), now).expect("loads");
        let mut hw = HardwareReport::default();
        hw.cpu.logical_cores = 8;
        hw.memory.total_bytes = 8 << 30;
        let out = Arc::new(Outbox::new(store.clone()).for_protocol(protocol));
        e.register(
            &node,
            2,
            "127.0.0.1:1".parse().expect("literal"),
            "0.1.0".into(),
            hw,
            out.clone(),
            now,
        )
        .expect("registers");
        (e, out)
    }

    #[test]
    fn a_job_that_names_a_user_waits_rather_than_run_as_root_on_an_agent_without_job_users() {
        let (e, out) = engine_with(tandem_common::proto::LIMITS_PROTOCOL_VERSION - 1);
        let mut as_user = job(1, spec(100, 1 << 20, 0));
        as_user.spec.name = "as-user".into();
        as_user.spec.user = Some("nobody".into());
        let mut plain = job(2, spec(100, 1 << 20, 0));
        plain.spec.name = "plain".into();
        let queued = out.len();
        e.submit_job(as_user.clone()).expect("submitted");
        let t = e.lock();
        let j = &t.jobs[&as_user.id];
        assert_eq!(j.state, JobState::Pending, "{j:?}");
        assert!(
            j.state_reason
                .contains("its agent is too old to run a job as the user it names"),
            "{}",
            j.state_reason
        );
        drop(t);
        assert_eq!(out.len(), queued, "no start was queued to the old agent");
        e.submit_job(plain.clone()).expect("submitted");
        assert!(
            e.lock().jobs[&plain.id].current.is_some(),
            "a job without a user is placed"
        );

        // The same job on an agent that knows job users is placed.
        let (e, _) = engine_with(tandem_common::proto::LIMITS_PROTOCOL_VERSION);
        e.submit_job(as_user.clone()).expect("submitted");
        assert!(e.lock().jobs[&as_user.id].current.is_some());
    }

    /// A stopped job keeps its name and its room until its last copy's end is reported: then
    /// the name is free, and a job that waited for the room is placed.
    #[test]
    fn a_stopped_job_keeps_its_name_and_room_until_its_copy_has_ended() {
        use crate::engine::SubmitError;
        use crate::jobs::planner::Event;
        let (e, _) = engine_with(tandem_common::proto::LIMITS_PROTOCOL_VERSION);
        let node = e.lock().nodes.keys().next().cloned().expect("a node");
        let mut old = job(1, spec(6000, 1 << 20, 0));
        old.spec.name = "w".into();
        e.submit_job(old.clone()).expect("submitted");
        let token = e.lock().jobs[&old.id].fencing_token().expect("placed");
        e.job_event(Event::StopRequested {
            job: old.id.clone(),
        })
        .expect("stopped");
        assert_eq!(e.lock().jobs[&old.id].state, JobState::Stopped);

        let mut again = job(2, spec(100, 1 << 20, 0));
        again.spec.name = "w".into();
        let refused = e.submit_job(again.clone());
        assert!(
            matches!(refused, Err(SubmitError::NameStopping { token: t, .. }) if t == token),
            "{refused:?}"
        );
        let mut big = job(3, spec(6000, 1 << 20, 0));
        big.spec.name = "big".into();
        e.submit_job(big.clone()).expect("submitted");
        assert_eq!(
            e.lock().jobs[&big.id].state,
            JobState::Pending,
            "the stopped copy still holds its room"
        );

        e.exits_reported(
            &node,
            &[tandem_common::proto::JobExitReport {
                job_id: old.id.clone(),
                fencing_token: token,
                code: None,
                signal: Some(15),
                cause: tandem_common::proto::ExitCause::Stopped,
                reason: "stopped".into(),
            }],
        );
        assert!(e.lock().jobs[&old.id].stopping().is_none());
        assert_eq!(
            e.lock().jobs[&big.id].state,
            JobState::Starting,
            "placed in the room the copy left"
        );
        e.submit_job(again).expect("the name is free");
    }
}
