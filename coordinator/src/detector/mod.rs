//! The failure detector: which nodes are alive, suspect or down, decided from heartbeats and
//! the clock alone.
//!
//! # The fencing side of the lease argument
//! When beat `seq` of a node reaches us at local time `t_recv`, we ack it with a lease of
//! `lease`, and we promise not to declare the node down before
//! `deadline = t_recv + lease + fence_grace`. The agent holds its lease only until
//! `t_send(seq) + lease` (see the agent's `lease` module), and `t_send < t_recv` in real time, so
//! by our deadline the agent's lease has been over for at least `fence_grace`: time for it to
//! have killed every job it ran. Only then do we say `Down` and let jobs start elsewhere.
//!
//! Two further rules keep the argument whole:
//! - Once `Down`, a node's beats are never acked again (`handle_heartbeat` returns `None`), even
//!   a late beat that was sent before it was cut off; the node must register anew, which starts
//!   a new session. Beats of an older session are ignored the same way.
//! - A planned restart's hold (`hold`): nobody is declared down before it ends, and leases
//!   granted while it is taken end before it, by the rule of the fence grace.
//! - After the coordinator (re)starts, nobody is declared down before `restart_grace` has passed
//!   (at least one `lease + fence_grace`, by default a few seconds so that agents in reconnect
//!   backoff come back first): a coordinator restart never causes a mass failover. A large
//!   fleet takes longer than that to reconnect (10,000 agents took about 20 s here), so while
//!   nodes the store remembered are still coming back (registering, until their first beat),
//!   the grace is extended to one `lease + fence_grace` past the latest of those
//!   registrations, up to `MAX_GRACE_EXTENSION` beyond the configured grace. Declaring a node down later than its deadline is always safe: only
//!   early is not.
//!
//! # Fence parameters
//! `lease + fence_grace` is only safe if the agent fences with the kill timeout the grace was
//! computed from. A coordinator restarted with a lower kill timeout or a shorter lease (3000
//! -> 50 ms gave 2.8 s of two copies) faces agents that were given the old values. So the
//! parameters agents were given are stored, and while they differ from the configured ones
//! ([`FailureDetector::with_legacy`]) every node remembered from before the restart is judged
//! by the larger of the two (`legacy_total`): at restore, and after it registers again until
//! one `legacy_total` has passed since that registration. The agent applies the parameters of
//! every `Welcome` before it beats on that session, so by then it fences with the new ones.
//! [`FailureDetector::legacy_left`] says when no node may hold the old values any more; the
//! caller then records the new ones as the parameters in force.
//!
//! Plain struct, no I/O, no clock: `handle_*(now, …)` in, transitions out.

use crate::clock::Map as HashMap;
use std::time::{Duration, Instant};
use tandem_common::ids::NodeId;

mod hold;
pub use hold::hold_lease;

/// The detector's timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// How often agents beat.
    pub heartbeat: Duration,
    /// The lease each ack grants.
    pub lease: Duration,
    /// Added to the lease before a node may be declared down (kill time plus drift).
    pub fence_grace: Duration,
    /// Missed beats before a node is shown as suspect (no action is taken on suspicion).
    pub suspect_after_missed: u32,
    /// After a (re)start, nobody is declared down before this has passed. At least one
    /// `lease + fence_grace`; longer gives agents in reconnect backoff time to come back.
    pub restart_grace: Duration,
}

impl DetectorConfig {
    /// How long after its last beat a node is suspect.
    pub fn suspect_after(&self) -> Duration {
        self.heartbeat * self.suspect_after_missed.max(1)
    }

    /// The restart grace, never shorter than one `lease + fence_grace`.
    pub fn restart_grace(&self) -> Duration {
        self.restart_grace.max(self.lease + self.fence_grace)
    }
}

/// What the detector thinks of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Beating on time.
    Alive,
    /// Late, but its lease may still be running: visible, no action.
    Suspect,
    /// Its deadline passed: its lease is over and its jobs are dead.
    Down,
}

/// A change the caller must record and act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// No beat for `silent_for`; shown, not acted on.
    Suspect {
        /// The node.
        node: NodeId,
        /// Time since its last beat (or since it was tracked).
        silent_for: Duration,
    },
    /// A suspect node beat again.
    Recovered {
        /// The node.
        node: NodeId,
    },
    /// The deadline passed: declare the node down.
    Down {
        /// The node.
        node: NodeId,
        /// Time since its last beat (or since it was tracked).
        silent_for: Duration,
    },
}

#[derive(Debug)]
struct Tracked {
    session: u64,
    last_beat: Instant,
    deadline: Instant,
    liveness: Liveness,
    /// Remembered from the store and not beaten since the restart.
    returning: bool,
    /// May hold the old fence parameters: `Some(None)` until it registers again,
    /// `Some(Some(t))` until `t` after that, `None` not (or no longer).
    legacy: Option<Option<Instant>>,
}

/// The failure detector.
#[derive(Debug)]
pub struct FailureDetector {
    cfg: DetectorConfig,
    started_at: Instant,
    /// The end of the restart grace, pushed on while restored nodes keep coming back.
    grace_until: Instant,
    nodes: HashMap<NodeId, Tracked>,
    /// No node can change state before this: the earliest suspicion or deadline seen by the
    /// last scan, lowered by every registration and recovery. Other beats only push a node's
    /// times later, so it stays a lower bound, and ticks before it skip the scan (at 25,000 nodes and a tick every
    /// 20 ms, scanning every tick held the detector's lock, which every beat takes, for about
    /// a millisecond 50 times a second).
    next_due: Instant,
    /// `lease + fence_grace` of the largest parameters agents may still hold, when they are
    /// larger than the configured ones.
    legacy_total: Option<Duration>,
    /// A planned restart's hold (see `hold`).
    hold: Option<hold::Hold>,
    /// Agent hand-overs: these nodes are not declared down before these times (see `hold`).
    node_holds: HashMap<NodeId, Instant>,
}

/// How far a reconnect storm may push the restart grace beyond its configured length.
pub const MAX_GRACE_EXTENSION: Duration = Duration::from_secs(300);

impl FailureDetector {
    /// A detector that started at `now` (the coordinator's start: the restart grace counts from it).
    pub fn new(cfg: DetectorConfig, now: Instant) -> Self {
        Self {
            cfg,
            started_at: now,
            grace_until: now + cfg.restart_grace(),
            nodes: HashMap::default(),
            next_due: now,
            legacy_total: None,
            hold: None,
            node_holds: HashMap::default(),
        }
    }

    /// Agents may still hold fence parameters whose `lease + fence_grace` is `total` (larger
    /// than the configured one): nodes restored from the store are judged by it until they
    /// have registered again and had time to take the new ones. Call before restoring nodes.
    /// The restart grace is made at least that long.
    pub fn with_legacy(mut self, total: Duration) -> Self {
        if total > self.cfg.lease + self.cfg.fence_grace {
            self.legacy_total = Some(total);
            self.grace_until = self.grace_until.max(self.started_at + total);
        }
        self
    }

    /// Whether any node may still hold the old fence parameters at `now`.
    pub fn legacy_left(&self, now: Instant) -> bool {
        self.legacy_total.is_some()
            && self.nodes.values().any(|t| {
                t.liveness != Liveness::Down
                    && match t.legacy {
                        Some(None) => true,
                        Some(Some(until)) => now < until,
                        None => false,
                    }
            })
    }

    /// `lease + fence_grace` for a node whose `legacy` mark is this, at `now`.
    fn total_for(&self, legacy: Option<Option<Instant>>, now: Instant) -> Duration {
        total_for(&self.cfg, self.legacy_total, legacy, now)
    }

    /// How soon a node just tracked may change state: its suspicion or its deadline.
    fn first_due(&self) -> Duration {
        self.cfg
            .suspect_after()
            .min(self.cfg.lease + self.cfg.fence_grace)
    }

    /// The timings.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// A node the store says was alive before we started. It has no session yet; its deadline
    /// is the end of the restart grace, so it has that long to reconnect.
    pub fn handle_restored(&mut self, node: NodeId, now: Instant) {
        let legacy = self.legacy_total.map(|_| None);
        let grace = self.cfg.restart_grace().max(self.total_for(legacy, now));
        let deadline = (self.started_at + grace).max(now + grace);
        self.next_due = self.next_due.min(now + self.first_due());
        self.nodes.insert(
            node,
            Tracked {
                session: 0,
                last_beat: now,
                deadline,
                liveness: Liveness::Alive,
                returning: true,
                legacy,
            },
        );
    }

    /// A node registered on a new connection `session` (sessions only grow). Its lease starts
    /// with its first acked beat; until then it has one `lease + fence_grace` to beat.
    pub fn handle_registered(&mut self, node: NodeId, session: u64, now: Instant) {
        // A node that may hold the old fence parameters gets the new ones in this Welcome;
        // it is judged by the old ones for one more old `lease + fence_grace`.
        let legacy = match (
            self.legacy_total,
            self.nodes.get(&node).and_then(|t| t.legacy),
        ) {
            (Some(l), Some(None)) => Some(Some(now + l)),
            (_, kept) => kept,
        };
        let deadline = now + self.total_for(legacy, now);
        // A remembered node that has not beaten since the restart, registering during the
        // grace: the reconnect storm goes on. That is its first registration, or another one
        // because the first timed out on the agent's side (the Welcome came too late in the
        // storm) and left a session that never beat. Its next try must come in before anyone
        // is declared down. A node that beat in between is not returning any more, so a
        // flapping node cannot hold the grace open.
        self.next_due = self.next_due.min(now + self.first_due());
        let returning = self.nodes.get(&node).is_some_and(|t| t.returning);
        if returning && self.in_restart_grace(now) {
            let cap = self.started_at + self.cfg.restart_grace() + MAX_GRACE_EXTENSION;
            self.grace_until = self.grace_until.max(deadline).min(cap);
        }
        self.nodes.insert(
            node,
            Tracked {
                session,
                last_beat: now,
                deadline,
                liveness: Liveness::Alive,
                returning,
                legacy,
            },
        );
    }

    /// A beat from `node` on `session` arrived at `now`. Returns the lease to grant in the ack,
    /// or `None` when the beat must not be acked (unknown node, stale session, or down).
    /// The second value is true when a suspect node recovered.
    pub fn handle_heartbeat(
        &mut self,
        node: &NodeId,
        session: u64,
        now: Instant,
    ) -> Option<(Duration, bool)> {
        let t = self.nodes.get_mut(node)?;
        if t.session != session || t.liveness == Liveness::Down {
            return None;
        }
        let total = total_for(&self.cfg, self.legacy_total, t.legacy, now);
        t.last_beat = t.last_beat.max(now);
        t.deadline = t.deadline.max(now + total);
        let recovered = t.liveness == Liveness::Suspect;
        t.liveness = Liveness::Alive;
        t.returning = false;
        if recovered {
            // Suspect again one `suspect_after` from now: maybe before the deadline the last
            // scan counted on for it.
            self.next_due = self.next_due.min(now + self.cfg.suspect_after());
        }
        Some((self.lease_for(node, now), recovered))
    }

    /// Stops tracking a node (it left, or was removed).
    pub fn forget(&mut self, node: &NodeId) {
        self.nodes.remove(node);
    }

    /// What the detector thinks of `node`.
    pub fn liveness(&self, node: &NodeId) -> Option<Liveness> {
        self.nodes.get(node).map(|t| t.liveness)
    }

    /// Time since the node's last beat.
    pub fn silent_for(&self, node: &NodeId, now: Instant) -> Option<Duration> {
        self.nodes
            .get(node)
            .map(|t| now.saturating_duration_since(t.last_beat))
    }

    /// Ends the restart grace at `now`: nobody was remembered, so nobody is to wait for (a
    /// hold is kept).
    pub fn end_restart_grace(&mut self, now: Instant) {
        self.grace_until = self.grace_until.min(now);
    }

    /// How much of the restart grace is left at `now`.
    pub fn restart_grace_left(&self, now: Instant) -> Duration {
        self.grace_until
            .max(self.hold_until().unwrap_or(now))
            .saturating_duration_since(now)
    }

    /// Whether the restart grace is still running at `now`.
    pub fn in_restart_grace(&self, now: Instant) -> bool {
        now < self.grace_until || self.hold_until().is_some_and(|h| now < h)
    }

    /// Advances time: returns the suspicions and downs due at `now`.
    pub fn handle_tick(&mut self, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        if self.in_restart_grace(now) {
            return out;
        }
        if now < self.next_due {
            return out;
        }
        let suspect_after = self.cfg.suspect_after();
        // Nothing is due before the next registration or the next scan's findings; a day
        // ahead stands for "never" without overflowing.
        let mut next_due = now + Duration::from_secs(86_400);
        self.node_holds.retain(|_, until| *until > now);
        for (node, t) in self.nodes.iter_mut() {
            let silent_for = now.saturating_duration_since(t.last_beat);
            // An agent hand-over's hold: not down before it ends, whatever the beats say.
            let deadline = match self.node_holds.get(node) {
                Some(until) => t.deadline.max(*until),
                None => t.deadline,
            };
            match t.liveness {
                Liveness::Down => {}
                _ if now >= deadline => {
                    t.liveness = Liveness::Down;
                    out.push(Transition::Down {
                        node: node.clone(),
                        silent_for,
                    });
                }
                Liveness::Alive if silent_for >= suspect_after => {
                    t.liveness = Liveness::Suspect;
                    out.push(Transition::Suspect {
                        node: node.clone(),
                        silent_for,
                    });
                }
                _ => {}
            }
            let due = match t.liveness {
                Liveness::Down => continue,
                Liveness::Suspect => deadline,
                Liveness::Alive => deadline.min(t.last_beat + suspect_after),
            };
            next_due = next_due.min(due);
        }
        self.next_due = next_due;
        out.sort_by(|a, b| key(a).cmp(key(b)));
        out
    }
}

/// `lease + fence_grace` under `cfg`, or the old parameters' `legacy_total` while the node
/// may still hold them (see "Fence parameters").
fn total_for(
    cfg: &DetectorConfig,
    legacy_total: Option<Duration>,
    legacy: Option<Option<Instant>>,
    now: Instant,
) -> Duration {
    let normal = cfg.lease + cfg.fence_grace;
    match (legacy_total, legacy) {
        (Some(l), Some(None)) => l.max(normal),
        (Some(l), Some(Some(until))) if now < until => l.max(normal),
        _ => normal,
    }
}

fn key(t: &Transition) -> &NodeId {
    match t {
        Transition::Suspect { node, .. }
        | Transition::Recovered { node }
        | Transition::Down { node, .. } => node,
    }
}

#[cfg(test)]
mod tests;
