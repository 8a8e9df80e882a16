//! End to end: `tandemctl` against a real coordinator, and `tandem-coordinator dev`.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tandem_common::token::JoinToken;
use tandem_tests::dev::*;
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);

/// What a finished command left.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `tandemctl args` with `env` (and no inherited TANDEM_* variables), killed after 20 s.
fn ctl(args: &[&str], env: &[(&str, &str)]) -> Result<Out> {
    let dir = tempfile::tempdir()?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new(bin("tandemctl"));
    cmd.args(args)
        .env_remove("TANDEM_ENDPOINT")
        .env_remove("TANDEM_TOKEN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut p = Proc {
        child: cmd.spawn()?,
        log: err.clone(),
    };
    let status = wait_for(Duration::from_secs(20), "tandemctl to finish", || {
        p.exited()
    })
    .with_context(|| format!("tandemctl {args:?}"))?;
    Ok(Out {
        ok: status.success(),
        stdout: std::fs::read_to_string(&out)?,
        stderr: std::fs::read_to_string(&err)?,
    })
}

/// `ctl` that must succeed.
fn ctl_ok(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let o = ctl(args, env)?;
    ensure!(
        o.ok,
        "tandemctl {args:?} failed:\n{}\n{}",
        o.stdout,
        o.stderr
    );
    Ok(o.stdout)
}

fn ids_and_states(nodes: &Value) -> BTreeMap<String, String> {
    nodes["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_string(),
                n["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn tandemctl_lists_shows_creates_and_refuses() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let api = &coord.api;
    let token = api.token(2)?;
    let names = ["ctl-a", "ctl-b"];
    let mut _agents = Vec::new();
    for n in names {
        _agents.push(start_agent(
            &coord.quic,
            &tmp.path().join(n),
            Some(&token),
            n,
            &[],
        )?);
    }
    wait_for(LONG, "both agents ready", || {
        names
            .iter()
            .all(|n| api.state(n).as_deref() == Some("ready"))
            .then_some(())
    })?;
    let ep = api.base.as_str();
    let tk = api.token.as_str();
    let flags = ["--endpoint", ep, "--token", tk];
    let with = |rest: &[&'static str]| -> Vec<&str> {
        flags.iter().copied().chain(rest.iter().copied()).collect()
    };

    // nodes list: a table with each name and its state.
    let table = ctl_ok(&with(&["nodes", "list"]), &[])?;
    ensure!(table.contains("NAME") && table.contains("STATE"), "{table}");

    // A reader that stops reading (`| head`) ends it quietly, never with a panic.
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let err = tmp.path().join("closed-pipe.err");
    let mut p = Proc {
        child: Command::new(bin("tandemctl"))
            .args(with(&["nodes", "list"]))
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(std::fs::File::create(&err)?)
            .spawn()?,
        log: err.clone(),
    };
    wait_for(
        Duration::from_secs(20),
        "tandemctl into a closed pipe to end",
        || p.exited(),
    )?;
    let said = std::fs::read_to_string(&err)?;
    ensure!(
        !said.contains("panicked"),
        "tandemctl panicked writing to a closed pipe:\n{said}"
    );
    for n in names {
        let row = table
            .lines()
            .find(|l| l.contains(n))
            .with_context(|| format!("no row for {n}:\n{table}"))?;
        ensure!(row.contains("ready"), "{n}'s row: {row}");
    }

    // -o json: the API's answer, the same nodes in the same states.
    let json: Value = serde_json::from_str(&ctl_ok(&with(&["nodes", "list", "-o", "json"]), &[])?)?;
    let from_api = api.get("/v1/nodes")?;
    ensure!(
        ids_and_states(&json) == ids_and_states(&from_api) && ids_and_states(&json).len() == 2,
        "tandemctl: {json}\nAPI: {from_api}"
    );

    // nodes show NAME prints the id.
    let id_a = api.node("ctl-a").context("ctl-a")?["id"]
        .as_str()
        .context("id")?
        .to_string();
    let shown = ctl_ok(&with(&["nodes", "show", "ctl-a"]), &[])?;
    ensure!(shown.contains(&id_a) && shown.contains("ready"), "{shown}");

    // tokens create, with the endpoint and token from the environment.
    let created = ctl_ok(
        &["tokens", "create", "--uses", "3"],
        &[("TANDEM_ENDPOINT", ep), ("TANDEM_TOKEN", tk)],
    )?;
    let tdm = created
        .split_whitespace()
        .find(|w| w.starts_with("tdm1."))
        .with_context(|| format!("no token in:\n{created}"))?;
    tdm.parse::<JoinToken>()
        .with_context(|| format!("not a join token: {tdm}"))?;

    // events, with the token from a file: the joins are there.
    let token_file = tmp.path().join("admin.token");
    std::fs::write(&token_file, format!("{tk}\n"))?;
    let tf = token_file.to_str().context("utf-8")?;
    let events = ctl_ok(&["--endpoint", ep, "--token-file", tf, "events"], &[])?;
    let joins = events.lines().filter(|l| l.contains("node_joined")).count();
    ensure!(joins == 2, "two joins expected:\n{events}");
    ensure!(events.contains(&id_a), "{events}");
    let node_events = ctl_ok(
        &[
            "--endpoint",
            ep,
            "--token-file",
            tf,
            "events",
            "--node",
            "ctl-b",
            "-o",
            "json",
        ],
        &[],
    )?;
    let node_events: Value = serde_json::from_str(&node_events)?;
    let id_b = api.node("ctl-b").context("ctl-b")?["id"]
        .as_str()
        .context("id")?
        .to_string();
    let evs = node_events["events"].as_array().context("events")?;
    ensure!(
        !evs.is_empty() && evs.iter().all(|e| e["node"] == id_b.as_str()),
        "{node_events}"
    );

    // Refusals: a wrong token, no token, a node that does not exist, nobody listening.
    let o = ctl(
        &["--endpoint", ep, "--token", "wrong", "nodes", "list"],
        &[],
    )?;
    ensure!(!o.ok, "a wrong token succeeded: {}", o.stdout);
    ensure!(o.stderr.contains("unauthenticated"), "stderr: {}", o.stderr);
    let o = ctl(&["--endpoint", ep, "nodes", "list"], &[])?;
    ensure!(
        !o.ok && o.stderr.contains("no admin token"),
        "stderr: {}",
        o.stderr
    );
    let o = ctl(&with(&["nodes", "show", "no-such-node"]), &[])?;
    ensure!(
        !o.ok && o.stderr.contains("not_found") && o.stderr.contains("no-such-node"),
        "stderr: {}",
        o.stderr
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let dead = format!("http://{}", closed.local_addr()?);
    drop(closed);
    let o = ctl(&["--endpoint", &dead, "--token", tk, "nodes", "list"], &[])?;
    ensure!(
        !o.ok && o.stderr.contains("cannot reach"),
        "stderr: {}",
        o.stderr
    );
    Ok(())
}

/// The executable a running process was started from.
fn exe_of(pid: i32) -> Result<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).with_context(|| format!("/proc/{pid}/exe"))
}

/// A copy of the `tandem-coordinator` binary alone in a directory of its own (no
/// `tandem-agent` beside it): a hard link where the file system allows, else a copy.
fn lone_coordinator(tmp: &Path) -> Result<std::path::PathBuf> {
    let dir = tmp.join("alone");
    std::fs::create_dir_all(&dir)?;
    let lone = dir.join("tandem-coordinator");
    let src = bin("tandem-coordinator");
    if std::fs::hard_link(&src, &lone).is_err() {
        std::fs::copy(&src, &lone)?;
    }
    Ok(lone)
}

#[test]
fn dev_mode_runs_a_fleet_of_tandem_agents_and_stops_it_on_sigterm() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = start_dev(&bin("tandem-coordinator"), tmp.path(), 2, None)?;
    let pids = dev.agent_pids(2)?;
    let text = dev.stdout();
    ensure!(
        text.contains(dev.api.base.as_str()),
        "the admin URL is printed:\n{text}"
    );
    ensure!(
        text.contains(&dev.api.token),
        "the admin token is printed:\n{text}"
    );
    let agent = std::fs::canonicalize(bin("tandem-agent"))?;
    ensure!(
        text.contains(&format!("agents      {}", bin("tandem-agent").display())),
        "the agent binary is printed:\n{text}"
    );
    for p in &pids {
        ensure!(alive(*p), "agent {p} is not running");
        // The real agent binary beside the coordinator, not the coordinator itself.
        ensure!(exe_of(*p)? == agent, "agent {p} runs {:?}", exe_of(*p)?);
    }
    dev.stop(&pids)
}

#[test]
fn dev_mode_finds_tandem_agent_on_path() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let lone = lone_coordinator(tmp.path())?;
    let path = std::env::join_paths([tmp.path().join("empty"), bin_dir()])?;
    let dev = start_dev(&lone, tmp.path(), 1, Some(&path))?;
    let pids = dev.agent_pids(1)?;
    let agent = std::fs::canonicalize(bin("tandem-agent"))?;
    ensure!(
        exe_of(pids[0])? == agent,
        "the agent runs {:?}",
        exe_of(pids[0])?
    );
    dev.stop(&pids)
}

#[test]
fn dev_mode_without_a_tandem_agent_refuses_in_one_line() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let lone = lone_coordinator(tmp.path())?;
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty)?;
    let dir = tmp.path().join("dev");
    let (out, err) = (tmp.path().join("out"), tmp.path().join("err"));
    let mut p = Proc {
        child: Command::new(&lone)
            .args(["dev", "--admin-addr", "127.0.0.1:0", "--dir"])
            .arg(&dir)
            .env("PATH", &empty)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()?,
        log: err.clone(),
    };
    let status = wait_for(Duration::from_secs(20), "dev mode to refuse", || p.exited())?;
    let (stdout, stderr) = (
        std::fs::read_to_string(&out)?,
        std::fs::read_to_string(&err)?,
    );
    ensure!(
        !status.success(),
        "dev mode without an agent exited {status}"
    );
    ensure!(
        status.code() == Some(1),
        "not a panic or a signal: {status}\n{stderr}"
    );
    ensure!(stderr.lines().count() == 1, "one line:\n{stderr}");
    for part in ["tandem-agent", "PATH", "cargo build --release --bins"] {
        ensure!(stderr.contains(part), "says {part:?}:\n{stderr}");
    }
    ensure!(
        stderr.contains(&lone.parent().context("dir")?.display().to_string()),
        "names where it looked:\n{stderr}"
    );
    ensure!(stdout.is_empty(), "no banner:\n{stdout}");
    ensure!(!dir.exists(), "nothing is made before the refusal");
    Ok(())
}
