//! The agent's job supervisor: every job runs under its own small supervisor process, the
//! *shim* (`tandem-agent shim --job-dir DIR`), which holds the lease deadline and kills the job
//! when it passes — whatever has happened to the agent.
//!
//! # Why a per-job shim (the agent's side of the fencing argument)
//! DESIGN.md's argument needs every job of a node to be dead by `t_send + lease + kill_timeout`,
//! before the coordinator's `t_recv + lease + fence_grace`. The agent cannot promise that by
//! itself: a crashed agent (`kill -9`) or a frozen one (`kill -STOP`) kills nothing. So the
//! deadline lives in a process that does not share the agent's fate:
//!
//! - The agent converts its lease (`LeaseView::held_until`) into CLOCK_MONOTONIC nanoseconds and
//!   pushes it to every shim on the shim's stdin (`lease <ns>`) each time it changes. That clock
//!   is one clock for all processes of the host, so the shim's deadline *is* the agent's lease.
//! - At the deadline the shim SIGTERMs the job's process group and SIGKILLs it after the fence
//!   kill timeout (default 250 ms), records how the job ended, and exits. The three failures all
//!   end there: a partition stops the acks, so the agent's lease stops moving (or is revoked:
//!   `refresh(None)` sends `fence`); a frozen agent stops refreshing; a dead agent closes the pipe,
//!   and on EOF the shim keeps the last deadline — it never extends one by itself. A new agent
//!   run may re-adopt the shim through its control socket and push deadlines from there on
//!   ([`adopt`], which says why that keeps the argument whole); a deadline that has passed by
//!   the shim's own clock is never moved again.
//! - The shim is started in its own session (`setsid`), so a signal to the agent's process group
//!   or terminal does not reach it; the job runs in its own process group under the shim, so one
//!   `kill(-pgid)` reaches the job and everything it started. When the job's leader exits, the
//!   rest of its group is killed too (before the leader is reaped, so the group id cannot have
//!   been reused): leftover children of a finished job would be a second copy after a restart.
//! - Defence in depth: the job leader has `PR_SET_PDEATHSIG = SIGKILL`, so if the shim itself is
//!   killed outright (OOM) the leader dies with it; and when the agent sees a shim die without a
//!   recorded end, it kills the job's group itself ([`ExitReason::Lost`]). And if a shim has
//!   not ended its job by the agent's own lease end plus the fence kill timeout (the shim is
//!   SIGSTOPped, wedged or starved), the agent kills the job's cgroup and group itself
//!   ([`backstop`]), then wakes the shim to record the end (and SIGKILLs it a second later if
//!   it still does not).
//!
//! Why not the alternatives from the issue: a parent-death signal on the job alone covers a
//! crash but not a hang, and kills at once rather than at the deadline; systemd's watchdog covers
//! a hang, but only after `WatchdogSec` (longer than a 1 s lease), and with `KillMode=control-group`
//! every agent restart would kill every job.
//!
//! Converting an `Instant`: it is opaque, so [`protocol::instant_to_monotonic_ns`] reads
//! `clock_gettime(CLOCK_MONOTONIC)` and then `Instant::now()` and carries the offset across.
//! Reading the clock first means the pair's error can only move a deadline earlier, never later.
//! The shim then only compares that number with `clock_gettime` again.
//!
//! Where the host allows (see [`crate::containment`]), the job also runs in a cgroup of its
//! own, and the shim's SIGTERM goes to every process in it and its SIGKILL to the whole cgroup
//! (`cgroup.kill`): a job that calls `setsid`, or runs a child in its own group, is fenced
//! too, and the shim records the end only once the cgroup is empty. The shim itself sits in a
//! sibling leaf of the job's cgroup, so "the job's cgroup is populated" means "something of
//! this copy is alive" to a restarted agent.
//!
//! What this does not cover, said plainly: in `process-group` mode (no usable cgroups) a job
//! that calls `setsid` itself leaves its process group and escapes the fence; and like every lease on
//! CLOCK_MONOTONIC, a host that is *suspended* stops the clock, so the agent's lease must be
//! revoked on resume by the coordinator's refusal. Jobs that write shared state should check
//! `TANDEM_FENCING_TOKEN` at the storage.
//!
//! # Fencing tokens
//! Each job dir keeps `fencing_token`, the highest token seen for that job, written durably
//! before a shim is started, so it survives an agent restart. `start` refuses a token lower than
//! it, and `stop` refuses a token lower than the running copy's (see
//! [`protocol::token_allowed`]). While a copy is held (running, or its start accepted and in
//! progress), a start with another token is refused, and one repeated with the held copy's
//! token is answered as the original is, never refused ([`admit`]). The shim holds a `flock` on
//! the job dir for its whole life, so a shim left over from before an agent restart (still running until its deadline) makes a new
//! `start` fail with [`SupervisorError::Busy`] instead of running the job twice.
//!
//! # systemd: `KillMode=process`
//! Use `KillMode=process` for the agent's unit: on `systemctl restart` or a watchdog restart
//! systemd then signals only the agent, and the shims (and jobs) are left alone. They are not left
//! unbounded: each holds the lease deadline the old agent gave it (one lease, or the hand-over
//! lease of a planned stop, see `crate::link`), and fences its job then unless the new agent
//! re-adopted it ([`adopt`]) and pushed a lease of its own. With the default `control-group`
//! systemd would SIGTERM every job at once on each restart, and SIGKILL them with the unit's
//! timeout; `mixed` is the same for the jobs. A shim that receives SIGTERM, SIGINT or SIGHUP
//! (e.g. `systemctl stop` with `control-group`) stops its job first, with the fence kill
//! timeout, then exits.
//!
//! # The job's working dir (`STATE_DIR/work/<job id>/`)
//! A job runs in a dir of its own unless its spec names one, never in its job dir: a job that
//! tidies its working dir (`rm -f ./*`, or `..` of it) then reaches no file of the supervisor.
//! It is not a security boundary while jobs run as root (an absolute path still reaches the job
//! dir); the job's cgroup is what says whether a copy lives.
//!
//! # Files in a job dir (`STATE_DIR/jobs/<job id>/`)
//! `spec.json` (what to run, mode 0600: it holds the environment), `fencing_token`, `lock`,
//! `status.json` (running or exited with code or signal, token, pid, times; written atomically),
//! `pid`, `shim.log` (the shim's own log), `control.sock` (the shim's control socket, 0600,
//! while the shim lives and its job is not ending), and `stdout.log` / `stderr.log`, each
//! rotated to `.1` at the size cap (8 MiB by default), so a job keeps its last 8–16 MiB of each
//! stream.
//!
//! # The shim protocol
//! Agent to shim, one line each on stdin: `lease <monotonic ns>`, `fence`, `stop <kill ms>`,
//! `fencekill <ms>` (the coordinator's fence kill timeout changed; sent on every change).
//! Shim to agent, once on stdout: `started <pid>`, `busy`, or `failed <reason>`. The end is read
//! from `status.json` once the shim has exited. On the control socket the shim greets each
//! connection with `shim 1 <job id> <token> <pid> <started ms> <running|ending> <deadline ns>
//! <fence kill ms>` ([`protocol::ShimHello`]), then takes the same lines as on stdin; it follows
//! only its newest connection.

pub mod admit;
pub mod adopt;
mod adopted_proc;
pub mod backstop;
mod follow;
pub mod guard;
mod held;
pub mod housekeeping;
pub mod logs;
pub mod protocol;
pub mod shim;
mod shim_control;
mod users;

mod api;

pub use api::{JobExit, JobStart, LogTail, Supervisor};
pub use held::StartedJob;
pub use protocol::{ExitReason, JobState, JobStatus};

use std::path::PathBuf;

/// The fence kill timeout when none is configured.
pub const DEFAULT_FENCE_KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

/// What went wrong in the supervisor or a shim.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The job (id, command, environment, GPUs) cannot be run as given.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The command carries a fencing token lower than one already seen for the job.
    #[error("job {job_id}: fencing token {token} is older than {highest}")]
    StaleToken {
        /// The job.
        job_id: String,
        /// The refused token.
        token: u64,
        /// The highest token seen for it.
        highest: u64,
    },
    /// This supervisor already holds another copy of the job (running, or its start in
    /// progress).
    #[error("job {job_id} already runs here with fencing token {token}")]
    AlreadyRunning {
        /// The job.
        job_id: String,
        /// The held copy's token.
        token: u64,
    },
    /// Not a failure: the same copy's start is already in progress, and that start answers.
    #[error("job {job_id}: the start of the copy with fencing token {token} is in progress")]
    StartInProgress {
        /// The job.
        job_id: String,
        /// The copy's token.
        token: u64,
    },
    /// This supervisor does not run the job.
    #[error("job {job_id} does not run here")]
    NotRunning {
        /// The job.
        job_id: String,
    },
    /// There is no record of the job in the state dir.
    #[error("job {job_id} is unknown here")]
    UnknownJob {
        /// The job.
        job_id: String,
    },
    /// No lease is held (or it has run out): no job may start.
    #[error("{}", tandem_common::proto::REFUSED_NO_LEASE)]
    NoLease,
    /// A stop, or a newer start, came while the start waited for its lease: it never ran.
    #[error("job {job_id} copy {token} was stopped or superseded before it started")]
    StoppedBeforeStart {
        /// The job.
        job_id: String,
        /// The copy's token.
        token: u64,
    },
    /// A shim (from before an agent restart) still holds the job's dir until its deadline.
    #[error("job {job_id}: an earlier shim still holds its job dir")]
    Busy {
        /// The job.
        job_id: String,
    },
    /// The shim ran but could not start the job (no such program, bad workdir, lease ran out).
    #[error("job {job_id} could not start: {reason}")]
    SpawnFailed {
        /// The job.
        job_id: String,
        /// The shim's reason.
        reason: String,
    },
    /// The shim itself could not be started or did not answer.
    #[error("job {job_id}: shim failed: {reason}")]
    Shim {
        /// The job.
        job_id: String,
        /// What happened.
        reason: String,
    },
    /// A state file holds something unreadable.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Local I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}
