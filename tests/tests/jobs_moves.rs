//! End to end: a drain moves a job (old copy stopped first); GPUs are given whole through
//! `CUDA_VISIBLE_DEVICES`; in ha_pairs the standby is promoted and takes the job.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::time::Duration;
use tandem_tests::fleet::*;
use tandem_tests::wait_for;

#[test]
fn drain_moves_a_job_stopping_the_old_copy_first() -> Result<()> {
    let mut f = Fleet::new("drain", "pool")?;
    f.start_agents(&["drain-a", "drain-b"], &[])?;
    let w = f.submit_writer("drain-writer", 0, json!({}))?;
    let first = f.wait_running(&w)?;
    let (old_node, old_token) = f.placement(&first)?;
    let node_id = first["node"].as_str().context("node")?.to_string();
    f.coord.wait_restart_grace()?;

    f.api()
        .post(&format!("/v1/nodes/{node_id}/drain"), &json!({}))?;
    let (moved, took) = f.wait_new_copy(&w, old_token, FAILOVER_BOUND)?;
    println!(
        "drain: new copy writing {} ms after the drain",
        took.as_millis()
    );
    let (new_node, new_token) = f.placement(&moved)?;
    check(new_node != old_node, || format!("still on {new_node}"))?;
    handover(&w.out, old_token, new_token, "drain")?;
    // Stopped (not fenced: the node never lost its lease), and recorded as drained.
    let why = f.wait_copy_ended(&old_node, &w.id, old_token)?;
    check(why == "stopped", || format!("old copy ended: {why}"))?;
    let hist = moved["history"].as_array().context("history")?;
    check(hist.iter().any(|h| h["end_reason"] == "drained"), || {
        format!("{moved}")
    })?;
    // The drained node stays connected (ready, draining) and gets nothing back.
    holds_for(Duration::from_millis(1000), || {
        let cs = copies(&w.out)?;
        check(cs.len() == 2, || format!("{cs:?}"))?;
        let n = f.api().node(&node_id).context("node")?;
        check(n["draining"] == true, || format!("{n}"))
    })?;
    Ok(())
}

/// Waits until the writer's job is pending with a reason that contains `why`.
fn wait_pending(f: &Fleet, w: &Writer, why: &str) -> Result<()> {
    wait_for(
        Duration::from_secs(10),
        &format!("the job pending ({why})"),
        || {
            let j = f.job(&w.id).ok()?;
            (j["state"] == "pending" && j["state_reason"].as_str().is_some_and(|r| r.contains(why)))
                .then_some(())
        },
    )
}

/// Found by the simulation: a job submitted while every node of its cluster drains is pending
/// ("no node ... can take it"), and ending the drain (`POST /v1/nodes/{id}/undrain`) left it
/// pending for good, since nothing looked at the cluster again. Checks: it runs on the node
/// once the drain ends.
///
/// On the code before the fix: `timed out ... waiting for the job running and writing` (still
/// `pending`, its reason naming the drain).
#[test]
fn a_job_pending_during_a_drain_runs_when_the_drain_ends() -> Result<()> {
    let mut f = Fleet::new("undrain", "pool")?;
    f.start_agents(&["undrain-a"], &[])?;
    let node_id = tandem_tests::jobs::node_id(&f, "undrain-a")?;
    f.api()
        .post(&format!("/v1/nodes/{node_id}/drain"), &json!({}))?;
    let w = f.submit_writer("undrain-writer", 0, json!({}))?;
    wait_pending(&f, &w, "draining")?;
    f.api()
        .post(&format!("/v1/nodes/{node_id}/undrain"), &json!({}))?;
    let j = f.wait_running(&w)?;
    let (node, _) = f.placement(&j)?;
    check(node == "undrain-a", || format!("runs on {node}"))?;
    Ok(())
}

/// Found in session 12: a job pending because no node had the label it requires (or every
/// node carried a taint it does not tolerate) stayed pending after an operator labelled (or
/// untainted) a node with `PATCH /v1/nodes/{id}`: the edit looked at no job.
#[test]
fn a_job_pending_for_a_label_runs_once_a_node_is_labelled_or_untainted() -> Result<()> {
    let mut f = Fleet::new("relabel", "pool")?;
    f.start_agents(&["relabel-a"], &[])?;
    let node_id = tandem_tests::jobs::node_id(&f, "relabel-a")?;
    let w = f.submit_writer("relabel-writer", 0, json!({"zone": "a"}))?;
    wait_pending(&f, &w, "zone")?;
    let path = format!("/v1/nodes/{node_id}");
    let (s, v) = f
        .api()
        .send("PATCH", &path, Some(&json!({"labels": {"zone": "a"}})))?;
    check(s == 200, || format!("PATCH labels: {s} {v}"))?;
    let j = f.wait_running(&w)?;
    let (node, _) = f.placement(&j)?;
    check(node == "relabel-a", || format!("runs on {node}"))?;

    // The same for a taint: a node tainted before the job came, untainted after.
    let (s, v) = f.api().send(
        "PATCH",
        &path,
        Some(&json!({"taints": [{"key": "maint", "value": "yes", "effect": "no_schedule"}]})),
    )?;
    check(s == 200, || format!("PATCH taints: {s} {v}"))?;
    let w2 = f.submit_writer("relabel-writer-2", 0, json!({}))?;
    wait_pending(&f, &w2, "maint")?;
    let (s, v) = f.api().send("PATCH", &path, Some(&json!({"taints": []})))?;
    check(s == 200, || format!("PATCH taints: {s} {v}"))?;
    f.wait_running(&w2)?;
    Ok(())
}

/// Found in session 12: a GPU job pending because every GPU of the cluster was unhealthy
/// stayed pending after a GPU became healthy again (a hardware update looked at no job).
#[test]
fn a_gpu_job_pending_for_want_of_a_healthy_gpu_runs_once_one_recovers() -> Result<()> {
    let mut f = Fleet::new("gpuback", "pool")?;
    let gpu_file = f.tmp.path().join("gpus.json");
    let write = |healthy: bool| -> Result<()> {
        let mut list: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(l4_fixture())?)?;
        for g in list.iter_mut().filter(|_| !healthy) {
            g["health"] =
                json!({"state": "unhealthy", "reason": "XID 79: GPU has fallen off the bus"});
        }
        let next = gpu_file.with_extension("new");
        std::fs::write(&next, serde_json::to_vec_pretty(&list)?)?;
        Ok(std::fs::rename(&next, &gpu_file)?)
    };
    write(false)?;
    let fx = gpu_file.to_str().context("utf-8")?.to_string();
    f.start_agents(
        &["gpuback-a"],
        &["--gpu-fixture", &fx, "--sample-interval-ms", "200"],
    )?;
    let w = f.submit_writer("gpuback-writer", 1, json!({}))?;
    wait_pending(&f, &w, "GPU")?;
    write(true)?;
    let j = f.wait_running(&w)?;
    let gpus = j["gpus"].as_array().context("gpus")?;
    check(gpus.len() == 1, || format!("{j}"))?;
    Ok(())
}

/// The GPU UUIDs of the two-GPU fixture.
fn fixture_uuids() -> Result<Vec<String>> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(l4_fixture())?)?;
    v.as_array()
        .context("fixture array")?
        .iter()
        .map(|g| Ok(g["uuid"].as_str().context("uuid")?.to_string()))
        .collect()
}

#[test]
fn a_one_gpu_job_gets_one_uuid_and_a_second_gets_the_other() -> Result<()> {
    let fixture = l4_fixture();
    let fx = fixture.to_str().context("utf-8")?;
    let mut f = Fleet::new("gpus", "pool")?;
    f.start_agents(&["gpus-a", "gpus-b"], &["--gpu-fixture", fx])?;
    let uuids = fixture_uuids()?;
    check(uuids.len() == 2, || format!("{uuids:?}"))?;
    // Both jobs on the same node: a label only that node has.
    let target = f.wait_ready("gpus-b")?;
    let target_id = target["id"].as_str().context("id")?.to_string();
    let (s, v) = f.api().send(
        "PATCH",
        &format!("/v1/nodes/{target_id}"),
        Some(&json!({"labels": {"gpu-test": "here"}})),
    )?;
    check(s == 200, || format!("{s} {v}"))?;

    let mut seen = Vec::new();
    for name in ["gpu-one", "gpu-two"] {
        let w = f.submit_writer(name, 1, json!({"gpu-test": "here"}))?;
        let j = f.wait_running(&w)?;
        check(j["node"] == target_id.as_str(), || format!("{j}"))?;
        let gpus: Vec<String> = j["gpus"]
            .as_array()
            .context("gpus")?
            .iter()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect();
        check(gpus.len() == 1 && uuids.contains(&gpus[0]), || {
            format!("job {name} got {gpus:?}, fixture has {uuids:?}")
        })?;
        let env: Vec<String> = read_lines(&w.out).into_iter().map(|l| l.gpus).collect();
        check(env.iter().all(|e| *e == gpus[0]), || {
            format!("CUDA_VISIBLE_DEVICES of {name}: {env:?}, assigned {gpus:?}")
        })?;
        println!("{name}: CUDA_VISIBLE_DEVICES={}", gpus[0]);
        seen.push(gpus[0].clone());
    }
    check(seen[0] != seen[1], || {
        format!("two jobs got the same GPU: {seen:?}")
    })?;
    // A third one-GPU job does not fit on that node: it waits.
    let w = f.submit_writer("gpu-three", 1, json!({"gpu-test": "here"}))?;
    let j = wait_for(LONG, "the third GPU job pending", || {
        f.job(&w.id).ok().filter(|j| j["state"] == "pending")
    })?;
    check(j["node"].is_null(), || format!("{j}"))?;
    Ok(())
}

/// The cluster's pairs.
fn pairs(f: &Fleet) -> Result<Vec<Value>> {
    Ok(
        f.api().get(&format!("/v1/clusters/{}", f.cluster))?["pairs"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    )
}

#[test]
fn ha_pairs_the_standby_is_promoted_and_takes_the_job() -> Result<()> {
    let fixture = l4_fixture();
    let fx = fixture.to_str().context("utf-8")?;
    let mut f = Fleet::new("hap", "ha_pairs")?;
    // One after the other: the first node fixes the cluster's model.
    for n in ["hap-a", "hap-b"] {
        f.start_agent(n, None, &["--gpu-fixture", fx])?;
        f.wait_ready(n)?;
    }
    let pair = wait_for(LONG, "a healthy pair", || {
        let ps = pairs(&f).ok()?;
        (ps.len() == 1 && ps[0]["state"] == "healthy").then(|| ps[0].clone())
    })?;
    let primary = pair["primary"].as_str().context("primary")?.to_string();
    let standby = pair["standby"].as_str().context("standby")?.to_string();
    let w = f.submit_writer("hap-writer", 1, json!({}))?;
    let first = f.wait_running(&w)?;
    check(first["node"] == primary.as_str(), || {
        format!(
            "the job runs on {} not on the primary {primary}",
            first["node"]
        )
    })?;
    let (old_node, old_token) = f.placement(&first)?;
    f.coord.wait_restart_grace()?;

    f.agent(&old_node)?.kill9();
    let (moved, took) = f.wait_new_copy(&w, old_token, FAILOVER_BOUND)?;
    println!(
        "ha_pairs: new copy writing on the standby {} ms after kill -9 of the primary",
        took.as_millis()
    );
    check(moved["node"] == standby.as_str(), || {
        format!(
            "the job went to {} not to the standby {standby}",
            moved["node"]
        )
    })?;
    let (_, new_token) = f.placement(&moved)?;
    handover(&w.out, old_token, new_token, "ha_pairs")?;
    let promoted = wait_for(LONG, "the standby promoted", || {
        let ps = pairs(&f).ok()?;
        ps.into_iter().find(|p| p["primary"] == standby.as_str())
    })?;
    println!(
        "ha_pairs: pair after the failover: {} ({})",
        promoted["state"], promoted["reason"]
    );
    let gpus = moved["gpus"].as_array().context("gpus")?;
    check(gpus.len() == 1, || format!("{moved}"))?;
    Ok(())
}

/// Found by the simulation: in `ha_pairs` a job runs on a pair's primary, so one submitted
/// while the cluster has no pair is pending ("no primary/standby pair yet"); pairing two nodes
/// by hand (`POST /v1/clusters/{id}/pairs`) left it pending for good. Checks: it runs on the
/// new primary once the pair is made.
///
/// On the code before the fix: `timed out ... waiting for the job running and writing`.
#[test]
fn a_job_waiting_for_a_pair_runs_once_two_nodes_are_paired_by_hand() -> Result<()> {
    let fixture = l4_fixture();
    let fx = fixture.to_str().context("utf-8")?;
    let mut f = Fleet::new("hpm", "ha_pairs")?;
    for n in ["hpm-a", "hpm-b"] {
        f.start_agent(n, None, &["--gpu-fixture", fx])?;
        f.wait_ready(n)?;
    }
    let pair = wait_for(LONG, "a healthy pair", || {
        let ps = pairs(&f).ok()?;
        (ps.len() == 1 && ps[0]["state"] == "healthy").then(|| ps[0].clone())
    })?;
    let pair_id = pair["id"].as_str().context("pair id")?;
    let (s, v) = f.api().send(
        "DELETE",
        &format!("/v1/clusters/{}/pairs/{pair_id}", f.cluster),
        None,
    )?;
    check(s == 200, || format!("unpairing: {s} {v}"))?;
    let w = f.submit_writer("hpm-writer", 0, json!({}))?;
    wait_pending(&f, &w, "no primary/standby pair")?;
    f.api().post(
        &format!("/v1/clusters/{}/pairs", f.cluster),
        &json!({"primary": "hpm-a", "standby": "hpm-b"}),
    )?;
    let j = f.wait_running(&w)?;
    let (node, _) = f.placement(&j)?;
    check(node == "hpm-a", || {
        format!("runs on {node}, not on the primary")
    })?;
    Ok(())
}

/// Found by the simulation (seed 757, once its nodes had GPUs): a job moving off a node was
/// counted only where it goes, so the GPUs of its old copy, still being stopped, looked free.
/// Once the node could take jobs again (undrained, or moved back), a new job was given a GPU
/// the old copy still held.
#[test]
fn a_moving_jobs_old_copy_keeps_its_gpus_until_it_has_ended() -> Result<()> {
    let fixture = l4_fixture();
    let fx = fixture.to_str().context("utf-8")?;
    let mut f = Fleet::new("gpumove", "pool")?;
    f.start_agents(&["gpumove-a", "gpumove-b"], &["--gpu-fixture", fx])?;
    f.coord.wait_restart_grace()?;
    // Both GPUs of its node, and it sits out SIGTERM: its stop takes the whole kill timeout.
    let j = f.api().post(
        "/v1/jobs",
        &json!({"name": "gpumove-old", "cluster": f.cluster,
                "command": ["/bin/sh", "-c", "trap '' TERM; while sleep 0.1; do :; done"],
                "resources": {"cpu_millis": 100, "memory_bytes": 67108864, "gpus": 2}}),
    )?;
    let id = j["job"]["id"].as_str().context("job id")?.to_string();
    let first = wait_for(Duration::from_secs(30), "the GPU job running", || {
        let j = f.job(&id).ok()?;
        (j["state"] == "running").then_some(j)
    })?;
    let node_id = first["node"].as_str().context("node")?.to_string();
    let token = first["fencing_token"].as_u64().context("token")?;

    // Drained: the job moves to the other node, its old copy is stopped first (and lingers);
    // then the drain is taken back at once.
    f.api()
        .post(&format!("/v1/nodes/{node_id}/drain"), &json!({}))?;
    wait_for(Duration::from_secs(10), "the job migrating", || {
        (f.job(&id).ok()?["state"] == "migrating").then_some(())
    })?;
    f.api()
        .post(&format!("/v1/nodes/{node_id}/undrain"), &json!({}))?;
    check(!copy_pids(&id, Some(token)).is_empty(), || {
        "the old copy should still be alive (it ignores SIGTERM)".into()
    })?;

    // A job that wants one GPU: the only ones that look free are the old copy's.
    let w = f.submit_writer("gpumove-new", 1, json!({}))?;
    holds_for(Duration::from_millis(2000), || {
        if copy_pids(&id, Some(token)).is_empty() {
            return Ok(());
        }
        let k = f.job(&w.id)?;
        check(k["node"] != node_id.as_str(), || {
            format!("given a GPU of {node_id} while the old copy there still runs: {k}")
        })
    })?;
    // Once the old copy is gone (the kill timeout), the new job runs there.
    let k = f.wait_running(&w)?;
    check(k["node"] == node_id.as_str(), || format!("{k}"))?;
    Ok(())
}
