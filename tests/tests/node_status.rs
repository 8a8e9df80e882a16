//! End to end: `tandem-agent status` with the real binaries, while the agent is connected,
//! while a UDP relay cuts it off (the lease is seen counting down, then gone), and after the
//! coordinator was killed and started again. Also: the socket is the agent user's alone.

use anyhow::{ensure, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tandem_tests::relay::Relay;
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn status_answers_connected_cut_off_and_after_a_coordinator_restart() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cdir = tmp.path().join("coord");
    let mut coord = Coordinator::start(&cdir, None)?;
    let relay = Relay::start(&coord.quic)?;
    let token = coord.api.token(1)?;
    let dir = tmp.path().join("a1");
    let _agent = start_agent(&relay.addr(), &dir, Some(&token), "a1", &[])?;
    wait_for(LONG, "a1 ready", || {
        coord.api.node("a1").filter(|n| n["state"] == "ready")
    })?;

    // Connected: link, round trip, lease from a beat, fence, containment.
    let v = wait_for(LONG, "status to show a held lease", || {
        agent_status(&dir)
            .ok()
            .filter(|v| v["link"]["state"] == "connected" && v["lease"]["held"] == true)
    })?;
    ensure!(v["node_name"] == "a1", "{v:#}");
    ensure!(v["link"]["rtt_us"].is_u64(), "{v:#}");
    ensure!(
        v["lease"]["from_beat"].as_u64().is_some_and(|b| b > 0),
        "{v:#}"
    );
    ensure!(
        v["lease"]["remaining_ms"]
            .as_u64()
            .is_some_and(|r| r <= 1000),
        "{v:#}"
    );
    ensure!(
        v["fence"]["lease_ms"] == 1000 && v["fence"]["kill_timeout_ms"] == 250,
        "{v:#}"
    );
    // The real mode: a cgroup per job where this host allows it (root and a cgroup2
    // hierarchy), else the process group.
    let mode = v["containment"].as_str().unwrap_or("?").to_string();
    ensure!(
        ["cgroup-v2", "cgroup-hybrid", "process-group"].contains(&mode.as_str()),
        "{v:#}"
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root && Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        ensure!(mode == "cgroup-hybrid", "{v:#}");
    }
    let first_session = v["link"]["session"].as_u64().context("session")?;
    let table = agent_cmd(
        &["status", "--state-dir", dir.to_str().context("utf-8")?],
        LONG,
    )?;
    ensure!(
        table.stdout.contains("connected") && table.stdout.contains(&mode),
        "{}",
        table.stdout
    );
    let sock = dir.join("agent.sock");
    ensure!(
        std::fs::metadata(&sock)?.permissions().mode() & 0o777 == 0o600
            && [0o700, 0o711].contains(&(std::fs::metadata(&dir)?.permissions().mode() & 0o777)),
        // 0711 where jobs run as another user than root (they enter their working dirs).
        "socket 0600 in a 0700 (or 0711) dir"
    );

    // Cut off: the lease counts down (two readings, the second with less left), then is gone,
    // the link is down, and the reason is among the last errors.
    relay.cut(true);
    let mut last: Option<(u64, u64)> = None;
    wait_for(LONG, "the lease to be seen counting down", || {
        let v = agent_status(&dir).ok()?;
        if v["lease"]["held"] != true {
            last = None;
            return None;
        }
        let r = v["lease"]["remaining_ms"].as_u64()?;
        let beat = v["lease"]["from_beat"].as_u64()?;
        let down = last.is_some_and(|(l, b)| r < l && b == beat);
        last = Some((r, beat));
        down.then_some(())
    })?;
    let v = wait_for(LONG, "status to show the link down and no lease", || {
        agent_status(&dir).ok().filter(|v| {
            v["link"]["state"] == "disconnected"
                && v["lease"]["held"] == false
                && v["last_errors"].as_array().is_some_and(|e| !e.is_empty())
        })
    })?;
    ensure!(v["lease"]["remaining_ms"] == 0, "{v:#}");
    relay.cut(false);
    wait_for(LONG, "the link back", || {
        agent_status(&dir)
            .ok()
            .filter(|v| v["link"]["state"] == "connected" && v["lease"]["held"] == true)
    })?;

    // The coordinator is killed: status still answers; after its restart, a new session.
    let quic = coord.quic.clone();
    coord.proc.kill9();
    let v = agent_status(&dir)?;
    ensure!(
        v["node_name"] == "a1",
        "status answers with the coordinator gone: {v:#}"
    );
    coord = Coordinator::start(&cdir, Some(&quic))?;
    let v = wait_for(LONG, "a new session after the restart", || {
        agent_status(&dir).ok().filter(|v| {
            v["link"]["state"] == "connected"
                && v["lease"]["held"] == true
                && v["link"]["session"]
                    .as_u64()
                    .is_some_and(|s| s != first_session)
        })
    })?;
    ensure!(v["fence"]["lease_ms"] == 1000, "{v:#}");
    drop(coord);
    Ok(())
}
