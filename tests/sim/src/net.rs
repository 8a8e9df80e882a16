//! The simulated network between the agents and the coordinator.
//!
//! A connection carries a control stream each way (QUIC streams: in order and reliable while
//! the connection lives) and datagrams (heartbeats and their acks: lost, duplicated, delayed
//! and so reordered). A link can be cut one way or both: control data then waits (QUIC
//! retransmits it once the path heals) and datagrams are lost; a connection whose link stays
//! cut for the idle timeout dies at both ends, and everything it still carried is lost.

use rand::Rng;
use std::collections::VecDeque;
use tandem_common::proto::{AgentMsg, CoordMsg};

/// The QUIC idle timeout (`common::transport`).
pub const IDLE_TIMEOUT_NS: u64 = 15_000_000_000;

/// Which way a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Agent to coordinator.
    Up,
    /// Coordinator to agent.
    Down,
}

/// What travels.
#[derive(Debug, Clone)]
pub enum Packet {
    /// A control message from an agent.
    Agent(AgentMsg),
    /// A control message from the coordinator.
    Coord(CoordMsg),
    /// A heartbeat datagram.
    Beat(u64),
    /// A heartbeat ack datagram.
    Ack {
        /// The beat.
        seq: u64,
        /// The lease granted.
        lease_ms: u32,
    },
    /// The coordinator closed the connection (a QUIC close frame).
    Closed(&'static str),
}

impl Packet {
    fn is_datagram(&self) -> bool {
        matches!(self, Packet::Beat(_) | Packet::Ack { .. })
    }
}

/// A packet on its way, with when it was sent.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// The connection.
    pub conn: u64,
    /// Which way.
    pub dir: Dir,
    /// Sent at (simulated ns).
    pub sent_ns: u64,
    /// What.
    pub packet: Packet,
}

/// One agent's path to the coordinator.
#[derive(Debug, Default, Clone)]
pub struct Link {
    /// Agent to coordinator is cut.
    pub up_cut: bool,
    /// Coordinator to agent is cut.
    pub down_cut: bool,
    /// Since when some direction has been cut.
    pub cut_since: Option<u64>,
}

impl Link {
    fn cut(&self, dir: Dir) -> bool {
        match dir {
            Dir::Up => self.up_cut,
            Dir::Down => self.down_cut,
        }
    }
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// Its number.
    pub id: u64,
    /// The agent's index.
    pub agent: usize,
    /// Open as the agent sees it.
    pub open_at_agent: bool,
    /// Open as the coordinator sees it.
    pub open_at_coord: bool,
    last_delivery: [u64; 2],
    stalled: [VecDeque<InFlight>; 2],
}

/// Loss, duplication and delay of datagrams; delay of control data.
#[derive(Debug, Clone, Copy)]
pub struct Weather {
    /// Chance a datagram is lost.
    pub loss: f64,
    /// Chance a datagram arrives twice.
    pub duplicate: f64,
    /// Largest one-way delay, ns.
    pub max_delay_ns: u64,
}

/// Every link and connection.
#[derive(Debug, Default)]
pub struct Net {
    /// Links by agent.
    pub links: Vec<Link>,
    /// Connections by id (dead ones are removed).
    pub conns: std::collections::BTreeMap<u64, Conn>,
    next_conn: u64,
}

fn idx(dir: Dir) -> usize {
    match dir {
        Dir::Up => 0,
        Dir::Down => 1,
    }
}

impl Net {
    /// A network for `agents` agents, every link whole.
    pub fn new(agents: usize) -> Self {
        Self {
            links: vec![Link::default(); agents],
            ..Default::default()
        }
    }

    /// Whether a new connection of `agent` can be made now (both ways up).
    pub fn reachable(&self, agent: usize) -> bool {
        let l = &self.links[agent];
        !l.up_cut && !l.down_cut
    }

    /// Opens a connection for `agent`.
    pub fn open(&mut self, agent: usize) -> u64 {
        self.next_conn += 1;
        let id = self.next_conn;
        self.conns.insert(
            id,
            Conn {
                id,
                agent,
                open_at_agent: true,
                open_at_coord: true,
                last_delivery: [0; 2],
                stalled: Default::default(),
            },
        );
        id
    }

    /// Sends `packet` on `conn`: returns when it arrives (none, once or twice), or nothing if
    /// it is lost or waits for the link to heal.
    pub fn send(
        &mut self,
        rng: &mut impl Rng,
        w: Weather,
        now: u64,
        conn: u64,
        dir: Dir,
        packet: Packet,
    ) -> Vec<(u64, InFlight)> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let link = &self.links[c.agent];
        let f = InFlight {
            conn,
            dir,
            sent_ns: now,
            packet,
        };
        if f.packet.is_datagram() {
            if link.cut(dir) || rng.random_bool(w.loss) {
                return Vec::new();
            }
            let times = if rng.random_bool(w.duplicate) { 2 } else { 1 };
            return (0..times)
                .map(|_| (now + rng.random_range(10_000..=w.max_delay_ns), f.clone()))
                .collect();
        }
        if link.cut(dir) {
            c.stalled[idx(dir)].push_back(f);
            return Vec::new();
        }
        let at =
            (now + rng.random_range(10_000..=w.max_delay_ns)).max(c.last_delivery[idx(dir)] + 1);
        c.last_delivery[idx(dir)] = at;
        vec![(at, f)]
    }

    /// The coordinator closed `conn`: like a QUIC endpoint that closes, it sends no more
    /// stream data (what waited for the link is dropped), only the close.
    pub fn close_at_coord(&mut self, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.open_at_coord = false;
            c.stalled[idx(Dir::Down)].clear();
        }
    }

    /// Cuts or heals `agent`'s link one way; healing releases the control data that waited.
    pub fn set_cut(
        &mut self,
        rng: &mut impl Rng,
        w: Weather,
        now: u64,
        agent: usize,
        dir: Dir,
        cut: bool,
    ) -> Vec<(u64, InFlight)> {
        let l = &mut self.links[agent];
        match dir {
            Dir::Up => l.up_cut = cut,
            Dir::Down => l.down_cut = cut,
        }
        if l.up_cut || l.down_cut {
            l.cut_since.get_or_insert(now);
        } else {
            l.cut_since = None;
        }
        if cut {
            return Vec::new();
        }
        let mut out = Vec::new();
        let ids: Vec<u64> = self
            .conns
            .values()
            .filter(|c| c.agent == agent)
            .map(|c| c.id)
            .collect();
        for id in ids {
            let waiting: Vec<InFlight> = self
                .conns
                .get_mut(&id)
                .map(|c| c.stalled[idx(dir)].drain(..).collect())
                .unwrap_or_default();
            for f in waiting {
                let c = self.conns.get_mut(&id).expect("listed above");
                let at = (now + rng.random_range(10_000..=w.max_delay_ns))
                    .max(c.last_delivery[idx(dir)] + 1);
                c.last_delivery[idx(dir)] = at;
                out.push((at, f));
            }
        }
        out
    }

    /// Connections of `agent` whose link has been cut for the idle timeout.
    pub fn idle_out(&self, now: u64) -> Vec<u64> {
        self.conns
            .values()
            .filter(|c| {
                self.links[c.agent]
                    .cut_since
                    .is_some_and(|s| now.saturating_sub(s) >= IDLE_TIMEOUT_NS)
            })
            .map(|c| c.id)
            .collect()
    }
}
