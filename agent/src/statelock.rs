//! One agent per state dir: a `flock` on `STATE_DIR/agent.lock`, held for the agent's life.
//!
//! Two agents on one state dir would share an identity, job dirs and fencing tokens, and each
//! would take the other's shims for leftovers of a dead run: they fight (issue 13). The lock is
//! taken before anything else in the dir is touched, so the second agent is refused at once,
//! with the pid of the holder. The kernel drops a `flock` when its holder dies, however it
//! dies, so a crashed agent never leaves a stale lock. The descriptor is close-on-exec: shims
//! (which outlive the agent on purpose) never hold it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock's file name in the state dir.
pub const LOCK_FILE: &str = "agent.lock";

/// Why the state dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Another agent holds the state dir.
    #[error("another tandem-agent (pid {holder}) already runs with state dir {}: refusing to start a second one on it", dir.display())]
    Busy {
        /// The state dir.
        dir: PathBuf,
        /// The holder's pid as it wrote it (`?` if unreadable).
        holder: String,
    },
    /// The lock file could not be made or locked.
    #[error("locking {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Takes the state dir's lock (making the dir, mode 0700, if needed), or says who holds it.
pub fn lock(state_dir: &Path) -> Result<StateLock, StateLockError> {
    use std::os::unix::fs::DirBuilderExt;
    let path = state_dir.join(LOCK_FILE);
    let io = |source| StateLockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(state_dir)
        .map_err(io)?;
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(e));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "?".to_string(),
            h => h.to_string(),
        };
        return Err(StateLockError::Busy {
            dir: state_dir.to_path_buf(),
            holder,
        });
    }
    // Ours: record our pid for the next one's message (never read for a decision).
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(StateLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let held = lock(d.path()).unwrap();
        let e = lock(d.path()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StateLockError::Busy { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        lock(d.path()).unwrap();
    }
}
