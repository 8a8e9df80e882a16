//! The agent's side of the lease: when may this node still run its jobs?
//!
//! # Why the lease counts from the *send* time
//! The coordinator, on receiving beat `seq` at its local time `t_recv`, will not declare this
//! node down before `t_recv + lease + fence_grace`. The agent remembers the local monotonic time
//! `t_send(seq)` at which it sent that beat, and when the ack for `seq` arrives it holds the lease
//! only until `t_send(seq) + lease`. Because the beat was sent before it was received,
//! `t_send < t_recv` in real time, so the agent's lease always ends at least `fence_grace` before
//! the coordinator may act — a window in which the agent stops its jobs (SIGTERM, then SIGKILL
//! after the fencing kill timeout; `fence_grace` covers that plus clock-rate drift). A lost,
//! late or duplicated ack can only shorten what the agent believes, never lengthen it: acks for
//! beats we do not remember are ignored, and an ack never moves the expiry backwards or past
//! `t_send + lease` of the beat it answers.
//!
//! This struct does no I/O and reads no clock: callers pass `now`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many unacknowledged beats we remember. At 200 ms beats this is over 12 s, far longer
/// than any lease; older beats can no longer extend anything useful.
const REMEMBERED_BEATS: usize = 64;

/// The lease as the agent holds it.
#[derive(Debug, Default)]
pub struct Lease {
    sent: VecDeque<(u64, Instant)>,
    expires_at: Option<Instant>,
    last_rtt: Option<Duration>,
    /// The beat whose ack set `expires_at` (shown by `tandem-agent status`).
    granted_by: Option<u64>,
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The lease now runs to the given instant.
    Extended(Instant),
    /// The ack was valid but did not move the expiry (an older beat's ack arriving late).
    Unchanged,
    /// The beat is unknown (too old, never sent, or from before a revoke): ignored.
    Ignored,
}

impl Lease {
    /// A lease not yet held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that beat `seq` left at `now`.
    pub fn on_beat_sent(&mut self, seq: u64, now: Instant) {
        if self.sent.len() == REMEMBERED_BEATS {
            self.sent.pop_front();
        }
        self.sent.push_back((seq, now));
    }

    /// Applies the ack of beat `seq` granting `lease`, received at `now`.
    pub fn on_ack(&mut self, seq: u64, lease: Duration, now: Instant) -> AckOutcome {
        let Some(pos) = self.sent.iter().position(|(s, _)| *s == seq) else {
            return AckOutcome::Ignored;
        };
        let t_send = self.sent[pos].1;
        // Beats at or before this one can no longer extend the lease past this ack.
        self.sent.drain(..=pos);
        self.last_rtt = Some(now.saturating_duration_since(t_send));
        let until = t_send + lease;
        match self.expires_at {
            Some(current) if current >= until => AckOutcome::Unchanged,
            _ => {
                self.expires_at = Some(until);
                self.granted_by = Some(seq);
                AckOutcome::Extended(until)
            }
        }
    }

    /// Extends the lease to `until` (a hand-over lease, counted from before its request was
    /// sent); never shortens it. Returns whether it moved.
    pub fn extend_to(&mut self, until: Instant) -> bool {
        match self.expires_at {
            Some(current) if current >= until => false,
            _ => {
                self.expires_at = Some(until);
                true
            }
        }
    }

    /// Gives the lease up at once: the coordinator refused us, or we were declared down.
    /// Beats sent before this can never extend it again.
    pub fn revoke(&mut self) {
        self.expires_at = None;
        self.granted_by = None;
        self.sent.clear();
    }

    /// Whether the lease is held at `now`.
    pub fn is_held(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| now < t)
    }

    /// When the lease runs out, if it is held at all.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// Time left at `now` (zero when not held).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default()
    }

    /// The beat whose ack gave the current expiry.
    pub fn granted_by(&self) -> Option<u64> {
        self.granted_by
    }

    /// The round trip of the last acknowledged beat.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// The same in microseconds as a heartbeat carries it (0: none yet).
    pub fn last_rtt_us(&self) -> u32 {
        self.last_rtt
            .map_or(0, |d| d.as_micros().min(u128::from(u32::MAX)) as u32)
    }
}

/// The lease as the rest of the agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// Our node id, once joined.
    pub node_id: Option<tandem_common::ids::NodeId>,
    /// Until when we may run jobs; `None` when no lease is held.
    pub held_until: Option<Instant>,
    /// Whether a registered connection is up.
    pub connected: bool,
    /// The session whose ack gave `held_until`.
    pub session: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(1000);

    #[test]
    fn lease_counts_from_send_time_not_ack_time() {
        let t0 = Instant::now();
        let mut l = Lease::new();
        assert!(!l.is_held(t0));
        l.on_beat_sent(1, t0);
        let ack_at = t0 + Duration::from_millis(300);
        assert_eq!(l.on_ack(1, LEASE, ack_at), AckOutcome::Extended(t0 + LEASE));
        assert!(l.is_held(t0 + Duration::from_millis(999)));
        assert!(!l.is_held(t0 + LEASE));
        assert_eq!(l.last_rtt(), Some(Duration::from_millis(300)));
        assert_eq!(
            l.remaining(t0 + Duration::from_millis(400)),
            Duration::from_millis(600)
        );
    }

    #[test]
    fn unknown_duplicate_and_late_acks_never_extend() {
        let t0 = Instant::now();
        let mut l = Lease::new();
        assert_eq!(l.on_ack(9, LEASE, t0), AckOutcome::Ignored);
        l.on_beat_sent(1, t0);
        l.on_beat_sent(2, t0 + Duration::from_millis(200));
        let at = t0 + Duration::from_millis(250);
        assert!(matches!(l.on_ack(2, LEASE, at), AckOutcome::Extended(_)));
        // The ack of the older beat arrives late: it must not shorten or extend.
        assert_eq!(l.on_ack(1, LEASE, at), AckOutcome::Ignored);
        // A duplicate of the same ack does nothing either.
        assert_eq!(l.on_ack(2, LEASE, at), AckOutcome::Ignored);
        assert_eq!(
            l.expires_at(),
            Some(t0 + Duration::from_millis(200) + LEASE)
        );
    }

    #[test]
    fn a_shorter_grant_does_not_move_expiry_back() {
        let t0 = Instant::now();
        let mut l = Lease::new();
        l.on_beat_sent(1, t0);
        l.on_beat_sent(2, t0 + Duration::from_millis(10));
        l.on_ack(1, LEASE, t0);
        assert_eq!(
            l.on_ack(2, Duration::from_millis(100), t0),
            AckOutcome::Unchanged
        );
        assert_eq!(l.expires_at(), Some(t0 + LEASE));
    }

    #[test]
    fn revoke_forgets_beats_in_flight() {
        let t0 = Instant::now();
        let mut l = Lease::new();
        l.on_beat_sent(1, t0);
        l.on_beat_sent(2, t0);
        l.on_ack(1, LEASE, t0);
        l.revoke();
        assert!(!l.is_held(t0));
        assert_eq!(l.on_ack(2, LEASE, t0), AckOutcome::Ignored);
        assert!(!l.is_held(t0));
    }

    #[test]
    fn only_recent_beats_are_remembered() {
        let t0 = Instant::now();
        let mut l = Lease::new();
        for seq in 0..(REMEMBERED_BEATS as u64 + 10) {
            l.on_beat_sent(seq, t0 + Duration::from_millis(seq));
        }
        assert_eq!(l.on_ack(0, LEASE, t0), AckOutcome::Ignored);
        assert!(matches!(
            l.on_ack(REMEMBERED_BEATS as u64 + 9, LEASE, t0),
            AckOutcome::Extended(_)
        ));
    }
}
