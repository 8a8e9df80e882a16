//! Fencing tokens: the counter that lets every party tell a job's current copy from an old one.
//!
//! # Where the tokens fit in the argument
//! DESIGN.md ("Leases and fencing") shows that the old copy of a job is dead before the
//! coordinator declares its node down: the agent's lease runs out first, and the agent fences
//! itself. Tokens close the gaps the lease alone leaves open, the ones where a *message* outlives
//! its moment:
//! - a start command that sat in a queue or a retransmit buffer and arrives after the job was
//!   moved elsewhere,
//! - an exit report of an old copy arriving after the job was restarted or moved (acting on it
//!   would restart a job that already runs: two copies),
//! - a node that comes back after being declared down and still believes it runs the job,
//! - storage the job writes to, which sees `TANDEM_FENCING_TOKEN` and can refuse a writer whose
//!   token is lower than one it has already seen.
//!
//! # The rules
//! 1. **Issue**: every placement (a start, a restart, a move, a failover) gets
//!    [`next_token`] — strictly greater than every token ever issued for the job — and the job
//!    record with the new `last_fencing_token` is written and flushed *before* the start command
//!    is sent. A coordinator that crashes after the write issues a higher token on its next
//!    attempt; one that crashes before it never sent anything with the token.
//! 2. **Coordinator**: a report (started, exited, running) whose token is not the job's current
//!    one is about an old copy: it is ignored, or the copy is killed
//!    ([`super::decision::Decision::KillStale`]); it never changes the job.
//! 3. **Agent**: it remembers, per job, the highest token it has seen (`seen_max`, kept on disk
//!    so that an agent restart does not forget it) and accepts a command only if
//!    [`accept_command`] says so. Accepting a start with a higher token first kills any copy of
//!    the job it still runs with a lower one.
//!
//! Tokens are per job: commands, reports and the job's own writes all name the job, so a
//! per-job counter orders everything that needs ordering, and a job's tokens read as the count
//! of its placements.

use super::model::JobRecord;

/// The token for the job's next placement: one more than the highest ever issued
/// (`last_fencing_token`), so strictly greater than every token any node or storage has seen
/// for the job. Record it as the job's `last_fencing_token` before using it.
///
/// # Panics
/// When the job has used up 2^64 - 1 tokens (never: that is a placement per nanosecond for
/// 584 years); wrapping round to 0 would break the ordering, so it refuses instead.
pub fn next_token(job: &JobRecord) -> u64 {
    job.last_fencing_token
        .checked_add(1)
        .expect("a job's fencing tokens are used up")
}

/// The agent's rule: whether to act on a command for a job carrying `token`, when `seen_max` is
/// the highest token the agent has seen for that job (0: none).
///
/// Refuses only *older* tokens. An equal token is the same placement's command sent again (the
/// coordinator repeats a start it is not sure arrived), which the agent handles idempotently.
/// After accepting, the agent sets `seen_max = max(seen_max, token)`, durably, before acting.
pub fn accept_command(seen_max: u64, token: u64) -> bool {
    token >= seen_max
}

/// Whether a report about `token` is about the job's current placement. Reports about any other
/// token are about an old copy (or, for a higher one, about a record that was not persisted) and
/// must not change the job.
pub fn is_current(job: &JobRecord, token: u64) -> bool {
    job.current
        .as_ref()
        .is_some_and(|p| p.fencing_token == token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::{JobSpec, Placement};
    use proptest::prelude::*;
    use tandem_common::ids::NodeId;

    fn job(last: u64, current: Option<u64>) -> JobRecord {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "a", "cluster": "c-000000000001", "command": ["true"],
            "resources": {"cpu_millis": 1, "memory_bytes": 1048576}
        }))
        .unwrap();
        let mut j = JobRecord::new("j-000000000001".into(), spec, 0);
        j.last_fencing_token = last;
        j.current = current.map(|t| Placement::new(NodeId("n-1".into()), t, vec![]));
        j
    }

    #[test]
    fn the_first_token_is_one_and_each_next_is_greater() {
        assert_eq!(next_token(&job(0, None)), 1);
        assert_eq!(next_token(&job(41, Some(41))), 42);
        // Greater than the highest issued, not than the current one.
        assert_eq!(next_token(&job(9, Some(7))), 10);
    }

    #[test]
    #[should_panic(expected = "used up")]
    fn tokens_never_wrap() {
        next_token(&job(u64::MAX, None));
    }

    #[test]
    fn the_agent_refuses_only_older_tokens() {
        assert!(accept_command(0, 1));
        assert!(accept_command(5, 5), "a repeated command is accepted");
        assert!(accept_command(5, 6));
        assert!(!accept_command(6, 5));
    }

    #[test]
    fn only_the_current_token_is_current() {
        let j = job(3, Some(3));
        assert!(is_current(&j, 3));
        assert!(!is_current(&j, 2) && !is_current(&j, 4));
        assert!(!is_current(&job(3, None), 3));
    }

    proptest! {
        /// An agent applying `accept_command` to commands in any order never acts on a token
        /// lower than one it acted on before, and acts on the newest whenever it arrives.
        #[test]
        fn an_agent_never_goes_back(tokens in proptest::collection::vec(1u64..50, 1..40)) {
            let mut seen_max = 0;
            for t in tokens {
                let accepted = accept_command(seen_max, t);
                prop_assert_eq!(accepted, t >= seen_max);
                if accepted {
                    prop_assert!(t >= seen_max);
                    seen_max = t;
                }
            }
        }
    }
}
