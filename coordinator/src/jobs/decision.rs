//! What the planner decides, and how each decision changes a job record.
//!
//! # The contract with the caller (the shell)
//! For every [`Decision`], in order: **persist** the records [`Decision::apply`] produces
//! (flushed), **then act**, then record an event with [`Decision::reason`]. Persisting first is
//! what makes the fencing tokens work: a token is durable before any node can see it, so a
//! restarted coordinator never issues it twice, and it finishes a move from what it stored.
//!
//! What "act" means, per decision:
//! - [`Decision::Start`], [`Decision::Replace`], [`Decision::Restart`]: send the start command
//!   (job, token, GPUs) to `to.node` (after `backoff_ms` for a restart). For `Replace` the old
//!   copy is already dead: its node is down (its lease ran out, so it fenced itself; see
//!   DESIGN.md) or the node said it does not hold the job.
//! - [`Decision::Move`]: stop the old copy (`from`, `old_token`) first and start the new one only
//!   once the stop is confirmed — the old copy's exit report (which the planner then ignores as
//!   stale) or its node declared down. Never before. The same holds for any start of a job
//!   while one of its older copies is still being stopped.
//! - [`Decision::KillStale`]: tell `node` to kill its copy of `job` with that token.
//! - [`Decision::Stop`]: stop the copy, if any (SIGTERM, SIGKILL after `kill_timeout`).
//! - [`Decision::Hold`], [`Decision::Resume`], [`Decision::Keep`], [`Decision::Ignore`],
//!   [`Decision::Pending`], [`Decision::Failed`], [`Decision::Completed`],
//!   [`Decision::Started`]: nothing beyond the record and the event.

use super::fencing::is_current;
use super::model::{JobRecord, JobState, Placement};
use super::placement::Choice;
use tandem_common::ids::NodeId;

/// One thing to persist and do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Place a job that runs nowhere (new, or pending until now).
    Start {
        /// The job's id.
        job: String,
        /// Where.
        to: Choice,
        /// Its new token.
        fencing_token: u64,
        /// Why, for the event.
        reason: String,
    },
    /// Place a job again whose copy is gone: its node is down, or came back without it.
    Replace {
        /// The job's id.
        job: String,
        /// The node it was on.
        from: NodeId,
        /// Where it goes.
        to: Choice,
        /// Its new token.
        fencing_token: u64,
        /// Why the old placement ended (`node down`), for the history.
        end_reason: String,
        /// Why, for the event.
        reason: String,
    },
    /// Move a running job: stop the old copy, then start the new one (drain, failback).
    Move {
        /// The job's id.
        job: String,
        /// The node it leaves.
        from: NodeId,
        /// The token of the copy to stop.
        old_token: u64,
        /// Where it goes.
        to: Choice,
        /// Its new token.
        fencing_token: u64,
        /// Always true: the old copy is stopped before the new one starts.
        stop_old_first: bool,
        /// Why the old placement ended (`drained`), for the history.
        end_reason: String,
        /// Why, for the event.
        reason: String,
    },
    /// Start a job again after it exited, by its restart policy.
    Restart {
        /// The job's id.
        job: String,
        /// The node it exited on.
        from: NodeId,
        /// Where it starts again (`from`, unless that node cannot take it any more).
        to: Choice,
        /// Its new token.
        fencing_token: u64,
        /// The job's restart count after this restart.
        attempt: u32,
        /// How long to wait before sending the start.
        backoff_ms: u64,
        /// How it exited (`exited 1`), for the history.
        end_reason: String,
        /// Why, for the event.
        reason: String,
    },
    /// The agent confirmed the start of the current placement: the job is `running`.
    Started {
        /// The job's id.
        job: String,
        /// The placement's token.
        fencing_token: u64,
    },
    /// The job fits nowhere: it waits, without a placement, for room.
    Pending {
        /// The job's id.
        job: String,
        /// Why its placement ended, if it had one.
        end_reason: Option<String>,
        /// Why it fits nowhere (its `state_reason`).
        reason: String,
    },
    /// The job ended on a failure and is not restarted.
    Failed {
        /// The job's id.
        job: String,
        /// How it ended, for the history.
        end_reason: String,
        /// Why it is not restarted.
        reason: String,
    },
    /// The job ended successfully and is not restarted.
    Completed {
        /// The job's id.
        job: String,
        /// How it ended, for the history.
        end_reason: String,
        /// Why, for the event.
        reason: String,
    },
    /// A user stopped the job.
    Stop {
        /// The job's id.
        job: String,
        /// The node of the copy to stop, if it had one.
        node: Option<NodeId>,
        /// The token of that copy.
        fencing_token: Option<u64>,
        /// Why, for the event.
        reason: String,
    },
    /// `node` runs a copy of `job` that is not the current one: kill it.
    KillStale {
        /// The node.
        node: NodeId,
        /// The job's id.
        job: String,
        /// The stale copy's token.
        fencing_token: u64,
        /// Why, for the event.
        reason: String,
    },
    /// The job cannot leave a draining node (nothing else fits); it keeps running there.
    Keep {
        /// The job's id.
        job: String,
        /// Why.
        reason: String,
    },
    /// The disruption guard: failover in `cluster` is paused; `jobs` stay where they were.
    Hold {
        /// The cluster's id.
        cluster: String,
        /// The jobs left on down nodes.
        jobs: Vec<String>,
        /// Why, for the event (and the jobs' `state_reason`).
        reason: String,
    },
    /// Failover in `cluster` resumes (nodes returned, or an operator forced it).
    Resume {
        /// The cluster's id.
        cluster: String,
        /// Why, for the event.
        reason: String,
    },
    /// A report about an old copy (or an unknown job): nothing to do.
    Ignore {
        /// The job's id, if known.
        job: Option<String>,
        /// Why, for the event.
        reason: String,
    },
}

impl Decision {
    /// Why, for the event.
    pub fn reason(&self) -> &str {
        match self {
            Self::Start { reason, .. }
            | Self::Replace { reason, .. }
            | Self::Move { reason, .. }
            | Self::Restart { reason, .. }
            | Self::Pending { reason, .. }
            | Self::Failed { reason, .. }
            | Self::Completed { reason, .. }
            | Self::Stop { reason, .. }
            | Self::KillStale { reason, .. }
            | Self::Keep { reason, .. }
            | Self::Hold { reason, .. }
            | Self::Resume { reason, .. }
            | Self::Ignore { reason, .. } => reason,
            Self::Started { .. } => "the agent confirmed the start",
        }
    }

    /// The job it is about (`None` for `Hold`, `Resume` and an `Ignore` of an unknown job).
    pub fn job(&self) -> Option<&str> {
        match self {
            Self::Start { job, .. }
            | Self::Replace { job, .. }
            | Self::Move { job, .. }
            | Self::Restart { job, .. }
            | Self::Started { job, .. }
            | Self::Pending { job, .. }
            | Self::Failed { job, .. }
            | Self::Completed { job, .. }
            | Self::Stop { job, .. }
            | Self::KillStale { job, .. }
            | Self::Keep { job, .. } => Some(job),
            Self::Ignore { job, .. } => job.as_deref(),
            Self::Hold { .. } | Self::Resume { .. } => None,
        }
    }

    /// The new placement it makes (node, GPUs, token), for `Start`, `Replace`, `Move` and
    /// `Restart`.
    pub fn placement(&self) -> Option<(&Choice, u64)> {
        match self {
            Self::Start {
                to, fencing_token, ..
            }
            | Self::Replace {
                to, fencing_token, ..
            }
            | Self::Move {
                to, fencing_token, ..
            }
            | Self::Restart {
                to, fencing_token, ..
            } => Some((to, *fencing_token)),
            _ => None,
        }
    }

    /// Applies the decision to `jobs` (the stored records, or a copy to persist) at `now_ms`.
    /// Returns false, changing nothing, when it does not apply: an unknown job, a decision for
    /// jobs that is not about one record (`KillStale`, `Keep`, `Resume`, `Ignore`), a new
    /// placement whose token is not above every token issued (the rule of
    /// [`super::fencing`]), or a decision whose premise no longer holds (a `Replace` from a node
    /// the job is not on, a `Started` for a token that is not current): a stale decision.
    pub fn apply(&self, jobs: &mut [JobRecord], now_ms: u64) -> bool {
        if let Self::Hold {
            jobs: ids, reason, ..
        } = self
        {
            let mut changed = false;
            for j in jobs.iter_mut().filter(|j| ids.contains(&j.id)) {
                j.state_reason = reason.clone();
                changed = true;
            }
            return changed;
        }
        let Some(id) = self.job() else { return false };
        let Some(j) = jobs.iter_mut().find(|j| j.id == id) else {
            return false;
        };
        let fresh = |j: &JobRecord, token: u64| token > j.last_fencing_token;
        let on = |j: &JobRecord, node: &NodeId| j.node() == Some(node);
        let place = |j: &mut JobRecord, to: &Choice, token: u64, state: JobState, why: &str| {
            j.current = Some(Placement::new(to.node.clone(), token, to.gpus.clone()));
            j.last_fencing_token = token;
            j.state = state;
            j.state_reason = why.to_string();
        };
        match self {
            Self::Start {
                to,
                fencing_token,
                reason,
                ..
            } => {
                if j.current.is_some() || j.state.is_terminal() || !fresh(j, *fencing_token) {
                    return false;
                }
                let after = j.waits_for.take();
                place(j, to, *fencing_token, JobState::Starting, reason);
                if let Some(p) = j.current.as_mut() {
                    p.after = after;
                }
            }
            Self::Replace {
                from,
                to,
                fencing_token,
                end_reason,
                reason,
                ..
            } => {
                if !on(j, from) || !fresh(j, *fencing_token) {
                    return false;
                }
                // A placement still waiting for an older copy to end hands the wait on: that
                // copy may still run wherever it was.
                let after = j
                    .current
                    .as_ref()
                    .filter(|p| p.started_ms.is_none())
                    .and_then(|p| p.after.clone());
                j.end_current(now_ms, end_reason);
                place(j, to, *fencing_token, JobState::Migrating, reason);
                if let Some(p) = j.current.as_mut() {
                    p.after = after;
                }
            }
            Self::Move {
                from,
                old_token,
                to,
                fencing_token,
                end_reason,
                reason,
                ..
            } => {
                if !on(j, from) || !is_current(j, *old_token) || !fresh(j, *fencing_token) {
                    return false;
                }
                // The new copy waits for the old one to end; but an old placement that still
                // waited for an older copy was never started (its start goes out only once
                // that wait is over), and the copy that may still run is the older one: the
                // wait is handed on. (The simulation found two copies: a drain moved a job
                // whose placement waited for the copy on a node being removed, and the new
                // copy waited only for the placement that never ran.)
                let after = j
                    .current
                    .as_ref()
                    .filter(|p| p.started_ms.is_none())
                    .and_then(|p| p.after.clone())
                    .unwrap_or_else(|| super::model::OldCopy {
                        node: from.clone(),
                        fencing_token: *old_token,
                    });
                j.end_current(now_ms, end_reason);
                place(j, to, *fencing_token, JobState::Migrating, reason);
                if let Some(p) = j.current.as_mut() {
                    p.after = Some(after);
                }
            }
            Self::Restart {
                from,
                to,
                fencing_token,
                attempt,
                end_reason,
                reason,
                ..
            } => {
                if !on(j, from) || !fresh(j, *fencing_token) {
                    return false;
                }
                j.end_current(now_ms, end_reason);
                place(j, to, *fencing_token, JobState::Starting, reason);
                j.restarts = *attempt;
            }
            Self::Started { fencing_token, .. } => {
                if !is_current(j, *fencing_token) {
                    return false;
                }
                if let Some(p) = j.current.as_mut() {
                    p.started_ms.get_or_insert(now_ms);
                }
                j.state = JobState::Running;
                j.state_reason = "running".into();
            }
            Self::Pending {
                end_reason, reason, ..
            } => {
                if j.state.is_terminal() {
                    return false;
                }
                // A placement given up while it waited for an older copy leaves that wait to
                // the job: the older copy may still run. (The simulation found two copies: a
                // move's new node died, the job went pending and lost the wait, and its next
                // start ran beside the copy on the node being removed.)
                let waited = j
                    .current
                    .as_ref()
                    .filter(|p| p.started_ms.is_none())
                    .and_then(|p| p.after.clone());
                if let Some(why) = end_reason {
                    j.end_current(now_ms, why);
                }
                if waited.is_some() && j.current.is_none() {
                    j.waits_for = waited;
                }
                if j.current.is_some() {
                    return false;
                }
                j.state = JobState::Pending;
                j.state_reason = reason.clone();
            }
            Self::Failed {
                end_reason, reason, ..
            }
            | Self::Completed {
                end_reason, reason, ..
            } => {
                // A move's placement that still waited for its old copy never started: the
                // job ended there, in the old copy.
                let never_started = j.current.as_ref().is_some_and(|p| p.after.is_some());
                j.end_current(
                    now_ms,
                    if never_started {
                        "not started: the job ended in the copy it moved from"
                    } else {
                        end_reason
                    },
                );
                j.waits_for = None;
                j.state = if matches!(self, Self::Failed { .. }) {
                    JobState::Failed
                } else {
                    JobState::Completed
                };
                j.state_reason = reason.clone();
            }
            Self::Stop { reason, .. } => {
                // The job is over, but not its last copy: until that copy's end is reported
                // (or its node is down, or registers without it) the job keeps its name and
                // its room on that node (`waits_for`). Before, a stop freed both at once, and
                // the job submitted again under its name ran beside the old copy for the
                // old copy's SIGTERM-to-SIGKILL timeout (session 12). The copy that may run
                // is the current one, or, when the current placement still waited for an
                // older copy (its start withheld), that older one.
                let last = j.current.as_ref().map(|p| match &p.after {
                    Some(a) if p.started_ms.is_none() => a.clone(),
                    _ => super::model::OldCopy {
                        node: p.node.clone(),
                        fencing_token: p.fencing_token,
                    },
                });
                j.waits_for = last.or(j.waits_for.take());
                j.end_current(now_ms, "stopped by user");
                j.state = JobState::Stopped;
                j.state_reason = reason.clone();
            }
            Self::KillStale { .. }
            | Self::Keep { .. }
            | Self::Hold { .. }
            | Self::Resume { .. }
            | Self::Ignore { .. } => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::testkit::{id, job, running, spec};

    fn to(n: u8) -> Choice {
        Choice {
            node: id(n),
            gpus: vec![format!("GPU-{n}-0")],
            reserve_on: None,
        }
    }

    #[test]
    fn a_replace_ends_the_old_placement_and_records_the_new_token() {
        let mut jobs = vec![running(1, spec(100, 1 << 20, 1), 1, 3, &["GPU-1-0"])];
        let d = Decision::Replace {
            job: jobs[0].id.clone(),
            from: id(1),
            to: to(2),
            fencing_token: 4,
            end_reason: "node down".into(),
            reason: "node-1 is down".into(),
        };
        assert!(d.apply(&mut jobs, 50));
        let j = &jobs[0];
        assert_eq!(j.state, JobState::Migrating);
        assert_eq!((j.node(), j.fencing_token()), (Some(&id(2)), Some(4)));
        assert_eq!(j.last_fencing_token, 4);
        assert_eq!(j.history.len(), 1);
        assert_eq!(j.history[0].ended_ms, Some(50));
        assert_eq!(j.history[0].end_reason.as_deref(), Some("node down"));
        // Applying it again is stale: the job is no longer on node 1, and 4 is not fresh.
        assert!(!d.apply(&mut jobs, 60));
        assert_eq!(jobs[0].history.len(), 1);
    }

    #[test]
    fn a_new_placement_with_an_old_token_does_not_apply() {
        let mut jobs = vec![running(1, spec(100, 1 << 20, 0), 1, 7, &[])];
        jobs[0].last_fencing_token = 9; // a placement with token 9 was issued and lost
        for token in [7, 9] {
            let d = Decision::Restart {
                job: jobs[0].id.clone(),
                from: id(1),
                to: to(1),
                fencing_token: token,
                attempt: 1,
                backoff_ms: 0,
                end_reason: "exited 1".into(),
                reason: String::new(),
            };
            assert!(!d.apply(&mut jobs, 0), "token {token}");
        }
    }

    #[test]
    fn started_only_confirms_the_current_token() {
        let mut jobs = vec![running(1, spec(100, 1 << 20, 0), 1, 2, &[])];
        jobs[0].state = JobState::Starting;
        jobs[0].current.as_mut().unwrap().started_ms = None;
        let started = |t| Decision::Started {
            job: jobs_id(),
            fencing_token: t,
        };
        assert!(!started(1).apply(&mut jobs, 5));
        assert!(started(2).apply(&mut jobs, 5));
        assert_eq!(jobs[0].state, JobState::Running);
        assert_eq!(jobs[0].current.as_ref().unwrap().started_ms, Some(5));
    }

    fn jobs_id() -> String {
        job(1, spec(1, 1, 0)).id
    }

    #[test]
    fn pending_failed_completed_and_stop_leave_no_placement() {
        for d in [
            Decision::Pending {
                job: jobs_id(),
                end_reason: Some("node down".into()),
                reason: "no room".into(),
            },
            Decision::Failed {
                job: jobs_id(),
                end_reason: "exited 1".into(),
                reason: "gave up".into(),
            },
            Decision::Completed {
                job: jobs_id(),
                end_reason: "exited 0".into(),
                reason: "done".into(),
            },
            Decision::Stop {
                job: jobs_id(),
                node: Some(id(1)),
                fencing_token: Some(1),
                reason: "DELETE".into(),
            },
        ] {
            let mut jobs = vec![running(1, spec(100, 1 << 20, 0), 1, 1, &[])];
            assert!(d.apply(&mut jobs, 9), "{d:?}");
            assert!(jobs[0].current.is_none(), "{d:?}");
            assert_eq!(jobs[0].history.len(), 1);
            assert_eq!(jobs[0].state_reason, d.reason());
        }
        let mut jobs = vec![running(1, spec(100, 1 << 20, 0), 1, 1, &[])];
        let d = Decision::Pending {
            job: jobs_id(),
            end_reason: None,
            reason: "x".into(),
        };
        assert!(!d.apply(&mut jobs, 0), "a running job needs an end reason");
    }

    #[test]
    fn a_stop_keeps_the_last_copy_that_may_run_until_its_end_is_known() {
        let stop = Decision::Stop {
            job: jobs_id(),
            node: Some(id(1)),
            fencing_token: Some(4),
            reason: "DELETE".into(),
        };
        let mut jobs = vec![running(1, spec(100, 1 << 20, 1), 1, 4, &["GPU-1-0"])];
        assert!(stop.apply(&mut jobs, 9));
        let last = jobs[0]
            .stopping()
            .expect("the copy on node 1 may still run");
        assert_eq!((last.node.clone(), last.fencing_token), (id(1), 4));
        assert_eq!(jobs[0].gpus_of(last), ["GPU-1-0".to_string()]);
        // A move's placement whose start was withheld never ran: the older copy is the one.
        let mut jobs = vec![running(1, spec(100, 1 << 20, 0), 2, 5, &[])];
        if let Some(p) = jobs[0].current.as_mut() {
            p.started_ms = None;
            p.after = Some(super::super::model::OldCopy {
                node: id(1),
                fencing_token: 4,
            });
        }
        assert!(stop.apply(&mut jobs, 9));
        let last = jobs[0].stopping().expect("the older copy may still run");
        assert_eq!((last.node.clone(), last.fencing_token), (id(1), 4));
        // A job that never ran anywhere has nothing to wait for.
        let mut jobs = vec![crate::jobs::testkit::job(1, spec(100, 1 << 20, 0))];
        assert!(stop.apply(&mut jobs, 9));
        assert!(jobs[0].stopping().is_none());
    }

    #[test]
    fn hold_explains_itself_on_the_jobs() {
        let mut jobs = vec![running(1, spec(100, 1 << 20, 0), 1, 1, &[])];
        let d = Decision::Hold {
            cluster: "c".into(),
            jobs: vec![jobs_id()],
            reason: "paused".into(),
        };
        assert!(d.apply(&mut jobs, 0));
        assert_eq!(jobs[0].state_reason, "paused");
        assert_eq!(jobs[0].state, JobState::Running);
    }
}
