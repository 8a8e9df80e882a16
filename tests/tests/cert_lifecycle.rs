//! End to end: node certificates renewed over the live connection, and the admin endpoint over
//! HTTPS with `tandemctl --ca-file`.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use tandem_tests::*;

const LONG: Duration = Duration::from_secs(30);

/// With 12 s certificates an agent renews at 60-70 % of the life (7-9 s after issue) over its
/// connection: the serial changes while the node stays `ready` on the same registration (no
/// new "is ready" event, `state_since` unchanged, heartbeats never late), and after the first
/// certificate has expired a restarted agent registers with the renewed one.
#[test]
fn certificates_renew_over_the_live_connection_without_a_gap() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start_with(&tmp.path().join("coord"), None, |t| {
        format!("{t}\ncert_validity_s = 12\n")
    })?;
    let token = coord.api.token(1)?;
    let state = tmp.path().join("renew-a");
    let mut agent = start_agent(&coord.quic, &state, Some(&token), "renew-a", &[])?;
    let first = wait_for(LONG, "the agent ready", || {
        let n = coord.api.node("renew-a")?;
        (n["state"] == "ready").then_some(n)
    })?;
    let s1 = first["cert_serial"].as_u64().context("serial")?;
    let since = first["state_since_ms"].clone();
    let joined_at = Instant::now();

    // Watch every 100 ms until the serial changes: the node must stay ready and beating.
    let mut worst_age = 0u64;
    let renewed: Value = wait_for(Duration::from_secs(20), "a renewed certificate", || {
        let n = coord.api.node("renew-a")?;
        worst_age = worst_age.max(n["last_heartbeat_age_ms"].as_u64().unwrap_or(u64::MAX));
        assert_eq!(
            n["state"], "ready",
            "the node left ready during renewal: {n}"
        );
        (n["cert_serial"].as_u64() != Some(s1)).then_some(n)
    })?;
    let renewed_after = joined_at.elapsed();
    let s2 = renewed["cert_serial"].as_u64().context("serial")?;
    ensure!(s2 > s1, "serial {s1} -> {s2}");
    ensure!(
        renewed["previous_cert_serial"].as_u64() == Some(s1),
        "the old serial stays accepted until the new one is used: {renewed}"
    );
    ensure!(
        renewed["state_since_ms"] == since,
        "the node registered again: {since} -> {}",
        renewed["state_since_ms"]
    );
    // The lease is 1 s: an ack gap near it would be a missed lease.
    ensure!(
        worst_age < 1000,
        "a heartbeat was {worst_age} ms late around the renewal"
    );
    let events = coord.api.events()?;
    let ready_events = events
        .iter()
        .filter(|e| {
            e["kind"] == "node_state"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("renew-a is ready"))
        })
        .count();
    ensure!(ready_events == 1, "registrations: {ready_events}");
    ensure!(
        events.iter().any(|e| e["kind"] == "certificate"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("serial {s1} -> {s2}")))),
        "no renewal event"
    );
    // The agent saves the new pair once the answer arrives (just after the coordinator's record).
    wait_for(
        Duration::from_secs(10),
        "the agent to save the renewed certificate",
        || {
            agent
                .log_text()
                .contains("certificate renewed")
                .then_some(())
        },
    )
    .with_context(|| agent.log_text())?;
    println!("renewed after {renewed_after:?}; worst heartbeat age seen {worst_age} ms");

    // Past the first certificate's expiry, a restarted agent can only get in with the new one.
    wait_for(
        Duration::from_secs(20),
        "the first certificate to expire",
        || (joined_at.elapsed() > Duration::from_secs(13)).then_some(()),
    )?;
    agent.kill9();
    let mut agent = start_agent(&coord.quic, &state, None, "renew-a", &[])?;
    let back = wait_for(LONG, "the restarted agent ready", || {
        let n = coord.api.node("renew-a")?;
        (n["state"] == "ready" && n["state_since_ms"] != since).then_some(n)
    })
    .with_context(|| agent.log_text())?;
    let s3 = back["cert_serial"].as_u64().context("serial")?;
    ensure!(s3 >= s2, "registered with serial {s3}, renewed was {s2}");
    // The first certificate is gone for good. (The restarted agent may already have renewed
    // again: the renewed certificate is past 60 % of its 12 s life by now, so the serial kept
    // as previous can be the renewed one, the connection's, but never the first.)
    ensure!(
        s3 != s1 && back["previous_cert_serial"].as_u64() != Some(s1),
        "once the new certificate is in use the old one ({s1}) is revoked: {back}"
    );
    let metrics = coord
        .api
        .request("GET", "/metrics", None, None)?
        .1
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("tandem_certificate_renewals_total ") && !l.ends_with(" 0")),
        "metrics:\n{metrics}"
    );
    agent.kill9();
    Ok(())
}

fn ctl(args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(bin("tandemctl"))
        .args(args)
        .env_remove("TANDEM_ENDPOINT")
        .env_remove("TANDEM_TOKEN")
        .env_remove("TANDEM_CA_FILE")
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `admin_tls = true`: the admin endpoint speaks HTTPS with a certificate from the
/// coordinator's CA; `tandemctl --ca-file` trusts it, nothing else does, and plain HTTP gets
/// no answer.
#[test]
fn the_admin_endpoint_over_https_with_the_ca_file() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("coord");
    let coord = Coordinator::start_with(&dir, None, |t| {
        t.replace("admin_tls = false", "admin_tls = true")
    })?;
    let endpoints: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("endpoints.json"))?)?;
    let url = endpoints["admin_url"].as_str().context("admin_url")?;
    ensure!(url.starts_with("https://"), "{url}");
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().context("utf-8")?;
    let token = &coord.api.token;

    let (ok, out, err) = ctl(&[
        "--endpoint",
        url,
        "--token",
        token,
        "--ca-file",
        ca,
        "tokens",
        "create",
        "--uses",
        "1",
    ])?;
    ensure!(ok, "tandemctl over HTTPS failed:\n{out}\n{err}");
    ensure!(out.contains("tdm1."), "{out}");
    let (ok, out, err) = ctl(&[
        "--endpoint",
        url,
        "--token",
        token,
        "--ca-file",
        ca,
        "nodes",
        "list",
    ])?;
    ensure!(ok, "{out}\n{err}");

    // Without the CA file the certificate is not trusted: a clear refusal, not a hang.
    let (ok, _, err) = ctl(&["--endpoint", url, "--token", token, "nodes", "list"])?;
    ensure!(!ok, "an untrusted certificate was accepted");
    ensure!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("tls"),
        "{err}"
    );
    // A CA file without a certificate is refused before anything is sent.
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate")?;
    let (ok, _, err) = ctl(&[
        "--endpoint",
        url,
        "--token",
        token,
        "--ca-file",
        junk.to_str().context("utf-8")?,
        "nodes",
        "list",
    ])?;
    ensure!(!ok && err.contains("CA file"), "{err}");
    // Plain HTTP to the HTTPS port gets no API answer.
    let plain = url.replacen("https://", "http://", 1);
    let (ok, _, err) = ctl(&["--endpoint", &plain, "--token", token, "nodes", "list"])?;
    ensure!(!ok, "plain HTTP was answered");
    ensure!(!err.is_empty());
    // The coordinator logged the refused handshake with the peer.
    wait_for(
        Duration::from_secs(10),
        "the refused handshake in the log",
        || {
            coord
                .proc
                .log_text()
                .contains("admin endpoint refused a connection")
                .then_some(())
        },
    )?;
    Ok(())
}
