//! End to end: an agent's hardware report (with a GPU fixture) reaches the admin API,
//! `/metrics` and `tandemctl`, and a GPU turning unhealthy is reported and recorded.

use anyhow::{Context, Result};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

#[test]
fn gpus_health_and_model_reach_the_coordinator() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let token = coord.api.token(2)?;
    let gpu_file = tmp.path().join("gpus.json");
    std::fs::copy(fixture("gpus-2x-l4.json"), &gpu_file)?;
    let gpu_arg = gpu_file.to_str().context("utf-8")?;
    let _a = start_agent(
        &coord.quic,
        &tmp.path().join("a"),
        Some(&token),
        "hw-a",
        &["--gpu-fixture", gpu_arg, "--sample-interval-ms", "200"],
    )?;
    let _b = start_agent(
        &coord.quic,
        &tmp.path().join("b"),
        Some(&token),
        "hw-b",
        &[],
    )?;
    let node = wait_for(LONG, "hw-a ready", || {
        coord.api.node("hw-a").filter(|n| n["state"] == "ready")
    })?;
    let gpus = node["hardware"]["gpus"].as_array().context("gpus")?.clone();
    assert_eq!(gpus.len(), 2, "{node}");
    assert_eq!(gpus[0]["name"], "NVIDIA L4");
    assert_eq!(gpus[1]["health"]["state"], "healthy");
    assert_eq!(node["hardware"]["nvml"]["status"], "fixture");
    let model = node["model"].as_str().context("model")?;
    assert!(model.contains("2x NVIDIA L4"), "{model}");
    // Without a fixture on this machine: no GPUs, NVML unavailable with its reason.
    let b = wait_for(LONG, "hw-b ready", || {
        coord.api.node("hw-b").filter(|n| n["state"] == "ready")
    })?;
    if b["hardware"]["nvml"]["available"] == false {
        assert!(b["hardware"]["gpus"]
            .as_array()
            .is_some_and(|g| g.is_empty()));
        assert!(
            b["hardware"]["nvml"]["reason"].is_string(),
            "{}",
            b["hardware"]["nvml"]
        );
        assert_ne!(
            b["model"], node["model"],
            "a machine with other GPUs has another model"
        );
    }

    // Paging: one node a page, by name.
    let p1 = coord.api.get("/v1/nodes?limit=1")?;
    assert_eq!(p1["nodes"].as_array().map(Vec::len), Some(1), "{p1}");
    assert_eq!(p1["nodes"][0]["name"], "hw-a");
    let tok = p1["next_page_token"].as_str().context("next_page_token")?;
    let p2 = coord
        .api
        .get(&format!("/v1/nodes?limit=1&page_token={tok}"))?;
    assert_eq!(p2["nodes"][0]["name"], "hw-b", "{p2}");
    assert!(p2.get("next_page_token").is_none(), "{p2}");
    let (s, v) = coord.api.request(
        "GET",
        "/v1/nodes?page_token=zz",
        Some(&coord.api.token),
        None,
    )?;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_argument")),
        "{v}"
    );

    let uuid = gpus[1]["uuid"].as_str().context("uuid")?.to_string();
    let (s, metrics) = coord.api.request("GET", "/metrics", None, None)?;
    assert_eq!(s, 200);
    let metrics = metrics.as_str().context("text")?.to_string();
    assert!(
        metrics.contains(&format!(
            "tandem_gpu_temperature_celsius{{node=\"hw-a\",uuid=\"{uuid}\"}}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_nodes{state=\"ready\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("tandem_heartbeats_received_total"));
    assert!(metrics.contains("tandem_heartbeat_rtt_seconds_bucket"));
    // The engine task's queue and its panics (none).
    assert!(
        metrics.contains("\ntandem_engine_calls_queued "),
        "{metrics}"
    );
    assert!(
        metrics.contains("\ntandem_engine_panics_total 0\n"),
        "{metrics}"
    );

    let out = Command::new(bin("tandemctl"))
        .args([
            "--endpoint",
            &coord.api.base,
            "--token",
            &coord.api.token,
            "nodes",
            "show",
            "hw-a",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("NVIDIA L4") && text.contains("healthy") && text.contains("22.5 GiB"),
        "{text}"
    );

    // GPU 1 turns unhealthy (the fixture is rewritten the way a test or demo would).
    let mut list: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&gpu_file)?)?;
    list[1]["health"] =
        serde_json::json!({"state": "unhealthy", "reason": "XID 79: GPU has fallen off the bus"});
    let tmp_file = tmp.path().join("gpus.json.new");
    std::fs::write(&tmp_file, serde_json::to_vec_pretty(&list)?)?;
    std::fs::rename(&tmp_file, &gpu_file)?;
    wait_for(LONG, "GPU 1 unhealthy at the coordinator", || {
        let n = coord.api.node("hw-a")?;
        (n["hardware"]["gpus"][1]["health"]["state"] == "unhealthy").then_some(())
    })?;
    let ev = wait_for(LONG, "a gpu_health event", || {
        coord
            .api
            .events()
            .ok()?
            .into_iter()
            .find(|e| e["kind"] == "gpu_health")
    })?;
    let msg = ev["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&uuid) && msg.contains("unhealthy") && msg.contains("XID 79"),
        "{ev}"
    );
    Ok(())
}

#[test]
fn heartbeats_fall_back_to_a_stream_without_datagrams() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let token = coord.api.token(1)?;
    let mut a = start_agent(
        &coord.quic,
        &tmp.path().join("s"),
        Some(&token),
        "stream-a",
        &["--force-stream-heartbeats"],
    )?;
    wait_for(LONG, "ready", || {
        (coord.api.state("stream-a").as_deref() == Some("ready")).then_some(())
    })?;
    // It must keep its lease on stream heartbeats alone: beats keep arriving, no suspicion.
    let before = coord.api.events()?.len();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        let n = coord.api.node("stream-a").context("node")?;
        assert_eq!(n["state"], "ready");
        assert!(
            n["last_heartbeat_age_ms"].as_u64().context("age")? < 1000,
            "{n}"
        );
    }
    assert_eq!(coord.api.events()?.len(), before, "no state changes");
    a.kill9();
    wait_for(LONG, "down", || {
        (coord.api.state("stream-a").as_deref() == Some("down")).then_some(())
    })?;
    Ok(())
}
