//! How the agent contains its jobs: a cgroup per job where the host allows it, the job's
//! process group where it does not. Every cgroup decision of the agent is made here; the
//! supervisor and the shim only ask.
//!
//! # Why a cgroup
//! A process group is only a convention: a job that calls `setsid`, turns on job control
//! (`set -m`), daemonizes or runs `sudo` leaves its group, and a fence that signals the group
//! misses it (issue 13: a background child went on writing beside the new copy). A cgroup is
//! inherited by every child and cannot be left by an unprivileged process, so killing the
//! cgroup (`cgroup.kill`, or freeze and SIGKILL each member) ends everything the job started.
//! It is also the one place that says whether an old copy is still alive: `populated` in its
//! `cgroup.events`, which the job cannot delete, unlike a file in its job dir.
//!
//! # Modes ([`Mode`])
//! - `cgroup-v2`: a pure cgroup2 host (`/sys/fs/cgroup/cgroup.controllers` exists).
//! - `cgroup-hybrid`: v1 controllers with an (often empty) cgroup2 hierarchy at
//!   `/sys/fs/cgroup/unified`, as on Debian/Ubuntu hosts before the switch, and on CI. The
//!   unified hierarchy holds and kills the job's processes; it needs no controllers for that.
//! - `process-group`: neither can be used (no cgroup2 mount, not root, a read-only cgroup fs,
//!   or `containment = "process-group"` in the config). The fence signals the job's process
//!   group as before, and a job that leaves its group escapes it: the agent says so at start,
//!   in `tandem-agent inventory` and `tandem-agent status`, and in each job's `status.json`.
//!
//! # The tree
//! The agent's subtree is a child of the cgroup the agent runs in (under systemd, its unit's:
//! `Delegate=yes` hands that subtree to the agent), named after the state dir so that agents
//! with different state dirs in one cgroup (tests) never share one, and a restarted agent finds
//! its predecessor's: `<agent's cgroup>/tandem-<hash of the state dir>/jobs/<job id>/`, with
//! two leaves: `shim` (the job's shim) and `job` (the job and all it starts). The job's cgroup
//! stays populated until the shim and every process of the job have exited, so a restarted
//! agent waits for it ([`crate::leftovers`]) and a start of the same job is refused as busy
//! while it is. Empty job cgroups are removed when their shim has ended and at agent start.
//! A restarted agent that runs in a different cgroup than its predecessor does not see the
//! old tree; it still has the shims' locks.
//!
//! # Limits ([`limits`])
//! On a hybrid host the v1 memory, cpu and pids hierarchies carry them, in a tree of the same
//! name under the agent's v1 cgroups. On pure v2 the controllers must be handed down from the
//! agent's cgroup, which then may hold no process: that needs the agent started in a subgroup
//! (`DelegateSubgroup=agent`, systemd 254+) or at the root; otherwise memory and CPU limits are
//! refused with the reason, and jobs are still held and killed in their cgroups.
//!
//! # Starts ([`warm`])
//! A move into a cgroup after a quiet spell waits for an RCU grace period in the kernel (4-8 ms
//! on CI's host). When a start arrives the agent sets that wait going at once, in a thread of
//! its own, so that it passes beside the start's durable writes instead of after them.

pub mod cgroup;
pub mod limits;
pub mod user;
pub mod warm;

pub use limits::Limits;
use limits::V1;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The configured choice: use cgroups where possible, or never.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Choice {
    /// Cgroups where the host allows (the default).
    #[default]
    Auto,
    /// Process groups only (for comparison and for hosts where cgroups misbehave).
    ProcessGroup,
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Choice::Auto),
            "process-group" => Ok(Choice::ProcessGroup),
            _ => Err(format!(
                "`{s}` is not a containment: use \"auto\" or \"process-group\""
            )),
        }
    }
}

/// How jobs are contained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A cgroup per job on a pure cgroup2 host.
    CgroupV2,
    /// A cgroup per job in the unified hierarchy of a hybrid host.
    CgroupHybrid,
    /// The job's process group only.
    ProcessGroup,
}

impl Mode {
    /// The mode a job's cgroup path belongs to (the shim knows only the path).
    pub fn of_cgroup(path: Option<&Path>) -> Mode {
        match path {
            None => Mode::ProcessGroup,
            Some(p) if p.starts_with(UNIFIED_MOUNT) => Mode::CgroupHybrid,
            Some(_) => Mode::CgroupV2,
        }
    }

    /// The name shown in logs, `inventory`, `status` and `status.json`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::CgroupV2 => "cgroup-v2",
            Mode::CgroupHybrid => "cgroup-hybrid",
            Mode::ProcessGroup => "process-group",
        }
    }
}

/// What went wrong with a job's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum ContainmentError {
    /// The job's cgroup still has processes: an earlier copy (or its shim) is alive.
    #[error("{}: an earlier copy of the job is still alive in it", path.display())]
    Alive {
        /// The job's cgroup.
        path: PathBuf,
    },
    /// A cgroup could not be made or opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The two leaves of a job's cgroup, and on a hybrid host its v1 cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobCgroup {
    /// `jobs/<id>`: populated while the shim or any process of the job lives.
    pub dir: PathBuf,
    /// `jobs/<id>/shim`: the shim.
    pub shim: PathBuf,
    /// `jobs/<id>/job`: the job and everything it starts.
    pub job: PathBuf,
    /// The job's cgroups in the v1 hierarchies that carry its limits (hybrid hosts): the job
    /// joins these too.
    pub v1: Vec<PathBuf>,
    /// Where the kernel counts the job's OOM kills, when it has a memory limit.
    pub oom_file: Option<PathBuf>,
}

/// What a job's cgroups count (see [`Containment::usage`]); `None` where a count is not kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, microseconds.
    pub cpu_usec: Option<u64>,
    /// Memory charged now, bytes.
    pub memory_bytes: Option<u64>,
    /// The most memory charged at once, bytes.
    pub memory_peak_bytes: Option<u64>,
}

/// The agent's containment, decided once at start.
#[derive(Clone, Debug)]
pub struct Containment {
    mode: Mode,
    /// The agent's subtree (`.../tandem-<hash>`), in cgroup modes.
    root: Option<PathBuf>,
    /// Why cgroups are not used, or where the tree is.
    note: String,
    /// Hybrid hosts: the agent's subtree in each v1 hierarchy used for limits.
    v1: Vec<(V1, PathBuf)>,
    /// Pure v2: whether the memory, cpu and pids controllers reach the job leaves (else why
    /// not: limits are then refused).
    v2_limits: Result<(), String>,
    /// Warms the kernel's move lock when a start arrives ([`warm`]), in cgroup modes.
    warmer: Option<warm::MoveWarmer>,
}

const V2_MOUNT: &str = "/sys/fs/cgroup";
const UNIFIED_MOUNT: &str = "/sys/fs/cgroup/unified";

/// The mode the agent runs in, for `tandem-agent status` (set by [`Containment::detect`]).
static RUNNING: OnceLock<Mode> = OnceLock::new();

/// The mode this agent process detected at start; `process-group` before that.
pub fn running_mode() -> Mode {
    RUNNING.get().copied().unwrap_or(Mode::ProcessGroup)
}

/// The cgroup2 hierarchy of this host and whether it is the hybrid one.
fn hierarchy() -> Option<(PathBuf, Mode)> {
    if Path::new(V2_MOUNT).join("cgroup.controllers").exists() {
        Some((V2_MOUNT.into(), Mode::CgroupV2))
    } else if Path::new(UNIFIED_MOUNT).join("cgroup.procs").exists() {
        Some((UNIFIED_MOUNT.into(), Mode::CgroupHybrid))
    } else {
        None
    }
}

/// This process's cgroup in the cgroup2 hierarchy (`0::/path` in `/proc/self/cgroup`).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().trim_end_matches(" (deleted)").to_string())
}

/// FNV-1a, 64 bits: a stable name for a state dir (not a secret, only distinct).
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Containment {
    /// Process groups only, for `why`.
    pub fn process_group(why: impl Into<String>) -> Self {
        Self {
            mode: Mode::ProcessGroup,
            root: None,
            note: why.into(),
            v1: Vec::new(),
            v2_limits: Err("no cgroups".into()),
            warmer: None,
        }
    }

    /// Where cgroups would go, without making anything: `(mode, note)` (for `inventory`).
    pub fn probe() -> (Mode, String) {
        let Some((mount, mode)) = hierarchy() else {
            return (
                Mode::ProcessGroup,
                format!("no cgroup2 hierarchy at {V2_MOUNT} or {UNIFIED_MOUNT}"),
            );
        };
        let Some(own) = own_cgroup() else {
            return (
                Mode::ProcessGroup,
                "this process is in no cgroup2 cgroup".into(),
            );
        };
        let dir = mount.join(own.trim_start_matches('/'));
        // SAFETY: access reads a NUL-terminated path.
        let writable = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0);
        if writable {
            (mode, format!("job cgroups under {}", dir.display()))
        } else {
            (
                Mode::ProcessGroup,
                format!("{} is not writable by this user", dir.display()),
            )
        }
    }

    /// Decides the containment of the agent with `state_dir`, making its subtree; records the
    /// mode for `status`. Never fails: where cgroups cannot be used it says why.
    pub fn detect(state_dir: &Path, choice: Choice) -> Self {
        let c = if choice == Choice::ProcessGroup {
            Self::process_group("configured (containment = \"process-group\")")
        } else {
            Self::make_tree(state_dir)
        };
        let _ = RUNNING.set(c.mode);
        c
    }

    fn make_tree(state_dir: &Path) -> Self {
        let Some((mount, mode)) = hierarchy() else {
            return Self::process_group(format!(
                "no cgroup2 hierarchy at {V2_MOUNT} or {UNIFIED_MOUNT}"
            ));
        };
        let Some(own) = own_cgroup() else {
            return Self::process_group("this process is in no cgroup2 cgroup");
        };
        let abs = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let mut base = mount.join(own.trim_start_matches('/'));
        let warmer = warm::MoveWarmer::new(mount.clone());
        let in_subgroup = base.file_name().is_some_and(|n| n == "agent");
        // An agent run from a shell inside an old tree must not nest a new tree in it.
        while base
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| matches!(n, "shim" | "job" | "agent"))
        {
            base.pop();
        }
        let root = base.join(format!(
            "tandem-{:016x}",
            fnv64(abs.as_os_str().as_encoded_bytes())
        ));
        if let Err(e) = std::fs::create_dir_all(root.join("jobs")) {
            return Self::process_group(format!("cannot make {}: {e}", root.display()));
        }
        let kill = if root.join("cgroup.kill").exists() {
            "cgroup.kill"
        } else {
            "freeze and kill"
        };
        let name = root.file_name().map(PathBuf::from).unwrap_or_default();
        let (v1, v2_limits) = match mode {
            Mode::CgroupV2 => (Vec::new(), enable_v2_controllers(&base, &root, in_subgroup)),
            _ => (
                v1_trees(&name),
                Err("a hybrid host: limits are on v1".into()),
            ),
        };
        let limits = match (&v2_limits, v1.is_empty()) {
            (Ok(()), _) => "limits on cgroup v2".to_string(),
            (Err(_), false) => format!(
                "limits on v1 {}",
                v1.iter()
                    .map(|(c, _)| c.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (Err(e), true) => format!("no limits: {e}"),
        };
        Self {
            mode,
            note: format!("job cgroups under {} ({kill}; {limits})", root.display()),
            root: Some(root),
            v1,
            v2_limits,
            warmer: Some(warmer),
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Where the tree is, or why there is none.
    pub fn note(&self) -> &str {
        &self.note
    }

    /// In cgroup modes, when no cgroup mount has `favordynmods` (see
    /// [`cgroup::favors_dynmods`]): what each job start pays for its moves, and how to avoid it.
    /// Reads `/proc/mounts` (once, at start).
    pub fn slow_moves_hint(&self) -> Option<&'static str> {
        if self.mode == Mode::ProcessGroup {
            return None;
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        (!cgroup::favors_dynmods(&mounts)).then_some(
            "each job start moves processes into cgroups, and the kernel makes the first move \
             after a quiet spell wait for an RCU grace period (about 10 ms of every failover's \
             start); mounting the cgroup hierarchies with `favordynmods` (Linux 6.0+, or \
             booting with cgroup_favordynmods=true) removes most of it",
        )
    }

    /// A start has arrived: warms the kernel's move lock for its moves, in a thread of its
    /// own (see [`warm`]). Nothing in process-group mode.
    pub fn warm_up_moves(&self) {
        if let Some(w) = &self.warmer {
            w.warm();
        }
    }

    /// The cgroup of `job_id` (whether or not it exists), in cgroup modes, with the v1
    /// cgroups for the controllers `limits` needs.
    fn job_with(&self, job_id: &str, limits: Option<&Limits>) -> Option<JobCgroup> {
        let dir = self.root.as_ref()?.join("jobs").join(job_id);
        let job = dir.join("job");
        let v1: Vec<(V1, PathBuf)> = self
            .v1
            .iter()
            .filter(|(c, _)| limits.is_none_or(|l| c.wanted(l)))
            .map(|(c, root)| (*c, root.join("jobs").join(job_id)))
            .collect();
        let memory = limits.is_some_and(|l| l.memory_bytes.is_some());
        let oom_file = if !memory {
            None
        } else if self.v2_limits.is_ok() {
            Some(job.join("memory.events"))
        } else {
            v1.iter()
                .find(|(c, _)| *c == V1::Memory)
                .map(|(_, d)| d.join("memory.oom_control"))
        };
        Some(JobCgroup {
            shim: dir.join("shim"),
            job,
            dir,
            v1: v1.into_iter().map(|(_, d)| d).collect(),
            oom_file,
        })
    }

    /// The cgroup of `job_id` (whether or not it exists), in cgroup modes.
    pub fn job(&self, job_id: &str) -> Option<JobCgroup> {
        self.job_with(job_id, None)
    }

    /// Makes the cgroup for a new copy of `job_id` with `limits` written into it; refuses
    /// while an earlier copy (or its shim) is alive in it. A limit this host has no controller
    /// for is left out with a warning (the job runs: its resources still steer placement, as
    /// on a node without cgroups); the agent's start-up line says which limits it can enforce.
    /// `None` in process-group mode (where no limit is enforced).
    pub fn prepare(
        &self,
        job_id: &str,
        limits: &Limits,
    ) -> Result<Option<JobCgroup>, ContainmentError> {
        let Some(cg) = self.job_with(job_id, Some(limits)) else {
            return Ok(None);
        };
        if cgroup::populated(&cg.dir) {
            return Err(ContainmentError::Alive { path: cg.dir });
        }
        let io = |what: String| move |source| ContainmentError::Io { what, source };
        for d in [&cg.shim, &cg.job] {
            std::fs::create_dir_all(d).map_err(io(format!("making cgroup {}", d.display())))?;
        }
        match &self.v2_limits {
            Ok(()) => {
                // The job's parent hands the controllers down to its two leaves.
                let _ = std::fs::write(cg.dir.join("cgroup.subtree_control"), V2_CONTROLLERS_ON);
                if let Err(e) = limits::apply_v2(&cg.job, limits) {
                    tracing::warn!(job = %job_id, error = %e, "the job's limits are not enforced: they cannot be written to its cgroup");
                }
            }
            Err(why) => {
                let missing: Vec<&str> = V1::ALL
                    .iter()
                    .filter(|c| c.wanted(limits) && !self.v1.iter().any(|(h, _)| h == *c))
                    .map(|c| c.name())
                    .collect();
                if missing.iter().any(|m| *m != "pids") {
                    tracing::warn!(job = %job_id, missing = %missing.join(", "), "some of the job's limits are not enforced: no controller for them ({why})");
                }
                for (ctl, _) in self.v1.iter().filter(|(c, _)| c.wanted(limits)) {
                    let d = self.v1_dir(*ctl, job_id);
                    std::fs::create_dir_all(&d)
                        .map_err(io(format!("making cgroup {}", d.display())))?;
                    limits::apply_v1(*ctl, &d, limits)
                        .map_err(io(format!("limiting {}", d.display())))?;
                }
            }
        }
        Ok(Some(cg))
    }

    fn v1_dir(&self, ctl: V1, job_id: &str) -> PathBuf {
        self.v1
            .iter()
            .find(|(c, _)| *c == ctl)
            .map(|(_, r)| r.join("jobs").join(job_id))
            .unwrap_or_default()
    }

    /// Whether anything of `job_id` (its shim, or any process of the job) is alive.
    pub fn alive(&self, job_id: &str) -> bool {
        self.job(job_id)
            .is_some_and(|cg| cgroup::populated(&cg.dir))
    }

    /// The jobs with a populated cgroup, sorted.
    pub fn alive_jobs(&self) -> Vec<String> {
        let Some(root) = &self.root else {
            return Vec::new();
        };
        let mut v: Vec<String> = std::fs::read_dir(root.join("jobs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| cgroup::populated(&e.path()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// SIGKILLs every process of `job_id`'s job (not its shim), until none is left or
    /// `limit` passed; `false` if some are left. `true` in process-group mode.
    pub fn kill_job(&self, job_id: &str, limit: std::time::Duration) -> bool {
        self.job(job_id)
            .is_none_or(|cg| cgroup::kill_until_empty(&cg.job, limit))
    }

    /// What `job_id`'s job (its `job` leaf: not its shim) has used, from its cgroups: CPU time
    /// from `cpu.stat` (any cgroup2 cgroup has it, controllers or not), memory now and at peak
    /// from the v2 memory controller where it reaches the job, else from the job's v1 memory
    /// cgroup (hybrid hosts: only a job with a memory limit has one). `None` in process-group
    /// mode.
    pub fn usage(&self, job_id: &str) -> Option<Usage> {
        let cg = self.job(job_id)?;
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let num = |p: PathBuf| read(p).and_then(|s| s.trim().parse::<u64>().ok());
        let cpu_usec = read(cg.job.join("cpu.stat")).and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
        });
        let (memory_bytes, memory_peak_bytes) = if self.v2_limits.is_ok() {
            (
                num(cg.job.join("memory.current")),
                num(cg.job.join("memory.peak")),
            )
        } else if self.v1.iter().any(|(c, _)| *c == V1::Memory) {
            let d = self.v1_dir(V1::Memory, job_id);
            (
                num(d.join("memory.usage_in_bytes")),
                num(d.join("memory.max_usage_in_bytes")),
            )
        } else {
            (None, None)
        };
        Some(Usage {
            cpu_usec,
            memory_bytes,
            memory_peak_bytes,
        })
    }

    /// Removes `job_id`'s cgroups if nothing lives in them.
    pub fn release(&self, job_id: &str) {
        if let Some(cg) = self.job(job_id) {
            cgroup::remove_tree(&cg.dir);
            for d in cg.v1 {
                cgroup::remove_tree(&d);
            }
        }
    }

    /// Removes the agent's whole tree where nothing lives in it any more (at a clean exit;
    /// the cgroups of shims still running stay, with their parents).
    pub fn remove_empty_tree(&self) {
        let roots = self.root.iter().chain(self.v1.iter().map(|(_, r)| r));
        for root in roots {
            cgroup::remove_tree(root);
        }
    }

    /// Removes every empty job cgroup (at start, before any job is started).
    pub fn sweep(&self) {
        let roots = self.root.iter().chain(self.v1.iter().map(|(_, r)| r));
        for root in roots {
            for e in std::fs::read_dir(root.join("jobs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                cgroup::remove_tree(&e.path());
            }
        }
    }
}

/// What `cgroup.subtree_control` is asked for on pure v2.
const V2_CONTROLLERS_ON: &str = "+memory +cpu +pids";

/// Pure v2: hands the memory, cpu and pids controllers down from `base` to `root/jobs`.
///
/// A cgroup that hands controllers down may hold no process (the root excepted), so `base`
/// must be empty of processes: under systemd that is `DelegateSubgroup=agent` (systemd 254+),
/// which starts the agent in `base/agent`. The agent never moves itself out of `base` to make
/// room: systemd starts every later `ExecStart=` of the unit in `base`, and would then fail
/// (`EBUSY`) once controllers are on there. Where `base` is not so arranged, limits are
/// refused with the reason (holding and killing jobs needs no controller).
fn enable_v2_controllers(base: &Path, root: &Path, in_subgroup: bool) -> Result<(), String> {
    let is_root = !base.join("cgroup.events").exists();
    let has = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.subtree_control")).is_ok_and(|s| {
            ["memory", "cpu", "pids"]
                .iter()
                .all(|c| s.split_whitespace().any(|w| w == *c))
        })
    };
    if !has(base) {
        if !in_subgroup && !is_root {
            return Err(format!(
                "the agent runs in {} itself, which then cannot hand controllers down; run it \
                 in a subgroup (systemd: DelegateSubgroup=agent)",
                base.display()
            ));
        }
        std::fs::write(base.join("cgroup.subtree_control"), V2_CONTROLLERS_ON).map_err(|e| {
            format!(
                "cannot enable memory, cpu and pids in {}: {e}",
                base.display()
            )
        })?;
    }
    for dir in [root.to_path_buf(), root.join("jobs")] {
        std::fs::write(dir.join("cgroup.subtree_control"), V2_CONTROLLERS_ON).map_err(|e| {
            format!(
                "cannot enable memory, cpu and pids in {}: {e}",
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// Hybrid hosts: the agent's subtree `<own v1 cgroup>/<name>/jobs` in each v1 hierarchy it can
/// write (those it cannot are left out, and the limits they would carry refused).
fn v1_trees(name: &Path) -> Vec<(V1, PathBuf)> {
    V1::ALL
        .iter()
        .filter_map(|c| {
            let root = limits::v1_own(*c)?.join(name);
            std::fs::create_dir_all(root.join("jobs")).ok()?;
            Some((*c, root))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_modes_have_names() {
        assert_eq!("auto".parse::<Choice>(), Ok(Choice::Auto));
        assert_eq!("process-group".parse::<Choice>(), Ok(Choice::ProcessGroup));
        assert!("cgroup".parse::<Choice>().unwrap_err().contains("auto"));
        assert_eq!(Mode::CgroupHybrid.name(), "cgroup-hybrid");
        let pg = Containment::process_group("test");
        assert_eq!(pg.mode(), Mode::ProcessGroup);
        assert!(pg.job("a").is_none());
        assert!(matches!(pg.prepare("a", &Limits::default()), Ok(None)));
        assert!(!pg.alive("a") && pg.alive_jobs().is_empty());
    }

    #[test]
    fn state_dir_names_are_stable_and_distinct() {
        assert_eq!(fnv64(b"/var/lib/tandem"), fnv64(b"/var/lib/tandem"));
        assert_ne!(fnv64(b"/var/lib/tandem"), fnv64(b"/var/lib/tandem2"));
    }
}
