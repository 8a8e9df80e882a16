//! End to end: a job is changed by stopping it and submitting it again under its name (there
//! is no other way), so the new job must never run beside the old one's last copy. Found in
//! session 12: a stop ended the job at once, freeing its name (and its node's room) while the
//! old copy still ran out its SIGTERM-to-SIGKILL timeout (5 s), or a whole lease on a node
//! that was cut off.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tandem_tests::fleet::*;
use tandem_tests::jobs::{stubborn_writer, submit, submit_stubborn_writer};
use tandem_tests::{tandemctl, wait_for};

/// The old job's last line and the new one's first (unix ns), which must not overlap.
fn check_no_overlap(old: &Writer, new: &Writer, what: &str) -> Result<()> {
    let last = read_lines(&old.out)
        .iter()
        .map(|l| l.ns)
        .max()
        .context("old lines")?;
    let first = read_lines(&new.out)
        .iter()
        .map(|l| l.ns)
        .min()
        .context("new lines")?;
    ensure!(
        last < first,
        "{what}: two copies of one job name ran at once: {} ms of overlap",
        (last - first) / 1_000_000
    );
    println!(
        "{what}: old copy's last line -> new job's first line: {} ms",
        (first - last) / 1_000_000
    );
    Ok(())
}

#[test]
fn a_job_stopped_and_submitted_again_never_runs_beside_its_old_copy() -> Result<()> {
    let mut f = Fleet::new("again", "pool")?;
    f.start_agents(&["again-a", "again-b"], &[])?;
    let old = submit_stubborn_writer(&f, "again-writer")?;
    f.wait_running(&old)?;
    let t0 = Instant::now();
    let (s, stopped) = f
        .api()
        .send("DELETE", &format!("/v1/jobs/{}", old.id), None)?;
    ensure!(s == 200, "stop: {s} {stopped}");
    // As a deploy script would: submit the new version at once, and again after a refusal.
    let out = f.tmp.path().join("again-writer-2.out");
    let spec = json!({"name": "again-writer", "cluster": f.cluster,
        "command": ["/bin/sh", "-c", stubborn_writer(&out)],
        "resources": tandem_tests::jobs::tiny(), "restart": "always"});
    let mut refusal: Option<Value> = None;
    let new_id = wait_for(LONG, "the name free again", || {
        let (s, v) = f.api().send("POST", "/v1/jobs", Some(&spec)).ok()?;
        if s == 409 {
            refusal = Some(v);
            return None;
        }
        v["job"]["id"].as_str().map(str::to_string)
    })?;
    let freed = t0.elapsed();
    let new = Writer { id: new_id, out };
    f.wait_running(&new)?;
    check_no_overlap(&old, &new, "stop, then submit again at once")?;
    // The old copy ignores SIGTERM: only the SIGKILL after the stop's kill timeout ends it,
    // and until then the name is refused with the reason.
    let refusal = refusal.context("the name was never refused while the old copy ran")?;
    let msg = refusal["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        refusal["error"]["code"] == "already_exists" && msg.contains("stopping"),
        "{refusal}"
    );
    println!("name `again-writer` free {freed:?} after the stop; refused meanwhile: {msg}");
    let j = f.job(&old.id)?;
    ensure!(j["state"] == "stopped" && j["stopping"].is_null(), "{j}");
    Ok(())
}

#[test]
fn tandemctl_jobs_stop_waits_until_the_copy_has_ended() -> Result<()> {
    let mut f = Fleet::new("ctlstop", "pool")?;
    f.start_agents(&["ctlstop-a"], &[])?;
    let old = submit_stubborn_writer(&f, "ctlstop-writer")?;
    f.wait_running(&old)?;
    let t0 = Instant::now();
    let out = tandemctl(f.api(), &["jobs", "stop", "ctlstop-writer"])?;
    ensure!(out.ok, "{}\n{}", out.stdout, out.stderr);
    let took = t0.elapsed();
    // Stopped for good once tandemctl returns: no line is written after it.
    let after = now_ns();
    std::thread::sleep(Duration::from_millis(300));
    let late = read_lines(&old.out).iter().filter(|l| l.ns > after).count();
    ensure!(late == 0, "{late} lines written after `jobs stop` returned");
    ensure!(out.stdout.contains("stopped"), "{}", out.stdout);
    println!("tandemctl jobs stop of a job ignoring SIGTERM returned after {took:?}");
    // So `stop` then `run` under the same name works at once.
    let id = submit(&f, "ctlstop-writer", "sleep 30", json!({}))?;
    ensure!(!id.is_empty());
    Ok(())
}
