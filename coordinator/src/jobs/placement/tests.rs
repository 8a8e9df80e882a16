use super::*;
use crate::cluster::capacity::GIB;
use crate::jobs::model::Toleration;
use crate::jobs::testkit::*;

const MIB: u64 = 1 << 20;

fn pool() -> ClusterRecord {
    cluster(C, ClusterMode::Pool)
}

fn ha() -> ClusterRecord {
    cluster(C, ClusterMode::HaPairs)
}

fn none() -> HashMap<NodeId, Held> {
    HashMap::new()
}

fn held_gpus(n: u8, gpus: &[&str]) -> HashMap<NodeId, Held> {
    HashMap::from([(
        id(n),
        Held {
            gpu_uuids: gpus.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        },
    )])
}

#[test]
fn pool_picks_the_node_with_the_most_cu_left() {
    let nodes = [
        node(1, C, 8, 32, 0),
        node(2, C, 16, 64, 0),
        node(3, C, 16, 16, 0),
    ];
    let j = job(1, spec(1000, GIB, 0));
    let c = place(&j, &pool(), &nodes, &[], &none()).unwrap();
    assert_eq!(c.node, id(2), "15 CU left beats 7 and 3");
    assert_eq!(c.reserve_on, None);
    assert!(c.gpus.is_empty());

    // What is held counts: node 2 is almost full now.
    let held = HashMap::from([(
        id(2),
        Held {
            cpu_millis: 14_000,
            memory_bytes: 60 * GIB,
            gpu_uuids: vec![],
        },
    )]);
    assert_eq!(place(&j, &pool(), &nodes, &[], &held).unwrap().node, id(1));
}

#[test]
fn pool_ties_are_broken_by_free_cpu_then_memory_then_the_lowest_id() {
    // Same CU left (4): node 2 has more cores left.
    let nodes = [node(1, C, 4, 64, 0), node(2, C, 8, 16, 0)];
    let j = job(1, spec(500, MIB, 0));
    assert_eq!(
        place(&j, &pool(), &nodes, &[], &none()).unwrap().node,
        id(2)
    );
    let nodes = [
        node(3, C, 4, 16, 0),
        node(2, C, 4, 16, 0),
        node(5, C, 4, 16, 0),
    ];
    assert_eq!(
        place(&j, &pool(), &nodes, &[], &none()).unwrap().node,
        id(2)
    );
}

#[test]
fn gpus_are_given_whole_by_uuid_and_never_shared() {
    let nodes = [node(1, C, 8, 32, 2)];
    let j = job(1, spec(100, MIB, 1));
    let c = place(&j, &pool(), &nodes, &[], &none()).unwrap();
    assert_eq!(c.gpus, vec!["GPU-1-0".to_string()], "lowest index first");
    // Another job holds GPU 0: the next one gets GPU 1, then none is left.
    let c = place(&j, &pool(), &nodes, &[], &held_gpus(1, &["GPU-1-0"])).unwrap();
    assert_eq!(c.gpus, vec!["GPU-1-1".to_string()]);
    let e = place(
        &j,
        &pool(),
        &nodes,
        &[],
        &held_gpus(1, &["GPU-1-0", "GPU-1-1"]),
    )
    .unwrap_err();
    assert_eq!(e.reason, "no live node has 1 free GPUs: node-1 has 0");
    // Two GPUs asked for: two distinct UUIDs.
    let j2 = job(2, spec(100, MIB, 2));
    let c = place(&j2, &pool(), &nodes, &[], &none()).unwrap();
    assert_eq!(c.gpus, vec!["GPU-1-0".to_string(), "GPU-1-1".to_string()]);
}

#[test]
fn unhealthy_gpus_are_not_in_the_view() {
    use tandem_common::hardware::{GpuHealth, GpuInfo, HardwareReport};
    let mut hw = HardwareReport::default();
    hw.cpu.logical_cores = 4;
    hw.memory.total_bytes = 8 * GIB;
    hw.gpus = (0..3u32)
        .rev()
        .map(|i| GpuInfo {
            index: i,
            uuid: format!("GPU-{i}"),
            ..Default::default()
        })
        .collect();
    hw.gpus[0].health = GpuHealth::new(HealthState::Unhealthy, "xid 79"); // GPU-2
    hw.gpus[1].health = GpuHealth::new(HealthState::Warning, "xid 13"); // GPU-1
    let rec: NodeRecord = serde_json::from_value(serde_json::json!({
        "id": id(1), "name": "gpu-a", "state": "suspect", "state_reason": "",
        "state_since_ms": 0, "address": "", "agent_version": "", "cert_serial": 0,
        "cert_not_after_unix": 0, "created_ms": 0, "joined_with_token": "",
        "hardware": hw, "cluster": C, "draining": true,
    }))
    .unwrap();
    let v = NodeView::from_record(&rec);
    assert_eq!(v.gpus, vec!["GPU-0".to_string(), "GPU-1".to_string()]);
    assert!(v.live, "suspect counts as live");
    assert!(v.draining);
    assert_eq!((v.cores, v.memory_bytes), (4, 8 * GIB));
}

#[test]
fn the_gpu_reason_names_each_node_and_what_it_has() {
    let nodes = [
        node(1, C, 8, 32, 2),
        node(2, C, 8, 32, 1),
        node(3, C, 8, 32, 0),
    ];
    let j = job(1, spec(100, MIB, 2));
    let held = held_gpus(1, &["GPU-1-1"]);
    let e = place(&j, &pool(), &nodes, &[], &held).unwrap_err();
    assert_eq!(
        e.reason,
        "no live node has 2 free GPUs: node-1 has 1, node-2 has 1, node-3 has 0"
    );
    assert_eq!(e.candidates.len(), 3);
}

#[test]
fn label_constraints_must_match_node_labels() {
    let mut a = node(1, C, 8, 32, 0);
    a.labels.insert("zone".into(), "b".into());
    let mut b = node(2, C, 4, 8, 0);
    b.labels.insert("zone".into(), "a".into());
    let c3 = node(3, C, 64, 256, 0);
    let mut s = spec(100, MIB, 0);
    s.constraints.labels.insert("zone".into(), "a".into());
    let j = job(1, s);
    let nodes = [a.clone(), b, c3.clone()];
    assert_eq!(
        place(&j, &pool(), &nodes, &[], &none()).unwrap().node,
        id(2)
    );
    let e = place(&j, &pool(), &[a, c3], &[], &none()).unwrap_err();
    assert_eq!(
        e.reason,
        format!(
            "no node of cluster {C}-name can take it (100 millicores, 1 MiB, 0 GPUs): \
             node-1: label zone=b, the job wants zone=a, node-3: no label zone (the job wants \
             zone=a)"
        )
    );
}

#[test]
fn no_schedule_taints_close_a_node_unless_tolerated() {
    let mut a = node(1, C, 64, 256, 0);
    a.taints.push(Taint {
        key: "maintenance".into(),
        value: "disk".into(),
        effect: TaintEffect::NoSchedule,
    });
    let b = node(2, C, 2, 4, 0);
    let j = job(1, spec(100, MIB, 0));
    let nodes = [a, b];
    assert_eq!(
        place(&j, &pool(), &nodes, &[], &none()).unwrap().node,
        id(2)
    );
    let mut s = spec(100, MIB, 0);
    s.tolerations.push(Toleration {
        key: "maintenance".into(),
        value: None,
        effect: None,
    });
    let tolerant = job(2, s);
    assert_eq!(
        place(&tolerant, &pool(), &nodes, &[], &none())
            .unwrap()
            .node,
        id(1),
        "the bigger node is open to a job that tolerates the taint"
    );
    let e = place(&j, &pool(), &nodes[..1], &[], &none()).unwrap_err();
    assert!(
        e.reason
            .ends_with("node-1: tainted maintenance=disk:no_schedule, not tolerated"),
        "{e}"
    );
}

#[test]
fn down_draining_and_foreign_nodes_are_skipped() {
    let mut down = node(1, C, 64, 256, 0);
    down.live = false;
    let mut draining = node(2, C, 64, 256, 0);
    draining.draining = true;
    let foreign = node(3, "c-000000000002", 64, 256, 0);
    let small = node(4, C, 1, 2, 0);
    let j = job(1, spec(100, MIB, 0));
    let nodes = [down.clone(), draining.clone(), foreign, small];
    assert_eq!(
        place(&j, &pool(), &nodes, &[], &none()).unwrap().node,
        id(4)
    );
    let e = place(&j, &pool(), &nodes[..3], &[], &none()).unwrap_err();
    assert_eq!(
        e.reason,
        format!(
            "no node of cluster {C}-name can take it (100 millicores, 1 MiB, 0 GPUs): \
             node-2: draining, node-1: down"
        ),
        "closest first; the other cluster's node is not mentioned"
    );
    let e = place(&j, &pool(), &[down], &[], &none()).unwrap_err();
    assert_eq!(
        e.reason,
        format!("no node of cluster {C}-name is up: node-1: down")
    );
    let e = place(&j, &pool(), &[], &[], &none()).unwrap_err();
    assert_eq!(e.reason, format!("cluster {C}-name has no nodes"));
}

#[test]
fn a_job_that_names_its_user_never_goes_to_an_agent_too_old_to_run_it_as_one() {
    // Node 1's agent speaks a protocol before job users: it would run the job as root.
    let mut old = node(1, C, 64, 256, 0);
    old.named_users = false;
    let new = node(2, C, 1, 2, 0);
    let mut as_user = job(1, spec(100, MIB, 0));
    as_user.spec.user = Some("nobody".into());
    let mut as_group = job(2, spec(100, MIB, 0));
    as_group.spec.group = Some("adm".into());
    let plain = job(3, spec(100, MIB, 0));
    let nodes = [old.clone(), new];
    for j in [&as_user, &as_group] {
        assert_eq!(place(j, &pool(), &nodes, &[], &none()).unwrap().node, id(2));
        let e = place(j, &pool(), &nodes[..1], &[], &none()).unwrap_err();
        assert!(
            e.reason
                .contains("node-1: its agent is too old to run a job as the user it names"),
            "{}",
            e.reason
        );
    }
    // A job that names no user still goes to the bigger node.
    assert_eq!(
        place(&plain, &pool(), &nodes, &[], &none()).unwrap().node,
        id(1)
    );
}

#[test]
fn cpu_and_memory_reasons_show_what_is_free() {
    let nodes = [node(1, C, 2, 4, 0), node(2, C, 1, 64, 0)];
    let e = place(&job(1, spec(4000, MIB, 0)), &pool(), &nodes, &[], &none()).unwrap_err();
    assert_eq!(
        e.reason,
        "no live node has 4000 free millicores: node-1 has 2000, node-2 has 1000"
    );
    let e = place(
        &job(1, spec(100, 8 * GIB, 0)),
        &pool(),
        &nodes[..1],
        &[],
        &none(),
    )
    .unwrap_err();
    assert_eq!(
        e.reason,
        "no live node has 8 GiB free memory: node-1 has 4 GiB"
    );
}

#[test]
fn long_reasons_are_cut_after_eight_nodes() {
    let nodes: Vec<_> = (1..=11).map(|n| node(n, C, 1, 1, 0)).collect();
    let e = place(&job(1, spec(2000, MIB, 0)), &pool(), &nodes, &[], &none()).unwrap_err();
    assert!(e.reason.ends_with(", and 3 more"), "{e}");
    assert_eq!(e.candidates.len(), 11);
}

#[test]
fn ha_pairs_run_on_the_primary_and_reserve_on_the_standby() {
    let nodes = [
        node(1, C, 8, 32, 2),
        node(2, C, 8, 32, 2),
        node(3, C, 64, 256, 8),
    ];
    let pairs = [pair("p-1", C, 1, 2)];
    let j = job(1, spec(1000, GIB, 1));
    let c = place(&j, &ha(), &nodes, &pairs, &none()).unwrap();
    assert_eq!(
        c,
        Choice {
            node: id(1),
            gpus: vec!["GPU-1-0".into()],
            reserve_on: Some(id(2)),
        },
        "the big unpaired node 3 takes no work"
    );
}

#[test]
fn ha_pairs_refuse_a_pair_whose_standby_cannot_keep_room() {
    let nodes = [node(1, C, 8, 32, 2), node(2, C, 8, 32, 2)];
    let pairs = [pair("p-1", C, 1, 2)];
    let j = job(1, spec(1000, GIB, 2));
    // Another job's reservation holds one of the standby's GPUs.
    let held = held_gpus(2, &["GPU-2-0"]);
    let e = place(&j, &ha(), &nodes, &pairs, &held).unwrap_err();
    assert_eq!(
        e.reason,
        format!(
            "no node of cluster {C}-name can take it (1000 millicores, 1 GiB, 2 GPUs): \
             node-1: its standby node-2 cannot keep room for it: 1 of 2 GPUs free"
        )
    );
    // A tainted standby is refused the same way: the failover would not be allowed.
    let mut tainted = nodes.clone();
    tainted[1].taints.push(Taint {
        key: "k".into(),
        value: String::new(),
        effect: TaintEffect::NoSchedule,
    });
    let e = place(&j, &ha(), &tainted, &pairs, &none()).unwrap_err();
    assert!(matches!(
        &e.candidates[0].misfit,
        Misfit::Standby { why, .. } if matches!(**why, Misfit::Tainted { .. })
    ));
}

#[test]
fn ha_pairs_prefer_a_healthy_pair_but_use_a_degraded_one() {
    let mut nodes = vec![
        node(1, C, 64, 256, 0),
        node(2, C, 64, 256, 0),
        node(3, C, 4, 16, 0),
        node(4, C, 4, 16, 0),
    ];
    nodes[1].live = false; // pair 1-2 has lost its standby
    let pairs = [pair("p-1", C, 1, 2), pair("p-2", C, 3, 4)];
    let j = job(1, spec(1000, GIB, 0));
    let c = place(&j, &ha(), &nodes, &pairs, &none()).unwrap();
    assert_eq!((c.node, c.reserve_on), (id(3), Some(id(4))));
    // Pair 3-4 full: the degraded pair still runs it, unprotected.
    let held = HashMap::from([(
        id(3),
        Held {
            cpu_millis: 4000,
            ..Default::default()
        },
    )]);
    let c = place(&j, &ha(), &nodes, &pairs, &held).unwrap();
    assert_eq!((c.node, c.reserve_on), (id(1), None));
}

#[test]
fn ha_pairs_run_on_the_standby_of_a_pair_not_promoted_yet() {
    let mut nodes = vec![node(1, C, 8, 32, 0), node(2, C, 8, 32, 0)];
    nodes[0].live = false;
    let pairs = [pair("p-1", C, 1, 2)];
    let j = job(1, spec(1000, GIB, 0));
    let c = place(&j, &ha(), &nodes, &pairs, &none()).unwrap();
    assert_eq!((c.node, c.reserve_on), (id(2), None));
    nodes[1].live = false;
    let e = place(&j, &ha(), &nodes, &pairs, &none()).unwrap_err();
    assert_eq!(
        e.reason,
        format!("no pair of cluster {C}-name is up: node-1: down")
    );
}

#[test]
fn ha_pairs_without_pairs_say_so() {
    let nodes = [node(1, C, 8, 32, 0)];
    let e = place(&job(1, spec(100, MIB, 0)), &ha(), &nodes, &[], &none()).unwrap_err();
    assert!(
        e.reason
            .contains("has no primary/standby pair yet (1 unpaired nodes)"),
        "{e}"
    );
}

#[test]
fn a_stopped_jobs_last_copy_keeps_its_room_and_gpus_until_it_has_ended() {
    let nodes = [node(1, C, 8, 32, 2)];
    let mut stopped = running(1, spec(1000, GIB, 1), 1, 3, &["GPU-1-1"]);
    let d = crate::jobs::decision::Decision::Stop {
        job: stopped.id.clone(),
        node: Some(id(1)),
        fencing_token: Some(3),
        reason: "DELETE".into(),
    };
    let mut jobs = vec![stopped.clone()];
    assert!(d.apply(&mut jobs, 5));
    stopped = jobs.remove(0);
    let held = held_by_jobs([&stopped], &[], &nodes);
    let h = &held[&id(1)];
    assert_eq!((h.cpu_millis, h.memory_bytes), (1000, GIB));
    assert_eq!(h.gpu_uuids, vec!["GPU-1-1".to_string()]);
    // Once its end is known the room is free.
    stopped.waits_for = None;
    assert!(held_by_jobs([&stopped], &[], &nodes).is_empty());
}

/// Found by the simulation (seed 757, once its nodes had GPUs): a job moving off a node (a
/// drain, a move to another cluster) was counted only where it goes, so its old copy's GPUs
/// looked free while that copy was still being stopped. Once the node could take jobs again
/// (undrained, moved back), a new job got the GPU the old copy still held.
#[test]
fn a_moving_jobs_old_copy_keeps_its_room_and_gpus_until_it_has_ended() {
    let nodes = [node(1, C, 8, 32, 2), node(2, C, 8, 32, 2)];
    let mut moving = running(1, spec(1000, GIB, 1), 1, 3, &["GPU-1-1"]);
    let d = crate::jobs::decision::Decision::Move {
        job: moving.id.clone(),
        from: id(1),
        old_token: 3,
        to: Choice {
            node: id(2),
            gpus: vec!["GPU-2-0".into()],
            reserve_on: None,
        },
        fencing_token: 4,
        stop_old_first: true,
        end_reason: "drained".into(),
        reason: "drain".into(),
    };
    let mut jobs = vec![moving.clone()];
    assert!(d.apply(&mut jobs, 5));
    moving = jobs.remove(0);
    let held = held_by_jobs([&moving], &[], &nodes);
    let old = &held[&id(1)];
    assert_eq!((old.cpu_millis, old.memory_bytes), (1000, GIB));
    assert_eq!(old.gpu_uuids, vec!["GPU-1-1".to_string()]);
    assert_eq!(held[&id(2)].gpu_uuids, vec!["GPU-2-0".to_string()]);
    // Once the old copy's end is known, only the new placement holds room.
    moving.current.as_mut().unwrap().after = None;
    let held = held_by_jobs([&moving], &[], &nodes);
    assert!(!held.contains_key(&id(1)), "{held:?}");
}

#[test]
fn held_by_jobs_counts_placements_and_reserves_on_standbys() {
    let nodes = [
        node(1, C, 8, 32, 2),
        node(2, C, 8, 32, 2),
        node(5, C, 8, 32, 2),
    ];
    let pairs = [pair("p-1", C, 1, 2)];
    let jobs = [
        running(1, spec(1000, GIB, 1), 1, 4, &["GPU-1-1"]),
        running(2, spec(500, GIB, 1), 1, 1, &["GPU-1-0"]),
        running(3, spec(250, GIB, 0), 5, 1, &[]),
        job(4, spec(9999, GIB, 2)), // pending: holds nothing
    ];
    let held = held_by_jobs(&jobs, &pairs, &nodes);
    let h1 = &held[&id(1)];
    assert_eq!((h1.cpu_millis, h1.memory_bytes), (1500, 2 * GIB));
    assert_eq!(
        h1.gpu_uuids,
        vec!["GPU-1-1".to_string(), "GPU-1-0".to_string()]
    );
    let h2 = &held[&id(2)];
    assert_eq!(
        (h2.cpu_millis, h2.memory_bytes),
        (1500, 2 * GIB),
        "reserved"
    );
    assert_eq!(
        h2.gpu_uuids,
        vec!["GPU-2-0".to_string(), "GPU-2-1".to_string()]
    );
    assert_eq!(held[&id(5)].cpu_millis, 250, "pool node: no reservation");
    assert_eq!(held.len(), 3);

    // After a promotion (2 primary, 1 standby) with both jobs moved to node 2, the reservation
    // is on node 1: it follows the pairs.
    let promoted = [pair("p-1", C, 2, 1)];
    let moved = [running(1, spec(1000, GIB, 1), 2, 5, &["GPU-2-0"])];
    let held = held_by_jobs(&moved, &promoted, &nodes);
    assert_eq!(held[&id(1)].gpu_uuids, vec!["GPU-1-0".to_string()]);
    assert_eq!(held[&id(2)].cpu_millis, 1000);
}

#[test]
fn a_job_moving_into_its_own_reservation_fits() {
    // The standby is as big as the job: counting the job's own reservation would refuse it.
    let mut nodes = vec![node(1, C, 2, 4, 1), node(2, C, 2, 4, 1)];
    let me = running(1, spec(2000, 4 * GIB, 1), 1, 1, &["GPU-1-0"]);
    let promoted = [pair("p-1", C, 2, 1)];
    nodes[0].live = false;
    let others: Vec<&JobRecord> = vec![];
    let held = held_by_jobs(others, &promoted, &nodes);
    let c = place(&me, &ha(), &nodes, &promoted, &held).unwrap();
    assert_eq!(c.node, id(2));
    assert_eq!(c.gpus, vec!["GPU-2-0".to_string()]);
    // With itself counted (the mistake the docs warn about) it would not fit.
    let held = held_by_jobs([&me], &[pair("p-1", C, 1, 2)], &nodes);
    assert!(place(&me, &ha(), &nodes, &promoted, &held).is_err());
}

#[test]
fn bytes_read_well() {
    assert_eq!(show_bytes(0), "0 B");
    assert_eq!(show_bytes(MIB), "1 MiB");
    assert_eq!(show_bytes(3 * GIB / 2), "1.5 GiB");
    assert_eq!(show_bytes(1000), "1000 B");
}
