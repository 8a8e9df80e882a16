//! End to end: a job runs on a node, the node dies, the job comes back on another node — and
//! at no moment do two copies run. The job writes "<node> <token> <unix ns>" every 10 ms; the
//! old node's last line must be older than the new node's first line.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::Duration;
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);

/// (node, token, ns) lines of the job's output file.
fn lines(path: &std::path::Path) -> Vec<(String, u64, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.to_string(),
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// A coordinator, a pool cluster `cluster` of two agents (`<cluster>-a`, `-b`), and a job that
/// writes "<node> <token> <unix ns>" every 10 ms, running.
struct Writer {
    coord: Coordinator,
    agents: std::collections::HashMap<String, Proc>,
    out: std::path::PathBuf,
    id: String,
    first: serde_json::Value,
}

fn writer(dir: &std::path::Path, cluster: &str, job: &str) -> Result<Writer> {
    let coord = Coordinator::start(&dir.join("coord"), None)?;
    coord
        .api
        .post("/v1/clusters", &json!({"name": cluster, "mode": "pool"}))?;
    let token = coord
        .api
        .post("/v1/join-tokens", &json!({"uses": 2, "cluster": cluster}))?["token"]
        .as_str()
        .context("token")?
        .to_string();
    let names = [format!("{cluster}-a"), format!("{cluster}-b")];
    let mut agents = std::collections::HashMap::new();
    for n in &names {
        agents.insert(
            n.clone(),
            start_agent(&coord.quic, &dir.join(n), Some(&token), n, &[])?,
        );
    }
    for n in &names {
        wait_for(LONG, "ready", || {
            (coord.api.state(n).as_deref() == Some("ready")).then_some(())
        })?;
    }
    let out = dir.join("out.txt");
    let script = format!(
        "while true; do echo \"$TANDEM_NODE_NAME $TANDEM_FENCING_TOKEN $(date +%s%N)\" >> {}; sleep 0.01; done",
        out.display()
    );
    let created = coord.api.post(
        "/v1/jobs",
        &json!({"name": job, "cluster": cluster, "command": ["/bin/sh", "-c", script],
                "resources": {"cpu_millis": 100, "memory_bytes": 67108864, "gpus": 0}, "restart": "always"}),
    )?;
    let id = created["job"]["id"].as_str().context("id")?.to_string();
    let first = wait_for(LONG, "the job running and writing", || {
        let j = coord.api.get(&format!("/v1/jobs/{id}")).ok()?;
        (j["state"] == "running" && lines(&out).len() > 5).then_some(j)
    })?;
    Ok(Writer {
        coord,
        agents,
        out,
        id,
        first,
    })
}

#[test]
fn a_job_moves_off_a_killed_node_and_never_runs_twice() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let Writer {
        coord,
        mut agents,
        out,
        id,
        first,
    } = writer(tmp.path(), "fo", "writer")?;
    let node_id = first["node"].as_str().context("node")?.to_string();
    let old_name = coord.api.node(&node_id).context("node")?["name"]
        .as_str()
        .context("name")?
        .to_string();
    let old_token = first["fencing_token"].as_u64().context("token")?;
    let l = lines(&out);
    assert!(
        l.iter().all(|(n, t, _)| *n == old_name && *t == old_token),
        "{l:?}"
    );

    // The cluster lists the job, and what it holds is no longer free.
    let c = coord.api.get("/v1/clusters/fo")?;
    assert_eq!(c["jobs"][0]["name"], "writer", "{c}");
    let cap = &c["capacity"];
    assert!(
        cap["cores_free"].as_f64().context("free")?
            < cap["cores_total"].as_f64().context("total")?,
        "{cap}"
    );

    // Job filters are checked, not silently empty.
    let (st, v) = coord
        .api
        .request("GET", "/v1/jobs?state=bogus", Some(&coord.api.token), None)?;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_argument")),
        "{v}"
    );
    let listed = coord.api.get("/v1/jobs?cluster=fo&state=running")?;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");

    // The logs come back through the API.
    let logs = coord.api.get(&format!("/v1/jobs/{id}/logs?tail=5"))?;
    assert!(logs["stdout"].is_array(), "{logs}");

    coord.wait_restart_grace()?;
    // Kill the node's agent: its supervisor fences the job when the lease runs out, then the
    // coordinator places it on the other node with a higher token.
    agents.get_mut(&old_name).context("agent")?.kill9();
    let moved = wait_for(LONG, "the job running on the other node", || {
        let j = coord.api.get(&format!("/v1/jobs/{id}")).ok()?;
        let new_lines = lines(&out).iter().any(|(n, _, _)| *n != old_name);
        (j["state"] == "running" && j["node"].as_str() != Some(node_id.as_str()) && new_lines)
            .then_some(j)
    })?;
    let new_token = moved["fencing_token"].as_u64().context("token")?;
    assert!(
        new_token > old_token,
        "tokens only grow: {old_token} -> {new_token}"
    );
    // Let the new copy write a while, then check the file.
    std::thread::sleep(Duration::from_millis(300));
    let l = lines(&out);
    let last_old = l
        .iter()
        .filter(|(n, _, _)| *n == old_name)
        .map(|x| x.2)
        .max()
        .context("old lines")?;
    let first_new = l
        .iter()
        .filter(|(n, _, _)| *n != old_name)
        .map(|x| x.2)
        .min()
        .context("new lines")?;
    let gap_ms = (first_new as i128 - last_old as i128) / 1_000_000;
    println!("failover gap (last old line -> first new line): {gap_ms} ms");
    assert!(
        last_old < first_new,
        "two copies ran at once: old wrote at {last_old}, new at {first_new}"
    );
    assert!(l
        .iter()
        .filter(|(n, _, _)| *n != old_name)
        .all(|(_, t, _)| *t == new_token));
    // History records why the old placement ended.
    let hist = moved["history"].as_array().context("history")?;
    assert!(
        hist.iter()
            .any(|h| h["end_reason"].as_str().is_some_and(|r| r.contains("down"))),
        "{moved}"
    );

    // Stopping the job ends it for good.
    let (s, v) = coord.api.request(
        "DELETE",
        &format!("/v1/jobs/{id}"),
        Some(&coord.api.token),
        None,
    )?;
    assert_eq!(s, 200, "{v}");
    wait_for(LONG, "the job stopped", || {
        let j = coord.api.get(&format!("/v1/jobs/{id}")).ok()?;
        (j["state"] == "stopped").then_some(())
    })?;
    Ok(())
}

/// The agent of a job's node is killed and started again at once (a crash and a systemd
/// restart): the new agent re-adopts the copy (#14), and no other copy runs anywhere.
#[test]
fn a_quick_agent_restart_never_runs_a_job_twice() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let Writer {
        coord,
        mut agents,
        out,
        id,
        first,
    } = writer(tmp.path(), "rs", "writer2")?;
    let old_token = first["fencing_token"].as_u64().context("token")?;
    let node_id = first["node"].as_str().context("node")?.to_string();
    let name = coord.api.node(&node_id).context("node")?["name"]
        .as_str()
        .context("name")?
        .to_string();
    coord.wait_restart_grace()?;
    // Taint the node so that any new copy must go to the other node: the case where a
    // premature re-placement would run two copies at once.
    let (s, v) = coord.api.request(
        "PATCH",
        &format!("/v1/nodes/{node_id}"),
        Some(&coord.api.token),
        Some(
            json!({"taints": [{"key": "maintenance", "effect": "no_schedule"}]})
                .to_string()
                .as_bytes(),
        ),
    )?;
    assert_eq!(s, 200, "{v}");
    let a = agents.get_mut(&name).context("agent")?;
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    a.kill9();
    *a = start_agent(&coord.quic, &tmp.path().join(&name), None, &name, &[])?;
    // Since #14 the new agent re-adopts the copy: it writes on with its token, and no other
    // copy starts, past the old lease and its fence grace, on either node.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        if let Ok(j) = coord.api.get(&format!("/v1/jobs/{id}")) {
            assert_eq!(
                j["fencing_token"].as_u64(),
                Some(old_token),
                "placed again: {j}"
            );
        }
        assert!(
            lines(&out).iter().all(|(_, t, _)| *t == old_token),
            "another copy ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let l = lines(&out);
    let after = l
        .iter()
        .filter(|(_, t, ns)| *t == old_token && *ns > killed + 2_000_000_000)
        .count();
    println!("agent restart: copy {old_token} re-adopted, {after} lines 2 s after the kill");
    assert!(after > 0, "the re-adopted copy stopped writing");
    Ok(())
}
