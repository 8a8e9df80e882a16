//! Benchmark: what `tandem-agent run` costs its node, at the default intervals (200 ms beats,
//! hardware sampled every 5 s), without and with a GPU fixture.
//!
//! Starts a real coordinator and one agent, lets it settle, then reads the agent's CPU time
//! (`/proc/PID/stat`, user + system) and resident memory (`VmRSS`, `VmHWM`) over a window.
//!
//! With JOBS (default 0), also an agent running that many jobs (`sleep`, each under its shim
//! and, where the host allows, in its cgroup): the agent's CPU and memory, and the shims'.
//!
//! `cargo build --release --workspace --bins && target/release/bench_agent_cost [SECONDS] [JOBS]`

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

/// Proportional set size (shared pages split among their users), from `smaps_rollup`.
fn pss_kib(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let line = s.lines().find(|l| l.starts_with("Pss:")).context("Pss")?;
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

/// An agent running `n` jobs: its cost, and the total resident memory of its shims.
fn measure_jobs(n: usize, secs: u64) -> Result<serde_json::Value> {
    use tandem_tests::fleet::Fleet;
    let mut f = Fleet::new("cost", "pool")?;
    f.start_agents(&["cost-jobs"], &[])?;
    for i in 0..n {
        f.api().post(
            "/v1/jobs",
            &serde_json::json!({"name": format!("cost-{i}"), "cluster": f.cluster,
                "command": ["/bin/sleep", "3600"],
                "resources": {"cpu_millis": 10, "memory_bytes": 1 << 20, "gpus": 0},
                "restart": "never"}),
        )?;
    }
    wait_for(Duration::from_secs(60), "every job running", || {
        let js = f
            .api()
            .get(&format!("/v1/jobs?cluster={}", f.cluster))
            .ok()?;
        let js = js["jobs"].as_array()?.clone();
        (js.len() == n && js.iter().all(|j| j["state"] == "running")).then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(5));
    let pid = f.agent("cost-jobs")?.pid();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
    std::thread::sleep(Duration::from_secs(secs));
    let (elapsed, c1) = (t0.elapsed().as_secs_f64(), cpu_ticks(pid)?);
    // The shims are the agent's children (`tandem-agent shim`).
    let mut shims = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(pid) {
            shims.push((
                status_kib(p, "VmRSS:").unwrap_or(0),
                pss_kib(p).unwrap_or(0),
            ));
        }
    }
    let shim_rss: u64 = shims.iter().map(|s| s.0).sum();
    let shim_pss: u64 = shims.iter().map(|s| s.1).sum();
    Ok(serde_json::json!({
        "jobs": n,
        "window_s": elapsed,
        "agent_cpu_percent_of_one_core": (c1 - c0) as f64 / hz / elapsed * 100.0,
        "agent_rss_mib": status_kib(pid, "VmRSS:")? as f64 / 1024.0,
        "shims": shims.len(),
        "shims_rss_mib_total": shim_rss as f64 / 1024.0,
        "shim_rss_mib_each": shim_rss as f64 / 1024.0 / shims.len().max(1) as f64,
        // RSS counts the pages all shims share (the binary) once per shim; PSS splits them.
        "shims_pss_mib_total": shim_pss as f64 / 1024.0,
    }))
}

fn main() -> Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(60);
    let jobs: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0);
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
    let mut out = serde_json::json!({"without_gpus": plain, "with_8_gpu_fixture": with_gpus});
    if jobs > 0 {
        out["with_jobs"] = measure_jobs(jobs, secs)?;
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
