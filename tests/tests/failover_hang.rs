//! End to end: the agent of a job's node hangs (`kill -STOP`). It cannot stop its job itself;
//! the job's supervisor (shim) fences it when the lease runs out, the coordinator moves the job,
//! and when the agent wakes up (`kill -CONT`) it re-registers, learns the assignment is gone,
//! and the old copy stays dead.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::{Duration, Instant};
use tandem_tests::fleet::*;

#[test]
fn a_hung_agent_is_fenced_and_its_job_moves_without_overlap() -> Result<()> {
    let mut f = Fleet::new("hang", "pool")?;
    f.start_agents(&["hang-a", "hang-b"], &[])?;
    let w = f.submit_writer("hang-writer", 0, json!({}))?;
    let first = f.wait_running(&w)?;
    let (old_node, old_token) = f.placement(&first)?;
    let other = if old_node == "hang-a" {
        "hang-b"
    } else {
        "hang-a"
    };
    f.coord.wait_restart_grace()?;

    let frozen_at = Instant::now();
    f.agent(&old_node)?.signal(libc::SIGSTOP);
    let (moved, took) = f.wait_new_copy(&w, old_token, FAILOVER_BOUND)?;
    let (new_node, new_token) = f.placement(&moved)?;
    println!(
        "hang: new copy writing {} ms after SIGSTOP",
        took.as_millis()
    );
    check(new_node == other, || format!("moved to {new_node}"))?;
    handover(&w.out, old_token, new_token, "hang")?;
    // The frozen agent did not stop it: its shim did, at the lease deadline.
    let why = f.wait_copy_ended(&old_node, &w.id, old_token)?;
    check(why == "fenced", || format!("old copy ended: {why}"))?;
    let hist = moved["history"].as_array().context("history")?;
    check(
        hist.iter()
            .any(|h| h["end_reason"].as_str().is_some_and(|r| r.contains("down"))),
        || format!("{moved}"),
    )?;

    // Wake the agent up: it must find its lease gone, register again, and never bring the old
    // copy back.
    f.agent(&old_node)?.signal(libc::SIGCONT);
    let thawed_ns = now_ns();
    f.wait_ready(&old_node)?;
    println!(
        "hang: {old_node} ready again {} ms after SIGCONT ({} ms frozen)",
        (now_ns() - thawed_ns) / 1_000_000,
        frozen_at.elapsed().as_millis()
    );
    holds_for(Duration::from_millis(1500), || {
        let cs = copies(&w.out)?;
        let toks: Vec<u64> = cs.iter().map(|c| c.token).collect();
        check(toks == vec![old_token, new_token], || {
            format!("copies: {cs:?}")
        })?;
        let j = f.job(&w.id)?;
        check(
            j["state"] == "running" && j["fencing_token"].as_u64() == Some(new_token),
            || format!("the job changed after the old node returned: {j}"),
        )
    })?;
    let back = f.events("node_state")?;
    check(
        back.iter().any(|e| {
            e["message"].as_str().is_some_and(|m| {
                m.contains(&format!(
                    "node {old_node} is ready (registered again after being declared down"
                ))
            })
        }),
        || format!("{back:?}"),
    )?;
    let cs = copies(&w.out)?;
    let old = &cs[0];
    check(old.last < thawed_ns, || {
        format!("the old copy wrote after SIGCONT: {cs:?}")
    })?;
    // The new copy is still writing.
    check(cs[1].last + 1_000_000_000 > now_ns(), || {
        format!("the new copy stopped writing: {cs:?}")
    })?;
    Ok(())
}
