//! The job supervisor with the real `tandem-agent shim` binary and real processes: env and logs,
//! exits, fencing at the lease deadline (whole process group, not before, soon after), a dead
//! agent, a job that ignores SIGTERM, fencing tokens, user stops, starts held from acceptance
//! and repeated starts, a fence kill timeout changed while shims run.
//!
//! Every test has its own state dir, and a `Reaper` SIGKILLs anything still carrying that dir in
//! its command line or environment when the test ends, passed or failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_agent::supervisor::{
    ExitReason, JobExit, JobStart, JobState, Supervisor, SupervisorError,
};
use tandem_common::ids::NodeId;
use tandem_common::proto::{HeldJob, HeldState};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_tandem-agent");
const FENCE_KILL: Duration = Duration::from_millis(250);
/// The bound asserted on "dead after the deadline" (the design needs fence kill timeout plus
/// scheduling slack; this is generous for a loaded 2-core test machine).
const KILL_BOUND: Duration = Duration::from_secs(2);

/// Kills, at drop, every process of ours that names the test's directory.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let tag = self.0.to_string_lossy().into_owned();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let mentions = |f: &str| {
                std::fs::read(e.path().join(f))
                    .map(|b| String::from_utf8_lossy(&b).contains(&tag))
                    .unwrap_or(false)
            };
            if pid > 1 && (mentions("cmdline") || mentions("environ")) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

struct Env {
    dir: tempfile::TempDir,
    _reaper: Reaper,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper(dir.path().to_path_buf());
    Env {
        dir,
        _reaper: reaper,
    }
}

impl Env {
    fn state(&self) -> &Path {
        self.dir.path()
    }

    fn supervisor(&self) -> Supervisor {
        Supervisor::new(self.state(), NodeId::random(), "node-a", FENCE_KILL)
            .unwrap()
            .with_shim_program(BIN)
    }

    fn job(&self, id: &str, token: u64, script: &str) -> JobStart {
        let mut env = BTreeMap::new();
        // Lets the reaper find the job and everything it starts.
        env.insert(
            "TEST_TAG".to_string(),
            self.state().to_string_lossy().into_owned(),
        );
        JobStart {
            job_id: id.to_string(),
            job_name: format!("{id}-name"),
            fencing_token: token,
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env,
            workdir: None,
            gpus: Vec::new(),
            limits: Default::default(),
            user: None,
            group: None,
            session: None,
        }
    }

    /// The job's working dir (where its relative paths go), apart from its job dir.
    fn work_dir(&self, id: &str) -> PathBuf {
        self.state().join("work").join(id)
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.state().join("jobs").join(id)
    }
}

/// Whether `pid` runs (a zombie counts as dead).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start().chars().next());
    !matches!(state, Some(Some('Z' | 'X')) | None)
}

/// Fields 5 and 6 of /proc/PID/stat: process group and session.
fn pgid_and_session(pid: u32) -> (i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    (rest[2].parse().unwrap(), rest[3].parse().unwrap())
}

async fn wait_for_pid_file(path: &Path) -> i32 {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(pid) = s.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < until, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next_exit(rx: &mut mpsc::Receiver<JobExit>, within: Duration) -> JobExit {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("no exit in time")
        .expect("exit channel closed")
}

/// Polls until every pid is dead; returns when that was seen.
async fn wait_dead(pids: &[i32], within: Duration) -> Instant {
    let until = Instant::now() + within;
    loop {
        if pids.iter().all(|p| !alive(*p)) {
            return Instant::now();
        }
        assert!(Instant::now() < until, "{pids:?} still alive");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn held(job_id: &str, fencing_token: u64, state: HeldState) -> HeldJob {
    HeldJob {
        job_id: job_id.to_string(),
        fencing_token,
        state,
    }
}

/// Polls until the supervisor holds nothing (a copy is dropped just after its exit is sent).
async fn wait_not_held(sup: &Supervisor) {
    let until = Instant::now() + Duration::from_secs(5);
    while !sup.held().is_empty() {
        assert!(Instant::now() < until, "still held: {:?}", sup.held());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn far() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(60))
}

#[tokio::test]
async fn env_logs_exit_codes_and_signals() {
    let t = env();
    let sup = t.supervisor().with_log_limit(4096);
    let mut exits = sup.exits().unwrap();
    assert!(sup.exits().is_none());

    // No lease, no start.
    let err = sup.start(t.job("j1", 1, "exit 0")).await.unwrap_err();
    assert!(matches!(err, SupervisorError::NoLease), "{err}");
    sup.refresh(far());

    let mut job = t.job(
        "j1",
        3,
        "echo \"token=$TANDEM_FENCING_TOKEN gpus=$CUDA_VISIBLE_DEVICES id=$TANDEM_JOB_ID \
         name=$TANDEM_JOB_NAME node=$TANDEM_NODE_NAME foo=$FOO\"; echo oops >&2; exit 7",
    );
    job.gpus = vec!["GPU-aaa".into(), "GPU-bbb".into()];
    job.env.insert("FOO".into(), "bar".into());
    sup.start(job).await.unwrap();
    let e = next_exit(&mut exits, Duration::from_secs(10)).await;
    assert_eq!(
        (
            e.job_id.as_str(),
            e.fencing_token,
            e.code,
            e.signal,
            e.reason
        ),
        ("j1", 3, Some(7), None, ExitReason::Exited)
    );
    let logs = sup.tail_logs("j1", 10).await.unwrap();
    assert_eq!(
        logs.stdout,
        ["token=3 gpus=GPU-aaa,GPU-bbb id=j1 name=j1-name node=node-a foo=bar"]
    );
    assert_eq!(logs.stderr, ["oops"]);
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.job_dir("j1").join("status.json")).unwrap())
            .unwrap();
    assert_eq!(status["state"], "exited");
    assert_eq!(status["code"], 7);
    assert_eq!(status["fencing_token"], 3);
    assert!(status["ended_unix_ms"].as_u64() >= status["started_unix_ms"].as_u64());

    // Killed by a signal.
    sup.start(t.job("j2", 1, "kill -KILL $$")).await.unwrap();
    let e = next_exit(&mut exits, Duration::from_secs(10)).await;
    assert_eq!((e.code, e.signal), (None, Some(libc::SIGKILL)));

    // Output past the cap is rotated, and the tail spans both files.
    let chatty = "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done";
    sup.start(t.job("j3", 1, chatty)).await.unwrap();
    let e = next_exit(&mut exits, Duration::from_secs(20)).await;
    assert_eq!(e.code, Some(0));
    let out = t.job_dir("j3").join("stdout.log");
    assert!(std::fs::metadata(&out).unwrap().len() <= 4096);
    assert!(
        std::fs::metadata(t.job_dir("j3").join("stdout.log.1"))
            .unwrap()
            .len()
            <= 4096
    );
    let tail = sup.tail_logs("j3", 400).await.unwrap().stdout;
    assert_eq!(tail.len(), 400);
    assert_eq!(tail.last().unwrap(), "line 1999");

    // The job starts clean: no blocked or ignored signals from the shim, and no descriptors
    // beyond 0, 1, 2 (ls's own directory handle is 3). Programs are found on PATH.
    let mut sigs = t.job("j6", 1, "");
    sigs.command = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]
        .map(String::from)
        .to_vec();
    sup.start(sigs).await.unwrap();
    assert_eq!(
        next_exit(&mut exits, Duration::from_secs(10)).await.code,
        Some(0)
    );
    let lines = sup.tail_logs("j6", 5).await.unwrap().stdout;
    let mask = |name: &str| {
        let l = lines.iter().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(l.split('\t').nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{lines:?}");
    // Standard signals 1 to 31 (above them glibc keeps its own).
    assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "{lines:?}");
    let mut fds = t.job("j7", 1, "");
    fds.command = ["ls", "/proc/self/fd"].map(String::from).to_vec();
    sup.start(fds).await.unwrap();
    assert_eq!(
        next_exit(&mut exits, Duration::from_secs(10)).await.code,
        Some(0)
    );
    assert_eq!(
        sup.tail_logs("j7", 10).await.unwrap().stdout,
        ["0", "1", "2", "3"]
    );

    // Bad input is refused with the reason, never run.
    let err = sup.start(t.job("../x", 1, "true")).await.unwrap_err();
    assert!(matches!(err, SupervisorError::InvalidJob(_)), "{err}");
    let mut nothing = t.job("j4", 1, "");
    nothing.command.clear();
    assert!(matches!(
        sup.start(nothing).await,
        Err(SupervisorError::InvalidJob(_))
    ));
    let mut missing = t.job("j5", 1, "");
    missing.command = vec!["/nonexistent/program".into()];
    let err = sup.start(missing).await.unwrap_err();
    assert!(matches!(err, SupervisorError::SpawnFailed { .. }), "{err}");
    assert!(matches!(
        sup.tail_logs("nope", 1).await,
        Err(SupervisorError::UnknownJob { .. })
    ));
    wait_not_held(&sup).await;
}

/// A job that starts a background grandchild, writing both pids into its job dir.
const FAMILY: &str = "sleep 1000 & echo $! > gc.pid; echo $$ > leader.pid; wait";

#[tokio::test]
async fn the_deadline_kills_the_whole_group_not_before_and_soon_after() {
    let t = env();
    let sup = t.supervisor();
    let mut exits = sup.exits().unwrap();
    sup.refresh(far());
    let started = sup.start(t.job("fam", 1, FAMILY)).await.unwrap();
    let leader = wait_for_pid_file(&t.work_dir("fam").join("leader.pid")).await;
    let gc = wait_for_pid_file(&t.work_dir("fam").join("gc.pid")).await;
    assert_eq!(leader as u32, started.pid);
    assert_eq!(sup.held(), [held("fam", 1, HeldState::Running)]);
    // The job leads its own group; the shim has its own session, apart from ours.
    assert_eq!(pgid_and_session(started.pid).0, leader);
    let (_, shim_session) = pgid_and_session(started.shim_pid);
    assert_eq!(shim_session, started.shim_pid as i32);
    assert_ne!(shim_session, unsafe { libc::getsid(0) });

    // The agent's lease ends in 800 ms and is never renewed (a hung agent looks the same).
    let deadline = Instant::now() + Duration::from_millis(800);
    sup.refresh(Some(deadline));
    while Instant::now() + Duration::from_millis(80) < deadline {
        assert!(alive(leader) && alive(gc), "killed before the deadline");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead_at = wait_dead(&[leader, gc], deadline + KILL_BOUND - Instant::now()).await;
    assert!(dead_at >= deadline, "died before the deadline");
    let latency = dead_at - deadline;
    eprintln!("fence latency after the deadline: {latency:?} (job and grandchild dead)");
    assert!(latency < KILL_BOUND, "{latency:?}");
    let e = next_exit(&mut exits, Duration::from_secs(5)).await;
    assert_eq!(e.reason, ExitReason::Fenced);
    assert_eq!(e.signal, Some(libc::SIGTERM));
    wait_not_held(&sup).await;
}

#[tokio::test]
async fn refreshing_keeps_the_job_and_stopping_refreshes_fences_it() {
    let t = env();
    let sup = t.supervisor();
    let mut exits = sup.exits().unwrap();
    let lease = Duration::from_millis(500);
    sup.refresh(Some(Instant::now() + Duration::from_secs(10)));
    sup.start(t.job("beat", 2, FAMILY)).await.unwrap();
    let leader = wait_for_pid_file(&t.work_dir("beat").join("leader.pid")).await;
    let gc = wait_for_pid_file(&t.work_dir("beat").join("gc.pid")).await;
    // Heartbeats: each refresh grants another 500 ms; three leases' worth go by.
    let mut deadline = Instant::now();
    let until = Instant::now() + 3 * lease;
    while Instant::now() < until {
        deadline = Instant::now() + lease;
        sup.refresh(Some(deadline));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            alive(leader) && alive(gc),
            "fenced while the lease was renewed"
        );
    }
    // The agent stops (SIGSTOP): no more refreshes.
    let dead_at = wait_dead(&[leader, gc], deadline + KILL_BOUND - Instant::now()).await;
    assert!(dead_at >= deadline);
    eprintln!(
        "fence latency after refreshes stopped: {:?}",
        dead_at - deadline
    );
    assert_eq!(
        next_exit(&mut exits, Duration::from_secs(5)).await.reason,
        ExitReason::Fenced
    );
}

#[tokio::test]
async fn a_dead_agent_leaves_the_job_until_its_deadline() {
    let t = env();
    let sup = t.supervisor();
    let mut exits = sup.exits().unwrap();
    sup.refresh(far());
    let started = sup.start(t.job("orphan", 4, FAMILY)).await.unwrap();
    let leader = wait_for_pid_file(&t.work_dir("orphan").join("leader.pid")).await;
    let gc = wait_for_pid_file(&t.work_dir("orphan").join("gc.pid")).await;
    // Long enough that a loaded machine still gets to the second start well before it (this
    // test failed under load with a margin of 100 ms of a 1.2 s deadline, and once with 1 s of
    // 3 s while the disk was full and a build ran beside it).
    let deadline = Instant::now() + Duration::from_millis(5000);
    sup.refresh(Some(deadline));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The agent dies: every shim's stdin closes.
    drop(sup);
    while Instant::now() + Duration::from_millis(2500) < deadline {
        assert!(
            alive(leader) && alive(gc) && alive(started.shim_pid as i32),
            "the agent's death killed the job before its deadline"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A restarted agent cannot start the job again while the old shim holds it.
    let sup2 = t.supervisor();
    sup2.refresh(far());
    let asked = Instant::now();
    let err = match sup2.start(t.job("orphan", 5, "true")).await {
        Ok(s) => panic!(
            "a second copy started ({s:?}) while the old shim held the job; asked {:?} before its deadline, answered {:?} after asking",
            deadline.saturating_duration_since(asked),
            asked.elapsed()
        ),
        Err(e) => e,
    };
    assert!(matches!(err, SupervisorError::Busy { .. }), "{err}");

    let dead_at = wait_dead(&[leader, gc], deadline + KILL_BOUND - Instant::now()).await;
    assert!(dead_at >= deadline);
    eprintln!(
        "fence latency after the agent died: {:?}",
        dead_at - deadline
    );
    let e = next_exit(&mut exits, Duration::from_secs(5)).await;
    assert_eq!(
        (e.job_id.as_str(), e.reason),
        ("orphan", ExitReason::Fenced)
    );
    let status = tandem_agent::supervisor::protocol::read_status(&t.job_dir("orphan")).unwrap();
    assert_eq!(status.state, JobState::Exited);
    assert_eq!(status.reason, Some(ExitReason::Fenced));
    wait_dead(&[started.shim_pid as i32], Duration::from_secs(5)).await;
    // Once the old shim is gone, the job may start again with a newer token.
    sup2.start(t.job("orphan", 5, "exit 0")).await.unwrap();
}

/// Ignores SIGTERM (and so does every child it starts), then spins.
const STUBBORN: &str = "trap '' TERM; echo $$ > leader.pid; while :; do sleep 0.05; done";

#[tokio::test]
async fn sigterm_ignored_means_sigkill_after_the_kill_timeout() {
    let t = env();
    let sup = t.supervisor();
    let mut exits = sup.exits().unwrap();
    sup.refresh(far());

    // A user stop with a 400 ms kill timeout.
    sup.start(t.job("stub", 1, STUBBORN)).await.unwrap();
    let leader = wait_for_pid_file(&t.work_dir("stub").join("leader.pid")).await;
    let t0 = Instant::now();
    sup.stop("stub", 1, Duration::from_millis(400))
        .await
        .unwrap();
    let e = next_exit(&mut exits, Duration::from_secs(10)).await;
    let took = t0.elapsed();
    assert_eq!(
        (e.signal, e.reason),
        (Some(libc::SIGKILL), ExitReason::Stopped)
    );
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_millis(400) + KILL_BOUND, "{took:?}");
    assert!(!alive(leader));

    // Fencing uses the fence kill timeout (250 ms).
    sup.start(t.job("stub2", 1, STUBBORN)).await.unwrap();
    let leader = wait_for_pid_file(&t.work_dir("stub2").join("leader.pid")).await;
    let deadline = Instant::now() + Duration::from_millis(300);
    sup.refresh(Some(deadline));
    let dead_at = wait_dead(&[leader], Duration::from_secs(5)).await;
    let after = dead_at - deadline;
    eprintln!("SIGTERM-ignoring job dead {after:?} after the deadline (fence kill timeout 250 ms)");
    assert!(after >= FENCE_KILL, "{after:?}");
    assert!(after < FENCE_KILL + KILL_BOUND, "{after:?}");
    let e = next_exit(&mut exits, Duration::from_secs(5)).await;
    assert_eq!(
        (e.signal, e.reason),
        (Some(libc::SIGKILL), ExitReason::Fenced)
    );
}

#[tokio::test]
async fn fencing_tokens_and_user_stop() {
    let t = env();
    let sup = t.supervisor();
    let mut exits = sup.exits().unwrap();
    sup.refresh(far());
    let polite = "trap 'echo got-term; exit 3' TERM; echo $$ > leader.pid; \
                  while :; do sleep 0.05; done";
    sup.start(t.job("tok", 5, polite)).await.unwrap();
    wait_for_pid_file(&t.work_dir("tok").join("leader.pid")).await;
    let err = sup.start(t.job("tok", 6, "true")).await.unwrap_err();
    assert!(
        matches!(err, SupervisorError::AlreadyRunning { token: 5, .. }),
        "{err}"
    );
    let err = sup
        .stop("tok", 4, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SupervisorError::StaleToken {
                token: 4,
                highest: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        sup.stop("other", 5, Duration::from_secs(5)).await,
        Err(SupervisorError::NotRunning { .. })
    ));
    // The stop sends SIGTERM first: the trap runs long before the 5 s SIGKILL.
    let t0 = Instant::now();
    sup.stop("tok", 5, Duration::from_secs(5)).await.unwrap();
    let e = next_exit(&mut exits, Duration::from_secs(10)).await;
    assert_eq!(
        (e.code, e.signal, e.reason, e.fencing_token),
        (Some(3), None, ExitReason::Stopped, 5)
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(sup.tail_logs("tok", 1).await.unwrap().stdout, ["got-term"]);

    // An older token is refused, also by a restarted agent (the highest is on disk).
    let err = sup.start(t.job("tok", 3, "true")).await.unwrap_err();
    assert!(
        matches!(
            err,
            SupervisorError::StaleToken {
                token: 3,
                highest: 5,
                ..
            }
        ),
        "{err}"
    );
    drop(sup);
    let sup = t.supervisor();
    let mut exits = sup.exits().unwrap();
    sup.refresh(far());
    let err = sup.start(t.job("tok", 4, "true")).await.unwrap_err();
    assert!(matches!(err, SupervisorError::StaleToken { .. }), "{err}");
    sup.start(t.job("tok", 5, "exit 0")).await.unwrap();
    assert_eq!(
        next_exit(&mut exits, Duration::from_secs(10)).await.code,
        Some(0)
    );
    sup.start(t.job("tok", 9, "exit 0")).await.unwrap();
    assert_eq!(
        next_exit(&mut exits, Duration::from_secs(10))
            .await
            .fencing_token,
        9
    );
    assert!(matches!(
        sup.start(t.job("tok", 8, "true")).await,
        Err(SupervisorError::StaleToken { highest: 9, .. })
    ));
}

#[tokio::test]
async fn a_killed_shim_or_a_revoked_lease_leaves_nothing_running() {
    let t = env();
    let sup = t.supervisor();
    let mut exits = sup.exits().unwrap();
    let (lease_tx, lease_rx) = tokio::sync::watch::channel(tandem_agent::LeaseView {
        held_until: far(),
        ..Default::default()
    });
    let follower = sup.follow_lease(lease_rx);
    let until = Instant::now() + Duration::from_secs(5);
    while sup.start(t.job("probe", 1, "exit 0")).await.is_err() {
        assert!(Instant::now() < until, "the followed lease never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    next_exit(&mut exits, Duration::from_secs(10)).await;

    // The shim is SIGKILLed (OOM killer): the kernel kills the leader (parent-death signal) and
    // the agent kills the rest of its group.
    let started = sup.start(t.job("lost", 1, FAMILY)).await.unwrap();
    let leader = wait_for_pid_file(&t.work_dir("lost").join("leader.pid")).await;
    let gc = wait_for_pid_file(&t.work_dir("lost").join("gc.pid")).await;
    unsafe { libc::kill(started.shim_pid as i32, libc::SIGKILL) };
    let e = next_exit(&mut exits, Duration::from_secs(5)).await;
    assert_eq!((e.job_id.as_str(), e.reason), ("lost", ExitReason::Lost));
    wait_dead(&[leader, gc], KILL_BOUND).await;

    // The link loses the lease (revoked, or declared down): every job is fenced at once.
    sup.start(t.job("rev", 1, FAMILY)).await.unwrap();
    let leader = wait_for_pid_file(&t.work_dir("rev").join("leader.pid")).await;
    let gc = wait_for_pid_file(&t.work_dir("rev").join("gc.pid")).await;
    let t0 = Instant::now();
    lease_tx.send_modify(|v| v.held_until = None);
    let dead_at = wait_dead(&[leader, gc], KILL_BOUND).await;
    eprintln!(
        "fence latency after the lease was revoked: {:?}",
        dead_at - t0
    );
    let e = next_exit(&mut exits, Duration::from_secs(5)).await;
    assert_eq!((e.job_id.as_str(), e.reason), ("rev", ExitReason::Fenced));
    assert!(matches!(
        sup.start(t.job("rev", 2, "true")).await,
        Err(SupervisorError::NoLease)
    ));
    drop(lease_tx);
    tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_start_is_held_from_acceptance_and_a_repeat_is_not_refused() {
    let t = env();
    let sup = Arc::new(t.supervisor());
    let mut exits = sup.exits().unwrap();
    // No lease yet: the start waits for one (up to 2 s), and is held as starting meanwhile.
    let first = tokio::spawn({
        let (sup, job) = (sup.clone(), t.job("rep", 3, FAMILY));
        async move { sup.start(job).await }
    });
    let until = Instant::now() + Duration::from_secs(5);
    while sup.held() != [held("rep", 3, HeldState::Starting)] {
        assert!(Instant::now() < until, "never held as starting");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // A repeat of that start does nothing (the first answers).
    let err = sup.start(t.job("rep", 3, "true")).await.unwrap_err();
    assert!(
        matches!(err, SupervisorError::StartInProgress { token: 3, .. }),
        "{err}"
    );
    // A newer start supersedes it while it still waits for its lease (nothing of it runs or
    // is on disk yet); an older one is stale.
    let second = tokio::spawn({
        let (sup, job) = (sup.clone(), t.job("rep", 4, FAMILY));
        async move { sup.start(job).await }
    });
    while sup.held() != [held("rep", 4, HeldState::Starting)] {
        assert!(
            Instant::now() < until,
            "the newer start did not supersede the older"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let err = sup.start(t.job("rep", 2, "true")).await.unwrap_err();
    assert!(
        matches!(
            err,
            SupervisorError::StaleToken {
                token: 2,
                highest: 4,
                ..
            }
        ),
        "{err}"
    );
    sup.refresh(far());
    let err = first.await.unwrap().unwrap_err();
    assert!(
        matches!(err, SupervisorError::StoppedBeforeStart { token: 3, .. }),
        "{err}"
    );
    let started = second.await.unwrap().unwrap();
    assert_eq!(sup.held(), [held("rep", 4, HeldState::Running)]);
    // Repeated while it runs: answered with the running copy; a newer one is refused while
    // it runs (it has to be stopped first).
    assert_eq!(sup.start(t.job("rep", 4, "true")).await.unwrap(), started);
    assert!(matches!(
        sup.start(t.job("rep", 5, "true")).await,
        Err(SupervisorError::AlreadyRunning { token: 4, .. })
    ));
    sup.stop("rep", 4, Duration::from_secs(5)).await.unwrap();
    let e = next_exit(&mut exits, Duration::from_secs(10)).await;
    assert_eq!(
        (e.job_id.as_str(), e.fencing_token, e.reason),
        ("rep", 4, ExitReason::Stopped)
    );
    wait_not_held(&sup).await;

    // A start that fails is not held, and neither is one given up half way (its future
    // dropped while it waits for a lease).
    let mut missing = t.job("gone", 1, "");
    missing.command = vec!["/nonexistent/program".into()];
    let err = sup.start(missing).await.unwrap_err();
    assert!(matches!(err, SupervisorError::SpawnFailed { .. }), "{err}");
    assert!(sup.held().is_empty());
    sup.refresh(None);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        sup.start(t.job("dropped", 1, "true")),
    )
    .await;
    assert!(gave_up.is_err(), "started without a lease");
    assert!(sup.held().is_empty());
}

#[tokio::test]
async fn a_new_fence_kill_timeout_reaches_running_shims_and_new_starts() {
    let t = env();
    let sup = t.supervisor();
    let mut exits = sup.exits().unwrap();
    sup.refresh(far());
    sup.start(t.job("slow", 1, STUBBORN)).await.unwrap();
    let leader = wait_for_pid_file(&t.work_dir("slow").join("leader.pid")).await;
    let longer = Duration::from_millis(1500);
    assert_eq!(sup.set_fence_kill_timeout(longer), FENCE_KILL);
    assert_eq!(sup.set_fence_kill_timeout(longer), longer);
    assert_eq!(sup.fence_kill_timeout(), longer);

    // A new start gets it in its spec.
    sup.start(t.job("later", 1, "exit 0")).await.unwrap();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.job_dir("later").join("spec.json")).unwrap())
            .unwrap();
    assert_eq!(spec["fence_kill_timeout_ms"], 1500);
    assert_eq!(
        next_exit(&mut exits, Duration::from_secs(10)).await.job_id,
        "later"
    );

    // The running shim was sent it (and says so), and its fence waits that long for SIGKILL.
    let shim_log = t.job_dir("slow").join("shim.log");
    let until = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&shim_log)
        .unwrap_or_default()
        .contains("fence kill timeout 250 -> 1500 ms")
    {
        assert!(
            Instant::now() < until,
            "the shim never took the new timeout"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_millis(300);
    sup.refresh(Some(deadline));
    let dead_at = wait_dead(&[leader], longer + Duration::from_secs(5)).await;
    let after = dead_at - deadline;
    eprintln!(
        "SIGTERM-ignoring job dead {after:?} after the deadline (fence kill timeout 1500 ms)"
    );
    assert!(after >= longer, "{after:?}");
    assert!(after < longer + KILL_BOUND, "{after:?}");
    let e = next_exit(&mut exits, Duration::from_secs(5)).await;
    assert_eq!(
        (e.job_id.as_str(), e.signal, e.reason),
        ("slow", Some(libc::SIGKILL), ExitReason::Fenced)
    );
}

/// Polls until the supervisor holds `job` (its start is accepted and waits for a lease).
async fn wait_held(sup: &Supervisor, job: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while !sup.held().iter().any(|h| h.job_id == job) {
        assert!(Instant::now() < until, "never held: {job}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Found by the simulation (`tests/sim`): a start that came on one session without a lease
/// waited for one, and took the lease of the *next* session. In between the node had been
/// declared down and the job placed on another node: two copies. A waiting start now takes
/// only a lease its own session gave; with one, it starts.
#[tokio::test]
async fn a_start_waiting_for_a_lease_takes_only_one_of_its_own_session() {
    use tandem_agent::LeaseView;
    let t = env();
    let sup = Arc::new(t.supervisor());
    let _exits = sup.exits().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(LeaseView::default());
    let _follow = sup.follow_lease(rx);
    let lease = |session| LeaseView {
        node_id: None,
        held_until: far(),
        connected: true,
        session: Some(session),
    };

    let mut job = t.job("j1", 1, "sleep 30");
    job.session = Some(5);
    let s = sup.clone();
    let waiting = tokio::spawn(async move { s.start(job).await });
    wait_held(&sup, "j1").await;
    tx.send_replace(lease(6));
    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, SupervisorError::NoLease), "{err}");
    wait_not_held(&sup).await;

    tx.send_replace(LeaseView::default());
    let mut job = t.job("j1", 2, "sleep 30");
    job.session = Some(7);
    let s = sup.clone();
    let waiting = tokio::spawn(async move { s.start(job).await });
    wait_held(&sup, "j1").await;
    tx.send_replace(lease(7));
    waiting.await.unwrap().unwrap();
}
