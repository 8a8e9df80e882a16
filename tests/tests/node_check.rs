//! End to end: `tandem-agent check` with the real binaries. Each failing step (a port where
//! nothing answers, a wrong CA pin, an expired, used-up and revoked token, a cluster that is
//! gone, a node under the cluster's minimums or of another model in an `ha_pairs` cluster),
//! bad input, and a successful run that spends no use of the token (read back through the
//! admin API). A revoked token also admits no real join.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// `tandem-agent check ... -o json`: its exit code and report.
fn check(coord: &str, token: &str, extra: &[&str]) -> Result<(i32, Value)> {
    let mut args = vec![
        "check",
        "--coordinator",
        coord,
        "--token",
        token,
        "--bind-addr",
        "127.0.0.1",
        "-o",
        "json",
    ];
    args.extend(extra);
    let o = agent_cmd(&args, LONG)?;
    let v: Value = serde_json::from_str(&o.stdout)
        .with_context(|| format!("check's output:\n{}\n{}", o.stdout, o.stderr))?;
    Ok((o.code.context("check was killed")?, v))
}

/// Asserts that step `step` failed with a reason containing `words`, and the exit code says so.
fn failed_at(r: &(i32, Value), step: u64, words: &str) -> Result<()> {
    let (code, v) = r;
    ensure!(
        *code == 10 + step as i32 && v["failed_step"] == step,
        "expected step {step} to fail (exit {}): {v:#}",
        10 + step
    );
    let s = &v["steps"][(step - 1) as usize];
    ensure!(
        s["status"] == "failed" && s["detail"].as_str().unwrap_or("").contains(words),
        "step {step} should fail with `{words}`: {v:#}"
    );
    for later in v["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(step as usize)
    {
        ensure!(
            later["status"] == "skipped",
            "later steps are skipped: {v:#}"
        );
    }
    Ok(())
}

fn token_for(api: &Api, body: Value) -> Result<(String, String)> {
    let v = api.post("/v1/join-tokens", &body)?;
    Ok((
        v["token"].as_str().context("token")?.to_string(),
        v["id"].as_str().context("id")?.to_string(),
    ))
}

fn token_view(api: &Api, id: &str) -> Result<Value> {
    api.get("/v1/join-tokens")?["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["id"] == id)
        .cloned()
        .with_context(|| format!("token {id} listed"))
}

fn create_cluster(api: &Api, body: Value) -> Result<()> {
    let (s, v) = api.send("POST", "/v1/clusters", Some(&body))?;
    ensure!(s == 201, "creating a cluster: {s} {v}");
    if let Some(op) = v["operation_id"].as_str() {
        wait_for(LONG, "the cluster's create operation", || {
            let o = api.get(&format!("/v1/operations/{op}")).ok()?;
            (o["state"] != "pending").then_some(())
        })?;
    }
    Ok(())
}

#[test]
fn every_step_of_check_fails_for_its_own_reason_and_a_good_check_spends_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let api = &coord.api;
    let q = coord.quic.as_str();

    // A good token, checked: every step ok, and the token's uses are unchanged.
    let (good, good_id) = token_for(api, json!({"ttl_s": 600, "uses": 2}))?;
    let (code, v) = check(q, &good, &["--name", "fresh"])?;
    ensure!(code == 0 && v["ok"] == true, "a good check passes: {v:#}");
    ensure!(
        v["steps"].as_array().map(Vec::len) == Some(6)
            && v["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|s| s["status"] == "ok"),
        "six steps, all ok: {v:#}"
    );
    let t = token_view(api, &good_id)?;
    ensure!(
        t["uses"] == 0 && t["state"] == "active",
        "a check spends no use: {t}"
    );
    ensure!(api.nodes()?.is_empty(), "a check records no node");
    // The table for people says the same.
    let o = agent_cmd(
        &[
            "check",
            "--coordinator",
            q,
            "--token",
            &good,
            "--name",
            "fresh",
        ],
        LONG,
    )?;
    ensure!(
        o.code == Some(0) && o.stdout.lines().filter(|l| l.contains(" ok ")).count() == 6,
        "table: {}",
        o.stdout
    );

    // 3: a token whose pin is another CA's.
    let mut parts: Vec<&str> = good.split('.').collect();
    let other_pin = "ab".repeat(32);
    parts[3] = &other_pin;
    failed_at(
        &check(q, &parts.join("."), &[])?,
        3,
        "does not match the token's pin",
    )?;

    // 4: a wrong secret, a revoked, an expired and a used-up token.
    let mut parts: Vec<&str> = good.split('.').collect();
    let other_secret = "A".repeat(43);
    parts[2] = &other_secret;
    failed_at(&check(q, &parts.join("."), &[])?, 4, "not valid")?;

    let (revoked, revoked_id) = token_for(api, json!({"ttl_s": 600, "uses": 5}))?;
    let out = tandemctl_ok(api, &["tokens", "revoke", &revoked_id])?;
    ensure!(out.contains("revoked"), "tandemctl tokens revoke: {out}");
    ensure!(token_view(api, &revoked_id)?["state"] == "revoked");
    let (s, v) = api.send("DELETE", "/v1/join-tokens/0123456789abcdef", None)?;
    ensure!(
        s == 404 && v["error"]["code"] == "not_found",
        "unknown id: {s} {v}"
    );
    failed_at(&check(q, &revoked, &[])?, 4, "revoked")?;
    let list = tandemctl_ok(api, &["tokens", "list"])?;
    ensure!(
        list.contains(&revoked_id) && list.contains("revoked"),
        "{list}"
    );

    let (expired, expired_id) = token_for(api, json!({"ttl_s": 1, "uses": 5}))?;
    wait_for(LONG, "the token to expire", || {
        (token_view(api, &expired_id).ok()?["state"] == "expired").then_some(())
    })?;
    failed_at(&check(q, &expired, &[])?, 4, "expired")?;

    let (once, once_id) = token_for(api, json!({"ttl_s": 600, "uses": 1}))?;
    let mut first = start_agent(q, &tmp.path().join("first"), Some(&once), "first", &[])?;
    wait_for(LONG, "first ready", || {
        api.node("first").filter(|n| n["state"] == "ready")
    })?;
    ensure!(token_view(api, &once_id)?["uses"] == 1);
    failed_at(&check(q, &once, &["--name", "second"])?, 4, "used up")?;
    first.kill9();

    // A real join with the revoked token is refused too, and the agent says why.
    let mut refused = start_agent(q, &tmp.path().join("r"), Some(&revoked), "r", &[])?;
    wait_for(LONG, "the agent with a revoked token to stop", || {
        refused.exited()
    })?;
    ensure!(
        refused.log_text().contains("revoked"),
        "{}",
        refused.log_text()
    );
    ensure!(api.node("r").is_none(), "a revoked token admitted a node");

    // 5: a cluster that is gone.
    create_cluster(api, json!({"name": "gone", "mode": "pool"}))?;
    let (gone, _) = token_for(api, json!({"uses": 3, "cluster": "gone"}))?;
    let (s, v) = api.send("DELETE", "/v1/clusters/gone", None)?;
    ensure!((200..300).contains(&s), "deleting the cluster: {s} {v}");
    wait_for(LONG, "the cluster to be gone", || {
        api.get("/v1/clusters/gone").is_err().then_some(())
    })?;
    failed_at(&check(q, &gone, &[])?, 5, "no longer exists")?;

    // 6: under the cluster's minimum memory (1 PiB), and another model than an ha_pairs
    // cluster's first node.
    create_cluster(
        api,
        json!({"name": "big", "mode": "pool", "min_node": {"cores": 1, "memory_bytes": 1u64 << 50}}),
    )?;
    let (big, _) = token_for(api, json!({"uses": 3, "cluster": "big"}))?;
    failed_at(&check(q, &big, &["--name", "small"])?, 6, "needs at least")?;

    create_cluster(api, json!({"name": "pairs", "mode": "ha_pairs"}))?;
    let (pairs, _) = token_for(api, json!({"uses": 3, "cluster": "pairs"}))?;
    let l4 = fixture("gpus-2x-l4.json");
    let h100 = fixture("gpus-8x-h100.json");
    let (l4, h100) = (
        l4.to_str().context("utf-8")?,
        h100.to_str().context("utf-8")?,
    );
    let (code, v) = check(q, &pairs, &["--name", "p1", "--gpu-fixture", l4])?;
    ensure!(
        code == 0,
        "the first node of an ha_pairs cluster fits: {v:#}"
    );
    let _p1 = start_agent(
        q,
        &tmp.path().join("p1"),
        Some(&pairs),
        "p1",
        &["--gpu-fixture", l4],
    )?;
    wait_for(LONG, "p1 ready", || {
        api.node("p1").filter(|n| n["state"] == "ready")
    })?;
    failed_at(
        &check(q, &pairs, &["--name", "p2", "--gpu-fixture", h100])?,
        6,
        "is model",
    )?;
    let (code, v) = check(q, &pairs, &["--name", "p2", "--gpu-fixture", l4])?;
    ensure!(code == 0, "the same model fits: {v:#}");
    // A name in use is refused as a join would refuse it.
    failed_at(
        &check(q, &pairs, &["--name", "p1", "--gpu-fixture", l4])?,
        6,
        "already used",
    )?;

    // With the node's identity instead of a token: its certificate is still accepted.
    let o = agent_cmd(
        &[
            "check",
            "--coordinator",
            q,
            "--state-dir",
            tmp.path().join("p1").to_str().context("utf-8")?,
            "-o",
            "json",
        ],
        LONG,
    )?;
    let v: Value = serde_json::from_str(&o.stdout).with_context(|| o.stderr.clone())?;
    ensure!(
        o.code == Some(0)
            && v["mode"] == "identity"
            && v["steps"][3]["detail"]
                .as_str()
                .unwrap_or("")
                .contains("accepted"),
        "identity check: {v:#}"
    );
    Ok(())
}

#[test]
fn check_names_an_unreachable_port_and_refuses_bad_input_in_one_line() -> Result<()> {
    // A UDP port where nothing answers: bound, never read.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = silent.local_addr()?.to_string();
    let pin = "cd".repeat(32);
    let token = format!("tdm1.0123456789abcdef.{}.{pin}", "A".repeat(43));
    let r = check(&addr, &token, &["--timeout-ms", "500"])?;
    failed_at(&r, 2, "no QUIC answer")?;
    ensure!(r.1["steps"][0]["status"] == "ok", "{:#}", r.1);

    // 1: an address that does not resolve.
    failed_at(
        &check("no-such-host.invalid:7443", &token, &[])?,
        1,
        "does not resolve",
    )?;

    // Bad input: one line on stderr, exit 2, no panic or backtrace.
    for (args, words) in [
        (vec!["--token", "tdm1.nope"], "malformed join token"),
        (
            vec!["--token-file", "/nonexistent/join.token"],
            "cannot read",
        ),
        (vec![], "nothing to check with"),
    ] {
        let mut a = vec!["check", "--coordinator", addr.as_str()];
        a.extend(args);
        let o = agent_cmd(&a, LONG)?;
        ensure!(
            o.code == Some(2)
                && o.stderr.trim().lines().count() == 1
                && o.stderr.contains(words)
                && !o.stderr.contains("panicked"),
            "{a:?}: exit {:?}, stderr:\n{}",
            o.code,
            o.stderr
        );
    }
    Ok(())
}
