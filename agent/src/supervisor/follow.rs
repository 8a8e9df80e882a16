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
use tokio::io::AsyncWriteExt;
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
    /// The shim has not ended its job in time: kill the job, then wake the shim to record it.
    async fn kill_job(&self) {
        tracing::error!(
            job = %self.job_id,
            shim = self.shim_pid,
            "the shim did not end its job by the lease deadline and fence kill timeout \
             (stopped or wedged): the agent kills the job itself"
        );
        signal_group(self.pid as i32, libc::SIGKILL);
        let (c, id) = (Arc::clone(&self.containment), self.job_id.clone());
        let gone = tokio::task::spawn_blocking(move || c.kill_job(&id, Duration::from_secs(5)))
            .await
            .unwrap_or(false);
        if !gone {
            tracing::error!(job = %self.job_id, "processes of the job survived SIGKILL in its cgroup");
        }
        // SAFETY: kill has no memory-safety preconditions; the shim is our child (not reaped
        // while this task runs: its monitor reaps it, and then this task ends).
        unsafe { libc::kill(self.shim_pid as i32, libc::SIGCONT) };
    }

    /// The shim is still there a second after its job was killed: end it (its monitor then
    /// reports the job lost, and kills the job's cgroup once more).
    fn kill_shim(&self) {
        tracing::error!(job = %self.job_id, shim = self.shim_pid, "the shim still does not answer: SIGKILL");
        // SAFETY: as above.
        unsafe { libc::kill(self.shim_pid as i32, libc::SIGKILL) };
    }
}

/// Writes lease changes and commands to one shim's stdin, until the shim is gone or the
/// supervisor is dropped (which closes the pipe: the shim keeps its last deadline). Also the
/// shim's [`Backstop`]: if the shim has not ended its job when the lease is over, the agent
/// does.
pub(super) async fn control(
    mut stdin: tokio::process::ChildStdin,
    mut deadline: watch::Receiver<Option<u64>>,
    mut fence_kill_ms: watch::Receiver<u64>,
    mut ctl: mpsc::Receiver<ShimCommand>,
    mut backstop: Backstop,
    target: Target,
) {
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
                match backstop.poll(monotonic_ns().unwrap_or(u64::MAX)) {
                    Some(Step::KillJob) => target.kill_job().await,
                    Some(Step::KillShim) => target.kill_shim(),
                    None => {}
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

/// Waits for a shim to exit and reports its job's end.
#[allow(clippy::too_many_arguments)]
pub(super) async fn monitor(
    mut child: tokio::process::Child,
    containment: Arc<Containment>,
    held: Arc<HeldTable>,
    exits_tx: mpsc::Sender<JobExit>,
    job_dir: PathBuf,
    job_id: String,
    token: u64,
    pid: u32,
) {
    let _ = child.wait().await;
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
            // unsupervised. The group id is the job's pid.
            tracing::error!(job = %job_id, pid, "shim died without recording an end; killing the job's group");
            signal_group(pid as i32, libc::SIGKILL);
            let left = Arc::clone(&containment);
            let id = job_id.clone();
            let gone =
                tokio::task::spawn_blocking(move || left.kill_job(&id, Duration::from_secs(5)))
                    .await
                    .unwrap_or(false);
            if !gone {
                tracing::error!(job = %job_id, "processes of the job survived SIGKILL in its cgroup");
            }
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
