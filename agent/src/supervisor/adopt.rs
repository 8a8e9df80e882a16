//! Re-adopting the shims of an earlier agent run, so that an agent restart (a crash,
//! `kill -9`, an upgrade, `systemctl restart`) stops no job.
//!
//! Each shim listens on a unix socket in its job dir ([`CONTROL_SOCKET`], mode 0600; the job
//! dir is 0700 and the agent's, and a job never runs in it, so a job, which may run as
//! another user, cannot reach it). A new agent, before its first registration, connects to
//! every shim that still lives, reads its greeting ([`ShimHello`]: job, token, pid, start,
//! state, deadline) and from then on drives it over that connection exactly as over the stdin
//! of a shim it started: lease deadlines, `fence`, `stop`, `fencekill`; its end is reported
//! the same way (the connection closes when the shim exits; its `status.json` says how).
//!
//! # Why nothing runs twice
//! - Adoption happens only before the agent's first registration, while it holds no lease
//!   ([`Supervisor::adopt`] refuses once it does). The copy is then in the held table, so
//!   every `Hello` reports it (id, token): the coordinator keeps it where it is if the node
//!   was not declared down (the token is current), or has it stopped as stale if the job was
//!   placed again meanwhile. A copy the coordinator was never told about is never driven by
//!   a lease of this agent.
//! - The shim's deadline is the previous agent's lease, which ends before the coordinator may
//!   declare the node down. This agent pushes nothing until it holds a lease of its own (not
//!   even "no lease", see [`super::follow::Origin`]); a lease of its own comes from a session
//!   whose `Hello` listed the copy, so it covers it as it covers every job of the node.
//! - The shim decides by its own clock: a copy whose deadline has passed is fenced, says
//!   `ending`, and is never adopted; a lease that reaches it after its deadline does not
//!   revive it ([`super::guard::Guard::on_command`]).
//! - A shim that cannot be adopted (no socket: an older shim; a greeting that does not fit
//!   its job dir; a token that is not the job dir's highest; a peer that is not the agent's
//!   user) is left alone, and the agent waits until it has fenced before it registers, as
//!   before (see `crate::leftovers`).
//! - One agent per state dir (`crate::statelock`), and a shim listens to its newest
//!   connection only: the agent that adopted it last is the one alive.

use super::adopted_proc::AdoptedProc;
use super::backstop::Backstop;
use super::follow::{control, monitor, Origin, ShimProc, Target};
use super::held::StartedJob;
use super::protocol::*;
use super::Supervisor;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

/// How long a shim may take to accept and greet.
const GREETING_TIMEOUT: Duration = Duration::from_secs(1);

/// A copy re-adopted from an earlier agent run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedJob {
    /// The job.
    pub job_id: String,
    /// Its fencing token.
    pub fencing_token: u64,
    /// The job's pid.
    pub pid: u32,
    /// When it started, Unix ms.
    pub started_unix_ms: u64,
}

/// A pidfd for `pid`, `None` where the kernel has none (before 5.3).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor is new and ours alone.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Supervisor {
    /// Re-adopts the shims of `jobs` (the copies of an earlier run still alive), each as
    /// [`Supervisor::adopt`] says; returns those adopted. A shim that cannot be adopted is
    /// logged with why, and left to fence at its deadline.
    pub async fn adopt_all(&self, jobs: &[String]) -> Vec<AdoptedJob> {
        let mut adopted = Vec::new();
        for job in jobs {
            match self.adopt(job).await {
                Ok(a) => {
                    tracing::info!(job = %a.job_id, token = a.fencing_token, pid = a.pid, "re-adopted a running job of the previous agent run");
                    adopted.push(a);
                }
                Err(why) => tracing::warn!(
                    job = %job,
                    %why,
                    "not re-adopting a job copy of the previous agent run: waiting until it is fenced"
                ),
            }
        }
        adopted
    }

    /// Re-adopts the shim of `job_id` through its control socket (see the module docs).
    /// Refused once this agent holds a lease: only a copy that every `Hello` of this run
    /// reports may be driven by its leases.
    pub async fn adopt(&self, job_id: &str) -> Result<AdoptedJob, String> {
        if self.deadline.borrow().is_some() {
            return Err("this agent holds a lease already: copies are adopted only before the first registration".into());
        }
        validate_job_id(job_id)?;
        let job_dir = self.jobs_dir.join(job_id);
        let path = job_dir.join(CONTROL_SOCKET);
        let stream =
            match tokio::time::timeout(GREETING_TIMEOUT, tokio::net::UnixStream::connect(&path))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(format!(
                    "cannot connect to {} ({e}): a shim of an older version, or one that is ending",
                    path.display()
                ))
                }
                Err(_) => return Err(format!("{} does not answer", path.display())),
            };
        let cred = stream
            .peer_cred()
            .map_err(|e| format!("peer credentials: {e}"))?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if cred.uid() != me {
            return Err(format!(
                "the socket's peer runs as uid {}, not as this agent (uid {me})",
                cred.uid()
            ));
        }
        let shim_pid = cred.pid().unwrap_or(0);
        if shim_pid <= 1 {
            return Err("the socket's peer has no pid".into());
        }
        let pidfd = pidfd_open(shim_pid);
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = String::new();
        let greeting = tokio::time::timeout(
            GREETING_TIMEOUT,
            (&mut reader).take(MAX_LINE as u64).read_line(&mut line),
        )
        .await;
        match greeting {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => return Err("the shim closed the connection without a greeting".into()),
            Ok(Err(e)) => return Err(format!("reading the greeting: {e}")),
            Err(_) => return Err("no greeting in time".into()),
        }
        let hello = ShimHello::parse(&line)?;
        if hello.job_id != job_id {
            return Err(format!("the shim says it runs job {:?}", hello.job_id));
        }
        if hello.ending {
            return Err("its job is being ended (fenced or stopped)".into());
        }
        let now = monotonic_ns().unwrap_or(u64::MAX);
        if hello.deadline_ns <= now {
            return Err("its lease deadline has passed".into());
        }
        let highest = read_token(&job_dir).map_err(|e| e.to_string())?;
        if highest != Some(hello.fencing_token) {
            return Err(format!(
                "its token {} is not the job dir's highest ({highest:?})",
                hello.fencing_token
            ));
        }
        match read_status(&job_dir) {
            Some(s)
                if s.state == JobState::Running
                    && s.pid == hello.pid
                    && s.shim_pid == shim_pid as u32
                    && s.fencing_token == hello.fencing_token => {}
            other => {
                return Err(format!(
                    "its status.json does not match the greeting ({other:?})"
                ))
            }
        }
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let started = StartedJob {
            pid: hello.pid,
            shim_pid: shim_pid as u32,
            job_dir: job_dir.clone(),
        };
        if !self
            .held
            .adopt(job_id, hello.fencing_token, ctl_tx, started)
        {
            return Err("a copy of the job is held already".into());
        }
        // What is in force now is not pushed (no lease yet); every change after is.
        let mut deadline_rx = self.deadline.subscribe();
        deadline_rx.borrow_and_update();
        let fence_kill_rx = self.fence_kill_ms.subscribe();
        let backstop = Backstop::new(
            hello.deadline_ns,
            Duration::from_millis(hello.fence_kill_ms),
        );
        let (steps_tx, steps_rx) = mpsc::channel(2);
        // Whatever the greeting's reader buffered past its line is ours to drop: the shim
        // sends nothing else.
        let read = reader.into_inner();
        tokio::spawn(control(
            write,
            deadline_rx,
            fence_kill_rx,
            ctl_rx,
            backstop,
            steps_tx,
            Origin::Adopted,
        ));
        let target = Target {
            job_id: job_id.to_string(),
            pid: hello.pid,
            shim_pid: shim_pid as u32,
            containment: Arc::clone(&self.containment),
        };
        let proc = AdoptedProc {
            reader: read,
            pidfd: pidfd.and_then(|fd| {
                // SAFETY: an OwnedFd is a valid, open descriptor that stays the same until
                // the AsyncFd (which owns it) is dropped.
                unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        fd,
                        tokio::io::Interest::READABLE,
                    )
                }
                .ok()
            }),
            pid: shim_pid as u32,
            closed: false,
            exited: false,
        };
        tokio::spawn(monitor(
            ShimProc::Adopted(proc),
            target,
            steps_rx,
            Arc::clone(&self.held),
            self.exits_tx.clone(),
            job_dir,
            hello.fencing_token,
        ));
        Ok(AdoptedJob {
            job_id: job_id.to_string(),
            fencing_token: hello.fencing_token,
            pid: hello.pid,
            started_unix_ms: hello.started_unix_ms,
        })
    }
}
