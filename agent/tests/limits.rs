//! A job's limits, enforced through its cgroups, with the real `tandem-agent shim` binary and
//! real processes: a job over its memory limit is OOM-killed and reported `oom_killed` while
//! another job runs on unharmed; a CPU-bound job is held to its quota, measured from its own
//! cgroup (`usage_usec` in the unified hierarchy's `cpu.stat`).
//!
//! They need root and usable cgroups (a memory and a cpu controller); without them each test
//! prints why and passes without checking. CI (root, a hybrid host) runs them.
//!
//! These drive the supervisor directly: the coordinator's `StartJob` carries no resources yet,
//! so a job started through the coordinator gets the pids limit only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_agent::containment::{Choice, Containment, Limits, Mode};
use tandem_agent::supervisor::{ExitReason, JobExit, JobStart, Supervisor};
use tandem_common::ids::NodeId;
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_tandem-agent");

/// Kills, at drop, every process whose environment names the test's directory.
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

struct Env {
    dir: tempfile::TempDir,
    sup: Supervisor,
    exits: mpsc::Receiver<JobExit>,
    _reaper: Reaper,
}

/// A supervisor with cgroups and a long lease, or why there can be none here.
fn env() -> Result<Env, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    let dir = tempfile::tempdir().unwrap();
    let c = Containment::detect(dir.path(), Choice::Auto);
    if c.mode() == Mode::ProcessGroup || c.note().contains("no limits") {
        return Err(format!("no cgroup limits here: {}", c.note()));
    }
    println!("containment: {} ({})", c.mode().name(), c.note());
    let sup = Supervisor::new(
        dir.path(),
        NodeId::random(),
        "node-a",
        Duration::from_millis(250),
    )
    .unwrap()
    .with_shim_program(BIN)
    .with_containment(Arc::new(c));
    sup.refresh(Some(Instant::now() + Duration::from_secs(600)));
    let exits = sup.exits().unwrap();
    let reaper = Reaper(dir.path().to_path_buf());
    Ok(Env {
        dir,
        sup,
        exits,
        _reaper: reaper,
    })
}

impl Env {
    fn job(&self, id: &str, script: &str, limits: Limits) -> JobStart {
        let mut env = BTreeMap::new();
        env.insert(
            "TEST_TAG".to_string(),
            self.dir.path().to_string_lossy().into_owned(),
        );
        JobStart {
            job_id: id.to_string(),
            job_name: id.to_string(),
            fencing_token: 1,
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env,
            limits,
            ..Default::default()
        }
    }

    /// The job's cgroup in the cgroup2 (or unified) hierarchy, from its spec.
    fn cgroup(&self, id: &str) -> PathBuf {
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.dir.path().join("jobs").join(id).join("spec.json")).unwrap(),
        )
        .unwrap();
        PathBuf::from(spec["cgroup"].as_str().expect("the job has a cgroup"))
    }

    async fn exit_of(&mut self, id: &str, within: Duration) -> JobExit {
        let until = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(until, self.exits.recv()).await {
                Ok(Some(e)) if e.job_id == id => return e,
                Ok(Some(_)) => continue,
                _ => panic!("{id} did not end within {within:?}"),
            }
        }
    }
}

fn usage_usec(cgroup: &Path) -> u64 {
    std::fs::read_to_string(cgroup.join("cpu.stat"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
        .expect("usage_usec in cpu.stat")
}

/// Without the limit (the code before the fix, checked by running this test with
/// `memory_bytes: None`): `assertion left == right failed: JobExit { ..., code: Some(0), ...,
/// reason: Exited }`: the job took its 500 MB and ended well.
#[tokio::test]
async fn a_job_over_its_memory_limit_is_oom_killed_and_the_others_are_unharmed() {
    let mut e = match env() {
        Ok(e) => e,
        Err(why) => return println!("skipped: {why}"),
    };
    let bystander = e
        .sup
        .start(e.job("bystander", "exec sleep 600", Limits::default()))
        .await
        .unwrap();
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        ..Default::default()
    };
    // `tail` keeps a line without a newline whole: 500 MB of one line.
    e.sup
        .start(e.job("hog", "head -c 500000000 /dev/zero | tail", limits))
        .await
        .unwrap();
    let exit = e.exit_of("hog", Duration::from_secs(30)).await;
    println!("hog: {exit:?}");
    assert_eq!(exit.reason, ExitReason::OomKilled, "{exit:?}");
    assert_eq!(exit.reason.name(), "oom_killed");
    // The other job and this process (the agent's side) run on.
    let held: Vec<String> = e.sup.held().into_iter().map(|h| h.job_id).collect();
    assert_eq!(held, ["bystander"]);
    assert!(Path::new(&format!("/proc/{}", bystander.pid)).exists());
}

/// Without the limit (checked with `cpu_millis: None`): `over its quota: 0.706 cores` on the
/// loaded two-core development machine.
#[tokio::test]
async fn a_cpu_bound_job_is_held_to_its_quota() {
    let e = match env() {
        Ok(e) => e,
        Err(why) => return println!("skipped: {why}"),
    };
    let limits = Limits {
        cpu_millis: Some(200),
        ..Default::default()
    };
    e.sup
        .start(e.job("spin", "while :; do :; done", limits))
        .await
        .unwrap();
    let cg = e.cgroup("spin");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (u0, t0) = (usage_usec(&cg), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (u1, t1) = (usage_usec(&cg), Instant::now());
    let cores = (u1 - u0) as f64 / (t1 - t0).as_micros() as f64;
    println!(
        "spin: usage {cores:.3} cores with a quota of 0.200 (from {})",
        cg.display()
    );
    assert!(cores <= 0.3, "over its quota: {cores:.3} cores");
    assert!(cores >= 0.02, "it hardly ran: {cores:.3} cores");
    e.sup
        .stop("spin", 1, Duration::from_millis(100))
        .await
        .unwrap();
}

/// The fence's way on kernels without `cgroup.kill`: freeze, SIGKILL every member, thaw,
/// until the cgroup is empty. A family that forks as fast as it can (a fork loop, a `setsid`
/// child) is gone after it, as with `cgroup.kill`.
#[test]
fn freeze_and_kill_empties_a_cgroup_of_a_forking_family() {
    use tandem_agent::containment::cgroup;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return println!("skipped: not root");
    }
    let dir = tempfile::tempdir().unwrap();
    let c = Containment::detect(dir.path(), Choice::Auto);
    if c.mode() == Mode::ProcessGroup {
        return println!("skipped: {}", c.note());
    }
    let cg = c.prepare("forker", &Limits::default()).unwrap().unwrap();
    let procs = cgroup::open_procs(&cg.job).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args([
        "-c",
        "setsid sh -c 'while :; do sleep 10 & done' & while :; do (sleep 10 &); done",
    ]);
    // SAFETY: join_in_child only calls write(2).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || cgroup::join_in_child(fd));
    }
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = cgroup::procs_recursive(&cg.job).len();
    assert!(before > 2, "the family did not grow: {before}");
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(10);
    while !cgroup::procs_recursive(&cg.job).is_empty() {
        assert!(
            Instant::now() < until,
            "still {:?}",
            cgroup::procs_recursive(&cg.job)
        );
        cgroup::freeze_and_kill(&cg.job);
        std::thread::sleep(Duration::from_millis(2));
    }
    println!(
        "freeze and kill: {before} processes gone in {} µs",
        t0.elapsed().as_micros()
    );
    let _ = child.wait();
    c.release("forker");
    assert!(!cg.dir.exists(), "the empty cgroup was removed");
}
