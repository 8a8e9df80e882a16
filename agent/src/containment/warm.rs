//! Warming up the kernel's cgroup move lock when a start arrives, so that the start's own
//! moves do not wait for an RCU grace period.
//!
//! # Why
//! Every move into a cgroup (a write to `cgroup.procs`, on any hierarchy) takes one global
//! lock of the kernel's, a per-CPU rwsem whose writer first switches its readers (every fork
//! and exit) to their slow path and waits out an RCU grace period for that. The switch stays
//! made for about one grace period after the last move; a move after a quiet spell waits again.
//! On this project's CI host (Linux 6.18, hybrid, 2 cores) that wait is 4-8 ms, and a start
//! moves its shim, then its job (two hierarchies on a hybrid host): a standby that has been
//! quiet for a while paid it in every failover's start (+10-15 ms of the fast settings' 350 ms).
//! `tests/cgroup_move.c` times it; the `favordynmods` mount option removes it for good
//! ([`super::cgroup::favors_dynmods`]), but it is the host's to set.
//!
//! # How
//! When a start arrives, before its durable writes and its cgroups are made, a thread of its
//! own moves the agent into the cgroup it is in already (read from `/proc/self/cgroup` then,
//! not remembered from start-up: the agent may have been moved since, and a remembered path
//! would move it back): a move that changes nothing, but takes
//! the lock and so waits out the grace period beside the start's other work. The start's moves
//! a few ms later find the switch made and take about 0.1 ms. (A write of a pid that does not
//! exist would be refused before the lock is taken, on Linux 6.18: it does not warm anything.)
//! Best effort: a failed warm-up changes nothing, and one under way is not doubled.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Starts warm-ups of the move lock (see the module): one at a time (clones share it).
#[derive(Clone, Debug)]
pub struct MoveWarmer {
    /// The cgroup2 mount that `/proc/self/cgroup`'s `0::` line is relative to.
    mount: PathBuf,
    busy: Arc<AtomicBool>,
}

impl MoveWarmer {
    /// A warmer that moves this process into the cgroup it runs in, in the cgroup2 hierarchy
    /// mounted at `mount`.
    pub fn new(mount: PathBuf) -> Self {
        Self {
            mount,
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts a warm-up in a thread of its own and returns at once; nothing if one is under
    /// way (it warms for this start too).
    pub fn warm(&self) {
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let mount = self.mount.clone();
        let busy = Arc::clone(&self.busy);
        let spawned = std::thread::Builder::new()
            .name("cgroup-warm-up".into())
            .spawn(move || {
                match super::own_cgroup() {
                    Some(own) => move_into(&procs_of(&mount, &own)),
                    None => tracing::debug!(
                        "no warm-up of the cgroup move lock: this process is in no cgroup2 cgroup"
                    ),
                }
                busy.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.busy.store(false, Ordering::Release);
        }
    }
}

/// `cgroup.procs` of the cgroup `own` (as `/proc/self/cgroup` names it) under `mount`.
fn procs_of(mount: &Path, own: &str) -> PathBuf {
    mount.join(own.trim_start_matches('/')).join("cgroup.procs")
}

/// Writes this process's pid to `procs` (best effort).
fn move_into(procs: &Path) {
    if let Err(e) = std::fs::write(procs, std::process::id().to_string()) {
        tracing::debug!(path = %procs.display(), error = %e, "a warm-up of the cgroup move lock failed (the start's moves may wait)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_warm_up_moves_into_the_cgroup_this_process_is_in_now() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            procs_of(mount, "/system.slice/tandem-agent.service"),
            mount.join("system.slice/tandem-agent.service/cgroup.procs")
        );
        assert_eq!(procs_of(mount, "/"), mount.join("cgroup.procs"));
    }

    #[test]
    fn a_warm_up_writes_this_process_and_is_not_doubled_while_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let procs = dir.path().join("cgroup.procs");
        // One under way: a second call starts nothing.
        let w = MoveWarmer::new(dir.path().into());
        w.busy.store(true, Ordering::Release);
        w.warm();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!procs.exists(), "a second warm-up ran beside the first");
        w.busy.store(false, Ordering::Release);
        move_into(&procs);
        let pid = std::process::id().to_string();
        assert_eq!(std::fs::read_to_string(&procs).unwrap(), pid);
    }

    #[test]
    fn a_failed_warm_up_changes_nothing_and_the_next_one_runs() {
        let dir = tempfile::tempdir().unwrap();
        let w = MoveWarmer::new(dir.path().join("missing"));
        w.warm();
        wait_for("the failed warm-up to end", || {
            !w.busy.load(Ordering::Acquire)
        });
        w.warm();
        wait_for("the second warm-up to end", || {
            !w.busy.load(Ordering::Acquire)
        });
    }
}
