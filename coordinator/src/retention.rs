//! Retention: finished records do not pile up for ever.
//!
//! Finished jobs, used-up, expired or revoked join tokens and finished operations were never deleted:
//! a long-lived coordinator's store and memory grew with every job it ever ran, and every
//! planner call copied every job. [`expired`] decides (plain code, `now` passed in) which
//! records are past their retention; `Engine::sweep` deletes them in one durable batch.
//!
//! Deleting a finished job is safe for the fencing argument: it has no placement, its last
//! copy was stopped or ended long before (retention is at least a minute), and a node that
//! still reported a copy of it would be told to kill it (a job that does not exist).

use crate::jobs::model::JobRecord;
use crate::model::{OperationRecord, OperationState, TokenRecord};
use std::time::Duration;

/// How long finished records are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Finished jobs, from their end.
    pub finished_jobs: Duration,
    /// Expired tokens, from their expiry; used-up ones, from their creation.
    pub tokens: Duration,
    /// Finished operations, from when they finished.
    pub operations: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        let week = Duration::from_secs(7 * 86_400);
        Self {
            finished_jobs: week,
            tokens: week,
            operations: week,
        }
    }
}

/// What is past its retention.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Job ids.
    pub jobs: Vec<String>,
    /// Token ids.
    pub tokens: Vec<String>,
    /// Operation ids.
    pub operations: Vec<String>,
}

impl Expired {
    /// Whether nothing is to be deleted.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.tokens.is_empty() && self.operations.is_empty()
    }
}

/// When a finished job ended (its last placement's end, or its creation if it never ran).
pub fn job_ended_ms(j: &JobRecord) -> u64 {
    j.history
        .iter()
        .filter_map(|p| p.ended_ms)
        .max()
        .unwrap_or(j.created_ms)
}

/// The records past their retention at `now_ms`.
pub fn expired<'a>(
    r: &Retention,
    now_ms: u64,
    jobs: impl IntoIterator<Item = &'a JobRecord>,
    tokens: &[TokenRecord],
    operations: &[OperationRecord],
) -> Expired {
    let older =
        |since: u64, keep: Duration| now_ms.saturating_sub(since) >= keep.as_millis() as u64;
    let mut out = Expired {
        jobs: jobs
            .into_iter()
            .filter(|j| {
                // A stopped job whose last copy may still run keeps its record (and so its
                // name and its room) until that copy's end is known.
                j.state.is_terminal()
                    && j.current.is_none()
                    && j.waits_for.is_none()
                    && older(job_ended_ms(j), r.finished_jobs)
            })
            .map(|j| j.id.clone())
            .collect(),
        tokens: tokens
            .iter()
            .filter(|t| {
                // An expired token counts from its expiry; a used-up one from its creation
                // (when its last use came is not recorded).
                let expired = now_ms >= t.expires_ms;
                let used_up = t.uses >= t.uses_allowed;
                (expired && older(t.expires_ms, r.tokens))
                    || (used_up && older(t.created_ms, r.tokens))
                    || t.revoked_ms.is_some_and(|at| older(at, r.tokens))
            })
            .map(|t| t.id.clone())
            .collect(),
        operations: operations
            .iter()
            .filter(|o| {
                o.state != OperationState::Pending
                    && older(o.done_ms.unwrap_or(o.created_ms), r.operations)
            })
            .map(|o| o.id.clone())
            .collect(),
    };
    out.jobs.sort();
    out.tokens.sort();
    out.operations.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::{JobState, Placement};

    const MIN: u64 = 60_000;

    fn retention() -> Retention {
        Retention {
            finished_jobs: Duration::from_secs(600),
            tokens: Duration::from_secs(600),
            operations: Duration::from_secs(600),
        }
    }

    fn job(id: &str, state: JobState, ended_ms: Option<u64>) -> JobRecord {
        let mut j = crate::jobs::testkit::job(0, crate::jobs::testkit::spec(1, 0, 0));
        j.id = id.into();
        j.state = state;
        j.created_ms = 0;
        if let Some(e) = ended_ms {
            let mut p = Placement::new(tandem_common::ids::NodeId::random(), 1, vec![]);
            p.ended_ms = Some(e);
            j.history.push(p);
        }
        j
    }

    #[test]
    fn only_finished_jobs_past_their_retention_go() {
        let jobs = [
            job("done-old", JobState::Completed, Some(MIN)),
            job("done-new", JobState::Completed, Some(20 * MIN)),
            job("failed-old", JobState::Failed, Some(MIN)),
            job("running", JobState::Running, None),
            job("pending-old", JobState::Pending, None),
            job("stopped-never-ran", JobState::Stopped, None),
        ];
        let e = expired(&retention(), 25 * MIN, jobs.iter(), &[], &[]);
        assert_eq!(e.jobs, vec!["done-old", "failed-old", "stopped-never-ran"]);
    }

    #[test]
    fn tokens_go_once_spent_or_expired_and_old() {
        let t = |id: &str, uses: u32, expires_ms: u64| TokenRecord {
            id: id.into(),
            secret_sha256: String::new(),
            created_ms: 0,
            expires_ms,
            uses_allowed: 1,
            uses,
            cluster: None,
            revoked_ms: None,
        };
        let tokens = [
            t("used", 1, 100 * MIN),
            t("expired-long-ago", 0, MIN),
            t("expired-just-now", 0, 24 * MIN),
            t("live", 0, 100 * MIN),
        ];
        let e = expired(&retention(), 25 * MIN, [], &tokens, &[]);
        assert_eq!(e.tokens, vec!["expired-long-ago", "used"]);
    }
}
