//! The planner against a model of the world: random node failures, returns, reconnects, drains,
//! exits, replayed old reports and stops, in `pool` and `ha_pairs` clusters (pairs promoted by
//! the real pair planner). The model plays each decision the way the shell must (see
//! `decision`): a node that goes down kills its copies first (the agent fences itself), a move
//! stops the old copy before starting the new one, a start reaches a live node at once.
//!
//! After every event's decisions it checks:
//! - every live copy of a job is the job's current placement: so never two copies, and no
//!   copy the records do not know about;
//! - a new copy starts only when no other copy of the job is alive;
//! - every token issued for a job is above all its earlier ones;
//! - every job not over has a placement, or is `pending` with a reason;
//! - a job whose node is down is there only while its cluster's failover is held;
//! - a job placed on a live node runs there; GPUs are never shared;
//! - a pending job fits nowhere (it would have been started).

use super::*;
use crate::cluster::capacity::{Held, GIB};
use crate::cluster::pairing::{self, PairDecision, PairNode};
use crate::jobs::model::Exit;
use crate::jobs::model::RestartPolicy;
use crate::jobs::placement::{held_by_jobs, place};
use crate::jobs::testkit::*;
use crate::model::ClusterMode;
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Clone, Debug)]
enum Ev {
    Down(u8),
    /// A node declared down registers again; with `Some(j)` it (wrongly) still holds an old
    /// copy of job `j`.
    Up(u8, Option<u8>),
    /// A live node reconnects and reports what it runs.
    Reconnect(u8),
    Drain(u8),
    Undrain(u8),
    /// A real exit of job `j`'s copy with `code`.
    Exit(u8, i32),
    /// A replayed exit report of an old copy of job `j`.
    StaleExit(u8),
    Started(u8),
    Stop(u8),
    Force,
    Wait(u64),
}

fn ev(nodes: u8, jobs: u8) -> impl Strategy<Value = Ev> {
    let n = 1..=nodes;
    let j = 1..=jobs;
    prop_oneof![
        4 => n.clone().prop_map(Ev::Down),
        4 => (n.clone(), proptest::option::weighted(0.3, j.clone())).prop_map(|(n, z)| Ev::Up(n, z)),
        1 => n.clone().prop_map(Ev::Reconnect),
        2 => n.clone().prop_map(Ev::Drain),
        1 => n.prop_map(Ev::Undrain),
        3 => (j.clone(), 0..3i32).prop_map(|(j, c)| Ev::Exit(j, c)),
        2 => j.clone().prop_map(Ev::StaleExit),
        2 => j.clone().prop_map(Ev::Started),
        1 => j.prop_map(Ev::Stop),
        1 => Just(Ev::Force),
        2 => (0..2500u64).prop_map(Ev::Wait),
    ]
}

#[derive(Clone, Debug)]
struct Setup {
    ha: bool,
    failback: bool,
    nodes: Vec<(u32, u64, usize)>,
    jobs: Vec<(u64, u64, u32, u8, u32)>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec((2u32..=8, 2u64..=16, 0usize..=2), 3..=6),
        proptest::collection::vec((250u64..=3000, 1u64..=4, 0u32..=1, 0u8..3, 0u32..=3), 1..=8),
    )
        .prop_map(|(ha, failback, nodes, jobs)| Setup {
            ha,
            failback,
            nodes,
            jobs,
        })
}

struct World {
    clusters: Vec<ClusterRecord>,
    nodes: Vec<NodeView>,
    pairs: Vec<PairRecord>,
    jobs: Vec<JobRecord>,
    planner: Planner,
    now: u64,
    pair_seq: u32,
    /// (job, node, token) -> GPUs: what really runs.
    copies: BTreeMap<(String, NodeId, u64), Vec<String>>,
    /// Every token issued per job, in order, with its node.
    issued: BTreeMap<String, Vec<(u64, NodeId)>>,
}

impl World {
    fn new(s: &Setup) -> Self {
        let mode = if s.ha {
            ClusterMode::HaPairs
        } else {
            ClusterMode::Pool
        };
        let mut c = cluster(C, mode);
        c.failback = s.failback;
        let nodes = s
            .nodes
            .iter()
            .enumerate()
            .map(|(i, &(cores, gib, gpus))| node(i as u8 + 1, C, cores, gib, gpus))
            .collect();
        let jobs = s
            .jobs
            .iter()
            .enumerate()
            .map(|(i, &(cpu, gib, gpus, policy, max))| {
                let mut sp = spec(cpu, gib * GIB / 4, gpus);
                sp.restart = [
                    RestartPolicy::OnFailure,
                    RestartPolicy::Always,
                    RestartPolicy::Never,
                ][policy as usize];
                sp.max_restarts = max;
                job(i as u32 + 1, sp)
            })
            .collect();
        let mut w = Self {
            clusters: vec![c],
            nodes,
            pairs: vec![],
            jobs,
            planner: Planner::new(1000),
            now: 1_000,
            pair_seq: 0,
            copies: BTreeMap::new(),
            issued: BTreeMap::new(),
        };
        w.pair_up();
        w
    }

    /// Calls the planner with a view of the records.
    fn run(&mut self, f: impl FnOnce(&mut Planner, &View, u64) -> Vec<Decision>) -> Vec<Decision> {
        let view = View {
            clusters: &self.clusters,
            nodes: &self.nodes,
            pairs: &self.pairs,
            jobs: &self.jobs,
        };
        f(&mut self.planner, &view, self.now)
    }

    fn node(&mut self, n: u8) -> Option<&mut NodeView> {
        self.nodes.iter_mut().find(|x| x.id == id(n))
    }

    fn pair_nodes(&self) -> Vec<PairNode> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| PairNode {
                id: n.id.clone(),
                model: "M".into(),
                live: n.live,
                created_ms: i as u64,
            })
            .collect()
    }

    fn apply_pairs(&mut self, ds: Vec<PairDecision>) {
        for d in ds {
            if let PairDecision::Form {
                primary, standby, ..
            } = &d
            {
                self.pair_seq += 1;
                let mut p = pair(&format!("p-{}", self.pair_seq), C, 1, 1);
                p.primary = primary.clone();
                p.standby = standby.clone();
                self.pairs.push(p);
            } else {
                assert!(d.apply(&mut self.pairs), "{d:?}");
            }
        }
    }

    fn pair_up(&mut self) {
        if self.clusters[0].mode == ClusterMode::HaPairs {
            let ds = pairing::auto_pair_decisions(&self.pair_nodes(), &self.pairs);
            self.apply_pairs(ds);
        }
    }

    /// Runs one event through the pair planner (ha_pairs), then the job planner, and plays
    /// the decisions.
    fn step(&mut self, e: &Ev) -> Result<(), TestCaseError> {
        self.now += 50;
        let ha = self.clusters[0].mode == ClusterMode::HaPairs;
        let event = match *e {
            Ev::Down(n) => {
                let Some(v) = self.node(n).filter(|v| v.live) else {
                    return Ok(());
                };
                v.live = false;
                // The agent's lease ran out before the detector said down: its copies are dead.
                self.copies.retain(|(_, node, _), _| *node != id(n));
                if ha {
                    let ds =
                        pairing::on_node_down(&self.pair_nodes(), &self.pairs, &id(n), self.now);
                    self.apply_pairs(ds);
                    self.pair_up();
                }
                Event::NodeDown { node: id(n) }
            }
            Ev::Up(n, zombie) => {
                let Some(v) = self.node(n).filter(|v| !v.live) else {
                    return Ok(());
                };
                v.live = true;
                if ha {
                    let fb = self.clusters[0].failback;
                    let ds =
                        pairing::on_node_up(&self.pair_nodes(), &self.pairs, &id(n), fb, self.now);
                    self.apply_pairs(ds);
                    self.pair_up();
                }
                if let Some(j) = zombie {
                    let jid = format!("j-{:012x}", j);
                    let current = self
                        .jobs
                        .iter()
                        .find(|r| r.id == jid)
                        .and_then(|r| r.fencing_token());
                    let old = self
                        .issued
                        .get(&jid)
                        .and_then(|ts| ts.iter().map(|(t, _)| *t).find(|t| Some(*t) != current));
                    if let Some(t) = old {
                        self.copies.insert((jid, id(n), t), vec![]);
                    }
                }
                Event::NodeUp {
                    node: id(n),
                    running: self.reported(n),
                    placed_since: Vec::new(),
                }
            }
            Ev::Reconnect(n) => {
                if !self.node(n).is_some_and(|v| v.live) {
                    return Ok(());
                }
                Event::NodeUp {
                    node: id(n),
                    running: self.reported(n),
                    placed_since: Vec::new(),
                }
            }
            Ev::Drain(n) => {
                let Some(v) = self.node(n).filter(|v| v.live && !v.draining) else {
                    return Ok(());
                };
                v.draining = true;
                Event::Drain { node: id(n) }
            }
            Ev::Undrain(n) => {
                if let Some(v) = self.node(n) {
                    v.draining = false;
                }
                let out = self.run(|p, v, now| p.reconcile(v, now));
                return self.play(out);
            }
            Ev::Exit(j, code) => {
                let jid = format!("j-{j:012x}");
                let Some((key, _)) = self.copies.iter().find(|((k, _, _), _)| *k == jid) else {
                    return Ok(());
                };
                let key = key.clone();
                self.copies.remove(&key);
                Event::JobExited {
                    job: jid,
                    node: key.1,
                    fencing_token: key.2,
                    exit: Exit::Code(code),
                    by_the_job: true,
                }
            }
            Ev::StaleExit(j) => {
                let jid = format!("j-{j:012x}");
                let current = self
                    .jobs
                    .iter()
                    .find(|r| r.id == jid)
                    .and_then(|r| r.fencing_token());
                let Some((t, node)) = self
                    .issued
                    .get(&jid)
                    .and_then(|ts| ts.iter().find(|(t, _)| Some(*t) != current).cloned())
                else {
                    return Ok(());
                };
                Event::JobExited {
                    job: jid,
                    node,
                    fencing_token: t,
                    exit: Exit::Code(1),
                    by_the_job: true,
                }
            }
            Ev::Started(j) => {
                let jid = format!("j-{j:012x}");
                let Some(((_, node, t), _)) = self.copies.iter().find(|((k, _, _), _)| *k == jid)
                else {
                    return Ok(());
                };
                Event::JobStarted {
                    job: jid,
                    node: node.clone(),
                    fencing_token: *t,
                }
            }
            Ev::Stop(j) => Event::StopRequested {
                job: format!("j-{j:012x}"),
            },
            Ev::Force => {
                let out = self.run(|p, v, now| p.force_failover(v, C, now));
                return self.play(out);
            }
            Ev::Wait(ms) => {
                self.now += ms;
                return Ok(());
            }
        };
        let out = self.run(|p, v, now| p.handle(v, &event, now));
        self.play(out)
    }

    fn reported(&self, n: u8) -> Vec<Reported> {
        self.copies
            .keys()
            .filter(|(_, node, _)| *node == id(n))
            .map(|(job, _, t)| Reported {
                job: job.clone(),
                fencing_token: *t,
            })
            .collect()
    }

    /// Plays decisions the way the shell must, checking each as it goes.
    fn play(&mut self, out: Vec<Decision>) -> Result<(), TestCaseError> {
        // Nodes a move's old copy left (its wait is over): their room is free now, and the
        // runtime tells the planner so (`NodeOpen`), as it does after a real copy's end.
        let mut left: Vec<NodeId> = Vec::new();
        for d in out {
            let applied = d.apply(&mut self.jobs, self.now);
            match &d {
                Decision::Start { .. }
                | Decision::Replace { .. }
                | Decision::Move { .. }
                | Decision::Restart { .. } => {
                    prop_assert!(applied, "did not apply: {:?}", d);
                    let job = d.job().unwrap().to_string();
                    let (to, token) = d.placement().unwrap();
                    let seen = self.issued.entry(job.clone()).or_default();
                    prop_assert!(
                        seen.iter().all(|(t, _)| token > *t),
                        "token {} not above {:?}",
                        token,
                        seen
                    );
                    seen.push((token, to.node.clone()));
                    let v = self.nodes.iter().find(|n| n.id == to.node).unwrap();
                    prop_assert!(v.live && !v.draining, "placed on {:?}", v);
                    if let Decision::Move {
                        from,
                        old_token,
                        stop_old_first,
                        ..
                    } = &d
                    {
                        prop_assert!(*stop_old_first);
                        self.copies.remove(&(job.clone(), from.clone(), *old_token));
                        // The model stops the old copy at once, so the runtime's wait for
                        // its end is over at once too (the runtime clears it durably).
                        if let Some(p) = self
                            .jobs
                            .iter_mut()
                            .find(|r| r.id == job)
                            .and_then(|r| r.current.as_mut())
                        {
                            if p.after.take().is_some() {
                                left.push(from.clone());
                            }
                        }
                    }
                    let others: Vec<_> = self.copies.keys().filter(|(k, _, _)| *k == job).collect();
                    prop_assert!(others.is_empty(), "{} starts while {:?} run", job, others);
                    self.copies
                        .insert((job, to.node.clone(), token), to.gpus.clone());
                }
                Decision::KillStale {
                    node,
                    job,
                    fencing_token,
                    ..
                } => {
                    let j = self.jobs.iter().find(|r| &r.id == job);
                    prop_assert!(
                        j.is_none_or(
                            |j| j.node() != Some(node) || j.fencing_token() != Some(*fencing_token)
                        ),
                        "killed the current copy: {:?}",
                        d
                    );
                    self.copies
                        .remove(&(job.clone(), node.clone(), *fencing_token));
                }
                Decision::Stop {
                    job,
                    node,
                    fencing_token,
                    ..
                } => {
                    prop_assert!(applied);
                    if let (Some(n), Some(t)) = (node, fencing_token) {
                        self.copies.remove(&(job.clone(), n.clone(), *t));
                    }
                }
                Decision::Started { .. }
                | Decision::Pending { .. }
                | Decision::Failed { .. }
                | Decision::Completed { .. } => prop_assert!(applied, "did not apply: {:?}", d),
                Decision::Hold { .. }
                | Decision::Resume { .. }
                | Decision::Keep { .. }
                | Decision::Ignore { .. } => {}
            }
        }
        left.sort();
        left.dedup();
        for node in left {
            if self.nodes.iter().any(|n| n.id == node && n.live) {
                let open = Event::NodeOpen { node };
                let out = self.run(|p, v, now| p.handle(v, &open, now));
                self.play(out)?;
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for (job, node, token) in self.copies.keys() {
            let j = self.jobs.iter().find(|r| &r.id == job).unwrap();
            prop_assert!(
                j.node() == Some(node) && j.fencing_token() == Some(*token),
                "a copy of {} with token {} runs on {} but the job is at {:?}",
                job,
                token,
                node,
                j.current
            );
        }
        let holding = self.planner.holding(C).is_some();
        for j in self.jobs.iter().filter(|j| !j.state.is_terminal()) {
            match &j.current {
                None => prop_assert!(
                    j.state == JobState::Pending && !j.state_reason.is_empty(),
                    "{} has no placement and no reason: {:?}",
                    j.id,
                    j
                ),
                Some(p) => {
                    let live = self.nodes.iter().any(|n| n.id == p.node && n.live);
                    prop_assert!(live || holding, "{} left on down {}", j.id, p.node);
                    if live {
                        prop_assert!(
                            self.copies.contains_key(&(
                                j.id.clone(),
                                p.node.clone(),
                                p.fencing_token
                            )),
                            "{} is placed on live {} but does not run",
                            j.id,
                            p.node
                        );
                    }
                }
            }
            if j.state == JobState::Pending {
                let others = self.jobs.iter().filter(|o| o.id != j.id);
                let held: HashMap<NodeId, Held> = held_by_jobs(others, &self.pairs, &self.nodes);
                prop_assert!(
                    place(j, &self.clusters[0], &self.nodes, &self.pairs, &held).is_err(),
                    "{} is pending but fits",
                    j.id
                );
            }
        }
        let mut gpus_in_use: BTreeSet<(&NodeId, &String)> = BTreeSet::new();
        for ((_, node, _), gpus) in &self.copies {
            let v = self.nodes.iter().find(|n| &n.id == node).unwrap();
            for g in gpus {
                prop_assert!(v.gpus.contains(g), "{} is not a GPU of {}", g, node);
                prop_assert!(
                    gpus_in_use.insert((node, g)),
                    "{} on {} given twice",
                    g,
                    node
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn never_two_copies_never_a_lost_job(
        s in setup(),
        events in proptest::collection::vec(ev(6, 8), 1..60),
    ) {
        let mut w = World::new(&s);
        let ids: Vec<String> = w.jobs.iter().map(|j| j.id.clone()).collect();
        for job in ids {
            let out = w.run(|p, v, now| p.handle(v, &Event::Submitted { job }, now));
            w.play(out)?;
        }
        for e in &events {
            w.step(e)?;
        }
    }
}
