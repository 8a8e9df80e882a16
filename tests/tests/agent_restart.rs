//! End to end, with the real binaries: an agent restart stops no job. The shims outlive the
//! agent; the new agent re-adopts them through their control sockets before it registers, and
//! the node continues with its jobs and their tokens when it was not declared down. A writer
//! job appends a line every 10 ms: the file shows every copy, every token and every gap.

use anyhow::{ensure, Context, Result};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tandem_tests::fleet::*;
use tandem_tests::wait_for;

/// A fleet with two agents and a writer job running on one of them; returns the fleet, the
/// writer, the name of the agent that runs it, and its token.
fn fleet(name: &str) -> Result<(Fleet, Writer, String, u64, Reaper)> {
    let mut f = Fleet::new(name, "pool")?;
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    f.start_agents(&[&a, &b], &[])?;
    let w = f.submit_writer(&format!("{name}-writer"), 0, json!({}))?;
    let reaper = Reaper(w.id.clone());
    let j = f.wait_running(&w)?;
    let (node, token) = f.placement(&j)?;
    Ok((f, w, node, token, reaper))
}

/// The longest time between two lines of the writer, and after which line (unix ns).
fn longest_gap(lines: &[Line]) -> (Duration, u128) {
    lines
        .windows(2)
        .map(|w| (Duration::from_nanos((w[1].ns - w[0].ns) as u64), w[0].ns))
        .max()
        .unwrap_or_default()
}

/// `node_state` events saying a node is down.
fn downs(f: &Fleet) -> Result<Vec<String>> {
    Ok(f.events("node_state")?
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.contains(" is down"))
        .map(String::from)
        .collect())
}

/// Waits until node `name` is connected again and the writer has written 30 more lines.
fn back_and_writing(f: &Fleet, name: &str, w: &Writer) -> Result<()> {
    wait_for(LONG, &format!("{name} connected again"), || {
        f.api().node(name).filter(|v| v["connected"] == true)
    })
    .with_context(|| f.agent_log(name))?;
    let seen = read_lines(&w.out).len();
    wait_for(LONG, "the writer going on", || {
        (read_lines(&w.out).len() > seen + 30).then_some(())
    })
}

/// The tokens the writer's file shows, checked for overlapping copies.
fn tokens(w: &Writer) -> Result<BTreeSet<u64>> {
    Ok(copies(&w.out)?.iter().map(|c| c.token).collect())
}

/// `kill -9` of the agent that runs the job, started again 100 ms later. Checks: the job keeps
/// running with the same token (its copy never stopped: the new agent re-adopted its shim),
/// the longest gap between two lines is under 200 ms, nobody was declared down, the coordinator
/// says the node continued with its job, and there were never two copies.
///
/// Before re-adoption: `the job restarted: tokens {1, 2}`: the new agent waited until the old
/// copy was fenced, registered without it, and it was placed again.
#[test]
fn a_killed_agent_restarted_at_once_keeps_its_job_running_with_the_same_token() -> Result<()> {
    let (mut f, w, node, token, _reaper) = fleet("k9")?;
    f.agent(&node)?.kill9();
    std::thread::sleep(Duration::from_millis(100));
    f.start_agent(&node, None, &[])?;
    back_and_writing(&f, &node, &w)?;
    // Longer than a lease: the copy runs on under the new agent's leases, not the old one's.
    std::thread::sleep(Duration::from_secs(2));
    let lines = read_lines(&w.out);
    let tokens = tokens(&w)?;
    ensure!(
        tokens.len() == 1 && tokens.contains(&token),
        "the job restarted: tokens {tokens:?} (was {token}); job now {}\n{}",
        f.job(&w.id)?,
        f.agent_log(&node)
    );
    let (gap, at) = longest_gap(&lines);
    ensure!(
        gap < Duration::from_millis(200),
        "the writer stopped for {gap:?} (after the line at {at} ns)"
    );
    let downs = downs(&f)?;
    ensure!(downs.is_empty(), "nodes declared down: {downs:?}");
    let log = f.agent(&node)?.log_text();
    ensure!(
        log.contains("re-adopted 1 running jobs after an agent restart"),
        "the new agent did not say it re-adopted the job:\n{log}"
    );
    let continued = f
        .events("node_state")?
        .iter()
        .filter_map(|e| e["message"].as_str().map(String::from))
        .find(|m| m.contains("re-adopted 1 running jobs"));
    let Some(continued) = continued else {
        anyhow::bail!("no event says the node kept its job");
    };
    // The event names the copy: job, token, pid and start.
    ensure!(
        continued.contains(&format!("{} token {token} pid ", w.id))
            && continued.contains(" since "),
        "the event does not name the copy: {continued}"
    );
    println!("kill -9 of the agent, back 100 ms later: one token ({token}), longest gap {gap:?}");
    Ok(())
}

/// What the agent does with its own shims it does with re-adopted ones: after `kill -9` and a
/// restart, a job that ends by itself is reported with its exit code, a user stop stops its
/// copy (recorded as stopped, and no new copy starts), and its log tail comes back.
#[test]
fn a_re_adopted_job_is_stopped_reported_and_logged_like_any_other() -> Result<()> {
    use tandem_tests::jobs::{submit, wait_terminal};
    let mut f = Fleet::new("drive", "pool")?;
    f.start_agents(&["drive-a"], &[])?;
    let w = f.submit_writer("drive-writer", 0, json!({}))?;
    let _reaper = Reaper(w.id.clone());
    let ends = submit(
        &f,
        "drive-ends",
        "echo hello-from-the-job; sleep 4; exit 3",
        json!({"restart": "never"}),
    )?;
    let _reaper2 = Reaper(ends.clone());
    let token = f.wait_running(&w)?["fencing_token"]
        .as_u64()
        .context("token")?;
    wait_for(LONG, "the ending job running", || {
        (f.job(&ends).ok()?["state"] == "running").then_some(())
    })?;
    f.agent("drive-a")?.kill9();
    f.start_agent("drive-a", None, &[])?;
    back_and_writing(&f, "drive-a", &w)?;
    let logs = f.api().get(&format!("/v1/jobs/{ends}/logs?tail=5"))?;
    ensure!(
        logs["stdout"].to_string().contains("hello-from-the-job"),
        "no log tail of the re-adopted job: {logs}"
    );
    let ended = wait_terminal(&f, &ends, LONG)?;
    ensure!(
        ended["state"] == "failed" && ended.to_string().contains("3"),
        "the re-adopted job's own end (exit 3) was not reported: {ended}"
    );
    ensure!(
        f.job_status("drive-a", &ends)
            .is_some_and(|s| s["code"] == 3 && s["reason"] == "exited"),
        "status: {:?}",
        f.job_status("drive-a", &ends)
    );
    let (s, v) = f
        .api()
        .send("DELETE", &format!("/v1/jobs/{}", w.id), None)?;
    ensure!((200..300).contains(&s), "stop: {s} {v}");
    let why = f.wait_copy_ended("drive-a", &w.id, token)?;
    ensure!(
        why == "stopped",
        "the re-adopted copy ended as {why}, not stopped"
    );
    let stopped = wait_terminal(&f, &w.id, LONG)?;
    ensure!(stopped["state"] == "stopped", "job now {stopped}");
    let n = read_lines(&w.out).len();
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        read_lines(&w.out).len() == n,
        "the stopped copy still writes"
    );
    ensure!(tokens(&w)?.len() == 1, "another copy started");
    Ok(())
}

/// An agent that comes back after its node was declared down (the coordinator placed the job
/// elsewhere meanwhile) must not keep the old copy: its shim fenced at its deadline, before
/// the node was declared down, and is not revived by the new agent. Checks: two copies in the
/// file that never overlap, the second on the other node, and the old copy recorded as fenced.
#[test]
fn an_agent_back_after_its_node_was_declared_down_does_not_keep_the_old_copy() -> Result<()> {
    let (mut f, w, node, token, _reaper) = fleet("late")?;
    f.agent(&node)?.kill9();
    let (moved, took) = f.wait_new_copy(&w, token, FAILOVER_BOUND + LONG)?;
    let (to, new_token) = f.placement(&moved)?;
    ensure!(to != node, "placed again on the node that is gone");
    let why = f.wait_copy_ended(&node, &w.id, token)?;
    ensure!(why == "fenced", "the old copy ended as {why}, not fenced");
    f.start_agent(&node, None, &[])?;
    wait_for(LONG, &format!("{node} connected again"), || {
        f.api().node(&node).filter(|v| v["connected"] == true)
    })?;
    // A while with the old node back: the job stays where it is, once.
    std::thread::sleep(Duration::from_secs(2));
    let cs = copies(&w.out)?;
    let now = f.job(&w.id)?;
    ensure!(
        cs.len() == 2 && now["fencing_token"] == new_token && cs[1].nodes == [to.clone()],
        "copies {:?}, job now {now}",
        cs.iter().map(|c| (c.token, &c.nodes)).collect::<Vec<_>>()
    );
    let log = f.agent(&node)?.log_text();
    ensure!(
        !log.contains("re-adopted a running job"),
        "the late agent re-adopted the fenced copy:\n{log}"
    );
    println!("agent back after its node was declared down: moved to {to} after {took:?}; the old copy was fenced");
    Ok(())
}

/// SIGTERM to agent `name`; waits until it has exited and returns when its node's hold ends
/// (Unix ms), from its log (`hand-over granted ... until_unix_ms=...`), and when it was told.
fn planned_stop(f: &mut Fleet, name: &str) -> Result<(u64, u128)> {
    let told = now_ns();
    f.agent(name)?.signal(libc::SIGTERM);
    wait_for(Duration::from_secs(10), "the agent to exit", || {
        f.agent(name).ok()?.exited()
    })?;
    let log = f.agent(name)?.log_text();
    let until = log
        .lines()
        .find(|l| l.contains("hand-over granted"))
        .and_then(|l| l.split("until_unix_ms=").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("no hand-over granted:\n{log}"))?;
    Ok((until, told))
}

/// SIGTERM to the agent that runs the job (as `systemctl restart` sends it), started again
/// 3 s later: three leases after its last ack. Checks: the job keeps running with the same
/// token (the hand-over lease covered the gap, and the new agent re-adopted it), nobody was
/// declared down, there were never two copies.
///
/// Without the hand-over (`--agent-handover-ms 0`): `the job restarted: tokens {1, 2}`: the
/// copy was fenced one lease after the stop, and placed again.
#[test]
fn a_planned_agent_restart_three_seconds_long_keeps_its_job_with_the_same_token() -> Result<()> {
    let (mut f, w, node, token, _reaper) = fleet("term")?;
    let t0 = Instant::now();
    planned_stop(&mut f, &node)?;
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t0.elapsed()));
    f.start_agent(&node, None, &[])?;
    back_and_writing(&f, &node, &w)?;
    let tokens = tokens(&w)?;
    ensure!(
        tokens.len() == 1 && tokens.contains(&token),
        "the job restarted: tokens {tokens:?} (was {token}); job now {}\n{}",
        f.job(&w.id)?,
        f.agent_log(&node)
    );
    let downs = downs(&f)?;
    ensure!(downs.is_empty(), "nodes declared down: {downs:?}");
    ensure!(
        !f.events("handover")?.is_empty(),
        "no event records the hand-over"
    );
    let (gap, _) = longest_gap(&read_lines(&w.out));
    println!("SIGTERM of the agent, back 3 s later: one token ({token}), longest gap {gap:?}");
    Ok(())
}

/// SIGTERM to the agent that runs the job, and it never comes back. Checks: its copy ran on
/// past one lease (the hand-over lease held it) and was fenced by the node's hold end T; the
/// job was placed again only after T, exactly once, and the two copies never overlapped.
#[test]
fn a_planned_agent_stop_never_restarted_fences_the_job_by_the_hold_and_moves_it_once_after(
) -> Result<()> {
    let mut f = Fleet::new("gone", "pool")?;
    f.start_agents(&["gone-a", "gone-b"], &["--agent-handover-ms", "4000"])?;
    let w = f.submit_writer("gone-writer", 0, json!({}))?;
    let _reaper = Reaper(w.id.clone());
    let j = f.wait_running(&w)?;
    let (node, token) = f.placement(&j)?;
    let (until_ms, told) = planned_stop(&mut f, &node)?;
    let (moved, _) = f.wait_new_copy(&w, token, Duration::from_secs(4) + LONG)?;
    let (to, new_token) = f.placement(&moved)?;
    std::thread::sleep(Duration::from_secs(1));
    let cs = copies(&w.out)?;
    ensure!(
        cs.len() == 2 && cs[0].token == token && cs[1].token == new_token && to != node,
        "copies {:?}",
        cs.iter().map(|c| (c.token, &c.nodes)).collect::<Vec<_>>()
    );
    let until_ns = u128::from(until_ms) * 1_000_000;
    ensure!(
        cs[0].last > told + 2_000_000_000,
        "the copy was fenced {} ms after the stop: the hand-over lease did not hold it",
        (cs[0].last - told) / 1_000_000
    );
    ensure!(
        cs[0].last <= until_ns,
        "the old copy wrote {} ms after the hold's end",
        (cs[0].last - until_ns) / 1_000_000
    );
    ensure!(
        cs[1].first >= until_ns,
        "the job was placed again {} ms before the hold's end",
        (until_ns - cs[1].first) / 1_000_000
    );
    println!(
        "SIGTERM of the agent, never back: the old copy's last line {} ms before the hold's end, the new copy's first {} ms after it",
        (until_ns - cs[0].last) / 1_000_000,
        (cs[1].first - until_ns) / 1_000_000
    );
    Ok(())
}

/// A shim the new agent cannot re-adopt (here its control socket is gone, as for a shim of an
/// older version) is handled as before re-adoption: the agent waits until it has fenced, then
/// registers without it, and the job is placed again with a new token. Never two copies.
#[test]
fn a_shim_that_cannot_be_re_adopted_is_waited_out_and_its_job_placed_again() -> Result<()> {
    let (mut f, w, node, token, _reaper) = fleet("old")?;
    let sock = f
        .state_dir(&node)
        .join("jobs")
        .join(&w.id)
        .join("control.sock");
    ensure!(sock.exists(), "no control socket at {}", sock.display());
    std::fs::remove_file(&sock)?;
    f.agent(&node)?.kill9();
    f.start_agent(&node, None, &[])?;
    let (moved, _) = f.wait_new_copy(&w, token, LONG)?;
    std::thread::sleep(Duration::from_secs(1));
    let cs = copies(&w.out)?;
    ensure!(
        cs.len() == 2 && moved["fencing_token"].as_u64() == Some(cs[1].token),
        "copies {:?}",
        cs.iter().map(|c| c.token).collect::<Vec<_>>()
    );
    let log = f.agent(&node)?.log_text();
    ensure!(
        log.contains("not re-adopting a job copy of the previous agent run"),
        "the agent did not say why it left the copy:\n{log}"
    );
    Ok(())
}
