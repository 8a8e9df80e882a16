//! A planned restart's hold: "no node is declared down before T".
//!
//! A coordinator that is asked to stop (SIGTERM, `systemctl restart`, an upgrade) first
//! records the hold durably, then acks every beat with a lease that ends before T instead of
//! the usual one, then exits. The jobs of every node that got such a lease keep running while
//! the coordinator is away; the restarted coordinator reads the hold and declares nobody down
//! before T, and the nodes come back with their jobs and go back to short leases.
//!
//! # Why nothing can run twice
//! A lease `L` granted at our time `now` ends on the agent at `t_send + L <= now + L` (the
//! beat was sent before we saw it), which on our clock is at most `now + L * 1.05` with the 5 %
//! clock-rate drift the fence grace allows; the agent's shims then kill the jobs within the
//! fence kill timeout, and the grace's 50 ms cover the rest. [`hold_lease`] picks the largest
//! `L` with `now + 1.05 L + kill timeout + 50 ms <= T`. No node is declared down before `T`
//! (the detector makes no transition at all before it), so a node that dies during the hold is
//! failed over at `T`, when its lease is certainly over; one that never got a hold lease has
//! only its usual lease, which ended long before. If the coordinator never comes back, every
//! agent fences at its lease end, before `T`.

use super::FailureDetector;
use crate::clock::Map as HashMap;
use std::time::{Duration, Instant};
use tandem_common::ids::NodeId;

/// The hold, as the detector keeps it.
#[derive(Debug)]
pub(super) struct Hold {
    /// No transition before this.
    until: Instant,
    /// While hold leases are granted: the fence kill timeout they allow for.
    granting: Option<Duration>,
    /// The nodes whose beats were acked with a hold lease.
    granted: HashMap<NodeId, ()>,
}

/// The lease to grant at `now` so that it ends, with drift and the kill timeout, before a hold
/// that has `left` to run (see the module docs): zero when there is no room.
pub fn hold_lease(left: Duration, fence_kill_timeout: Duration) -> Duration {
    left.saturating_sub(fence_kill_timeout + Duration::from_millis(50))
        .mul_f64(1.0 / 1.05)
}

impl FailureDetector {
    /// An agent hand-over's hold: `node` is not declared down before `until` (a later one
    /// than it has replaces it; an earlier one is ignored). Record it durably first.
    pub fn hold_node(&mut self, node: NodeId, until: Instant) {
        let u = self.node_holds.entry(node).or_insert(until);
        *u = (*u).max(until);
        // A scan may have counted on an earlier deadline: that only makes it look sooner.
    }

    /// When `node`'s hand-over hold ends, if it has one.
    pub fn node_hold_until(&self, node: &NodeId) -> Option<Instant> {
        self.node_holds.get(node).copied()
    }

    /// Takes a hold: no node changes state before `until` (a later hold than one taken
    /// already replaces it; an earlier one is ignored).
    pub fn hold(&mut self, until: Instant) {
        match &mut self.hold {
            Some(h) => h.until = h.until.max(until),
            None => {
                self.hold = Some(Hold {
                    until,
                    granting: None,
                    granted: HashMap::default(),
                })
            }
        }
    }

    /// From now on, while the hold lasts, beats are acked with [`hold_lease`] instead of the
    /// usual lease. Take the hold, and make it durable, first.
    pub fn grant_hold_leases(&mut self, fence_kill_timeout: Duration) {
        if let Some(h) = &mut self.hold {
            h.granting = Some(fence_kill_timeout);
        }
    }

    /// When the hold ends, if one is taken.
    pub fn hold_until(&self) -> Option<Instant> {
        self.hold.as_ref().map(|h| h.until)
    }

    /// How many nodes have been given a hold lease, and how many are alive (beating).
    pub fn hold_leases_granted(&self) -> (usize, usize) {
        let granted = self.hold.as_ref().map_or(0, |h| h.granted.len());
        let alive = self
            .nodes
            .values()
            .filter(|t| t.liveness != super::Liveness::Down)
            .count();
        (granted, alive)
    }

    /// The lease for a beat of `node` accepted at `now`.
    pub(super) fn lease_for(&mut self, node: &NodeId, now: Instant) -> Duration {
        let Some(h) = &mut self.hold else {
            return self.cfg.lease;
        };
        let Some(kill) = h.granting else {
            return self.cfg.lease;
        };
        // While granting, nothing longer than what ends before the hold: past its end, zero
        // (a lease never moves the agent's expiry back, so zero changes nothing).
        let lease = hold_lease(h.until.saturating_duration_since(now), kill);
        h.granted.insert(node.clone(), ());
        lease
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{DetectorConfig, Transition};

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            heartbeat: Duration::from_millis(200),
            lease: Duration::from_millis(1000),
            fence_grace: Duration::from_millis(350),
            suspect_after_missed: 3,
            restart_grace: Duration::from_millis(2000),
        }
    }

    #[test]
    fn a_hold_lease_ends_with_drift_and_kill_timeout_before_the_hold() {
        let kill = Duration::from_millis(250);
        for left_ms in [0u64, 100, 300, 1_000, 15_000, 600_000] {
            let left = Duration::from_millis(left_ms);
            let l = hold_lease(left, kill);
            assert!(
                l.mul_f64(1.05) + kill + Duration::from_millis(50)
                    <= left + Duration::from_micros(1)
                    || l.is_zero(),
                "{left_ms}: {l:?}"
            );
        }
        assert_eq!(hold_lease(Duration::from_millis(200), kill), Duration::ZERO);
        let l = hold_lease(Duration::from_secs(15), kill);
        assert!(l > Duration::from_secs(13), "{l:?}");
    }

    #[test]
    fn nobody_is_declared_down_before_the_hold_ends_and_the_silent_are_at_its_end() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(cfg(), t0);
        let (a, b) = (NodeId::random(), NodeId::random());
        let grace_end = t0 + Duration::from_secs(3);
        d.handle_registered(a.clone(), 1, grace_end);
        d.handle_registered(b.clone(), 2, grace_end);
        d.handle_heartbeat(&a, 1, grace_end);
        d.handle_heartbeat(&b, 2, grace_end);
        let until = grace_end + Duration::from_secs(15);
        d.hold(until);
        d.grant_hold_leases(Duration::from_millis(250));
        // b beats once more and gets a lease that ends before the hold; then both go silent.
        let (lease, _) = d.handle_heartbeat(&b, 2, grace_end).unwrap();
        assert!(grace_end + lease.mul_f64(1.05) + Duration::from_millis(300) <= until);
        assert_eq!(d.hold_leases_granted(), (1, 2));
        let mut t = grace_end;
        while t < until {
            assert!(
                d.handle_tick(t).is_empty(),
                "a transition before the hold's end"
            );
            t += Duration::from_millis(500);
        }
        let downs: Vec<_> = d
            .handle_tick(until)
            .into_iter()
            .filter(|tr| matches!(tr, Transition::Down { .. }))
            .collect();
        assert_eq!(downs.len(), 2, "{downs:?}");
    }

    #[test]
    fn a_node_with_a_hand_over_hold_is_not_declared_down_before_it_ends() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(cfg(), t0);
        d.end_restart_grace(t0);
        let (a, b) = (NodeId::random(), NodeId::random());
        d.handle_registered(a.clone(), 1, t0);
        d.handle_registered(b.clone(), 2, t0);
        d.handle_heartbeat(&a, 1, t0);
        d.handle_heartbeat(&b, 2, t0);
        let until = t0 + Duration::from_secs(10);
        d.hold_node(a.clone(), until);
        // An earlier hold does not shorten it; a new registration does not end it.
        d.hold_node(a.clone(), t0 + Duration::from_secs(1));
        d.handle_registered(a.clone(), 3, t0 + Duration::from_secs(2));
        assert_eq!(d.node_hold_until(&a), Some(until));
        let mut t = t0;
        let mut b_down = false;
        while t < until {
            for tr in d.handle_tick(t) {
                if let Transition::Down { node, .. } = tr {
                    assert_eq!(node, b, "the held node was declared down at {t:?}");
                    b_down = true;
                }
            }
            t += Duration::from_millis(100);
        }
        assert!(b_down, "the other node goes down after one lease as always");
        let downs: Vec<_> = d
            .handle_tick(until)
            .into_iter()
            .filter(|tr| matches!(tr, Transition::Down { node, .. } if *node == a))
            .collect();
        assert_eq!(downs.len(), 1, "down at the hold's end");
        assert_eq!(d.node_hold_until(&a), None);
    }

    #[test]
    fn a_restarted_detector_honours_a_hold_longer_than_its_grace() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(cfg(), t0);
        let a = NodeId::random();
        d.handle_restored(a.clone(), t0);
        d.hold(t0 + Duration::from_secs(20));
        assert!(d.in_restart_grace(t0 + Duration::from_secs(19)));
        assert_eq!(
            d.restart_grace_left(t0 + Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        // Beats after the restart get the usual lease (no hold leases are granted here).
        d.handle_registered(a.clone(), 7, t0 + Duration::from_secs(1));
        let (lease, _) = d
            .handle_heartbeat(&a, 7, t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(lease, Duration::from_millis(1000));
        assert!(d.handle_tick(t0 + Duration::from_secs(19)).is_empty());
        assert!(!d.handle_tick(t0 + Duration::from_secs(20)).is_empty());
    }
}
