//! `tandem-agent shim --job-dir DIR`: the per-job supervisor process.
//!
//! It reads `spec.json`, takes the job dir's lock, starts the job in its own process group,
//! answers `started <pid>` on stdout, and then holds the lease deadline: `lease`, `fence` and
//! `stop` lines on stdin move it or end the job (`fencekill` changes the fence kill timeout); at the deadline it SIGTERMs the job's group and
//! SIGKILLs it after the fence kill timeout. On stdin EOF (the agent died) it keeps the last
//! deadline. When the job's leader exits, the rest of its group is killed before the leader is
//! reaped (so the group id cannot be reused meanwhile), `status.json` records the end, and the
//! shim exits. It also listens on its control socket (`control.sock` in the job dir), through
//! which a new agent run re-adopts it and sends the same lines as on stdin
//! (`super::shim_control`, `super::adopt`); the socket goes before the end is recorded.
//! Threads, not an async runtime: one each for stdin, the control socket and its connection,
//! the leader's exit, signals, and each output pipe; the main thread owns all decisions through
//! [`Guard`].

use super::guard::{Action, Guard};
use super::logs::RotatingLog;
use super::protocol::*;
use super::shim_control::{accept_thread, greet, listen, stdin_thread, Event};
use super::SupervisorError;
use crate::containment::cgroup;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tandem_common::time::unix_ms;

/// How long the shim keeps killing a job's cgroup until it is empty. A SIGKILLed process
/// exits in microseconds unless it is in uninterruptible sleep (D state: stuck I/O); the end
/// is recorded after this even then, and the cgroup stays populated, so the job is held as
/// alive by the agent until it is really gone.
const CGROUP_EMPTY_LIMIT: Duration = Duration::from_secs(5);

/// The shim's entry point.
pub fn main(job_dir: &Path) -> ExitCode {
    // Started from `/proc/self/exe`, the kernel names this process `exe`; systemd's journal
    // and `ps -o comm` should say what it is.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"tandem-agent".as_ptr());
    }
    tandem_common::logging::init_tracing("info");
    match run(job_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "shim failed");
            reply(&ShimReply::Failed(e.to_string()));
            ExitCode::FAILURE
        }
    }
}

fn reply(r: &ShimReply) {
    // The agent may be gone: SIGPIPE is ignored by Rust's runtime, so this only fails.
    let mut out = io::stdout().lock();
    let _ = out.write_all(r.to_line().as_bytes());
    let _ = out.flush();
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SupervisorError {
    let what = what.into();
    move |source| SupervisorError::Io { what, source }
}

/// CLOCK_MONOTONIC now; an unreadable clock counts as "every deadline has passed".
fn now_ns() -> u64 {
    monotonic_ns().unwrap_or(u64::MAX)
}

fn run(job_dir: &Path) -> Result<(), SupervisorError> {
    // The agent starts us with setsid already; this covers being started some other way. Our own
    // session keeps a signal to the agent's process group (or terminal) from reaching us.
    // SAFETY: setsid has no memory-safety preconditions; it fails harmlessly when we lead one.
    unsafe { libc::setsid() };
    cloexec_inherited_fds();
    let sigs = block_signals();
    let spec_path = job_dir.join(SPEC_FILE);
    let text = fs::read(&spec_path).map_err(io_err(format!("reading {}", spec_path.display())))?;
    let spec: JobSpec = serde_json::from_slice(&text).map_err(|e| SupervisorError::Corrupt {
        path: spec_path.clone(),
        reason: e.to_string(),
    })?;
    let lock_path = job_dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(format!("opening {}", lock_path.display())))?;
    // SAFETY: flock on a descriptor we own; the lock lives as long as `lock` (our whole life).
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        tracing::warn!("another shim holds {}", lock_path.display());
        reply(&ShimReply::Busy);
        return Ok(());
    }
    // A start that took longer than the lease it was given never ran the job: its refusal
    // says so in the words the coordinator reads as "placed again", not as the job's exit
    // (which failed `restart: never` jobs that had not run).
    if now_ns() >= spec.lease_deadline_ns {
        reply(&ShimReply::Failed(format!(
            "the lease ran out before the job started ({})",
            tandem_common::proto::REFUSED_NO_LEASE
        )));
        return Ok(());
    }
    let max = spec.log_max_bytes;
    let open_log = |name: &str| {
        let p = job_dir.join(name);
        RotatingLog::open(&p, max).map_err(io_err(format!("opening {}", p.display())))
    };
    let (out_log, err_log) = (open_log(STDOUT_LOG)?, open_log(STDERR_LOG)?);
    let Some((program, args)) = spec.command.split_first() else {
        reply(&ShimReply::Failed("empty command".into()));
        return Ok(());
    };
    // The job's cgroup, opened before the fork: the child writes `0` to it before exec, so
    // the job is in its cgroup before it runs a single instruction of its own.
    let cgroup = spec.cgroup.clone();
    let procs = match &cgroup {
        Some(dir) => match cgroup::open_procs(dir) {
            Ok(f) => Some(f),
            Err(e) => {
                reply(&ShimReply::Failed(format!(
                    "cannot open the job's cgroup {}: {e}",
                    dir.display()
                )));
                return Ok(());
            }
        },
        None => None,
    };
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // And the v1 cgroups that carry its limits on a hybrid host.
    let mut v1_procs = Vec::new();
    for dir in &spec.cgroup_v1 {
        match cgroup::open_procs(dir) {
            Ok(f) => v1_procs.push(f),
            Err(e) => {
                reply(&ShimReply::Failed(format!(
                    "cannot open the job's cgroup {}: {e}",
                    dir.display()
                )));
                return Ok(());
            }
        }
    }
    let v1_fds: Vec<i32> = v1_procs.iter().map(|f| f.as_raw_fd()).collect();
    let containment = crate::containment::Mode::of_cgroup(cgroup.as_deref());
    let user = spec.user.clone();
    let shim_pid = std::process::id();
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: only async-signal-safe calls (sigprocmask, signal, prctl, getppid, raise)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The job must not inherit our blocked signals (SIGTERM among them: a shell would
            // then sit out the fence's SIGTERM) nor ignored signals (the
            // runtime's SIGPIPE, or a `nohup`'s SIGHUP): it starts with default dispositions.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            if let Some(fd) = procs_fd {
                cgroup::join_in_child(fd)?;
            }
            for fd in &v1_fds {
                cgroup::join_in_child(*fd)?;
            }
            // The job's user, once it is in its cgroups (joining needs root), and before the
            // parent-death signal (a change of credentials clears it).
            if let Some(u) = &user {
                u.become_in_child()?;
            }
            // If the shim dies without fencing (SIGKILL, OOM), the kernel kills the job leader.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != shim_pid {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            reply(&ShimReply::Failed(format!("cannot start {program:?}: {e}")));
            return Ok(());
        }
    };
    let pid = child.id();
    let pgid = pid as i32;
    let started = unix_ms();
    let mut status = JobStatus {
        job_id: spec.job_id.clone(),
        fencing_token: spec.fencing_token,
        state: JobState::Running,
        pid,
        shim_pid,
        started_unix_ms: started,
        ended_unix_ms: None,
        code: None,
        signal: None,
        reason: None,
        containment: containment.name().to_string(),
    };
    write_status(job_dir, &status);
    let _ = write_atomic(&job_dir.join(PID_FILE), format!("{pid}\n").as_bytes());
    tracing::info!(job = %spec.job_id, token = spec.fencing_token, pid, "job started");
    reply(&ShimReply::Started(pid));

    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    if let Some(out) = child.stdout.take() {
        copy_thread(out, out_log, done_tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        copy_thread(err, err_log, done_tx.clone());
    }
    drop(done_tx);
    stdin_thread(tx.clone());
    signal_thread(sigs, tx.clone());
    let socket_path = job_dir.join(CONTROL_SOCKET);
    match listen(&socket_path) {
        Ok(l) => accept_thread(l, tx.clone()),
        Err(e) => tracing::warn!(
            error = %e,
            "no control socket at {}: a restarted agent cannot re-adopt this job (it waits until it is fenced)",
            socket_path.display()
        ),
    }
    // The controller that re-adopted us last: (generation, connection). Only its lines count.
    let mut controller: Option<(u64, UnixStream)> = None;
    let mut generation = 0u64;
    let waiter = tx.clone();
    std::thread::spawn(move || {
        wait_exited_nowait(pgid);
        let _ = waiter.send(Event::LeaderExited);
    });

    let mut guard = Guard::new(
        spec.lease_deadline_ns,
        Duration::from_millis(spec.fence_kill_timeout_ms),
    );
    let apply = |acts: Vec<Action>, guard: &Guard| {
        for a in acts {
            let reason = guard.reason();
            match a {
                Action::Term => {
                    tracing::info!(?reason, "SIGTERM to the job's process group and cgroup");
                    signal_group(pgid, libc::SIGTERM);
                    signal_group(pgid, libc::SIGCONT);
                    if let Some(cg) = &cgroup {
                        cgroup::signal_all(cg, libc::SIGTERM);
                        cgroup::signal_all(cg, libc::SIGCONT);
                    }
                }
                Action::Kill => {
                    tracing::info!(?reason, "SIGKILL to the job's process group and cgroup");
                    signal_group(pgid, libc::SIGKILL);
                    if let Some(cg) = &cgroup {
                        cgroup::kill_all(cg);
                    }
                }
            }
        }
    };
    loop {
        let now = now_ns();
        let acts = guard.poll(now);
        apply(acts, &guard);
        let wait = Duration::from_nanos(guard.next_wake().saturating_sub(now));
        match rx.recv_timeout(wait.min(Duration::from_secs(3600))) {
            Ok(Event::LeaderExited) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Event::Command(c)) => {
                if let ShimCommand::FenceKill { timeout_ms } = c {
                    tracing::info!(
                        "fence kill timeout {} -> {timeout_ms} ms from the agent",
                        guard.fence_kill().as_millis()
                    );
                }
                let acts = guard.on_command(c, now_ns());
                apply(acts, &guard);
            }
            Ok(Event::BadLine(e)) => tracing::warn!("ignored a bad line from the agent: {e}"),
            Ok(Event::StdinClosed) => {
                tracing::warn!("the agent's pipe closed: keeping the last lease deadline");
            }
            Ok(Event::Controller(stream)) => {
                generation += 1;
                let hello = ShimHello {
                    job_id: spec.job_id.clone(),
                    fencing_token: spec.fencing_token,
                    pid,
                    started_unix_ms: started,
                    ending: guard.reason().is_some() || now_ns() >= guard.deadline_ns(),
                    deadline_ns: guard.deadline_ns(),
                    fence_kill_ms: u64::try_from(guard.fence_kill().as_millis())
                        .unwrap_or(u64::MAX),
                };
                match greet(&stream, &hello, generation, tx.clone()) {
                    Ok(()) => {
                        tracing::info!(
                            generation,
                            ending = hello.ending,
                            "an agent connected to the control socket"
                        );
                        // The newest agent is the one alive (one agent per state dir): the
                        // connection of an earlier one is closed, its lines ignored.
                        if let Some((_, old)) = controller.replace((generation, stream)) {
                            let _ = old.shutdown(std::net::Shutdown::Both);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not greet an agent on the control socket")
                    }
                }
            }
            Ok(Event::SocketCommand(g, c))
                if controller.as_ref().is_some_and(|(cg, _)| *cg == g) =>
            {
                if matches!(c, ShimCommand::Lease(_)) && guard.reason().is_some() {
                    tracing::warn!(
                        "refused a lease from the agent: the job is being ended already"
                    );
                }
                let acts = guard.on_command(c, now_ns());
                apply(acts, &guard);
            }
            Ok(Event::SocketBadLine(g, e))
                if controller.as_ref().is_some_and(|(cg, _)| *cg == g) =>
            {
                tracing::warn!("ignored a bad line on the control socket: {e}");
            }
            Ok(Event::SocketClosed(g)) if controller.as_ref().is_some_and(|(cg, _)| *cg == g) => {
                tracing::warn!(
                    "the agent's control connection closed: keeping the last lease deadline"
                );
                controller = None;
            }
            Ok(Event::SocketCommand(..) | Event::SocketBadLine(..) | Event::SocketClosed(_)) => {}
            Ok(Event::Signal(sig)) => {
                tracing::warn!(sig, "told to terminate: stopping the job first");
                let acts = guard.on_signal(now_ns());
                apply(acts, &guard);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    // No agent may adopt a copy that is ending: the socket goes first (an agent that
    // connected meanwhile gets no greeting and waits for the end).
    let _ = fs::remove_file(&socket_path);
    // The leader is a zombie, so its pid (the group id) cannot be reused: kill what is left of
    // the group, then reap.
    signal_group(pgid, libc::SIGKILL);
    if let Some(cg) = &cgroup {
        cgroup::kill_all(cg);
    }
    let (code, signal) = reap(pgid);
    // Everything the job started, whatever its group or session, is gone before the end is
    // recorded (and before this shim leaves the job's cgroup, which keeps it populated).
    if let Some(cg) = &cgroup {
        if !cgroup::kill_until_empty(cg, CGROUP_EMPTY_LIMIT) {
            tracing::error!(
                left = ?cgroup::procs_recursive(cg),
                "processes of the job survived SIGKILL in {}",
                cg.display()
            );
        }
    }
    drop(procs);
    drop(v1_procs);
    // A job that ended by itself after the kernel OOM-killed (part of) it ended of that.
    let oom = spec
        .oom_file
        .as_deref()
        .map_or(0, crate::containment::limits::oom_kills);
    if oom > 0 && guard.reason().is_none() {
        tracing::warn!(oom_kills = oom, "the job went over its memory limit");
    }
    // What this shim can tidy itself (it sits in the `shim` leaf, so the agent removes the
    // rest): the empty job leaf and v1 cgroups, so a killed agent leaves less behind.
    if let Some(cg) = &cgroup {
        let _ = fs::remove_dir(cg);
    }
    for d in &spec.cgroup_v1 {
        let _ = fs::remove_dir(d);
    }
    // For the record (and the figures): how long after the lease deadline the last process of
    // a fenced job was gone.
    if guard.reason() == Some(ExitReason::Fenced) {
        let after_us = now_ns().saturating_sub(guard.deadline_ns()) / 1_000;
        tracing::info!(
            after_deadline_us = after_us,
            containment = containment.name(),
            "fenced: the job's last process is gone"
        );
    }
    // Give the pipes a moment to drain; a process that left the group may hold them open.
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while done_rx
        .recv_timeout(until.saturating_duration_since(std::time::Instant::now()))
        .is_ok()
    {}
    status.state = JobState::Exited;
    status.ended_unix_ms = Some(unix_ms());
    status.code = code;
    status.signal = signal;
    status.reason = Some(guard.reason().unwrap_or(if oom > 0 {
        ExitReason::OomKilled
    } else {
        ExitReason::Exited
    }));
    write_status(job_dir, &status);
    tracing::info!(?code, ?signal, reason = ?status.reason, "job ended");
    drop(lock);
    Ok(())
}

fn write_status(job_dir: &Path, status: &JobStatus) {
    let path = job_dir.join(STATUS_FILE);
    let res = serde_json::to_vec_pretty(status)
        .map_err(io::Error::other)
        .and_then(|b| write_atomic(&path, &b));
    if let Err(e) = res {
        tracing::error!(error = %e, "cannot write {}", path.display());
    }
}

fn copy_thread(mut from: impl Read + Send + 'static, mut log: RotatingLog, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = log.write(&buf[..n]) {
                        tracing::error!(error = %e, "cannot write a job log");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        drop(done);
    });
}

/// Marks every descriptor above stderr that we inherited (from the agent, or whatever started
/// it) close-on-exec, so the job gets only stdin, stdout and stderr.
fn cloexec_inherited_fds() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11: walk /proc/self/fd.
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; a closed one just fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in every thread (they are inherited by threads spawned
/// after), so that only `sigwait` in the signal thread receives them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn signal_thread(set: libc::sigset_t, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised sigset and `sig` a valid out-pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        if tx.send(Event::Signal(sig)).is_err() {
            return;
        }
    });
}

/// Waits until `pid` has exited without reaping it.
fn wait_exited_nowait(pid: i32) {
    loop {
        // SAFETY: zeroed siginfo is a valid out-buffer for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Reaps `pid`: (exit code, terminating signal).
fn reap(pid: i32) -> (Option<i32>, Option<i32>) {
    loop {
        let mut st: libc::c_int = 0;
        // SAFETY: `st` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut st, 0) };
        if rc == pid {
            if libc::WIFEXITED(st) {
                return (Some(libc::WEXITSTATUS(st)), None);
            }
            if libc::WIFSIGNALED(st) {
                return (None, Some(libc::WTERMSIG(st)));
            }
            continue;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return (None, None);
        }
    }
}
