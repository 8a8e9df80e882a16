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
        .any(|m| m.contains("re-adopted 1 running jobs"));
    ensure!(continued, "no event says the node kept its job");
    println!("kill -9 of the agent, back 100 ms later: one token ({token}), longest gap {gap:?}");
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
    let _ = Instant::now();
    Ok(())
}
