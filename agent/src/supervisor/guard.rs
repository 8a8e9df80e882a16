//! The shim's decisions as a plain state machine: when to SIGTERM and SIGKILL the job's
//! process group, given the lease deadline, the agent's commands and the clock. No I/O, no
//! clock reads: the shim passes CLOCK_MONOTONIC nanoseconds in.

use super::protocol::{ExitReason, ShimCommand};
use std::time::Duration;

/// What the guard asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGTERM (then SIGCONT, so a stopped job can act on it) to the job's group.
    Term,
    /// SIGKILL to the job's group.
    Kill,
}

/// The shim's decisions as a plain state machine over CLOCK_MONOTONIC nanoseconds.
#[derive(Debug)]
pub struct Guard {
    deadline_ns: u64,
    fence_kill_ns: u64,
    /// Once set, the job is being ended: why, when SIGKILL is due, whether it was sent.
    ending: Option<(ExitReason, u64, bool)>,
}

impl Guard {
    /// A guard with the deadline and fence kill timeout from the spec.
    pub fn new(deadline_ns: u64, fence_kill: Duration) -> Self {
        Self {
            deadline_ns,
            fence_kill_ns: u64::try_from(fence_kill.as_nanos()).unwrap_or(u64::MAX),
            ending: None,
        }
    }

    /// Sets the fence kill timeout for fences from now on (the coordinator sends one with every
    /// `Welcome`). A fence already under way can only be cut shorter by it: its SIGKILL never
    /// comes later than the timeout it began with promised.
    pub fn set_fence_kill(&mut self, fence_kill: Duration) {
        self.fence_kill_ns = u64::try_from(fence_kill.as_nanos()).unwrap_or(u64::MAX);
    }

    /// The lease deadline in force (CLOCK_MONOTONIC ns).
    pub fn deadline_ns(&self) -> u64 {
        self.deadline_ns
    }

    /// The fence kill timeout in force.
    pub fn fence_kill(&self) -> Duration {
        Duration::from_nanos(self.fence_kill_ns)
    }

    /// Why the job is being ended, if it is.
    pub fn reason(&self) -> Option<ExitReason> {
        self.ending.map(|(r, _, _)| r)
    }

    fn begin(&mut self, reason: ExitReason, timeout_ns: u64, now: u64) -> Vec<Action> {
        let kill_at = now.saturating_add(timeout_ns);
        match &mut self.ending {
            // Already ending: keep the first reason, but never let the kill come later.
            Some((_, at, _)) => {
                *at = (*at).min(kill_at);
                self.poll(now)
            }
            None => {
                self.ending = Some((reason, kill_at, false));
                let mut acts = vec![Action::Term];
                acts.extend(self.poll(now));
                acts
            }
        }
    }

    /// Applies a command from the agent at `now`.
    pub fn on_command(&mut self, cmd: ShimCommand, now: u64) -> Vec<Action> {
        match cmd {
            // Once ending, a new lease changes nothing: a fence is never taken back.
            // A deadline that has already passed fences first: a lease that arrives late (the
            // shim's timer had not run yet, or an agent restarted after the deadline adopts
            // the shim) never revives a copy whose lease had ended.
            ShimCommand::Lease(ns) if self.ending.is_none() => {
                let mut acts = self.poll(now);
                if self.ending.is_none() {
                    self.deadline_ns = ns;
                    acts.extend(self.poll(now));
                }
                acts
            }
            ShimCommand::Lease(ns) => {
                self.deadline_ns = self.deadline_ns.min(ns);
                self.poll(now)
            }
            ShimCommand::Fence => {
                self.deadline_ns = self.deadline_ns.min(now);
                self.poll(now)
            }
            ShimCommand::Stop { kill_timeout_ms } => self.begin(
                ExitReason::Stopped,
                kill_timeout_ms.saturating_mul(1_000_000),
                now,
            ),
            ShimCommand::FenceKill { timeout_ms } => {
                self.set_fence_kill(Duration::from_millis(timeout_ms));
                self.poll(now)
            }
        }
    }

    /// The shim was told to terminate: stop the job as if fenced.
    pub fn on_signal(&mut self, now: u64) -> Vec<Action> {
        self.begin(ExitReason::ShimSignalled, self.fence_kill_ns, now)
    }

    /// What is due at `now`: the fence at the deadline, SIGKILL at its time.
    pub fn poll(&mut self, now: u64) -> Vec<Action> {
        if now >= self.deadline_ns {
            // The fence timeout counts from the deadline, also during a slower user stop.
            let kill_at = self.deadline_ns.saturating_add(self.fence_kill_ns);
            match &mut self.ending {
                None => {
                    self.ending = Some((ExitReason::Fenced, kill_at, false));
                    let mut acts = vec![Action::Term];
                    acts.extend(self.poll(now));
                    return acts;
                }
                Some((_, at, _)) => *at = (*at).min(kill_at),
            }
        }
        match &mut self.ending {
            Some((_, at, killed)) if !*killed && now >= *at => {
                *killed = true;
                vec![Action::Kill]
            }
            _ => Vec::new(),
        }
    }

    /// When `poll` next has something to do (`u64::MAX`: never, until a command comes).
    pub fn next_wake(&self) -> u64 {
        match self.ending {
            Some((_, _, true)) => u64::MAX,
            Some((_, at, false)) => at.min(self.deadline_ns.saturating_add(self.fence_kill_ns)),
            None => self.deadline_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn guard() -> Guard {
        Guard::new(1000 * MS, Duration::from_millis(250))
    }

    #[test]
    fn the_deadline_fences_and_kills_after_the_fence_timeout() {
        let mut g = guard();
        assert!(g.poll(999 * MS).is_empty());
        assert_eq!(g.next_wake(), 1000 * MS);
        assert_eq!(g.poll(1000 * MS), [Action::Term]);
        assert_eq!(g.reason(), Some(ExitReason::Fenced));
        assert!(g.poll(1249 * MS).is_empty());
        assert_eq!(g.next_wake(), 1250 * MS);
        assert_eq!(g.poll(1250 * MS), [Action::Kill]);
        assert!(g.poll(2000 * MS).is_empty());
        assert_eq!(g.next_wake(), u64::MAX);
    }

    #[test]
    fn a_lease_that_arrives_after_the_deadline_does_not_revive_the_copy() {
        let mut g = guard();
        // The timer has not fired yet at 1000 ms; the push comes first.
        assert_eq!(
            g.on_command(ShimCommand::Lease(3000 * MS), 1001 * MS),
            [Action::Term]
        );
        assert_eq!(g.reason(), Some(ExitReason::Fenced));
        assert_eq!(
            g.next_wake(),
            1250 * MS,
            "killed at the old deadline's timeout"
        );
    }

    #[test]
    fn leases_move_the_deadline_until_the_job_is_ending() {
        let mut g = guard();
        assert!(g
            .on_command(ShimCommand::Lease(2000 * MS), 900 * MS)
            .is_empty());
        assert!(g.poll(1500 * MS).is_empty());
        // A shorter lease is honoured too (the agent knows best).
        assert!(g
            .on_command(ShimCommand::Lease(1600 * MS), 1500 * MS)
            .is_empty());
        assert_eq!(g.poll(1600 * MS), [Action::Term]);
        // Once fencing, a renewed lease does not bring the job back.
        assert!(g
            .on_command(ShimCommand::Lease(9000 * MS), 1700 * MS)
            .is_empty());
        assert_eq!(g.poll(1850 * MS), [Action::Kill]);
    }

    #[test]
    fn a_lease_that_comes_after_the_deadline_never_revives_the_job() {
        let mut g = guard();
        // No poll ran since the deadline (1000 ms) passed: the lease is too late all the same.
        let acts = g.on_command(ShimCommand::Lease(9000 * MS), 1001 * MS);
        assert_eq!(acts, [Action::Term]);
        assert_eq!(g.reason(), Some(ExitReason::Fenced));
        assert_eq!(g.deadline_ns(), 1000 * MS);
        assert_eq!(g.poll(1250 * MS), [Action::Kill]);
    }

    #[test]
    fn a_late_wakeup_terms_and_kills_at_once() {
        let mut g = guard();
        assert_eq!(g.poll(5000 * MS), [Action::Term, Action::Kill]);
    }

    #[test]
    fn fence_command_and_signal_end_the_job_now() {
        let mut g = guard();
        assert_eq!(g.on_command(ShimCommand::Fence, 10 * MS), [Action::Term]);
        assert_eq!(g.reason(), Some(ExitReason::Fenced));
        assert_eq!(g.poll(260 * MS), [Action::Kill]);
        let mut g = guard();
        assert_eq!(g.on_signal(10 * MS), [Action::Term]);
        assert_eq!(g.reason(), Some(ExitReason::ShimSignalled));
        assert_eq!(g.poll(260 * MS), [Action::Kill]);
    }

    #[test]
    fn a_user_stop_is_cut_short_by_the_deadline() {
        let mut g = guard();
        let stop = ShimCommand::Stop {
            kill_timeout_ms: 5000,
        };
        assert_eq!(g.on_command(stop, 500 * MS), [Action::Term]);
        assert_eq!(g.reason(), Some(ExitReason::Stopped));
        assert!(g.poll(1100 * MS).is_empty());
        // The deadline (1000 ms) passed: SIGKILL at 1250 ms, not 5500 ms.
        assert_eq!(g.next_wake(), 1250 * MS);
        assert_eq!(g.poll(1250 * MS), [Action::Kill]);
        assert_eq!(g.reason(), Some(ExitReason::Stopped));
    }

    #[test]
    fn a_second_stop_only_shortens_the_kill_timeout() {
        let mut g = Guard::new(u64::MAX, Duration::from_millis(250));
        let stop = |ms| ShimCommand::Stop {
            kill_timeout_ms: ms,
        };
        assert_eq!(g.on_command(stop(5000), 0), [Action::Term]);
        assert!(g.on_command(stop(9000), MS).is_empty());
        assert_eq!(g.next_wake(), 5000 * MS);
        assert!(g.on_command(stop(100), MS).is_empty());
        assert_eq!(g.poll(101 * MS), [Action::Kill]);
        // Saturating arithmetic: huge values never wrap into the past.
        let mut g = Guard::new(u64::MAX, Duration::MAX);
        assert_eq!(g.on_command(stop(u64::MAX), 5), [Action::Term]);
        assert!(g.poll(u64::MAX - 1).is_empty());
    }

    #[test]
    fn a_new_fence_kill_timeout_is_used_by_later_fences() {
        let mut g = guard();
        assert!(g
            .on_command(ShimCommand::FenceKill { timeout_ms: 50 }, 100 * MS)
            .is_empty());
        assert_eq!(g.fence_kill(), Duration::from_millis(50));
        assert_eq!(g.poll(1000 * MS), [Action::Term]);
        assert_eq!(g.next_wake(), 1050 * MS);
        assert!(g.poll(1049 * MS).is_empty());
        assert_eq!(g.poll(1050 * MS), [Action::Kill]);

        // A longer one is honoured by a later fence too.
        let mut g = guard();
        g.set_fence_kill(Duration::from_millis(3000));
        assert_eq!(g.on_command(ShimCommand::Fence, 500 * MS), [Action::Term]);
        assert!(g.poll(3499 * MS).is_empty());
        assert_eq!(g.poll(3500 * MS), [Action::Kill]);
    }

    #[test]
    fn a_fence_under_way_is_never_lengthened_by_a_new_timeout() {
        let mut g = guard();
        assert_eq!(g.poll(1000 * MS), [Action::Term]);
        // Raised while fencing: the SIGKILL still comes 250 ms after the deadline.
        assert!(g
            .on_command(ShimCommand::FenceKill { timeout_ms: 9000 }, 1100 * MS)
            .is_empty());
        assert_eq!(g.next_wake(), 1250 * MS);
        assert_eq!(g.poll(1250 * MS), [Action::Kill]);
        // Lowered while fencing: it comes sooner.
        let mut g = guard();
        assert_eq!(g.poll(1000 * MS), [Action::Term]);
        assert_eq!(
            g.on_command(ShimCommand::FenceKill { timeout_ms: 50 }, 1100 * MS),
            [Action::Kill]
        );
    }
}
