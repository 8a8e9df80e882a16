//! End to end, with the real binaries, as root: a job is contained. Whatever the job starts —
//! a background child in its own process group (`set -m`), a `setsid` double fork, a job that
//! deletes the files in its working dir — nothing of the old copy outlives the fence when its
//! agent is `kill -9`ed, and no two fencing tokens ever write at overlapping times.
//!
//! The old copy's processes are found by their environment (`TANDEM_JOB_ID` and
//! `TANDEM_FENCING_TOKEN` in `/proc/PID/environ`), not by anything the agent records, so the
//! check does not trust the code it checks. A [`Reaper`] kills whatever is left of a job when
//! the test ends, pass or fail.
//!
//! These need root and a cgroup file system; without them each test prints why and passes
//! without checking (CI runs as root on a hybrid cgroup host, so there they run).

use anyhow::{ensure, Context, Result};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use tandem_tests::fleet::*;
use tandem_tests::wait_for;

/// The coordinator's default lease and fence kill timeout (tests/src/lib.rs starts it with
/// its defaults).
const LEASE: Duration = Duration::from_millis(1000);
const FENCE_KILL: Duration = Duration::from_millis(250);
/// Scheduling slack on a loaded two-core machine, on top of lease + fence kill timeout.
const SLACK: Duration = Duration::from_millis(1000);

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: job cgroups need root".into());
    }
    if !Path::new("/sys/fs/cgroup").is_dir()
        || std::fs::read_dir("/sys/fs/cgroup").map_or(true, |mut d| d.next().is_none())
    {
        return Some("no cgroup file system at /sys/fs/cgroup".into());
    }
    None
}

/// The user `nobody`, for the tests that run jobs as another user; `None` (with the reason
/// printed) where they cannot run: not root, no cgroups, or no such user.
fn nobody_or_skip() -> Option<tandem_agent::containment::user::JobUser> {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return None;
    }
    match tandem_agent::containment::user::JobUser::lookup("nobody") {
        Ok(u) => Some(u),
        Err(_) => {
            println!("skipped: no user nobody here");
            None
        }
    }
}

/// One line in the fleet's writer format, appended to `out`.
fn line(out: &Path) -> String {
    format!(
        "echo \"$TANDEM_NODE_NAME $TANDEM_FENCING_TOKEN $(date +%s%N) -\" >> {}",
        out.display()
    )
}

/// A plain writer loop (no TERM trap: an escapee need not be slow to die, only hidden).
fn looped(out: &Path) -> String {
    format!("while true; do {}; sleep 0.01; done", line(out))
}

/// Runs `script` (bash) as a job, waits until it writes and has at least `min_procs`
/// processes, `kill -9`s its agent (and with `restart`, starts it again at once; otherwise
/// the job moves to the second node), and checks: every process of the old copy is gone
/// within lease + fence kill timeout (+ slack) of the kill, a new copy runs, and no two
/// tokens wrote at overlapping times. Prints how long the old copy's processes lived after
/// the kill.
fn escape_is_fenced(
    name: &str,
    script: impl Fn(&Path) -> String,
    min_procs: usize,
    restart: bool,
    process_group: bool,
) -> Result<()> {
    if let Some(why) = skip_reason() {
        println!("{name}: skipped: {why}");
        return Ok(());
    }
    let mut f = Fleet::new(name, "pool")?;
    let nodes = if restart {
        vec![format!("{name}-a")]
    } else {
        vec![format!("{name}-a"), format!("{name}-b")]
    };
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let extra: &[&str] = if process_group {
        &["--containment", "process-group"]
    } else {
        &[]
    };
    f.start_agents(&names, extra)?;
    let out = f.tmp.path().join(format!("{name}.out"));
    let j = f.api().post(
        "/v1/jobs",
        &json!({"name": name, "cluster": f.cluster,
                "command": ["/bin/bash", "-c", script(&out)],
                "resources": {"cpu_millis": 100, "memory_bytes": 67108864, "gpus": 0},
                "restart": "always"}),
    )?;
    let w = Writer {
        id: j["job"]["id"].as_str().context("job id")?.to_string(),
        out,
    };
    let _reaper = Reaper(w.id.clone());
    let job = f.wait_running(&w)?;
    let (node, token) = f.placement(&job)?;
    let pids = wait_for(LONG, "the job's processes", || {
        let p = copy_pids(&w.id, Some(token));
        (p.len() >= min_procs).then_some(p)
    })?;
    println!("{name}: copy {token} on {node} runs as {pids:?}");
    // (A job that deletes its working dir may have deleted `status.json` too.)
    if let Some(status) = f.job_status(&node, &w.id) {
        check(
            (status["containment"] == "process-group") == process_group,
            || format!("the job's containment is not as configured: {status}"),
        )?;
        // The shim is started in the job's leaf so that the job is born there; it then moves
        // itself to its own leaf, which the fence's kill does not reach.
        if !process_group {
            let leaf = |pid: &serde_json::Value| {
                let t = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
                t.lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            let (job_cg, shim_cg) = (leaf(&status["pid"]), leaf(&status["shim_pid"]));
            check(
                job_cg.ends_with(&format!("/jobs/{}/job", w.id))
                    && shim_cg.ends_with(&format!("/jobs/{}/shim", w.id)),
                || format!("the job is in {job_cg:?} and its shim in {shim_cg:?}"),
            )?;
        }
    }
    f.coord.wait_restart_grace()?;

    let t0 = Instant::now();
    f.agent(&node)?.kill9();
    let bound = LEASE + FENCE_KILL + SLACK;
    if restart {
        f.start_agent(&node, None, extra)?;
        return readopted_alone(&f, &w, &node, token, t0 + 2 * bound, name);
    }
    let gone = wait_for(LONG, "every process of the old copy gone", || {
        copy_pids(&w.id, Some(token))
            .is_empty()
            .then(|| t0.elapsed())
    })
    .with_context(|| {
        format!(
            "still alive: {:?} ({})",
            copy_pids(&w.id, Some(token)),
            f.agent_log(&node)
        )
    })?;
    println!(
        "{name}: the old copy's last process was gone {} ms after kill -9 of its agent \
         (lease {} ms + fence kill {} ms)",
        gone.as_millis(),
        LEASE.as_millis(),
        FENCE_KILL.as_millis()
    );
    // The shim's own measure: from the lease deadline to the job's last process gone.
    let shim_log = f.state_dir(&node).join("jobs").join(&w.id).join("shim.log");
    let after = wait_for(Duration::from_secs(5), "the shim's fence record", || {
        let text = std::fs::read_to_string(&shim_log).ok()?;
        let tail = text.rsplit("after_deadline_us=").next()?;
        (text.contains("after_deadline_us="))
            .then(|| tail.split_whitespace().next().unwrap_or("?").to_string())
    });
    match after {
        Ok(ms) => println!("{name}: lease deadline -> last process gone: {ms} µs (shim.log)"),
        Err(_) => println!("{name}: the shim left no fence record (its log was deleted)"),
    }
    check(gone <= bound, || {
        format!(
            "the old copy lived {} ms after the kill, past lease + fence kill + slack ({} ms)",
            gone.as_millis(),
            bound.as_millis()
        )
    })?;
    let (moved, _) = f
        .wait_new_copy(&w, token, LONG)
        .with_context(|| f.agent_log(&node))?;
    let new = moved["fencing_token"].as_u64().context("token")?;
    println!(
        "{name}: new copy {new} writing {} ms after the kill",
        t0.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_millis(300));
    handover(&w.out, token, new, name)?;
    copies(&w.out)?;
    Ok(())
}

/// After `kill -9` of its agent and a restart at once: the new agent re-adopts the copy (its
/// shim's control socket is in the job dir, which the job's deletes do not reach), so until
/// `until` the copy keeps its token and processes, no other copy starts, and the agent's log
/// says so; a stop then ends every process of it.
fn readopted_alone(
    f: &Fleet,
    w: &Writer,
    node: &str,
    token: u64,
    until: Instant,
    name: &str,
) -> Result<()> {
    while Instant::now() < until {
        let job = f.job(&w.id)?;
        let (on, now) = f.placement(&job)?;
        check(on == node && now == token, || {
            format!("the copy was not kept across the restart: {job}")
        })?;
        check(!copy_pids(&w.id, Some(token)).is_empty(), || {
            format!("the re-adopted copy died: {}", f.agent_log(node))
        })?;
        std::thread::sleep(Duration::from_millis(50));
    }
    check(
        f.agent_log(node).contains("re-adopted a running job"),
        || {
            format!(
                "the new agent did not re-adopt the copy: {}",
                f.agent_log(node)
            )
        },
    )?;
    let v = copies(&w.out)?;
    check(v.len() == 1 && v[0].token == token, || {
        format!(
            "expected token {token} alone, got {:?}",
            v.iter().map(|c| c.token).collect::<Vec<_>>()
        )
    })?;
    println!(
        "{name}: copy {token} re-adopted by the restarted agent, {} lines, no other copy",
        v[0].lines
    );
    let (code, body) = f
        .api()
        .send("DELETE", &format!("/v1/jobs/{}", w.id), None)?;
    check(code < 300, || {
        format!("the stop was refused: {code} {body}")
    })?;
    wait_for(LONG, "every process of the stopped copy gone", || {
        copy_pids(&w.id, Some(token)).is_empty().then_some(())
    })
}

/// A background child in its own process group (`set -m`), writing on; the leader waits.
///
/// On the code before the fix (the fence signals the job's process group only):
/// `timed out after 30s waiting for every process of the old copy gone`, `still alive:
/// [17418, 25344]`: the subshell, in its own group, went on writing beside the new copy.
#[test]
fn a_background_child_in_its_own_process_group_is_fenced() -> Result<()> {
    escape_is_fenced(
        "escape-setm",
        |out| format!("set -m; ({}) & wait", looped(out)),
        2,
        false,
        false,
    )
}

/// A `setsid` double fork: the writer runs in a session of its own, its parent has exited,
/// and the job's leader only sleeps.
///
/// On the code before the fix: `timed out after 30s waiting for every process of the old
/// copy gone`, `still alive: [20280, 28383]`: the daemon, in its own session.
#[test]
fn a_setsid_double_fork_is_fenced() -> Result<()> {
    escape_is_fenced(
        "escape-setsid",
        |out| {
            format!(
                "setsid -f bash -c '({}) & exit 0' </dev/null >/dev/null 2>&1; exec sleep 100000",
                looped(out).replace('\'', "'\\''")
            )
        },
        2,
        false,
        false,
    )
}

/// A job that deletes every file in its working dir (`rm -f ./*`: the shim's `lock` too, when
/// the working dir was the job dir) and then writes on; its agent is `kill -9`ed and started
/// again at once on the same state dir. The new agent re-adopts the copy: it runs on alone,
/// with its token (since #14; before, the copy was fenced and placed again on the same node).
///
/// On the code before the fix: `two copies ran at once: token 1 on ["escape-rm-a"] wrote
/// until 1796276550783329280, token 2 on ["escape-rm-a"] from 1796276550202413001 (580 ms of
/// overlap)`: the restarted agent took the deleted lock for a fenced copy, registered at
/// once, and the new shim took a fresh `lock` while the old copy still ran.
#[test]
fn a_job_that_deletes_its_working_dir_runs_once_across_an_agent_restart() -> Result<()> {
    escape_is_fenced(
        "escape-rm",
        |out| format!("rm -f ./* ./.[!.]*; {}", looped(out)),
        1,
        true,
        false,
    )
}

/// For comparison, not a fix: a plain writer (it stays in its process group) on agents told
/// `--containment process-group`, fenced by its group as before cgroups. Prints the same
/// figures as the tests above.
#[test]
fn without_cgroups_a_job_that_stays_in_its_group_is_fenced() -> Result<()> {
    escape_is_fenced("plain-pgroup", looped, 1, false, true)
}

/// The same plain writer in its cgroup, for the figures beside the one above.
#[test]
fn with_cgroups_a_job_that_stays_in_its_group_is_fenced() -> Result<()> {
    escape_is_fenced("plain-cgroup", looped, 1, false, false)
}

/// A job runs in a working dir of its own (`STATE_DIR/work/<id>`), apart from the
/// supervisor's files: a job that deletes everything in its working dir and in `..` of it
/// leaves `spec.json`, `fencing_token`, `lock` and `status.json` in place. Runs without root.
///
/// On the code before the fix: `the job ran in .../jobs/<id>`: its working dir was the job
/// dir, and `rm -rf ./*` deleted the supervisor's lock and token.
#[test]
fn a_job_works_apart_from_the_supervisors_files() -> Result<()> {
    let mut f = Fleet::new("workdir", "pool")?;
    f.start_agents(&["workdir-a"], &[])?;
    let pwd = f.tmp.path().join("workdir.pwd");
    let script = format!(
        "pwd > {}.tmp && mv {0}.tmp {0}; rm -rf ./* ../*; exec sleep 600",
        pwd.display()
    );
    let j = f.api().post(
        "/v1/jobs",
        &json!({"name": "workdir", "cluster": f.cluster,
                "command": ["/bin/sh", "-c", script],
                "resources": {"cpu_millis": 10, "memory_bytes": 16 << 20, "gpus": 0},
                "restart": "never"}),
    )?;
    let id = j["job"]["id"].as_str().context("job id")?.to_string();
    let _reaper = Reaper(id.clone());
    let ran_in = wait_for(LONG, "the job's pwd", || {
        std::fs::read_to_string(&pwd).ok().filter(|s| !s.is_empty())
    })?;
    let state = std::fs::canonicalize(f.state_dir("workdir-a"))?;
    let job_dir = state.join("jobs").join(&id);
    check(
        Path::new(ran_in.trim()) == state.join("work").join(&id),
        || format!("the job ran in {}", ran_in.trim()),
    )?;
    // Give the rm a moment to finish, then the supervisor's files must all be there.
    wait_for(LONG, "the job to be past its rm", || {
        (!copy_pids(&id, None).is_empty()
            && std::fs::read_dir(state.join("work")).is_ok_and(|mut d| d.next().is_none()))
        .then_some(())
    })?;
    // (`status.json` is written just after the job started, and may come after its rm.)
    let names = ["spec.json", "fencing_token", "lock", "status.json"];
    wait_for(Duration::from_secs(5), "the supervisor's files", || {
        names
            .iter()
            .all(|n| job_dir.join(n).is_file())
            .then_some(())
    })
    .with_context(|| {
        let missing: Vec<_> = names
            .iter()
            .filter(|n| !job_dir.join(n).is_file())
            .collect();
        format!("{missing:?} gone from {}", job_dir.display())
    })?;
    Ok(())
}

/// With no `job_user` in its config, an agent that runs as root runs its jobs as `nobody`: a
/// job cannot read the node's key nor another job's spec (which holds that job's
/// environment), nor list the agent's state dir; its own working dir is its own (it writes
/// there). The test's own dirs are opened up (`0711`) so that only the agent's modes stand in
/// the way.
///
/// On the code before the fix (jobs ran as the agent's user): `uid 0`: the job read the key.
#[test]
fn a_job_as_the_default_user_cannot_read_the_node_key_or_another_jobs_spec() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(nobody) = nobody_or_skip() else {
        return Ok(());
    };
    let mut f = Fleet::new("asuser", "pool")?;
    std::fs::set_permissions(f.tmp.path(), std::fs::Permissions::from_mode(0o711))?;
    let r = f.tmp.path().join("results");
    std::fs::create_dir(&r)?;
    std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o777))?;
    f.start_agents(&["asuser-a"], &[tandem_tests::DEFAULT_JOB_USER])?;
    let state = f.state_dir("asuser-a");
    let submit = |name: &str, script: String| -> Result<String> {
        let j = f.api().post(
            "/v1/jobs",
            &json!({"name": name, "cluster": f.cluster,
                    "command": ["/bin/sh", "-c", script],
                    "env": {"SECRET": "s3cr3t"},
                    "resources": {"cpu_millis": 10, "memory_bytes": 16 << 20, "gpus": 0},
                    "restart": "never"}),
        )?;
        Ok(j["job"]["id"].as_str().context("job id")?.to_string())
    };
    let other = submit("asuser-other", "exec sleep 600".into())?;
    let _r1 = Reaper(other.clone());
    wait_for(LONG, "the other job running", || {
        f.job_status("asuser-a", &other)
            .filter(|s| s["state"] == "running")
    })?;
    let key = state.join("identity").join("node.key");
    let spec = state.join("jobs").join(&other).join("spec.json");
    check(key.is_file() && spec.is_file(), || {
        "no key or spec to read".into()
    })?;
    let rd = r.display();
    let script = format!(
        "id -u > {rd}/uid; touch ./mine && echo ok > {rd}/own; \
         cat {} > {rd}/key 2>&1; echo $? > {rd}/key.rc; \
         cat {} > {rd}/spec 2>&1; echo $? > {rd}/spec.rc; \
         ls {} > {rd}/ls 2>&1; echo $? > {rd}/ls.rc; \
         cat {2}/jobs/$TANDEM_JOB_ID/status.json > {rd}/status 2>&1; echo $? > {rd}/status.rc; \
         echo 999 > {2}/jobs/$TANDEM_JOB_ID/fencing_token; echo $? > {rd}/token.rc; \
         echo done > {rd}/done; exec sleep 600",
        key.display(),
        spec.display(),
        state.display()
    );
    let prober = submit("asuser-prober", script)?;
    let _r2 = Reaper(prober.clone());
    wait_for(LONG, "the prober's results", || {
        std::fs::read_to_string(r.join("done")).ok()
    })
    .with_context(|| f.agent_log("asuser-a"))?;
    let read = |n: &str| std::fs::read_to_string(r.join(n)).unwrap_or_default();
    println!(
        "as nobody: uid {}, key: rc {} {:?}, spec: rc {} {:?}, ls: rc {}",
        read("uid").trim(),
        read("key.rc").trim(),
        read("key").trim(),
        read("spec.rc").trim(),
        read("spec").trim(),
        read("ls.rc").trim()
    );
    check(read("uid").trim() == nobody.uid.to_string(), || {
        format!("uid {}", read("uid").trim())
    })?;
    check(read("own").trim() == "ok", || {
        "cannot write its own dir".into()
    })?;
    check(
        read("key.rc").trim() != "0" && !read("key").contains("PRIVATE KEY"),
        || format!("the job read the key: {}", read("key")),
    )?;
    check(
        read("spec.rc").trim() != "0" && !read("spec").contains("s3cr3t"),
        || format!("the job read another job's spec: {}", read("spec")),
    )?;
    check(read("ls.rc").trim() != "0", || {
        format!("the job listed the state dir: {}", read("ls"))
    })?;
    check(read("status.rc").trim() != "0", || {
        format!("the job read its supervisor's status: {}", read("status"))
    })?;
    check(read("token.rc").trim() != "0", || {
        "the job wrote its supervisor's fencing token".into()
    })?;
    let token = std::fs::read_to_string(state.join("jobs").join(&prober).join("fencing_token"))?;
    check(token.trim() != "999", || "the token was overwritten".into())?;
    Ok(())
}

/// `tandem-agent inventory` says how this host would contain jobs (nothing is made): a cgroup
/// mode where root has a cgroup2 hierarchy, else `process-group` with the reason. Runs
/// without root.
#[test]
fn inventory_says_how_jobs_would_be_contained() -> Result<()> {
    let o = tandem_tests::agent_cmd(&["inventory", "-o", "json"], LONG)?;
    check(o.code == Some(0), || o.stderr.clone())?;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).context("inventory json")?;
    let mode = v["containment"]["mode"].as_str().unwrap_or("?").to_string();
    println!(
        "inventory: containment {mode} ({})",
        v["containment"]["note"]
    );
    check(
        ["cgroup-v2", "cgroup-hybrid", "process-group"].contains(&mode.as_str()),
        || format!("{v}"),
    )?;
    if skip_reason().is_none() && Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        check(mode == "cgroup-hybrid", || format!("{v}"))?;
    }
    let table = tandem_tests::agent_cmd(&["inventory"], LONG)?;
    check(
        table.stdout.contains(&format!("containment: {mode}")),
        || table.stdout.clone(),
    )?;
    Ok(())
}

/// The coordinator sends a job's resources with its start (protocol 4) and the node enforces
/// them: a job submitted through the API with 64 MiB of memory that allocates 500 MB is killed
/// by its cgroup's OOM killer, and the job's record says `oom_killed`; another job on the same
/// node runs on. With the limits left out of the start (as before protocol 4): `the hog ended
/// "completed" (exited 0)`.
#[test]
fn an_api_job_past_its_memory_limit_is_oom_killed_and_recorded_so() -> Result<()> {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return Ok(());
    }
    let mut f = Fleet::new("oom", "pool")?;
    f.start_agents(&["oom-a"], &[])?;
    let other = f.submit_writer("oom-writer", 0, json!({}))?;
    f.wait_running(&other)?;
    let j = f.api().post(
        "/v1/jobs",
        &json!({"name": "hog", "cluster": f.cluster,
                "command": ["/bin/sh", "-c", "head -c 500000000 /dev/zero | tail"],
                "resources": {"cpu_millis": 500, "memory_bytes": 64u64 << 20, "gpus": 0},
                "restart": "never"}),
    )?;
    let id = j["job"]["id"].as_str().context("job id")?.to_string();
    let ended = tandem_tests::wait_for(LONG, "the hog to end", || {
        let j = f.job(&id).ok()?;
        (j["state"] == "failed" || j["state"] == "completed").then_some(j)
    })?;
    let reason = ended["history"][0]["end_reason"].as_str().unwrap_or("?");
    ensure!(
        ended["state"] == "failed" && reason.starts_with("oom_killed"),
        "the hog ended {} ({reason}): {ended}",
        ended["state"]
    );
    let (_, token) = f.placement(&f.job(&other.id)?)?;
    let before = read_lines(&other.out).len();
    tandem_tests::wait_for(LONG, "the other job writing on", || {
        (read_lines(&other.out).len() > before + 5).then_some(())
    })?;
    ensure!(
        f.placement(&f.job(&other.id)?)?.1 == token,
        "the other job was restarted"
    );
    println!("the hog ended {}: {reason}", ended["state"]);
    Ok(())
}

/// A job's spec names the user it runs as; its node runs it so only if its agent's
/// `allowed_job_users` lists that user, and refuses it otherwise (root included, unless
/// listed). Checks: a job naming `nobody` on an agent that allows it runs with nobody's uid;
/// one naming `root` there is refused and, `restart: never`, ends failed, with an event that
/// says why; a malformed name is refused by the API (`invalid_argument`, field `user`).
#[test]
fn a_job_runs_as_the_user_it_names_only_where_its_node_allows_it() -> Result<()> {
    let Some(nobody) = nobody_or_skip() else {
        return Ok(());
    };
    let mut f = Fleet::new("named", "pool")?;
    let cfg = f.tmp.path().join("agent.toml");
    std::fs::write(&cfg, "allowed_job_users = [\"nobody\"]\n")?;
    let cfg = cfg.to_str().context("utf-8")?.to_string();
    f.start_agents(
        &["named-a"],
        &["--config", &cfg, tandem_tests::DEFAULT_JOB_USER],
    )?;
    let submit = |name: &str, user: &str| {
        f.api().send(
            "POST",
            "/v1/jobs",
            Some(&json!({"name": name, "cluster": f.cluster,
                "command": ["/bin/sh", "-c", "id -u; sleep 600"],
                "resources": {"cpu_millis": 100, "memory_bytes": 64u64 << 20, "gpus": 0},
                "restart": "never", "user": user})),
        )
    };
    let (s, v) = submit("as-nobody", "nobody")?;
    ensure!(s == 201, "submit as nobody: {s} {v}");
    let id = v["job"]["id"].as_str().context("job id")?.to_string();
    let uid = wait_for(LONG, "the job's uid in its log", || {
        let l = f.api().get(&format!("/v1/jobs/{id}/logs?tail=5")).ok()?;
        l["stdout"]
            .as_array()?
            .first()?
            .as_str()
            .map(|s| s.trim().to_string())
    })?;
    ensure!(
        uid == nobody.uid.to_string(),
        "the job ran as uid {uid}, not nobody's {}",
        nobody.uid
    );
    let (s, v) = submit("as-root", "root")?;
    ensure!(s == 201, "submit as root: {s} {v}");
    let root_id = v["job"]["id"].as_str().context("job id")?.to_string();
    let ended = wait_for(LONG, "the root job refused", || {
        let j = f.job(&root_id).ok()?;
        (j["state"] == "failed").then_some(j)
    })
    .with_context(|| format!("job now: {:?}", f.job(&root_id).ok()))?;
    let why = f
        .events("job")?
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.contains(&root_id) && m.contains("refused its start"))
        .map(String::from)
        .with_context(|| format!("no event says why the start was refused: {ended}"))?;
    ensure!(
        why.contains("does not allow"),
        "the refusal does not say the user is not allowed: {why}"
    );
    let (s, v) = submit("bad-user", "Bad User")?;
    ensure!(
        s == 400 && v["error"]["code"] == "invalid_argument",
        "a malformed user: {s} {v}"
    );
    println!(
        "as nobody: uid {uid}; as root: failed, {why}; malformed: {}",
        v["error"]["message"]
    );
    Ok(())
}
