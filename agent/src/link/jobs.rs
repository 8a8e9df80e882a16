//! The job side of the link: the supervisor, the tasks that carry out the coordinator's job
//! orders, and the channels through which their outcomes come back to the session loop.
//!
//! Kept apart from the connection code because it is what decides what the coordinator is told
//! about copies: a start answers `JobStarted`, or is refused (reported as an exit with cause
//! `Refused`), or, repeated for a copy already held, answers as that copy does and is never
//! refused (a refusal would read as the end of the running copy). Exits are not sent from here:
//! they go to the session loop, which keeps them on disk before it sends them (`crate::exits`).

use crate::lease::LeaseView;
use crate::supervisor::{JobExit, JobStart, Supervisor, SupervisorError};
use std::sync::Arc;
use std::time::Duration;
use tandem_common::proto::{AgentMsg, ExitCause, HeldJob, JobExitReport, StartJob, Welcome};
use tokio::sync::{mpsc, watch};

/// The supervisor, and the senders its tasks answer through.
pub(super) struct Jobs {
    supervisor: Arc<Supervisor>,
    outbox_tx: mpsc::Sender<AgentMsg>,
    refusals_tx: mpsc::Sender<JobExitReport>,
    /// Starts read off the control stream whose task has not finished: a stop that follows
    /// one must not report its copy as not held.
    starting: Arc<std::sync::Mutex<std::collections::HashSet<(String, u64)>>>,
    /// Lent to the session loop while a session runs.
    pub(super) rx: Option<JobRx>,
}

/// What the session loop listens to for jobs.
pub(super) struct JobRx {
    /// Copies that ended, or whose start was refused.
    pub(super) ended: Ended,
    /// Other answers (started, logs) to send as they are.
    pub(super) outbox: mpsc::Receiver<AgentMsg>,
    /// The latest usage report (protocol 6); only the newest is ever sent, so reports made
    /// while no session runs never pile up.
    pub(super) usage: watch::Receiver<Option<Arc<tandem_common::proto::NodeUsage>>>,
}

/// The two sources of exit reports: the supervisor's exits and refused starts.
pub(super) struct Ended {
    exits: mpsc::Receiver<JobExit>,
    refusals: mpsc::Receiver<JobExitReport>,
}

impl Ended {
    /// Every report waiting now, without waiting for more.
    pub(super) fn drain(&mut self) -> Vec<JobExitReport> {
        let mut out = Vec::new();
        while let Ok(e) = self.exits.try_recv() {
            out.push(exit_report(&e));
        }
        while let Ok(r) = self.refusals.try_recv() {
            out.push(r);
        }
        out
    }

    /// The next report (cancel-safe); `None` once both sources are gone.
    pub(super) async fn next(&mut self) -> Option<JobExitReport> {
        tokio::select! {
            Some(e) = self.exits.recv() => Some(exit_report(&e)),
            Some(r) = self.refusals.recv() => Some(r),
            else => None,
        }
    }
}

/// How a supervised copy ended, as the coordinator is told.
pub(super) fn exit_report(exit: &JobExit) -> JobExitReport {
    JobExitReport {
        job_id: exit.job_id.clone(),
        fencing_token: exit.fencing_token,
        code: exit.code,
        signal: exit.signal,
        cause: exit.reason.cause(),
        reason: exit.reason.name(),
    }
}

/// A refused start, reported as an exit of that copy.
pub(super) fn refusal(job_id: String, fencing_token: u64, e: &SupervisorError) -> JobExitReport {
    JobExitReport {
        job_id,
        fencing_token,
        code: None,
        signal: None,
        cause: ExitCause::Refused,
        reason: format!("refused: {e}"),
    }
}

/// The cgroup limits for a job's resources (0: no limit of that kind); the pids limit always.
fn job_limits(sent: Option<tandem_common::proto::JobLimits>) -> crate::containment::Limits {
    let sent = sent.unwrap_or_default();
    crate::containment::Limits {
        memory_bytes: (sent.memory_bytes > 0).then_some(sent.memory_bytes),
        cpu_millis: (sent.cpu_millis > 0).then_some(sent.cpu_millis),
        ..Default::default()
    }
}

impl Jobs {
    /// Runs jobs with `supervisor`, following the link's lease; reports usage and runs
    /// retention by `policy` every `every`.
    pub(super) fn new(
        supervisor: Supervisor,
        lease: watch::Receiver<LeaseView>,
        policy: crate::retention::Policy,
        every: Duration,
    ) -> Result<Self, SupervisorError> {
        let supervisor = Arc::new(supervisor);
        supervisor.follow_lease(lease);
        let (usage_tx, usage) = watch::channel(None);
        tokio::spawn(crate::supervisor::housekeeping::run(
            Arc::downgrade(&supervisor),
            policy,
            every,
            usage_tx,
        ));
        let exits = supervisor
            .exits()
            .ok_or_else(|| SupervisorError::InvalidJob("exits taken".into()))?;
        let (outbox_tx, outbox) = mpsc::channel(256);
        let (refusals_tx, refusals) = mpsc::channel(256);
        Ok(Self {
            supervisor,
            outbox_tx,
            refusals_tx,
            starting: Default::default(),
            rx: Some(JobRx {
                ended: Ended { exits, refusals },
                outbox,
                usage,
            }),
        })
    }

    /// Applies what every `Welcome` carries for jobs: the fence kill timeout, for new starts
    /// and every running shim.
    pub(super) fn on_welcome(&self, welcome: &Welcome) {
        let new = Duration::from_millis(welcome.fence_kill_timeout_ms.into());
        let old = self.supervisor.set_fence_kill_timeout(new);
        if old != new {
            tracing::info!(
                "fence kill timeout {} -> {} ms from the coordinator",
                old.as_millis(),
                new.as_millis()
            );
        }
    }

    /// The coordinator acknowledged the end of `job_id`'s copy `token`: retention may then
    /// remove its dir.
    pub(super) fn exit_acknowledged(&self, job_id: &str, token: u64) {
        self.supervisor.exit_acknowledged(job_id, token);
    }

    /// Re-adopts the shims of `alive` (see `crate::supervisor::adopt`).
    pub(super) async fn adopt_all(
        &self,
        alive: &[String],
    ) -> Vec<crate::supervisor::adopt::AdoptedJob> {
        self.supervisor.adopt_all(alive).await
    }

    /// Every copy held: running, or a start accepted and in progress.
    pub(super) fn held(&self) -> Vec<HeldJob> {
        self.supervisor.held()
    }

    /// Every copy held, then the exit reports waiting (when no session loop has them). In this
    /// order no copy can be missing from both: the supervisor drops a copy only after it has
    /// handed on its exit. (A refused start is dropped just before its refusal is queued; it
    /// never ran, so missing it for that moment cannot make a second copy.)
    pub(super) fn held_then_drain(&mut self) -> (Vec<HeldJob>, Vec<JobExitReport>) {
        let held = self.held();
        let drained = self
            .rx
            .as_mut()
            .map(|r| r.ended.drain())
            .unwrap_or_default();
        (held, drained)
    }

    /// Starts a job copy on a task of its own. The answer goes back through the outbox
    /// (started) or the refusals (refused); a repeat of a start in progress answers nothing.
    /// `limits`: the job's resources as the coordinator sent them (none from a coordinator
    /// older than protocol 4: the pids limit only).
    pub(super) fn start(
        &self,
        cmd: StartJob,
        session: u64,
        limits: Option<tandem_common::proto::JobLimits>,
        user: Option<String>,
        group: Option<String>,
    ) {
        let (sup, out, refusals) = (
            self.supervisor.clone(),
            self.outbox_tx.clone(),
            self.refusals_tx.clone(),
        );
        let key = (cmd.job_id.clone(), cmd.fencing_token);
        let starting = self.starting.clone();
        starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        tokio::spawn(async move {
            // Dropped when the start is over, however it ends.
            struct Done(
                Arc<std::sync::Mutex<std::collections::HashSet<(String, u64)>>>,
                (String, u64),
            );
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&self.1);
                }
            }
            let _done = Done(starting, key);
            // A start can arrive right after registration, before the first ack: the
            // supervisor waits a moment for the lease (and refuses to start without one).
            let (job_id, fencing_token) = (cmd.job_id.clone(), cmd.fencing_token);
            let start = JobStart {
                job_id: cmd.job_id,
                job_name: cmd.job_name,
                fencing_token: cmd.fencing_token,
                command: cmd.command,
                env: cmd.env,
                workdir: cmd.workdir.map(Into::into),
                gpus: cmd.gpus,
                limits: job_limits(limits),
                user,
                group,
                session: Some(session),
            };
            match sup.start(start).await {
                Ok(_) => {
                    tracing::info!(job = %job_id, fencing_token, "job started");
                    let msg = AgentMsg::JobStarted {
                        job_id,
                        fencing_token,
                    };
                    let _ = out.send(msg).await;
                }
                // A repeat of a start still in progress: that start answers.
                Err(SupervisorError::StartInProgress { .. }) => {
                    tracing::info!(job = %job_id, fencing_token, "start repeated while in progress; the first one answers");
                }
                Err(e) => {
                    tracing::warn!(job = %job_id, fencing_token, error = %e, "refused to start a job");
                    let _ = refusals.send(refusal(job_id, fencing_token, &e)).await;
                }
            }
        });
    }

    /// Stops a job copy on a task of its own; its end comes through the exits.
    pub(super) fn stop(&self, job_id: String, token: u64, kill_timeout_ms: u32) {
        // Before the next message is read: a start after this stop must find nothing held.
        if self.supervisor.cancel_waiting_start(&job_id, token) {
            tracing::info!(job = %job_id, token, "stop: cancelled a start still waiting for its lease");
            return;
        }
        // A copy this agent does not hold (its start never arrived, or came to an agent run
        // that is gone: this run waited for the old copies before it registered) is not
        // running here: say so, or a move waiting for that copy's end would wait for ever
        // (the simulation found drains stuck in `migrating`).
        let starting = self
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(job_id.clone(), token));
        if !starting && self.supervisor.holds_no(&job_id, token) {
            tracing::info!(job = %job_id, token, "stop: that copy is not held here; reporting it gone");
            let report = JobExitReport {
                job_id,
                fencing_token: token,
                code: None,
                signal: None,
                cause: ExitCause::Lost,
                reason: "not held by this agent when it was told to stop it".into(),
            };
            let refusals = self.refusals_tx.clone();
            tokio::spawn(async move {
                let _ = refusals.send(report).await;
            });
            return;
        }
        let sup = self.supervisor.clone();
        tokio::spawn(async move {
            let kill_timeout = Duration::from_millis(kill_timeout_ms.into());
            if let Err(e) = sup.stop(&job_id, token, kill_timeout).await {
                tracing::info!(job = %job_id, token, error = %e, "stop: nothing to stop");
            }
        });
    }

    /// Reads the end of a job's logs on a task of its own; the answer goes to the outbox.
    pub(super) fn tail_logs(&self, request: u64, job_id: String, lines: u32) {
        let (sup, out) = (self.supervisor.clone(), self.outbox_tx.clone());
        tokio::spawn(async move {
            let msg = match sup.tail_logs(&job_id, lines.min(10_000) as usize).await {
                Ok(t) => AgentMsg::Logs {
                    request,
                    stdout: t.stdout,
                    stderr: t.stderr,
                    error: None,
                },
                Err(e) => AgentMsg::Logs {
                    request,
                    stdout: vec![],
                    stderr: vec![],
                    error: Some(e.to_string()),
                },
            };
            let _ = out.send(msg).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::ExitReason;
    use std::time::Instant;
    use tandem_common::ids::NodeId;
    use tandem_common::proto::HeldState;

    fn cmd(job_id: &str, fencing_token: u64) -> StartJob {
        StartJob {
            job_id: job_id.into(),
            job_name: job_id.into(),
            fencing_token,
            command: vec!["/bin/true".into()],
            env: Default::default(),
            workdir: None,
            gpus: Vec::new(),
        }
    }

    /// Jobs without a lease: every start waits for one (2 s), held as starting, then fails.
    /// No shim is ever started.
    fn jobs(dir: &std::path::Path) -> (Jobs, watch::Sender<LeaseView>) {
        let sup = Supervisor::new(dir, NodeId::random(), "n", Duration::from_millis(250))
            .unwrap()
            .with_shim_program("/nonexistent/shim");
        let (lease_tx, lease_rx) = watch::channel(LeaseView::default());
        (
            Jobs::new(
                sup,
                lease_rx,
                crate::retention::Policy::default(),
                Duration::from_secs(3600),
            )
            .unwrap(),
            lease_tx,
        )
    }

    /// Polls until the copy held for the job is the one with `token`.
    async fn held_as(jobs: &Jobs, token: u64) {
        let until = Instant::now() + Duration::from_secs(5);
        while jobs.held().first().map(|h| h.fencing_token) != Some(token) {
            assert!(Instant::now() < until, "copy {token} was never held");
            tokio::task::yield_now().await;
        }
    }

    /// The next two ends reported, as (token, cause), by token.
    async fn two_ends(rx: &mut JobRx) -> Vec<(u64, ExitCause)> {
        let mut ended = Vec::new();
        for _ in 0..2 {
            let r = tokio::time::timeout(Duration::from_secs(10), rx.ended.next())
                .await
                .unwrap()
                .unwrap();
            ended.push((r.fencing_token, r.cause));
        }
        ended.sort_by_key(|e| e.0);
        ended
    }

    #[test]
    fn exits_and_refusals_are_reported_with_their_cause() {
        let e = JobExit {
            job_id: "j".into(),
            fencing_token: 4,
            code: None,
            signal: Some(9),
            reason: ExitReason::ShimSignalled,
        };
        let r = exit_report(&e);
        assert_eq!(
            (r.job_id.as_str(), r.fencing_token, r.signal, r.cause),
            ("j", 4, Some(9), ExitCause::ShimSignalled)
        );
        assert_eq!(r.reason, "shimsignalled");
        let r = refusal("j".into(), 5, &SupervisorError::NoLease);
        assert_eq!(
            (r.cause, r.code, r.signal),
            (ExitCause::Refused, None, None)
        );
        assert_eq!(r.reason, "refused: no lease is held: jobs may not start");
    }

    #[tokio::test]
    async fn a_repeated_start_in_progress_is_not_reported_as_an_exit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut jobs, _lease) = jobs(dir.path());
        let mut rx = jobs.rx.take().unwrap();
        jobs.start(cmd("a", 3), 1, None, None, None);
        held_as(&jobs, 3).await;
        assert_eq!(jobs.held()[0].state, HeldState::Starting);
        // The same copy again: nothing. A newer copy while it still waits for its lease:
        // the newer one supersedes it (it has no process and nothing on disk).
        jobs.start(cmd("a", 3), 1, None, None, None);
        jobs.start(cmd("a", 4), 1, None, None, None);
        held_as(&jobs, 4).await;
        // Both give up without a lease: one refusal each, and nothing else.
        assert_eq!(
            two_ends(&mut rx).await,
            vec![(3, ExitCause::Refused), (4, ExitCause::Refused)]
        );
        assert!(jobs.held().is_empty());
        assert!(rx.ended.drain().is_empty());
        assert!(rx.outbox.try_recv().is_err());
    }

    /// Found by the simulation: a drain stops a copy whose start went to an agent run that
    /// is gone; the new run holds nothing of it, and the move waited for that copy's end for
    /// ever. A stop of a copy not held is answered as that copy being gone; a stop of a start
    /// still waiting for its lease cancels it, and the newer start after it is admitted.
    #[tokio::test]
    async fn a_stop_of_a_copy_not_held_reports_it_gone_and_one_of_a_waiting_start_cancels_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut jobs, _lease) = jobs(dir.path());
        let mut rx = jobs.rx.take().unwrap();
        jobs.stop("gone".into(), 7, 5_000);
        let r = tokio::time::timeout(Duration::from_secs(5), rx.ended.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.job_id.as_str(), r.fencing_token, r.cause),
            ("gone", 7, ExitCause::Lost)
        );

        jobs.start(cmd("a", 3), 1, None, None, None);
        held_as(&jobs, 3).await;
        jobs.stop("a".into(), 3, 5_000);
        assert!(
            jobs.held().is_empty(),
            "the waiting start is cancelled at once"
        );
        jobs.start(cmd("a", 4), 1, None, None, None);
        held_as(&jobs, 4).await;
        // Without a lease both give up after their wait, as refusals (the cancelled one never
        // goes ahead, whatever comes first).
        assert_eq!(
            two_ends(&mut rx).await,
            vec![(3, ExitCause::Refused), (4, ExitCause::Refused)]
        );
        assert!(jobs.held().is_empty());
    }
}
