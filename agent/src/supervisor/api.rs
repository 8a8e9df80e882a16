//! The agent's handle on its shims: start, stop, lease refresh, fence kill timeout, exits, logs,
//! and what it holds.
//!
//! A start is *held* ([`super::held`]) from the moment it is accepted (validated, and admitted
//! by [`super::admit`]), not from when its shim answers: the link reports what is held in every
//! `Hello`, and a copy that is about to run must never be missing from it.

use super::backstop::Backstop;
use super::follow::{control, monitor, Target};
use super::held::{Claimed, HeldTable, StartedJob};
use super::protocol::*;
use super::{logs, SupervisorError};
use crate::containment::{cgroup, Containment, ContainmentError, JobCgroup};
use crate::lease::LeaseView;
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tandem_common::ids::NodeId;
use tandem_common::proto::HeldJob;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};

/// How long a shim may take to answer `started`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a start waits for a lease that is about to arrive.
const LEASE_WAIT: Duration = Duration::from_secs(2);
/// The most bytes of log lines one log reply carries: a quarter of the link's frame limit,
/// so the reply with its framing always fits (a reply over the limit would break the link).
pub const LOG_REPLY_BUDGET: usize = tandem_common::codec::DEFAULT_MAX_FRAME / 4;
/// The default cap of each log file.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A job to start.
#[derive(Debug, Clone, Default)]
pub struct JobStart {
    /// The job's id (also its directory name).
    pub job_id: String,
    /// Its name, for `TANDEM_JOB_NAME`.
    pub job_name: String,
    /// The placement's fencing token.
    pub fencing_token: u64,
    /// Program and arguments.
    pub command: Vec<String>,
    /// The job's own environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (default: `STATE_DIR/work/<job id>`, made for it; never the job dir,
    /// which holds the supervisor's files).
    pub workdir: Option<PathBuf>,
    /// Assigned GPU UUIDs, for `CUDA_VISIBLE_DEVICES`.
    pub gpus: Vec<String>,
    /// What the job may use (memory, CPU, pids), enforced through its cgroups. The link
    /// leaves the default (a pids limit only): `StartJob` carries no resources yet.
    pub limits: crate::containment::Limits,
    /// The user the job asks to run as (`None`: the default, `job_user` or the agent's own);
    /// refused unless it is the default or one of the allowed users.
    pub user: Option<String>,
    /// The group the job asks to run as (`None`: its user's); refused unless its user is a
    /// member or the agent allows it.
    pub group: Option<String>,
    /// The session the start came on. A start that arrives without a lease and waits for one
    /// takes only a lease that an ack *of this session* gave: once the session is gone (the
    /// node may have been declared down, and the job placed elsewhere), a lease from the next
    /// session would let this old start run beside the new copy. `None`: any lease (tests).
    pub session: Option<u64>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobExit {
    /// The job.
    pub job_id: String,
    /// The token it ran with.
    pub fencing_token: u64,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Why it ended.
    pub reason: ExitReason,
}

/// The end of a job's logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogTail {
    /// The last lines of stdout, oldest first.
    pub stdout: Vec<String>,
    /// The last lines of stderr, oldest first.
    pub stderr: Vec<String>,
}

/// A shim that answered `started`.
struct Shim {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    /// The job's pid (and process group id).
    pid: u32,
    shim_pid: u32,
}

/// Starts and watches the shims of this node's jobs. Dropping it is what an agent crash looks
/// like to the shims: their stdin closes, and each job lives until its last deadline.
pub struct Supervisor {
    pub(super) jobs_dir: PathBuf,
    /// `STATE_DIR/work`: the jobs' default working dirs, apart from the supervisor's files.
    pub(super) work_dir: PathBuf,
    node_id: NodeId,
    node_name: String,
    /// The fence kill timeout in milliseconds: read by each start for its spec, and followed
    /// by every running shim's control task (`fencekill`).
    pub(super) fence_kill_ms: watch::Sender<u64>,
    shim_program: PathBuf,
    log_max_bytes: u64,
    path_env: String,
    pub(super) held: Arc<HeldTable>,
    pub(super) exits_tx: mpsc::Sender<JobExit>,
    /// The lease deadline in CLOCK_MONOTONIC ns; `None` = no lease. Dropped with the supervisor,
    /// which closes every shim's stdin.
    pub(super) deadline: Arc<watch::Sender<Option<u64>>>,
    /// The session whose ack gave the lease in `deadline` (0: none). Set before `deadline`.
    lease_session: Arc<watch::Sender<u64>>,
    exits_rx: Mutex<Option<mpsc::Receiver<JobExit>>>,
    /// How jobs are contained (a cgroup each, or their process group).
    pub(super) containment: Arc<Containment>,
    /// The user jobs run as; `None`: the agent's own.
    pub(super) job_user: Option<crate::containment::user::JobUser>,
    /// The users a job may name (`allowed_job_users`), looked up when a job names one.
    pub(super) allowed_users: Vec<String>,
    /// The groups a job may name beyond its user's own (`allowed_job_groups`).
    pub(super) allowed_groups: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn io_err(what: String) -> impl FnOnce(std::io::Error) -> SupervisorError {
    move |source| SupervisorError::Io { what, source }
}

impl Supervisor {
    /// A supervisor keeping job dirs under `state_dir/jobs`, using this executable as the shim.
    pub fn new(
        state_dir: &Path,
        node_id: NodeId,
        node_name: impl Into<String>,
        fence_kill_timeout: Duration,
    ) -> Result<Self, SupervisorError> {
        let jobs_dir = state_dir.join("jobs");
        std::fs::create_dir_all(&jobs_dir)
            .map_err(io_err(format!("creating {}", jobs_dir.display())))?;
        // `/proc/self/exe` names the running binary even after an upgrade replaced the file on
        // disk (`install` unlinks it): shims then run the same build as the agent that starts
        // them, instead of failing to exec `.../tandem-agent (deleted)`.
        let proc_exe = Path::new("/proc/self/exe");
        let shim_program = if proc_exe.exists() {
            proc_exe.to_path_buf()
        } else {
            std::env::current_exe().map_err(io_err("finding the agent's executable".into()))?
        };
        let (exits_tx, exits_rx) = mpsc::channel(1024);
        let work_dir = state_dir.join("work");
        std::fs::DirBuilder::new()
            .mode(0o711)
            .recursive(true)
            .create(&work_dir)
            .map_err(io_err(format!("creating {}", work_dir.display())))?;
        Ok(Self {
            jobs_dir,
            work_dir,
            node_id,
            node_name: node_name.into(),
            fence_kill_ms: watch::channel(millis(fence_kill_timeout)).0,
            shim_program,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            path_env: std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string()),
            held: Arc::default(),
            exits_tx,
            deadline: Arc::new(watch::channel(None).0),
            lease_session: Arc::new(watch::channel(0).0),
            exits_rx: Mutex::new(Some(exits_rx)),
            containment: Arc::new(Containment::process_group("not configured")),
            job_user: None,
            allowed_users: Vec::new(),
            allowed_groups: Vec::new(),
        })
    }

    /// Contains jobs as `containment` says (the default is their process group only). Empty
    /// job cgroups left by an earlier run are removed.
    pub fn with_containment(mut self, containment: Arc<Containment>) -> Self {
        containment.sweep();
        self.containment = containment;
        self
    }

    /// Uses `program` (a `tandem-agent` binary) as the shim instead of this executable.
    pub fn with_shim_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.shim_program = program.into();
        self
    }

    /// Caps each log file at `bytes` (rotated once; at least 1 KiB).
    pub fn with_log_limit(mut self, bytes: u64) -> Self {
        self.log_max_bytes = bytes;
        self
    }

    /// The exits of jobs, in the order they are seen. Given out once; later calls get `None`.
    pub fn exits(&self) -> Option<mpsc::Receiver<JobExit>> {
        lock(&self.exits_rx).take()
    }

    /// Every copy held here, sorted by job id: running, or a start accepted and still in
    /// progress (`Starting`). A copy leaves this list only after its exit has been sent to
    /// [`Supervisor::exits`] (or its start has failed), so a reader that takes this list
    /// *before* draining the exits misses no copy.
    pub fn held(&self) -> Vec<HeldJob> {
        self.held.list()
    }

    /// The fence kill timeout new starts get.
    pub fn fence_kill_timeout(&self) -> Duration {
        Duration::from_millis(*self.fence_kill_ms.borrow())
    }

    /// Sets the fence kill timeout (the coordinator sends one with every `Welcome`): new starts
    /// use it, and every running shim is sent it (`fencekill`). Returns the one it replaces.
    pub fn set_fence_kill_timeout(&self, timeout: Duration) -> Duration {
        let ms = millis(timeout);
        let mut old = ms;
        self.fence_kill_ms.send_if_modified(|v| {
            old = *v;
            *v = ms;
            old != ms
        });
        Duration::from_millis(old)
    }

    /// Pushes the lease deadline to every shim; `None` (no lease) makes every shim fence now.
    pub fn refresh(&self, lease_deadline: Option<Instant>) {
        let ns = lease_deadline.map(instant_to_monotonic_ns);
        self.deadline.send_replace(ns);
    }

    /// Follows the link's lease: refreshes on every change until the supervisor or the sender
    /// is dropped.
    pub fn follow_lease(
        &self,
        mut lease: watch::Receiver<LeaseView>,
    ) -> tokio::task::JoinHandle<()> {
        let deadline: Weak<watch::Sender<Option<u64>>> = Arc::downgrade(&self.deadline);
        let session: Weak<watch::Sender<u64>> = Arc::downgrade(&self.lease_session);
        tokio::spawn(async move {
            loop {
                let (held, from) = {
                    let v = lease.borrow_and_update();
                    (v.held_until, v.session.unwrap_or(0))
                };
                let Some(tx) = deadline.upgrade() else { return };
                // The session first: a start waiting for a lease reads it once the deadline
                // changed, and must see whose lease that is.
                if let Some(s) = session.upgrade() {
                    s.send_replace(from);
                }
                tx.send_replace(held.map(instant_to_monotonic_ns));
                drop(tx);
                if lease.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    pub(super) fn job_dir(&self, job_id: &str) -> Result<PathBuf, SupervisorError> {
        validate_job_id(job_id).map_err(SupervisorError::InvalidJob)?;
        Ok(self.jobs_dir.join(job_id))
    }

    /// Starts a job under a new shim. Refuses an older fencing token than the job has seen, a
    /// start while another copy of the job is held, and any start without a lease.
    ///
    /// A start repeated for the copy that is held is not refused (see [`super::admit`]): if it
    /// runs, this returns it as started; if its start is in progress, this returns
    /// [`SupervisorError::StartInProgress`], which is no failure (that start answers).
    pub async fn start(&self, job: JobStart) -> Result<StartedJob, SupervisorError> {
        let job_dir = self.job_dir(&job.job_id)?;
        let id = job.job_id.clone();
        if job.command.is_empty() || job.command.iter().any(|a| a.contains('\0')) {
            return Err(SupervisorError::InvalidJob(
                "the command must be a program and its arguments, without NUL bytes".into(),
            ));
        }
        let env = build_env(&EnvParts {
            job_env: &job.env,
            job_id: &job.job_id,
            job_name: &job.job_name,
            node_id: self.node_id.as_str(),
            node_name: &self.node_name,
            fencing_token: job.fencing_token,
            gpus: &job.gpus,
            path: &self.path_env,
        })
        .map_err(SupervisorError::InvalidJob)?;
        // Before anything is held or written: a user or group this node does not allow is
        // refused with nothing left behind.
        let user = self.user_for(job.user.as_deref(), job.group.as_deref())?;
        let claim = match self.held.claim(&id, job.fencing_token)? {
            Claimed::New(c) => c,
            Claimed::Running(started) => return Ok(started),
        };
        // The moves into its cgroups come after its durable writes: the kernel's wait before
        // the first of them is waited out beside those writes.
        self.containment.warm_up_moves();
        // Subscribe before reading the deadline and the fence kill timeout: a change after
        // these reads reaches the shim.
        let mut fence_kill_rx = self.fence_kill_ms.subscribe();
        let fence_kill_timeout_ms = *fence_kill_rx.borrow_and_update();
        // A start can arrive just before the lease that came with the same registration has
        // reached this side (the first ack, then the lease task): wait for it, briefly.
        let mut deadline_rx = self.deadline.subscribe();
        let session_rx = self.lease_session.subscribe();
        let give_up = tokio::time::Instant::now() + LEASE_WAIT;
        let mut waited = false;
        let deadline = loop {
            if let Some(ns) = *deadline_rx.borrow_and_update() {
                // A lease held when the start arrived is good (it ends before the coordinator
                // may declare this node down); one that came later must be of the start's own
                // session (see `JobStart::session`).
                let ours = !waited || job.session.is_none_or(|s| *session_rx.borrow() == s);
                if ours && monotonic_ns().is_some_and(|now| now < ns) {
                    break ns;
                }
            }
            waited = true;
            match tokio::time::timeout_at(give_up, deadline_rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(SupervisorError::NoLease),
            }
        };
        if !claim.proceed() {
            return Err(SupervisorError::StoppedBeforeStart {
                job_id: id,
                token: job.fencing_token,
            });
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&job_dir)
            .map_err(io_err(format!("creating {}", job_dir.display())))?;
        let highest = read_token(&job_dir)?;
        if !token_allowed(highest, job.fencing_token) {
            return Err(SupervisorError::StaleToken {
                job_id: id,
                token: job.fencing_token,
                highest: highest.unwrap_or(0),
            });
        }
        write_token(&job_dir, job.fencing_token)?;
        // The job's own dir, apart from the supervisor's (`lock`, `fencing_token`, `spec.json`,
        // `status.json`): a job that tidies its working dir, or `..` of it, cannot reach them.
        let workdir = match job.workdir {
            Some(w) => w,
            None => {
                let w = self.work_dir.join(&id);
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .recursive(true)
                    .create(&w)
                    .map_err(io_err(format!("creating {}", w.display())))?;
                if let Some(u) = &user {
                    std::os::unix::fs::chown(&w, Some(u.uid), Some(u.gid))
                        .map_err(io_err(format!("giving {} to {}", w.display(), u.name)))?;
                }
                w
            }
        };
        // The job's cgroup is the truth about an earlier copy: while anything of it lives
        // (its shim, or any process it started, in whatever group or session), no new copy.
        let cg = self
            .containment
            .prepare(&id, &job.limits)
            .map_err(|e| match e {
                ContainmentError::Alive { .. } => SupervisorError::Busy { job_id: id.clone() },
                ContainmentError::Io { what, source } => SupervisorError::Io { what, source },
            })?;
        let spec = JobSpec {
            job_id: id.clone(),
            fencing_token: job.fencing_token,
            command: job.command,
            env,
            workdir,
            lease_deadline_ns: deadline,
            fence_kill_timeout_ms,
            log_max_bytes: self.log_max_bytes,
            cgroup: cg.as_ref().map(|c| c.job.clone()),
            cgroup_v1: cg.as_ref().map(|c| c.v1.clone()).unwrap_or_default(),
            oom_file: cg.as_ref().and_then(|c| c.oom_file.clone()),
            user,
        };
        let spec_path = job_dir.join(SPEC_FILE);
        let bytes = serde_json::to_vec_pretty(&spec).map_err(|e| SupervisorError::Io {
            what: "encoding the spec".into(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&spec_path, &bytes)
            .map_err(io_err(format!("writing {}", spec_path.display())))?;
        let Shim {
            child,
            stdin,
            pid,
            shim_pid,
        } = self.spawn_shim(&id, &job_dir, cg.as_ref()).await?;
        let started = StartedJob {
            pid,
            shim_pid,
            job_dir: job_dir.clone(),
        };
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        claim.promote(ctl_tx, started.clone());
        let backstop = Backstop::new(deadline, Duration::from_millis(fence_kill_timeout_ms));
        let (steps_tx, steps_rx) = mpsc::channel(2);
        tokio::spawn(control(
            stdin,
            deadline_rx,
            fence_kill_rx,
            ctl_rx,
            backstop,
            steps_tx,
            super::follow::Origin::Started,
        ));
        let target = Target {
            job_id: id.clone(),
            pid,
            shim_pid,
            containment: Arc::clone(&self.containment),
        };
        tokio::spawn(monitor(
            super::follow::ShimProc::Child(child),
            target,
            steps_rx,
            Arc::clone(&self.held),
            self.exits_tx.clone(),
            job_dir,
            spec.fencing_token,
        ));
        Ok(started)
    }

    /// Starts the shim for the spec in `job_dir` and waits for its answer.
    async fn spawn_shim(
        &self,
        id: &str,
        job_dir: &Path,
        cg: Option<&JobCgroup>,
    ) -> Result<Shim, SupervisorError> {
        let shim_log = job_dir.join(SHIM_LOG);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&shim_log)
            .map_err(io_err(format!("opening {}", shim_log.display())))?;
        let mut cmd = tokio::process::Command::new(&self.shim_program);
        // `ps` shows `tandem-agent shim ...`, not `/proc/self/exe shim ...`.
        cmd.arg0("tandem-agent");
        cmd.arg("shim")
            .arg("--job-dir")
            .arg(job_dir)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(false);
        if let Ok(level) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", level);
        }
        // The shim goes into its job's cgroup (the `shim` leaf) before it runs: from then on
        // the job's cgroup is populated until the shim and the whole job are gone.
        let procs = match cg {
            Some(c) => Some(
                cgroup::open_procs(&c.shim)
                    .map_err(io_err(format!("opening cgroup {}", c.shim.display())))?,
            ),
            None => None,
        };
        let procs_fd = procs.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        // SAFETY: setsid and write are async-signal-safe. The shim gets its own session, so it
        // outlives a signal to the agent's process group.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = procs_fd {
                    cgroup::join_in_child(fd)?;
                }
                Ok(())
            });
        }
        let shim_err = |reason: String| SupervisorError::Shim {
            job_id: id.to_string(),
            reason,
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| shim_err(format!("cannot run {}: {e}", self.shim_program.display())))?;
        drop(procs);
        let shim_pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err(shim_err("no pipes to the shim".into()));
        };
        let mut line = String::new();
        let mut reader = BufReader::new(stdout).take(MAX_LINE as u64);
        let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_line(&mut line)).await;
        let job_id = id.to_string();
        match read.map(|r| r.map(|_| ShimReply::parse(&line))) {
            Ok(Ok(Ok(ShimReply::Started(pid)))) => Ok(Shim {
                child,
                stdin,
                pid,
                shim_pid,
            }),
            Ok(Ok(Ok(ShimReply::Busy))) => Err(SupervisorError::Busy { job_id }),
            Ok(Ok(Ok(ShimReply::Failed(reason)))) => {
                Err(SupervisorError::SpawnFailed { job_id, reason })
            }
            other => {
                // The shim ends its job (if it started one) on SIGTERM.
                if shim_pid > 1 {
                    // SAFETY: kill has no memory-safety preconditions; this is our child.
                    unsafe { libc::kill(shim_pid as i32, libc::SIGTERM) };
                }
                let why = match other {
                    Err(_) => "no answer in time".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(Err(e))) => e,
                    Ok(Ok(Ok(_))) => "unexpected answer".to_string(),
                };
                Err(shim_err(why))
            }
        }
    }

    /// Cancels the start of `job_id`'s copy `token` if it still waits for its lease (see
    /// `HeldTable::cancel_waiting`); at once, so that a start that follows the stop on the
    /// control stream is admitted.
    pub fn cancel_waiting_start(&self, job_id: &str, token: u64) -> bool {
        self.held.cancel_waiting(job_id, token)
    }

    /// Whether no copy of `job_id` with `token` is held (starting or running): a stop for it
    /// has nothing to act on, and nothing of it runs here.
    pub fn holds_no(&self, job_id: &str, token: u64) -> bool {
        !self
            .held
            .list()
            .iter()
            .any(|h| h.job_id == job_id && h.fencing_token == token)
    }

    /// Stops a job: SIGTERM to its group now, SIGKILL after `kill_timeout`. Returns once the
    /// shim has the command; the end comes through [`Supervisor::exits`]. A token lower than
    /// the running copy's is refused; a higher one is recorded as the job's highest.
    pub async fn stop(
        &self,
        job_id: &str,
        token: u64,
        kill_timeout: Duration,
    ) -> Result<(), SupervisorError> {
        let job_dir = self.job_dir(job_id)?;
        // A start still waiting for its lease is cancelled; one further on has nothing to
        // stop yet (it is stopped as stale once it reports).
        if self.held.cancel_waiting(job_id, token) {
            return Ok(());
        }
        let Some((running, ctl)) = self.held.running(job_id) else {
            return Err(SupervisorError::NotRunning {
                job_id: job_id.to_string(),
            });
        };
        if !token_allowed(Some(running), token) {
            return Err(SupervisorError::StaleToken {
                job_id: job_id.to_string(),
                token,
                highest: running,
            });
        }
        if token > running {
            write_token(&job_dir, token)?;
        }
        let kill_timeout_ms = u64::try_from(kill_timeout.as_millis()).unwrap_or(u64::MAX);
        ctl.send(ShimCommand::Stop { kill_timeout_ms })
            .await
            .map_err(|_| SupervisorError::NotRunning {
                job_id: job_id.to_string(),
            })
    }

    /// The last `n_lines` lines of a job's stdout and stderr (running or not), each stream cut
    /// to its newest [`LOG_REPLY_BUDGET`]` / 2` bytes, with a first line saying so when cut.
    pub async fn tail_logs(
        &self,
        job_id: &str,
        n_lines: usize,
    ) -> Result<LogTail, SupervisorError> {
        let job_dir = self.job_dir(job_id)?;
        if !job_dir.is_dir() {
            return Err(SupervisorError::UnknownJob {
                job_id: job_id.to_string(),
            });
        }
        let read = move || -> Result<LogTail, SupervisorError> {
            let one = |name: &str| {
                let p = job_dir.join(name);
                logs::tail(&p, n_lines).map_err(io_err(format!("reading {}", p.display())))
            };
            // Each stream gets half of the reply's budget (see `logs::cap`).
            Ok(LogTail {
                stdout: logs::cap(one(STDOUT_LOG)?, LOG_REPLY_BUDGET / 2),
                stderr: logs::cap(one(STDERR_LOG)?, LOG_REPLY_BUDGET / 2),
            })
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| SupervisorError::Io {
                what: "reading logs".into(),
                source: std::io::Error::other(e),
            })?
    }
}
