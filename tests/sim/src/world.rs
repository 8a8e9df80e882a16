//! The event loop: simulated time, the faults, the operator, and the checks.
//!
//! A run has two phases. During the *storm* agents crash, hang and restart, nodes lose power,
//! links are cut, the coordinator is killed and restarted, and an operator submits, stops,
//! drains and removes. Then the faults stop, everything is healed and restarted, and the fleet
//! has a *settling* time, after which every acknowledged job must be where its policy says.
//! The invariants of [`crate::invariants`] are checked at every step of both phases.
//!
//! This file holds the loop, the events and the delivery of packets; the faults (`faults`),
//! the operator (`operator`, `taints`) and the end of a run (`settle`) are in modules below.

use crate::agent::{Behaviour, Out, SimAgent};
use crate::clock::{ms, SimClock};
use crate::coordinator::{CoordHost, CoordOut, Params};
use crate::invariants::{Ledger, Violation};
use crate::net::{Dir, InFlight, Net, Packet, Weather};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tandem_common::ids::NodeId;
use tandem_coordinator::jobs::model::{JobRecord, JobSpec, JobState, Resources, RestartPolicy};
use tandem_coordinator::model::{ClusterMode, ClusterRecord, NodeRecord, NodeState};
use tandem_coordinator::store::{Change, MemStore, StateStore};

mod faults;
mod operator;
mod settle;
mod taints;

/// Deliberate bugs, to show that the simulation finds what they break.
#[derive(Debug, Clone, Copy, Default)]
pub struct Knobs {
    /// The detector declares a node down as soon as its lease ends (no fence grace).
    pub no_fence_grace: bool,
    /// The store says a batch is durable without making it so (acting before a persist).
    pub lying_flush: bool,
    /// Commands and answers leave without waiting for their batches to be durable (acting
    /// before a persist has finished).
    pub send_before_durable: bool,
    /// A restarted coordinator ignores the hold its planned stop recorded (declares nodes
    /// down while the hold leases it granted still run).
    pub forget_restart_hold: bool,
    /// A planned agent stop is granted a hand-over lease that outlives the node's recorded
    /// hold (twice as long): the node is declared down at the hold's end while its shims still
    /// hold a lease.
    pub handover_lease_past_hold: bool,
    /// How far the hosts' clocks may run fast or slow, in millionths (default 2%; the fence
    /// grace allows 5% of the lease). A larger drift than the design allows must be caught.
    pub max_drift_ppm: Option<i64>,
    /// A coordinator restarted with new fence parameters takes them as the ones in force at
    /// once, forgetting those its agents may still hold (defect 7 of issue 12): a node whose
    /// copies still have the old, longer kill timeout can be declared down before they die.
    pub forget_old_fence_params: bool,
}

/// The clock drift of a run unless a knob says otherwise: ±2%.
pub const DEFAULT_MAX_DRIFT_PPM: i64 = 20_000;

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Events handled.
    pub events: u64,
    /// Agents in the run.
    pub agents: usize,
    /// Jobs acknowledged.
    pub jobs: usize,
    /// Job copies whose process began.
    pub copies_started: u64,
    /// Of those, copies of a job submitted under the name of a stopped one.
    pub reused_names: u64,
    /// Faults injected.
    pub faults: u64,
    /// Coordinator crashes.
    pub coordinator_crashes: u64,
    /// Planned coordinator restarts (a hold, then an exit).
    pub planned_restarts: u64,
    /// Copies a restarted agent re-adopted from its previous run.
    pub readopted: u64,
    /// Planned agent stops (a hand-over asked for).
    pub agent_handovers: u64,
    /// Coordinator restarts with a new lease or fence kill timeout.
    pub fence_changes: u64,
    /// Nodes moved to the other cluster or back.
    pub node_moves: u64,
    /// Taints put on a node or taken off by an operator during the storm.
    pub taint_edits: u64,
    /// Simulated milliseconds.
    pub sim_ms: u64,
    /// The steps, when traced.
    pub trace: Vec<String>,
}

#[derive(Debug)]
enum Ev {
    CoordTick(u64),
    CoordDrain(u64),
    CoordStart,
    /// A planned stop's end: the process exits (run).
    CoordStop(u64),
    Deliver(InFlight),
    Connect(usize, u64),
    Beat(usize, u64),
    Wake(usize),
    Unhang(usize),
    /// The packets held for a hung agent are read (if its hang is over).
    DeliverHeld(usize),
    AgentStart(usize),
    /// A planned agent stop that got no answer in time: the process exits (its run).
    AgentStopTimeout(usize, u64),
    Heal(usize, Dir),
    Fault,
    Admin,
    /// An operator's rarer request: moving a node to the other cluster or back, forcing
    /// failover in the paused cluster.
    Operator,
    /// An operator puts a `no_schedule` taint on a node or takes it off.
    Taint,
    /// After the storm: every taint is taken off (checked again until none is left).
    Untaint,
    IdleCheck,
    ConnTimeout(u64),
    /// The agent's wait for an answer to its Hello on a connection ends
    /// (`tandem_common::transport::HELLO_ANSWER_TIMEOUT`).
    HelloTimeout(usize, u64),
    Settle,
}

struct SimJob {
    id: String,
    name: String,
}

struct World {
    rng: StdRng,
    clock: Arc<SimClock>,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    agents: Vec<SimAgent>,
    by_node: BTreeMap<NodeId, usize>,
    pending_wake: Vec<Option<u64>>,
    held_back: Vec<Vec<tandem_common::proto::AgentMsg>>,
    /// What reached a hung agent, in the order it arrived: read when the hang ends, in that
    /// order (a stopped process reads its socket buffer in order). Each packet rescheduled on
    /// its own to the hang's end came out of order when a second hang extended the first: a
    /// stop overtook the start it followed, and the agent ran a copy after its stop (seed
    /// 56525, a simulation bug).
    held_in: Vec<std::collections::VecDeque<InFlight>>,
    net: Net,
    weather: Weather,
    store: Arc<MemStore>,
    coord: Option<CoordHost>,
    coord_run: u64,
    params: Params,
    /// Chance for the fence parameters a restarted coordinator is configured with: apart from
    /// `rng`, so that a run without a change takes the same course it took before they were
    /// simulated.
    param_rng: StdRng,
    /// Chance for [`Ev::Operator`], apart from `rng` for the same reason.
    ops_rng: StdRng,
    /// Whether a submit reuses a stopped job's name (a new version of it): a stream of its
    /// own, so that the other draws of a seed stay as they were.
    name_rng: StdRng,
    /// Chance for [`Ev::Taint`], apart from `rng` for the same reason.
    taint_rng: StdRng,
    /// How many GPUs a submitted job asks for, apart from `rng` for the same reason.
    gpu_rng: StdRng,
    ledger: Ledger,
    jobs: Vec<SimJob>,
    cluster: String,
    storm_until: u64,
    settled: bool,
    down_seen: BTreeMap<NodeId, bool>,
    report: Report,
    trace: Option<Vec<String>>,
    /// What the trace last showed of each job record.
    traced_jobs: BTreeMap<String, String>,
    traced_event: u64,
    /// The deliberate bugs switched on.
    knobs: Knobs,
    /// Whether the cluster pairs its nodes (standbys take no jobs).
    ha_pairs: bool,
    /// A drain of the outboxes is scheduled.
    drain_due: bool,
}

/// Runs one seed. `trace` keeps a line per step, printed with a violation.
pub fn run(seed: u64, knobs: Knobs, trace: bool) -> Result<Report, Box<Violation>> {
    tandem_coordinator::clock::fix_hash_seed(0x7a4d_e45e);
    let mut w = World::new(seed, knobs, trace);
    w.go().map_err(|what| {
        Box::new(Violation {
            seed,
            at_ms: w.clock.ns() / 1_000_000,
            what,
            trace: w.trace.take().unwrap_or_default(),
        })
    })?;
    w.report.sim_ms = w.clock.ns() / 1_000_000;
    w.report.copies_started = w.ledger.copies_started;
    w.report.reused_names = w.ledger.reused_names;
    w.report.trace = w.trace.take().unwrap_or_default();
    Ok(w.report)
}

impl World {
    fn new(seed: u64, knobs: Knobs, trace: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let clock = Arc::new(SimClock::new(seed));
        let n = rng.random_range(2..=5usize);
        // Some runs pair the nodes: primaries run the work, standbys take it over.
        let ha_pairs = rng.random_bool(0.4);
        let failback = rng.random_bool(0.5);
        let store = Arc::new(if knobs.lying_flush {
            MemStore::with_lying_flush()
        } else {
            MemStore::new()
        });
        let lease = Duration::from_millis(1000);
        let fence_kill = Duration::from_millis(250);
        let params = Params {
            heartbeat: Duration::from_millis(200),
            lease,
            fence_kill,
            fence_grace: if knobs.no_fence_grace {
                Duration::ZERO
            } else {
                fence_kill + lease / 20 + Duration::from_millis(50)
            },
            restart_grace: Duration::from_secs(5),
        };
        let cluster = ClusterRecord {
            id: "c-sim".into(),
            name: "sim".into(),
            alias: String::new(),
            description: String::new(),
            mode: if ha_pairs {
                ClusterMode::HaPairs
            } else {
                ClusterMode::Pool
            },
            labels: Default::default(),
            deletion_protection: false,
            min_node: None,
            failback,
            model: None,
            created_ms: 0,
        };
        // A second cluster, for an operator moving nodes out of the first and back.
        let other = ClusterRecord {
            id: "c-other".into(),
            name: "other".into(),
            mode: ClusterMode::Pool,
            ..cluster.clone()
        };
        let mut changes = vec![
            Change::PutCluster(Box::new(cluster)),
            Change::PutCluster(Box::new(other)),
        ];
        let mut agents = Vec::new();
        let mut by_node = BTreeMap::new();
        for i in 0..n {
            let id = NodeId(format!("n-{:016x}", i + 1));
            let rec = NodeRecord {
                id: id.clone(),
                name: format!("sim-{i}"),
                state: NodeState::Joining,
                state_reason: "joined".into(),
                state_since_ms: 0,
                address: "10.0.0.1:7000".into(),
                agent_version: "sim".into(),
                cert_serial: 100 + i as u64,
                cert_not_after_unix: i64::MAX,
                previous_cert_serial: None,
                previous_cert_not_after_unix: 0,
                key_sha256: String::new(),
                created_ms: 0,
                joined_with_token: "t-sim".into(),
                hardware: crate::agent::hardware(i),
                cluster: Some("c-sim".into()),
                labels: Default::default(),
                taints: Vec::new(),
                protected: false,
                draining: false,
                removed_ms: None,
            };
            changes.push(Change::PutNode(Box::new(rec)));
            by_node.insert(id.clone(), i);
            let mut a = SimAgent::new(i, id, 100 + i as u64);
            let max = knobs.max_drift_ppm.unwrap_or(DEFAULT_MAX_DRIFT_PPM);
            a.drift_ppm = rng.random_range(-max..=max);
            agents.push(a);
        }
        store.commit(changes).expect("mem store");
        let weather = Weather {
            loss: rng.random_range(0.0..0.1),
            duplicate: rng.random_range(0.0..0.05),
            max_delay_ns: rng.random_range(ms(1)..=ms(30)),
        };
        let storm_until = rng.random_range(ms(4_000)..=ms(12_000));
        let mut w = Self {
            rng,
            clock,
            queue: BTreeMap::new(),
            seq: 0,
            pending_wake: vec![None; n],
            held_back: vec![Vec::new(); n],
            held_in: vec![Default::default(); n],
            agents,
            by_node,
            net: Net::new(n),
            weather,
            store,
            coord: None,
            coord_run: 0,
            params,
            param_rng: StdRng::seed_from_u64(seed ^ 0x0fe5_ce00),
            ops_rng: StdRng::seed_from_u64(seed ^ 0x0b5e_4a70),
            name_rng: StdRng::seed_from_u64(seed ^ 0x4a3e_5eed),
            taint_rng: StdRng::seed_from_u64(seed ^ 0x7a1_47ed),
            gpu_rng: StdRng::seed_from_u64(seed ^ 0x6b0_5eed),
            ledger: Ledger::default(),
            jobs: Vec::new(),
            cluster: "c-sim".into(),
            storm_until,
            settled: false,
            down_seen: BTreeMap::new(),
            report: Report {
                seed,
                agents: n,
                ..Default::default()
            },
            trace: trace.then(Vec::new),
            traced_jobs: BTreeMap::new(),
            traced_event: 0,
            knobs,
            ha_pairs,
            drain_due: false,
        };
        w.at(0, Ev::CoordStart);
        for i in 0..n {
            let t = w.rng.random_range(0..=ms(300));
            w.at(t, Ev::AgentStart(i));
        }
        let submits = w.rng.random_range(1..=6);
        for _ in 0..submits {
            let t = w.rng.random_range(ms(100)..=ms(2_000));
            w.at(t, Ev::Admin);
        }
        w.at(ms(500), Ev::Fault);
        w.at(ms(1_000), Ev::IdleCheck);
        w.at(storm_until, Ev::Settle);
        for _ in 0..w.ops_rng.random_range(0..=3) {
            let t = w.ops_rng.random_range(ms(500)..=storm_until);
            w.at(t, Ev::Operator);
        }
        for _ in 0..w.taint_rng.random_range(0..=3) {
            let t = w.taint_rng.random_range(ms(500)..=storm_until);
            w.at(t, Ev::Taint);
        }
        w
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(format!(
                "{:>8.3} s  {}",
                self.clock.ns() as f64 / 1e9,
                line()
            ));
        }
    }

    fn go(&mut self) -> Result<(), String> {
        // Long enough after the storm for every deadline to pass: a lease, the restart grace,
        // the unanswered-start deadline (20 s) and the retries after it.
        let mut end = self.storm_until + ms(32_000);
        // A job caught in a move at the very end (a lease lost to the lossy network after the
        // storm) gets more time; one still moving after three more rounds is stranded.
        for round in 0.. {
            while let Some((&(t, _), _)) = self.queue.first_key_value() {
                if t > end {
                    break;
                }
                let ((t, _), ev) = self.queue.pop_first().expect("just seen");
                self.clock.advance_to(t);
                self.report.events += 1;
                self.step(ev)?;
            }
            match self.final_check() {
                Err(e)
                    if round < 3
                        && (e.contains("is stranded in")
                            || e.contains("is recorded running as")) =>
                {
                    end += ms(10_000)
                }
                r => return r,
            }
        }
        unreachable!("the loop returns")
    }

    fn step(&mut self, ev: Ev) -> Result<(), String> {
        let now = self.clock.ns();
        match ev {
            Ev::CoordStart => {
                if self.coord.is_none() {
                    // Half the runs restart with new values; every one of them when the values
                    // in force are to be forgotten (a deliberate bug), to catch it in fewer
                    // seeds.
                    let p = if self.knobs.forget_old_fence_params {
                        1.0
                    } else {
                        0.5
                    };
                    if self.coord_run > 0 && self.param_rng.random_bool(p) {
                        self.change_fence_params();
                    }
                    self.coord_run += 1;
                    self.note(|| "coordinator starts".into());
                    let mut host = CoordHost::start(
                        self.store.clone(),
                        self.clock.clone(),
                        self.params,
                        !self.knobs.forget_restart_hold,
                        self.knobs.forget_old_fence_params,
                    );
                    host.send_before_durable = self.knobs.send_before_durable;
                    host.handover_lease_past_hold = self.knobs.handover_lease_past_hold;
                    self.coord = Some(host);
                    self.drain_due = false;
                    let run = self.coord_run;
                    self.at(now + ms(20), Ev::CoordTick(run));
                    self.coord_io(|_, _| {})?;
                }
            }
            Ev::CoordStop(run) => {
                if run == self.coord_run && self.coord.is_some() {
                    self.note(|| "the coordinator exits (planned)".into());
                    // Exiting loses what was not flushed, as a crash does.
                    self.crash_coordinator();
                    self.report.coordinator_crashes -= 1;
                }
            }
            Ev::CoordDrain(run) => {
                if run == self.coord_run && self.coord.is_some() {
                    self.drain_due = false;
                    self.coord_io(|h, out| h.drain(out))?;
                }
            }
            Ev::CoordTick(run) => {
                if run == self.coord_run && self.coord.is_some() {
                    let clock = self.clock.clone();
                    self.coord_io(|h, _| {
                        // The flusher lags: what the last tick applied is flushed now.
                        h.flush();
                        h.tick(&clock)
                    })?;
                    self.check_downs()?;
                    self.at(now + ms(20), Ev::CoordTick(run));
                }
            }
            Ev::Deliver(f) => self.deliver(f)?,
            Ev::DeliverHeld(i) => {
                if self.agents[i].hung_until > now {
                    let t = self.agents[i].hung_until;
                    self.at(t, Ev::DeliverHeld(i));
                } else {
                    while let Some(f) = self.held_in[i].pop_front() {
                        self.deliver_down(f)?;
                    }
                }
            }
            Ev::Connect(i, run) => {
                let a = &self.agents[i];
                if !a.up || a.run != run || a.removed || a.conn.is_some() {
                    return Ok(());
                }
                if a.hung_until > now {
                    let t = a.hung_until;
                    self.at(t, Ev::Connect(i, run));
                } else if a.leftovers() {
                    self.at(now + ms(50), Ev::Connect(i, run));
                } else if self.coord.is_some() && self.net.reachable(i) {
                    let conn = self.net.open(i);
                    self.note(|| format!("agent {i} connects (conn {conn})"));
                    let mut out = Vec::new();
                    self.agents[i].connected(conn, &mut out);
                    self.agent_outs(i, out)?;
                    let wait = tandem_common::transport::HELLO_ANSWER_TIMEOUT.as_nanos() as u64;
                    self.at(now + wait, Ev::HelloTimeout(i, conn));
                } else {
                    let t = now + ms(1_000) + self.rng.random_range(0..=ms(500));
                    self.at(t, Ev::Connect(i, run));
                }
            }
            Ev::Beat(i, conn) => {
                let a = &self.agents[i];
                if !a.up || a.conn != Some(conn) || !a.welcomed {
                    return Ok(());
                }
                if a.hung_until > now {
                    let t = a.hung_until;
                    self.at(t, Ev::Beat(i, conn));
                    return Ok(());
                }
                let mut out = Vec::new();
                self.note(|| format!("agent {i} beats on conn {conn}"));
                let local = self.agents[i].local(now);
                self.agents[i].beat(&self.clock, local, &mut out);
                self.agent_outs(i, out)?;
            }
            Ev::Wake(i) => {
                // A timer with a token: only the wake the agent asked for last counts (a wake
                // moved earlier leaves its later event behind, and each stale event woke the
                // agent again and scheduled another: one seed ran 53 million of them).
                if self.pending_wake[i] != Some(now) {
                    return Ok(());
                }
                self.pending_wake[i] = None;
                let mut out = Vec::new();
                let local = self.agents[i].local(now);
                self.agents[i].wake(local, &mut out);
                self.agent_outs(i, out)?;
            }
            Ev::Unhang(i) => {
                let msgs = std::mem::take(&mut self.held_back[i]);
                let out = msgs.into_iter().map(Out::Send).collect();
                self.agent_outs(i, out)?;
            }
            Ev::AgentStopTimeout(i, run) => {
                if self.agents[i].stopping() && self.agents[i].run == run {
                    self.note(|| format!("agent {i}: no hand-over answer in time; it exits"));
                    self.agent_exits(i);
                }
            }
            Ev::AgentStart(i) => {
                if !self.agents[i].up && !self.agents[i].removed {
                    self.note(|| format!("agent {i} starts"));
                    self.agents[i].powered = true;
                    let mut out = Vec::new();
                    let local = self.agents[i].local(now);
                    let n = self.agents[i].start(local, &mut out);
                    if n > 0 {
                        self.note(|| format!("agent {i} re-adopts {n} running copies"));
                        self.report.readopted += n;
                    }
                    self.agent_outs(i, out)?;
                }
            }
            Ev::Heal(i, dir) => {
                self.note(|| format!("link {i} {dir:?} heals"));
                let w = self.weather;
                let released = self.net.set_cut(&mut self.rng, w, now, i, dir, false);
                for (t, f) in released {
                    self.at(t, Ev::Deliver(f));
                }
            }
            Ev::Fault => {
                if now < self.storm_until {
                    self.fault()?;
                    let t = now + self.rng.random_range(ms(200)..=ms(1_500));
                    self.at(t, Ev::Fault);
                    if self.rng.random_bool(0.5) {
                        let t = now + self.rng.random_range(ms(100)..=ms(2_000));
                        self.at(t, Ev::Admin);
                    }
                }
            }
            Ev::Admin => self.admin()?,
            Ev::Operator => self.operator()?,
            Ev::Taint => {
                if now < self.storm_until {
                    self.taint()?;
                }
            }
            Ev::Untaint => self.untaint_all()?,
            Ev::IdleCheck => {
                for conn in self.net.idle_out(now) {
                    self.close_conn(conn)?;
                }
                self.at(now + ms(1_000), Ev::IdleCheck);
            }
            Ev::ConnTimeout(conn) => {
                let dead_agent = self.net.conns.get(&conn).is_some_and(|c| !c.open_at_agent);
                if dead_agent {
                    self.close_conn(conn)?;
                }
            }
            Ev::HelloTimeout(i, conn) => {
                // A Hello that reached a coordinator which then exited is answered by nobody,
                // and an agent that is not welcomed sends nothing more: without this wait the
                // agent would hang on that connection for good (seed 165740 stranded a job
                // in a paused cluster that way). The real agent gives up and reconnects.
                let a = &self.agents[i];
                if !a.up || a.conn != Some(conn) || a.welcomed {
                    return Ok(());
                }
                if a.hung_until > now {
                    let t = a.hung_until;
                    self.at(t, Ev::HelloTimeout(i, conn));
                    return Ok(());
                }
                self.note(|| {
                    format!("agent {i}: no answer to its Hello on conn {conn}; it closes it")
                });
                self.close_conn(conn)?;
            }
            Ev::Settle => self.settle()?,
        }
        Ok(())
    }

    fn close_conn(&mut self, conn: u64) -> Result<(), String> {
        let Some(c) = self.net.conns.remove(&conn) else {
            return Ok(());
        };
        self.note(|| format!("conn {conn} of agent {} times out", c.agent));
        if self.agents[c.agent].conn == Some(conn) {
            let now = self.clock.ns();
            let mut out = Vec::new();
            let local = self.agents[c.agent].local(now);
            self.agents[c.agent].disconnected(local, &mut self.rng, &mut out);
            self.agent_outs(c.agent, out)?;
        }
        if self.coord.as_ref().is_some_and(|h| h.has(conn)) {
            self.coord_io(|h, _| h.lost(conn))?;
        }
        Ok(())
    }

    fn deliver(&mut self, f: InFlight) -> Result<(), String> {
        let now = self.clock.ns();
        let Some(c) = self.net.conns.get(&f.conn) else {
            return Ok(());
        };
        let i = c.agent;
        match f.dir {
            Dir::Down => {
                if !c.open_at_agent || self.agents[i].conn != Some(f.conn) || !self.agents[i].up {
                    return Ok(());
                }
                if self.agents[i].hung_until > now || !self.held_in[i].is_empty() {
                    if self.held_in[i].is_empty() {
                        let t = self.agents[i].hung_until.max(now);
                        self.at(t, Ev::DeliverHeld(i));
                    }
                    self.held_in[i].push_back(f);
                    return Ok(());
                }
                self.deliver_down(f)
            }
            Dir::Up => self.deliver_up(f),
        }
    }

    /// A packet reaches agent `i`, which is not hung.
    fn deliver_down(&mut self, f: InFlight) -> Result<(), String> {
        let now = self.clock.ns();
        let Some(c) = self.net.conns.get(&f.conn) else {
            return Ok(());
        };
        let i = c.agent;
        if !c.open_at_agent || self.agents[i].conn != Some(f.conn) || !self.agents[i].up {
            return Ok(());
        }
        let mut out = Vec::new();
        match f.packet {
            Packet::Coord(m) => {
                self.note(|| format!("agent {i} gets {}", short(&format!("{m:?}"))));
                let clock = self.clock.clone();
                let local = self.agents[i].local(now);
                self.agents[i].on_msg(&clock, &mut self.rng, local, f.sent_ns, m, &mut out);
            }
            Packet::Ack { seq, lease_ms } => {
                self.note(|| format!("agent {i} gets the ack of beat {seq}"));
                let local = self.agents[i].local(now);
                self.agents[i].ack(&self.clock, &mut self.rng, local, seq, lease_ms, &mut out)
            }
            Packet::Closed(why) => {
                self.note(|| format!("agent {i}: conn {} closed: {why}", f.conn));
                if let Some(c) = self.net.conns.get_mut(&f.conn) {
                    c.open_at_agent = false;
                    if !c.open_at_coord {
                        self.net.conns.remove(&f.conn);
                    }
                }
                let local = self.agents[i].local(now);
                self.agents[i].disconnected(local, &mut self.rng, &mut out);
            }
            _ => {}
        }
        self.agent_outs(i, out)
    }

    /// A packet reaches the coordinator.
    fn deliver_up(&mut self, f: InFlight) -> Result<(), String> {
        let now = self.clock.ns();
        let Some(c) = self.net.conns.get(&f.conn) else {
            return Ok(());
        };
        let i = c.agent;
        if self.coord.is_none() {
            return Ok(());
        }
        if !c.open_at_coord {
            // A packet for a connection this process does not know: a stateless reset.
            let w = self.weather;
            for (t, f) in self.net.send(
                &mut self.rng,
                w,
                now,
                f.conn,
                Dir::Down,
                Packet::Closed("reset"),
            ) {
                self.at(t, Ev::Deliver(f));
            }
            return Ok(());
        }
        if let Packet::Agent(m) = &f.packet {
            self.note(|| {
                format!(
                    "coordinator gets from agent {i}: {}",
                    short(&format!("{m:?}"))
                )
            });
            let exits: &[tandem_common::proto::JobExitReport] = match m {
                tandem_common::proto::AgentMsg::JobExited(r) => std::slice::from_ref(r),
                tandem_common::proto::AgentMsg::Hello(h) => &h.exited,
                tandem_common::proto::AgentMsg::JobsHeld { exited, .. } => exited,
                _ => &[],
            };
            // Only the end of the copy the coordinator holds current counts: a copy
            // that ended while its node was declared down (unknown to anyone) was
            // failed over in good faith, as by any scheduler.
            let node = self.agents[i].node.clone();
            let h = self.coord.as_ref().expect("checked above");
            // A Hello from a node that is no longer a member (removed) never reaches
            // the coordinator for real: its certificate serial is revoked, and the
            // TLS handshake refuses it (`tls::is_member`). Nobody was told.
            let hello_refused = matches!(m, tandem_common::proto::AgentMsg::Hello(_))
                && !h.m.read(|t| t.nodes.contains_key(&node));
            for r in exits.iter().filter(|_| !hello_refused) {
                let current = h.m.read(|t| {
                    t.jobs
                        .get(&r.job_id)
                        .and_then(|j| j.current.as_ref())
                        .is_some_and(|p| p.node == node && p.fencing_token == r.fencing_token)
                });
                if r.cause == tandem_common::proto::ExitCause::Exited && current {
                    self.ledger.end_told(&r.job_id, now);
                }
            }
        }
        let clock = self.clock.clone();
        self.coord_io(|h, out| h.on_packet(&clock, f.conn, f.packet, out))
    }

    /// Runs `f` on the coordinator, then drains its outboxes onto the network.
    fn coord_io(
        &mut self,
        f: impl FnOnce(&mut CoordHost, &mut Vec<CoordOut>),
    ) -> Result<(), String> {
        let Some(h) = self.coord.as_mut() else {
            return Ok(());
        };
        let mut out = Vec::new();
        f(h, &mut out);

        if self.trace.is_some() {
            let events = h
                .store
                .events_after(self.traced_event, 1000)
                .unwrap_or_default();
            for e in events {
                self.traced_event = e.seq;
                self.note(|| format!("event: {}", e.message));
            }
            let Some(h) = self.coord.as_ref() else {
                return Ok(());
            };
            let m = h.m.clone();
            let by_node = &self.by_node;
            let now_jobs: Vec<(String, String)> = m.read(|t| {
                t.jobs
                    .values()
                    .map(|j| {
                        let at = j.current.as_ref().map_or("-".to_string(), |p| {
                            format!(
                                "copy {} on node {}{}",
                                p.fencing_token,
                                by_node.get(&p.node).map_or(-1, |i| *i as i64),
                                p.after.as_ref().map_or(String::new(), |a| format!(
                                    " after copy {} on node {}",
                                    a.fencing_token,
                                    by_node.get(&a.node).map_or(-1, |i| *i as i64)
                                ))
                            )
                        });
                        (j.id.clone(), format!("{:?} {at}", j.state))
                    })
                    .collect()
            });
            for (id, line) in now_jobs {
                if self.traced_jobs.get(&id) != Some(&line) {
                    self.traced_jobs.insert(id.clone(), line.clone());
                    self.note(|| format!("record {id}: {line}"));
                }
            }
        }
        let Some(h) = self.coord.as_ref() else {
            return Ok(());
        };
        let now = self.clock.ns();
        // The session tasks carry the outboxes out a moment later (each batch once it is
        // durable): a crash may come between a decision and its send.
        if !self.drain_due && h.has_output() {
            self.drain_due = true;
            let t = now + self.rng.random_range(0..=ms(2));
            let ev = Ev::CoordDrain(self.coord_run);
            self.at(t, ev);
        }
        let w = self.weather;
        for o in out {
            let (conn, p) = match o {
                CoordOut::Send(conn, p) => (conn, p),
                CoordOut::Close(conn, why) => {
                    self.net.close_at_coord(conn);
                    (conn, Packet::Closed(why))
                }
            };
            for (t, f) in self.net.send(&mut self.rng, w, now, conn, Dir::Down, p) {
                self.at(t, Ev::Deliver(f));
            }
        }
        Ok(())
    }

    fn agent_outs(&mut self, i: usize, out: Vec<Out>) -> Result<(), String> {
        let now = self.clock.ns();
        let w = self.weather;
        for o in out {
            match o {
                Out::Send(m) => {
                    if self.agents[i].hung_until > now {
                        if self.held_back[i].is_empty() {
                            let t = self.agents[i].hung_until;
                            self.at(t, Ev::Unhang(i));
                        }
                        self.held_back[i].push(m);
                    } else if let Some(conn) = self.agents[i].conn {
                        for (t, f) in
                            self.net
                                .send(&mut self.rng, w, now, conn, Dir::Up, Packet::Agent(m))
                        {
                            self.at(t, Ev::Deliver(f));
                        }
                    }
                }
                Out::Beat(seq) => {
                    if let Some(conn) = self.agents[i].conn {
                        for (t, f) in
                            self.net
                                .send(&mut self.rng, w, now, conn, Dir::Up, Packet::Beat(seq))
                        {
                            self.at(t, Ev::Deliver(f));
                        }
                    }
                }
                Out::Began {
                    job,
                    token,
                    sent_ns,
                    gpus,
                } => {
                    self.note(|| {
                        format!("copy {job}/{token} begins on node {i} with GPUs {gpus:?}")
                    });
                    self.ledger.began(&job, i, token, sent_ns, &gpus)?;
                }
                Out::Ended {
                    job,
                    token,
                    natural,
                    never,
                } => {
                    self.note(|| {
                        format!("copy {job}/{token} ends on node {i} (natural: {natural})")
                    });
                    self.ledger.ended(&job, i, token, natural, never);
                }
                Out::Wake(t) => {
                    let t = self.agents[i].global(t).max(now);
                    if self.pending_wake[i].is_none_or(|p| t < p) {
                        self.pending_wake[i] = Some(t);
                        self.at(t, Ev::Wake(i));
                    }
                }
                Out::Exit => {
                    if self.agents[i].up {
                        self.note(|| format!("agent {i} exits after its hand-over request"));
                        self.agent_exits(i);
                    }
                }
                Out::Connect(t) => {
                    let t = self.agents[i].global(t).max(now);
                    let run = self.agents[i].run;
                    self.at(t, Ev::Connect(i, run));
                }
                Out::NextBeat(t, conn) => {
                    let t = self.agents[i].global(t).max(now);
                    self.at(t, Ev::Beat(i, conn))
                }
            }
        }
        Ok(())
    }

    /// After a tick: a node newly declared down (or a removal finished) must run nothing.
    fn check_downs(&mut self) -> Result<(), String> {
        let Some(h) = &self.coord else {
            return Ok(());
        };
        let mut newly = Vec::new();
        h.m.read(|t| {
            for (id, e) in &t.nodes {
                let down = e.record.state == NodeState::Down;
                let was = self.down_seen.insert(id.clone(), down).unwrap_or(false);
                if down && !was {
                    newly.push(id.clone());
                }
            }
            for id in self.by_node.keys() {
                if !t.nodes.contains_key(id) && !t.removing.contains_key(id) {
                    let was = self.down_seen.insert(id.clone(), true).unwrap_or(false);
                    if !was {
                        newly.push(id.clone());
                    }
                }
            }
        });
        for id in newly {
            let i = self.by_node[&id];
            self.note(|| format!("coordinator: node {i} is down (or gone)"));
            self.ledger.declared_down(i)?;
        }
        Ok(())
    }
}

fn short(s: &str) -> String {
    if s.len() > 160 {
        format!(
            "{}…",
            &s[..s
                .char_indices()
                .take_while(|(i, _)| *i < 160)
                .last()
                .map_or(0, |(i, _)| i)]
        )
    } else {
        s.to_string()
    }
}
