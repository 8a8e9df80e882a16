//! Placement: which node a job runs on, which GPUs it gets, and which standby keeps room for it.
//!
//! [`place`] is a pure function of the job, its cluster, a view of the cluster's nodes
//! ([`NodeView`]), the cluster's pairs and what is already held on each node ([`Held`], the
//! same type the cluster's capacity is computed from, so that placement and the capacity the
//! API shows can never disagree). [`held_by_jobs`] computes that map from the job records.
//!
//! # What a node must offer
//! In this order (the first check that fails is the reason given for the node):
//! 1. **live**: `Ready` or `Suspect` ([`crate::cluster::is_live`]);
//! 2. **not draining**;
//! 3. **taints**: every `no_schedule` taint tolerated by the job;
//! 4. **labels**: every `constraints.labels` entry is a label of the node with the same value;
//! 5. **room**: free millicores, free memory and free whole GPUs. Free is total minus held, as
//!    in [`crate::cluster::capacity`]. A GPU is free when it is usable (not `unhealthy`) and no
//!    job holds or reserves it; the job gets specific UUIDs, the lowest NVML indexes first,
//!    never a GPU another job has.
//!
//! # `pool`: the node with the most room left
//! Among the nodes that pass, the highest score wins. The score is, compared in order, the
//! node's free CU *after* the job is placed (1 CU = 1 core + 4 GiB, the unit the console
//! shows), then its free millicores after, then its free memory after; the lowest node id
//! breaks the last tie so that the choice is deterministic. Spreading by what is left (not by
//! the node's size) keeps the largest gaps open for large jobs and spreads failures: the jobs
//! of a dead node do not all land on one survivor.
//!
//! # `ha_pairs`: a pair's primary, with room kept on its standby
//! A job runs on a pair's *runner*, the primary — or the standby when the primary is down or
//! draining and the pair has not been promoted yet (the pairs are taken as given; a stale view
//! cannot send a job to a dead node). Unpaired nodes take no work: they could not fail over.
//! The other member, when it is live and not draining, must pass the same checks for the job
//! (taints, labels, room counted with the reservations it already keeps): that is the
//! **reservation**, returned as [`Choice::reserve_on`]. It is not stored with the job:
//! [`held_by_jobs`] derives it from the pairs, so it follows promotions by itself (after a
//! failover the reservation is on the new standby, and on nobody while that one is down).
//! A pair that can keep the reservation is preferred to one that cannot (a degraded pair);
//! among equals, the runner's pool score decides. A job still goes to a degraded pair when no
//! healthy pair has room: running unprotected beats not running, and the reservation comes
//! back with the standby.
//!
//! # When nothing fits
//! [`Unplaceable`] says why for each node (or pair), closest candidates first, e.g.
//! `no live node has 2 free GPUs: gpu-1 has 1, gpu-2 has 0`.

use super::model::{JobRecord, JobSpec};
use crate::cluster::capacity::{node_cu, Held};
use crate::model::{ClusterMode, ClusterRecord, NodeRecord, PairRecord, Taint, TaintEffect};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use tandem_common::hardware::HealthState;
use tandem_common::ids::NodeId;

/// How many nodes an [`Unplaceable`] reason lists before "and N more".
pub const REASON_NODES_MAX: usize = 8;

/// What placement needs to know about one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The node.
    pub id: NodeId,
    /// Its name, for reasons.
    pub name: String,
    /// Its cluster's id; nodes of other clusters are skipped.
    pub cluster: Option<String>,
    /// `Ready` or `Suspect`.
    pub live: bool,
    /// `Suspect`: silent for a few beats, not down (yet). The disruption guard counts it as
    /// possibly going down with a node that just went down.
    pub suspect: bool,
    /// Being drained: no new work.
    pub draining: bool,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its taints.
    pub taints: Vec<Taint>,
    /// Logical cores.
    pub cores: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// The UUIDs of its usable GPUs (not `unhealthy`), in NVML index order.
    pub gpus: Vec<String>,
    /// Whether its agent can run a job as the user and group the job names: its session
    /// speaks protocol [`LIMITS_PROTOCOL_VERSION`](tandem_common::proto::LIMITS_PROTOCOL_VERSION)
    /// or later. An older agent knows no job users and would run such a job as itself (root),
    /// so it gets only jobs that name none. True where no session says otherwise.
    pub named_users: bool,
}

impl NodeView {
    /// The view of a stored node.
    pub fn from_record(n: &NodeRecord) -> Self {
        let mut gpus: Vec<_> = n
            .hardware
            .gpus
            .iter()
            .filter(|g| g.health.state != HealthState::Unhealthy)
            .collect();
        gpus.sort_by_key(|g| g.index);
        Self {
            id: n.id.clone(),
            name: n.name.clone(),
            cluster: n.cluster.clone(),
            live: crate::cluster::is_live(n.state),
            suspect: n.state == crate::model::NodeState::Suspect,
            draining: n.draining,
            labels: n.labels.clone(),
            taints: n.taints.clone(),
            cores: n.hardware.cpu.logical_cores,
            memory_bytes: n.hardware.memory.total_bytes,
            gpus: gpus.into_iter().map(|g| g.uuid.clone()).collect(),
            named_users: true,
        }
    }
}

/// Where a job goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The node it runs on.
    pub node: NodeId,
    /// The GPUs it gets (UUIDs; as many as it asked for).
    pub gpus: Vec<String>,
    /// In `ha_pairs`: the standby that keeps room for it (`None`: pool, or a degraded pair).
    pub reserve_on: Option<NodeId>,
}

/// Why one node cannot take a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Misfit {
    /// Down (or left, or not registered yet).
    NotLive,
    /// Being drained.
    Draining,
    /// The job names a user or group, and the node's agent is too old to run it as one.
    NoJobUsers,
    /// Carries a taint the job does not tolerate.
    Tainted {
        /// The taint.
        taint: Taint,
    },
    /// Lacks a label the job's constraints ask for.
    Label {
        /// The key.
        key: String,
        /// The value asked for.
        want: String,
        /// The node's value, if it has the key.
        has: Option<String>,
    },
    /// Too little free CPU.
    Cpu {
        /// Free, millicores.
        free: u64,
        /// Asked for, millicores.
        need: u64,
    },
    /// Too little free memory.
    Memory {
        /// Free, bytes.
        free: u64,
        /// Asked for, bytes.
        need: u64,
    },
    /// Too few free GPUs.
    Gpus {
        /// Free (usable and not held).
        free: u64,
        /// Asked for.
        need: u64,
    },
    /// `ha_pairs`: the runner fits, but the pair's standby cannot keep room for the job.
    Standby {
        /// The standby's name.
        standby: String,
        /// Why not.
        why: Box<Misfit>,
    },
}

impl Misfit {
    /// How far the node got through the checks: higher is closer to fitting.
    fn closeness(&self) -> u8 {
        match self {
            Misfit::NotLive => 0,
            Misfit::Draining | Misfit::NoJobUsers => 1,
            Misfit::Tainted { .. } => 2,
            Misfit::Label { .. } => 3,
            Misfit::Cpu { .. } | Misfit::Memory { .. } | Misfit::Gpus { .. } => 4,
            Misfit::Standby { .. } => 5,
        }
    }
}

/// `n` bytes for people: `256 MiB`, `1.5 GiB`.
pub fn show_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misfit::NotLive => f.write_str("down"),
            Misfit::Draining => f.write_str("draining"),
            Misfit::NoJobUsers => f.write_str(
                "its agent is too old to run a job as the user it names (protocol before 4): update the agent",
            ),
            Misfit::Tainted { taint } => write!(
                f,
                "tainted {}={}:no_schedule, not tolerated",
                taint.key, taint.value
            ),
            Misfit::Label { key, want, has } => match has {
                Some(v) => write!(f, "label {key}={v}, the job wants {key}={want}"),
                None => write!(f, "no label {key} (the job wants {key}={want})"),
            },
            Misfit::Cpu { free, need } => {
                write!(f, "{free} of {need} millicores free")
            }
            Misfit::Memory { free, need } => write!(
                f,
                "{} of {} memory free",
                show_bytes(*free),
                show_bytes(*need)
            ),
            Misfit::Gpus { free, need } => write!(f, "{free} of {need} GPUs free"),
            Misfit::Standby { standby, why } => {
                write!(f, "its standby {standby} cannot keep room for it: {why}")
            }
        }
    }
}

/// One node (or pair, named by its runner) that was considered, and why it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// Why not.
    pub misfit: Misfit,
}

/// The job fits nowhere; `reason` says why, node by node (the job's `state_reason` while
/// `pending`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unplaceable {
    /// Why, in words.
    pub reason: String,
    /// Every candidate and why it failed, closest first.
    pub candidates: Vec<Candidate>,
}

/// Adds `spec`'s CPU and memory and the GPUs `gpus` to `held`.
pub fn hold(held: &mut Held, spec: &JobSpec, gpus: &[String]) {
    held.cpu_millis = held.cpu_millis.saturating_add(spec.resources.cpu_millis);
    held.memory_bytes = held
        .memory_bytes
        .saturating_add(spec.resources.memory_bytes);
    held.gpu_uuids.extend(gpus.iter().cloned());
}

/// What `jobs` hold on each node: every job with a current placement holds its CPU, memory and
/// GPUs on that node, a placement that waits for an old copy to end (a move) holds them on the
/// old copy's node too, with the old copy's GPUs, and a job without a placement that waits for
/// a copy still running (a stopped job's last copy) holds them on that copy's node; in
/// addition, when that node is the primary of one of `pairs`, the job's
/// CPU, memory and GPU count are reserved on the pair's standby. The reserved GPUs are the
/// standby's lowest free ones (`nodes` gives its GPUs), job by job in id order: which UUIDs
/// does not matter (the job gets fresh ones when it fails over), only that they are counted
/// once and never offered to another job.
///
/// To place a job that already has a placement (a failover, a move), leave it out of `jobs`:
/// its own holding and reservation are exactly the room it moves into.
pub fn held_by_jobs<'a>(
    jobs: impl IntoIterator<Item = &'a JobRecord>,
    pairs: &[PairRecord],
    nodes: &[NodeView],
) -> HashMap<NodeId, Held> {
    let mut held: HashMap<NodeId, Held> = HashMap::new();
    let mut reserving: Vec<(&JobRecord, &NodeId)> = Vec::new();
    for job in jobs {
        // A copy that may still run (a stopped job's last copy, or one a pending job still
        // waits for) keeps its room, GPUs included, until its end is known: a job placed in
        // that room would share a GPU with a process that has not let go of it.
        if let Some(old) = job.waits_for.as_ref().filter(|_| job.current.is_none()) {
            hold(
                held.entry(old.node.clone()).or_default(),
                &job.spec,
                job.gpus_of(old),
            );
        }
        let Some(p) = &job.current else { continue };
        // Likewise a move's old copy, stopped first: until its end is known it still runs on
        // the node it leaves, which may take jobs again before then (undrained, moved back).
        // (On the node it moves to, the new placement's room is the old copy's; only GPUs it
        // holds that the new placement does not are added.)
        if let Some(old) = &p.after {
            let h = held.entry(old.node.clone()).or_default();
            if old.node != p.node {
                hold(h, &job.spec, job.gpus_of(old));
            } else {
                let extra = job.gpus_of(old).iter().filter(|g| !p.gpus.contains(g));
                h.gpu_uuids.extend(extra.cloned());
            }
        }
        hold(held.entry(p.node.clone()).or_default(), &job.spec, &p.gpus);
        if let Some(pair) = pairs.iter().find(|pr| pr.primary == p.node) {
            reserving.push((job, &pair.standby));
        }
    }
    reserving.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    for (job, standby) in reserving {
        let h = held.entry(standby.clone()).or_default();
        let usable = nodes
            .iter()
            .find(|n| &n.id == standby)
            .map(|n| n.gpus.as_slice())
            .unwrap_or_default();
        let gpus: Vec<String> = usable
            .iter()
            .filter(|g| !h.gpu_uuids.contains(g))
            .take(job.spec.resources.gpus as usize)
            .cloned()
            .collect();
        hold(h, &job.spec, &gpus);
    }
    held
}

/// A node's pool score, higher is better: free CU, millicores and memory after placing the job,
/// then the lowest id (see the module docs).
type Score = (u64, u64, u64, Reverse<NodeId>);

/// How a reason shows one candidate when all failed on the same resource.
type Short = Option<fn(&Misfit) -> String>;

/// A node that passed every check, with what it would give and keep.
struct Fit {
    gpus: Vec<String>,
    score: Score,
}

/// Every check of the module docs for one node.
fn check(spec: &JobSpec, n: &NodeView, held: Option<&Held>) -> Result<Fit, Misfit> {
    if !n.live {
        return Err(Misfit::NotLive);
    }
    if n.draining {
        return Err(Misfit::Draining);
    }
    if !n.named_users && (spec.user.is_some() || spec.group.is_some()) {
        return Err(Misfit::NoJobUsers);
    }
    if let Some(t) = n.taints.iter().find(|t| {
        t.effect == TaintEffect::NoSchedule && !spec.tolerations.iter().any(|x| x.tolerates(t))
    }) {
        return Err(Misfit::Tainted { taint: t.clone() });
    }
    for (key, want) in &spec.constraints.labels {
        let has = n.labels.get(key);
        if has != Some(want) {
            return Err(Misfit::Label {
                key: key.clone(),
                want: want.clone(),
                has: has.cloned(),
            });
        }
    }
    let empty = Held::default();
    let h = held.unwrap_or(&empty);
    let r = spec.resources;
    let cpu_free = (u64::from(n.cores) * 1000).saturating_sub(h.cpu_millis);
    if cpu_free < r.cpu_millis {
        return Err(Misfit::Cpu {
            free: cpu_free,
            need: r.cpu_millis,
        });
    }
    let memory_free = n.memory_bytes.saturating_sub(h.memory_bytes);
    if memory_free < r.memory_bytes {
        return Err(Misfit::Memory {
            free: memory_free,
            need: r.memory_bytes,
        });
    }
    let free_gpus: Vec<&String> = n.gpus.iter().filter(|g| !h.gpu_uuids.contains(g)).collect();
    if (free_gpus.len() as u64) < u64::from(r.gpus) {
        return Err(Misfit::Gpus {
            free: free_gpus.len() as u64,
            need: u64::from(r.gpus),
        });
    }
    let (cpu_after, memory_after) = (cpu_free - r.cpu_millis, memory_free - r.memory_bytes);
    Ok(Fit {
        gpus: free_gpus
            .into_iter()
            .take(r.gpus as usize)
            .cloned()
            .collect(),
        score: (
            node_cu(cpu_after / 1000, memory_after),
            cpu_after,
            memory_after,
            Reverse(n.id.clone()),
        ),
    })
}

/// Chooses where `job` runs in `cluster` (see the module docs). `nodes` and `pairs` may hold
/// other clusters' too; they are skipped. `held` must not count `job` itself (see
/// [`held_by_jobs`]).
pub fn place(
    job: &JobRecord,
    cluster: &ClusterRecord,
    nodes: &[NodeView],
    pairs: &[PairRecord],
    held: &HashMap<NodeId, Held>,
) -> Result<Choice, Unplaceable> {
    let spec = &job.spec;
    let members: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.cluster.as_deref() == Some(cluster.id.as_str()))
        .collect();
    let mut misfits: Vec<Candidate> = Vec::new();
    let mut best: Option<((bool, Score), Choice)> = None;
    let mut consider = |key: (bool, Score), choice: Choice| {
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, choice));
        }
    };
    match cluster.mode {
        ClusterMode::Pool => {
            for n in &members {
                match check(spec, n, held.get(&n.id)) {
                    Ok(fit) => consider(
                        (false, fit.score),
                        Choice {
                            node: n.id.clone(),
                            gpus: fit.gpus,
                            reserve_on: None,
                        },
                    ),
                    Err(misfit) => misfits.push(candidate(n, misfit)),
                }
            }
        }
        ClusterMode::HaPairs => {
            let find = |id: &NodeId| members.iter().copied().find(|n| &n.id == id);
            for pair in pairs.iter().filter(|p| p.cluster == cluster.id) {
                let (Some(primary), Some(standby)) = (find(&pair.primary), find(&pair.standby))
                else {
                    continue;
                };
                let usable = |n: &NodeView| n.live && !n.draining;
                let (runner, other) = if usable(primary) || !usable(standby) {
                    (primary, standby)
                } else {
                    (standby, primary)
                };
                let fit = match check(spec, runner, held.get(&runner.id)) {
                    Ok(fit) => fit,
                    Err(misfit) => {
                        misfits.push(candidate(runner, misfit));
                        continue;
                    }
                };
                let reserve_on = if usable(other) {
                    if let Err(why) = check(spec, other, held.get(&other.id)) {
                        let misfit = Misfit::Standby {
                            standby: other.name.clone(),
                            why: Box::new(why),
                        };
                        misfits.push(candidate(runner, misfit));
                        continue;
                    }
                    Some(other.id.clone())
                } else {
                    None
                };
                consider(
                    (reserve_on.is_some(), fit.score),
                    Choice {
                        node: runner.id.clone(),
                        gpus: fit.gpus,
                        reserve_on,
                    },
                );
            }
        }
    }
    match best {
        Some((_, choice)) => Ok(choice),
        None => Err(unplaceable(job, cluster, &members, pairs, misfits)),
    }
}

fn candidate(n: &NodeView, misfit: Misfit) -> Candidate {
    Candidate {
        node: n.id.clone(),
        name: n.name.clone(),
        misfit,
    }
}

/// The reason for an empty result: a headline, then the closest candidates.
fn unplaceable(
    job: &JobRecord,
    cluster: &ClusterRecord,
    members: &[&NodeView],
    pairs: &[PairRecord],
    mut candidates: Vec<Candidate>,
) -> Unplaceable {
    let c = &cluster.name;
    let r = job.spec.resources;
    if members.is_empty() {
        return Unplaceable {
            reason: format!("cluster {c} has no nodes"),
            candidates,
        };
    }
    if cluster.mode == ClusterMode::HaPairs && !pairs.iter().any(|p| p.cluster == cluster.id) {
        return Unplaceable {
            reason: format!(
                "cluster {c} has no primary/standby pair yet ({} unpaired nodes); in ha_pairs a \
                 job runs on a pair's primary",
                members.len()
            ),
            candidates,
        };
    }
    candidates.sort_by(|a, b| {
        b.misfit
            .closeness()
            .cmp(&a.misfit.closeness())
            .then_with(|| a.name.cmp(&b.name))
    });
    let same = |f: fn(&Misfit) -> bool| candidates.iter().all(|x| f(&x.misfit));
    let (head, short): (String, Short) = if same(|m| matches!(m, Misfit::NotLive)) {
        let what = match cluster.mode {
            ClusterMode::Pool => "node",
            ClusterMode::HaPairs => "pair",
        };
        (format!("no {what} of cluster {c} is up"), None)
    } else if same(|m| matches!(m, Misfit::Gpus { .. })) {
        (
            format!("no live node has {} free GPUs", r.gpus),
            Some(|m| match m {
                Misfit::Gpus { free, .. } => format!("has {free}"),
                _ => m.to_string(),
            }),
        )
    } else if same(|m| matches!(m, Misfit::Cpu { .. })) {
        (
            format!("no live node has {} free millicores", r.cpu_millis),
            Some(|m| match m {
                Misfit::Cpu { free, .. } => format!("has {free}"),
                _ => m.to_string(),
            }),
        )
    } else if same(|m| matches!(m, Misfit::Memory { .. })) {
        (
            format!(
                "no live node has {} free memory",
                show_bytes(r.memory_bytes)
            ),
            Some(|m| match m {
                Misfit::Memory { free, .. } => format!("has {}", show_bytes(*free)),
                _ => m.to_string(),
            }),
        )
    } else {
        (
            format!(
                "no node of cluster {c} can take it ({} millicores, {}, {} GPUs)",
                r.cpu_millis,
                show_bytes(r.memory_bytes),
                r.gpus
            ),
            None,
        )
    };
    let mut parts: Vec<String> = candidates
        .iter()
        .take(REASON_NODES_MAX)
        .map(|x| match short {
            Some(f) => format!("{} {}", x.name, f(&x.misfit)),
            None => format!("{}: {}", x.name, x.misfit),
        })
        .collect();
    if candidates.len() > REASON_NODES_MAX {
        parts.push(format!("and {} more", candidates.len() - REASON_NODES_MAX));
    }
    let reason = if parts.is_empty() {
        head
    } else {
        format!("{head}: {}", parts.join(", "))
    };
    Unplaceable { reason, candidates }
}

#[cfg(test)]
mod tests;
