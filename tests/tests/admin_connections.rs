//! End to end: what the admin endpoint does with connections, against a real coordinator:
//! deadlines on request heads and bodies, and limits on connections held.
//!
//! For the limits, loopback has a whole /8, so each "client" here is its own source address (127.0.0.1, .2,
//! ...), as separate machines would be. A connection counts as held once a request on it has
//! been answered 200 and it is kept open (keep-alive); one over a limit is answered 429
//! `resource_exhausted`, with the limit it hit, and closed.

use anyhow::{ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tandem_tests::*;

const T: Duration = Duration::from_secs(10);

/// A TCP connection to `admin` from the source address `from`.
fn connect_from(from: IpAddr, admin: SocketAddr) -> Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect_timeout(&admin.into(), T)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(T))?;
    Ok(s)
}

/// Sends `GET path` on `s` and reads the answer whole: its status and its body.
fn get(s: &mut TcpStream, path: &str) -> Result<(u16, String)> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
    let (head, body) = read_http_answer(s).context("the connection ended before a whole answer")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("a status")?;
    Ok((status, body))
}

/// Waits until the coordinator has logged a refused connection from `peer`.
fn refusal_logged(coord: &Coordinator, peer: IpAddr) -> Result<()> {
    let peer = format!("peer={peer}:");
    wait_for(T, "the refusals in the log, with the peer", || {
        coord
            .proc
            .log_text()
            .lines()
            .any(|l| l.contains("admin endpoint refused a connection") && l.contains(&peer))
            .then_some(())
    })
}

/// A connection from `from` that the coordinator holds: its request was answered 200 and it
/// stays open. Retried within a deadline, since a slot given back a moment ago is released
/// just after the client saw its connection close.
fn held(from: IpAddr, admin: SocketAddr) -> Result<TcpStream> {
    wait_for(T, &format!("a held connection from {from}"), || {
        let mut s = connect_from(from, admin).ok()?;
        matches!(get(&mut s, "/healthz"), Ok((200, _))).then_some(s)
    })
}

/// A connection from `from` over a limit: answered 429 with the envelope, then closed.
fn refused(from: IpAddr, admin: SocketAddr) -> Result<String> {
    let mut s = connect_from(from, admin)?;
    let (status, body) = get(&mut s, "/healthz")?;
    ensure!(
        status == 429,
        "a connection over the limit got {status}: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(v["error"]["code"] == "resource_exhausted", "{body}");
    // Closed after the answer, although the request did not ask for it.
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest)?;
    ensure!(
        n == 0,
        "more after the refusal: {:?}",
        String::from_utf8_lossy(&rest)
    );
    Ok(v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// `coordinator.toml` (as `init` wrote it, every key on its own line) with `keys` set to
/// new values.
fn set(toml: &str, keys: &[(&str, &str)]) -> String {
    toml.lines()
        .map(|l| {
            let key = l.split(' ').next().unwrap_or_default();
            match keys.iter().find(|(k, _)| *k == key) {
                Some((k, v)) => format!("{k} = {v}"),
                None => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[test]
fn a_client_over_its_share_or_the_endpoint_over_its_total_is_refused_and_nobody_else_is_harmed(
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start_with(&tmp.path().join("coord"), None, |t| {
        set(
            t,
            &[
                ("admin_max_connections", "6"),
                ("admin_max_connections_per_client", "4"),
            ],
        )
    })?;
    let admin: SocketAddr = coord.api.base.trim_start_matches("http://").parse()?;

    // One client takes its share.
    let mut mine = Vec::new();
    for _ in 0..4 {
        mine.push(held(ip(1), admin)?);
    }
    let why = refused(ip(1), admin)?;
    ensure!(
        why.contains("127.0.0.1") && why.contains("admin_max_connections_per_client"),
        "{why}"
    );
    // Its held connections still work, and another client is served.
    ensure!(get(&mut mine[0], "/healthz")?.0 == 200);
    let mut other = held(ip(2), admin)?;

    // The endpoint reaches its total (4 + 1 + 1): everyone new is refused, with that reason.
    let third = held(ip(3), admin)?;
    let why = refused(ip(4), admin)?;
    ensure!(
        why.contains("holds 6 connections") && why.contains("admin_max_connections"),
        "{why}"
    );
    ensure!(
        get(&mut other, "/healthz")?.0 == 200,
        "a held connection of another client still works"
    );

    // Given back, the slots serve again.
    drop(mine);
    drop(third);
    let mut again = held(ip(1), admin)?;
    let (_, metrics) = get(&mut again, "/metrics")?;
    let refusals = metric(&metrics, "tandem_admin_connections_refused_total")?;
    ensure!(refusals >= 2, "{refusals} refusals counted\n{metrics}");
    let held_now = metric(&metrics, "tandem_admin_connections")?;
    ensure!((2..=6).contains(&held_now), "{held_now} connections held");
    refusal_logged(&coord, ip(4))?;
    Ok(())
}

fn metric(text: &str, name: &str) -> Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("{name} in\n{text}"))
}

#[test]
fn an_admin_request_whose_body_never_comes_is_answered_and_closed_in_bounded_time() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let admin: SocketAddr = coord.api.base.trim_start_matches("http://").parse()?;
    let mut s = TcpStream::connect_timeout(&admin, T)?;
    // Longer than the server's bound, so a server that waits for ever fails the read.
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(
        format!(
            "POST /v1/join-tokens HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"ttl_s\""
        )
        .as_bytes(),
    )?;
    let began = Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    ensure!(
        text.starts_with("HTTP/1.1 408") && text.to_ascii_lowercase().contains("connection: close"),
        "after {:?} without the rest of the body: {text:?}",
        began.elapsed()
    );
    ensure!(text.contains("did not arrive within 10 s"), "{text}");
    // The server closed the connection (read_to_end returned), and still answers others.
    ensure!(coord.api.get("/healthz")?["status"] == "ok");
    Ok(())
}

#[test]
fn an_admin_request_head_that_never_ends_or_an_idle_connection_is_closed_in_bounded_time(
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let admin: SocketAddr = coord.api.base.trim_start_matches("http://").parse()?;
    let mut conns = Vec::new();
    for head in [&b"GET /healthz HTTP/1.1\r\nHost: x\r\n"[..], b""] {
        let mut s = TcpStream::connect_timeout(&admin, T)?;
        // Longer than the server's bound (30 s), so a server that waits for ever fails.
        s.set_read_timeout(Some(Duration::from_secs(45)))?;
        s.write_all(head)?;
        conns.push(s);
    }
    let began = Instant::now();
    for (i, mut s) in conns.into_iter().enumerate() {
        let mut buf = [0u8; 256];
        let r = s.read(&mut buf);
        ensure!(
            r.as_ref()
                .is_ok_and(|n| *n == 0 || buf.starts_with(b"HTTP/1.1 408")),
            "connection {i} (a half head, then nothing at all) after {:?}: {r:?}",
            began.elapsed()
        );
    }
    ensure!(coord.api.get("/healthz")?["status"] == "ok");
    Ok(())
}

/// Over HTTPS, a client that opens connections and never starts its TLS handshake holds at
/// most its share of the handshake slots: the rest of its connections are closed at once, and
/// another client is served without waiting for them to time out (before, 300 such connections
/// took all 256 slots, and everyone else waited 10 s for the first handshake deadline).
#[test]
fn over_https_a_client_that_never_says_hello_holds_only_its_share_of_the_handshakes() -> Result<()>
{
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("coord");
    let coord = Coordinator::start_with(&dir, None, |t| {
        set(
            t,
            &[
                ("admin_tls", "true"),
                ("admin_max_connections_per_client", "3"),
            ],
        )
    })?;
    let endpoints: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("endpoints.json"))?)?;
    let url = endpoints["admin_url"].as_str().context("admin_url")?;
    let admin: SocketAddr = endpoints["admin"].as_str().context("admin")?.parse()?;

    // 300 connections from 127.0.0.2 that say nothing.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(connect_from(ip(2), admin)?);
    }
    // Another client (tandemctl, from 127.0.0.1) is served at once.
    let began = Instant::now();
    let ca = dir.join("ca.pem");
    let out = std::process::Command::new(bin("tandemctl"))
        .args(["--endpoint", url, "--token", &coord.api.token, "--ca-file"])
        .arg(&ca)
        .args(["nodes", "list"])
        .env_remove("TANDEM_ENDPOINT")
        .env_remove("TANDEM_TOKEN")
        .env_remove("TANDEM_CA_FILE")
        .output()?;
    let took = began.elapsed();
    ensure!(
        out.status.success(),
        "tandemctl over HTTPS beside 300 silent connections failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        took < Duration::from_secs(5),
        "served only after {took:?}: the silent connections held the handshake slots"
    );
    // All but three of the silent connections were closed, without a handshake.
    let mut closed = 0;
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        if matches!(s.read(&mut [0u8; 16]), Ok(0)) {
            closed += 1;
        }
    }
    ensure!(
        closed >= 297,
        "{closed} of 300 silent connections were closed"
    );
    refusal_logged(&coord, ip(2))?;
    Ok(())
}
