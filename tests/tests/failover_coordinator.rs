//! End to end: the coordinator is killed (`kill -9`) in the middle of a failover and started
//! again on the same QUIC port. From what it persisted it finishes the move: the job ends up
//! running exactly once, and no two copies ever wrote at once.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::{Duration, Instant};
use tandem_tests::fleet::*;
use tandem_tests::{wait_for, Coordinator};

/// At which point of the failover the coordinator dies.
#[derive(Clone, Copy, Debug)]
enum When {
    /// While the dead node is only suspect: the restarted coordinator detects it itself.
    Suspect,
    /// As soon as the dead node is declared down (before or while its job is placed again).
    NodeDown,
    /// As soon as the job has a new placement (persisted; the start may not have been sent).
    NewPlacement,
}

fn killed_during_failover(prefix: &str, when: When) -> Result<()> {
    let mut f = Fleet::new(prefix, "pool")?;
    let names = [format!("{prefix}-a"), format!("{prefix}-b")];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    f.start_agents(&names, &[])?;
    let w = f.submit_writer(&format!("{prefix}-writer"), 0, json!({}))?;
    let first = f.wait_running(&w)?;
    let (old_node, old_token) = f.placement(&first)?;
    let old_id = first["node"].as_str().context("node")?.to_string();
    f.coord.wait_restart_grace()?;

    let t0 = Instant::now();
    f.agent(&old_node)?.kill9();
    // Watch closely for the moment, then kill the coordinator.
    let api = f.api().clone();
    let seen = wait_for(
        Duration::from_secs(15),
        "the failover to begin",
        || match when {
            When::Suspect => {
                let n = api.node(&old_id)?;
                (n["state"] == "suspect").then(|| format!("node {}", n["state"]))
            }
            When::NodeDown => {
                let n = api.node(&old_id)?;
                (n["state"] == "down").then(|| format!("node {}", n["state"]))
            }
            When::NewPlacement => {
                let j = api.get(&format!("/v1/jobs/{}", w.id)).ok()?;
                (j["fencing_token"].as_u64().is_some_and(|t| t > old_token)
                    || j["state"] == "migrating")
                    .then(|| format!("job {} with token {}", j["state"], j["fencing_token"]))
            }
        },
    )?;
    f.coord.proc.kill9();
    println!(
        "{prefix}: coordinator killed {} ms after the node's agent, having shown {seen}",
        t0.elapsed().as_millis()
    );
    let dir = f.coord.dir.clone();
    let quic = f.coord.quic.clone();
    f.coord = Coordinator::start(&dir, Some(&quic))?;

    let (moved, took) = f.wait_new_copy(&w, old_token, Duration::from_secs(20))?;
    println!(
        "{prefix}: new copy writing {} ms after the coordinator restarted",
        took.as_millis()
    );
    let (new_node, new_token) = f.placement(&moved)?;
    check(new_node != old_node, || format!("still on {new_node}"))?;
    // Settle: the job keeps running once, with the token the coordinator shows.
    wait_for(LONG, "the job to settle", || match copies(&w.out) {
        Err(e) => Some(Err(e)),
        Ok(cs) => cs
            .last()
            .is_some_and(|c| c.token == new_token && c.lines >= 30)
            .then_some(Ok(())),
    })??;
    let settled = now_ns();
    holds_for(Duration::from_millis(1500), || {
        let j = f.job(&w.id)?;
        check(
            j["state"] == "running" && j["fencing_token"].as_u64() == Some(new_token),
            || format!("the job changed after settling: {j}"),
        )?;
        let writing: Vec<u64> = read_lines(&w.out)
            .iter()
            .filter(|l| l.ns > settled)
            .map(|l| l.token)
            .collect();
        check(writing.iter().all(|t| *t == new_token), || {
            format!("tokens writing after settling: {writing:?} (current {new_token})")
        })
    })?;
    let cs = copies(&w.out)?;
    println!("{prefix}: copies {cs:?}");
    check(cs.first().map(|c| c.token) == Some(old_token), || {
        format!("{cs:?}")
    })?;
    handover(&w.out, cs[cs.len() - 2].token, new_token, prefix)?;
    Ok(())
}

#[test]
fn a_coordinator_killed_while_the_node_is_suspect_fails_over_after_restarting() -> Result<()> {
    killed_during_failover("cks", When::Suspect)
}

#[test]
fn a_coordinator_killed_when_the_node_goes_down_finishes_the_failover() -> Result<()> {
    killed_during_failover("ckd", When::NodeDown)
}

#[test]
fn a_coordinator_killed_after_the_new_placement_finishes_the_failover() -> Result<()> {
    killed_during_failover("ckp", When::NewPlacement)
}
