//! The copies a supervisor holds: running, or a start accepted and still in progress.
//!
//! This table is what the agent tells the coordinator it holds (`Hello`, `JobsHeld`), so it
//! must never leave out a copy that runs or is about to: the coordinator would take it for
//! lost and place the job again. Hence a start is entered as soon as it is accepted (a
//! [`Claim`]), before it waits for a lease or starts a shim, and only a start that fails (or is
//! given up) leaves it again; a running copy leaves only after its exit has been handed on.

use super::admit::{admit, Admission, HeldCopy};
use super::protocol::ShimCommand;
use super::SupervisorError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tandem_common::proto::{HeldJob, HeldState};
use tokio::sync::mpsc;

/// A started job: what a held copy records once its shim answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedJob {
    /// The job's pid, also its process group id.
    pub pid: u32,
    /// The shim's pid.
    pub shim_pid: u32,
    /// The job dir.
    pub job_dir: PathBuf,
}

/// A held copy of a job.
enum Slot {
    /// Accepted; the shim has not answered yet.
    Starting {
        token: u64,
        /// Still waiting for a lease: nothing is on disk yet, and a stop may cancel it.
        waiting: bool,
    },
    /// The shim started the job.
    Running {
        token: u64,
        ctl: mpsc::Sender<ShimCommand>,
        started: StartedJob,
    },
}

impl Slot {
    fn copy(&self) -> HeldCopy {
        match self {
            Slot::Starting { token, .. } => HeldCopy {
                token: *token,
                state: HeldState::Starting,
            },
            Slot::Running { token, .. } => HeldCopy {
                token: *token,
                state: HeldState::Running,
            },
        }
    }
}

/// The table of held copies, one per job at most.
#[derive(Default)]
pub(super) struct HeldTable {
    jobs: Mutex<HashMap<String, Slot>>,
}

/// What [`HeldTable::claim`] gives a start that may go on.
pub(super) enum Claimed {
    /// Nothing was held: the start goes ahead under this claim.
    New(Claim),
    /// The same copy runs already: answer with it.
    Running(StartedJob),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HeldTable {
    /// Runs `f` with the table locked if no copy of `job_id` is held: no start of it can be
    /// admitted (and make its dir) until `f` returns. `None` if a copy is held.
    pub(super) fn unheld_then<R>(&self, job_id: &str, f: impl FnOnce() -> R) -> Option<R> {
        let jobs = lock(&self.jobs);
        if jobs.contains_key(job_id) {
            return None;
        }
        let r = f();
        drop(jobs);
        Some(r)
    }

    /// Admits a start of `job_id` with `token` (see [`super::admit`]) and, if nothing is held,
    /// enters it as starting. A repeat of a start in progress is
    /// [`SupervisorError::StartInProgress`]; another token while a copy is held is refused.
    pub(super) fn claim(
        self: &Arc<Self>,
        job_id: &str,
        token: u64,
    ) -> Result<Claimed, SupervisorError> {
        let mut jobs = lock(&self.jobs);
        let slot = jobs.get(job_id);
        let job = || job_id.to_string();
        match admit(slot.map(Slot::copy), token) {
            Admission::Accept => {}
            Admission::Running => {
                return match slot {
                    Some(Slot::Running { started, .. }) => Ok(Claimed::Running(started.clone())),
                    _ => Err(SupervisorError::AlreadyRunning {
                        job_id: job(),
                        token,
                    }),
                }
            }
            Admission::InProgress => {
                return Err(SupervisorError::StartInProgress {
                    job_id: job(),
                    token,
                })
            }
            // An older start that still waits for its lease has nothing on disk and no
            // process: the newer start supersedes it (that one, when its lease comes, does
            // not go ahead). Refusing the newer one instead counted as the job's exit and
            // failed `restart: never` jobs that had not run (the simulation found it: a
            // node's report and a new placement crossed).
            Admission::OlderHeld { .. }
                if matches!(slot, Some(Slot::Starting { waiting: true, .. })) => {}
            Admission::OlderHeld { held } => {
                return Err(SupervisorError::AlreadyRunning {
                    job_id: job(),
                    token: held,
                })
            }
            Admission::Stale { held } => {
                return Err(SupervisorError::StaleToken {
                    job_id: job(),
                    token,
                    highest: held,
                })
            }
        }
        jobs.insert(
            job(),
            Slot::Starting {
                token,
                waiting: true,
            },
        );
        Ok(Claimed::New(Claim {
            table: Arc::clone(self),
            job_id: job(),
            token,
            promoted: false,
        }))
    }

    /// Enters a copy re-adopted from an earlier agent run as running (see `super::adopt`);
    /// `false`, entering nothing, if a copy of the job is held already.
    pub(super) fn adopt(
        &self,
        job_id: &str,
        token: u64,
        ctl: mpsc::Sender<ShimCommand>,
        started: StartedJob,
    ) -> bool {
        let mut jobs = lock(&self.jobs);
        if jobs.contains_key(job_id) {
            return false;
        }
        jobs.insert(
            job_id.to_string(),
            Slot::Running {
                token,
                ctl,
                started,
            },
        );
        true
    }

    /// Every copy held, sorted by job id.
    pub(super) fn list(&self) -> Vec<HeldJob> {
        let mut v: Vec<HeldJob> = lock(&self.jobs)
            .iter()
            .map(|(id, slot)| {
                let c = slot.copy();
                HeldJob {
                    job_id: id.clone(),
                    fencing_token: c.token,
                    state: c.state,
                }
            })
            .collect();
        v.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        v
    }

    /// The running copy of `job_id`: its token and the way to its shim. A copy still starting
    /// has no shim to command yet.
    pub(super) fn running(&self, job_id: &str) -> Option<(u64, mpsc::Sender<ShimCommand>)> {
        match lock(&self.jobs).get(job_id) {
            Some(Slot::Running { token, ctl, .. }) => Some((*token, ctl.clone())),
            _ => None,
        }
    }

    /// A stop for a copy whose start still waits for a lease: the start is cancelled (its
    /// entry goes, so a newer start may be admitted at once) and `true` is returned. Before,
    /// such a stop did nothing, and the newer start that follows a stop was refused as "an
    /// older copy is held" (the simulation found `restart` jobs failed that way).
    pub(super) fn cancel_waiting(&self, job_id: &str, token: u64) -> bool {
        let mut jobs = lock(&self.jobs);
        let waiting = matches!(
            jobs.get(job_id),
            Some(Slot::Starting { token: t, waiting: true }) if *t == token
        );
        if waiting {
            jobs.remove(job_id);
        }
        waiting
    }

    /// The running copy of `job_id` with `token` has ended (and its exit was handed on).
    pub(super) fn release(&self, job_id: &str, token: u64) {
        let mut jobs = lock(&self.jobs);
        if matches!(jobs.get(job_id), Some(Slot::Running { token: t, .. }) if *t == token) {
            jobs.remove(job_id);
        }
    }
}

/// A start's `Starting` entry. Dropped without [`Claim::promote`] (the start failed, or its
/// future was dropped), it removes the entry, so a failed start is not held.
pub(super) struct Claim {
    table: Arc<HeldTable>,
    job_id: String,
    token: u64,
    promoted: bool,
}

impl Claim {
    /// The lease came: the start goes ahead and can no longer be cancelled. `false`: it was
    /// cancelled by a stop meanwhile, and must not start.
    pub(super) fn proceed(&self) -> bool {
        let mut jobs = lock(&self.table.jobs);
        match jobs.get_mut(&self.job_id) {
            Some(Slot::Starting { token, waiting }) if *token == self.token => {
                *waiting = false;
                true
            }
            _ => false,
        }
    }

    /// The shim answered: the copy runs.
    pub(super) fn promote(mut self, ctl: mpsc::Sender<ShimCommand>, started: StartedJob) {
        let slot = Slot::Running {
            token: self.token,
            ctl,
            started,
        };
        lock(&self.table.jobs).insert(self.job_id.clone(), slot);
        self.promoted = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.promoted {
            return;
        }
        let mut jobs = lock(&self.table.jobs);
        if matches!(jobs.get(&self.job_id), Some(Slot::Starting { token, .. }) if *token == self.token)
        {
            jobs.remove(&self.job_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn started(pid: u32) -> StartedJob {
        StartedJob {
            pid,
            shim_pid: pid + 1,
            job_dir: PathBuf::from("/nonexistent"),
        }
    }

    fn claim(t: &Arc<HeldTable>, id: &str, token: u64) -> Claim {
        match t.claim(id, token) {
            Ok(Claimed::New(c)) => c,
            Ok(Claimed::Running(_)) => panic!("{id} already runs"),
            Err(e) => panic!("{id}: {e}"),
        }
    }

    fn state(t: &HeldTable) -> Vec<(String, u64, HeldState)> {
        t.list()
            .into_iter()
            .map(|h| (h.job_id, h.fencing_token, h.state))
            .collect()
    }

    #[test]
    fn a_stop_cancels_a_start_only_while_it_waits_for_its_lease() {
        let t = Arc::new(HeldTable::default());
        let c = claim(&t, "a", 1);
        assert!(!t.cancel_waiting("a", 2), "another token is not this start");
        assert!(t.cancel_waiting("a", 1));
        assert!(state(&t).is_empty(), "the cancelled start is not held");
        // The newer start that follows the stop is admitted at once ...
        let newer = claim(&t, "a", 2);
        // ... and the cancelled one, when its lease comes, does not go ahead.
        assert!(!c.proceed());
        drop(c);
        assert_eq!(state(&t), vec![("a".into(), 2, HeldState::Starting)]);
        // Once a start has gone ahead, a stop no longer cancels it.
        assert!(newer.proceed());
        assert!(!t.cancel_waiting("a", 2));
    }

    #[test]
    fn a_newer_start_supersedes_an_older_one_still_waiting_for_its_lease() {
        let t = Arc::new(HeldTable::default());
        let old = claim(&t, "a", 1);
        let newer = claim(&t, "a", 2);
        assert!(!old.proceed(), "the superseded start does not go ahead");
        drop(old);
        assert_eq!(state(&t), vec![("a".into(), 2, HeldState::Starting)]);
        // One that went ahead is not superseded: the newer start is refused until it ends.
        assert!(newer.proceed());
        assert!(matches!(
            t.claim("a", 3),
            Err(SupervisorError::AlreadyRunning { token: 2, .. })
        ));
    }

    #[test]
    fn a_claim_is_held_as_starting_then_running_until_released() {
        let t = Arc::new(HeldTable::default());
        let c = claim(&t, "b", 2);
        let _other = claim(&t, "a", 1);
        assert_eq!(
            state(&t),
            [
                ("a".into(), 1, HeldState::Starting),
                ("b".into(), 2, HeldState::Starting)
            ]
        );
        assert!(t.running("b").is_none());
        assert!(matches!(
            t.claim("b", 2),
            Err(SupervisorError::StartInProgress { token: 2, .. })
        ));
        let (ctl, _rx) = mpsc::channel(1);
        c.promote(ctl, started(40));
        assert_eq!(state(&t)[1], ("b".into(), 2, HeldState::Running));
        assert_eq!(t.running("b").map(|r| r.0), Some(2));
        assert!(matches!(t.claim("b", 2), Ok(Claimed::Running(s)) if s == started(40)));
        assert!(matches!(
            t.claim("b", 3),
            Err(SupervisorError::AlreadyRunning { token: 2, .. })
        ));
        assert!(matches!(
            t.claim("b", 1),
            Err(SupervisorError::StaleToken { highest: 2, .. })
        ));
        // Releasing another token leaves the copy; its own token releases it.
        t.release("b", 1);
        assert_eq!(t.list().len(), 2);
        t.release("b", 2);
        assert_eq!(state(&t), [("a".into(), 1, HeldState::Starting)]);
    }

    #[test]
    fn a_claim_dropped_unpromoted_is_not_held() {
        let t = Arc::new(HeldTable::default());
        drop(claim(&t, "a", 1));
        assert!(t.list().is_empty());
        // A promoted claim stays held until released.
        let c = claim(&t, "a", 2);
        let (ctl, _rx) = mpsc::channel(1);
        c.promote(ctl, started(7));
        assert_eq!(t.list().len(), 1);
        t.release("a", 2);
        assert!(t.list().is_empty());
    }
}
