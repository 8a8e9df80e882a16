//! End to end: `tandemctl nodes move` and `POST /v1/nodes/{id}/move`. A node moved to
//! another cluster is refused as a join there would be, and once moved its jobs leave it as in
//! a drain: the old copy stopped first, never two copies at once.

use anyhow::{Context, Result};
use serde_json::json;
use tandem_tests::fleet::*;
use tandem_tests::{tandemctl, tandemctl_ok, wait_for};

#[test]
fn a_moved_node_meets_the_join_rules_and_its_job_moves_stopping_the_old_copy_first() -> Result<()> {
    let mut f = Fleet::new("mv-a", "pool")?;
    f.start_agents(&["mv-1", "mv-2"], &[])?;
    for (name, extra) in [
        ("mv-b", json!({})),
        // No test machine has a million cores.
        (
            "mv-big",
            json!({"min_node": {"cores": 1_000_000, "memory_bytes": 0}}),
        ),
    ] {
        let mut body = json!({"name": name, "mode": "pool"});
        body.as_object_mut()
            .context("object")?
            .extend(extra.as_object().cloned().unwrap_or_default());
        f.api().post("/v1/clusters", &body)?;
    }
    let w = f.submit_writer("mv-writer", 0, json!({}))?;
    let first = f.wait_running(&w)?;
    let (old_node, old_token) = f.placement(&first)?;
    let other = if old_node == "mv-1" { "mv-2" } else { "mv-1" };
    f.coord.wait_restart_grace()?;

    // Refusals: the minimums (through tandemctl, which prints the code), an unknown cluster,
    // a body that names none. Nothing moved.
    let o = tandemctl(
        f.api(),
        &["nodes", "move", &old_node, "--cluster", "mv-big"],
    )?;
    check(
        !o.ok && o.stderr.contains("failed_precondition") && o.stderr.contains("needs at least"),
        || format!("below the minimums: {}", o.stderr),
    )?;
    let path = format!("/v1/nodes/{old_node}/move");
    let (s, v) = f
        .api()
        .send("POST", &path, Some(&json!({"cluster": "mv-none"})))?;
    check(s == 404 && v["error"]["code"] == "not_found", || {
        format!("{s} {v}")
    })?;
    let (s, v) = f.api().send("POST", &path, Some(&json!({})))?;
    check(s == 400 && v["error"]["code"] == "invalid_argument", || {
        format!("{s} {v}")
    })?;
    let a = f.api().get("/v1/clusters/mv-a")?;
    let n = f.api().node(&old_node).context("node")?;
    check(n["cluster"] == a["id"], || format!("moved anyway: {n}"))?;

    // The move: the node is in mv-b at once, the job leaves it, old copy stopped first.
    let said = tandemctl_ok(f.api(), &["nodes", "move", &old_node, "--cluster", "mv-b"])?;
    check(said.contains("mv-b"), || said.clone())?;
    let b = f.api().get("/v1/clusters/mv-b")?;
    let n = f.api().node(&old_node).context("node")?;
    check(n["cluster"] == b["id"] && n["draining"] == false, || {
        format!("{n}")
    })?;
    let (moved, took) = f.wait_new_copy(&w, old_token, FAILOVER_BOUND)?;
    println!(
        "move: new copy writing {} ms after the move",
        took.as_millis()
    );
    let (new_node, new_token) = f.placement(&moved)?;
    check(new_node == other, || format!("on {new_node}, not {other}"))?;
    handover(&w.out, old_token, new_token, "move")?;
    let why = f.wait_copy_ended(&old_node, &w.id, old_token)?;
    check(why == "stopped", || format!("old copy ended: {why}"))?;
    check(
        f.events("node_moved")?
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.contains("mv-b"))),
        || "a node_moved event".into(),
    )?;
    // Moving it again to where it is changes nothing; the node now takes mv-b's work.
    let again = f.api().post(&path, &json!({"cluster": "mv-b"}))?;
    check(again["cluster"] == b["id"], || format!("{again}"))?;
    let j = f.api().post(
        "/v1/jobs",
        &json!({"name": "mv-b-job", "cluster": "mv-b",
                "command": ["/bin/sh", "-c", "sleep 600"],
                "resources": {"cpu_millis": 100, "memory_bytes": 67108864, "gpus": 0}}),
    )?;
    let id = j["job"]["id"].as_str().context("job id")?.to_string();
    let placed = wait_for(LONG, "mv-b's job to run", || {
        f.job(&id).ok().filter(|j| j["state"] == "running")
    })?;
    let (on, _) = f.placement(&placed)?;
    check(on == old_node, || format!("mv-b's job runs on {on}"))?;
    Ok(())
}
