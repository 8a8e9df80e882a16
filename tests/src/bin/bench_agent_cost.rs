//! Benchmark: what `tandem-agent run` costs its node, at the default intervals (200 ms beats,
//! hardware sampled every 5 s), without and with a GPU fixture.
//!
//! Starts a real coordinator and one agent, lets it settle, then reads the agent's CPU time
//! (`/proc/PID/stat`, user + system) and resident memory (`VmRSS`, `VmHWM`) over a window.
//!
//! `cargo build --release --workspace --bins && target/release/bench_agent_cost [SECONDS]`

use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use tandem_tests::*;

fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn status_kib(pid: i32, key: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with(key)).context("key")?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

fn measure(
    coord: &Coordinator,
    dir: &std::path::Path,
    name: &str,
    token: &str,
    extra: &[&str],
    secs: u64,
) -> Result<serde_json::Value> {
    let agent = start_agent(&coord.quic, &dir.join(name), Some(token), name, extra)?;
    wait_for(Duration::from_secs(30), "ready", || {
        (coord.api.state(name).as_deref() == Some("ready")).then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(5));
    let pid = agent.pid();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
    std::thread::sleep(Duration::from_secs(secs));
    let (elapsed, c1) = (t0.elapsed().as_secs_f64(), cpu_ticks(pid)?);
    Ok(serde_json::json!({
        "agent": name,
        "window_s": elapsed,
        "cpu_percent_of_one_core": (c1 - c0) as f64 / hz / elapsed * 100.0,
        "rss_mib": status_kib(pid, "VmRSS:")? as f64 / 1024.0,
        "peak_rss_mib": status_kib(pid, "VmHWM:")? as f64 / 1024.0,
    }))
}

fn main() -> Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(60);
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let token = coord.api.token(2)?;
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gpus-8x-h100.json");
    let plain = measure(&coord, tmp.path(), "cost-plain", &token, &[], secs)?;
    let with_gpus = measure(
        &coord,
        tmp.path(),
        "cost-gpus",
        &token,
        &["--gpu-fixture", fixture.to_str().context("utf-8")?],
        secs,
    )?;
    println!(
        "{}",
        serde_json::to_string_pretty(
            &serde_json::json!({"without_gpus": plain, "with_8_gpu_fixture": with_gpus})
        )?
    );
    Ok(())
}
