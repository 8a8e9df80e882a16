//! Whether a start may go ahead, given the copy of the job the supervisor already holds.
//!
//! A plain rule, apart from the process code, because a wrong answer here is how a job runs
//! twice: every refused start is reported to the coordinator as an exit of that copy, so
//! refusing a start *repeated* for the copy that runs (or is starting) would tell the
//! coordinator that copy ended, and it would place another one while the first still runs.
//! A repeat is therefore answered as the original is (started, or nothing while the original
//! start is still in progress and will answer itself).

use tandem_common::proto::HeldState;

/// What the supervisor holds for a job: its copy's token and where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldCopy {
    /// The held copy's fencing token.
    pub token: u64,
    /// Starting (accepted, shim not answered yet) or running.
    pub state: HeldState,
}

/// The answer to a start with a given token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nothing is held: go ahead (the highest token on disk still has to allow it).
    Accept,
    /// The same copy runs already: answer that it started, start nothing.
    Running,
    /// The same copy's start is in progress: that start answers; this one does nothing.
    InProgress,
    /// An older copy is held: refused while it is (it has to be stopped first).
    OlderHeld {
        /// The held copy's token.
        held: u64,
    },
    /// A newer copy is held: this start is stale.
    Stale {
        /// The held copy's token.
        held: u64,
    },
}

/// Decides a start with `token` for a job of which `held` is held (or nothing).
pub fn admit(held: Option<HeldCopy>, token: u64) -> Admission {
    let Some(h) = held else {
        return Admission::Accept;
    };
    match token.cmp(&h.token) {
        std::cmp::Ordering::Equal => match h.state {
            HeldState::Running => Admission::Running,
            HeldState::Starting => Admission::InProgress,
        },
        std::cmp::Ordering::Greater => Admission::OlderHeld { held: h.token },
        std::cmp::Ordering::Less => Admission::Stale { held: h.token },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(token: u64, state: HeldState) -> Option<HeldCopy> {
        Some(HeldCopy { token, state })
    }

    #[test]
    fn nothing_held_accepts_any_token() {
        assert_eq!(admit(None, 0), Admission::Accept);
        assert_eq!(admit(None, u64::MAX), Admission::Accept);
    }

    #[test]
    fn a_repeated_start_of_the_held_copy_is_not_refused() {
        assert_eq!(admit(held(5, HeldState::Running), 5), Admission::Running);
        assert_eq!(
            admit(held(5, HeldState::Starting), 5),
            Admission::InProgress
        );
    }

    #[test]
    fn other_tokens_are_refused_while_a_copy_is_held() {
        for state in [HeldState::Starting, HeldState::Running] {
            assert_eq!(
                admit(held(5, state), 6),
                Admission::OlderHeld { held: 5 },
                "{state:?}"
            );
            assert_eq!(
                admit(held(5, state), 4),
                Admission::Stale { held: 5 },
                "{state:?}"
            );
        }
        assert_eq!(
            admit(held(u64::MAX, HeldState::Running), 0),
            Admission::Stale { held: u64::MAX }
        );
    }
}
