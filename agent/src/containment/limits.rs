//! A job's limits, written into its cgroups: memory, CPU and pids, on cgroup v2 (`memory.max`,
//! `cpu.max`, `pids.max` in the job's leaf) or on a hybrid host's v1 controllers
//! (`memory.limit_in_bytes`, the CFS quota, `pids.max` in the job's cgroup of each), and how
//! an OOM kill is read back (`oom_kill` in `memory.events`, or in v1's `memory.oom_control`).
//!
//! Swap is capped with memory where the kernel accounts it (`memory.swap.max = 0`, v1's
//! `memory.memsw.limit_in_bytes`), so a job over its memory is OOM-killed rather than swapped
//! out and slowed to a crawl. The CFS period is 100 ms; a quota of `cpu_millis` is that many
//! thousandths of a core per period.

use std::io;
use std::path::{Path, PathBuf};

/// The pids limit of every job in a cgroup (a fork bomb stops there, not at the node's).
pub const DEFAULT_PIDS_MAX: u64 = 4096;
/// The CFS period.
const CFS_PERIOD_US: u64 = 100_000;

/// What a job may use. `None`: not limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory (and no swap beyond it).
    pub memory_bytes: Option<u64>,
    /// Thousandths of a core.
    pub cpu_millis: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: None,
            cpu_millis: None,
            pids: Some(DEFAULT_PIDS_MAX),
        }
    }
}

/// The CFS quota for `cpu_millis` per 100 ms period, in microseconds (at least 1 ms, the
/// kernel's minimum).
pub fn cfs_quota_us(cpu_millis: u64) -> u64 {
    (cpu_millis.saturating_mul(CFS_PERIOD_US) / 1000).max(1000)
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", dir.join(file).display()),
        )
    })
}

/// Writes `limits` into a cgroup2 leaf (the controllers must be enabled above it).
pub fn apply_v2(leaf: &Path, limits: &Limits) -> io::Result<()> {
    if let Some(m) = limits.memory_bytes {
        write(leaf, "memory.max", &m.to_string())?;
        if leaf.join("memory.swap.max").exists() {
            write(leaf, "memory.swap.max", "0")?;
        }
        // One OOM kill ends the whole job, not one process of it at random.
        if leaf.join("memory.oom.group").exists() {
            write(leaf, "memory.oom.group", "1")?;
        }
    }
    if let Some(c) = limits.cpu_millis {
        write(
            leaf,
            "cpu.max",
            &format!("{} {CFS_PERIOD_US}", cfs_quota_us(c)),
        )?;
    }
    if let Some(p) = limits.pids {
        write(leaf, "pids.max", &p.to_string())?;
    }
    Ok(())
}

/// The v1 controllers a hybrid host's limits use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V1 {
    /// `memory`.
    Memory,
    /// `cpu` (CFS bandwidth).
    Cpu,
    /// `pids`.
    Pids,
}

impl V1 {
    /// Every one of them.
    pub const ALL: [V1; 3] = [V1::Memory, V1::Cpu, V1::Pids];

    /// Its name in `/proc/self/cgroup` and under `/sys/fs/cgroup`.
    pub fn name(self) -> &'static str {
        match self {
            V1::Memory => "memory",
            V1::Cpu => "cpu",
            V1::Pids => "pids",
        }
    }

    /// Whether `limits` asks anything of this controller.
    pub fn wanted(self, limits: &Limits) -> bool {
        match self {
            V1::Memory => limits.memory_bytes.is_some(),
            V1::Cpu => limits.cpu_millis.is_some(),
            V1::Pids => limits.pids.is_some(),
        }
    }
}

/// Writes this controller's part of `limits` into the job's v1 cgroup `dir`.
pub fn apply_v1(ctl: V1, dir: &Path, limits: &Limits) -> io::Result<()> {
    match ctl {
        V1::Memory => {
            if let Some(m) = limits.memory_bytes {
                // memsw must stay >= the memory limit: raise memory first, then memsw, and on a
                // lower limit the other way round. A new cgroup starts unlimited: memory first.
                write(dir, "memory.limit_in_bytes", &m.to_string())?;
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(dir, "memory.memsw.limit_in_bytes", &m.to_string())?;
                }
            }
        }
        V1::Cpu => {
            if let Some(c) = limits.cpu_millis {
                write(dir, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                write(dir, "cpu.cfs_quota_us", &cfs_quota_us(c).to_string())?;
            }
        }
        V1::Pids => {
            if let Some(p) = limits.pids {
                write(dir, "pids.max", &p.to_string())?;
            }
        }
    }
    Ok(())
}

/// How many processes of the job the kernel OOM-killed, from `file` (`memory.events` on v2,
/// `memory.oom_control` on v1: both have an `oom_kill N` line). `0` when unreadable.
pub fn oom_kills(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// This process's cgroup path in the v1 hierarchy of `ctl` (`N:memory:/path`), with the
/// hierarchy's mount (`/sys/fs/cgroup/<name>`, which may list several controllers).
pub fn v1_own(ctl: V1) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctls, path) = (it.next()?, it.next()?, it.next()?);
        ctls.split(',').any(|c| c == ctl.name()).then_some(path)
    })?;
    let mount = Path::new("/sys/fs/cgroup").join(ctl.name());
    mount
        .join("cgroup.procs")
        .exists()
        .then(|| mount.join(path.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_and_oom_counters() {
        assert_eq!(cfs_quota_us(500), 50_000);
        assert_eq!(cfs_quota_us(2000), 200_000);
        assert_eq!(cfs_quota_us(1), 1000, "the kernel's minimum");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&f), 2);
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n").unwrap();
        assert_eq!(oom_kills(&f), 1);
        assert_eq!(oom_kills(&d.path().join("none")), 0);
        assert_eq!(Limits::default().pids, Some(DEFAULT_PIDS_MAX));
    }

    #[test]
    fn limits_are_written_where_the_kernel_reads_them() {
        let d = tempfile::tempdir().unwrap();
        for f in ["memory.max", "memory.swap.max", "cpu.max", "pids.max"] {
            std::fs::write(d.path().join(f), "max").unwrap();
        }
        let l = Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(250),
            pids: Some(100),
        };
        apply_v2(d.path(), &l).unwrap();
        let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "25000 100000");
        assert_eq!(read("pids.max"), "100");
        apply_v1(V1::Cpu, d.path(), &l).unwrap();
        assert_eq!(read("cpu.cfs_quota_us"), "25000");
    }
}
