//! The two tasks that follow one running shim: [`control`] (lease changes and commands to the
//! shim's stdin, and the agent's [`Backstop`] for it) and [`monitor`] (its exit, and the job's
//! end handed on).

use super::backstop::{Backstop, Step};
use super::held::HeldTable;
use super::protocol::*;
use super::JobExit;
use crate::containment::Containment;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// How long one line to a shim may take to write (a pipe holds 64 KiB; this is never reached
/// unless the shim is frozen, and then its deadline ends it anyway).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whom the backstop acts on.
pub(super) struct Target {
    pub(super) job_id: String,
    pub(super) pid: u32,
    pub(super) shim_pid: u32,
    pub(super) containment: Arc<Containment>,
}

impl Target {
    /// Kills every process of the job: its cgroup where it has one (a cgroup cannot be
    /// reused by another job), else its process group (the job's pid; the shim may have
    /// reaped the leader already, so the id could be another's by now: the old way's risk).
    async fn kill_job(&self) {
        let (c, id) = (Arc::clone(&self.containment), self.job_id.clone());
        if c.job(&id).is_none() {
            signal_group(self.pid as i32, libc::SIGKILL);
            return;
        }
        let gone = tokio::task::spawn_blocking(move || c.kill_job(&id, Duration::from_secs(5)))
            .await
            .unwrap_or(false);
        if !gone {
            tracing::error!(job = %self.job_id, "processes of the job survived SIGKILL in its cgroup");
        }
    }
}

/// How a shim is followed: one this agent started (its stdin), or one it re-adopted (its
/// control socket, see [`super::adopt`]).
pub(super) enum Origin {
    /// Started by this agent: every lease value counts from the start.
    Started,
    /// Re-adopted: the shim holds the deadline of a lease the previous agent held. Until this
    /// agent has pushed a lease of its own, "no lease" is not pushed (it would fence a job
    /// whose lease still runs only because this agent has not registered yet); the first
    /// line is the fence kill timeout in force here.
    Adopted,
}

/// Writes lease changes and commands to one shim (its stdin, or its control socket), until
/// the shim is gone or the supervisor is dropped (which closes the pipe: the shim keeps its
/// last deadline). Also the shim's [`Backstop`]: if the shim has not ended its job when the
/// lease is over, the agent does.
#[allow(clippy::too_many_arguments)]
pub(super) async fn control(
    mut stdin: impl AsyncWrite + Unpin,
    mut deadline: watch::Receiver<Option<u64>>,
    mut fence_kill_ms: watch::Receiver<u64>,
    mut ctl: mpsc::Receiver<ShimCommand>,
    mut backstop: Backstop,
    steps: mpsc::Sender<Step>,
    origin: Origin,
) {
    // Whether "no lease" may be pushed: always for a shim we started; for an adopted one once
    // we pushed a lease of ours.
    let mut pushed = matches!(origin, Origin::Started);
    if matches!(origin, Origin::Adopted) {
        let ms = *fence_kill_ms.borrow_and_update();
        backstop.set_fence_kill(Duration::from_millis(ms));
        let line = ShimCommand::FenceKill { timeout_ms: ms }.to_line();
        if !matches!(
            tokio::time::timeout(WRITE_TIMEOUT, stdin.write_all(line.as_bytes())).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
    loop {
        // The backstop's timer is recomputed on every turn from its state (a token, in
        // effect): a lease that moved since is seen when it fires.
        let due = backstop.due_ns().map(|due| {
            let now = monotonic_ns().unwrap_or(u64::MAX);
            tokio::time::Instant::now() + Duration::from_nanos(due.saturating_sub(now))
        });
        let cmd = tokio::select! {
            r = deadline.changed() => match r {
                Ok(()) => {
                    let v = *deadline.borrow_and_update();
                    if v.is_none() && !pushed {
                        continue;
                    }
                    pushed = true;
                    backstop.on_lease(v, monotonic_ns().unwrap_or(u64::MAX));
                    match v {
                        Some(ns) => ShimCommand::Lease(ns),
                        None => ShimCommand::Fence,
                    }
                }
                Err(_) => return,
            },
            r = fence_kill_ms.changed() => match r {
                Ok(()) => {
                    let ms = *fence_kill_ms.borrow_and_update();
                    backstop.set_fence_kill(Duration::from_millis(ms));
                    ShimCommand::FenceKill { timeout_ms: ms }
                }
                Err(_) => return,
            },
            c = ctl.recv() => match c {
                Some(c) => c,
                None => return,
            },
            _ = sleep_until_opt(due) => {
                // The monitor owns the shim's process (it alone may signal it: once reaped, its
                // pid could be another's), so the steps go there.
                if let Some(step) = backstop.poll(monotonic_ns().unwrap_or(u64::MAX)) {
                    let _ = steps.send(step).await;
                }
                continue;
            }
        };
        let line = cmd.to_line();
        match tokio::time::timeout(WRITE_TIMEOUT, stdin.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => tracing::warn!("a shim did not take {:?} in time", line.trim()),
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The shim's process as the monitor waits for it: our child, or an adopted shim (its
/// control connection ends when it exits; its pidfd, where the kernel has them, is what we
/// signal and wait on, so a reused pid is never hit).
pub(super) enum ShimProc {
    /// A shim this agent started.
    Child(tokio::process::Child),
    /// A shim re-adopted through its control socket.
    Adopted(super::adopted_proc::AdoptedProc),
}

impl ShimProc {
    /// Resolves once the shim has exited (cancel-safe).
    async fn wait(&mut self) {
        match self {
            ShimProc::Child(c) => {
                let _ = c.wait().await;
            }
            ShimProc::Adopted(a) => a.wait().await,
        }
    }

    /// Sends `sig` to the shim if it is still there.
    fn signal(&mut self, sig: i32) {
        match self {
            ShimProc::Child(c) => {
                // `id()` is `None` once reaped.
                if let Some(pid) = c.id() {
                    // SAFETY: kill has no memory-safety preconditions; an unreaped child.
                    unsafe { libc::kill(pid as i32, sig) };
                }
            }
            ShimProc::Adopted(a) => a.signal(sig),
        }
    }
}

/// Waits for a shim to exit and reports its job's end.
pub(super) async fn monitor(
    mut child: ShimProc,
    target: Target,
    mut steps: mpsc::Receiver<Step>,
    held: Arc<HeldTable>,
    exits_tx: mpsc::Sender<JobExit>,
    job_dir: PathBuf,
    token: u64,
) {
    let (job_id, pid) = (target.job_id.clone(), target.pid);
    let containment = Arc::clone(&target.containment);
    loop {
        tokio::select! {
            // Cancel-safe: a step in between does not lose the exit.
            _ = child.wait() => break,
            step = steps.recv() => match step {
                Some(Step::KillJob) => {
                    tracing::error!(
                        job = %job_id,
                        shim = target.shim_pid,
                        "the shim did not end its job by the lease deadline and fence kill \
                         timeout (stopped or wedged): the agent kills the job itself"
                    );
                    target.kill_job().await;
                    // Wake the shim, so it records the end.
                    child.signal(libc::SIGCONT);
                }
                Some(Step::KillShim) => {
                    tracing::error!(job = %job_id, shim = target.shim_pid, "the shim still does not answer: SIGKILL");
                    child.signal(libc::SIGKILL);
                }
                None => {
                    child.wait().await;
                    break;
                }
            },
        }
    }
    let status = read_status(&job_dir).filter(|s| s.state == JobState::Exited && s.pid == pid);
    let exit = match status {
        Some(s) => JobExit {
            job_id: job_id.clone(),
            fencing_token: token,
            code: s.code,
            signal: s.signal,
            reason: s.reason.unwrap_or(ExitReason::Exited),
        },
        None => {
            // The shim died without recording an end: whatever is left of the job must not run
            // unsupervised.
            tracing::error!(job = %job_id, pid, "shim died without recording an end; killing the job");
            target.kill_job().await;
            JobExit {
                job_id: job_id.clone(),
                fencing_token: token,
                code: None,
                signal: None,
                reason: ExitReason::Lost,
            }
        }
    };
    // The shim has exited and emptied the job's cgroup: remove it (a cgroup with processes
    // left in it stays, and keeps a new copy out).
    containment.release(&job_id);
    // The exit is handed on before the copy stops being held: whoever lists what is held and
    // then drains the exits sees the copy in one or the other, never in neither.
    let _ = exits_tx.send(exit).await;
    held.release(&job_id, token);
}
