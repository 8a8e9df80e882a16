//! The detector's unit tests: the fencing rule, suspicion, the restart grace and the fence
//! parameters, with injected time.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn cfg() -> DetectorConfig {
    DetectorConfig {
        heartbeat: 200 * MS,
        lease: 1000 * MS,
        fence_grace: 350 * MS,
        suspect_after_missed: 3,
        restart_grace: 3000 * MS,
    }
}

fn node(n: u8) -> NodeId {
    NodeId(format!("n-{n:016x}"))
}

/// A detector past its restart grace, with node 1 registered on session 1 at that time.
fn running() -> (FailureDetector, Instant) {
    let t0 = Instant::now();
    let mut d = FailureDetector::new(cfg(), t0);
    let now = t0 + cfg().restart_grace();
    d.handle_registered(node(1), 1, now);
    (d, now)
}

fn downs(d: &mut FailureDetector, at: Instant) -> Vec<NodeId> {
    d.handle_tick(at)
        .into_iter()
        .filter_map(|t| match t {
            Transition::Down { node, .. } => Some(node),
            _ => None,
        })
        .collect()
}

/// Restarted with the kill timeout lowered from 3000 to 250 ms: agents may fence with
/// 3000 ms, so `lease + grace` of the old values (4100 ms) holds for remembered nodes.
#[test]
fn old_fence_parameters_hold_for_remembered_nodes_until_they_took_the_new_ones() {
    let t0 = Instant::now();
    let legacy = 4100 * MS;
    let mut d = FailureDetector::new(cfg(), t0).with_legacy(legacy);
    // Restored and never back: not down before the old lease and grace.
    d.handle_restored(node(1), t0);
    // Restored, registers, beats for a while, then falls silent.
    d.handle_restored(node(2), t0);
    assert!(d.legacy_left(t0));
    assert!(downs(&mut d, t0 + 3999 * MS).is_empty());
    d.handle_registered(node(2), 7, t0 + 100 * MS);
    let mut last = t0 + 100 * MS;
    while last < t0 + 1000 * MS {
        last += 200 * MS;
        assert!(d.handle_heartbeat(&node(2), 7, last).is_some());
    }
    assert_eq!(downs(&mut d, t0 + 4300 * MS), vec![node(1)]);
    // Its last beat was judged by the old values: no down before last + 4100 ms.
    assert!(downs(&mut d, last + legacy - MS).is_empty());
    assert_eq!(downs(&mut d, last + legacy), vec![node(2)]);
    assert!(!d.legacy_left(last + legacy));
}

#[test]
fn a_node_that_took_the_new_parameters_is_judged_by_them() {
    let t0 = Instant::now();
    let mut d = FailureDetector::new(cfg(), t0).with_legacy(4100 * MS);
    d.handle_restored(node(1), t0);
    d.handle_registered(node(1), 1, t0 + 100 * MS);
    // Registered at 100 ms: the old values hold until 4200 ms.
    assert!(d.legacy_left(t0 + 4199 * MS));
    assert!(!d.legacy_left(t0 + 4200 * MS));
    // Beats before 4200 ms were judged by the old values (the last one, at 4100 ms,
    // holds it until 8200 ms); the later ones by the new.
    let mut now = t0 + 100 * MS;
    while now < t0 + 9000 * MS {
        now += 200 * MS;
        assert!(d.handle_heartbeat(&node(1), 1, now).is_some());
    }
    let normal = cfg().lease + cfg().fence_grace;
    assert!(downs(&mut d, now + normal - MS).is_empty());
    assert_eq!(downs(&mut d, now + normal), vec![node(1)]);
    // A node new to this run never held the old values.
    d.handle_registered(node(3), 2, now);
    assert!(!d.legacy_left(now));
}

#[test]
fn parameters_no_larger_than_the_configured_ones_change_nothing() {
    let t0 = Instant::now();
    let d = FailureDetector::new(cfg(), t0).with_legacy(cfg().lease + cfg().fence_grace);
    assert!(!d.legacy_left(t0));
}

#[test]
fn beating_node_stays_alive() {
    let (mut d, mut now) = running();
    for _ in 0..50 {
        now += 200 * MS;
        assert_eq!(
            d.handle_heartbeat(&node(1), 1, now),
            Some((1000 * MS, false))
        );
        assert!(d.handle_tick(now).is_empty());
    }
}

#[test]
fn silent_node_is_suspect_then_down_exactly_at_its_deadline() {
    let (mut d, now) = running();
    d.handle_heartbeat(&node(1), 1, now);
    assert!(d.handle_tick(now + 599 * MS).is_empty());
    assert_eq!(
        d.handle_tick(now + 600 * MS),
        vec![Transition::Suspect {
            node: node(1),
            silent_for: 600 * MS
        }]
    );
    // Never before t_recv + lease + fence_grace ...
    assert!(d.handle_tick(now + 1349 * MS).is_empty());
    // ... and at it.
    assert_eq!(
        d.handle_tick(now + 1350 * MS),
        vec![Transition::Down {
            node: node(1),
            silent_for: 1350 * MS
        }]
    );
    assert!(
        d.handle_tick(now + 5000 * MS).is_empty(),
        "down is reported once"
    );
}

#[test]
fn a_suspect_that_beats_recovers() {
    let (mut d, now) = running();
    d.handle_tick(now + 700 * MS);
    assert_eq!(d.liveness(&node(1)), Some(Liveness::Suspect));
    assert_eq!(
        d.handle_heartbeat(&node(1), 1, now + 800 * MS),
        Some((1000 * MS, true))
    );
    assert_eq!(d.liveness(&node(1)), Some(Liveness::Alive));
}

#[test]
fn a_down_node_is_never_acked_again_until_it_registers_anew() {
    let (mut d, now) = running();
    d.handle_tick(now + 2000 * MS);
    assert_eq!(d.liveness(&node(1)), Some(Liveness::Down));
    // A late beat of the old session, sent before the cut: no ack, no lease.
    assert_eq!(d.handle_heartbeat(&node(1), 1, now + 2001 * MS), None);
    d.handle_registered(node(1), 2, now + 2100 * MS);
    assert_eq!(
        d.handle_heartbeat(&node(1), 1, now + 2150 * MS),
        None,
        "old session"
    );
    assert!(d.handle_heartbeat(&node(1), 2, now + 2200 * MS).is_some());
}

#[test]
fn unknown_nodes_get_no_lease() {
    let (mut d, now) = running();
    assert_eq!(d.handle_heartbeat(&node(9), 1, now), None);
}

#[test]
fn a_reconnect_storm_extends_the_restart_grace() {
    let t0 = Instant::now();
    let mut d = FailureDetector::new(cfg(), t0);
    d.handle_restored(node(1), t0);
    d.handle_restored(node(2), t0);
    // Node 1 comes back just before the grace ends: the storm is still going on.
    let back = t0 + cfg().restart_grace() - 100 * MS;
    d.handle_registered(node(1), 1, back);
    let end = back + cfg().lease + cfg().fence_grace;
    assert_eq!(d.restart_grace_left(back), end - back);
    let mut now = back;
    while now < end {
        d.handle_heartbeat(&node(1), 1, now);
        assert!(d.handle_tick(now).is_empty(), "still in the extended grace");
        now += 50 * MS;
    }
    d.handle_heartbeat(&node(1), 1, end);
    let tr = d.handle_tick(end);
    assert!(
        matches!(&tr[..], [Transition::Down { node: n, .. }] if *n == node(2)),
        "{tr:?}"
    );
    // Node 2's first session never beats (its agent gave up waiting for the Welcome); it
    // registers again late in the extended grace: that extends it again. Once it has beaten,
    // another registration does not.
    let mut d = FailureDetector::new(cfg(), t0);
    d.handle_restored(node(1), t0);
    d.handle_restored(node(2), t0);
    let first = t0 + cfg().restart_grace() - 100 * MS;
    d.handle_registered(node(2), 1, first);
    let again = first + cfg().lease;
    d.handle_registered(node(2), 2, again);
    let end = again + cfg().lease + cfg().fence_grace;
    assert_eq!(d.restart_grace_left(again), end - again);
    d.handle_heartbeat(&node(2), 2, again);
    d.handle_registered(node(2), 3, again + 10 * MS);
    assert_eq!(
        d.restart_grace_left(again),
        end - again,
        "a node that beat extended it"
    );
    // A node registering for the first time (not restored) does not extend anything, and
    // nothing extends it past the cap.
    let mut d = FailureDetector::new(cfg(), t0);
    d.handle_registered(node(3), 1, t0 + 100 * MS);
    assert_eq!(d.restart_grace_left(t0), cfg().restart_grace());
    for i in 0..1000u64 {
        let n = NodeId(format!("n-{i:016x}"));
        d.handle_restored(n.clone(), t0);
        let at = t0 + Duration::from_secs(i);
        if d.in_restart_grace(at) {
            d.handle_registered(n, 1, at);
        }
    }
    assert!(d.restart_grace_left(t0) <= cfg().restart_grace() + MAX_GRACE_EXTENSION);
}

#[test]
fn restart_grace_declares_nobody_down() {
    let t0 = Instant::now();
    let mut d = FailureDetector::new(cfg(), t0);
    d.handle_restored(node(1), t0);
    d.handle_restored(node(2), t0);
    // Node 1 reconnects and beats; node 2 never comes back.
    d.handle_registered(node(1), 1, t0 + 300 * MS);
    let mut now = t0 + 300 * MS;
    while now < t0 + cfg().restart_grace() {
        d.handle_heartbeat(&node(1), 1, now);
        assert!(
            d.handle_tick(now).is_empty(),
            "nothing happens inside the grace"
        );
        now += 50 * MS;
    }
    let end = t0 + cfg().restart_grace();
    d.handle_heartbeat(&node(1), 1, end);
    let tr = d.handle_tick(end);
    assert_eq!(
        tr,
        vec![Transition::Down {
            node: node(2),
            silent_for: cfg().restart_grace()
        }]
    );
    assert_eq!(d.liveness(&node(1)), Some(Liveness::Alive));
}

#[test]
fn deadlines_never_move_backwards() {
    let (mut d, now) = running();
    d.handle_heartbeat(&node(1), 1, now + 500 * MS);
    // A beat handled with an earlier `now` (reordered processing) must not shorten it.
    d.handle_heartbeat(&node(1), 1, now + 100 * MS);
    assert!(d
        .handle_tick(now + 1800 * MS)
        .iter()
        .all(|t| !matches!(t, Transition::Down { .. })));
}

proptest::proptest! {
    /// Skipping scans before `next_due` changes nothing: after every tick each node is
    /// exactly what a model that checks every node says (down once past its deadline,
    /// suspect once silent for `suspect_after`), with registrations, beats, forgotten
    /// nodes and the restart grace in between.
    #[test]
    fn skipping_scans_never_misses_a_transition(
        ops in proptest::collection::vec((0u8..4, 0u8..6, 0u64..700), 1..200),
    ) {
        let t0 = Instant::now();
        let c = cfg();
        let mut d = FailureDetector::new(c, t0);
        // node -> (session, last beat, deadline, down)
        let mut model: HashMap<u8, (u64, Instant, Instant, bool)> = HashMap::default();
        let mut now = t0;
        let mut session = 0u64;
        for (op, n, ms) in ops {
            match op {
                0 => {
                    session += 1;
                    d.handle_registered(node(n), session, now);
                    model.insert(n, (session, now, now + c.lease + c.fence_grace, false));
                }
                1 => {
                    let acked = d.handle_heartbeat(&node(n), model.get(&n).map_or(0, |m| m.0), now);
                    if let Some(m) = model.get_mut(&n).filter(|m| !m.3) {
                        proptest::prop_assert!(acked.is_some());
                        m.1 = m.1.max(now);
                        m.2 = m.2.max(now + c.lease + c.fence_grace);
                    }
                }
                2 => {
                    d.forget(&node(n));
                    model.remove(&n);
                }
                _ => {
                    now += Duration::from_millis(ms);
                    d.handle_tick(now);
                    if d.in_restart_grace(now) {
                        continue;
                    }
                    for (n, m) in model.iter_mut() {
                        if now >= m.2 {
                            m.3 = true;
                        }
                        let want = if m.3 {
                            Liveness::Down
                        } else if now.saturating_duration_since(m.1) >= c.suspect_after() {
                            Liveness::Suspect
                        } else {
                            Liveness::Alive
                        };
                        proptest::prop_assert_eq!(d.liveness(&node(*n)), Some(want), "node {}", n);
                    }
                }
            }
        }
    }
}
