//! End to end, with the real binaries: the smaller gaps of issue 13 — a second agent on the
//! same state dir, log replies past the frame limit, and a shim that stopped answering.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::{Duration, Instant};
use tandem_tests::fleet::*;
use tandem_tests::relay::Relay;
use tandem_tests::{start_agent, wait_for};

/// A second agent started on the state dir of a running one is refused at once, with an
/// error that says so and a non-zero exit; the first one stays ready and its job keeps its
/// single copy.
///
/// On the code before the fix: `timed out after 10s waiting for the second agent to exit`:
/// it ran beside the first, on the same identity and job dirs.
#[test]
fn a_second_agent_on_the_same_state_dir_is_refused() -> Result<()> {
    let mut f = Fleet::new("twice", "pool")?;
    f.start_agents(&["twice-a"], &[])?;
    let w = f.submit_writer("twice-writer", 0, json!({}))?;
    let j = f.wait_running(&w)?;
    let (_, token) = f.placement(&j)?;
    let mut second = start_agent(&f.coord.quic, &f.state_dir("twice-a"), None, "twice-a", &[])?;
    let status = wait_for(Duration::from_secs(10), "the second agent to exit", || {
        second.exited()
    })
    .with_context(|| second.log_text())?;
    let log = second.log_text();
    println!("second agent: {status}: {}", log.trim());
    check(!status.success(), || format!("it exited {status}"))?;
    check(log.contains("already runs with state dir"), || log.clone())?;
    // The first is unharmed: still ready, the same copy writing on.
    holds_for(Duration::from_millis(1500), || {
        check(f.api().state("twice-a").as_deref() == Some("ready"), || {
            "the first agent is no longer ready".into()
        })?;
        check(
            f.job(&w.id)?["fencing_token"].as_u64() == Some(token),
            || "the job moved".into(),
        )
    })?;
    let cs = copies(&w.out)?;
    check(cs.len() == 1, || format!("{cs:?}"))?;
    Ok(())
}

/// A job prints one 5 MB line (over the link's 4 MiB frame limit). Its log tail still comes
/// back, cut to its newest bytes with a first line that says so, and the link is untouched:
/// the node registered once, stays ready, and a second tail answers too.
///
/// On the code before the fix: `tail 0: 409 {"error":{"code":"failed_precondition",
/// "message":"logs of job bigline: the node did not answer within 3 s"}}`: the reply was over
/// the frame limit and never arrived.
#[test]
fn a_5_mb_log_line_never_breaks_the_link() -> Result<()> {
    let mut f = Fleet::new("bigline", "pool")?;
    f.start_agents(&["bigline-a"], &[])?;
    let j = f.api().post(
        "/v1/jobs",
        &json!({"name": "bigline", "cluster": f.cluster,
                "command": ["/bin/sh", "-c",
                    "echo before; head -c 5000000 /dev/zero | tr '\\0' x; echo; echo after; exec sleep 600"],
                "resources": {"cpu_millis": 10, "memory_bytes": 16 << 20, "gpus": 0},
                "restart": "never"}),
    )?;
    let id = j["job"]["id"].as_str().context("job id")?.to_string();
    let log = f
        .state_dir("bigline-a")
        .join("jobs")
        .join(&id)
        .join("stdout.log");
    wait_for(LONG, "the job's 5 MB line in its log", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.ends_with("after\n"))
    })?;
    for round in 0..2 {
        let (code, v) = f
            .api()
            .send("GET", &format!("/v1/jobs/{id}/logs?tail=10"), None)?;
        check(code == 200, || format!("tail {round}: {code} {v}"))?;
        let out: Vec<&str> = v["stdout"]
            .as_array()
            .context("stdout")?
            .iter()
            .filter_map(|l| l.as_str())
            .collect();
        let sizes: Vec<usize> = out.iter().map(|l| l.len()).collect();
        println!("tail {round}: {} lines of {sizes:?} bytes", out.len());
        check(out.first().is_some_and(|l| l.contains("cut")), || {
            format!("no cut marker: {:?}", out.first())
        })?;
        check(out.last() == Some(&"after"), || format!("{:?}", out.last()))?;
        // The last bytes that fit: the end of the long line, most of the budget.
        check(
            out.len() == 3 && out[1].len() > 100_000 && out[1].bytes().all(|b| b == b'x'),
            || format!("{sizes:?}"),
        )?;
        check(sizes.iter().sum::<usize>() < 4 << 20, || {
            format!("{sizes:?}")
        })?;
    }
    let text = f
        .agents
        .get("bigline-a")
        .map(|p| p.log_text())
        .unwrap_or_default();
    let registrations = text.matches("registered with the coordinator").count();
    check(registrations == 1, || {
        format!("the agent registered {registrations} times:\n{text}")
    })?;
    check(
        f.api().state("bigline-a").as_deref() == Some("ready"),
        || "the node is not ready".into(),
    )?;
    Ok(())
}

/// The agent is the second line of defence: a job whose shim is SIGSTOPped (so it cannot
/// fence) on a node cut off from the coordinator is killed by the agent itself once the lease
/// and the fence kill timeout are over; the job moves to the other node with no overlap.
///
/// On the code before the fix: `timed out after 30s waiting for every process of the old copy
/// gone`: with its shim stopped, the job ran on beside the new copy.
#[test]
fn a_stopped_shim_is_fenced_by_the_agent() -> Result<()> {
    let mut f = Fleet::new("stopshim", "pool")?;
    let relay = Relay::start(&f.coord.quic)?;
    f.start_agent("stopshim-a", Some(&relay.addr()), &[])?;
    f.wait_ready("stopshim-a")?;
    let w = f.submit_writer("stopshim-writer", 0, json!({}))?;
    let _reaper = Reaper(w.id.clone());
    let j = f.wait_running(&w)?;
    let (node, token) = f.placement(&j)?;
    check(node == "stopshim-a", || format!("placed on {node}"))?;
    f.start_agents(&["stopshim-b"], &[])?;
    f.coord.wait_restart_grace()?;
    let shim = f
        .job_status(&node, &w.id)
        .and_then(|s| s["shim_pid"].as_i64())
        .context("the shim's pid")? as i32;
    let _shim = KillOnDrop(shim);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(shim, libc::SIGSTOP) };
    relay.cut(true);
    let t0 = Instant::now();
    let gone = wait_for(LONG, "every process of the old copy gone", || {
        copy_pids(&w.id, Some(token))
            .is_empty()
            .then(|| t0.elapsed())
    })
    .with_context(|| f.agent_log(&node))?;
    println!(
        "stopped shim: the old copy's last process was gone {} ms after the cut",
        gone.as_millis()
    );
    check(gone <= Duration::from_millis(2250), || {
        format!("the old copy lived {} ms after the cut", gone.as_millis())
    })?;
    let (moved, _) = f.wait_new_copy(&w, token, LONG)?;
    let new = moved["fencing_token"].as_u64().context("token")?;
    std::thread::sleep(Duration::from_millis(300));
    handover(&w.out, token, new, "stopped shim")?;
    let reason = f.wait_copy_ended(&node, &w.id, token)?;
    println!("stopped shim: the old copy is recorded as {reason}");
    check(
        f.agent_log(&node)
            .contains("the agent kills the job itself"),
        || f.agent_log(&node),
    )?;
    Ok(())
}

/// SIGKILLs a pid when dropped (a stopped shim must not outlive a failed test).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}
