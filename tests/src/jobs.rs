//! Jobs for the promise tests: submitting a small `sh -c` job, waiting for its end, and the
//! "stamps" a job appends to a file (`"<token> <unix ns>"`), which are the evidence of how many
//! copies ran and when.

use crate::fleet::{Fleet, Writer};
use crate::wait_for;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// Small enough that 24 fit on one node of a two-core test machine.
pub fn tiny() -> Value {
    json!({"cpu_millis": 10, "memory_bytes": 16 << 20, "gpus": 0})
}

/// Submits a job of the fleet's cluster running `sh -c script` (`restart: always` unless
/// `extra` says otherwise; `extra`'s keys replace the spec's); returns its id.
pub fn submit(f: &Fleet, name: &str, script: &str, extra: Value) -> Result<String> {
    let mut spec = json!({"name": name, "cluster": f.cluster,
        "command": ["/bin/sh", "-c", script], "resources": tiny(), "restart": "always"});
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    let j = f.api().post("/v1/jobs", &spec)?;
    Ok(j["job"]["id"].as_str().context("job id")?.to_string())
}

/// The cluster's jobs.
pub fn jobs(f: &Fleet) -> Result<Vec<Value>> {
    Ok(
        f.api().get(&format!("/v1/jobs?cluster={}", f.cluster))?["jobs"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    )
}

/// The id of node `name`.
pub fn node_id(f: &Fleet, name: &str) -> Result<String> {
    Ok(f.api().node(name).context("node")?["id"]
        .as_str()
        .context("id")?
        .to_string())
}

/// Waits until the job is in a terminal state; returns it.
pub fn wait_terminal(f: &Fleet, id: &str, bound: Duration) -> Result<Value> {
    wait_for(bound, "the job to end", || {
        let j = f.job(id).ok()?;
        ["completed", "failed", "stopped"]
            .contains(&j["state"].as_str()?)
            .then_some(j)
    })
    .with_context(|| format!("job now: {:?}", f.job(id).ok()))
}

/// Lines `"<token> <unix ns>"` of a file some job appends to, as (token, ns).
pub fn token_lines(path: &Path) -> Vec<(u64, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// A shell command appending one stamp: `echo "$TANDEM_FENCING_TOKEN <ns>" >> out`.
pub fn stamp(out: &Path) -> String {
    format!(
        "echo \"$TANDEM_FENCING_TOKEN $(date +%s%N)\" >> {}",
        out.display()
    )
}

/// A writer like [`crate::fleet::writer_script`] that ignores SIGTERM: only SIGKILL (after the kill timeout
/// the copy was given) ends it.
pub fn stubborn_writer(out: &Path) -> String {
    let line = format!(
        "echo \"$TANDEM_NODE_NAME $TANDEM_FENCING_TOKEN $(date +%s%N) -\" >> {}",
        out.display()
    );
    format!("trap '' TERM; while true; do {line}; sleep 0.01; done")
}

/// `coordinator.toml` with `fence_kill_timeout_ms = ms`.
pub fn kill_timeout(ms: u64) -> impl FnOnce(&str) -> String {
    move |text| {
        text.lines()
            .map(|l| {
                if l.trim_start().starts_with("fence_kill_timeout_ms") {
                    format!("fence_kill_timeout_ms = {ms}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }
}

/// Submits a [`stubborn_writer`] job named `name`.
pub fn submit_stubborn_writer(f: &Fleet, name: &str) -> Result<Writer> {
    let out = f.tmp.path().join(format!("{name}.out"));
    let id = submit(f, name, &stubborn_writer(&out), json!({}))?;
    Ok(Writer { id, out })
}
