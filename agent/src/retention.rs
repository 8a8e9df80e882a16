//! Retention: finished jobs' dirs, logs and default working dirs are removed after
//! `job_retention_s` (default 24 h), and oldest first while the jobs' files take more than
//! `job_retention_bytes` (default: no cap).
//!
//! # What is never removed
//! Removing the wrong dir could lose a job's end or run it twice, so a job dir is a candidate
//! only when all of these hold, and they are checked again under the supervisor's table lock
//! just before it goes ([`crate::supervisor::Supervisor::retire`]):
//! - no copy of the job is held (running, or a start accepted): no start can be creating it;
//! - the coordinator has acknowledged the end of the newest copy the dir has seen: its
//!   `acked` file (written on `ExitAck`) holds a token at least that of `status.json`. Until
//!   then `status.json` may be the only record of how that copy ended (an end seen by no agent
//!   is read from it at the next start, `crate::leftovers::ended`);
//! - its cgroup is empty and no shim holds its `lock`: nothing of any copy lives.
//!
//! What stays of a retired dir is `fencing_token` (and `acked`), a few bytes: a stale order
//! for the job with an older token is still refused after its files are gone.
//!
//! The decision ([`plan`]) is a plain function of what the scan found; [`scan`] reads the dirs.

use crate::supervisor::protocol::{read_status, read_token, JobState, TOKEN_FILE};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// The default retention time: a day.
pub const DEFAULT_RETENTION_S: u64 = 24 * 3600;

/// Written in a job dir when the coordinator acknowledged the end of a copy: that copy's token.
pub const ACKED_FILE: &str = "acked";

/// When finished jobs' dirs are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// A finished job's dir is removed this long after its end.
    pub max_age: Duration,
    /// Past this many bytes of job files in all, finished jobs' dirs go, oldest first.
    pub max_bytes: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(DEFAULT_RETENTION_S),
            max_bytes: None,
        }
    }
}

/// One job dir as the scan found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The job.
    pub job_id: String,
    /// When its last copy ended (Unix ms; the dir's last change where no status says).
    pub ended_unix_ms: u64,
    /// Bytes on disk of its job dir and default working dir.
    pub bytes: u64,
    /// Whether the files say it may go (see the module doc; held copies and live cgroups are
    /// checked at removal).
    pub finished: bool,
}

/// The jobs whose dirs go now, oldest first: finished ones past `max_age`, then more finished
/// ones, oldest first, while all the job files take more than `max_bytes`.
pub fn plan(found: &[Found], now_unix_ms: u64, policy: &Policy) -> Vec<String> {
    let mut finished: Vec<&Found> = found.iter().filter(|f| f.finished).collect();
    finished.sort_by(|a, b| (a.ended_unix_ms, &a.job_id).cmp(&(b.ended_unix_ms, &b.job_id)));
    let age_ms = u64::try_from(policy.max_age.as_millis()).unwrap_or(u64::MAX);
    let mut total: u64 = found.iter().map(|f| f.bytes).sum();
    let mut out = Vec::new();
    for f in finished {
        let old = now_unix_ms.saturating_sub(f.ended_unix_ms) >= age_ms;
        let over = policy.max_bytes.is_some_and(|cap| total > cap);
        if old || over {
            out.push(f.job_id.clone());
            total = total.saturating_sub(f.bytes);
        }
    }
    out
}

/// Bytes on disk under `path` (allocated blocks; symbolic links are not followed).
pub fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    own + std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| disk_bytes(&e.path()))
        .sum::<u64>()
}

/// The token in a job dir's `acked` file.
pub fn read_acked(job_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(job_dir.join(ACKED_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a job dir's files say its job is over and its end acknowledged (the module doc's
/// second rule), and it has files left to remove.
pub fn finished_on_disk(job_dir: &Path) -> bool {
    let Some(acked) = read_acked(job_dir) else {
        return false;
    };
    let leftover = std::fs::read_dir(job_dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name() != TOKEN_FILE && e.file_name() != ACKED_FILE);
    if !leftover {
        return false;
    }
    match read_status(job_dir) {
        Some(s) => s.state != JobState::Running && s.fencing_token <= acked,
        // No status: the start never ran (refused); its refusal was acknowledged.
        None => read_token(job_dir)
            .ok()
            .flatten()
            .is_some_and(|t| t <= acked),
    }
}

/// Every job dir under `state_dir/jobs`, with its default working dir's bytes.
pub fn scan(state_dir: &Path) -> Vec<Found> {
    let jobs = state_dir.join("jobs");
    let work = state_dir.join("work");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&jobs).into_iter().flatten().flatten() {
        let Some(id) = e.file_name().to_str().map(String::from) else {
            continue;
        };
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        let ended_unix_ms = read_status(&dir)
            .and_then(|s| s.ended_unix_ms)
            .or_else(|| {
                let m = std::fs::metadata(&dir).ok()?.modified().ok()?;
                m.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64)
            })
            .unwrap_or(0);
        out.push(Found {
            bytes: disk_bytes(&dir) + disk_bytes(&work.join(&id)),
            finished: finished_on_disk(&dir),
            job_id: id,
            ended_unix_ms,
        });
    }
    out.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: &str, ended: u64, bytes: u64, finished: bool) -> Found {
        Found {
            job_id: id.into(),
            ended_unix_ms: ended,
            bytes,
            finished,
        }
    }

    #[test]
    fn old_finished_dirs_go_and_running_or_unacknowledged_ones_never() {
        let p = Policy {
            max_age: Duration::from_secs(10),
            max_bytes: None,
        };
        let found = [
            f("old", 1_000, 10, true),
            f("young", 15_000, 10, true),
            f("running", 0, 10, false),
        ];
        assert_eq!(plan(&found, 20_000, &p), vec!["old".to_string()]);
        assert!(plan(&found, 5_000, &p).is_empty());
    }

    #[test]
    fn past_the_size_cap_the_oldest_finished_go_first_until_under_it() {
        let p = Policy {
            max_age: Duration::from_secs(3600),
            max_bytes: Some(250),
        };
        let found = [
            f("a", 3, 100, true),
            f("b", 1, 100, true),
            f("live", 0, 100, false),
            f("c", 2, 100, true),
        ];
        // 400 bytes: b (oldest) and c go; a stays, and so does the live one, over the cap.
        assert_eq!(plan(&found, 10, &p), vec!["b".to_string(), "c".to_string()]);
        let all_live = [f("x", 0, 1000, false)];
        assert!(plan(&all_live, 10, &p).is_empty());
    }

    #[test]
    fn only_an_acknowledged_end_of_the_newest_copy_makes_a_dir_finished() {
        use crate::supervisor::protocol::{write_token, JobStatus, STATUS_FILE};
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        write_token(dir, 7).unwrap();
        assert!(!finished_on_disk(dir), "nothing acknowledged");
        let status = |state: JobState, token: u64| JobStatus {
            job_id: "j".into(),
            fencing_token: token,
            state,
            pid: 1,
            shim_pid: 1,
            started_unix_ms: 1,
            ended_unix_ms: Some(2),
            code: Some(0),
            signal: None,
            reason: None,
            containment: "process-group".into(),
        };
        let put = |s: JobStatus| {
            std::fs::write(dir.join(STATUS_FILE), serde_json::to_vec(&s).unwrap()).unwrap()
        };
        put(status(JobState::Exited, 7));
        std::fs::write(dir.join(ACKED_FILE), "6\n").unwrap();
        assert!(!finished_on_disk(dir), "an older copy's end acknowledged");
        std::fs::write(dir.join(ACKED_FILE), "7\n").unwrap();
        assert!(finished_on_disk(dir));
        put(status(JobState::Running, 7));
        assert!(!finished_on_disk(dir), "running");
        std::fs::remove_file(dir.join(STATUS_FILE)).unwrap();
        assert!(
            !finished_on_disk(dir),
            "only the token and the ack are left"
        );
    }
}
