//! The messages agents and the coordinator exchange.
//!
//! Two channels carry them (DESIGN.md, "Wire protocol"):
//! - one bidirectional **control stream** per connection, in length-prefixed frames
//!   (`AgentMsg` up, `CoordMsg` down), for everything that must arrive: registration, hardware
//!   reports, the answer to an on-demand ping;
//! - QUIC **datagrams** for heartbeats (`AgentDatagram` up, `CoordDatagram` down), which must
//!   never wait behind a slow stream and are worthless once stale, so they are never
//!   retransmitted. Where a path has no datagram support the same heartbeat messages travel as
//!   frames on one unidirectional stream each way instead.
//!
//! # Version rule
//! The first frame on a control stream is always `AgentMsg::Hello`, and `Hello` begins with
//! `protocol_version`. Both stay first in every future version, so that
//! [`crate::codec::peek_protocol_version`] can read the version of a peer whose other messages it
//! cannot decode, and answer it with `CoordMsg::Reject` (also kept first) instead of failing.

use crate::hardware::{HardwareDelta, HardwareReport};
use crate::ids::NodeId;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Version 2: `Hello` lists starts in progress and
/// exits the coordinator has not acknowledged; exits carry an [`ExitCause`] and are
/// acknowledged with [`CoordMsg::ExitAck`]; [`CoordMsg::ReportJobs`] asks for what is held.
/// Version 3 adds one first frame, [`AgentMsg::CheckJoin`] (answered by
/// [`CoordMsg::JoinCheck`]), and changes nothing else: a version-3 coordinator still serves
/// agents of version 2 ([`MIN_PROTOCOL_VERSION`]), so coordinators are upgraded first. A
/// version-2 coordinator answers a `CheckJoin` with a `Reject` ("the first frame is not a
/// Hello"), which `tandem-agent check` reports as a coordinator too old to check against.
/// Version 4 adds [`CoordMsg::StartLimited`], a start with the job's resources as limits; a
/// coordinator sends it only to sessions of version 4 or later, and a plain `StartJob` to
/// older ones.
/// Version 5 lets jobs ride through agent restarts: a coordinator says
/// [`CoordMsg::Speaks`] after `Welcome` to sessions of version 5 or later, and only then does
/// an agent send [`AgentMsg::Readopted`] (it continued with copies a previous run of it left)
/// or [`AgentMsg::RequestHandover`] (a planned restart asks for a lease that outlives it,
/// answered by [`CoordMsg::HandoverGranted`] or [`CoordMsg::HandoverRefused`]). Either side
/// older than 5 sees none of them: an agent restart is then ridden through only within the
/// lease it held.
/// Version 6 adds [`AgentMsg::Usage`] (every ~10 s: the node's containment, the disk use of its jobs and each
/// job's CPU and memory, from its cgroup) and [`CoordMsg::StartAs`] (a start that names the
/// job's group as well as its user); a coordinator sends `StartAs` only to sessions of version
/// 6 or later ([`CoordMsg::for_version`]), and an agent sends `Usage` only to a coordinator
/// that accepted its version-6 `Hello` (coordinators are upgraded first).
pub const PROTOCOL_VERSION: u16 = 6;

/// The first version that knows [`CoordMsg::Speaks`], [`AgentMsg::Readopted`] and the
/// hand-over messages.
pub const HANDOVER_PROTOCOL_VERSION: u16 = 5;

/// The oldest agent protocol version a coordinator of this build still serves.
pub const MIN_PROTOCOL_VERSION: u16 = 2;

/// The first version that knows [`AgentMsg::CheckJoin`].
pub const CHECK_PROTOCOL_VERSION: u16 = 3;

/// The reason of an exit report (cause `Exited`) for a job its cgroup's OOM killer ended.
pub const REASON_OOM_KILLED: &str = "oom_killed";

/// The first version that knows [`CoordMsg::StartLimited`].
pub const LIMITS_PROTOCOL_VERSION: u16 = 4;

/// The first version that knows [`AgentMsg::Usage`] and [`CoordMsg::StartAs`].
pub const USAGE_PROTOCOL_VERSION: u16 = 6;

/// A job's resources, as limits its node enforces (its cgroup's memory and CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLimits {
    /// Memory, bytes (0: no limit).
    pub memory_bytes: u64,
    /// CPU, thousandths of a core (0: no limit).
    pub cpu_millis: u64,
}

/// Messages from an agent to the coordinator on the control stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// First frame of every connection. Keep this variant first (see the version rule).
    Hello(Box<Hello>),
    /// The sections of the hardware report that changed since the last one sent (the
    /// coordinator applies it to what it has).
    HardwareUpdate(Box<HardwareDelta>),
    /// The answer to [`CoordMsg::Ping`].
    Pong {
        /// The nonce of the ping.
        nonce: u64,
    },
    /// The agent is shutting down on purpose and leaves the cluster.
    Goodbye {
        /// Why, in words.
        reason: String,
    },
    /// A job copy started.
    JobStarted {
        /// The job.
        job_id: String,
        /// The copy's fencing token.
        fencing_token: u64,
    },
    /// A job copy ended (or was never started: see `reason`).
    JobExited(JobExitReport),
    /// The answer to [`CoordMsg::TailLogs`].
    Logs {
        /// The request it answers.
        request: u64,
        /// The last lines of stdout.
        stdout: Vec<String>,
        /// The last lines of stderr.
        stderr: Vec<String>,
        /// Why the logs could not be read, if they could not.
        error: Option<String>,
    },
    /// A request for a fresh certificate for a new key, sent over the live connection before
    /// the current certificate runs out (at about two thirds of its life). Answered with
    /// [`CoordMsg::CertificateRenewed`] or [`CoordMsg::RenewalRefused`]; the connection and its
    /// lease carry on untouched either way.
    RenewCertificate {
        /// A PEM certificate signing request for the new key. Only its public key is used.
        csr_pem: String,
    },
    /// The answer to [`CoordMsg::ReportJobs`]: every job copy the agent holds now, the same
    /// list a `Hello` carries.
    JobsHeld {
        /// The request it answers.
        request: u64,
        /// Every copy held (running, or a start accepted and in progress).
        jobs: Vec<HeldJob>,
        /// Exits not acknowledged yet, oldest first.
        exited: Vec<JobExitReport>,
    },
    /// A first frame instead of `Hello` (version 3): asks whether a join with this token (or
    /// this connection's certificate) would be admitted, without joining. Answered with
    /// [`CoordMsg::JoinCheck`], then the connection closes. The coordinator records nothing:
    /// no token use, no node. Keep it after every older variant (its index is on the wire), and
    /// keep `protocol_version` its first field, as `Hello`'s.
    CheckJoin(Box<CheckJoin>),
    /// (Version 5, only once the coordinator said [`CoordMsg::Speaks`].) This agent run
    /// re-adopted these running copies from the run before it (an agent restart); its `Hello`
    /// reported them already. For the record: the coordinator says whether they continue.
    Readopted {
        /// The copies re-adopted.
        jobs: Vec<ReadoptedJob>,
    },
    /// (Version 5, only once the coordinator said [`CoordMsg::Speaks`].) A planned restart of
    /// the agent: asks for a lease that lasts until a new agent run has taken over, about
    /// `hold_ms` from now. The coordinator records "this node is not declared down before
    /// T" durably first, and only then answers with [`CoordMsg::HandoverGranted`].
    RequestHandover {
        /// Echoed in the answer.
        request: u64,
        /// How long the restart may take, ms.
        hold_ms: u32,
    },
    /// What the node's jobs use (version 6): sent once after `Welcome` and then every ~10 s,
    /// never with a heartbeat. Not durable: the coordinator keeps the latest in memory only.
    /// Keep it after every older variant.
    Usage(Box<NodeUsage>),
}

/// A node's periodic usage report ([`AgentMsg::Usage`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeUsage {
    /// How the agent contains jobs: `cgroup-v2`, `cgroup-hybrid` or `process-group`.
    pub containment: String,
    /// Why, or where its cgroup tree is, in words.
    pub containment_note: String,
    /// Bytes on disk of the jobs' dirs (`STATE_DIR/jobs`, logs included) and default working
    /// dirs (`STATE_DIR/work`).
    pub jobs_disk_bytes: u64,
    /// Finished jobs' dirs removed by retention since the agent started.
    pub jobs_retired: u64,
    /// The copies held now, each with what its cgroup counts (none in `process-group` mode).
    pub jobs: Vec<JobUsage>,
}

/// One job copy's use of the node, from its cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUsage {
    /// The job.
    pub job_id: String,
    /// The copy's fencing token.
    pub fencing_token: u64,
    /// CPU time used so far, microseconds (user + system, every process of the copy).
    pub cpu_usec: Option<u64>,
    /// Memory charged to it now, bytes.
    pub memory_bytes: Option<u64>,
    /// The most memory charged to it at once, bytes.
    pub memory_peak_bytes: Option<u64>,
}

/// A running copy an agent run re-adopted from the run before it ([`AgentMsg::Readopted`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadoptedJob {
    /// The job.
    pub job_id: String,
    /// The copy's fencing token (unchanged: it is the same copy).
    pub fencing_token: u64,
    /// The job's main process, on the node.
    pub pid: u32,
    /// When the copy started, Unix ms.
    pub started_unix_ms: u64,
}

/// What `tandem-agent check` asks (see [`AgentMsg::CheckJoin`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckJoin {
    /// Must stay the first field (see the version rule).
    pub protocol_version: u16,
    /// The node name the agent would join with.
    pub name: String,
    /// The token to judge. `None`: judge the client certificate this connection presented.
    pub token: Option<CheckToken>,
    /// What the machine has, as a join would report it.
    pub hardware: HardwareReport,
}

/// A join token's id and secret, as a check carries them. The agent sends them only to a
/// coordinator whose CA matched the token's pin, as for a join.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckToken {
    /// The token's public id.
    pub token_id: String,
    /// The token's secret.
    pub token_secret: String,
}

/// One step's verdict in a [`JoinCheck`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The step passed; the words say what was found (e.g. the cluster's name).
    Ok(String),
    /// The step failed; the reason is the one a real join would give.
    Failed(String),
    /// The step was not judged (an earlier one failed, or it does not apply).
    Skipped(String),
}

impl Verdict {
    /// Whether the step passed.
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok(_))
    }
}

/// The coordinator's answer to [`AgentMsg::CheckJoin`]: the steps it judges, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinCheck {
    /// The token is known, its secret right, not expired, revoked or used up; or, for a
    /// certificate, that it names a member that was not removed.
    pub token: Verdict,
    /// The cluster the token names exists (`Ok` too when it names none).
    pub cluster: Verdict,
    /// The node would be admitted: its name, and the cluster's minimums and same-model rule.
    pub admission: Verdict,
}

/// The reason an agent gives for a start it refused because it held no lease (in
/// [`JobExitReport::reason`], after `refused: `). The job did not run: the coordinator places it
/// again instead of counting it as the job's exit.
pub const REFUSED_NO_LEASE: &str = "no lease is held: jobs may not start";

/// Why a job copy ended, as the agent saw it. Stable: the coordinator acts on it (an exit of
/// the job's own doing counts against its restart policy; a fence or a loss does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExitCause {
    /// The job ended by itself (its code or signal says how).
    Exited,
    /// It was stopped on the coordinator's order (`StopJob`).
    Stopped,
    /// Its lease ran out, or the agent held none: the agent fenced it.
    Fenced,
    /// Its supervisor was told to terminate (SIGTERM, SIGINT, SIGHUP) and stopped it.
    ShimSignalled,
    /// Its supervisor died without recording an end; the agent killed what was left.
    Lost,
    /// The start was refused before the job ran (`reason` says why).
    Refused,
}

impl ExitCause {
    /// Whether the job itself ended (its restart policy decides what follows), as opposed to
    /// Tandem ending it or never starting it.
    pub fn by_the_job(self) -> bool {
        matches!(self, ExitCause::Exited)
    }

    /// The stable lower-case name (`exited`, `stopped`, `fenced`, `shim_signalled`, `lost`,
    /// `refused`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExitCause::Exited => "exited",
            ExitCause::Stopped => "stopped",
            ExitCause::Fenced => "fenced",
            ExitCause::ShimSignalled => "shim_signalled",
            ExitCause::Lost => "lost",
            ExitCause::Refused => "refused",
        }
    }
}

/// How a job copy ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobExitReport {
    /// The job.
    pub job_id: String,
    /// The copy's fencing token.
    pub fencing_token: u64,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Why, as a constant the coordinator acts on.
    pub cause: ExitCause,
    /// Why, in words (`exited`, `stopped`, `fenced: lease expired`, `refused: ...`).
    pub reason: String,
}

/// A job copy an agent holds, reported at registration and in [`AgentMsg::JobsHeld`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldJob {
    /// The job.
    pub job_id: String,
    /// The copy's fencing token.
    pub fencing_token: u64,
    /// Running, or a start accepted and still in progress.
    pub state: HeldState,
}

/// Where a held copy stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HeldState {
    /// The start was accepted and is in progress (the job may not run yet).
    Starting,
    /// The job runs.
    Running,
}

/// The coordinator's order to start a job copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartJob {
    /// The job.
    pub job_id: String,
    /// Its name.
    pub job_name: String,
    /// The placement's fencing token: the agent refuses one lower than it has seen.
    pub fencing_token: u64,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Environment.
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// GPU UUIDs given to it.
    pub gpus: Vec<String>,
}

/// The agent's introduction: who it is, or the token it joins with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Must stay the first field (see the version rule).
    pub protocol_version: u16,
    /// The agent's build version, for display.
    pub agent_version: String,
    /// The node name the agent wants (its host name by default).
    pub name: String,
    /// The node id from the agent's certificate; `None` while joining.
    pub node_id: Option<NodeId>,
    /// Present only on the first connection of a new node, which has no certificate yet.
    pub join: Option<JoinRequest>,
    /// Whether the agent can send and receive QUIC datagrams on this path.
    pub datagrams: bool,
    /// Every job copy the agent holds or has accepted a start for (starts in progress
    /// included).
    pub jobs: Vec<HeldJob>,
    /// Exits the coordinator has not acknowledged yet ([`CoordMsg::ExitAck`]), oldest first.
    /// The agent keeps them on disk until they are: an exit is never lost to a broken link
    /// or a restart of either side.
    pub exited: Vec<JobExitReport>,
    /// What the machine has.
    pub hardware: HardwareReport,
}

/// A new node's request for a certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's public id.
    pub token_id: String,
    /// The token's secret; the coordinator keeps only its hash.
    pub token_secret: String,
    /// A PEM certificate signing request for the agent's own key. Only its public key is used.
    pub csr_pem: String,
}

/// Messages from the coordinator to an agent on the control stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CoordMsg {
    /// The coordinator refuses the connection; it closes right after. Keep this variant first.
    Reject(Reject),
    /// Registration accepted: the node is a member and may heartbeat.
    Welcome(Welcome),
    /// Join accepted: here is the node's certificate. The agent reconnects with it.
    Joined(Joined),
    /// An on-demand liveness check; answer with [`AgentMsg::Pong`].
    Ping {
        /// Echoed in the answer.
        nonce: u64,
    },
    /// Start a job copy.
    StartJob(Box<StartJob>),
    /// Stop a job copy (SIGTERM, then SIGKILL after `kill_timeout_ms`).
    StopJob {
        /// The job.
        job_id: String,
        /// The copy's fencing token.
        fencing_token: u64,
        /// Time between SIGTERM and SIGKILL.
        kill_timeout_ms: u32,
    },
    /// Send the end of a job's logs ([`AgentMsg::Logs`]).
    TailLogs {
        /// Echoed in the answer.
        request: u64,
        /// The job.
        job_id: String,
        /// How many lines of each stream.
        lines: u32,
    },
    /// The answer to [`AgentMsg::RenewCertificate`]: the new certificate, already recorded as
    /// the node's. The agent uses it from its next connection on.
    CertificateRenewed {
        /// The new certificate (same node id, new serial), PEM.
        cert_pem: String,
        /// When it runs out (Unix s).
        not_after_unix: u64,
    },
    /// The renewal was refused; the current certificate stays valid until it runs out.
    RenewalRefused {
        /// Why, in words.
        reason: String,
    },
    /// The exit of this copy is recorded durably: the agent may forget it. Sent for every
    /// exit report, current or stale, once the coordinator has decided on it.
    ExitAck {
        /// The job.
        job_id: String,
        /// The copy's fencing token.
        fencing_token: u64,
    },
    /// Report every job copy held now ([`AgentMsg::JobsHeld`]). The coordinator asks before
    /// it acts on a copy it has not heard about (a start unanswered past its deadline).
    ReportJobs {
        /// Echoed in the answer.
        request: u64,
    },
    /// The answer to [`AgentMsg::CheckJoin`] (version 3). Keep it after every older variant.
    JoinCheck(JoinCheck),
    /// Start a job copy within `limits`, as `user` (version 4; older sessions get
    /// [`CoordMsg::StartJob`]). Keep it after every older variant.
    StartLimited {
        /// The start.
        start: Box<StartJob>,
        /// The job's resources, enforced.
        limits: JobLimits,
        /// The user the job asks to run as (`None`: the node's default); the node refuses one
        /// its agent does not allow.
        user: Option<String>,
    },
    /// (Version 5.) Sent right after `Welcome` to sessions of version 5 or later: the
    /// coordinator's protocol version, so the agent knows which messages it may send.
    Speaks {
        /// The coordinator's protocol version.
        protocol_version: u16,
    },
    /// (Version 5.) The answer to [`AgentMsg::RequestHandover`]: the node is not declared
    /// down before `until_unix_ms` (recorded durably before this was sent), and the agent may
    /// hold a lease of `lease_ms`, counted from when it sent the request, which ends before
    /// that with the fence kill timeout and clock drift to spare.
    HandoverGranted {
        /// The request it answers.
        request: u64,
        /// The hand-over lease, ms.
        lease_ms: u32,
        /// The end of the node's hold, Unix ms (for the record).
        until_unix_ms: u64,
    },
    /// (Version 5.) The hand-over was refused (too long, the node not alive on this session,
    /// the store failing); the agent exits with the lease it holds.
    HandoverRefused {
        /// The request it answers.
        request: u64,
        /// Why, in words.
        reason: String,
    },
    /// Start a job copy within `limits`, as `user` and `group` (version 6; see
    /// [`CoordMsg::for_version`] for older sessions). Keep it after every older variant.
    StartAs {
        /// The start.
        start: Box<StartJob>,
        /// The job's resources, enforced.
        limits: JobLimits,
        /// The user the job asks to run as (`None`: the node's default).
        user: Option<String>,
        /// The group the job asks to run as (`None`: the user's, or the node's default).
        group: Option<String>,
    },
}

impl CoordMsg {
    /// The job and token of a start, of either kind.
    pub fn started_copy(&self) -> Option<(&str, u64)> {
        match self {
            CoordMsg::StartJob(s)
            | CoordMsg::StartLimited { start: s, .. }
            | CoordMsg::StartAs { start: s, .. } => Some((&s.job_id, s.fencing_token)),
            _ => None,
        }
    }

    /// This message as a session of protocol `version` understands it: a limited start is a
    /// plain start before [`LIMITS_PROTOCOL_VERSION`]; a start with a group is a limited start
    /// before [`USAGE_PROTOCOL_VERSION`]. There, a job that names a group is sent as the user
    /// `USER:GROUP`, which no older node allows: it refuses the start with the reason, instead
    /// of running the job under another group than the one it asked for.
    pub fn for_version(self, version: u16) -> CoordMsg {
        let m = match self {
            CoordMsg::StartAs {
                start,
                limits,
                user,
                group,
            } if version < USAGE_PROTOCOL_VERSION => CoordMsg::StartLimited {
                start,
                limits,
                user: match group {
                    None => user,
                    Some(g) => Some(format!("{}:{g}", user.unwrap_or_default())),
                },
            },
            m => m,
        };
        match m {
            CoordMsg::StartLimited { start, .. } if version < LIMITS_PROTOCOL_VERSION => {
                CoordMsg::StartJob(start)
            }
            m => m,
        }
    }
}

/// Why a connection was refused. Stable: agents act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    /// The peer speaks a protocol version this coordinator does not.
    UnsupportedVersion,
    /// The join token is unknown, wrong, expired or used up.
    BadToken,
    /// The node is unknown or was removed; its certificate is no longer valid.
    UnknownNode,
    /// The message does not fit the connection's state (e.g. `Hello` naming another node).
    ProtocolViolation,
    /// The node does not meet a rule of its cluster.
    NotAdmitted,
    /// The coordinator cannot serve now (retry later).
    Unavailable,
}

/// A refusal with its reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    /// What kind of refusal.
    pub code: RejectCode,
    /// The reason in words, for the agent's log.
    pub reason: String,
}

/// Registration accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The node's id.
    pub node_id: NodeId,
    /// The node's name as the coordinator records it.
    pub name: String,
    /// Identifies this connection; heartbeats of older sessions are ignored.
    pub session: u64,
    /// How often to heartbeat.
    pub heartbeat_ms: u32,
    /// The lease each acknowledged heartbeat grants.
    pub lease_ms: u32,
    /// How long the agent gives a job between SIGTERM and SIGKILL when it fences itself.
    pub fence_kill_timeout_ms: u32,
}

/// A new node's identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// The id the coordinator chose.
    pub node_id: NodeId,
    /// The node's name.
    pub name: String,
    /// The node's certificate, signed by the coordinator's CA.
    pub cert_pem: String,
    /// The CA certificate, which the agent trusts from now on.
    pub ca_pem: String,
}

/// Heartbeats, agent to coordinator, as datagrams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentDatagram {
    /// One beat.
    Heartbeat(Heartbeat),
}

/// One heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Grows by one each beat; the ack echoes it.
    pub seq: u64,
    /// The round trip of the last acknowledged beat, in microseconds (0 if none yet).
    pub last_rtt_us: u32,
    /// A small load summary.
    pub load: LoadSummary,
}

/// What rides with every beat: small on purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// CPU usage in hundredths of a percent of the whole machine.
    pub cpu_centi_percent: u16,
    /// Available memory in MiB.
    pub memory_available_mib: u32,
    /// Jobs running now.
    pub jobs_running: u16,
}

/// Heartbeat answers, coordinator to agent, as datagrams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CoordDatagram {
    /// The beat `seq` was seen in time: the lease runs `lease_ms` from when it was sent.
    HeartbeatAck {
        /// The acknowledged beat.
        seq: u64,
        /// The lease granted.
        lease_ms: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> Box<StartJob> {
        Box::new(StartJob {
            job_id: "j".into(),
            job_name: "n".into(),
            fencing_token: 3,
            command: vec!["true".into()],
            env: Default::default(),
            workdir: None,
            gpus: vec![],
        })
    }

    fn start_as(user: Option<&str>, group: Option<&str>) -> CoordMsg {
        CoordMsg::StartAs {
            start: start(),
            limits: JobLimits::default(),
            user: user.map(Into::into),
            group: group.map(Into::into),
        }
    }

    #[test]
    fn a_start_with_a_group_is_never_sent_to_an_old_node_as_one_without() {
        let m = start_as(Some("svc"), Some("video"));
        assert_eq!(m.clone().for_version(USAGE_PROTOCOL_VERSION), m);
        // Version 4 and 5: a limited start whose user no node allows ("svc:video"): refused
        // there with the reason, never run under the user's own group.
        let CoordMsg::StartLimited { user, .. } = m.clone().for_version(5) else {
            panic!("not a limited start");
        };
        assert_eq!(user.as_deref(), Some("svc:video"));
        let CoordMsg::StartLimited { user, .. } = start_as(None, Some("g")).for_version(4) else {
            panic!("not a limited start");
        };
        assert_eq!(user.as_deref(), Some(":g"));
        let CoordMsg::StartLimited { user, .. } = start_as(Some("svc"), None).for_version(4) else {
            panic!("not a limited start");
        };
        assert_eq!(user.as_deref(), Some("svc"));
        assert!(matches!(m.clone().for_version(3), CoordMsg::StartJob(_)));
        assert_eq!(m.started_copy(), Some(("j", 3)));
    }
}
