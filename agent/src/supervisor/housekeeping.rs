//! The supervisor's periodic chores: each job's usage from its cgroup, the disk use of the
//! jobs' dirs, and retention (see [`crate::retention`] for what may go and why); and the
//! `acked` mark an `ExitAck` leaves in a job dir, which retention needs.
//!
//! They run every `usage_report_ms` (10 s by default) on a blocking thread, and the node's
//! report goes to the coordinator as one `AgentMsg::Usage` (protocol 6): never in a heartbeat.

use super::api::Supervisor;
use super::protocol::{LOCK_FILE, TOKEN_FILE};
use super::SupervisorError;
use crate::retention::{self, Policy, ACKED_FILE};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tandem_common::proto::{HeldState, JobUsage, NodeUsage};
use tokio::sync::watch;

impl Supervisor {
    /// Marks in `job_id`'s dir that the coordinator acknowledged the end of its copy `token`
    /// (the highest such token is kept). Not made durable: a mark lost to a crash only keeps
    /// the dir longer. Nothing is made for a job without a dir.
    pub fn exit_acknowledged(&self, job_id: &str, token: u64) {
        let Ok(dir) = self.job_dir(job_id) else {
            return;
        };
        if !dir.is_dir() {
            return;
        }
        if retention::read_acked(&dir).is_some_and(|t| t >= token) {
            return;
        }
        // An acknowledgement of an end cannot be this running copy's: an earlier one of the
        // same token, at most. It must not let retention take this copy's record later.
        if super::protocol::read_status(&dir).is_some_and(|s| {
            s.fencing_token == token && s.state == super::protocol::JobState::Running
        }) {
            return;
        }
        if let Err(e) = std::fs::write(dir.join(ACKED_FILE), format!("{token}\n")) {
            tracing::warn!(job = %job_id, token, error = %e, "cannot mark an acknowledged exit; retention keeps the job's dir");
        }
    }

    /// Removes what is left of finished job `job_id` (its logs, spec, status, shim log and its
    /// default working dir), keeping `fencing_token` and `acked`. Checked under the held
    /// table's lock, so no start of the job can begin meanwhile: the dir must say the job is
    /// finished and its end acknowledged, its cgroup be empty and its lock free. `Ok(false)`
    /// if it is not finished after all.
    pub fn retire(&self, job_id: &str) -> Result<bool, SupervisorError> {
        let dir = self.job_dir(job_id)?;
        let work = self.work_dir.join(job_id);
        let io = |what: String| move |source| SupervisorError::Io { what, source };
        let r = self.held.unheld_then(job_id, || {
            if !retention::finished_on_disk(&dir) || self.containment.alive(job_id) {
                return Ok(false);
            }
            // A shim (of this agent run or an earlier one) holds the lock for its whole life.
            let lock = dir.join(LOCK_FILE);
            let _held = match std::fs::File::open(&lock) {
                Ok(f) => {
                    // SAFETY: flock on a descriptor we own; released when `f` drops.
                    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                        return Ok(false);
                    }
                    Some(f)
                }
                Err(_) => None,
            };
            for e in std::fs::read_dir(&dir)
                .map_err(io(format!("reading {}", dir.display())))?
                .flatten()
            {
                if e.file_name() == TOKEN_FILE || e.file_name() == ACKED_FILE {
                    continue;
                }
                let p = e.path();
                let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(io(format!("removing {}", p.display())))?;
            }
            // `remove_dir_all` does not follow symbolic links (another job of the same user
            // could plant one).
            if work.exists() {
                std::fs::remove_dir_all(&work)
                    .map_err(io(format!("removing {}", work.display())))?;
            }
            self.containment.release(job_id);
            Ok(true)
        });
        r.unwrap_or(Ok(false))
    }

    /// Each running copy's usage from its cgroup (none in process-group mode).
    pub fn usage(&self) -> Vec<JobUsage> {
        self.held
            .list()
            .into_iter()
            .filter(|h| h.state == HeldState::Running)
            .filter_map(|h| {
                let u = self.containment.usage(&h.job_id)?;
                Some(JobUsage {
                    job_id: h.job_id,
                    fencing_token: h.fencing_token,
                    cpu_usec: u.cpu_usec,
                    memory_bytes: u.memory_bytes,
                    memory_peak_bytes: u.memory_peak_bytes,
                })
            })
            .collect()
    }

    /// One round: retention by `policy`, then the node's usage report. Blocking (it walks
    /// the jobs' dirs).
    pub fn housekeep(&self, policy: &Policy, retired: &AtomicU64) -> NodeUsage {
        let state_dir = self.jobs_dir.parent().unwrap_or(&self.jobs_dir);
        let found = retention::scan(state_dir);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut gone = Vec::new();
        for id in retention::plan(&found, now_ms, policy) {
            match self.retire(&id) {
                Ok(true) => {
                    tracing::info!(job = %id, "retention: removed the finished job's files");
                    retired.fetch_add(1, Ordering::Relaxed);
                    gone.push(id);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "retention: cannot remove the finished job's files")
                }
            }
        }
        NodeUsage {
            containment: self.containment.mode().name().to_string(),
            containment_note: self.containment.note().to_string(),
            jobs_disk_bytes: found
                .iter()
                .filter(|f| !gone.contains(&f.job_id))
                .map(|f| f.bytes)
                .sum(),
            jobs_retired: retired.load(Ordering::Relaxed),
            jobs: self.usage(),
        }
    }
}

/// Runs [`Supervisor::housekeep`] at once and then `every`, publishing each report on `tx`,
/// until the supervisor is dropped.
pub async fn run(
    supervisor: Weak<Supervisor>,
    policy: Policy,
    every: Duration,
    tx: watch::Sender<Option<Arc<NodeUsage>>>,
) {
    let retired = Arc::new(AtomicU64::new(0));
    let mut iv = tokio::time::interval(every);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        let Some(s) = supervisor.upgrade() else {
            return;
        };
        let retired = Arc::clone(&retired);
        match tokio::task::spawn_blocking(move || s.housekeep(&policy, &retired)).await {
            Ok(report) => {
                tx.send_replace(Some(Arc::new(report)));
            }
            Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
        }
    }
}
