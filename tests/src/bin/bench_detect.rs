//! Benchmark: time from `kill -9` of an agent to the coordinator declaring its node `down`.
//!
//! Starts the real coordinator and 3 agents on loopback, then repeatedly kills one agent,
//! polls the admin API every 5 ms until the node is `down`, records both the time the
//! benchmark saw and the silence the coordinator measured (from the node's last beat), restarts
//! the agent and waits until it is ready again. Prints median, p90 and max.
//!
//! `cargo build --release --workspace --bins && target/release/bench_detect [RUNS]`

use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use tandem_tests::*;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let token = coord.api.token(3)?;
    let names = ["bench-a", "bench-b", "bench-c"];
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
    let ready = |n: &str| (coord.api.state(n).as_deref() == Some("ready")).then_some(());
    for n in names {
        wait_for(Duration::from_secs(30), "ready", || ready(n))?;
    }
    // Let the restart grace pass: nobody is declared down inside it.
    std::thread::sleep(Duration::from_secs(6));
    let (mut seen, mut measured) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let k = i % names.len();
        let name = names[k];
        // Let a few beats pass so the kill lands at a random phase of the beat interval.
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 37) % 200));
        let t0 = Instant::now();
        agents[k].kill9();
        let reason: String = wait_for(Duration::from_secs(30), "down", || {
            let n = coord.api.node(name)?;
            (n["state"] == "down")
                .then(|| n["state_reason"].as_str().unwrap_or_default().to_string())
        })?;
        seen.push(t0.elapsed().as_secs_f64() * 1000.0);
        let silent: f64 = reason
            .split("no heartbeat for ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .context("reason")?
            .parse()?;
        measured.push(silent);
        agents[k] = start_agent(&coord.quic, &tmp.path().join(name), None, name, &[])?;
        wait_for(Duration::from_secs(30), "ready again", || ready(name))?;
        eprintln!(
            "run {i}: {name} down after {:.0} ms (coordinator: {silent} ms of silence)",
            seen[i]
        );
    }
    let s = serde_json::json!({
        "runs": runs,
        "kill_to_down_seen_ms": {"median": pct(&mut seen, 0.5), "p90": pct(&mut seen, 0.9), "max": pct(&mut seen, 1.0)},
        "silence_at_down_ms": {"median": pct(&mut measured, 0.5), "p90": pct(&mut measured, 0.9), "max": pct(&mut measured, 1.0)},
        "defaults": {"heartbeat_ms": 200, "lease_ms": 1000, "fence_grace_ms": 350},
    });
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}
