//! Job supervisors left by a previous run of the agent.
//!
//! With `KillMode=process` a restarted (or crashed) agent leaves its per-job supervisors
//! running; each still holds its job until the last lease deadline it was given. [`held`] says
//! which copies live. The new agent first re-adopts those it can through their control sockets
//! (`crate::supervisor::adopt`): they are then held, reported running in its first `Hello`, and
//! continue. Any other copy (a shim of an older version, one that is ending, one that answers
//! nonsense) this agent cannot drive: if it registered at once and reported no such job, the
//! coordinator would place it again — possibly on another node — while the old copy still ran.
//! So before its first registration the agent waits until every old supervisor it did not
//! re-adopt has fenced its job and exited: each holds a `flock` on its job dir for its whole
//! life, so a lock we can take means that copy is gone.
//! Where jobs have cgroups, the job's cgroup says it instead, and better: it stays populated
//! while the shim or any process the job started lives, and a job cannot delete it (it can
//! delete the lock file in its job dir, and a deleted lock file reads as "gone").
//! The wait is bounded by the longest lease plus the kill timeout; the default is about 1.3 s.

use crate::containment::Containment;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long to wait at most: the longest lease the coordinator allows (600 s) plus margin.
pub const MAX_WAIT: Duration = Duration::from_secs(660);

/// How the last copy of each job on this node ended, from its `status.json`, where that
/// copy's token is the highest the job dir has seen. A copy that ended while no agent ran
/// (the agent crashed, or was restarted, and its shim fenced the job or the job ended) was
/// seen by nobody: without this its end would never be reported, and the coordinator would
/// place a `restart: never` job again that had run to its end. Ends reported before are
/// reported again; the coordinator knows them as stale and only acknowledges them.
/// A copy whose status does not say it ended is left out (its supervisor died first).
pub fn ended(state_dir: &Path) -> Vec<tandem_common::proto::JobExitReport> {
    use crate::supervisor::protocol::{read_status, read_token, JobState};
    let Ok(dir) = std::fs::read_dir(state_dir.join("jobs")) else {
        return Vec::new();
    };
    let mut dirs: Vec<_> = dir.flatten().map(|e| e.path()).collect();
    dirs.sort();
    dirs.iter()
        .filter_map(|d| {
            let s = read_status(d)?;
            (read_token(d).ok().flatten() == Some(s.fencing_token)).then_some(s)
        })
        .filter(|s| s.state != JobState::Running)
        .map(|s| {
            let reason = s
                .reason
                .unwrap_or(crate::supervisor::protocol::ExitReason::Lost);
            tandem_common::proto::JobExitReport {
                job_id: s.job_id,
                fencing_token: s.fencing_token,
                code: s.code,
                signal: s.signal,
                cause: reason.cause(),
                reason: format!("{} while no agent ran", reason.name()),
            }
        })
        .collect()
}

/// Jobs with a copy of a previous run still alive: a populated cgroup, or a job dir whose
/// supervisor still holds the lock.
pub fn held(state_dir: &Path, containment: &Containment) -> Vec<String> {
    let mut v = containment.alive_jobs();
    for j in locked(state_dir) {
        if !v.contains(&j) {
            v.push(j);
        }
    }
    v.sort();
    v
}

/// Job dirs under `state_dir/jobs` whose supervisor still holds the lock.
fn locked(state_dir: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(state_dir.join("jobs")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let lock = e.path().join(crate::supervisor::protocol::LOCK_FILE);
            let f = std::fs::OpenOptions::new().read(true).open(&lock).ok()?;
            // SAFETY: flock on a file descriptor we own; the lock is released when `f` drops.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            (r != 0).then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// Waits (polling every 50 ms) until no old supervisor holds a job other than the `adopted`
/// ones (which this run drives now), or `max` passed.
pub async fn wait_until_fenced(
    state_dir: &Path,
    containment: &Containment,
    adopted: &[String],
    max: Duration,
) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + max;
    let mut logged = false;
    let mut watchdog = tandem_common::notify::Watchdog::from_env();
    loop {
        watchdog.ping_if_due(Instant::now());
        let mut still = held(state_dir, containment);
        still.retain(|j| !adopted.contains(j));
        if still.is_empty() {
            return Ok(());
        }
        if !logged {
            tracing::info!(jobs = ?still, "waiting for job copies of a previous agent run to be fenced before registering");
            tandem_common::notify::status(&format!(
                "waiting for {} job copies of a previous run to be fenced",
                still.len()
            ));
            logged = true;
        }
        if Instant::now() >= deadline {
            return Err(still);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
