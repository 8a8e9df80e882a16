//! Jobs at the coordinator: the planner's decisions (`jobs::planner`) made durable, then
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

use crate::clock::Map as HashMap;
use crate::jobs::decision::Decision;
use crate::jobs::model::{Exit, JobRecord};
use crate::jobs::placement::NodeView;
use crate::jobs::planner::{Event, Planner, Reported, View};
use crate::membership::{Fleet, Membership};
use crate::model::NewEvent;
use crate::store::{Change, StoreError};
use std::sync::Mutex;
use std::time::Duration;
use tandem_common::ids::NodeId;
use tandem_common::proto::{AgentMsg, CoordMsg, ExitCause, JobExitReport, StartJob};

/// A start unanswered this long makes the coordinator ask its node what it holds.
pub const START_DEADLINE: Duration = Duration::from_secs(20);

/// How long a user stop waits between SIGTERM and SIGKILL.
pub const USER_KILL_TIMEOUT_MS: u32 = 5_000;

/// Why a job was not submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A job that has not ended already has this name.
    #[error("a job named `{name}` is already {state} ({id})")]
    NameTaken {
        /// The name.
        name: String,
        /// The other job's state.
        state: &'static str,
        /// The other job's id.
        id: String,
    },
    /// The store failed; the job was not recorded (or, if it was, it is placed at the next
    /// start's reconciliation).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A command for an agent, decided (it leaves once durable).
#[derive(Debug)]
pub enum Outgoing {
    /// Start a copy (after `delay`, or once `after` — an old copy — has ended).
    Start {
        /// Where.
        node: NodeId,
        /// The order.
        cmd: StartJob,
        /// Restart backoff.
        delay: Duration,
        /// `(node, token)` of a copy that must end first.
        after: Option<(NodeId, u64)>,
    },
    /// Stop a copy.
    Stop {
        /// Where.
        node: NodeId,
        /// The job.
        job: String,
        /// The copy's token.
        token: u64,
        /// SIGTERM to SIGKILL.
        kill_timeout_ms: u32,
    },
}

/// A start that waits out its restart backoff. It carries the placement's token and is checked
/// again when it fires, under the fleet lock it is sent under: a stop (or any other decision)
/// made during the backoff ends or replaces that placement, and the timer then does nothing.
/// (Before, a task slept and sent the start blindly: a stop during the backoff was undone.)
#[derive(Debug, Clone, PartialEq, Eq)]
struct DelayedStart {
    node: NodeId,
    job: String,
    token: u64,
}

/// The job side of the coordinator.
pub struct JobRuntime {
    planner: Mutex<Planner>,
    /// Delayed starts by due time (and a sequence number, to keep equal times apart).
    timers: Mutex<std::collections::BTreeMap<(std::time::Instant, u64), DelayedStart>>,
    timer_seq: std::sync::atomic::AtomicU64,
    /// Starts waiting for an old copy to end, by job.
    waiting: Mutex<HashMap<String, (NodeId, u64, NodeId, StartJob)>>,
    /// Log requests waiting for their answer.
    logs: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<AgentMsg>>>,
    /// Starts sent and not yet answered, by `(job, token)`: where, and when sent (or last
    /// asked about). See [`Membership::check_unanswered_starts`].
    unanswered: Mutex<HashMap<(String, u64), (NodeId, std::time::Instant)>>,
    fence_kill_timeout_ms: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl JobRuntime {
    /// A runtime for a coordinator with this lease and fencing kill timeout.
    pub fn new(lease: Duration, fence_kill_timeout: Duration) -> Self {
        Self {
            planner: Mutex::new(Planner::new(lease.as_millis() as u64)),
            timers: Mutex::new(Default::default()),
            timer_seq: Default::default(),
            waiting: Mutex::new(HashMap::default()),
            logs: Mutex::new(HashMap::default()),
            unanswered: Mutex::new(HashMap::default()),
            fence_kill_timeout_ms: fence_kill_timeout.as_millis() as u32,
        }
    }
}

fn start_cmd(job: &JobRecord, token: u64, gpus: &[String]) -> StartJob {
    StartJob {
        job_id: job.id.clone(),
        job_name: job.spec.name.clone(),
        fencing_token: token,
        command: job.spec.command.clone(),
        env: job.spec.env.clone(),
        workdir: job.spec.workdir.clone(),
        gpus: gpus.to_vec(),
    }
}

impl Membership {
    /// Feeds one event to the planner, makes its decisions durable, and sends the commands.
    pub fn job_event(&self, event: Event) -> Result<(), StoreError> {
        {
            let mut t = self.lock();
            // The planner's view holds every node: building it costs O(fleet). In a fleet
            // without jobs, a node coming up (or back) holding nothing, or going down, cannot
            // lead to any decision; in a join storm, or a mass failure, of thousands of nodes
            // that cost would be paid once per node (seconds of CPU at 5,000 nodes). The
            // guard's memory of recent downs only matters to jobs, and a job submitted later
            // is placed on live nodes only.
            let idle = match &event {
                Event::NodeUp { running, .. } => running.is_empty(),
                Event::Recovered { .. } | Event::NodeDown { .. } | Event::NodeRemoved { .. } => {
                    true
                }
                _ => false,
            };
            if idle && t.jobs.is_empty() {
                return Ok(());
            }
            let out = self.run_planner(&mut t, |p, v, now| p.handle(v, &event, now))?;
            self.dispatch(&t, out);
        }
        Ok(())
    }

    /// Feeds `events` to the planner as one batch, makes its decisions durable, and sends
    /// the commands.
    fn decide(&self, events: &[Event]) -> Result<(), StoreError> {
        let mut t = self.lock();
        let out = self.run_planner(&mut t, |p, v, now| p.handle_all(v, events, now))?;
        self.dispatch(&t, out);
        Ok(())
    }

    /// Runs the planner's start-up reconciliation (after a coordinator restart).
    pub fn reconcile_jobs(&self) -> Result<(), StoreError> {
        self.rebuild_waiting();
        let mut t = self.lock();
        let out = self.run_planner(&mut t, |p, v, now| p.reconcile(v, now))?;
        self.dispatch(&t, out);
        Ok(())
    }

    /// Operator override of the disruption guard for a cluster.
    pub fn force_failover(&self, cluster: &str) -> Result<(), StoreError> {
        let mut t = self.lock();
        let out = self.run_planner(&mut t, |p, v, now| p.force_failover(v, cluster, now))?;
        self.dispatch(&t, out);
        Ok(())
    }

    /// Records a new job and places it. The name is checked under the same lock the job is
    /// inserted under: two submits of one name at once cannot both pass.
    pub fn submit_job(&self, job: JobRecord) -> Result<(), SubmitError> {
        {
            let mut t = self.lock();
            if let Some(j) = t
                .jobs
                .values()
                .find(|j| j.spec.name == job.spec.name && !j.state.is_terminal())
            {
                return Err(SubmitError::NameTaken {
                    name: job.spec.name.clone(),
                    state: j.state.as_str(),
                    id: j.id.clone(),
                });
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

    fn run_planner(
        &self,
        t: &mut Fleet,
        decide: impl FnOnce(&mut Planner, &View, u64) -> Vec<Decision>,
    ) -> Result<Vec<Outgoing>, StoreError> {
        let now = self.clock().unix_ms();
        let clusters: Vec<_> = t.clusters.values().cloned().collect();
        let nodes: Vec<NodeView> = t
            .nodes
            .values()
            .map(|e| NodeView::from_record(&e.record))
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
            decide(&mut lock(&self.jobs.planner), &view, now)
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
            changes.push(Change::Event(NewEvent {
                kind: "job",
                node,
                message: format!("job {}: {}", name(&id), d.reason()),
            }));
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
    fn dispatch(&self, t: &Fleet, out: Vec<Outgoing>) {
        for o in out {
            match o {
                Outgoing::Start {
                    node,
                    cmd,
                    after: Some((old_node, old_token)),
                    ..
                } => {
                    lock(&self.jobs.waiting)
                        .insert(cmd.job_id.clone(), (old_node, old_token, node, cmd));
                }
                Outgoing::Start {
                    node,
                    cmd,
                    delay,
                    after: None,
                } if !delay.is_zero() => {
                    let seq = self
                        .jobs
                        .timer_seq
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    lock(&self.jobs.timers).insert(
                        (self.clock().now() + delay, seq),
                        DelayedStart {
                            node,
                            job: cmd.job_id,
                            token: cmd.fencing_token,
                        },
                    );
                }
                Outgoing::Start { node, cmd, .. } => {
                    self.start_sent(&node, &cmd);
                    send_in(t, &node, CoordMsg::StartJob(Box::new(cmd)))
                }
                Outgoing::Stop {
                    node,
                    job,
                    token,
                    kill_timeout_ms,
                } => send_in(
                    t,
                    &node,
                    CoordMsg::StopJob {
                        job_id: job,
                        fencing_token: token,
                        kill_timeout_ms,
                    },
                ),
            }
        }
    }

    /// Fires the delayed starts due at `now`. Each is sent only if its placement is still the
    /// job's current one and has not started: checked and sent under the same fleet lock.
    pub fn fire_job_timers(&self, now: std::time::Instant) {
        let due: Vec<DelayedStart> = {
            let mut timers = lock(&self.jobs.timers);
            let later = timers.split_off(&(now, u64::MAX));
            std::mem::replace(&mut *timers, later)
                .into_values()
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let t = self.lock();
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
            self.start_sent(&d.node, &cmd);
            send_in(&t, &d.node, CoordMsg::StartJob(Box::new(cmd)));
        }
    }

    fn start_sent(&self, node: &NodeId, cmd: &StartJob) {
        lock(&self.jobs.unanswered).insert(
            (cmd.job_id.clone(), cmd.fencing_token),
            (node.clone(), self.clock().now()),
        );
    }

    /// Delivery is reconciled, never assumed: a start still unanswered [`START_DEADLINE`]
    /// after it was sent (or last asked about) makes the coordinator ask its node what it
    /// holds ([`CoordMsg::ReportJobs`]); the answer ([`Membership::jobs_held`]) decides.
    /// Starts whose placement has since started, ended or been replaced are forgotten.
    pub fn check_unanswered_starts(&self, now: std::time::Instant) {
        if lock(&self.jobs.unanswered).is_empty() {
            return;
        }
        let t = self.lock();
        let mut ask: Vec<NodeId> = Vec::new();
        lock(&self.jobs.unanswered).retain(|(job, token), (node, since)| {
            let waiting = t
                .jobs
                .get(job)
                .is_some_and(|j| awaits_start(j, node, *token));
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
        let resend: Vec<(String, u64)> = lock(&self.jobs.unanswered)
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
            send_in(&t, node, CoordMsg::StartJob(Box::new(cmd)));
        }
    }

    fn control_of(&self, node: &NodeId) -> Option<std::sync::Arc<crate::outbox::Outbox>> {
        self.lock()
            .nodes
            .get(node)
            .and_then(|e| e.live.as_ref().map(|l| l.control.clone()))
    }

    fn send_to(&self, node: &NodeId, msg: CoordMsg) {
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
        for r in exits {
            self.release_waiting(|old_node, old_token, j| {
                old_node == node && old_token == r.fencing_token && j == r.job_id
            });
        }
        let events: Vec<Event> = exits.iter().map(|r| exit_event(node, r)).collect();
        match self.decide(&events) {
            Ok(()) => {
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
}

/// The planner event a copy's end is. Only an exit of the job's own doing (or a refused
/// start) counts against its restart policy. A copy its agent fenced, or whose supervisor was
/// signalled or died, did not end the job: it is placed again ([`Event::CopyLost`]), so a
/// `restart: never` job that lost its lease is not marked failed, and one that completed is
/// never run again.
fn exit_event(node: &NodeId, r: &JobExitReport) -> Event {
    {
        let exit = match (r.code, r.signal) {
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

impl Membership {
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
    fn placed_on(&self, node: &NodeId) -> Vec<(Reported, bool)> {
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

    fn release_waiting(&self, matches: impl Fn(&NodeId, u64, &str) -> bool) {
        let ready: Vec<(NodeId, StartJob)> = {
            let mut w = lock(&self.jobs.waiting);
            let keys: Vec<String> = w
                .iter()
                .filter(|(j, (n, t, _, _))| matches(n, *t, j))
                .map(|(j, _)| j.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| w.remove(&k))
                .map(|(_, _, to, cmd)| (to, cmd))
                .collect()
        };
        self.release_pending_waits(&matches);
        if ready.is_empty() {
            return;
        }
        // Only if it is still the job's current placement: checked, made durable (the wait is
        // over: a restarted coordinator must not wait again) and sent under one lock.
        let mut t = self.lock();
        for (to, cmd) in ready {
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
            }
            self.start_sent(&to, &cmd);
            send_in(&t, &to, CoordMsg::StartJob(Box::new(cmd)));
        }
    }

    /// Pending jobs whose left-over wait (`JobRecord::waits_for`) is for a copy that `matches`
    /// (it ended, or its node is down): the wait is over, durably.
    fn release_pending_waits(&self, matches: &impl Fn(&NodeId, u64, &str) -> bool) {
        let mut t = self.lock();
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
        let changes = done
            .iter()
            .map(|j| Change::PutJob(Box::new(j.clone())))
            .collect();
        if let Err(e) = self.store().apply(changes) {
            tracing::error!(error = %e, "could not record that a pending job's old copy ended; it still waits");
            return;
        }
        for j in done {
            t.jobs.insert(j.id.clone(), j);
        }
    }

    /// After a restart: the starts that wait for an older copy to end (moves in progress) are
    /// waited for again; one whose old node is gone or down is released at once.
    fn rebuild_waiting(&self) {
        let gone: Vec<(NodeId, u64, String)> = {
            let t = self.lock();
            let mut w = lock(&self.jobs.waiting);
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
            for j in t.jobs.values().filter(|j| !j.state.is_terminal()) {
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
                w.insert(
                    j.id.clone(),
                    (
                        old_node,
                        old_token,
                        p.node.clone(),
                        start_cmd(j, p.fencing_token, &p.gpus),
                    ),
                );
            }
            gone
        };
        for (node, token, job) in gone {
            self.release_waiting(|n, t, j| *n == node && t == token && j == job);
        }
    }

    /// A node registered holding `held`: a move waiting for a copy of it that it does not
    /// hold may go on (its exit, if it had one to report, was decided just before).
    fn release_unheld(&self, node: &NodeId, held: &[tandem_common::proto::HeldJob]) {
        // Nothing waits: neither a start (the waiting map) nor a pending job's left-over wait.
        // (Checking the map alone skipped the pending jobs: one waited for ever for a copy
        // its node, back without it after a power cut, no longer held. Found by a soak.)
        // One lock at a time (elsewhere the table is locked before the waiting map).
        let no_start_waits = lock(&self.jobs.waiting).is_empty();
        if no_start_waits && !self.lock().jobs.values().any(|j| j.waits_for.is_some()) {
            return;
        }
        self.release_waiting(|n, t, j| {
            n == node && !held.iter().any(|h| h.job_id == j && h.fencing_token == t)
        });
    }

    /// Asks the node running `job` for the end of its logs.
    pub async fn job_logs(
        &self,
        job: &JobRecord,
        lines: u32,
    ) -> Result<(Vec<String>, Vec<String>), String> {
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
        let r = if !sent {
            Err("the node's connection closed".to_string())
        } else {
            match tokio::time::timeout(Duration::from_secs(3), rx).await {
                Ok(Ok(AgentMsg::Logs {
                    stdout,
                    stderr,
                    error: None,
                    ..
                })) => Ok((stdout, stderr)),
                Ok(Ok(AgentMsg::Logs { error: Some(e), .. })) => Err(e),
                Ok(_) => Err("the node's connection closed".to_string()),
                Err(_) => Err("the node did not answer within 3 s".to_string()),
            }
        };
        lock(&self.jobs.logs).remove(&request);
        r
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

/// Queues `msg` to `node`'s session, with the fleet table `t` locked by the caller (so that
/// what decided the command and its sending see the same state).
fn send_in(t: &Fleet, node: &NodeId, msg: CoordMsg) {
    match t.nodes.get(node).and_then(|e| e.live.as_ref()) {
        Some(l) => {
            // Not queued only when the session is ending: the node's next registration is
            // reconciled against the job records, which hold this decision.
            if let Err(e) = l.control.push(msg) {
                tracing::info!(%node, error = %e, "job command not queued; reconciled when the node registers again");
            }
        }
        None => {
            tracing::info!(%node, "node has no connection; its job command waits for it to register")
        }
    }
}

/// Whether `j`'s current placement is `(node, token)` and still waits for its start (not
/// started, not replaced, the job not ended): what a delayed or re-sent start is checked
/// against.
fn awaits_start(j: &JobRecord, node: &NodeId, token: u64) -> bool {
    !j.state.is_terminal()
        && j.current
            .as_ref()
            .is_some_and(|p| p.node == *node && p.fencing_token == token && p.started_ms.is_none())
}

/// The older copy the job's current placement waits for, if any.
fn waits_for(j: &JobRecord) -> Option<(NodeId, u64)> {
    j.current
        .as_ref()
        .filter(|p| p.started_ms.is_none())
        .and_then(|p| p.after.as_ref())
        .map(|a| (a.node.clone(), a.fencing_token))
}
