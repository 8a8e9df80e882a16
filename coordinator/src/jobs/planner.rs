//! The failover planner: events in (a node went down or came back, a drain, a job started or
//! exited), [`Decision`]s out. Plain code: the caller passes a [`View`] of what it stores and
//! `now_ms`; nothing here reads a clock or a socket.
//!
//! # Level-triggered
//! After the event's own decisions (killing stale copies, a restart after an exit), the planner
//! reconciles the event's cluster: every job whose node is down is placed again, every job on a
//! draining node (or on a node moved to another cluster) is moved, every pending job that fits now is started. The same pass is
//! [`Planner::reconcile`], which the caller runs after a restart of the coordinator (it finishes
//! whatever failover the records show half done) and may run periodically. Decisions within one
//! call are applied to a working copy of the records as they are made, so two jobs from a dead
//! node never get the same GPU or the same last gap.
//!
//! # Why a node's jobs may be placed again
//! - `NodeDown`: the detector declared it down only after its lease plus `fence_grace` (see
//!   `crate::detector`), so the agent has fenced itself and every copy there is dead.
//! - `NodeUp` without the job in its report: the node says it holds no copy (the report must
//!   list every job it holds or has accepted a start for).
//!
//! Every new placement takes [`next_token`], above every token issued, and any report about
//! another token is an old copy: an exit is ignored, a start or a running copy is killed
//! ([`Decision::KillStale`]). A job's exit report therefore never restarts a job that already
//! runs elsewhere.
//!
//! # ha_pairs
//! The pairs are taken as given: the caller applies the pair planner's promotion
//! (`crate::cluster::pairing::on_node_down`) before calling [`Planner::handle`], so a failover
//! goes to the pair's new primary. The planner tries the job's own pair first (its own
//! reservation is there) and any other pair after. A job left on a pair's standby while the
//! primary is up (after a failback) is moved to the primary, stopping the old copy first.
//!
//! # The disruption guard
//! When more than half of a cluster's ready nodes go down within one lease ([`guard`]), the
//! likelier story is that the coordinator is the one cut off: failing over would move every job
//! onto the few nodes it can still see (or restart them all when the partition heals). So the
//! cluster's failover is held ([`Decision::Hold`]); jobs on down nodes keep their placement
//! (their copies are fenced, so nothing runs twice, but nothing is moved). It resumes
//! ([`Decision::Resume`]) when enough of those nodes come back that the rule no longer holds, or
//! when an operator forces it ([`Planner::force_failover`]). Nodes that went down earlier than
//! one lease before count as separate failures: their jobs have already moved. Pending jobs are
//! still started while a cluster is held: they have no copy anywhere to be confused with.
//!
//! The nodes of one wave are not declared down at the same instant (their deadlines differ by
//! up to a heartbeat), so the first of them alone never trips the rule. Hence the guard also
//! counts the cluster's *suspect* nodes — silent, not down yet — when a node goes down: if they
//! and the recent downs together would be more than half, failover waits (nothing is decided)
//! until each suspect either goes down too (then the wave is held) or beats again
//! ([`Event::Recovered`]; then failover goes on). A suspect is down within `lease + fence_grace`
//! of its last beat, so the wait is bounded by that.

use super::decision::Decision;
use super::fencing::next_token;
use super::model::{Exit, JobRecord, JobState};
use super::placement::NodeView;
use crate::model::{ClusterRecord, PairRecord};
use reports::{copy_lost, job_exited, job_started, on_up, stop};
use std::collections::{BTreeMap, BTreeSet};
use tandem_common::ids::NodeId;
use work::Work;

mod reports;
mod work;

/// The first restart waits this long.
pub const RESTART_BACKOFF_BASE_MS: u64 = 100;
/// No restart waits longer than this.
pub const RESTART_BACKOFF_MAX_MS: u64 = 10_000;

/// What the planner reads: the stored records (all clusters; each call only touches the
/// clusters its event is about).
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The clusters.
    pub clusters: &'a [ClusterRecord],
    /// The nodes ([`NodeView::from_record`]), removed ones left out: every node listed counts
    /// toward the disruption guard's share of its cluster.
    pub nodes: &'a [NodeView],
    /// The pairs, after any promotion the event caused.
    pub pairs: &'a [PairRecord],
    /// The jobs.
    pub jobs: &'a [JobRecord],
}

/// One job a node holds, as it reports it when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    /// The job's id.
    pub job: String,
    /// The token of its copy.
    pub fencing_token: u64,
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A job was created (or should be placed now): start it if it fits.
    Submitted {
        /// The job's id.
        job: String,
    },
    /// The detector declared `node` down.
    NodeDown {
        /// The node.
        node: NodeId,
    },
    /// `node` registered (again), holding `running`: every job it holds a copy of or has
    /// accepted a start for.
    NodeUp {
        /// The node.
        node: NodeId,
        /// What it holds.
        running: Vec<Reported>,
        /// Placements on it decided after its report was made (the exits it reported were
        /// decided first, and a restart may have come back to it): not in the report, and
        /// not lost either.
        placed_since: Vec<Reported>,
    },
    /// A node the operator removed is let go (its lease is over): its jobs are placed again as
    /// after a down, but the disruption guard does not count it, and a hold that counted it
    /// stops waiting for it. A removal is the operator's intent, not a sign that the
    /// coordinator is cut off; a hold waiting for a removed node to return waited for ever
    /// (the simulation found jobs stranded that way).
    NodeRemoved {
        /// The node.
        node: NodeId,
    },
    /// `node` was suspect and beats again (it never went down).
    Recovered {
        /// The node.
        node: NodeId,
    },
    /// `node` is being drained.
    Drain {
        /// The node.
        node: NodeId,
    },
    /// `node` may take work it could not take before: it is no longer draining, it was moved
    /// into its cluster, or it was made a pair's primary by hand. Its clusters are reconciled, so that jobs waiting for room are
    /// placed; the view says what it may take (nothing about it is overridden). Without it, a
    /// job left pending while every node was draining stayed pending after the drain ended
    /// (the simulation found it).
    NodeOpen {
        /// The node.
        node: NodeId,
    },
    /// The agent on `node` started `job` with `fencing_token`.
    JobStarted {
        /// The job's id.
        job: String,
        /// The node.
        node: NodeId,
        /// The copy's token.
        fencing_token: u64,
    },
    /// The copy of `job` with `fencing_token` on `node` ended.
    JobExited {
        /// The job's id.
        job: String,
        /// The node.
        node: NodeId,
        /// The copy's token.
        fencing_token: u64,
        /// How it ended.
        exit: Exit,
        /// Whether the job ended by itself (it ran and exited, or was killed by its own
        /// limits), as opposed to its start being refused before it ran. Only an end by the
        /// job itself can end a job whose move still waits for this copy: a refused start
        /// never ran, so the move goes on.
        by_the_job: bool,
    },
    /// The copy of `job` with `fencing_token` on `node` is gone, and not by the job's own
    /// doing: its agent fenced it (its lease ran out), its supervisor was signalled or died.
    /// The job did not end: it is placed again (not counted as a restart), like a job its node
    /// registered without.
    CopyLost {
        /// The job's id.
        job: String,
        /// The node.
        node: NodeId,
        /// The copy's token.
        fencing_token: u64,
        /// How it was lost, in words.
        how: String,
    },
    /// A user stops the job (`DELETE /v1/jobs/{id}`).
    StopRequested {
        /// The job's id.
        job: String,
    },
}

/// The disruption guard's rule: hold failover when more than half of the nodes that were
/// ready (`ready_before`) went down within one lease (`down_within_lease`).
pub fn guard(ready_before: usize, down_within_lease: usize) -> bool {
    down_within_lease * 2 > ready_before
}

/// How long to wait before restart number `attempt` (1 for the first): 100 ms, doubling, at
/// most 10 s. A job that crashes at once must not spin a core or flood the event log.
pub fn restart_backoff_ms(attempt: u32) -> u64 {
    let shift = attempt.saturating_sub(1).min(16);
    (RESTART_BACKOFF_BASE_MS << shift).min(RESTART_BACKOFF_MAX_MS)
}

/// A held cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// Since when (Unix ms).
    pub since_ms: u64,
    /// Ready nodes before the wave of failures.
    pub ready_before: usize,
    /// The nodes of the wave not back yet.
    pub down: BTreeSet<NodeId>,
    /// Why, as recorded.
    pub reason: String,
}

#[derive(Debug, Default)]
struct ClusterGuard {
    /// Recent downs: (when, node).
    recent: Vec<(u64, NodeId)>,
    holding: Option<Holding>,
}

/// The planner. Its only state is the disruption guard's memory of recent failures.
#[derive(Debug)]
pub struct Planner {
    lease_ms: u64,
    guards: BTreeMap<String, ClusterGuard>,
}

impl Planner {
    /// A planner whose guard window is `lease_ms`, the lease the detector grants.
    pub fn new(lease_ms: u64) -> Self {
        Self {
            lease_ms,
            guards: BTreeMap::new(),
        }
    }

    /// Whether failover in `cluster` is held, and why.
    pub fn holding(&self, cluster: &str) -> Option<&Holding> {
        self.guards.get(cluster).and_then(|g| g.holding.as_ref())
    }

    /// Handles one event at `now_ms`. The view is the state after the event; the event's own
    /// node counts as down (`NodeDown`), up (`NodeUp`) or draining (`Drain`) whatever the view
    /// says, so a slightly stale view cannot undo the event.
    pub fn handle(&mut self, view: &View, event: &Event, now_ms: u64) -> Vec<Decision> {
        self.handle_all(view, std::slice::from_ref(event), now_ms)
    }

    /// Handles several events at once: each is taken in, in order, and only then are their
    /// clusters reconciled. A node's report of several exits is one such batch: reconciled
    /// after the first, a drain moved the copies whose ends came next as if they still ran
    /// (the simulation found a `restart: never` job run again that way).
    pub fn handle_all(&mut self, view: &View, events: &[Event], now_ms: u64) -> Vec<Decision> {
        let mut w = Work::new(view, now_ms);
        let mut announce = None;
        let mut clusters = BTreeSet::new();
        for event in events {
            clusters.extend(self.take_in(&mut w, event, &mut announce));
        }
        for c in &clusters {
            self.reconcile_cluster(&mut w, c, announce.as_ref(), false);
        }
        w.out
    }

    /// One event's own decisions; returns the clusters to reconcile after it.
    fn take_in(
        &mut self,
        w: &mut Work,
        event: &Event,
        announce: &mut Option<NodeId>,
    ) -> BTreeSet<String> {
        match event {
            Event::NodeDown { node } => {
                w.set_node(node, |n| {
                    n.live = false;
                    n.suspect = false;
                });
                let cs = w.clusters_of(node);
                for c in &cs {
                    self.on_down(w, c, node);
                }
                cs
            }
            Event::NodeRemoved { node } => {
                w.set_node(node, |n| {
                    n.live = false;
                    n.suspect = false;
                });
                // A node removed while it was down is no longer in the view: the holds that
                // count it are found by it.
                let mut cs = w.clusters_of(node);
                cs.extend(self.holds_counting(node));
                for c in &cs {
                    self.maybe_resume(w, c, node, "was removed");
                }
                cs
            }
            Event::NodeUp {
                node,
                running,
                placed_since,
            } => {
                w.set_node(node, |n| {
                    n.live = true;
                    n.suspect = false;
                });
                // Every hold that counts the node, not only those of the clusters it belongs
                // to or holds jobs of: a node moved away whose jobs have moved on (its Hello's
                // exits come first) still counts in its old cluster's hold (seed 1545794).
                let mut cs = w.clusters_of(node);
                cs.extend(self.holds_counting(node));
                on_up(w, node, running, placed_since);
                for c in &cs {
                    self.maybe_resume(w, c, node, "is back");
                }
                cs
            }
            Event::Recovered { node } => {
                w.set_node(node, |n| n.suspect = false);
                w.clusters_of(node)
            }
            Event::Drain { node } => {
                w.set_node(node, |n| n.draining = true);
                *announce = Some(node.clone());
                w.clusters_of(node)
            }
            Event::NodeOpen { node } => {
                // A node moved out of a cluster whose hold waits for it to return is, for that
                // cluster, as good as removed: it never returns there. Before, the hold waited
                // for ever, and the jobs of the node it held stayed `migrating` (found by a
                // soak, seed 479960).
                let mut cs = w.clusters_of(node);
                let now_in = w.node(node).and_then(|n| n.cluster.clone());
                let left: BTreeSet<String> = self
                    .holds_counting(node)
                    .into_iter()
                    .filter(|c| now_in.as_ref() != Some(c))
                    .collect();
                for c in &left {
                    self.maybe_resume(w, c, node, "moved to another cluster");
                }
                cs.extend(left);
                cs
            }
            Event::JobStarted {
                job,
                node,
                fencing_token,
            } => job_started(w, job, node, *fencing_token),
            Event::JobExited {
                job,
                node,
                fencing_token,
                exit,
                by_the_job,
            } => job_exited(w, job, node, *fencing_token, *exit, *by_the_job),
            Event::CopyLost {
                job,
                node,
                fencing_token,
                how,
            } => copy_lost(w, job, node, *fencing_token, how),
            Event::Submitted { job } => match w.job(job) {
                Some(j) => BTreeSet::from([j.spec.cluster]),
                None => {
                    w.push(Decision::Ignore {
                        job: Some(job.clone()),
                        reason: format!("job {job} does not exist"),
                    });
                    BTreeSet::new()
                }
            },
            Event::StopRequested { job } => stop(w, job),
        }
    }

    /// Reconciles every cluster: what `handle` does after an event, for all of them. Run it
    /// after the coordinator starts (past the detector's restart grace). Without the guard's
    /// memory of when nodes went down, it holds a cluster whose jobs wait on down nodes when
    /// more than half of its nodes are down now.
    pub fn reconcile(&mut self, view: &View, now_ms: u64) -> Vec<Decision> {
        let mut w = Work::new(view, now_ms);
        let mut clusters: BTreeSet<String> = view.clusters.iter().map(|c| c.id.clone()).collect();
        clusters.extend(view.jobs.iter().map(|j| j.spec.cluster.clone()));
        for c in &clusters {
            if self.holding(c).is_none() {
                self.hold_if_mostly_down(&mut w, c);
            }
            self.reconcile_cluster(&mut w, c, None, false);
        }
        w.out
    }

    /// An operator forces failover in `cluster` (`POST /v1/clusters/{id}/failover`): the hold
    /// ends and every job on a down node is placed again.
    pub fn force_failover(&mut self, view: &View, cluster: &str, now_ms: u64) -> Vec<Decision> {
        let mut w = Work::new(view, now_ms);
        if let Some(g) = self.guards.get_mut(cluster) {
            g.recent.clear();
            if g.holding.take().is_some() {
                w.push(Decision::Resume {
                    cluster: cluster.to_string(),
                    reason: format!(
                        "failover in cluster {} forced by an operator",
                        w.cluster_name(cluster)
                    ),
                });
            }
        }
        self.reconcile_cluster(&mut w, cluster, None, true);
        w.out
    }

    /// Whether failover in `cluster` should wait: its suspect nodes, counted as going down with
    /// the nodes that went down within the last lease, would trip the guard.
    fn wave_pending(&self, w: &Work, cluster: &str) -> Option<String> {
        let members: Vec<&NodeView> = w
            .nodes
            .iter()
            .filter(|n| n.cluster.as_deref() == Some(cluster))
            .collect();
        let suspects: Vec<String> = members
            .iter()
            .filter(|n| n.live && n.suspect)
            .map(|n| n.name.clone())
            .collect();
        if suspects.is_empty() {
            return None;
        }
        let live = members.iter().filter(|n| n.live).count();
        let down = self.guards.get(cluster).map_or(0, |g| {
            g.recent
                .iter()
                .filter(|(t, n)| w.now_ms.saturating_sub(*t) <= self.lease_ms && w.down_member(n))
                .count()
        });
        (down > 0 && guard(live + down, down + suspects.len())).then(|| {
            format!(
                "failover in cluster {} waits: {down} node(s) went down within one lease and {}                  (of {} ready) are silent; if they go down too, more than half are gone",
                w.cluster_name(cluster),
                suspects.join(", "),
                live + down
            )
        })
    }

    fn on_down(&mut self, w: &mut Work, cluster: &str, node: &NodeId) {
        let (now, lease) = (w.now_ms, self.lease_ms);
        let g = self.guards.entry(cluster.to_string()).or_default();
        g.recent
            .retain(|(t, n)| now.saturating_sub(*t) <= lease && n != node && w.down_member(n));
        g.recent.push((now, node.clone()));
        if let Some(h) = &mut g.holding {
            h.down.insert(node.clone());
            let jobs: Vec<String> = w.on_node(node).into_iter().map(|j| j.id).collect();
            if !jobs.is_empty() {
                let reason = h.reason.clone();
                w.push(Decision::Hold {
                    cluster: cluster.to_string(),
                    jobs,
                    reason,
                });
            }
            return;
        }
        let live = w
            .nodes
            .iter()
            .filter(|n| n.cluster.as_deref() == Some(cluster) && n.live)
            .count();
        let down = g.recent.len();
        if !guard(live + down, down) {
            return;
        }
        let names: Vec<String> = g.recent.iter().map(|(_, n)| w.name(n)).collect();
        let set = g.recent.iter().map(|(_, n)| n.clone()).collect();
        let reason = format!(
            "failover paused in cluster {}: {down} of {} ready nodes went down within one lease \
             ({lease} ms): {}; when more than half go at once the coordinator is the likelier \
             one to be cut off. It resumes when enough of them return, or when an operator \
             forces it (POST /v1/clusters/{cluster}/failover)",
            w.cluster_name(cluster),
            live + down,
            names.join(", ")
        );
        self.start_hold(w, cluster, live + down, set, reason);
    }

    fn hold_if_mostly_down(&mut self, w: &mut Work, cluster: &str) {
        let members: Vec<&NodeView> = w
            .nodes
            .iter()
            .filter(|n| n.cluster.as_deref() == Some(cluster))
            .collect();
        let down: BTreeSet<NodeId> = members
            .iter()
            .filter(|n| !n.live)
            .map(|n| n.id.clone())
            .collect();
        let stranded = w.active(cluster).iter().any(|id| {
            w.jobs
                .iter()
                .any(|j| &j.id == id && j.node().is_some_and(|n| down.contains(n)))
        });
        if !stranded || !guard(members.len(), down.len()) {
            return;
        }
        let reason = format!(
            "failover paused in cluster {}: {} of its {} nodes are down and jobs wait on them; \
             when more than half are gone the coordinator is the likelier one to be cut off. It \
             resumes when enough of them return, or when an operator forces it \
             (POST /v1/clusters/{cluster}/failover)",
            w.cluster_name(cluster),
            down.len(),
            members.len()
        );
        self.start_hold(w, cluster, members.len(), down, reason);
    }

    fn start_hold(
        &mut self,
        w: &mut Work,
        cluster: &str,
        ready_before: usize,
        down: BTreeSet<NodeId>,
        reason: String,
    ) {
        let jobs: Vec<String> = w
            .active(cluster)
            .into_iter()
            .filter(|id| {
                w.jobs
                    .iter()
                    .any(|j| &j.id == id && j.node().is_some_and(|n| !w.live(n)))
            })
            .collect();
        self.guards.entry(cluster.to_string()).or_default().holding = Some(Holding {
            since_ms: w.now_ms,
            ready_before,
            down,
            reason: reason.clone(),
        });
        w.push(Decision::Hold {
            cluster: cluster.to_string(),
            jobs,
            reason,
        });
    }

    /// The clusters whose hold counts `node` among the nodes that went down.
    fn holds_counting(&self, node: &NodeId) -> BTreeSet<String> {
        self.guards
            .iter()
            .filter(|(_, g)| g.holding.as_ref().is_some_and(|h| h.down.contains(node)))
            .map(|(c, _)| c.clone())
            .collect()
    }

    fn maybe_resume(&mut self, w: &mut Work, cluster: &str, node: &NodeId, what: &str) {
        let Some(g) = self.guards.get_mut(cluster) else {
            return;
        };
        let Some(h) = &mut g.holding else { return };
        h.down.remove(node);
        let still = h.down.iter().filter(|n| w.down_member(n)).count();
        if guard(h.ready_before, still) {
            return;
        }
        let reason = format!(
            "failover in cluster {} resumes: {} {what}, {still} of {} nodes are still down",
            w.cluster_name(cluster),
            w.name(node),
            h.ready_before
        );
        g.holding = None;
        g.recent.clear();
        w.push(Decision::Resume {
            cluster: cluster.to_string(),
            reason,
        });
    }

    /// The level-triggered pass over one cluster: failover, moves, pending jobs, in that order
    /// (running work first).
    fn reconcile_cluster(
        &mut self,
        w: &mut Work,
        cluster: &str,
        announce: Option<&NodeId>,
        forced: bool,
    ) {
        let held = self.holding(cluster).is_some();
        let waits = if held || forced {
            None
        } else {
            self.wave_pending(w, cluster)
        };
        let ids = w.active(cluster);
        for id in &ids {
            let Some(job) = w.job(id) else { continue };
            let Some(from) = job.node().cloned() else {
                continue;
            };
            if held || w.live(&from) {
                continue;
            }
            if let Some(reason) = &waits {
                w.push(Decision::Ignore {
                    job: Some(job.id.clone()),
                    reason: reason.clone(),
                });
                continue;
            }
            let down = w.name(&from);
            let d = match w.choose(&job, Some(&from)) {
                Ok(to) => Decision::Replace {
                    job: job.id.clone(),
                    from,
                    reason: format!("{down} is down; {} now runs on {}", job.id, w.describe(&to)),
                    fencing_token: next_token(&job),
                    to,
                    end_reason: "node down".into(),
                },
                Err(e) => Decision::Pending {
                    job: job.id.clone(),
                    end_reason: Some("node down".into()),
                    reason: format!("{down} is down and the job fits nowhere else: {e}"),
                },
            };
            w.push(d);
        }
        for id in &ids {
            let Some(job) = w.job(id) else { continue };
            let Some(p) = job.current.clone() else {
                continue;
            };
            let Some(n) = w.node(&p.node).cloned() else {
                continue;
            };
            if !n.live {
                continue;
            }
            let (end_reason, why) = if n.draining {
                ("drained", format!("{} is draining", n.name))
            } else if n.cluster.as_deref() != Some(cluster) {
                // An operator moved the node to another cluster (`nodes move`): its jobs of
                // this one leave it as from a draining node, the old copy stopped first. Found
                // on every reconciliation, so a move survives a coordinator restart and a job
                // that fit nowhere at first moves once it does.
                (
                    "node moved to another cluster",
                    format!(
                        "{} is no longer in cluster {}",
                        n.name,
                        w.cluster_name(cluster)
                    ),
                )
            } else if let Some(pair) = w.pairs.iter().find(|x| {
                x.standby == n.id && w.node(&x.primary).is_some_and(|pr| pr.live && !pr.draining)
            }) {
                (
                    "moved to its pair's primary",
                    format!(
                        "{} is the standby of its pair; {} is the primary",
                        n.name,
                        w.name(&pair.primary)
                    ),
                )
            } else {
                continue;
            };
            match w.choose(&job, Some(&p.node)) {
                Ok(to) if to.node != p.node => {
                    let reason = format!(
                        "{why}: {} moves to {}, stopping the old copy first",
                        job.id,
                        w.describe(&to)
                    );
                    w.push(Decision::Move {
                        job: job.id.clone(),
                        from: p.node.clone(),
                        old_token: p.fencing_token,
                        fencing_token: next_token(&job),
                        to,
                        stop_old_first: true,
                        end_reason: end_reason.into(),
                        reason,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    if announce == Some(&p.node) {
                        w.push(Decision::Keep {
                            job: job.id.clone(),
                            reason: format!(
                                "{why}, but {} fits nowhere else and keeps running there: {e}",
                                job.id
                            ),
                        });
                    }
                }
            }
        }
        for id in &ids {
            let Some(job) = w.job(id) else { continue };
            if job.current.is_some() || job.state != JobState::Pending {
                continue;
            }
            // A job made pending earlier in this call is tried again too: what held it back
            // then (another job's placement or reservation, a hold since resumed) may be gone
            // now. Its reason is fresh, so a second failure adds no second `Pending`.
            let fresh = w.pended.contains(id);
            match w.choose(&job, None) {
                Ok(to) => {
                    let reason = format!("placed on {}", w.describe(&to));
                    w.push(Decision::Start {
                        job: job.id.clone(),
                        fencing_token: next_token(&job),
                        to,
                        reason,
                    });
                }
                Err(e) if !fresh && e.reason != job.state_reason => w.push(Decision::Pending {
                    job: job.id.clone(),
                    end_reason: None,
                    reason: e.reason,
                }),
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod prop;
#[cfg(test)]
mod tests;
