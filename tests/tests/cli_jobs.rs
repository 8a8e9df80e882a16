//! End to end: `tandemctl jobs` and `clusters failover` against a real coordinator and agent.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::time::Duration;
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);

use tandem_tests::{tandemctl as ctl, tandemctl_ok as ctl_ok};

/// The table row that mentions `what`, if any.
fn row<'a>(table: &'a str, what: &str) -> Option<&'a str> {
    table.lines().find(|l| l.contains(what))
}

#[test]
fn tandemctl_runs_lists_shows_tails_and_stops_a_job() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let api = &coord.api;
    api.post("/v1/clusters", &json!({"name": "cj", "mode": "pool"}))?;
    let token = api.post("/v1/join-tokens", &json!({"uses": 1, "cluster": "cj"}))?["token"]
        .as_str()
        .context("token")?
        .to_string();
    let _agent = start_agent(
        &coord.quic,
        &tmp.path().join("cj-a"),
        Some(&token),
        "cj-a",
        &[],
    )?;
    wait_for(LONG, "the agent ready", || {
        (api.state("cj-a").as_deref() == Some("ready")).then_some(())
    })?;

    // jobs run: the command after `--`, quotes and all.
    let ran = ctl_ok(
        api,
        &[
            "jobs",
            "run",
            "--name",
            "hello",
            "--cluster",
            "cj",
            "--cpu",
            "250m",
            "--memory",
            "64MiB",
            "--restart",
            "never",
            "--env",
            "GREETING=hello",
            "--",
            "/bin/sh",
            "-c",
            "echo $GREETING; sleep 30",
        ],
    )?;
    ensure!(ran.contains("Job hello submitted: j-"), "{ran}");
    let id = api.get("/v1/jobs/hello")?["id"]
        .as_str()
        .context("id")?
        .to_string();

    // jobs list: a row with the name, the cluster's and node's names and `running`.
    let listed = wait_for(LONG, "the job running in `jobs list`", || {
        let t = ctl_ok(api, &["jobs", "list"]).ok()?;
        row(&t, "hello")
            .is_some_and(|r| r.contains("running"))
            .then_some(t)
    })?;
    ensure!(
        listed.contains("NAME") && listed.contains("STATE"),
        "{listed}"
    );
    let r = row(&listed, "hello").context("row")?;
    ensure!(
        r.contains(&id) && r.contains("cj-a") && r.contains("cj"),
        "{r}"
    );
    // Filters, and -o json is the API's answer.
    let only: Value = serde_json::from_str(&ctl_ok(
        api,
        &[
            "-o",
            "json",
            "jobs",
            "list",
            "--cluster",
            "cj",
            "--state",
            "running",
            "--node",
            "cj-a",
        ],
    )?)?;
    ensure!(
        only["jobs"].as_array().map(Vec::len) == Some(1) && only["jobs"][0]["id"] == id.as_str(),
        "{only}"
    );
    let none = ctl_ok(api, &["jobs", "list", "--state", "failed"])?;
    ensure!(none.contains("No jobs"), "{none}");

    // jobs logs: "hello" from stdout.
    wait_for(LONG, "hello in the job's logs", || {
        let o = ctl_ok(api, &["jobs", "logs", "hello", "--tail", "5"]).ok()?;
        o.lines().any(|l| l == "hello").then_some(())
    })?;

    // jobs show, by short id: state, node, token and the placement.
    let short = &id[..6];
    let shown = ctl_ok(api, &["jobs", "show", short])?;
    for want in [
        id.as_str(),
        "running",
        "cj-a",
        "Fencing token",
        "Placements",
        "0.25 CPU, 64 MiB memory",
        "GREETING=hello",
        "'echo $GREETING; sleep 30'",
    ] {
        ensure!(shown.contains(want), "no {want:?} in:\n{shown}");
    }

    // jobs stop: the job ends as `stopped`, its placement as `stopped by user`; it returns
    // once the copy has ended (`--detach`: at once).
    let stopped = ctl_ok(api, &["jobs", "stop", "hello"])?;
    ensure!(stopped.contains("stopped"), "{stopped}");
    wait_for(LONG, "the job stopped", || {
        let t = ctl_ok(api, &["jobs", "list", "--state", "stopped"]).ok()?;
        row(&t, "hello").map(|_| ())
    })?;
    let shown = ctl_ok(api, &["jobs", "show", &id])?;
    ensure!(shown.contains("stopped by user"), "{shown}");

    // clusters failover: accepted for a known cluster, refused for an unknown one.
    let forced = ctl_ok(api, &["clusters", "failover", "cj"])?;
    ensure!(forced.contains("Failover forced in cluster cj"), "{forced}");
    let o = ctl(api, &["clusters", "failover", "nowhere"])?;
    ensure!(
        !o.ok && o.stderr.starts_with("error: not_found: "),
        "{}",
        o.stderr
    );

    // Refusals: `error: <code>: <message>`, exit 1.
    let o = ctl(api, &["jobs", "show", "nosuch"])?;
    ensure!(
        !o.ok && o.stderr.starts_with("error: not_found: "),
        "{}",
        o.stderr
    );
    let o = ctl(
        api,
        &[
            "jobs",
            "run",
            "--name",
            "x",
            "--cluster",
            "nowhere",
            "--",
            "true",
        ],
    )?;
    ensure!(
        !o.ok && o.stderr.starts_with("error: invalid_argument: "),
        "{}",
        o.stderr
    );
    let o = ctl(
        api,
        &[
            "jobs",
            "run",
            "--name",
            "x",
            "--cluster",
            "cj",
            "--env",
            "TANDEM_NODE_ID=forged",
            "--",
            "true",
        ],
    )?;
    ensure!(
        !o.ok && o.stderr.starts_with("error: invalid_argument: env"),
        "{}",
        o.stderr
    );
    Ok(())
}
