use super::*;
use crate::cluster::capacity::GIB;
use crate::jobs::model::RestartPolicy;
use crate::jobs::placement::Choice;
use crate::jobs::testkit::*;
use crate::model::ClusterMode;

const LEASE: u64 = 1000;

/// A cluster's records, as the shell would hold them.
struct Fx {
    clusters: Vec<ClusterRecord>,
    nodes: Vec<NodeView>,
    pairs: Vec<PairRecord>,
    jobs: Vec<JobRecord>,
}

impl Fx {
    fn new(mode: ClusterMode, nodes: Vec<NodeView>) -> Self {
        Self {
            clusters: vec![cluster(C, mode)],
            nodes,
            pairs: vec![],
            jobs: vec![],
        }
    }

    fn view(&self) -> View<'_> {
        View {
            clusters: &self.clusters,
            nodes: &self.nodes,
            pairs: &self.pairs,
            jobs: &self.jobs,
        }
    }

    fn handle(&mut self, p: &mut Planner, e: Event, now: u64) -> Vec<Decision> {
        match &e {
            Event::NodeDown { node } | Event::NodeUp { node, .. } => {
                let up = matches!(e, Event::NodeUp { .. });
                let n = self.node(node);
                n.live = up;
                n.suspect = false;
            }
            Event::Recovered { node } => self.node(node).suspect = false,
            Event::Drain { node } => self.node(node).draining = true,
            _ => {}
        }
        let out = p.handle(&self.view(), &e, now);
        for d in &out {
            d.apply(&mut self.jobs, now);
        }
        out
    }

    fn node(&mut self, id: &NodeId) -> &mut NodeView {
        self.nodes.iter_mut().find(|n| &n.id == id).unwrap()
    }

    fn job(&self, k: u32) -> &JobRecord {
        self.jobs.iter().find(|j| j.id == jid(k)).unwrap()
    }
}

fn jid(k: u32) -> String {
    format!("j-{k:012x}")
}

fn down(n: u8) -> Event {
    Event::NodeDown { node: id(n) }
}

fn up(n: u8, running: &[(u32, u64)]) -> Event {
    Event::NodeUp {
        node: id(n),
        placed_since: Vec::new(),
        running: running
            .iter()
            .map(|&(k, t)| Reported {
                job: jid(k),
                fencing_token: t,
            })
            .collect(),
    }
}

fn exited(k: u32, n: u8, token: u64, exit: Exit) -> Event {
    Event::JobExited {
        job: jid(k),
        node: id(n),
        fencing_token: token,
        exit,
        by_the_job: true,
    }
}

fn pool(n: usize, gpus: usize) -> Fx {
    Fx::new(
        ClusterMode::Pool,
        (1..=n as u8).map(|i| node(i, C, 8, 32, gpus)).collect(),
    )
}

#[test]
fn a_dead_nodes_jobs_are_replaced_with_higher_tokens_and_distinct_gpus() {
    let mut fx = pool(3, 2);
    fx.jobs = vec![
        running(1, spec(1000, GIB, 1), 1, 4, &["GPU-1-0"]),
        running(2, spec(1000, GIB, 1), 1, 9, &["GPU-1-1"]),
        running(3, spec(1000, GIB, 2), 2, 1, &["GPU-2-0", "GPU-2-1"]),
    ];
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, down(1), 10);
    assert_eq!(out.len(), 2, "{out:?}");
    for (d, (k, token)) in out.iter().zip([(1, 5), (2, 10)]) {
        let Decision::Replace {
            job,
            from,
            to,
            fencing_token,
            end_reason,
            ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!((job, from, *fencing_token), (&jid(k), &id(1), token));
        assert_eq!(to.node, id(3), "node 2's GPUs are all held");
        assert_eq!(end_reason, "node down");
    }
    assert_eq!(fx.job(1).current.as_ref().unwrap().gpus, vec!["GPU-3-0"]);
    assert_eq!(fx.job(2).current.as_ref().unwrap().gpus, vec!["GPU-3-1"]);
    assert_eq!(fx.job(1).state, JobState::Migrating);
    assert!(
        out[0].reason().contains("node-1 is down"),
        "{}",
        out[0].reason()
    );
}

#[test]
fn a_job_that_fits_nowhere_else_is_pending_with_the_reason() {
    let mut fx = pool(2, 0);
    fx.jobs = vec![running(1, spec(8000, GIB, 0), 1, 1, &[])];
    fx.jobs.push(running(2, spec(1000, GIB, 0), 2, 1, &[]));
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, down(1), 0);
    assert!(matches!(&out[..], [Decision::Pending { .. }]), "{out:?}");
    let j = fx.job(1);
    assert_eq!(j.state, JobState::Pending);
    assert!(j.current.is_none());
    assert_eq!(
        j.state_reason,
        "node-1 is down and the job fits nowhere else: no node of cluster \
         c-000000000001-name can take it (8000 millicores, 1 GiB, 0 GPUs): node-2: 7000 of 8000 \
         millicores free, node-1: down"
    );
    // When a node with room comes, the pending job starts there.
    fx.nodes.push(node(3, C, 16, 64, 0));
    let out = fx.handle(&mut p, up(3, &[]), 5);
    assert!(
        matches!(&out[..], [Decision::Start { to, fencing_token: 2, .. }] if to.node == id(3)),
        "{out:?}"
    );
}

fn ha(nodes: u8) -> Fx {
    let mut fx = Fx::new(
        ClusterMode::HaPairs,
        (1..=nodes).map(|i| node(i, C, 8, 32, 1)).collect(),
    );
    fx.pairs = (1..=nodes / 2)
        .map(|i| pair(&format!("p-{i}"), C, 2 * i - 1, 2 * i))
        .collect();
    fx
}

#[test]
fn ha_pairs_fail_over_to_the_promoted_standby_of_the_jobs_own_pair() {
    let mut fx = ha(4);
    // Pair 3-4 has more room, but the job's own pair keeps room for it.
    fx.nodes[2].cores = 64;
    fx.jobs = vec![running(1, spec(2000, GIB, 1), 1, 3, &["GPU-1-0"])];
    fx.pairs[0] = pair("p-1", C, 2, 1); // already promoted by the pair planner
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, down(1), 0);
    let [Decision::Replace {
        to, fencing_token, ..
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (to, *fencing_token),
        (
            &Choice {
                node: id(2),
                gpus: vec!["GPU-2-0".into()],
                reserve_on: None
            },
            4
        )
    );
    // Node 1 comes back as the standby (no failback): the job stays, its room is kept there.
    let out = fx.handle(&mut p, up(1, &[]), 2000);
    assert!(out.is_empty(), "{out:?}");
    // With failback the pair planner swaps the roles back: the job moves to the primary.
    fx.pairs[0] = pair("p-1", C, 1, 2);
    let out = fx.handle(&mut p, up(1, &[]), 3000);
    let [Decision::Move {
        from,
        to,
        old_token: 4,
        fencing_token: 5,
        stop_old_first: true,
        ..
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (from, &to.node, &to.reserve_on),
        (&id(2), &id(1), &Some(id(2)))
    );
}

#[test]
fn drain_moves_jobs_stopping_the_old_copy_first_or_keeps_them() {
    let mut fx = pool(2, 0);
    fx.jobs = vec![
        running(1, spec(1000, GIB, 0), 1, 2, &[]),
        running(2, spec(9000, GIB, 0), 1, 1, &[]),
    ];
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, Event::Drain { node: id(1) }, 0);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(matches!(
        &out[0],
        Decision::Move { job, from, old_token: 2, fencing_token: 3, stop_old_first: true, end_reason, to, .. }
            if *job == jid(1) && *from == id(1) && to.node == id(2) && end_reason == "drained"
    ));
    let Decision::Keep { job, reason } = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(job, &jid(2));
    assert!(reason.starts_with("node-1 is draining, but"), "{reason}");
    assert_eq!(fx.job(2).state, JobState::Running, "kept running");
    // The old copy's exit (token 2) is stale: the move goes on, nothing restarts.
    let out = fx.handle(&mut p, exited(1, 1, 2, Exit::Signal(15)), 5);
    assert!(matches!(&out[..], [Decision::Ignore { .. }]), "{out:?}");
}

#[test]
fn a_node_moved_to_another_cluster_loses_its_jobs_old_copy_stopped_first_also_after_a_restart() {
    let mut fx = pool(2, 0);
    fx.jobs = vec![running(1, spec(1000, GIB, 0), 1, 2, &[])];
    fx.clusters.push(cluster("c-other", ClusterMode::Pool));
    fx.node(&id(1)).cluster = Some("c-other".into());
    // Not draining: found by the reconciliation alone (as after a coordinator restart).
    let mut p = Planner::new(LEASE);
    let out = p.reconcile(&fx.view(), 0);
    assert!(
        matches!(
            &out[..],
            [Decision::Move { job, from, old_token: 2, fencing_token: 3, stop_old_first: true, end_reason, to, reason }]
                if *job == jid(1) && *from == id(1) && to.node == id(2)
                    && end_reason == "node moved to another cluster"
                    && reason.contains("no longer in cluster")
        ),
        "{out:?}"
    );
    for d in &out {
        d.apply(&mut fx.jobs, 0);
    }
    // Moved once: the next reconciliation leaves it where it goes.
    let again = p.reconcile(&fx.view(), 1);
    assert!(
        !again.iter().any(|d| matches!(d, Decision::Move { .. })),
        "{again:?}"
    );
}

/// Found by the simulation (seed 107385's neighbour): a `restart: never` job ran to its end on a
/// node being drained, after the move was decided and before the stop reached it. That exit
/// released the move's withheld start, and the job ran a second time. Now the job ends where
/// it ran; a job its policy restarts moves on (the new copy is its restart), and a start the
/// old node refused (it never ran) does not end the job either.
#[test]
fn a_job_that_ends_by_itself_while_it_moves_is_not_started_again_unless_its_policy_says_so() {
    for (policy, exit, by_the_job, ends) in [
        (
            RestartPolicy::Never,
            Exit::Code(0),
            true,
            Some(JobState::Completed),
        ),
        (
            RestartPolicy::Never,
            Exit::Code(3),
            true,
            Some(JobState::Failed),
        ),
        (
            RestartPolicy::OnFailure,
            Exit::Code(0),
            true,
            Some(JobState::Completed),
        ),
        (RestartPolicy::OnFailure, Exit::Code(3), true, None),
        (RestartPolicy::Always, Exit::Code(0), true, None),
        (RestartPolicy::Never, Exit::Code(127), false, None),
    ] {
        let mut fx = pool(2, 0);
        let mut s = spec(1000, GIB, 0);
        s.restart = policy;
        fx.jobs = vec![running(1, s, 1, 2, &[])];
        let mut p = Planner::new(LEASE);
        let out = fx.handle(&mut p, Event::Drain { node: id(1) }, 0);
        assert!(
            matches!(out.first(), Some(Decision::Move { .. })),
            "{out:?}"
        );
        let e = Event::JobExited {
            job: jid(1),
            node: id(1),
            fencing_token: 2,
            exit,
            by_the_job,
        };
        let out = fx.handle(&mut p, e, 5);
        let case = format!("{policy:?} {exit} by_the_job={by_the_job}: {out:?}");
        match ends {
            Some(state) => {
                assert_eq!(fx.job(1).state, state, "{case}");
                assert!(fx.job(1).current.is_none(), "{case}");
                let last = fx.job(1).history.last().unwrap();
                assert_eq!(last.node, id(2), "{case}");
                assert!(last.started_ms.is_none(), "{case}");
            }
            None => {
                assert!(matches!(&out[..], [Decision::Ignore { .. }]), "{case}");
                assert_eq!(fx.job(1).node(), Some(&id(2)), "{case}");
            }
        }
    }
}

/// A move's new placement waits (durably) for the old copy; the new node registering without
/// the job is no loss (it was never sent the start), so nothing is placed again while the old
/// copy may still run. If the new node goes down, the replacement keeps waiting for it too.
#[test]
fn a_move_waiting_for_its_old_copy_is_not_placed_again_when_the_new_node_registers() {
    let mut fx = pool(3, 0);
    fx.jobs = vec![running(1, spec(1000, GIB, 0), 1, 2, &[])];
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, Event::Drain { node: id(1) }, 0);
    let Some(Decision::Move { to, .. }) = out.first() else {
        panic!("{out:?}")
    };
    let new = to.node.clone();
    let old = crate::jobs::model::OldCopy {
        node: id(1),
        fencing_token: 2,
    };
    assert_eq!(fx.job(1).current.as_ref().unwrap().after, Some(old.clone()));
    let n = (1..=3u8).find(|&i| id(i) == new).unwrap();
    let out = fx.handle(&mut p, up(n, &[]), 10);
    assert!(
        !out.iter().any(|d| d.placement().is_some()),
        "placed again while the old copy may run: {out:?}"
    );
    assert_eq!(fx.job(1).node(), Some(&new));
    // The new node dies before the start was released: the job moves on, still waiting.
    let out = fx.handle(&mut p, down(n), 20);
    assert!(
        matches!(out.first(), Some(Decision::Replace { .. })),
        "{out:?}"
    );
    assert_eq!(fx.job(1).current.as_ref().unwrap().after, Some(old));
}

/// Found by the simulation: a job whose move still waits for its old copy is moved again
/// (its new node is drained too). The copy that may run is still the first one: the second
/// move waits for it, not for the placement in between, which never started.
#[test]
fn a_second_move_before_the_first_started_waits_for_the_same_old_copy() {
    let mut fx = pool(3, 0);
    fx.jobs = vec![running(1, spec(1000, GIB, 0), 1, 2, &[])];
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, Event::Drain { node: id(1) }, 0);
    let Some(Decision::Move { to, .. }) = out.first() else {
        panic!("{out:?}")
    };
    let first = to.node.clone();
    let old = crate::jobs::model::OldCopy {
        node: id(1),
        fencing_token: 2,
    };
    let out = fx.handle(
        &mut p,
        Event::Drain {
            node: first.clone(),
        },
        10,
    );
    assert!(
        matches!(out.first(), Some(Decision::Move { .. })),
        "{out:?}"
    );
    let now = fx.job(1).current.clone().unwrap();
    assert_ne!(now.node, first);
    assert_eq!(
        now.after,
        Some(old),
        "the second move waits for the copy that may run"
    );
}

/// Found by the simulation: a move's new node dies before the start went out, and no other
/// node can take the job. It goes pending, and keeps the wait: its next placement waits for
/// the old copy too, which may still run.
#[test]
fn a_job_left_pending_by_a_waiting_move_keeps_the_wait() {
    let mut fx = pool(2, 0);
    fx.jobs = vec![running(1, spec(1000, GIB, 0), 1, 2, &[])];
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, Event::Drain { node: id(1) }, 0);
    assert!(
        matches!(out.first(), Some(Decision::Move { .. })),
        "{out:?}"
    );
    let old = crate::jobs::model::OldCopy {
        node: id(1),
        fencing_token: 2,
    };
    let out = fx.handle(&mut p, down(2), 10);
    assert!(fx.job(1).current.is_none(), "{out:?}");
    assert_eq!(fx.job(1).waits_for, Some(old.clone()));
    let out = fx.handle(&mut p, up(2, &[]), 20);
    assert!(
        matches!(out.first(), Some(Decision::Start { .. })),
        "{out:?}"
    );
    assert_eq!(fx.job(1).current.as_ref().unwrap().after, Some(old));
    assert_eq!(fx.job(1).waits_for, None);
}

/// Found by the simulation: the last ready node of a cluster is removed, and its lease
/// ends. Counted as a down it paused failover until it returned, which a removed node never
/// does: the jobs were stranded. A removal is not counted by the disruption guard.
#[test]
fn a_removed_node_does_not_pause_failover() {
    let run = |removed: bool| {
        let mut fx = pool(2, 0);
        fx.jobs = vec![running(1, spec(1000, GIB, 0), 1, 2, &[])];
        let mut p = Planner::new(LEASE);
        fx.handle(&mut p, down(2), 0);
        let ev = if removed {
            Event::NodeRemoved { node: id(1) }
        } else {
            down(1)
        };
        fx.handle(&mut p, ev, 10 * LEASE)
    };
    let out = run(false);
    assert!(
        out.iter().any(|d| matches!(d, Decision::Hold { .. })),
        "a down of the last ready node holds: {out:?}"
    );
    let out = run(true);
    assert!(
        !out.iter().any(|d| matches!(d, Decision::Hold { .. })),
        "a removal must not hold: {out:?}"
    );
}

/// Found by a soak (seed 479960): a hold waiting for a node to come back waited for ever once
/// an operator moved that node to another cluster; the jobs it held stayed `migrating`.
#[test]
fn a_hold_waiting_for_a_node_moved_to_another_cluster_resumes() {
    let mut fx = pool(2, 0);
    fx.jobs = vec![running(1, spec(1000, GIB, 0), 1, 2, &[])];
    let mut p = Planner::new(LEASE);
    fx.handle(&mut p, down(2), 0);
    let out = fx.handle(&mut p, down(1), 10 * LEASE);
    assert!(
        out.iter().any(|d| matches!(d, Decision::Hold { .. })),
        "{out:?}"
    );
    assert!(p.holding(C).is_some());
    // Node 1 is moved to another cluster (the move sends `NodeOpen`).
    for n in fx.nodes.iter_mut().filter(|n| n.id == id(1)) {
        n.cluster = Some("c-other".into());
    }
    let out = fx.handle(&mut p, Event::NodeOpen { node: id(1) }, 11 * LEASE);
    assert!(
        out.iter()
            .any(|d| matches!(d, Decision::Resume { cluster, .. } if cluster == C)),
        "{out:?}"
    );
    assert!(p.holding(C).is_none(), "the hold is over");
    assert_eq!(
        fx.job(1).state,
        JobState::Pending,
        "decided again: no live node of its cluster is left"
    );
}

#[test]
fn exits_follow_the_restart_policy_and_max_restarts() {
    let mut p = Planner::new(LEASE);
    let case = |policy: RestartPolicy, restarts: u32, exit: Exit, p: &mut Planner| {
        let mut fx = pool(1, 1);
        let mut s = spec(1000, GIB, 1);
        s.restart = policy;
        s.max_restarts = 2;
        let mut j = running(1, s, 1, 7, &["GPU-1-0"]);
        j.restarts = restarts;
        fx.jobs = vec![j];
        let out = fx.handle(p, exited(1, 1, 7, exit), 0);
        assert_eq!(out.len(), 1, "{out:?}");
        (out.into_iter().next().unwrap(), fx.job(1).clone())
    };
    let (d, j) = case(RestartPolicy::OnFailure, 0, Exit::Code(1), &mut p);
    let Decision::Restart {
        to,
        fencing_token: 8,
        attempt: 1,
        backoff_ms: 100,
        end_reason,
        ..
    } = &d
    else {
        panic!("{d:?}")
    };
    assert_eq!(
        (&to.node, &to.gpus),
        (&id(1), &vec!["GPU-1-0".to_string()]),
        "same node, same GPU"
    );
    assert_eq!(end_reason, "exited 1");
    assert_eq!(
        (j.state, j.restarts, j.history.len()),
        (JobState::Starting, 1, 1)
    );

    let (d, j) = case(RestartPolicy::OnFailure, 0, Exit::Code(0), &mut p);
    assert!(matches!(d, Decision::Completed { .. }), "{d:?}");
    assert_eq!(j.state, JobState::Completed);
    let (d, _) = case(RestartPolicy::OnFailure, 2, Exit::Signal(9), &mut p);
    assert_eq!(
        d.reason(),
        "killed by signal 9; gave up after 2 restarts (max_restarts 2)"
    );
    assert!(matches!(d, Decision::Failed { .. }));
    let (d, _) = case(RestartPolicy::Never, 0, Exit::Code(3), &mut p);
    assert_eq!(d.reason(), "exited 3 (restart: never)");
    let (d, _) = case(RestartPolicy::Always, 1, Exit::Code(0), &mut p);
    assert!(
        matches!(
            d,
            Decision::Restart {
                attempt: 2,
                backoff_ms: 200,
                ..
            }
        ),
        "{d:?}"
    );
    let (d, _) = case(RestartPolicy::Always, 2, Exit::Code(0), &mut p);
    assert!(matches!(d, Decision::Completed { .. }), "{d:?}");
}

#[test]
fn backoff_doubles_up_to_ten_seconds() {
    let b: Vec<u64> = (1..=9).map(restart_backoff_ms).collect();
    assert_eq!(b, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
    assert_eq!(restart_backoff_ms(u32::MAX), 10_000);
}

#[test]
fn reports_about_old_tokens_never_change_a_job() {
    let mut fx = pool(2, 0);
    fx.jobs = vec![running(1, spec(1000, GIB, 0), 2, 5, &[])];
    let mut p = Planner::new(LEASE);
    // An old copy's exit: ignored (a restart here would make a second copy).
    let out = fx.handle(&mut p, exited(1, 1, 4, Exit::Code(1)), 0);
    let [Decision::Ignore { reason, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        reason,
        "ignored exit (exited 1): node-1 holds j-000000000001 with token 4; the current copy \
         has token 5 on node-2"
    );
    // The right token on the wrong node is not current either.
    let out = fx.handle(&mut p, exited(1, 1, 5, Exit::Code(1)), 0);
    assert!(matches!(&out[..], [Decision::Ignore { .. }]));
    // An old copy that says it started is killed.
    let started = |n, t| Event::JobStarted {
        job: jid(1),
        node: id(n),
        fencing_token: t,
    };
    let out = fx.handle(&mut p, started(1, 4), 0);
    assert!(matches!(
        &out[..],
        [Decision::KillStale { node, fencing_token: 4, .. }] if *node == id(1)
    ));
    assert_eq!(fx.job(1).restarts, 0);
    assert_eq!(fx.job(1).fencing_token(), Some(5));
    // The current one is confirmed once.
    fx.jobs[0].state = JobState::Migrating;
    let out = fx.handle(&mut p, started(2, 5), 0);
    assert!(matches!(
        &out[..],
        [Decision::Started {
            fencing_token: 5,
            ..
        }]
    ));
    assert_eq!(fx.job(1).state, JobState::Running);
    assert!(fx.handle(&mut p, started(2, 5), 0).is_empty());
}

#[test]
fn a_returning_node_kills_stale_copies_and_replaces_what_it_lost() {
    let mut fx = pool(2, 0);
    fx.jobs = vec![
        running(1, spec(1000, GIB, 0), 2, 6, &[]), // moved away from node 1 (it had token 5)
        running(2, spec(1000, GIB, 0), 1, 3, &[]), // current on node 1
        running(3, spec(1000, GIB, 0), 1, 2, &[]), // current on node 1, not reported
    ];
    fx.jobs[1].state = JobState::Starting;
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, up(1, &[(1, 5), (2, 3), (9, 1)]), 0);
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(matches!(&out[0], Decision::KillStale { job, fencing_token: 5, .. } if *job == jid(1)));
    assert!(matches!(&out[1], Decision::Started { job, fencing_token: 3 } if *job == jid(2)));
    let Decision::KillStale { reason, .. } = &out[2] else {
        panic!("{out:?}")
    };
    assert_eq!(
        reason,
        "node-1 holds job j-000000000009, which does not exist"
    );
    assert!(matches!(
        &out[3],
        Decision::Replace { job, fencing_token: 3, end_reason, .. }
            if *job == jid(3) && end_reason == "lost by the node"
    ));
}

#[test]
fn the_guard_holds_failover_when_more_than_half_go_within_one_lease() {
    assert!(guard(1, 1) && guard(3, 2) && guard(4, 3));
    assert!(!guard(2, 1) && !guard(4, 2) && !guard(5, 2));

    let mut fx = pool(4, 0);
    fx.jobs = (1..=4)
        .map(|k| running(k, spec(100, GIB, 0), k as u8, 1, &[]))
        .collect();
    let mut p = Planner::new(LEASE);
    // Two of four within a lease: not more than half, they fail over.
    assert!(matches!(
        &fx.handle(&mut p, down(1), 0)[..],
        [Decision::Replace { .. }]
    ));
    assert!(matches!(
        &fx.handle(&mut p, down(2), 400)[..],
        [Decision::Replace { .. }, ..]
    ));
    // The third within the same lease: held.
    let out = fx.handle(&mut p, down(3), 900);
    let [Decision::Hold {
        cluster,
        jobs,
        reason,
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(cluster, C);
    // Job 1 had moved to node 3 already; both it and job 3 stay there.
    assert_eq!(jobs, &vec![jid(1), jid(3)]);
    assert!(jobs.iter().all(|j| fx
        .jobs
        .iter()
        .any(|r| &r.id == j && r.node() == Some(&id(3)))));
    assert!(
        reason.starts_with(
            "failover paused in cluster c-000000000001-name: 3 of 4 ready nodes went down \
             within one lease (1000 ms): node-1, node-2, node-3;"
        ),
        "{reason}"
    );
    assert!(p.holding(C).is_some());
    assert_eq!(fx.job(3).node(), Some(&id(3)), "not moved");
    assert_eq!(fx.job(3).state_reason, *reason);
    // A fourth while held: held too.
    let out = fx.handle(&mut p, down(4), 5000);
    assert!(
        matches!(&out[..], [Decision::Hold { jobs, .. }] if !jobs.is_empty()),
        "{out:?}"
    );
    // Node 3 returns: 3 of 4 still down, still held; its own job starts again there.
    let out = fx.handle(&mut p, up(3, &[]), 6000);
    assert!(
        out.iter().all(|d| !matches!(d, Decision::Resume { .. })),
        "{out:?}"
    );
    assert!(p.holding(C).is_some());
    // Node 4 returns: 2 of 4 down, resumed.
    let out = fx.handle(&mut p, up(4, &[]), 7000);
    assert!(
        out.iter().any(|d| matches!(d, Decision::Resume { .. })),
        "{out:?}"
    );
    assert!(p.holding(C).is_none());
    assert!(fx
        .jobs
        .iter()
        .all(|j| fx.nodes.iter().any(|n| Some(&n.id) == j.node() && n.live)));
}

/// Two nodes of three die at once: the first is declared down while the second is still only
/// suspect. Failover waits for the suspect; when it goes down too, the whole wave is held.
#[test]
fn a_suspect_node_counts_toward_the_guard_when_another_goes_down() {
    let mut fx = pool(3, 0);
    fx.jobs = (1..=3)
        .map(|k| running(k, spec(100, GIB, 0), k as u8, 1, &[]))
        .collect();
    let mut p = Planner::new(LEASE);
    fx.node(&id(2)).suspect = true;
    let out = fx.handle(&mut p, down(1), 0);
    assert!(
        matches!(&out[..], [Decision::Ignore { reason, .. }] if reason.contains("node-2")),
        "{out:?}"
    );
    assert_eq!(fx.job(1).node(), Some(&id(1)), "not moved yet");
    // Any other event meanwhile does not move it either.
    let out = fx.handle(&mut p, Event::Submitted { job: jid(3) }, 100);
    assert!(
        out.iter().all(|d| matches!(d, Decision::Ignore { .. })),
        "{out:?}"
    );
    let out = fx.handle(&mut p, down(2), 300);
    let [Decision::Hold { jobs, reason, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(jobs, &vec![jid(1), jid(2)]);
    assert!(
        reason.contains("2 of 3 ready nodes went down within one lease"),
        "{reason}"
    );
    assert!(fx.jobs[..2].iter().all(|j| j.fencing_token() == Some(1)));
    // Forced: both go to node 3.
    let out = p.force_failover(&fx.view(), C, 400);
    assert_eq!(out.len(), 3, "{out:?}");
}

/// The suspect beats again: the failover that waited for it goes on.
#[test]
fn failover_waits_for_a_suspect_and_goes_on_when_it_recovers() {
    let mut fx = pool(3, 0);
    fx.jobs = vec![running(1, spec(100, GIB, 0), 1, 1, &[])];
    let mut p = Planner::new(LEASE);
    fx.node(&id(2)).suspect = true;
    let out = fx.handle(&mut p, down(1), 0);
    assert!(
        out.iter().all(|d| matches!(d, Decision::Ignore { .. })),
        "{out:?}"
    );
    let out = fx.handle(&mut p, Event::Recovered { node: id(2) }, 200);
    assert!(
        matches!(
            &out[..],
            [Decision::Replace {
                fencing_token: 2,
                ..
            }]
        ),
        "{out:?}"
    );
    assert!(p.holding(C).is_none());
    // One suspect among five is no wave: failover goes on at once.
    let mut fx = pool(5, 0);
    fx.jobs = vec![running(1, spec(100, GIB, 0), 1, 1, &[])];
    fx.node(&id(2)).suspect = true;
    let out = fx.handle(&mut Planner::new(LEASE), down(1), 0);
    assert!(matches!(&out[..], [Decision::Replace { .. }]), "{out:?}");
}

#[test]
fn failures_more_than_a_lease_apart_are_separate() {
    let mut fx = pool(4, 0);
    fx.jobs = (1..=4)
        .map(|k| running(k, spec(100, GIB, 0), k as u8, 1, &[]))
        .collect();
    let mut p = Planner::new(LEASE);
    for (n, t) in [(1, 0), (2, 1500), (3, 3000)] {
        let out = fx.handle(&mut p, down(n), t);
        assert!(
            out.iter().all(|d| matches!(d, Decision::Replace { .. })),
            "{out:?}"
        );
    }
    assert!(p.holding(C).is_none());
    assert!(fx.jobs.iter().all(|j| j.node() == Some(&id(4))));
}

#[test]
fn an_operator_can_force_failover() {
    let mut fx = pool(3, 0);
    fx.jobs = (1..=3)
        .map(|k| running(k, spec(100, GIB, 0), k as u8, 1, &[]))
        .collect();
    let mut p = Planner::new(LEASE);
    fx.handle(&mut p, down(1), 0);
    let out = fx.handle(&mut p, down(2), 10);
    assert!(
        matches!(&out[..], [Decision::Hold { jobs, .. }] if jobs.len() == 2),
        "{out:?}"
    );
    let out = p.force_failover(&fx.view(), C, 20);
    assert!(matches!(&out[0], Decision::Resume { reason, .. } if reason.contains("forced")));
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out[1..]
        .iter()
        .all(|d| matches!(d, Decision::Replace { to, .. } if to.node == id(3))));
}

#[test]
fn reconcile_after_a_restart_finishes_failovers_unless_most_nodes_are_down() {
    let mut fx = pool(3, 0);
    fx.jobs = vec![
        running(1, spec(100, GIB, 0), 1, 1, &[]),
        job(2, spec(100, GIB, 0)),
    ];
    fx.nodes[0].live = false;
    let out = Planner::new(LEASE).reconcile(&fx.view(), 0);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(matches!(
        &out[0],
        Decision::Replace {
            fencing_token: 2,
            ..
        }
    ));
    assert!(matches!(
        &out[1],
        Decision::Start {
            fencing_token: 1,
            ..
        }
    ));
    fx.nodes[1].live = false;
    let mut p = Planner::new(LEASE);
    let out = p.reconcile(&fx.view(), 0);
    assert!(
        matches!(&out[0], Decision::Hold { jobs, .. } if *jobs == vec![jid(1)]),
        "{out:?}"
    );
    assert!(
        matches!(&out[1], Decision::Start { .. }),
        "pending jobs still start: {out:?}"
    );
    assert!(p.holding(C).is_some());
}

#[test]
fn submit_and_stop() {
    let mut fx = pool(1, 0);
    fx.jobs = vec![job(1, spec(100, GIB, 0))];
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, Event::Submitted { job: jid(1) }, 0);
    assert!(
        matches!(
            &out[..],
            [Decision::Start {
                fencing_token: 1,
                ..
            }]
        ),
        "{out:?}"
    );
    let out = fx.handle(&mut p, Event::StopRequested { job: jid(1) }, 1);
    assert!(matches!(
        &out[..],
        [Decision::Stop { node: Some(n), fencing_token: Some(1), .. }] if *n == id(1)
    ));
    assert_eq!(fx.job(1).state, JobState::Stopped);
    assert_eq!(
        fx.job(1).history[0].end_reason.as_deref(),
        Some("stopped by user")
    );
    for e in [
        Event::StopRequested { job: jid(1) },
        Event::Submitted { job: jid(7) },
    ] {
        assert!(matches!(
            &fx.handle(&mut p, e, 2)[..],
            [Decision::Ignore { .. }]
        ));
    }
}

/// One pool node, draining, and one job not placed yet.
fn one_draining_node_and_a_pending_job() -> Fx {
    let mut fx = pool(1, 0);
    fx.jobs = vec![job(1, spec(100, GIB, 0))];
    fx.node(&id(1)).draining = true;
    fx
}

#[test]
fn a_job_left_pending_by_a_drain_is_placed_when_the_drain_ends() {
    // The simulation found it: every node draining, a job pending "no node can take it", the
    // drain ended, and the job stayed pending (nothing reconciled the cluster again).
    let mut fx = one_draining_node_and_a_pending_job();
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, Event::Submitted { job: jid(1) }, 0);
    assert!(
        !out.iter().any(|d| matches!(d, Decision::Start { .. })),
        "{out:?}"
    );
    fx.node(&id(1)).draining = false;
    let out = fx.handle(&mut p, Event::NodeOpen { node: id(1) }, 10);
    assert!(
        matches!(&out[..], [Decision::Start { to, fencing_token: 1, .. }] if to.node == id(1)),
        "{out:?}"
    );
}

#[test]
fn a_node_open_event_overrides_nothing_a_draining_node_takes_no_job() {
    let mut fx = one_draining_node_and_a_pending_job();
    let mut p = Planner::new(LEASE);
    let out = fx.handle(&mut p, Event::NodeOpen { node: id(1) }, 10);
    assert!(
        !out.iter().any(|d| matches!(d, Decision::Start { .. })),
        "{out:?}"
    );
}

/// Found by a soak (seed 1545794): a node was removed after its lease ended, and another went
/// down within the lease after. The removed node was still counted among the wave ("2 of 3
/// ready nodes went down"), and since a removed node never returns, the hold never ended: the
/// jobs it held stayed `migrating`. A removed node leaves the guard's memory: the cluster has
/// two nodes now, and one down of two is not a wave.
#[test]
fn a_removed_node_leaves_the_guards_memory() {
    let mut fx = pool(3, 0);
    fx.jobs = vec![
        running(1, spec(1000, GIB, 0), 1, 2, &[]),
        running(3, spec(1000, GIB, 0), 3, 2, &[]),
    ];
    let mut p = Planner::new(LEASE);
    fx.handle(&mut p, down(3), 0);
    fx.nodes.retain(|n| n.id != id(3));
    fx.handle(&mut p, Event::NodeRemoved { node: id(3) }, 150);
    let out = fx.handle(&mut p, down(1), 640);
    assert!(
        !out.iter().any(|d| matches!(d, Decision::Hold { .. })),
        "one down of the two nodes left is not a wave: {out:?}"
    );
    assert!(p.holding(C).is_none());
    assert_eq!(fx.job(1).current.as_ref().unwrap().node, id(2), "{out:?}");
}

/// Found by a soak (seed 1545794): a node moved to another cluster while its jobs were still
/// on it went down, and the hold of its old cluster counted it (its jobs are held there). When
/// it came back, only the clusters it belongs to and holds jobs of were asked to resume; its
/// jobs had moved, so the old cluster's hold waited for it for ever.
#[test]
fn a_hold_counting_a_node_ends_when_that_node_returns_from_another_cluster() {
    let mut fx = pool(3, 0);
    fx.clusters.push(cluster("c-other", ClusterMode::Pool));
    fx.jobs = vec![
        running(1, spec(1000, GIB, 0), 1, 2, &[]),
        running(2, spec(1000, GIB, 0), 2, 2, &[]),
    ];
    let mut p = Planner::new(LEASE);
    fx.handle(&mut p, down(3), 0);
    let out = fx.handle(&mut p, down(1), 500);
    assert!(p.holding(C).is_some(), "{out:?}");
    fx.node(&id(2)).cluster = Some("c-other".into());
    fx.handle(&mut p, Event::NodeOpen { node: id(2) }, 2000);
    fx.handle(&mut p, down(2), 3000);
    assert!(p.holding(C).unwrap().down.contains(&id(2)));
    fx.handle(&mut p, up(1, &[(1, 2)]), 4000);
    assert!(p.holding(C).is_some(), "two of three are still down");
    // Node 2 returns and reports its copy fenced (its Hello's exits come first): the job is
    // placed again, so node 2 no longer holds anything of cluster C.
    let lost = Event::CopyLost {
        job: jid(2),
        node: id(2),
        fencing_token: 2,
        how: "fenced by its agent (lease lost)".into(),
    };
    fx.node(&id(2)).live = true;
    let out = p.handle_all(&fx.view(), &[lost, up(2, &[])], 5000);
    assert!(
        out.iter()
            .any(|d| matches!(d, Decision::Resume { cluster, .. } if cluster == C)),
        "{out:?}"
    );
    assert!(p.holding(C).is_none(), "{out:?}");
}
