//! Job exits the coordinator has not acknowledged yet, kept on disk until it has.
//!
//! Why: an exit sent once on the control stream is lost when the link breaks before it
//! arrives, or when the agent restarts; the coordinator would then never learn how that copy
//! ended (and a refused start would look like one still starting). So every exit the agent
//! reports is first written here, durably, as `STATE_DIR/exits/<job id>.<token>.json`, then
//! sent; every `Hello` (and every `JobsHeld`) carries all of them, oldest first; and only the
//! coordinator's `ExitAck` for that copy removes the file. An exit may so be reported more
//! than once; the coordinator acknowledges each report, repeated or not.
//!
//! Plain code over a directory, no network: [`ExitOutbox`] is driven by the link.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tandem_common::proto::JobExitReport;

/// The directory under the state dir.
pub const EXITS_DIR: &str = "exits";
/// At most this many exits are kept. Only a coordinator that acknowledges nothing for a very
/// long time gets here; past it new exits are still sent once, but not kept.
pub const MAX_EXITS: usize = 10_000;
/// Job ids longer than this are not kept (only a refusal of an invalid start can carry one).
pub const MAX_JOB_ID: usize = 1024;
/// How many bytes of exit reports one message carries at most, well below the frame limit
/// (4 MiB) so that a `Hello` always fits; the rest follow as `JobExited` messages.
pub const MESSAGE_BUDGET: usize = 2 * 1024 * 1024;

/// What went wrong keeping exits.
#[derive(Debug, thiserror::Error)]
pub enum ExitsError {
    /// Local I/O failed (the exits dir, an exit file).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The outbox holds [`MAX_EXITS`] exits already: this one is not kept.
    #[error("{cap} unacknowledged exits are kept already; not keeping the exit of {job_id} (token {token})")]
    Full {
        /// The cap.
        cap: usize,
        /// The job of the exit not kept.
        job_id: String,
        /// Its copy's token.
        token: u64,
    },
    /// The exit's job id is too long to keep.
    #[error("a job id of {len} bytes is too long to keep its exit")]
    JobIdTooLong {
        /// The id's length in bytes.
        len: usize,
    },
}

/// A file in the exits dir that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// One exit as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    /// Orders exits: oldest first.
    seq: u64,
    /// When it was recorded, Unix milliseconds (for people reading the file).
    recorded_unix_ms: u64,
    /// The report, as sent.
    report: JobExitReport,
}

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    report: JobExitReport,
}

/// The unacknowledged exits, in memory and on disk.
#[derive(Debug)]
pub struct ExitOutbox {
    dir: PathBuf,
    by_seq: BTreeMap<u64, Entry>,
    by_copy: HashMap<(String, u64), u64>,
    next_seq: u64,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ExitsError {
    move |source| ExitsError::Io { what, source }
}

impl ExitOutbox {
    /// Opens `state_dir/exits` (made with mode 0700 if missing) and loads the exits a previous
    /// run left unacknowledged. Files that cannot be read or decoded are skipped, and listed.
    pub fn open(state_dir: &Path) -> Result<(Self, Vec<Skipped>), ExitsError> {
        let dir = state_dir.join(EXITS_DIR);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(io_err(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("restricting {}", dir.display())))?;
        let mut outbox = Self {
            dir: dir.clone(),
            by_seq: BTreeMap::new(),
            by_copy: HashMap::new(),
            next_seq: 1,
        };
        let mut skipped = Vec::new();
        let mut found = Vec::new();
        let listing =
            std::fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))?;
        for entry in listing {
            let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // write_atomic's temporary files: what they held was never renamed into place.
            if name.starts_with('.') {
                continue;
            }
            let mut skip = |reason: String| {
                skipped.push(Skipped {
                    path: path.clone(),
                    reason,
                })
            };
            if !name.ends_with(".json") {
                skip("not an exit file".into());
                continue;
            }
            let stored = match std::fs::read(&path) {
                Ok(bytes) => serde_json::from_slice::<Stored>(&bytes),
                Err(e) => {
                    skip(format!("cannot read it: {e}"));
                    continue;
                }
            };
            match stored {
                Ok(s) => found.push((s, path)),
                Err(e) => skip(format!("does not decode: {e}")),
            }
        }
        outbox.load(found);
        Ok((outbox, skipped))
    }

    /// Takes in the exits found on disk, oldest first (ties by file name). Of two for the same
    /// copy the newer is kept and the older file removed. Keys in memory follow the stored
    /// sequence, moved up past a duplicate one, so the order is the same on every load.
    fn load(&mut self, mut found: Vec<(Stored, PathBuf)>) {
        found.sort_by(|a, b| (a.0.seq, &a.1).cmp(&(b.0.seq, &b.1)));
        let mut last: Option<u64> = None;
        for (s, path) in found {
            let key = match last {
                Some(l) if s.seq <= l => l.saturating_add(1),
                _ => s.seq,
            };
            last = Some(key);
            let copy = (s.report.job_id.clone(), s.report.fencing_token);
            if let Some(older) = self.by_copy.insert(copy, key) {
                if let Some(e) = self.by_seq.remove(&older) {
                    if e.path != path {
                        let _ = std::fs::remove_file(&e.path);
                    }
                }
            }
            self.by_seq.insert(
                key,
                Entry {
                    path,
                    report: s.report,
                },
            );
        }
        self.next_seq = last.map_or(1, |l| l.saturating_add(1));
    }

    /// The file of a copy's exit: `<job id>.<token>.json`, or, for a job id that is not a
    /// safe file name (a refused invalid start), `+<seq>.<token>.json`.
    fn path_for(&self, report: &JobExitReport, seq: u64) -> PathBuf {
        let token = report.fencing_token;
        let name = match crate::supervisor::protocol::validate_job_id(&report.job_id) {
            Ok(()) => format!("{}.{token}.json", report.job_id),
            Err(_) => format!("+{seq}.{token}.json"),
        };
        self.dir.join(name)
    }

    /// Keeps an exit until it is acknowledged: written durably (fsync, rename, fsync of the
    /// dir) before this returns. A newer exit of the same copy replaces the older one, and
    /// counts as the newest.
    ///
    /// On [`ExitsError::Io`] the exit is still kept in memory (every `Hello` of this run
    /// carries it); on [`ExitsError::Full`] and [`ExitsError::JobIdTooLong`] it is not kept.
    pub fn record(&mut self, report: JobExitReport) -> Result<(), ExitsError> {
        if report.job_id.len() > MAX_JOB_ID {
            return Err(ExitsError::JobIdTooLong {
                len: report.job_id.len(),
            });
        }
        let copy = (report.job_id.clone(), report.fencing_token);
        let replaced = self.by_copy.get(&copy).copied();
        if replaced.is_none() && self.by_seq.len() >= MAX_EXITS {
            return Err(ExitsError::Full {
                cap: MAX_EXITS,
                job_id: report.job_id,
                token: report.fencing_token,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.path_for(&report, seq);
        let stored = Stored {
            seq,
            recorded_unix_ms: tandem_common::time::unix_ms(),
            report,
        };
        let written = serde_json::to_vec_pretty(&stored)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::supervisor::protocol::write_atomic(&path, &b))
            .map_err(io_err(format!("writing {}", path.display())));
        if let Some(old) = replaced.and_then(|s| self.by_seq.remove(&s)) {
            if old.path != path {
                let _ = std::fs::remove_file(&old.path);
            }
        }
        self.by_copy.insert(copy, seq);
        self.by_seq.insert(
            seq,
            Entry {
                path,
                report: stored.report,
            },
        );
        written
    }

    /// The coordinator acknowledged the exit of this copy: forget it. Returns whether one was
    /// kept. The file's removal is not fsynced: a crash may bring the exit back, and it is
    /// then reported (and acknowledged) once more.
    pub fn ack(&mut self, job_id: &str, token: u64) -> Result<bool, ExitsError> {
        let Some(seq) = self.by_copy.remove(&(job_id.to_string(), token)) else {
            return Ok(false);
        };
        let Some(entry) = self.by_seq.remove(&seq) else {
            return Ok(true);
        };
        match std::fs::remove_file(&entry.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(source) => Err(ExitsError::Io {
                what: format!("removing {}", entry.path.display()),
                source,
            }),
        }
    }

    /// Every exit kept, oldest first.
    pub fn pending(&self) -> Vec<JobExitReport> {
        self.by_seq.values().map(|e| e.report.clone()).collect()
    }

    /// How many exits are kept.
    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}

/// Splits exits (oldest first) into the longest prefix whose reports fit in `budget` bytes
/// and the rest, which the link sends as separate messages. The first exit always goes in.
pub fn split_for_message(
    mut exits: Vec<JobExitReport>,
    budget: usize,
) -> (Vec<JobExitReport>, Vec<JobExitReport>) {
    let mut used = 0usize;
    let mut fit = exits.len();
    for (i, e) in exits.iter().enumerate() {
        // Generous for the encoding: the strings, their lengths, token, code, signal, cause.
        used = used.saturating_add(e.job_id.len() + e.reason.len() + 64);
        if used > budget && i > 0 {
            fit = i;
            break;
        }
    }
    let rest = exits.split_off(fit);
    (exits, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_common::proto::ExitCause;

    fn exit(job: &str, token: u64, code: i32) -> JobExitReport {
        JobExitReport {
            job_id: job.to_string(),
            fencing_token: token,
            code: Some(code),
            signal: None,
            cause: ExitCause::Exited,
            reason: "exited".into(),
        }
    }

    fn open(dir: &Path) -> (ExitOutbox, Vec<Skipped>) {
        ExitOutbox::open(dir).unwrap()
    }

    fn ids(o: &ExitOutbox) -> Vec<(String, u64)> {
        o.pending()
            .into_iter()
            .map(|e| (e.job_id, e.fencing_token))
            .collect()
    }

    #[test]
    fn exits_survive_a_restart_in_order_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, skipped) = open(dir.path());
        assert!(o.is_empty() && skipped.is_empty());
        let mode = std::fs::metadata(dir.path().join(EXITS_DIR))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // Ids that sort the other way round: the order is the recording order.
        o.record(exit("z", 1, 0)).unwrap();
        o.record(exit("a", 7, 1)).unwrap();
        o.record(exit("m", 2, 2)).unwrap();
        assert!(dir.path().join("exits/a.7.json").is_file());
        drop(o);

        let (mut o, skipped) = open(dir.path());
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(ids(&o), [("z".into(), 1), ("a".into(), 7), ("m".into(), 2)]);
        assert_eq!(o.pending()[1], exit("a", 7, 1));
        // Recorded after the restart: still the newest.
        o.record(exit("b", 1, 0)).unwrap();
        assert!(o.ack("a", 7).unwrap());
        assert!(!o.ack("a", 7).unwrap());
        assert!(!o.ack("z", 2).unwrap(), "another token of the job");
        assert!(!dir.path().join("exits/a.7.json").exists());
        drop(o);

        let (o, _) = open(dir.path());
        assert_eq!(ids(&o), [("z".into(), 1), ("m".into(), 2), ("b".into(), 1)]);
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn a_newer_exit_of_the_same_copy_replaces_the_older() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = open(dir.path());
        o.record(exit("a", 1, 0)).unwrap();
        o.record(exit("b", 1, 0)).unwrap();
        o.record(exit("a", 1, 5)).unwrap();
        assert_eq!(ids(&o), [("b".into(), 1), ("a".into(), 1)]);
        assert_eq!(o.pending()[1].code, Some(5));
        drop(o);
        let (o, _) = open(dir.path());
        assert_eq!(ids(&o), [("b".into(), 1), ("a".into(), 1)]);
        assert_eq!(o.pending()[1].code, Some(5));
    }

    #[test]
    fn junk_files_are_skipped_and_listed_never_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = open(dir.path());
        o.record(exit("good", 3, 0)).unwrap();
        drop(o);
        let exits = dir.path().join(EXITS_DIR);
        std::fs::write(exits.join("bad.1.json"), b"{ not json").unwrap();
        std::fs::write(exits.join("empty.1.json"), b"").unwrap();
        std::fs::write(exits.join("wrong.1.json"), br#"{"seq":"x"}"#).unwrap();
        std::fs::write(exits.join("README"), b"hello").unwrap();
        std::fs::write(exits.join(".good.3.json.tmp"), b"half").unwrap();
        std::fs::create_dir(exits.join("sub.json")).unwrap();
        let (o, skipped) = open(dir.path());
        assert_eq!(ids(&o), [("good".into(), 3)]);
        let mut names: Vec<String> = skipped
            .iter()
            .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "README",
                "bad.1.json",
                "empty.1.json",
                "sub.json",
                "wrong.1.json"
            ]
        );
    }

    #[test]
    fn duplicates_on_disk_keep_the_newest_and_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let exits = dir.path().join(EXITS_DIR);
        std::fs::create_dir(&exits).unwrap();
        let put = |name: &str, seq: u64, report: JobExitReport| {
            let s = Stored {
                seq,
                recorded_unix_ms: 0,
                report,
            };
            std::fs::write(exits.join(name), serde_json::to_vec(&s).unwrap()).unwrap();
        };
        // The same copy twice (seq 2 and 5), and two copies sharing seq 3.
        put("a.1.json", 2, exit("a", 1, 0));
        put("+5.1.json", 5, exit("a", 1, 9));
        put("b.1.json", 3, exit("b", 1, 0));
        put("c.1.json", 3, exit("c", 1, 0));
        let (mut o, skipped) = open(dir.path());
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(ids(&o), [("b".into(), 1), ("c".into(), 1), ("a".into(), 1)]);
        assert_eq!(o.pending()[2].code, Some(9));
        assert!(!exits.join("a.1.json").exists(), "the older file stays");
        // New exits come after everything loaded.
        o.record(exit("d", 1, 0)).unwrap();
        assert_eq!(ids(&o).last().unwrap(), &("d".into(), 1));
        drop(o);
        let (o, _) = open(dir.path());
        assert_eq!(
            ids(&o),
            [
                ("b".into(), 1),
                ("c".into(), 1),
                ("a".into(), 1),
                ("d".into(), 1)
            ]
        );
    }

    #[test]
    fn odd_job_ids_are_kept_under_safe_names_and_absurd_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = open(dir.path());
        let mut refused = exit("../../etc/passwd", 4, 0);
        refused.cause = ExitCause::Refused;
        o.record(refused.clone()).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path().join(EXITS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["+1.4.json"]);
        let long = exit(&"x".repeat(MAX_JOB_ID + 1), 1, 0);
        assert!(matches!(
            o.record(long),
            Err(ExitsError::JobIdTooLong { .. })
        ));
        drop(o);
        let (mut o, _) = open(dir.path());
        assert_eq!(o.pending(), [refused]);
        assert!(o.ack("../../etc/passwd", 4).unwrap());
        assert!(std::fs::read_dir(dir.path().join(EXITS_DIR))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn a_full_outbox_refuses_new_copies_but_takes_newer_exits_of_kept_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = open(dir.path());
        // Filled in memory only: MAX_EXITS fsyncs would make a slow test.
        for i in 0..MAX_EXITS as u64 {
            let seq = o.next_seq;
            o.next_seq += 1;
            o.by_copy.insert(("j".into(), i), seq);
            o.by_seq.insert(
                seq,
                Entry {
                    path: dir.path().join("none"),
                    report: exit("j", i, 0),
                },
            );
        }
        assert!(matches!(
            o.record(exit("new", 1, 0)),
            Err(ExitsError::Full { cap: MAX_EXITS, .. })
        ));
        assert_eq!(o.len(), MAX_EXITS);
        o.record(exit("j", 0, 9)).unwrap();
        assert_eq!(o.len(), MAX_EXITS);
        assert_eq!(o.pending().last().unwrap().code, Some(9));
    }

    #[test]
    fn a_message_takes_the_oldest_exits_that_fit() {
        let all: Vec<_> = (0..10).map(|i| exit("job", i, 0)).collect();
        let one = "job".len() + "exited".len() + 64;
        let (fit, rest) = split_for_message(all.clone(), 3 * one);
        assert_eq!(fit, all[..3]);
        assert_eq!(rest, all[3..]);
        let (fit, rest) = split_for_message(all.clone(), usize::MAX);
        assert_eq!((fit.len(), rest.len()), (10, 0));
        // Even a budget too small for one carries the oldest: progress is always made.
        let (fit, rest) = split_for_message(all.clone(), 0);
        assert_eq!((fit.len(), rest.len()), (1, 9));
        assert_eq!(split_for_message(Vec::new(), 0), (Vec::new(), Vec::new()));
    }
}
