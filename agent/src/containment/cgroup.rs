//! File operations on one cgroup directory of a cgroup2 hierarchy (the pure v2 mount, or a
//! hybrid host's `unified` one): who is in it, whether anything is, and killing all of it.
//!
//! Plain functions on paths, shared by the agent (which makes, checks and removes a job's
//! cgroups) and the shim (which puts the job into its cgroup and kills it at the fence).
//! `cgroup.procs` never lists zombies, so "empty" means every process has exited, whether or
//! not its parent has reaped it yet.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether the kernel's cgroup migrations are set to be cheap: some cgroup or cgroup2 mount in
/// `mounts` (the text of `/proc/mounts`) has `favordynmods`, which puts the kernel's
/// thread-group lock in the mode where a move into a cgroup does not wait for an RCU grace
/// period (Linux 6.0+; the mount option, or `cgroup_favordynmods=true` at boot). Without it
/// the first move after a quiet spell waits one out: about 10 ms on a job's start.
pub fn favors_dynmods(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 4
            && matches!(f[2], "cgroup" | "cgroup2")
            && f[3].split(',').any(|o| o == "favordynmods")
    })
}

/// The pids in `dir` itself (not its children). A missing dir has none.
pub fn procs(dir: &Path) -> io::Result<Vec<i32>> {
    match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The pids in `dir` and every cgroup below it (a job running as root may make its own).
pub fn procs_recursive(dir: &Path) -> Vec<i32> {
    let mut all = procs(dir).unwrap_or_default();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            all.extend(procs_recursive(&e.path()));
        }
    }
    all
}

/// Whether any process lives in `dir` or below: `populated 1` in `cgroup.events` (every
/// non-root cgroup2 has it), else any pid in the subtree. A missing dir is not populated.
pub fn populated(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(s) => s.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => dir.is_dir() && !procs_recursive(dir).is_empty(),
    }
}

/// Sends `sig` to every process in `dir` and below.
pub fn signal_all(dir: &Path, sig: i32) {
    for pid in procs_recursive(dir) {
        if pid > 1 {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

fn write(path: &Path, what: &str) -> io::Result<()> {
    use std::io::Write;
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(what.as_bytes())
}

/// SIGKILLs everything in `dir` and below once: `cgroup.kill` where the kernel has it (5.14+,
/// atomic, and a fork cannot race it); else freeze (so nothing forks meanwhile), SIGKILL
/// every member, thaw (a frozen process dies of SIGKILL once thawed).
pub fn kill_all(dir: &Path) {
    let kill = dir.join("cgroup.kill");
    if kill.exists() && write(&kill, "1").is_ok() {
        return;
    }
    freeze_and_kill(dir);
}

/// The way of kernels before `cgroup.kill` (5.14): freeze `dir` (5.2+; nothing forks while
/// frozen), SIGKILL every member, thaw. Public so that it is tested on kernels that have
/// `cgroup.kill` too.
pub fn freeze_and_kill(dir: &Path) {
    let freeze = dir.join("cgroup.freeze");
    let frozen = freeze.exists() && write(&freeze, "1").is_ok();
    signal_all(dir, libc::SIGKILL);
    if frozen {
        let _ = write(&freeze, "0");
    }
}

/// Kills everything in `dir` and below until it is empty, or `limit` passed (then `false`).
/// Re-kills each round: without `cgroup.kill`, a fork between the read and the kill survives
/// one round.
pub fn kill_until_empty(dir: &Path, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if !dir.is_dir() || procs_recursive(dir).is_empty() {
            return true;
        }
        kill_all(dir);
        if Instant::now() >= until {
            return procs_recursive(dir).is_empty();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Opens `dir/cgroup.procs` for writing: writing `0` to it moves the writer into `dir`. Opened
/// before a fork, written in the child before exec (`write` is async-signal-safe).
pub fn open_procs(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
}

/// In a child between fork and exec: moves the calling process into the cgroup whose
/// `cgroup.procs` is `fd`. Only async-signal-safe calls.
pub fn join_in_child(fd: i32) -> io::Result<()> {
    // SAFETY: writes one byte from a static buffer to a descriptor the caller owns.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes `dir` and the empty cgroups below it, deepest first. A cgroup with processes in it
/// cannot be removed (`EBUSY`) and stays, with its parents: that is the point.
pub fn remove_tree(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn favordynmods_is_found_on_a_cgroup_mount_only() {
        let hybrid = "cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n";
        assert!(!favors_dynmods(hybrid));
        assert!(favors_dynmods(
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nsdelegate,favordynmods 0 0\n"
        ));
        assert!(favors_dynmods(&format!(
            "{hybrid}cgroup /x cgroup rw,relatime,favordynmods,name=x 0 0\n"
        )));
        // Not a cgroup mount, or the word inside another option.
        assert!(!favors_dynmods(
            "tmpfs /favordynmods tmpfs rw,favordynmods 0 0\n"
        ));
        assert!(!favors_dynmods(
            "cgroup2 /c cgroup2 rw,nofavordynmods 0 0\n"
        ));
        assert!(!favors_dynmods(""));
    }
}
