//! End to end: `tandem-swarm` runs 200 simulated agents against the real coordinator.
//!
//! Correctness only, never speed: every agent joins and registers, none fails, no simulated
//! agent sees its lease run out, acks come back, and the admin API lists all 200 nodes, ready
//! while the swarm beats and none of them `down`, then `left` after their `Goodbye`.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use tandem_tests::*;

const AGENTS: usize = 200;

/// How many swarm nodes are in each state.
fn states(nodes: &[Value], run: &str) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for n in nodes {
        if n["name"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("swarm-{run}-")))
        {
            *m.entry(n["state"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
    }
    m
}

#[test]
fn a_swarm_of_200_agents_joins_beats_and_leaves() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // A lease far longer than the beat: the test checks correctness, and a slow CI machine
    // running 200 agents and the coordinator side by side must not turn into false expiries.
    let coord = Coordinator::start_with(&tmp.path().join("coord"), None, |t| {
        t.lines()
            .map(|l| match l.split('=').next().unwrap_or_default().trim() {
                "heartbeat_ms" => "heartbeat_ms = 500".to_string(),
                "lease_ms" => "lease_ms = 5000".to_string(),
                "restart_grace_ms" => "restart_grace_ms = 6000".to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let token = coord.api.token(AGENTS as u32)?;
    let run = "e2e";
    let (out, err) = (tmp.path().join("swarm.json"), tmp.path().join("swarm.log"));
    let mut swarm = Proc {
        child: Command::new(bin("tandem-swarm"))
            .args(["--coordinator", &coord.quic, "--token", &token])
            .args(["--agents", &AGENTS.to_string(), "--duration-s", "10"])
            .args(["--ramp-per-s", "200", "--run-id", run, "--progress-s", "2"])
            .args(["--bind-addr", "127.0.0.1", "--endpoints", "2"])
            .env_remove("TANDEM_SWARM_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .context("starting tandem-swarm")?,
        log: err.clone(),
    };

    // While it beats: all 200 nodes ready.
    wait_for(Duration::from_secs(90), "200 swarm nodes ready", || {
        if swarm.exited().is_some() {
            return Some(());
        }
        let nodes = coord.api.all_nodes().ok()?;
        (states(&nodes, run).get("ready") == Some(&AGENTS)).then_some(())
    })?;
    ensure!(
        swarm.exited().is_none(),
        "tandem-swarm exited before every node was ready:\n{}",
        swarm.log_text()
    );
    let status = wait_for(Duration::from_secs(120), "tandem-swarm to finish", || {
        swarm.exited()
    })?;
    let log = swarm.log_text();
    ensure!(status.success(), "tandem-swarm failed: {status}\n{log}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)
        .with_context(|| format!("the summary does not parse\n{log}"))?;
    let n = |k: &str| summary[k].as_u64().unwrap_or(u64::MAX);
    let want = AGENTS as u64;
    ensure!(n("requested") == want, "{summary:#}");
    ensure!(
        n("joined") == want,
        "not every agent joined: {summary:#}\n{log}"
    );
    ensure!(
        n("registered") == want,
        "not every agent registered: {summary:#}\n{log}"
    );
    ensure!(
        n("failed_joins_total") == 0,
        "failed joins: {summary:#}\n{log}"
    );
    ensure!(
        summary["failed_joins"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "{summary:#}"
    );
    ensure!(
        n("lease_expiries") == 0,
        "leases ran out: {summary:#}\n{log}"
    );
    ensure!(n("declared_down_seen") == 0, "{summary:#}\n{log}");
    ensure!(n("acks_received") > 0, "no acks: {summary:#}\n{log}");
    ensure!(n("acks_received") <= n("heartbeats_sent"), "{summary:#}");
    ensure!(n("goodbyes_sent") == want, "{summary:#}\n{log}");
    ensure!(summary["settled"] == true, "{summary:#}");
    ensure!(summary["ack_rtt_ms"]["p50"].is_number(), "{summary:#}");

    // Afterwards: all 200 nodes are there and none is down; each said goodbye, so each left.
    let nodes = coord.api.all_nodes()?;
    let by_state = states(&nodes, run);
    ensure!(
        by_state.values().sum::<usize>() == AGENTS,
        "{} swarm nodes listed: {by_state:?}",
        by_state.values().sum::<usize>()
    );
    ensure!(!by_state.contains_key("down"), "nodes down: {by_state:?}");
    ensure!(
        by_state.get("left") == Some(&AGENTS),
        "not every node left after its goodbye: {by_state:?}"
    );
    Ok(())
}
