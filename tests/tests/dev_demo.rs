//! End to end: the README's first section as a new user runs it. `tandem-coordinator dev`
//! puts its agents in cluster `dev`, the README's failover demo (pasted after the banner's
//! `export` line) moves the job off the agent it kills, and dev mode's agents die with it even
//! when it is killed with `kill -9`.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use tandem_tests::dev::*;
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);

/// The shell lines between `<!-- failover-demo -->` and `<!-- /failover-demo -->` in the
/// README, without the code fence.
fn readme_demo() -> Result<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let (_, rest) = readme
        .split_once("<!-- failover-demo -->")
        .context("the README has a failover-demo block")?;
    let (block, _) = rest
        .split_once("<!-- /failover-demo -->")
        .context("the failover-demo block ends")?;
    Ok(block
        .lines()
        .filter(|l| !l.trim_start().starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Whether `pid` is gone: no such process, or a zombie nobody reaped yet.
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn healthy_past_grace(api: &Api) -> Result<()> {
    wait_for(LONG, "the restart grace to end", || {
        let h = api.get("/healthz").ok()?;
        (h["restart_grace_remaining_ms"].as_u64() == Some(0)).then_some(())
    })
}

#[test]
fn the_readme_failover_demo_moves_the_job_off_the_killed_agent() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = start_dev(&bin("tandem-coordinator"), tmp.path(), 3, None)?;
    let pids = dev.agent_pids(3)?;
    // Every agent is in the `dev` cluster.
    let cluster = dev.api.get("/v1/clusters/dev")?;
    let members: Vec<Value> = dev.api.nodes()?;
    for n in &members {
        ensure!(n["cluster"] == cluster["id"], "not in cluster dev: {n}");
    }
    healthy_past_grace(&dev.api)?;
    let banner = dev.stdout();
    let export = banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("export "))
        .with_context(|| format!("an export line in the banner:\n{banner}"))?;
    for l in tandem_coordinator_demo_lines(&banner) {
        ensure!(
            readme_demo()?.contains(&l),
            "the banner's demo line is in the README: {l}"
        );
    }
    let script = format!("set -eu\n{export}\n{}\n", readme_demo()?);
    println!("running:\n{script}");
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env_remove("TANDEM_ENDPOINT")
        .env_remove("TANDEM_TOKEN")
        .stdin(Stdio::null())
        .output()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    println!("stdout:\n{stdout}\nstderr:\n{stderr}");
    ensure!(out.status.success(), "the demo failed: {}", out.status);
    let job = dev.api.get("/v1/jobs/demo")?;
    let history = job["history"].as_array().context("history")?;
    ensure!(!history.is_empty(), "the job moved: {job}");
    let first = &history[0];
    ensure!(
        first["end_reason"] == "node down",
        "the first placement ended with its node: {job}"
    );
    ensure!(
        job["state"] == "running" && job["node"] != first["node"],
        "it runs on another node: {job}"
    );
    let killed: Vec<i32> = pids.iter().copied().filter(|p| gone(*p)).collect();
    ensure!(killed.len() == 1, "one agent was killed: {killed:?}");
    let down = dev.api.node(first["node"].as_str().context("node")?);
    ensure!(
        down.as_ref().is_some_and(|n| n["state"] == "down"),
        "its node is down: {down:?}"
    );
    // What the demo's last line printed shows the move too.
    let new_name = dev
        .api
        .node(job["node"].as_str().context("node")?)
        .context("the new node")?["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        stdout.contains(&new_name) && stdout.contains("node down"),
        "`jobs show` prints the new node {new_name} and the old placement's end:\n{stdout}"
    );
    let alive_pids: Vec<i32> = pids.iter().copied().filter(|p| !gone(*p)).collect();
    dev.stop(&alive_pids)
}

/// The demo lines the banner prints (after `Failover demo:`).
fn tandem_coordinator_demo_lines(banner: &str) -> Vec<String> {
    banner
        .lines()
        .skip_while(|l| !l.starts_with("Failover demo:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn dev_modes_agents_and_their_jobs_die_when_it_is_killed_with_sigkill() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = start_dev(&bin("tandem-coordinator"), tmp.path(), 2, None)?;
    let pids = dev.agent_pids(2)?;
    // The job runs as the agents' default user (`nobody` when the test runs as root), which
    // cannot write to the test's dir: it says its pid on stdout.
    let j = dev.api.post(
        "/v1/jobs",
        &serde_json::json!({
            "name": "sleeper",
            "cluster": "dev",
            "command": ["/bin/sh", "-c", "echo $$; exec sleep 600"],
            "resources": {"cpu_millis": 100, "memory_bytes": 67108864, "gpus": 0},
        }),
    )?;
    let id = j["job"]["id"].as_str().context("job id")?.to_string();
    let job_pid: i32 = wait_for(LONG, "the job to say its pid", || {
        let l = dev.api.get(&format!("/v1/jobs/{id}/logs?tail=5")).ok()?;
        l["stdout"]
            .as_array()?
            .first()?
            .as_str()?
            .trim()
            .parse()
            .ok()
    })?;
    // Only dev mode itself: not its process group.
    let mut dev = dev;
    dev.proc.kill9();
    wait_for(
        Duration::from_secs(10),
        "the agents to die with dev mode",
        || pids.iter().all(|p| gone(*p)).then_some(()),
    )
    .with_context(|| {
        format!(
            "still running: {:?}",
            pids.iter().filter(|p| !gone(**p)).collect::<Vec<_>>()
        )
    })?;
    // The job's copy is fenced by its shim once the dead agent's lease is over.
    wait_for(
        Duration::from_secs(10),
        "the job's process to be fenced",
        || gone(job_pid).then_some(()),
    )?;
    dev.group.armed = false;
    Ok(())
}
