use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn id(n: u8) -> NodeId {
    NodeId(format!("n-{n:016x}"))
}

fn pn(n: u8, model: &str, live: bool, created_ms: u64) -> PairNode {
    PairNode {
        id: id(n),
        model: model.into(),
        live,
        created_ms,
    }
}

fn pair(pid: &str, primary: u8, standby: u8, state: PairState) -> PairRecord {
    PairRecord {
        id: pid.into(),
        cluster: "c-000000000001".into(),
        primary: id(primary),
        standby: id(standby),
        state,
        reason: String::new(),
        created_ms: 0,
        since_ms: 0,
    }
}

fn set_live(nodes: &mut [PairNode], n: u8, live: bool) {
    nodes.iter_mut().find(|x| x.id == id(n)).unwrap().live = live;
}

fn apply_all(pairs: &mut Vec<PairRecord>, decisions: &[PairDecision]) {
    for d in decisions {
        assert!(d.apply(pairs), "decision did not apply: {d:?}");
    }
}

// ---- automatic pairing ----

#[test]
fn auto_pairs_oldest_first_the_older_is_primary() {
    let nodes = [
        pn(1, "M", true, 300),
        pn(2, "M", true, 100),
        pn(3, "M", true, 200),
        pn(4, "M", true, 400),
    ];
    assert_eq!(
        auto_pairs(&nodes, &[]),
        vec![(id(2), id(3)), (id(1), id(4))]
    );
}

#[test]
fn auto_pairs_breaks_age_ties_by_id() {
    let nodes = [
        pn(9, "M", true, 5),
        pn(3, "M", true, 5),
        pn(7, "M", true, 5),
    ];
    assert_eq!(auto_pairs(&nodes, &[]), vec![(id(3), id(7))]);
}

#[test]
fn auto_pairs_groups_by_model_and_leaves_the_odd_node_alone() {
    let nodes = [
        pn(1, "A", true, 1),
        pn(2, "B", true, 2),
        pn(3, "A", true, 3),
        pn(4, "B", true, 4),
        pn(5, "A", true, 5),
    ];
    assert_eq!(
        auto_pairs(&nodes, &[]),
        vec![(id(1), id(3)), (id(2), id(4))],
        "node 5 waits for another A"
    );
    assert_eq!(auto_pairs(&nodes[..1], &[]), vec![]);
}

#[test]
fn auto_pairs_skips_paired_and_dead_nodes() {
    let nodes = [
        pn(1, "M", true, 1),
        pn(2, "M", true, 2),
        pn(3, "M", false, 3),
        pn(4, "M", true, 4),
        pn(5, "M", true, 5),
    ];
    let pairs = [pair("p-1", 1, 2, PairState::Healthy)];
    assert_eq!(auto_pairs(&nodes, &pairs), vec![(id(4), id(5))]);
    let d = auto_pair_decisions(&nodes, &pairs);
    assert_eq!(d.len(), 1);
    match &d[0] {
        PairDecision::Form {
            primary,
            standby,
            reason,
        } => {
            assert_eq!((primary, standby), (&id(4), &id(5)));
            assert!(reason.starts_with("paired automatically"), "{reason}");
            assert!(reason.contains(id(4).as_str()) && reason.contains("\"M\""));
        }
        other => panic!("{other:?}"),
    }
}

// ---- manual pairing ----

#[test]
fn manual_pair_accepts_two_live_unpaired_nodes_of_one_model() {
    let nodes = [pn(1, "M", true, 1), pn(2, "M", true, 2)];
    // The user may name the younger node as primary.
    assert_eq!(validate_manual_pair(&nodes, &[], &id(2), &id(1)), Ok(()));
    match manual_pair(&nodes, &[], &id(2), &id(1)).unwrap() {
        PairDecision::Form {
            primary,
            standby,
            reason,
        } => {
            assert_eq!((primary, standby), (id(2), id(1)));
            assert!(reason.starts_with("paired by hand"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn manual_pair_errors_name_the_nodes() {
    let nodes = [
        pn(1, "M", true, 1),
        pn(2, "M", true, 2),
        pn(3, "M", true, 3),
        pn(4, "X", true, 4),
        pn(5, "M", false, 5),
    ];
    let pairs = [pair("p-12", 1, 2, PairState::Healthy)];
    let check = |p: u8, s: u8| validate_manual_pair(&nodes, &pairs, &id(p), &id(s));

    let e = check(3, 3).unwrap_err();
    assert_eq!(e, PairError::SameNode { node: id(3) });
    assert!(e.to_string().contains(id(3).as_str()));

    let e = check(3, 9).unwrap_err();
    assert_eq!(e, PairError::NotInCluster { node: id(9) });
    assert_eq!(
        e.to_string(),
        format!("node {} is not in this cluster", id(9))
    );

    let e = check(3, 2).unwrap_err();
    assert_eq!(
        e,
        PairError::AlreadyPaired {
            node: id(2),
            pair: "p-12".into()
        }
    );
    assert!(e.to_string().contains("already in pair p-12"));

    let e = check(3, 4).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{} is a \"M\" and {} is a \"X\": both members of a pair must be the same model",
            id(3),
            id(4)
        )
    );

    let e = check(3, 5).unwrap_err();
    assert_eq!(e, PairError::NotLive { node: id(5) });
    assert!(e.to_string().contains(id(5).as_str()));
}

// ---- promotion and recovery ----

#[test]
fn primary_down_promotes_the_live_standby() {
    let mut nodes = vec![pn(1, "M", true, 1), pn(2, "M", true, 2)];
    let mut pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    set_live(&mut nodes, 1, false);
    let d = on_node_down(&nodes, &pairs, &id(1), 1000);
    assert_eq!(
        d,
        vec![PairDecision::Promote {
            pair: "p".into(),
            new_primary: id(2),
            old_primary: id(1),
            state: PairState::FailedOver,
            reason: format!(
                "primary {} is down; standby {} promoted to primary",
                id(1),
                id(2)
            ),
            at_ms: 1000,
        }]
    );
    apply_all(&mut pairs, &d);
    assert_eq!((&pairs[0].primary, &pairs[0].standby), (&id(2), &id(1)));
    assert_eq!(pairs[0].state, PairState::FailedOver);
    assert_eq!(pairs[0].since_ms, 1000);
    assert_eq!(
        cluster_status(ClusterMode::HaPairs, &nodes, &pairs),
        ClusterStatus::Degraded
    );
}

#[test]
fn the_event_node_counts_as_down_even_if_the_view_is_stale() {
    let nodes = vec![pn(1, "M", true, 1), pn(2, "M", true, 2)];
    let pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    let d = on_node_down(&nodes, &pairs, &id(2), 5);
    assert!(matches!(
        &d[..],
        [PairDecision::SetState {
            state: PairState::Degraded,
            ..
        }]
    ));
}

#[test]
fn a_dead_standby_is_never_promoted() {
    let nodes = vec![pn(1, "M", false, 1), pn(2, "M", false, 2)];
    // The standby went first, then the primary.
    let mut pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    let d = on_node_down(&nodes, &pairs, &id(2), 10);
    apply_all(&mut pairs, &d);
    assert_eq!(pairs[0].state, PairState::Degraded);
    let d = on_node_down(&nodes, &pairs, &id(1), 20);
    assert!(
        !d.iter().any(|d| matches!(d, PairDecision::Promote { .. })),
        "{d:?}"
    );
    assert_eq!(d.len(), 1);
    assert!(d[0].reason().contains("no member is up"), "{d:?}");
    apply_all(&mut pairs, &d);
    assert_eq!(
        (&pairs[0].primary, pairs[0].state),
        (&id(1), PairState::Degraded)
    );
    // Reported again: nothing new.
    assert_eq!(on_node_down(&nodes, &pairs, &id(1), 30), vec![]);
}

#[test]
fn standby_down_degrades_the_pair_and_the_primary_stays() {
    let nodes = vec![pn(1, "M", true, 1), pn(2, "M", false, 2)];
    let mut pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    let d = on_node_down(&nodes, &pairs, &id(2), 7);
    assert_eq!(
        d,
        vec![PairDecision::SetState {
            pair: "p".into(),
            state: PairState::Degraded,
            reason: format!(
                "standby {} is down; {} stays primary without a standby",
                id(2),
                id(1)
            ),
            at_ms: 7,
        }]
    );
    apply_all(&mut pairs, &d);
    assert_eq!(pairs[0].primary, id(1));
    assert_eq!(
        on_node_down(&nodes, &pairs, &id(2), 8),
        vec![],
        "repeated report"
    );
    assert_eq!(
        cluster_status(ClusterMode::HaPairs, &nodes, &pairs),
        ClusterStatus::Degraded
    );
}

#[test]
fn the_old_primary_returns_as_standby_and_the_pair_is_healthy_again() {
    let mut nodes = vec![pn(1, "M", true, 1), pn(2, "M", true, 2)];
    let mut pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    set_live(&mut nodes, 1, false);
    let d = on_node_down(&nodes, &pairs, &id(1), 100);
    apply_all(&mut pairs, &d);
    set_live(&mut nodes, 1, true);
    let d = on_node_up(&nodes, &pairs, &id(1), false, 200);
    assert_eq!(
        d,
        vec![PairDecision::SetState {
            pair: "p".into(),
            state: PairState::Healthy,
            reason: format!("{} is back as the standby; both members are up", id(1)),
            at_ms: 200,
        }]
    );
    apply_all(&mut pairs, &d);
    assert_eq!(
        (&pairs[0].primary, &pairs[0].standby, pairs[0].state),
        (&id(2), &id(1), PairState::Healthy),
        "roles stay swapped"
    );
    assert_eq!(
        cluster_status(ClusterMode::HaPairs, &nodes, &pairs),
        ClusterStatus::Running
    );
    // Up again (a reconnect): nothing new.
    assert_eq!(on_node_up(&nodes, &pairs, &id(1), false, 300), vec![]);
    assert_eq!(on_node_up(&nodes, &pairs, &id(2), false, 300), vec![]);
}

#[test]
fn with_failback_the_old_primary_takes_its_role_back() {
    let mut nodes = vec![pn(1, "M", true, 1), pn(2, "M", true, 2)];
    let mut pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    set_live(&mut nodes, 1, false);
    let d = on_node_down(&nodes, &pairs, &id(1), 100);
    apply_all(&mut pairs, &d);
    set_live(&mut nodes, 1, true);
    let d = on_node_up(&nodes, &pairs, &id(1), true, 200);
    match &d[..] {
        [PairDecision::Promote {
            new_primary,
            old_primary,
            state,
            reason,
            ..
        }] => {
            assert_eq!((new_primary, old_primary), (&id(1), &id(2)));
            assert_eq!(*state, PairState::Healthy);
            assert!(reason.contains("fails back"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    apply_all(&mut pairs, &d);
    assert_eq!(
        (&pairs[0].primary, &pairs[0].standby, pairs[0].state),
        (&id(1), &id(2), PairState::Healthy)
    );
}

#[test]
fn failback_does_not_apply_to_a_standby_that_was_never_primary() {
    // The standby went down and came back: nothing to give back.
    let mut nodes = vec![pn(1, "M", true, 1), pn(2, "M", false, 2)];
    let mut pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    let d = on_node_down(&nodes, &pairs, &id(2), 10);
    apply_all(&mut pairs, &d);
    set_live(&mut nodes, 2, true);
    let d = on_node_up(&nodes, &pairs, &id(2), true, 20);
    assert!(matches!(
        &d[..],
        [PairDecision::SetState {
            state: PairState::Healthy,
            ..
        }]
    ));
    apply_all(&mut pairs, &d);
    assert_eq!(pairs[0].primary, id(1));
}

#[test]
fn after_both_went_down_the_first_back_becomes_primary() {
    let mut nodes = vec![pn(1, "M", false, 1), pn(2, "M", false, 2)];
    let mut pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    let d = on_node_down(&nodes, &pairs, &id(1), 10);
    apply_all(&mut pairs, &d); // nothing to promote
    let d = on_node_down(&nodes, &pairs, &id(2), 11);
    apply_all(&mut pairs, &d);
    assert_eq!(
        (&pairs[0].primary, pairs[0].state),
        (&id(1), PairState::Degraded)
    );
    // The standby is back first: it is promoted at once.
    set_live(&mut nodes, 2, true);
    let d = on_node_up(&nodes, &pairs, &id(2), false, 20);
    assert!(
        matches!(&d[..], [PairDecision::Promote { new_primary, state: PairState::FailedOver, .. }] if *new_primary == id(2)),
        "{d:?}"
    );
    apply_all(&mut pairs, &d);
    // Then the other one: standby, healthy.
    set_live(&mut nodes, 1, true);
    let d = on_node_up(&nodes, &pairs, &id(1), false, 30);
    apply_all(&mut pairs, &d);
    assert_eq!(
        (&pairs[0].primary, &pairs[0].standby, pairs[0].state),
        (&id(2), &id(1), PairState::Healthy)
    );
}

#[test]
fn the_primary_back_first_keeps_the_pair_degraded_until_the_standby_returns() {
    let mut nodes = vec![pn(1, "M", false, 1), pn(2, "M", false, 2)];
    let mut pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    let d = on_node_down(&nodes, &pairs, &id(2), 10);
    apply_all(&mut pairs, &d);
    let d = on_node_down(&nodes, &pairs, &id(1), 11);
    apply_all(&mut pairs, &d);
    set_live(&mut nodes, 1, true);
    let d = on_node_up(&nodes, &pairs, &id(1), false, 20);
    assert_eq!(d.len(), 1);
    assert!(d[0].reason().contains("still down"), "{d:?}");
    apply_all(&mut pairs, &d);
    assert_eq!(
        (&pairs[0].primary, pairs[0].state),
        (&id(1), PairState::Degraded)
    );
    set_live(&mut nodes, 2, true);
    let d = on_node_up(&nodes, &pairs, &id(2), true, 30);
    apply_all(&mut pairs, &d);
    assert_eq!(
        (&pairs[0].primary, pairs[0].state),
        (&id(1), PairState::Healthy)
    );
}

#[test]
fn events_for_unpaired_nodes_decide_nothing() {
    let nodes = vec![
        pn(1, "M", true, 1),
        pn(2, "M", true, 2),
        pn(3, "M", true, 3),
    ];
    let pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    assert_eq!(on_node_down(&nodes, &pairs, &id(3), 1), vec![]);
    assert_eq!(on_node_up(&nodes, &pairs, &id(3), true, 1), vec![]);
    assert_eq!(on_node_removed(&pairs, &id(3)), vec![]);
}

#[test]
fn removing_a_member_dissolves_the_pair_and_frees_the_partner() {
    let nodes = vec![pn(1, "M", true, 1), pn(3, "M", true, 3)];
    let mut pairs = vec![
        pair("p-a", 1, 2, PairState::Healthy),
        pair("p-b", 4, 5, PairState::Healthy),
    ];
    let d = on_node_removed(&pairs, &id(2));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].pair(), Some("p-a"));
    assert!(d[0].reason().contains(id(2).as_str()) && d[0].reason().contains("dissolved"));
    apply_all(&mut pairs, &d);
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].id, "p-b");
    // Node 1 pairs again with the next live node of its model.
    assert_eq!(auto_pairs(&nodes, &pairs), vec![(id(1), id(3))]);
}

#[test]
fn stale_or_unknown_decisions_do_not_apply() {
    let mut pairs = vec![pair("p", 1, 2, PairState::Healthy)];
    let stale = PairDecision::Promote {
        pair: "p".into(),
        new_primary: id(1),
        old_primary: id(2),
        state: PairState::FailedOver,
        reason: String::new(),
        at_ms: 0,
    };
    assert!(!stale.apply(&mut pairs));
    let unknown = PairDecision::Unpair {
        pair: "nope".into(),
        reason: String::new(),
    };
    assert!(!unknown.apply(&mut pairs));
    let form = PairDecision::Form {
        primary: id(3),
        standby: id(4),
        reason: String::new(),
    };
    assert!(!form.apply(&mut pairs));
    assert_eq!(pairs, vec![pair("p", 1, 2, PairState::Healthy)]);
}

// ---- cluster status ----

#[test]
fn pool_status_is_running_once_a_node_is_live() {
    let s = |nodes: &[PairNode]| cluster_status(ClusterMode::Pool, nodes, &[]);
    assert_eq!(s(&[]), ClusterStatus::Uninitialized);
    assert_eq!(s(&[pn(1, "M", false, 1)]), ClusterStatus::Uninitialized);
    assert_eq!(
        s(&[pn(1, "M", false, 1), pn(2, "X", true, 2)]),
        ClusterStatus::Running
    );
}

#[test]
fn ha_status_needs_a_pair_and_is_degraded_while_one_is_not_healthy() {
    let nodes = [
        pn(1, "M", true, 1),
        pn(2, "M", true, 2),
        pn(3, "M", true, 3),
    ];
    let s = |pairs: &[PairRecord]| cluster_status(ClusterMode::HaPairs, &nodes, pairs);
    assert_eq!(s(&[]), ClusterStatus::Uninitialized, "live but unpaired");
    assert_eq!(
        s(&[pair("a", 1, 2, PairState::Healthy)]),
        ClusterStatus::Running
    );
    for bad in [PairState::Degraded, PairState::FailedOver] {
        assert_eq!(
            s(&[pair("a", 1, 2, PairState::Healthy), pair("b", 3, 4, bad)]),
            ClusterStatus::Degraded
        );
    }
}

#[test]
fn status_serialises_in_snake_case() {
    for s in [
        ClusterStatus::Uninitialized,
        ClusterStatus::Running,
        ClusterStatus::Degraded,
    ] {
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            serde_json::Value::String(s.as_str().into())
        );
    }
}

// ---- random event sequences ----

#[derive(Clone, Debug)]
enum Ev {
    Down(u8),
    Up(u8),
    Remove(u8),
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => (0u8..8).prop_map(Ev::Down),
        4 => (0u8..8).prop_map(Ev::Up),
        1 => (0u8..8).prop_map(Ev::Remove),
    ]
}

/// The invariants of the module docs, for every pair.
fn check_pairs(pairs: &[PairRecord], live: &BTreeMap<NodeId, bool>) -> Result<(), TestCaseError> {
    let mut seen = std::collections::BTreeSet::new();
    for p in pairs {
        prop_assert_ne!(&p.primary, &p.standby, "a pair with one node: {:?}", p);
        prop_assert!(seen.insert(p.primary.clone()), "node in two pairs: {:?}", p);
        prop_assert!(seen.insert(p.standby.clone()), "node in two pairs: {:?}", p);
        let pl = *live
            .get(&p.primary)
            .ok_or_else(|| TestCaseError::fail(format!("removed node still paired: {p:?}")))?;
        let sl = *live
            .get(&p.standby)
            .ok_or_else(|| TestCaseError::fail(format!("removed node still paired: {p:?}")))?;
        prop_assert!(
            pl || !sl,
            "the standby is up and the primary is not: {:?}",
            p
        );
        match p.state {
            PairState::Healthy => prop_assert!(pl && sl, "healthy with a member down: {:?}", p),
            PairState::FailedOver => prop_assert!(pl && !sl, "bad failed_over: {:?}", p),
            PairState::Degraded => prop_assert!(!sl, "degraded with the standby up: {:?}", p),
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn random_events_keep_the_pairs_sound(
        init in proptest::collection::vec((0u8..2, any::<bool>(), 0u64..4), 2..8),
        events in proptest::collection::vec(ev(), 0..60),
        failback in any::<bool>(),
    ) {
        // The model: each node's liveness (absent once removed), and the pairs as stored.
        let models = ["A", "B"];
        let created: Vec<u64> = init.iter().map(|(_, _, c)| *c).collect();
        let mut live: BTreeMap<NodeId, bool> =
            init.iter().enumerate().map(|(i, (_, l, _))| (id(i as u8), *l)).collect();
        let view = |live: &BTreeMap<NodeId, bool>| -> Vec<PairNode> {
            init.iter()
                .enumerate()
                .filter_map(|(i, (m, _, _))| {
                    live.get(&id(i as u8)).map(|l| PairNode {
                        id: id(i as u8),
                        model: models[*m as usize].into(),
                        live: *l,
                        created_ms: created[i],
                    })
                })
                .collect()
        };
        let mut pairs: Vec<PairRecord> = Vec::new();
        let mut next_pair = 0;
        let mut form = |pairs: &mut Vec<PairRecord>, nodes: &[PairNode]| {
            for d in auto_pair_decisions(nodes, pairs) {
                let PairDecision::Form { primary, standby, reason } = d else {
                    panic!("auto pairing decided {d:?}");
                };
                next_pair += 1;
                pairs.push(PairRecord {
                    id: format!("p-{next_pair}"),
                    cluster: "c".into(),
                    primary,
                    standby,
                    state: PairState::Healthy,
                    reason,
                    created_ms: 0,
                    since_ms: 0,
                });
            }
        };
        form(&mut pairs, &view(&live));
        check_pairs(&pairs, &live)?;

        for (t, e) in events.into_iter().enumerate() {
            let now = t as u64;
            let before = pairs.clone();
            let decisions = match e {
                Ev::Down(n) if live.contains_key(&id(n)) => {
                    live.insert(id(n), false);
                    on_node_down(&view(&live), &pairs, &id(n), now)
                }
                Ev::Up(n) if live.contains_key(&id(n)) => {
                    live.insert(id(n), true);
                    on_node_up(&view(&live), &pairs, &id(n), failback, now)
                }
                Ev::Remove(n) if live.contains_key(&id(n)) => {
                    live.remove(&id(n));
                    on_node_removed(&pairs, &id(n))
                }
                _ => continue,
            };
            for d in &decisions {
                if let PairDecision::Promote { pair, new_primary, old_primary, .. } = d {
                    prop_assert_eq!(live.get(new_primary), Some(&true), "promoted a node that is not live: {:?}", d);
                    let p = before.iter().find(|p| &p.id == pair).expect("promoted an unknown pair");
                    prop_assert_eq!(&p.primary, old_primary);
                    prop_assert_eq!(&p.standby, new_primary);
                }
                prop_assert!(d.apply(&mut pairs), "decision did not apply: {:?}", d);
            }
            // Roles may swap, members never change.
            for p in &pairs {
                if let Some(b) = before.iter().find(|b| b.id == p.id) {
                    let mut was = [&b.primary, &b.standby];
                    let mut is = [&p.primary, &p.standby];
                    was.sort();
                    is.sort();
                    prop_assert_eq!(was, is);
                }
            }
            form(&mut pairs, &view(&live));
            check_pairs(&pairs, &live)?;
        }
    }
}
