//! One simulated agent, on the agent's real [`Lease`], the shim's real [`Guard`] and the
//! supervisor's real [`admit`] rule.
//!
//! What is modelled, as the real agent does it: a lease counted from each beat's send time;
//! a start admitted only with a lease and a token above every token seen for the job (kept on
//! disk); a copy held as starting from acceptance; exits kept on disk until acknowledged;
//! every held copy and kept exit reported in the `Hello` and when asked; a restarted agent that
//! re-adopts the running copies of its previous run whose shims have not fenced (by their own
//! clock), reports them as held and drives them with its own leases from its first ack on, and
//! waits for the other copies (their shims fence at their last deadline) before it registers. A copy's process is the simulation's: it runs for a while or for ever, and
//! obeys SIGTERM after a delay, or only SIGKILL.
//!
//! Handlers return [`Out`]s for the world to carry out; they do no I/O of their own.

use crate::clock::ms;
use rand::Rng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tandem_agent::lease::{AckOutcome, Lease};
use tandem_agent::supervisor::admit::{admit, Admission, HeldCopy};
use tandem_agent::supervisor::guard::{Action, Guard};
use tandem_agent::supervisor::protocol::{ExitReason, ShimCommand};
use tandem_common::ids::NodeId;
use tandem_common::proto::{
    AgentMsg, CoordMsg, ExitCause, HeldJob, HeldState, JobExitReport, RejectCode, StartJob,
};

/// What an agent asks the world to do.
#[derive(Debug)]
pub enum Out {
    /// Send on the agent's connection.
    Send(AgentMsg),
    /// Send a heartbeat datagram.
    Beat(u64),
    /// A copy's process began.
    Began {
        /// Job.
        job: String,
        /// Token.
        token: u64,
        /// When its start was sent.
        sent_ns: u64,
        /// The GPUs (UUIDs) its start gave it.
        gpus: Vec<String>,
    },
    /// A copy's process ended.
    Ended {
        /// Job.
        job: String,
        /// Token.
        token: u64,
        /// By itself (not killed).
        natural: bool,
        /// A restart-never job.
        never: bool,
    },
    /// Look at the copies again at this time (guard deadlines, deaths, shim start).
    Wake(u64),
    /// The agent process exits (a planned stop, after its hand-over or without one).
    Exit,
    /// Try to connect at this time.
    Connect(u64),
    /// Send the next beat at this time, on this connection.
    NextBeat(u64, u64),
}

/// How a copy's process behaves: from its command, `["sim", run_ms|"forever", code, term]`.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Runs this long, then exits by itself.
    pub runs_for_ns: Option<u64>,
    /// With this code.
    pub code: i32,
    /// Ignores SIGTERM (only SIGKILL ends it).
    pub ignores_term: bool,
}

impl Behaviour {
    /// The command that asks for this behaviour.
    pub fn command(&self) -> Vec<String> {
        vec![
            "sim".into(),
            self.runs_for_ns
                .map_or("forever".into(), |n| (n / 1_000_000).to_string()),
            self.code.to_string(),
            if self.ignores_term { "1" } else { "0" }.into(),
        ]
    }

    fn parse(cmd: &[String]) -> Self {
        let runs_for_ns = cmd
            .get(1)
            .and_then(|s| s.parse::<u64>().ok())
            .map(|m| m * 1_000_000);
        Self {
            runs_for_ns,
            code: cmd.get(2).and_then(|s| s.parse().ok()).unwrap_or(0),
            ignores_term: cmd.get(3).is_some_and(|s| s == "1"),
        }
    }
}

/// One job copy and its shim.
#[derive(Debug)]
pub struct Copy {
    /// Job.
    pub job: String,
    /// Token.
    pub token: u64,
    /// The GPUs (UUIDs) its start gave it.
    pub gpus: Vec<String>,
    /// A restart-never job.
    pub never: bool,
    /// The shim's decisions.
    pub guard: Guard,
    /// Starting (no process yet) or running.
    pub state: HeldState,
    /// The process is alive.
    pub alive: bool,
    /// The shim is gone (the copy has ended, reported or not).
    pub gone: bool,
    /// Which agent run accepted it (a restarted agent cannot reach older shims).
    pub owner: u64,
    behaviour: Behaviour,
    begins_at: u64,
    dies_at: Option<u64>,
    natural_end_at: Option<u64>,
    sent_ns: u64,
    term_delay_ns: u64,
    end: Option<(ExitCause, Option<i32>)>,
}

/// One simulated agent (and its node).
#[derive(Debug)]
pub struct SimAgent {
    /// Index in the world.
    pub index: usize,
    /// Node id.
    pub node: NodeId,
    /// Certificate serial.
    pub serial: u64,
    /// The agent process runs.
    pub up: bool,
    /// The node has power (copies can live).
    pub powered: bool,
    /// Which run of the agent this is.
    pub run: u64,
    /// Hung until (ns): handles nothing before.
    pub hung_until: u64,
    /// The connection in use.
    pub conn: Option<u64>,
    /// Welcome received on it.
    pub welcomed: bool,
    /// The node was removed: it never connects again.
    pub removed: bool,
    lease: Lease,
    seq: u64,
    heartbeat_ns: u64,
    fence_kill: Duration,
    /// Copies, alive or being reported.
    pub copies: Vec<Copy>,
    /// Exits kept on disk until acknowledged.
    pub exits: BTreeMap<(String, u64), JobExitReport>,
    /// The highest token seen per job (on disk).
    tokens: BTreeMap<String, u64>,
    /// How far this host's monotonic clock runs fast (+) or slow (−), in millionths: every
    /// time the agent and its shims see is local ([`SimAgent::local`]).
    pub drift_ppm: i64,
    /// Accepted starts waiting for a lease (the real supervisor waits 2 s for one), with when
    /// their start was sent and when the wait ends.
    waiting: Vec<(StartJob, u64, u64)>,
    /// The connection whose ack gave the lease now held, and the one each waiting start came
    /// on: a start that waits for a lease takes only one from its own session.
    lease_conn: Option<u64>,
    waiting_conn: BTreeMap<(String, u64), Option<u64>>,
    /// Ends recorded by shims (their `status.json`) that no agent saw: the next run reports
    /// them (`leftovers::ended`).
    unseen_ends: Vec<JobExitReport>,
    /// The exits the last `Hello` carried: those kept after it go once the session begins,
    /// as the real link drains the exits that came during its registration.
    in_hello: std::collections::BTreeSet<(String, u64)>,
    /// A planned stop's hand-over request: its number and when it was sent (this host's clock).
    stopping: Option<(u64, Instant)>,
}

/// The hand-over a simulated agent's planned stop asks for (the real default).
pub const HANDOVER_MS: u32 = 10_000;

/// Whether a waiting start takes only a lease from its own session, as the real supervisor
/// does (`JobStart::session`). The simulation found the bug this closes: switched off, the
/// model is the agent as it was, and two copies appear (a start that waited past a down
/// declaration ran under the next session's lease).
pub static SESSION_BOUND_WAIT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// Whether a new run reports the ends its shims recorded while no agent ran (the fix); off,
/// the model is the agent as it was, which ran a `restart: never` job twice.
pub static REPORT_UNSEEN_ENDS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// Whether a restarted agent re-adopts the running copies of its previous run (as the real
/// agent does through the shims' control sockets); off, it waits every one of them out.
pub static READOPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// How long an accepted start waits for a lease before it is refused.
const LEASE_WAIT_NS: u64 = 2_000_000_000;

fn to_ns(clock: &crate::clock::SimClock, i: Instant) -> u64 {
    clock.ns_of(i)
}

impl SimAgent {
    /// A joined node's agent, not yet started.
    pub fn new(index: usize, node: NodeId, serial: u64) -> Self {
        Self {
            index,
            node,
            serial,
            up: false,
            powered: true,
            run: 0,
            hung_until: 0,
            conn: None,
            welcomed: false,
            removed: false,
            lease: Lease::new(),
            seq: 0,
            heartbeat_ns: ms(200),
            fence_kill: Duration::from_millis(1000),
            copies: Vec::new(),
            exits: BTreeMap::new(),
            tokens: BTreeMap::new(),
            waiting: Vec::new(),
            drift_ppm: 0,
            lease_conn: None,
            waiting_conn: BTreeMap::new(),
            unseen_ends: Vec::new(),
            in_hello: Default::default(),
            stopping: None,
        }
    }

    /// This host's clock at simulated time `global`.
    pub fn local(&self, global: u64) -> u64 {
        (global as i128 + global as i128 * self.drift_ppm as i128 / 1_000_000) as u64
    }

    /// The simulated time at which this host's clock reads `local` (never before it).
    pub fn global(&self, local: u64) -> u64 {
        if local == u64::MAX {
            return u64::MAX;
        }
        let d = 1_000_000 + self.drift_ppm as i128;
        ((local as i128 * 1_000_000 + d - 1) / d) as u64
    }

    /// Starts the agent process (a fresh run: the lease and connection are gone). Returns how
    /// many running copies of the previous run it re-adopted.
    pub fn start(&mut self, now: u64, out: &mut Vec<Out>) -> u64 {
        self.up = true;
        self.run += 1;
        self.hung_until = 0;
        self.conn = None;
        self.welcomed = false;
        self.lease = Lease::new();
        self.waiting.clear();
        // Re-adoption (`supervisor::adopt`): a running copy whose shim is not ending and whose
        // deadline has not passed on this host's clock becomes this run's. It is in the first
        // `Hello`, and gets leases of this run only from its first ack on.
        let mut readopted = 0;
        if READOPT.load(std::sync::atomic::Ordering::Relaxed) {
            let run = self.run;
            for c in self.copies.iter_mut().filter(|c| {
                !c.gone
                    && c.owner != run
                    && c.state == HeldState::Running
                    && c.alive
                    && c.guard.reason().is_none()
                    && now < c.guard.deadline_ns()
            }) {
                c.owner = run;
                readopted += 1;
            }
        }
        out.push(Out::Connect(now));
        readopted
    }

    /// A planned stop (SIGTERM), as `crate::link` does it: with a registered session and jobs
    /// held, ask for a hand-over and exit once it is answered; `false`: nothing to ask, the
    /// caller lets the process exit at once.
    pub fn planned_stop(
        &mut self,
        clock: &crate::clock::SimClock,
        rng: &mut impl Rng,
        now: u64,
        out: &mut Vec<Out>,
    ) -> bool {
        if !self.up || !self.welcomed || self.conn.is_none() || self.held().is_empty() {
            return false;
        }
        let request = rng.random::<u64>();
        self.stopping = Some((request, clock.instant(now)));
        out.push(Out::Send(AgentMsg::RequestHandover {
            request,
            hold_ms: HANDOVER_MS,
        }));
        true
    }

    /// Whether a planned stop still waits for its answer.
    pub fn stopping(&self) -> bool {
        self.up && self.stopping.is_some()
    }

    /// `kill -9` of the agent: the shims live on with the last deadline they were given.
    pub fn crash(&mut self) {
        self.stopping = None;
        self.up = false;
        self.waiting.clear();
        self.conn = None;
        self.welcomed = false;
    }

    /// Power cut: the agent and every process on the node are gone at once; the disk stays.
    pub fn power_cut(&mut self, out: &mut Vec<Out>) {
        self.crash();
        self.powered = false;
        for c in &mut self.copies {
            if c.alive {
                out.push(Out::Ended {
                    job: c.job.clone(),
                    token: c.token,
                    natural: false,
                    never: c.never,
                });
            }
            c.alive = false;
            c.gone = true;
        }
        self.copies.clear();
    }

    /// Whether a copy of an earlier run is still there (the new run waits for it).
    pub fn leftovers(&self) -> bool {
        self.copies.iter().any(|c| !c.gone && c.owner != self.run)
    }

    /// The copies this run holds, as reported.
    pub fn held(&self) -> Vec<HeldJob> {
        self.copies
            .iter()
            .filter(|c| !c.gone && c.owner == self.run)
            .map(|c| HeldJob {
                job_id: c.job.clone(),
                fencing_token: c.token,
                state: c.state,
            })
            .chain(self.waiting.iter().map(|(cmd, _, _)| HeldJob {
                job_id: cmd.job_id.clone(),
                fencing_token: cmd.fencing_token,
                state: HeldState::Starting,
            }))
            .collect()
    }

    /// The kept exits, as reported.
    pub fn kept_exits(&self) -> Vec<JobExitReport> {
        self.exits.values().cloned().collect()
    }

    /// Connected on `conn`: say hello.
    pub fn connected(&mut self, conn: u64, out: &mut Vec<Out>) {
        for r in std::mem::take(&mut self.unseen_ends) {
            self.exits.insert((r.job_id.clone(), r.fencing_token), r);
        }
        self.conn = Some(conn);
        self.welcomed = false;
        self.in_hello = self.exits.keys().cloned().collect();
        out.push(Out::Send(AgentMsg::Hello(Box::new(
            tandem_common::proto::Hello {
                protocol_version: tandem_common::proto::PROTOCOL_VERSION,
                agent_version: "sim".into(),
                name: format!("sim-{}", self.index),
                node_id: Some(self.node.clone()),
                join: None,
                datagrams: true,
                jobs: self.held(),
                exited: self.kept_exits(),
                hardware: hardware(self.index),
            },
        ))));
    }

    /// The connection ended.
    pub fn disconnected(&mut self, now: u64, rng: &mut impl Rng, out: &mut Vec<Out>) {
        self.conn = None;
        self.welcomed = false;
        if self.up && !self.removed {
            out.push(Out::Connect(now + rng.random_range(ms(50)..=ms(600))));
        }
    }

    /// Sends the next beat.
    pub fn beat(&mut self, clock: &crate::clock::SimClock, now: u64, out: &mut Vec<Out>) {
        self.seq += 1;
        self.lease.on_beat_sent(self.seq, clock.instant(now));
        out.push(Out::Beat(self.seq));
        if let Some(c) = self.conn {
            out.push(Out::NextBeat(now + self.heartbeat_ns, c));
        }
    }

    /// A heartbeat ack arrived.
    #[allow(clippy::too_many_arguments)]
    pub fn ack(
        &mut self,
        clock: &crate::clock::SimClock,
        rng: &mut impl Rng,
        now: u64,
        seq: u64,
        lease_ms: u32,
        out: &mut Vec<Out>,
    ) {
        let lease = Duration::from_millis(lease_ms.into());
        if let AckOutcome::Extended(until) = self.lease.on_ack(seq, lease, clock.instant(now)) {
            self.lease_conn = self.conn;
            let until = to_ns(clock, until);
            let run = self.run;
            for c in self.copies.iter_mut().filter(|c| !c.gone && c.owner == run) {
                let acts = c.guard.on_command(ShimCommand::Lease(until), now);
                apply(c, &acts, now, out);
            }
            let (go, stay): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|(c, _, _)| {
                    !SESSION_BOUND_WAIT.load(std::sync::atomic::Ordering::Relaxed)
                        || self.waiting_conn.get(&(c.job_id.clone(), c.fencing_token))
                            == Some(&self.lease_conn)
                });
            self.waiting = stay;
            for (cmd, sent_ns, _) in go {
                self.begin_start(clock, rng, now, sent_ns, cmd, out);
            }
        }
    }

    fn refuse(&mut self, cmd: &StartJob, why: String, out: &mut Vec<Out>) {
        self.report_exit(
            JobExitReport {
                job_id: cmd.job_id.clone(),
                fencing_token: cmd.fencing_token,
                code: None,
                signal: None,
                cause: ExitCause::Refused,
                reason: format!("refused: {why}"),
            },
            out,
        );
    }

    fn report_exit(&mut self, r: JobExitReport, out: &mut Vec<Out>) {
        self.exits
            .insert((r.job_id.clone(), r.fencing_token), r.clone());
        if self.conn.is_some() && self.welcomed {
            out.push(Out::Send(AgentMsg::JobExited(r)));
        }
    }

    /// A control message from the coordinator, sent at `sent_ns`.
    pub fn on_msg(
        &mut self,
        clock: &crate::clock::SimClock,
        rng: &mut impl Rng,
        now: u64,
        sent_ns: u64,
        msg: CoordMsg,
        out: &mut Vec<Out>,
    ) {
        match msg {
            CoordMsg::HandoverGranted {
                request, lease_ms, ..
            } if self.stopping.is_some_and(|(r, _)| r == request) => {
                let (_, sent) = self.stopping.expect("checked");
                let until = sent + Duration::from_millis(lease_ms.into());
                if self.lease.extend_to(until) {
                    let until = to_ns(clock, until);
                    let run = self.run;
                    for c in self.copies.iter_mut().filter(|c| !c.gone && c.owner == run) {
                        let acts = c.guard.on_command(ShimCommand::Lease(until), now);
                        apply(c, &acts, now, out);
                    }
                }
                out.push(Out::Exit);
            }
            CoordMsg::HandoverRefused { request, .. }
                if self.stopping.is_some_and(|(r, _)| r == request) =>
            {
                out.push(Out::Exit);
            }
            CoordMsg::Reject(r) => {
                self.lease.revoke();
                if r.code == RejectCode::UnknownNode {
                    self.removed = true;
                }
                self.disconnected(now, rng, out);
            }
            CoordMsg::Welcome(w) => {
                self.welcomed = true;
                self.heartbeat_ns = ms(w.heartbeat_ms.into());
                self.fence_kill = Duration::from_millis(w.fence_kill_timeout_ms.into());
                let run = self.run;
                for c in self.copies.iter_mut().filter(|c| !c.gone && c.owner == run) {
                    let acts = c.guard.on_command(
                        ShimCommand::FenceKill {
                            timeout_ms: w.fence_kill_timeout_ms.into(),
                        },
                        now,
                    );
                    apply(c, &acts, now, out);
                }
                // Exits kept since the Hello was sent go now.
                let since: Vec<_> = self
                    .exits
                    .iter()
                    .filter(|(k, _)| !self.in_hello.contains(*k))
                    .map(|(_, r)| r.clone())
                    .collect();
                out.extend(since.into_iter().map(|r| Out::Send(AgentMsg::JobExited(r))));
                if let Some(c) = self.conn {
                    out.push(Out::NextBeat(now, c));
                }
            }
            CoordMsg::StartJob(cmd)
            | CoordMsg::StartLimited { start: cmd, .. }
            | CoordMsg::StartAs { start: cmd, .. } => {
                self.start_job(clock, rng, now, sent_ns, *cmd, out)
            }
            CoordMsg::StopJob {
                job_id,
                fencing_token,
                kill_timeout_ms,
            } => {
                if let Some(pos) = self
                    .waiting
                    .iter()
                    .position(|(c, _, _)| c.job_id == job_id && c.fencing_token == fencing_token)
                {
                    // As the supervisor does: a start still waiting for its lease is cancelled.
                    let (cmd, _, _) = self.waiting.remove(pos);
                    let why =
                        format!("job {job_id} copy {fencing_token} was stopped before it started");
                    return self.refuse(&cmd, why, out);
                }
                let run = self.run;
                let held = self.copies.iter().any(|c| {
                    !c.gone && c.owner == run && c.job == job_id && c.token == fencing_token
                });
                if !held {
                    // As the link does: a copy not held here is reported gone.
                    return self.report_exit(
                        JobExitReport {
                            job_id,
                            fencing_token,
                            code: None,
                            signal: None,
                            cause: ExitCause::Lost,
                            reason: "not held by this agent when it was told to stop it".into(),
                        },
                        out,
                    );
                }
                if let Some(c) = self.copies.iter_mut().find(|c| {
                    !c.gone && c.owner == run && c.job == job_id && c.token == fencing_token
                }) {
                    let acts = c.guard.on_command(
                        ShimCommand::Stop {
                            kill_timeout_ms: kill_timeout_ms.into(),
                        },
                        now,
                    );
                    apply(c, &acts, now, out);
                }
            }
            CoordMsg::ExitAck {
                job_id,
                fencing_token,
            } => {
                self.exits.remove(&(job_id, fencing_token));
            }
            CoordMsg::ReportJobs { request } => out.push(Out::Send(AgentMsg::JobsHeld {
                request,
                jobs: self.held(),
                exited: self.kept_exits(),
            })),
            CoordMsg::Ping { nonce } => out.push(Out::Send(AgentMsg::Pong { nonce })),
            _ => {}
        }
    }

    fn start_job(
        &mut self,
        clock: &crate::clock::SimClock,
        rng: &mut impl Rng,
        now: u64,
        sent_ns: u64,
        cmd: StartJob,
        out: &mut Vec<Out>,
    ) {
        let run = self.run;
        let held = self
            .copies
            .iter()
            .find(|c| !c.gone && c.owner == run && c.job == cmd.job_id)
            .map(|c| HeldCopy {
                token: c.token,
                state: c.state,
            })
            .or_else(|| {
                self.waiting
                    .iter()
                    .find(|(c, _, _)| c.job_id == cmd.job_id)
                    .map(|(c, _, _)| HeldCopy {
                        token: c.fencing_token,
                        state: HeldState::Starting,
                    })
            });
        match admit(held, cmd.fencing_token) {
            Admission::Accept => {}
            Admission::Running => {
                out.push(Out::Send(AgentMsg::JobStarted {
                    job_id: cmd.job_id,
                    fencing_token: cmd.fencing_token,
                }));
                return;
            }
            Admission::InProgress => return,
            // As the supervisor does: a newer start supersedes one still waiting for its lease.
            Admission::OlderHeld { held }
                if self
                    .waiting
                    .iter()
                    .any(|(c, _, _)| c.job_id == cmd.job_id && c.fencing_token == held) =>
            {
                let pos = self
                    .waiting
                    .iter()
                    .position(|(c, _, _)| c.job_id == cmd.job_id)
                    .expect("just found");
                let (old, _, _) = self.waiting.remove(pos);
                let why = format!(
                    "job {} copy {held} was stopped or superseded before it started",
                    old.job_id
                );
                self.refuse(&old, why, out);
            }
            Admission::OlderHeld { held } => {
                return self.refuse(&cmd, format!("copy {held} is still held"), out)
            }
            Admission::Stale { held } => {
                return self.refuse(&cmd, format!("a newer copy {held} is held"), out)
            }
        }
        if self
            .tokens
            .get(&cmd.job_id)
            .is_some_and(|t| *t >= cmd.fencing_token)
        {
            return self.refuse(&cmd, "a newer fencing token was seen".into(), out);
        }
        self.tokens.insert(cmd.job_id.clone(), cmd.fencing_token);
        if !self.lease.is_held(clock.instant(now)) {
            self.waiting_conn
                .insert((cmd.job_id.clone(), cmd.fencing_token), self.conn);
            self.waiting.push((cmd, sent_ns, now + LEASE_WAIT_NS));
            out.push(Out::Wake(now + LEASE_WAIT_NS));
            return;
        }
        self.begin_start(clock, rng, now, sent_ns, cmd, out);
    }

    fn begin_start(
        &mut self,
        clock: &crate::clock::SimClock,
        rng: &mut impl Rng,
        now: u64,
        sent_ns: u64,
        cmd: StartJob,
        out: &mut Vec<Out>,
    ) {
        let run = self.run;
        let deadline = to_ns(clock, self.lease.expires_at().expect("held"));
        let b = Behaviour::parse(&cmd.command);
        let never = cmd.env.get("SIM_RESTART").is_some_and(|p| p == "never");
        let begins_at = now + rng.random_range(ms(1)..=ms(20));
        self.copies.push(Copy {
            job: cmd.job_id,
            token: cmd.fencing_token,
            gpus: cmd.gpus,
            never,
            guard: Guard::new(deadline, self.fence_kill),
            state: HeldState::Starting,
            alive: false,
            gone: false,
            owner: run,
            behaviour: b,
            begins_at,
            dies_at: None,
            natural_end_at: None,
            sent_ns,
            term_delay_ns: rng.random_range(ms(1)..=ms(300)),
            end: None,
        });
        out.push(Out::Wake(begins_at));
    }

    /// Moves the copies on to `now`: shims start their processes, guards fence and kill,
    /// processes end. Copies of an earlier run end unreported (their agent is gone).
    pub fn wake(&mut self, now: u64, out: &mut Vec<Out>) {
        let run = self.run;
        let (expired, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, _, until)| now >= *until);
        self.waiting = still;
        for (cmd, _, _) in expired {
            self.refuse(&cmd, "no lease is held: jobs may not start".into(), out);
        }
        if let Some(t) = self.waiting.iter().map(|w| w.2).min() {
            out.push(Out::Wake(t));
        }
        let mut reports = Vec::new();
        for c in self.copies.iter_mut().filter(|c| !c.gone) {
            let acts = c.guard.poll(now);
            apply(c, &acts, now, out);
            if c.state == HeldState::Starting && now >= c.begins_at {
                if c.guard.reason().is_some() {
                    // Fenced or stopped before its process began.
                    c.gone = true;
                } else {
                    c.state = HeldState::Running;
                    c.alive = true;
                    c.natural_end_at = c.behaviour.runs_for_ns.map(|d| now + d);
                    out.push(Out::Began {
                        job: c.job.clone(),
                        token: c.token,
                        sent_ns: c.sent_ns,
                        gpus: c.gpus.clone(),
                    });
                    if c.owner == run {
                        reports.push(AgentMsg::JobStarted {
                            job_id: c.job.clone(),
                            fencing_token: c.token,
                        });
                    }
                }
            }
            let natural = c.natural_end_at.is_some_and(|t| now >= t);
            let killed = c.dies_at.is_some_and(|t| now >= t);
            if c.alive && (natural || killed) {
                c.alive = false;
                c.gone = true;
                let natural = natural
                    && c.dies_at
                        .is_none_or(|d| c.natural_end_at.is_some_and(|t| t <= d));
                out.push(Out::Ended {
                    job: c.job.clone(),
                    token: c.token,
                    natural,
                    never: c.never,
                });
                c.end = Some(if natural {
                    (ExitCause::Exited, Some(c.behaviour.code))
                } else {
                    (cause_of(c.guard.reason()), None)
                });
            }
            if c.gone {
                let (cause, code) = c.end.unwrap_or((cause_of(c.guard.reason()), None));
                let r = JobExitReport {
                    job_id: c.job.clone(),
                    fencing_token: c.token,
                    code,
                    signal: None,
                    cause,
                    reason: "sim".into(),
                };
                if c.owner == run && self.up {
                    reports.push(AgentMsg::JobExited(r));
                } else if REPORT_UNSEEN_ENDS.load(std::sync::atomic::Ordering::Relaxed) {
                    self.unseen_ends.push(r);
                }
            }
            if !c.gone {
                let mut next = c.guard.next_wake();
                if c.state == HeldState::Starting {
                    next = next.min(c.begins_at);
                }
                if let Some(t) = c.natural_end_at.filter(|_| c.alive) {
                    next = next.min(t);
                }
                if let Some(t) = c.dies_at.filter(|_| c.alive) {
                    next = next.min(t);
                }
                if next != u64::MAX {
                    out.push(Out::Wake(next.max(now + 1)));
                }
            }
        }
        self.copies.retain(|c| !c.gone);
        for m in reports {
            match m {
                AgentMsg::JobExited(r) => self.report_exit(r, out),
                m => {
                    if self.conn.is_some() && self.welcomed {
                        out.push(Out::Send(m));
                    }
                }
            }
        }
    }
}

/// GPUs on every simulated node.
pub const GPUS_PER_NODE: u32 = 2;

/// What simulated node `node` reports: 4 cores, 8 GiB, [`GPUS_PER_NODE`] healthy GPUs.
pub fn hardware(node: usize) -> tandem_common::hardware::HardwareReport {
    let mut h = tandem_common::hardware::HardwareReport::default();
    h.cpu.logical_cores = 4;
    h.memory.total_bytes = 8 << 30;
    h.gpus = (0..GPUS_PER_NODE)
        .map(|k| tandem_common::hardware::GpuInfo {
            index: k,
            uuid: format!("GPU-sim-{node}-{k}"),
            name: Some("Simulated GPU".into()),
            ..Default::default()
        })
        .collect();
    h
}

fn cause_of(r: Option<ExitReason>) -> ExitCause {
    match r {
        Some(ExitReason::Stopped) => ExitCause::Stopped,
        Some(ExitReason::ShimSignalled) => ExitCause::ShimSignalled,
        Some(ExitReason::Lost) => ExitCause::Lost,
        Some(ExitReason::Exited | ExitReason::OomKilled) | None => ExitCause::Exited,
        Some(ExitReason::Fenced) => ExitCause::Fenced,
    }
}

/// Carries out a guard's actions on the copy's process.
fn apply(c: &mut Copy, acts: &[Action], now: u64, out: &mut Vec<Out>) {
    for a in acts {
        match a {
            Action::Term if c.alive && !c.behaviour.ignores_term => {
                let at = now + c.term_delay_ns;
                c.dies_at = Some(c.dies_at.map_or(at, |d| d.min(at)));
                out.push(Out::Wake(at));
            }
            Action::Kill if c.alive => {
                c.dies_at = Some(now);
                out.push(Out::Wake(now));
            }
            _ => {}
        }
    }
    if c.guard.next_wake() != u64::MAX {
        out.push(Out::Wake(c.guard.next_wake().max(now)));
    }
}
