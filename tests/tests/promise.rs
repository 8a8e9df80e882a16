//! End to end, with the real binaries: the two promises — a job never runs as two copies at
//! once, and an accepted job is never lost — under the defects of the coordinator an
//! adversarial review found. Each test names its defect and asserts exactly the promise.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tandem_tests::fleet::*;
use tandem_tests::jobs::*;
use tandem_tests::{wait_for, Api, Coordinator};

/// How many of the cluster's jobs are in each state.
fn by_state(f: &Fleet) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for j in jobs(f).unwrap_or_default() {
        *m.entry(j["state"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    m
}

/// Defect 1: the coordinator queues commands to a node with `try_send` into a 16-slot
/// channel, so of more than 16 commands decided at once for one node the rest are dropped.
/// 24 jobs wait (pending) in a pool cluster without nodes; then one node joins and all 24 are
/// placed on it at once. Checks: all 24 reach `running`.
///
/// On the code before the fix: `timed out after 20s waiting for all 24 jobs running`,
/// states `{"running": 16, "starting": 8}`.
#[test]
fn more_than_16_jobs_placed_on_one_node_at_once_all_run() -> Result<()> {
    let mut f = Fleet::new("burst", "pool")?;
    let ids: Vec<String> = (0..24)
        .map(|i| submit(&f, &format!("burst-{i}"), "exec sleep 600", json!({})))
        .collect::<Result<_>>()?;
    wait_for(LONG, "all 24 jobs pending", || {
        (by_state(&f).get("pending") == Some(&24)).then_some(())
    })?;
    f.start_agents(&["burst-a"], &[])?;
    wait_for(Duration::from_secs(20), "all 24 jobs running", || {
        (by_state(&f).get("running") == Some(&ids.len())).then_some(())
    })
    .with_context(|| format!("job states: {:?}", by_state(&f)))?;
    Ok(())
}

/// Defect 1, through a drain: draining a node that runs 24 jobs decides 24 stops for it at
/// once (each move starts the new copy after the old one stopped); past 16 they are dropped
/// and those moves never end. Checks: every job ends up running on the other node, and the
/// drained node holds none.
///
/// On the code before the fix: `timed out after 30s waiting for all 24 jobs running on
/// drain24-b`, states `{"migrating": 8, "running": 16}`.
#[test]
fn draining_a_node_of_24_jobs_moves_every_job() -> Result<()> {
    let mut f = Fleet::new("drain24", "pool")?;
    f.start_agents(&["drain24-a"], &[])?;
    let a = node_id(&f, "drain24-a")?;
    let ids: Vec<String> = (0..24)
        .map(|i| submit(&f, &format!("drain24-{i}"), "exec sleep 600", json!({})))
        .collect::<Result<_>>()?;
    wait_for(LONG, "all 24 jobs running on drain24-a", || {
        let js = jobs(&f).ok()?;
        (js.len() == ids.len()
            && js
                .iter()
                .all(|j| j["state"] == "running" && j["node"] == a.as_str()))
        .then_some(())
    })
    .with_context(|| format!("job states: {:?}", by_state(&f)))?;
    f.start_agents(&["drain24-b"], &[])?;
    let b = node_id(&f, "drain24-b")?;
    f.coord.wait_restart_grace()?;

    f.api().post(&format!("/v1/nodes/{a}/drain"), &json!({}))?;
    wait_for(LONG, "all 24 jobs running on drain24-b", || {
        let js = jobs(&f).ok()?;
        (js.len() == ids.len()
            && js
                .iter()
                .all(|j| j["state"] == "running" && j["node"] == b.as_str()))
        .then_some(())
    })
    .with_context(|| format!("job states: {:?}", by_state(&f)))?;
    let left = f.api().get(&format!("/v1/jobs?node={a}"))?;
    ensure!(
        left["jobs"].as_array().is_some_and(Vec::is_empty),
        "the drained node still holds jobs: {left}"
    );
    Ok(())
}

/// Defect 2: a `restart: never` job that exits while its agent is cut off from the
/// coordinator (here: the coordinator is killed with `kill -9` shortly before the exit and
/// started again right after it, within the agent's lease) runs a second time: the node
/// registers again without the job and the coordinator places it again. Checks: the job,
/// which appends one line and exits 0 after 1.5 s, wrote exactly one line (over the node's
/// re-registration and 3 s more) and ends `completed`.
///
/// On the code before the fix: `a restart: never job ran 2 times: [(1, ..), (2, ..)]`.
#[test]
fn a_restart_never_job_that_exits_while_the_coordinator_is_down_runs_once() -> Result<()> {
    let mut f = Fleet::new("once", "pool")?;
    f.start_agents(&["once-a"], &[])?;
    f.coord.wait_restart_grace()?;
    let out = f.tmp.path().join("once.out");
    let exited = f.tmp.path().join("once.exited");
    let script = format!(
        "{}; sleep 1.5; echo $TANDEM_FENCING_TOKEN >> {}; exit 0",
        stamp(&out),
        exited.display()
    );
    let id = submit(&f, "once", &script, json!({"restart": "never"}))?;
    let (_, started_ns) = wait_for(LONG, "the job's line", || {
        token_lines(&out).first().copied()
    })?;
    // Kill the coordinator 1.2 s into the job's 1.5 s.
    let kill_at = started_ns + 1_200_000_000;
    let now = now_ns();
    if kill_at > now {
        std::thread::sleep(Duration::from_nanos((kill_at - now) as u64));
    }
    f.coord.proc.kill9();
    wait_for(Duration::from_secs(5), "the job to exit", || {
        std::fs::metadata(&exited).ok().filter(|m| m.len() > 0)
    })?;
    let (dir, quic) = (f.coord.dir.clone(), f.coord.quic.clone());
    f.coord = Coordinator::start(&dir, Some(&quic))?;
    println!(
        "coordinator back {} ms after the job's exit was written",
        (now_ns() - started_ns) / 1_000_000 - 1500
    );
    f.wait_ready("once-a")?;
    std::thread::sleep(Duration::from_secs(3));
    let lines = token_lines(&out);
    ensure!(
        lines.len() == 1,
        "a restart: never job ran {} times: {lines:?} (job now: {:?})",
        lines.len(),
        f.job(&id).ok()
    );
    let j = wait_terminal(&f, &id, LONG)?;
    ensure!(
        j["state"] == "completed",
        "the job ended {}: {j}",
        j["state"]
    );
    Ok(())
}

/// Defect 3: a stop that arrives while a `restart: always` job waits out its restart backoff
/// is undone: the delayed start is sent anyway. The job exits 1 at once, so it restarts after
/// 100, 200, 400, 800, 1600 ms; it is stopped right after its 6th start, inside the 3.2 s
/// backoff before the 7th. Checks: no copy starts after the stop over 5 s (longer than that
/// backoff), and the job ends `stopped`.
///
/// On the code before the fix: `a copy started after the stop: token 7, N ms after it`.
#[test]
fn a_stop_during_a_restart_backoff_is_final() -> Result<()> {
    let mut f = Fleet::new("backoff", "pool")?;
    f.start_agents(&["backoff-a"], &[])?;
    let out = f.tmp.path().join("backoff.out");
    let script = format!("{}; exit 1", stamp(&out));
    let id = submit(
        &f,
        "backoff",
        &script,
        json!({"restart": "always", "max_restarts": 100}),
    )?;
    // The 6th start has exited and the restart after it is decided (a newer token).
    let sixth = wait_for(LONG, "the 6th start and the restart after it", || {
        let ls = token_lines(&out);
        let j = f.job(&id).ok()?;
        (ls.len() == 6 && j["fencing_token"].as_u64()? > ls[5].0).then(|| ls[5])
    })
    .with_context(|| format!("starts: {:?}", token_lines(&out)))?;
    let (s, v) = f.api().send("DELETE", &format!("/v1/jobs/{id}"), None)?;
    ensure!(s == 200, "stop: {s} {v}");
    let stopped_ns = now_ns();
    println!(
        "stopped {} ms after the 6th start",
        (stopped_ns - sixth.1) / 1_000_000
    );
    holds_for(Duration::from_secs(5), || {
        let late: Vec<_> = token_lines(&out)
            .into_iter()
            .filter(|(_, ns)| *ns > stopped_ns)
            .collect();
        check(late.is_empty(), || {
            format!(
                "a copy started after the stop: token {}, {} ms after it",
                late[0].0,
                (late[0].1 - stopped_ns) / 1_000_000
            )
        })
    })?;
    let j = wait_terminal(&f, &id, LONG)?;
    ensure!(j["state"] == "stopped", "the job ended {}: {j}", j["state"]);
    Ok(())
}

/// A fleet whose coordinator runs with `fence_kill_timeout_ms = ms` (restarted so before any
/// agent joins).
fn fleet_with_kill_timeout(prefix: &str, ms: u64) -> Result<Fleet> {
    let mut f = Fleet::new(prefix, "pool")?;
    let (dir, quic) = (f.coord.dir.clone(), f.coord.quic.clone());
    f.coord.proc.kill9();
    f.coord = Coordinator::start_with(&dir, Some(&quic), kill_timeout(ms))?;
    Ok(f)
}

/// Removes the node running a writer job that ignores SIGTERM, of a two-node pool cluster
/// with a 2000 ms fence kill timeout (`DELETE /v1/nodes/{id}`, the node live and holding its
/// lease); with `then_submit`, another job is submitted to the cluster right after (any event
/// that makes the planner look at the cluster again). Returns the fleet, the writer and its
/// old and new copy's tokens once the new copy writes and the old one has surely ended (lease
/// + kill timeout).
fn remove_the_writers_node(prefix: &str, then_submit: bool) -> Result<(Fleet, Writer, u64, u64)> {
    let mut f = fleet_with_kill_timeout(prefix, 2000)?;
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    f.start_agents(&[&a, &b], &[])?;
    let w = submit_stubborn_writer(&f, &format!("{prefix}-writer"))?;
    let first = f.wait_running(&w)?;
    let (old_node, old_token) = f.placement(&first)?;
    let old_id = first["node"].as_str().context("node")?.to_string();
    f.coord.wait_restart_grace()?;

    let (s, v) = f
        .api()
        .send("DELETE", &format!("/v1/nodes/{old_id}"), None)?;
    ensure!(s == 200, "removing {old_node}: {s} {v}");
    if then_submit {
        submit(&f, &format!("{prefix}-other"), "exec sleep 600", json!({}))?;
    }
    let (moved, took) = f.wait_new_copy(&w, old_token, FAILOVER_BOUND)?;
    println!("remove: new copy writing {} ms after", took.as_millis());
    let (new_node, new_token) = f.placement(&moved)?;
    ensure!(new_node != old_node, "still on {new_node}");
    std::thread::sleep(Duration::from_millis(3500).saturating_sub(took));
    Ok((f, w, old_token, new_token))
}

/// Defect 4: removing a live node (`DELETE /v1/nodes/{id}`) lets its jobs be placed again at
/// once — here on the next planner pass over the cluster, which another submit causes — while
/// the removed node still holds its lease and its copy runs until it fences itself. Checks:
/// the writer's copies on the removed node and on the other one never wrote at overlapping
/// times.
///
/// On the code before the fix: `two copies ran at once: token 1 on ["rm-b"] wrote until ..,
/// token 2 on ["rm-a"] from .. (1978 ms of overlap)`.
#[test]
fn removing_a_live_node_never_runs_its_job_twice() -> Result<()> {
    let (_f, w, old, new) = remove_the_writers_node("rm", true)?;
    copies(&w.out)?;
    handover(&w.out, old, new, "remove")?;
    Ok(())
}

/// Found with defect 4: after a live node is removed and nothing else happens in its cluster,
/// its job is never placed again — it stays `running` on a node that no longer exists, though
/// the removed node fenced the copy when its lease ran out: an accepted job lost. Checks: a
/// new copy runs (within the failover bound) and never overlaps the old one.
///
/// On the code before the fix: `timed out after 10s waiting for a new copy of the job running
/// and writing` (the job still `running` with token 1 on the removed node).
#[test]
fn removing_a_live_node_places_its_job_again() -> Result<()> {
    let (_f, w, old, new) = remove_the_writers_node("rmq", false)?;
    handover(&w.out, old, new, "remove, nothing else")?;
    Ok(())
}

/// Defect 5: after `fence_kill_timeout_ms` is lowered (3000 -> 50) and only the coordinator
/// restarted, agents that stayed up still give their copies 3000 ms between SIGTERM and
/// SIGKILL when they fence, while the coordinator waits only lease + a grace computed from
/// 50 ms before it fails a job over. A writer that ignores SIGTERM runs on a node whose agent
/// is then killed with `kill -9` (its shim fences the copy at lease end, with 3000 ms).
/// Checks: the old and the new copy never wrote at overlapping times.
///
/// On the code before the fix: `two copies ran at once: token 1 on ["fk-b"] wrote until ..,
/// token 2 on ["fk-a"] from .. (2811 ms of overlap)`.
#[test]
fn a_lower_fence_kill_timeout_after_a_coordinator_restart_never_runs_a_job_twice() -> Result<()> {
    let mut f = fleet_with_kill_timeout("fk", 3000)?;
    f.start_agents(&["fk-a", "fk-b"], &[])?;
    let w = submit_stubborn_writer(&f, "fk-writer")?;
    f.wait_running(&w)?;
    let (dir, quic) = (f.coord.dir.clone(), f.coord.quic.clone());

    // Only the coordinator restarts, with the kill timeout lowered to 50 ms.
    f.coord.proc.kill9();
    f.coord = Coordinator::start_with(&dir, Some(&quic), kill_timeout(50))?;
    f.wait_ready("fk-a")?;
    f.wait_ready("fk-b")?;
    f.coord.wait_restart_grace()?;
    let now = f.wait_running(&w)?;
    let (old_node, old_token) = f.placement(&now)?;

    let t0 = Instant::now();
    f.agent(&old_node)?.kill9();
    let (moved, took) = f.wait_new_copy(&w, old_token, Duration::from_secs(15))?;
    println!("kill -9 of {old_node}'s agent: new copy writing after {took:?}");
    let (new_node, new_token) = f.placement(&moved)?;
    ensure!(new_node != old_node, "still on {new_node}");
    // The old copy ends at the latest one lease plus 3000 ms after the kill.
    let end = Duration::from_millis(1000 + 3000 + 1000);
    std::thread::sleep(end.saturating_sub(t0.elapsed()));
    copies(&w.out)?;
    handover(&w.out, old_token, new_token, "kill timeout lowered")?;
    Ok(())
}

/// Defect 6: the name of a submitted job is checked for uniqueness under one lock and the job
/// inserted under another, so concurrent submits of one name can both pass the check. In each
/// round 16 threads submit a job of one new name at once (warm connections, a barrier); rounds
/// repeat for up to 500 rounds or 25 s, because the window is a few microseconds (on this
/// machine about one round in 50 lost the race). Checks: exactly one submit per name is
/// accepted (201), the others are refused with 409 `already_exists`, and the job list holds one
/// job per name.
///
/// On the code before the fix: `name dup-18: 2 submits accepted, statuses [409, .., 201, 409,
/// 201]`.
#[test]
fn concurrent_submits_of_one_name_accept_one() -> Result<()> {
    let f = Fleet::new("dup", "pool")?;
    const THREADS: usize = 16;
    let t0 = Instant::now();
    let mut names = Vec::new();
    while names.len() < 500 && t0.elapsed() < Duration::from_secs(25) {
        let name = format!("dup-{}", names.len());
        names.push(name.clone());
        let spec = json!({"name": name, "cluster": f.cluster,
            "command": ["/bin/sh", "-c", "exec sleep 600"],
            "resources": tiny(), "restart": "always"});
        let barrier = std::sync::Barrier::new(THREADS);
        let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (spec, barrier) = (&spec, &barrier);
                    // A client of its own with a warm connection: the submits then reach the
                    // coordinator together.
                    let api = Api::new(f.api().base.clone(), f.api().token.clone());
                    s.spawn(move || {
                        let warm = api.get("/healthz");
                        barrier.wait();
                        warm?;
                        api.send("POST", "/v1/jobs", Some(spec))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("submit thread"))
                .collect::<Result<Vec<_>>>()
        })?;
        let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        let accepted = statuses.iter().filter(|s| **s == 201).count();
        ensure!(
            accepted == 1,
            "name {name}: {accepted} submits accepted, statuses {statuses:?}"
        );
        for (s, v) in answers.iter().filter(|(s, _)| *s != 201) {
            ensure!(
                *s == 409 && v["error"]["code"] == "already_exists",
                "name {name}: a refused submit answered {s} {v}"
            );
        }
    }
    println!("{} rounds in {:?}", names.len(), t0.elapsed());
    let mut listed: BTreeMap<String, usize> = BTreeMap::new();
    for j in jobs(&f)? {
        *listed
            .entry(j["name"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    for name in &names {
        let n = listed.get(name).copied().unwrap_or(0);
        ensure!(n == 1, "name {name}: {n} jobs listed");
    }
    Ok(())
}

/// A coordinator crash in the middle of a move: a drain stops the old copy first and starts
/// the new one only once the old copy has ended. That wait was kept in memory only, so a
/// coordinator killed right after the drain forgot it; restarted, it saw the new node register
/// without the job and placed it again at once, while the old copy (which ignores SIGTERM and
/// lives until its 5 s stop timeout) still ran. Now the wait is part of the stored placement.
/// Checks: the old and the new copy never wrote at overlapping times.
///
/// On the code before the fix: `two copies ran at once: token 1 on ["dk-b"] wrote until ..,
/// token 3 on ["dk-a"] from .. (256 ms of overlap)`.
#[test]
fn a_coordinator_killed_during_a_drain_never_runs_the_job_twice() -> Result<()> {
    let mut f = Fleet::new("dk", "pool")?;
    f.start_agents(&["dk-a", "dk-b"], &[])?;
    let w = submit_stubborn_writer(&f, "dk-writer")?;
    let first = f.wait_running(&w)?;
    let (old_node, old_token) = f.placement(&first)?;
    let old_id = first["node"].as_str().context("node")?.to_string();
    f.coord.wait_restart_grace()?;

    let t0 = Instant::now();
    f.api()
        .post(&format!("/v1/nodes/{old_id}/drain"), &json!({}))?;
    let (dir, quic) = (f.coord.dir.clone(), f.coord.quic.clone());
    f.coord.proc.kill9();
    f.coord = Coordinator::start(&dir, Some(&quic))?;
    let (moved, took) = f.wait_new_copy(&w, old_token, Duration::from_secs(20))?;
    println!("drain, coordinator kill -9 and restart: new copy writing after {took:?}");
    let (new_node, new_token) = f.placement(&moved)?;
    ensure!(new_node != old_node, "still on {new_node}");
    // The old copy ends at the latest at its stop's kill timeout (5 s) after the drain.
    std::thread::sleep(Duration::from_millis(6500).saturating_sub(t0.elapsed()));
    copies(&w.out)?;
    handover(
        &w.out,
        old_token,
        new_token,
        "drain across a coordinator crash",
    )?;
    Ok(())
}
