//! The agent as the second line of defence: if a shim has not ended its job by the lease
//! deadline plus the fence kill timeout (it is stopped, wedged, or starved), the agent kills
//! the job itself (its cgroup, or its process group), then wakes the shim so it can record the
//! end; a shim still there a second later is SIGKILLed (its job is then reported lost).
//!
//! The agent's deadline is never earlier than the one its shim holds (the shim gets every
//! deadline from the agent, and a write it missed leaves it an older, earlier one), so this
//! never kills a job whose lease still runs. It fires [`GRACE`] after the shim's own SIGKILL
//! was due, well inside the coordinator's `fence_grace` (its 5 % of the lease + 50 ms), so the
//! job is dead before the coordinator may place it again.
//!
//! Plain decisions over CLOCK_MONOTONIC nanoseconds, like [`super::guard`]: the control task
//! feeds it every lease change and asks it what is due.

use std::time::Duration;

/// How long after the shim's SIGKILL was due the agent steps in.
pub const GRACE: Duration = Duration::from_millis(20);
/// How long after that a shim that is still there is SIGKILLed.
pub const SHIM_KILL_AFTER: Duration = Duration::from_secs(1);

/// What the backstop asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Kill the job (cgroup and process group) and SIGCONT the shim.
    KillJob,
    /// SIGKILL the shim.
    KillShim,
}

/// The backstop of one shim.
#[derive(Debug)]
pub struct Backstop {
    /// When the lease ends (ns); `None` while it has not been seen to end.
    ends_ns: Option<u64>,
    fence_kill_ns: u64,
    /// Steps taken so far (0, 1 or 2).
    taken: u8,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Backstop {
    /// A backstop for a shim started with lease deadline `deadline_ns`.
    pub fn new(deadline_ns: u64, fence_kill: Duration) -> Self {
        Self {
            ends_ns: Some(deadline_ns),
            fence_kill_ns: ns(fence_kill),
            taken: 0,
        }
    }

    /// The lease changed at `now`: `Some(deadline)`, or `None` (no lease: it ended now). A
    /// step already taken is never taken back; a later deadline moves the next one.
    pub fn on_lease(&mut self, lease: Option<u64>, now: u64) {
        if self.taken > 0 {
            // Once the job was killed the copy is over, whatever the lease does now.
            return;
        }
        self.ends_ns = Some(lease.unwrap_or(now));
    }

    /// The fence kill timeout changed (for the next deadline).
    pub fn set_fence_kill(&mut self, fence_kill: Duration) {
        if self.taken == 0 {
            self.fence_kill_ns = ns(fence_kill);
        }
    }

    /// When the next step is due (`None`: never).
    pub fn due_ns(&self) -> Option<u64> {
        let first = self
            .ends_ns?
            .saturating_add(self.fence_kill_ns)
            .saturating_add(ns(GRACE));
        match self.taken {
            0 => Some(first),
            1 => Some(first.saturating_add(ns(SHIM_KILL_AFTER))),
            _ => None,
        }
    }

    /// What is due at `now`.
    pub fn poll(&mut self, now: u64) -> Option<Step> {
        if now < self.due_ns()? {
            return None;
        }
        self.taken += 1;
        Some(if self.taken == 1 {
            Step::KillJob
        } else {
            Step::KillShim
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn steps_in_after_the_shims_own_kill_was_due_then_kills_the_shim() {
        let mut b = Backstop::new(1000 * MS, Duration::from_millis(250));
        assert_eq!(b.due_ns(), Some(1270 * MS));
        assert_eq!(b.poll(1269 * MS), None);
        assert_eq!(b.poll(1270 * MS), Some(Step::KillJob));
        // A renewed lease after the kill changes nothing.
        b.on_lease(Some(9000 * MS), 1300 * MS);
        assert_eq!(b.due_ns(), Some(2270 * MS));
        assert_eq!(b.poll(2269 * MS), None);
        assert_eq!(b.poll(2270 * MS), Some(Step::KillShim));
        assert_eq!(b.poll(u64::MAX), None);
        assert_eq!(b.due_ns(), None);
    }

    #[test]
    fn a_renewed_lease_moves_it_and_a_lost_one_ends_it_now() {
        let mut b = Backstop::new(1000 * MS, Duration::from_millis(250));
        b.on_lease(Some(2000 * MS), 900 * MS);
        assert_eq!(b.poll(1500 * MS), None);
        assert_eq!(b.due_ns(), Some(2270 * MS));
        b.on_lease(None, 1600 * MS);
        assert_eq!(b.due_ns(), Some(1870 * MS));
        b.set_fence_kill(Duration::from_millis(50));
        assert_eq!(b.due_ns(), Some(1670 * MS));
        assert_eq!(b.poll(1670 * MS), Some(Step::KillJob));
        // Saturating: a huge deadline never wraps into the past.
        let b = Backstop::new(u64::MAX, Duration::MAX);
        assert_eq!(b.due_ns(), Some(u64::MAX));
    }
}
