//! End to end: real coordinator and agent binaries on loopback.

use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);

fn all_ready(api: &Api, names: &[&str]) -> Option<()> {
    names
        .iter()
        .all(|n| api.state(n).as_deref() == Some("ready"))
        .then_some(())
}

/// The figure in a reason like "no heartbeat for 1372 ms: ...".
fn silent_ms(reason: &str) -> Option<u64> {
    reason
        .split("no heartbeat for ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn agents_join_crash_is_detected_and_identity_survives_restarts() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let token = coord.api.token(3)?;
    let names = ["e2e-a", "e2e-b", "e2e-c"];
    let mut agents = Vec::new();
    for n in names {
        agents.push(start_agent(
            &coord.quic,
            &tmp.path().join(n),
            Some(&token),
            n,
            &[],
        )?);
    }
    wait_for(LONG, "three agents ready", || all_ready(&coord.api, &names))?;

    // The node object carries the host report.
    let a = coord.api.node("e2e-a").context("node a")?;
    assert!(
        a["hardware"]["cpu"]["logical_cores"].as_u64().unwrap_or(0) >= 1,
        "{a}"
    );
    assert!(
        a["hardware"]["memory"]["total_bytes"].as_u64().unwrap_or(0) > 0,
        "{a}"
    );
    assert!(a["hardware"]["os"].is_object(), "{a}");
    let id_a = a["id"].as_str().context("id")?.to_string();
    assert!(a["last_heartbeat_age_ms"].as_u64().context("age")? < 1000);

    // kill -9 agent a: it must go down, not before its lease and grace ran out, and alone.
    let events_before = coord
        .api
        .events()?
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0);
    let killed_at = Instant::now();
    agents[0].kill9();
    wait_for(LONG, "node a down", || {
        (coord.api.state("e2e-a").as_deref() == Some("down")).then_some(())
    })?;
    let observed = killed_at.elapsed();
    let a = coord.api.node("e2e-a").context("node a")?;
    let reason = a["state_reason"].as_str().unwrap_or_default().to_string();
    let silent = silent_ms(&reason).context("silence in reason")?;
    println!("kill -9 -> down: observed by the test {observed:?}; coordinator measured {silent} ms of silence");
    // Defaults: lease 1000 ms + fence grace 350 ms. Never before that.
    assert!(
        silent >= 1350,
        "declared down after only {silent} ms: {reason}"
    );
    for n in &names[1..] {
        assert_eq!(
            coord.api.state(n).as_deref(),
            Some("ready"),
            "{n} was disturbed"
        );
    }
    let others_disturbed: Vec<_> = coord
        .api
        .get(&format!("/v1/events?after={events_before}&limit=1000"))?["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["kind"] == "node_state" && e["node"].as_str() != Some(id_a.as_str()))
        .collect();
    assert!(
        others_disturbed.is_empty(),
        "other nodes changed state: {others_disturbed:?}"
    );

    // Restart a with its stored certificate (no token): the same id comes back.
    agents[0] = start_agent(&coord.quic, &tmp.path().join("e2e-a"), None, "e2e-a", &[])?;
    wait_for(LONG, "node a ready again", || {
        (coord.api.state("e2e-a").as_deref() == Some("ready")).then_some(())
    })?;
    assert_eq!(
        coord.api.node("e2e-a").context("a")?["id"].as_str(),
        Some(id_a.as_str())
    );
    assert_eq!(coord.api.nodes()?.len(), 3, "no duplicate node was made");

    // kill -9 the coordinator and restart it on the same QUIC port: every node is kept and
    // none is declared down by the restart.
    let quic = coord.quic.clone();
    let dir = coord.dir.clone();
    drop(coord);
    let coord = Coordinator::start(&dir, Some(&quic))?;
    assert_eq!(coord.api.nodes()?.len(), 3);
    let restarted = Instant::now();
    let mut checks = 0;
    // Past the restart grace (5 s by default) and then some.
    while restarted.elapsed() < Duration::from_secs(6) || checks < 10 {
        for n in coord.api.nodes()? {
            assert_ne!(n["state"], "down", "restart declared a node down: {n}");
        }
        checks += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for(LONG, "all ready after the coordinator restart", || {
        all_ready(&coord.api, &names)
    })?;
    Ok(())
}

#[test]
fn a_bad_join_token_is_refused_with_a_reason() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let good = coord.api.token(1)?;
    // Same id and CA pin, wrong secret.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[2] = "A".repeat(parts[2].len());
    let bad = parts.join(".");
    let mut agent = start_agent(&coord.quic, &tmp.path().join("bad"), Some(&bad), "bad", &[])?;
    let status = wait_for(LONG, "the agent to give up", || agent.exited())?;
    assert!(!status.success());
    let log = agent.log_text();
    assert!(
        log.contains("join token"),
        "the refusal names the token: {log}"
    );
    assert!(coord.api.nodes()?.is_empty());

    // A used-up token is refused too, with its own reason.
    let mut first = start_agent(
        &coord.quic,
        &tmp.path().join("first"),
        Some(&good),
        "first",
        &[],
    )?;
    wait_for(LONG, "first ready", || {
        (coord.api.state("first").as_deref() == Some("ready")).then_some(())
    })?;
    let mut second = start_agent(
        &coord.quic,
        &tmp.path().join("second"),
        Some(&good),
        "second",
        &[],
    )?;
    wait_for(LONG, "the second agent to give up", || second.exited())?;
    assert!(
        second.log_text().contains("used up"),
        "{}",
        second.log_text()
    );
    // Guessing is slow: after 10 failed joins from one address, it is refused before its
    // token is even looked at.
    let mut limited = false;
    for i in 0..12 {
        let mut a = start_agent(
            &coord.quic,
            &tmp.path().join(format!("guess-{i}")),
            Some(&bad),
            "guess",
            &[],
        )?;
        wait_for(LONG, "the guessing agent to give up", || a.exited())?;
        if a.log_text().contains("too many failed joins") {
            limited = true;
            break;
        }
    }
    assert!(limited, "failed joins are rate-limited per address");

    first.kill9();
    Ok(())
}
