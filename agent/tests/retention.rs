//! Retention with the real shim and real processes: a finished job's files go only once the
//! coordinator has acknowledged its end, never a running job's, and what stays of a retired
//! dir still refuses a stale start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tandem_agent::retention::Policy;
use tandem_agent::supervisor::{JobExit, JobStart, Supervisor, SupervisorError};
use tandem_common::ids::NodeId;
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_tandem-agent");

/// Kills, at drop, every process that carries the test's dir in its environment.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let tag = self.0.to_string_lossy().into_owned();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            if pid > 1 && String::from_utf8_lossy(&env).contains(&tag) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn job(state: &Path, id: &str, token: u64, script: &str) -> JobStart {
    let env = BTreeMap::from([("TEST_TAG".to_string(), state.display().to_string())]);
    JobStart {
        job_id: id.into(),
        job_name: id.into(),
        fencing_token: token,
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env,
        ..Default::default()
    }
}

async fn next_exit(rx: &mut mpsc::Receiver<JobExit>) -> JobExit {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no exit in time")
        .expect("exit channel closed")
}

#[tokio::test]
async fn a_finished_jobs_files_go_once_its_end_is_acknowledged_and_a_running_jobs_never() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _reaper = Reaper(state.to_path_buf());
    let sup = Supervisor::new(state, NodeId::random(), "n", Duration::from_millis(250))
        .unwrap()
        .with_shim_program(BIN);
    let mut exits = sup.exits().unwrap();
    sup.refresh(Some(Instant::now() + Duration::from_secs(60)));
    let (jobs, work) = (state.join("jobs"), state.join("work"));

    sup.start(job(state, "done", 1, "echo hi; echo x > ./made"))
        .await
        .unwrap();
    let e = next_exit(&mut exits).await;
    assert_eq!((e.job_id.as_str(), e.code), ("done", Some(0)));
    let until = Instant::now() + Duration::from_secs(5);
    while !sup.held().is_empty() {
        assert!(Instant::now() < until, "still held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sup.start(job(state, "live", 1, "echo x > ./made; exec sleep 600"))
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while !work.join("live").join("made").exists() {
        assert!(Instant::now() < until, "the live job never wrote");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Any age is past this retention; only the rules hold the dirs.
    let now = Policy {
        max_age: Duration::ZERO,
        max_bytes: None,
    };
    let retired = AtomicU64::new(0);
    let report = sup.housekeep(&now, &retired);
    assert_eq!(retired.load(Ordering::Relaxed), 0, "nothing acknowledged");
    assert!(jobs.join("done").join("stdout.log").is_file());
    assert!(jobs.join("done").join("status.json").is_file());
    assert!(report.jobs_disk_bytes > 0);

    // An acknowledgement of an older copy is not this copy's.
    sup.exit_acknowledged("done", 0);
    sup.housekeep(&now, &retired);
    assert!(
        jobs.join("done").join("status.json").is_file(),
        "an older copy's ack"
    );

    sup.exit_acknowledged("done", 1);
    // Even acknowledged (a stale ack), the running job is held: it stays.
    sup.exit_acknowledged("live", 1);
    sup.housekeep(&now, &retired);
    assert_eq!(retired.load(Ordering::Relaxed), 1);
    let left: Vec<String> = std::fs::read_dir(jobs.join("done"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(
        left,
        ["acked", "fencing_token"],
        "what stays of a retired dir"
    );
    assert!(!work.join("done").exists(), "its working dir went too");
    for p in [
        jobs.join("live").join("spec.json"),
        jobs.join("live").join("status.json"),
        jobs.join("live").join("lock"),
        work.join("live").join("made"),
    ] {
        assert!(p.exists(), "{} of the running job is gone", p.display());
    }
    assert_eq!(sup.held().len(), 1, "the live job runs on");

    // A retired dir still knows its token: a stale start is refused, a newer one runs.
    let stale = sup.start(job(state, "done", 0, "true")).await;
    assert!(
        matches!(stale, Err(SupervisorError::StaleToken { highest: 1, .. })),
        "{stale:?}"
    );
    sup.start(job(state, "done", 2, "echo again"))
        .await
        .unwrap();
    let e = next_exit(&mut exits).await;
    assert_eq!((e.job_id.as_str(), e.fencing_token), ("done", 2));
    // A second round does not count the retired dir again while the new copy is unacknowledged.
    let until = Instant::now() + Duration::from_secs(5);
    while sup.held().len() > 1 {
        assert!(Instant::now() < until, "still held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sup.housekeep(&now, &retired);
    assert_eq!(retired.load(Ordering::Relaxed), 1);
    assert!(jobs.join("done").join("stdout.log").is_file());
}
