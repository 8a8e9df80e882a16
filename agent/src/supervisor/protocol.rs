//! What the agent and its shims share: the line protocol on the shim's stdin and stdout, the
//! files in a job dir, the fencing-token rule, the monotonic clock, and the job's environment.
//!
//! Everything here is plain code without processes, so it is unit-tested directly.

use super::SupervisorError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The spec the agent writes before starting a shim (read by the shim, never changed after).
pub const SPEC_FILE: &str = "spec.json";
/// The job's state, written by the shim when the job starts and when it has ended.
pub const STATUS_FILE: &str = "status.json";
/// The job's pid (also its process group id), written by the shim.
pub const PID_FILE: &str = "pid";
/// The highest fencing token the agent has seen for the job, written by the agent.
pub const TOKEN_FILE: &str = "fencing_token";
/// Held (flock) by the shim for its whole life: at most one shim per job dir.
pub const LOCK_FILE: &str = "lock";
/// The shim's own diagnostics (its stderr).
pub const SHIM_LOG: &str = "shim.log";
/// The job's stdout; rotated to `stdout.log.1`.
pub const STDOUT_LOG: &str = "stdout.log";
/// The job's stderr; rotated to `stderr.log.1`.
pub const STDERR_LOG: &str = "stderr.log";

/// The shim's control socket: a new agent re-adopts the shim through it (mode 0600, in the
/// job dir, which is 0700 and the agent's: a job, which may run as another user and never
/// runs in its job dir, cannot reach it).
pub const CONTROL_SOCKET: &str = "control.sock";

/// Longest line either side sends; longer lines are discarded.
pub const MAX_LINE: usize = 4096;

/// The version of the control socket's protocol, first word after `shim` in its greeting.
pub const SOCKET_PROTOCOL: u32 = 1;

/// The shim's greeting, the first line on every connection to its control socket:
/// `shim 1 <job id> <token> <pid> <started unix ms> <running|ending> <deadline ns>
/// <fence kill ms>`. After it the agent sends the same [`ShimCommand`] lines as on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimHello {
    /// The job.
    pub job_id: String,
    /// The copy's fencing token.
    pub fencing_token: u64,
    /// The job's pid (and process group id).
    pub pid: u32,
    /// When the job started, Unix ms.
    pub started_unix_ms: u64,
    /// Whether the job is being ended (fenced, stopped): such a copy is never adopted.
    pub ending: bool,
    /// The lease deadline the shim holds, CLOCK_MONOTONIC ns.
    pub deadline_ns: u64,
    /// The fence kill timeout the shim uses, ms.
    pub fence_kill_ms: u64,
}

impl ShimHello {
    /// The line to send, with its newline.
    pub fn to_line(&self) -> String {
        format!(
            "shim {SOCKET_PROTOCOL} {} {} {} {} {} {} {}\n",
            self.job_id,
            self.fencing_token,
            self.pid,
            self.started_unix_ms,
            if self.ending { "ending" } else { "running" },
            self.deadline_ns,
            self.fence_kill_ms
        )
    }

    /// Parses a greeting; anything else (another version, nonsense) is refused with why.
    pub fn parse(line: &str) -> Result<Self, String> {
        let w: Vec<&str> = line.split_ascii_whitespace().collect();
        match w.as_slice() {
            ["shim", v, ..] if *v != SOCKET_PROTOCOL.to_string() => Err(format!(
                "control socket protocol {:?} is not {SOCKET_PROTOCOL}",
                truncate(v)
            )),
            ["shim", _, job, token, pid, started, state, deadline, kill] => {
                validate_job_id(job)?;
                let ending = match *state {
                    "running" => false,
                    "ending" => true,
                    s => return Err(format!("unknown state {:?}", truncate(s))),
                };
                let pid = u32::try_from(parse_u64(pid)?).map_err(|_| "pid out of range")?;
                if pid <= 1 {
                    return Err(format!("pid {pid} cannot be a job's"));
                }
                Ok(ShimHello {
                    job_id: job.to_string(),
                    fencing_token: parse_u64(token)?,
                    pid,
                    started_unix_ms: parse_u64(started)?,
                    ending,
                    deadline_ns: parse_u64(deadline)?,
                    fence_kill_ms: parse_u64(kill)?,
                })
            }
            _ => Err(format!("not a shim greeting: {:?}", truncate(line))),
        }
    }
}

/// A message from the agent to a shim, one line each on the shim's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimCommand {
    /// `lease <ns>`: the lease now runs until this CLOCK_MONOTONIC time, in nanoseconds. It may
    /// move either way: the agent is the only one who knows the lease.
    Lease(u64),
    /// `fence`: no lease is held any more; stop the job now with the fence kill timeout.
    Fence,
    /// `stop <ms>`: a user stop; SIGTERM now, SIGKILL after this many milliseconds.
    Stop {
        /// The kill timeout in milliseconds.
        kill_timeout_ms: u64,
    },
    /// `fencekill <ms>`: the coordinator gave a new fence kill timeout (it comes with every
    /// `Welcome`); fences from now on wait this long between SIGTERM and SIGKILL.
    FenceKill {
        /// The fence kill timeout in milliseconds.
        timeout_ms: u64,
    },
}

impl ShimCommand {
    /// Parses one line (surrounding whitespace ignored).
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_ascii_whitespace();
        let cmd = match (words.next(), words.next()) {
            (Some("lease"), Some(n)) => ShimCommand::Lease(parse_u64(n)?),
            (Some("fence"), None) => ShimCommand::Fence,
            (Some("stop"), Some(n)) => ShimCommand::Stop {
                kill_timeout_ms: parse_u64(n)?,
            },
            (Some("fencekill"), Some(n)) => ShimCommand::FenceKill {
                timeout_ms: parse_u64(n)?,
            },
            _ => return Err(format!("unknown command {:?}", truncate(line))),
        };
        match words.next() {
            None => Ok(cmd),
            Some(_) => Err(format!("trailing words in {:?}", truncate(line))),
        }
    }

    /// The line to send, with its newline.
    pub fn to_line(&self) -> String {
        match self {
            ShimCommand::Lease(ns) => format!("lease {ns}\n"),
            ShimCommand::Fence => "fence\n".to_string(),
            ShimCommand::Stop { kill_timeout_ms } => format!("stop {kill_timeout_ms}\n"),
            ShimCommand::FenceKill { timeout_ms } => format!("fencekill {timeout_ms}\n"),
        }
    }
}

/// The shim's one reply on its stdout, once it has tried to start the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimReply {
    /// `started <pid>`: the job runs as `pid`, leader of process group `pid`.
    Started(u32),
    /// `busy`: another shim still holds this job dir.
    Busy,
    /// `failed <reason>`: the job could not be started.
    Failed(String),
}

impl ShimReply {
    /// Parses the reply line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let line = line.trim();
        if line == "busy" {
            return Ok(ShimReply::Busy);
        }
        if let Some(reason) = line.strip_prefix("failed ") {
            return Ok(ShimReply::Failed(reason.to_string()));
        }
        match line.strip_prefix("started ").map(str::parse::<u32>) {
            Some(Ok(pid)) if pid > 1 => Ok(ShimReply::Started(pid)),
            _ => Err(format!("unexpected reply {:?}", truncate(line))),
        }
    }

    /// The line to send, with its newline (a reason's newlines become spaces).
    pub fn to_line(&self) -> String {
        match self {
            ShimReply::Started(pid) => format!("started {pid}\n"),
            ShimReply::Busy => "busy\n".to_string(),
            ShimReply::Failed(r) => format!("failed {}\n", r.replace(['\n', '\r'], " ")),
        }
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("not a number: {:?}", truncate(s)))
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The fencing-token rule: a command is refused when its token is lower than the highest one
/// seen for the job. Equal is allowed: it is the same placement (a re-sent start, or a stop of
/// the copy that holds it).
pub fn token_allowed(highest: Option<u64>, token: u64) -> bool {
    highest.is_none_or(|h| token >= h)
}

/// CLOCK_MONOTONIC now, in nanoseconds: one clock for every process on the host (it is the
/// clock of Rust's `Instant` on Linux, and it does not jump with the wall clock). `None` only if
/// the kernel refuses, which it does not for this clock; callers then fence, never extend.
pub fn monotonic_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Converts an `Instant` into CLOCK_MONOTONIC nanoseconds, to hand to another process.
///
/// `Instant` is opaque, so we read CLOCK_MONOTONIC and *then* `Instant::now()` and carry the
/// offset over. The clock is read first, so the pair's error (the time between the two reads)
/// can only make the result earlier than the true value: a deadline converted this way never
/// grows. Returns 0 (long past) if the clock cannot be read.
pub fn instant_to_monotonic_ns(t: Instant) -> u64 {
    let Some(ns) = monotonic_ns() else { return 0 };
    let now = Instant::now();
    if t >= now {
        ns.saturating_add(u64::try_from((t - now).as_nanos()).unwrap_or(u64::MAX))
    } else {
        ns.saturating_sub(u64::try_from((now - t).as_nanos()).unwrap_or(u64::MAX))
    }
}

/// Checks that a job id is safe to use as a directory name.
pub fn validate_job_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "job id {:?} must be 1 to 128 of [A-Za-z0-9._-] (and not . or ..)",
            truncate(id)
        ))
    }
}

/// What the job's environment is made from.
pub struct EnvParts<'a> {
    /// The job's own variables.
    pub job_env: &'a BTreeMap<String, String>,
    /// `TANDEM_JOB_ID`.
    pub job_id: &'a str,
    /// `TANDEM_JOB_NAME`.
    pub job_name: &'a str,
    /// `TANDEM_NODE_ID`.
    pub node_id: &'a str,
    /// `TANDEM_NODE_NAME`.
    pub node_name: &'a str,
    /// `TANDEM_FENCING_TOKEN`.
    pub fencing_token: u64,
    /// GPU UUIDs for `CUDA_VISIBLE_DEVICES` (set only when non-empty).
    pub gpus: &'a [String],
    /// `PATH` when the job sets none.
    pub path: &'a str,
}

/// Builds the job's whole environment. The job does not inherit the agent's (which may hold a
/// join token): it gets `PATH`, its own variables, then the `TANDEM_*` ones, which win, so a job
/// cannot be started believing another token or node.
pub fn build_env(p: &EnvParts<'_>) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), p.path.to_string());
    for (k, v) in p.job_env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(format!("bad environment variable {:?}", truncate(k)));
        }
        env.insert(k.clone(), v.clone());
    }
    for g in p.gpus {
        if g.is_empty() || g.contains([',', '\0']) {
            return Err(format!("bad GPU UUID {:?}", truncate(g)));
        }
    }
    let fixed = [
        ("TANDEM_JOB_ID", p.job_id.to_string()),
        ("TANDEM_JOB_NAME", p.job_name.to_string()),
        ("TANDEM_NODE_ID", p.node_id.to_string()),
        ("TANDEM_NODE_NAME", p.node_name.to_string()),
        ("TANDEM_FENCING_TOKEN", p.fencing_token.to_string()),
    ];
    for (k, v) in fixed {
        if v.contains('\0') {
            return Err(format!("{k} holds a NUL byte"));
        }
        env.insert(k.to_string(), v);
    }
    if !p.gpus.is_empty() {
        env.insert("CUDA_VISIBLE_DEVICES".to_string(), p.gpus.join(","));
    }
    Ok(env)
}

/// The job as the shim starts it (`spec.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobSpec {
    /// The job id.
    pub job_id: String,
    /// The job's fencing token.
    pub fencing_token: u64,
    /// Program and arguments.
    pub command: Vec<String>,
    /// The job's whole environment.
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    pub workdir: PathBuf,
    /// The lease deadline at start (CLOCK_MONOTONIC ns); the shim does not start the job past it.
    pub lease_deadline_ns: u64,
    /// SIGTERM to SIGKILL when fencing, in milliseconds.
    pub fence_kill_timeout_ms: u64,
    /// Cap of each log file before it is rotated, in bytes.
    pub log_max_bytes: u64,
    /// The cgroup the job runs in (its `job` leaf), or `None` for its process group only
    /// (see [`crate::containment`]). Absent in specs written before cgroups.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// The job's v1 cgroups that carry its limits on a hybrid host; it joins them too.
    #[serde(default)]
    pub cgroup_v1: Vec<PathBuf>,
    /// Where the kernel counts the job's OOM kills (when it has a memory limit).
    #[serde(default)]
    pub oom_file: Option<PathBuf>,
    /// The user the job runs as; `None`: the shim's own (root).
    #[serde(default)]
    pub user: Option<crate::containment::user::JobUser>,
}

/// Whether the job runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Started and not yet reaped.
    Running,
    /// Reaped, and its whole process group killed.
    Exited,
}

/// Why a job ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The job ended by itself.
    Exited,
    /// A user stop (`stop`).
    Stopped,
    /// The lease ran out, or the agent said it holds none: the job was fenced.
    Fenced,
    /// The shim itself was told to terminate (SIGTERM, SIGINT or SIGHUP) and stopped the job.
    ShimSignalled,
    /// The shim died without recording an end; the agent killed the job's group.
    Lost,
    /// The kernel killed the job (or part of it) for going over its memory limit, and the job
    /// ended. Reported to the coordinator as the job's own exit (`ExitCause::Exited`, its
    /// restart policy decides), with the reason `oom_killed`: the wire has no cause for it.
    OomKilled,
}

impl ExitReason {
    /// The wire constant the coordinator acts on.
    pub fn cause(self) -> tandem_common::proto::ExitCause {
        use tandem_common::proto::ExitCause;
        match self {
            ExitReason::Exited => ExitCause::Exited,
            ExitReason::Stopped => ExitCause::Stopped,
            ExitReason::Fenced => ExitCause::Fenced,
            ExitReason::ShimSignalled => ExitCause::ShimSignalled,
            ExitReason::Lost => ExitCause::Lost,
            ExitReason::OomKilled => ExitCause::Exited,
        }
    }

    /// The reason's name in reports: `exited`, `stopped`, `fenced`, `shimsignalled`, `lost`,
    /// `oom_killed` (the older names as they always were).
    pub fn name(self) -> String {
        match self {
            ExitReason::OomKilled => tandem_common::proto::REASON_OOM_KILLED.into(),
            r => format!("{r:?}").to_lowercase(),
        }
    }
}

/// The job's state as the shim records it (`status.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobStatus {
    /// The job id.
    pub job_id: String,
    /// The job's fencing token.
    pub fencing_token: u64,
    /// Running or exited.
    pub state: JobState,
    /// The job's pid and process group id.
    pub pid: u32,
    /// The shim's pid.
    pub shim_pid: u32,
    /// When the job started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// When it was reaped, Unix milliseconds.
    pub ended_unix_ms: Option<u64>,
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    /// Why it ended.
    pub reason: Option<ExitReason>,
    /// How the job was contained: `cgroup-v2`, `cgroup-hybrid` or `process-group`.
    #[serde(default)]
    pub containment: String,
}

/// Writes `data` to `path` atomically and durably: a temporary file in the same directory,
/// fsync, rename, fsync of the directory. Mode 0600 (a spec holds the job's environment).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Reads the highest token seen for a job (`None` when the file is absent).
pub fn read_token(job_dir: &Path) -> Result<Option<u64>, SupervisorError> {
    let path = job_dir.join(TOKEN_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| SupervisorError::Corrupt {
                path,
                reason: format!("not a token: {:?}", truncate(s.trim())),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SupervisorError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// Records `token` as the highest seen for a job.
pub fn write_token(job_dir: &Path, token: u64) -> Result<(), SupervisorError> {
    let path = job_dir.join(TOKEN_FILE);
    write_atomic(&path, format!("{token}\n").as_bytes()).map_err(|source| SupervisorError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

/// Reads a job's `status.json`, if there is a readable one.
pub fn read_status(job_dir: &Path) -> Option<JobStatus> {
    let text = fs::read(job_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Sends `sig` to the process group `pgid`. Refuses ids that would mean "every process"
/// (`kill(0)`, `kill(-1)`) or init's group: those can only come from a bug or a corrupt file.
pub fn signal_group(pgid: i32, sig: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions; pgid > 1 targets one group only.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_bad_lines_are_refused() {
        for c in [
            ShimCommand::Lease(0),
            ShimCommand::Lease(u64::MAX),
            ShimCommand::Fence,
            ShimCommand::Stop {
                kill_timeout_ms: 5000,
            },
            ShimCommand::FenceKill { timeout_ms: 0 },
            ShimCommand::FenceKill {
                timeout_ms: u64::MAX,
            },
        ] {
            assert_eq!(ShimCommand::parse(&c.to_line()), Ok(c));
        }
        assert_eq!(
            ShimCommand::parse("  lease 12\r\n"),
            Ok(ShimCommand::Lease(12))
        );
        for bad in [
            "",
            "lease",
            "lease -1",
            "lease 1.5",
            "lease 18446744073709551616",
            "lease 1 2",
            "fence now",
            "stop",
            "stop x",
            "fencekill",
            "fencekill -5",
            "fencekill 50 ms",
            "fence 50",
            "LEASE 1",
            "kill 9",
            "\u{0}",
        ] {
            assert!(ShimCommand::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn shim_greetings_round_trip_and_nonsense_is_refused() {
        let h = ShimHello {
            job_id: "j-1".into(),
            fencing_token: 7,
            pid: 4242,
            started_unix_ms: 1_700_000_000_000,
            ending: false,
            deadline_ns: u64::MAX,
            fence_kill_ms: 250,
        };
        assert_eq!(ShimHello::parse(&h.to_line()), Ok(h.clone()));
        let e = ShimHello { ending: true, ..h };
        assert_eq!(ShimHello::parse(&e.to_line()), Ok(e));
        for bad in [
            "",
            "started 42",
            "shim 2 j 1 42 0 running 5 250",
            "shim 1 ../x 1 42 0 running 5 250",
            "shim 1 j 1 1 0 running 5 250",
            "shim 1 j 1 42 0 sleeping 5 250",
            "shim 1 j -1 42 0 running 5 250",
            "shim 1 j 1 42 0 running 5",
            "shim 1 j 1 42 0 running 5 250 extra",
        ] {
            assert!(ShimHello::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            ShimReply::Started(4242),
            ShimReply::Busy,
            ShimReply::Failed("no such file".into()),
        ] {
            assert_eq!(ShimReply::parse(&r.to_line()), Ok(r));
        }
        let multi = ShimReply::Failed("a\nb".into()).to_line();
        assert_eq!(multi.matches('\n').count(), 1);
        for bad in ["", "started", "started 0", "started 1", "started x", "ok"] {
            assert!(ShimReply::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn lower_tokens_are_refused_equal_and_higher_allowed() {
        assert!(token_allowed(None, 0));
        assert!(token_allowed(Some(5), 5));
        assert!(token_allowed(Some(5), 6));
        assert!(!token_allowed(Some(5), 4));
        assert!(!token_allowed(Some(u64::MAX), 0));
    }

    #[test]
    fn instants_convert_to_the_monotonic_clock() {
        let now = Instant::now();
        let a = monotonic_ns().unwrap();
        let later = instant_to_monotonic_ns(now + std::time::Duration::from_secs(2));
        let b = monotonic_ns().unwrap();
        // The converted deadline lies 2 s after the moment `now` was read, give or take the
        // time this test took between reads.
        assert!(later <= b + 2_000_000_000, "{later} vs {b}");
        assert!(later + 50_000_000 >= a + 2_000_000_000, "{later} vs {a}");
        let past = instant_to_monotonic_ns(now);
        assert!(past <= monotonic_ns().unwrap());
    }

    #[test]
    fn job_ids_are_safe_path_components() {
        for ok in ["j-1", "abc.DEF_9", &"x".repeat(128)] {
            assert!(validate_job_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "é",
            &"x".repeat(129),
            "a\0",
        ] {
            assert!(validate_job_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_holds_tandem_variables_that_jobs_cannot_override() {
        let mut job_env = BTreeMap::new();
        job_env.insert("FOO".to_string(), "bar".to_string());
        job_env.insert("TANDEM_FENCING_TOKEN".to_string(), "999".to_string());
        let gpus = vec!["GPU-a".to_string(), "GPU-b".to_string()];
        let parts = EnvParts {
            job_env: &job_env,
            job_id: "j1",
            job_name: "web",
            node_id: "n-0000000000000001",
            node_name: "node-a",
            fencing_token: 7,
            gpus: &gpus,
            path: "/usr/bin:/bin",
        };
        let env = build_env(&parts).unwrap();
        assert_eq!(env["FOO"], "bar");
        assert_eq!(env["TANDEM_FENCING_TOKEN"], "7");
        assert_eq!(env["TANDEM_JOB_NAME"], "web");
        assert_eq!(env["TANDEM_NODE_ID"], "n-0000000000000001");
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "GPU-a,GPU-b");
        assert_eq!(env["PATH"], "/usr/bin:/bin");
        let none = build_env(&EnvParts { gpus: &[], ..parts }).unwrap();
        assert!(!none.contains_key("CUDA_VISIBLE_DEVICES"));
        let mut bad = BTreeMap::new();
        bad.insert("A=B".to_string(), "x".to_string());
        assert!(build_env(&EnvParts {
            job_env: &bad,
            gpus: &[],
            ..parts
        })
        .is_err());
        let bad_gpu = vec!["a,b".to_string()];
        assert!(build_env(&EnvParts {
            gpus: &bad_gpu,
            ..parts
        })
        .is_err());
    }

    #[test]
    fn tokens_persist_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_token(dir.path()).unwrap(), None);
        write_token(dir.path(), 41).unwrap();
        assert_eq!(read_token(dir.path()).unwrap(), Some(41));
        fs::write(dir.path().join(TOKEN_FILE), "forty").unwrap();
        assert!(matches!(
            read_token(dir.path()),
            Err(SupervisorError::Corrupt { .. })
        ));
    }

    #[test]
    fn signal_group_refuses_every_process_ids() {
        assert!(!signal_group(0, 0));
        assert!(!signal_group(1, 0));
        assert!(!signal_group(-5, 0));
    }
}
