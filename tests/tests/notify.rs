//! Both daemons speak systemd's notify protocol: READY=1 once serving, STATUS= lines that say
//! the link state, and WATCHDOG=1 at half of WATCHDOG_USEC from their main loops.

use anyhow::Result;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tandem_tests::*;

/// Collects notify messages on a socket for up to `dur`, until `done` says enough.
fn collect(
    sock: &UnixDatagram,
    dur: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + dur;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < deadline && !done(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn agent_and_coordinator_notify_systemd() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let token = coord.api.token(1)?;

    let path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path)?;
    let state = tmp.path().join("agent");
    std::fs::create_dir_all(&state)?;
    let child = Command::new(bin("tandem-agent"))
        .args([
            "run",
            "--state-dir",
            state.to_str().unwrap(),
            "--coordinator",
            &coord.quic,
            "--name",
            "notify-a",
            "--token",
            &token,
        ])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("agent.log"))?)
        .spawn()?;
    let _agent = Proc {
        child,
        log: tmp.path().join("agent.log"),
    };
    let msgs = collect(&sock, Duration::from_secs(20), |m| {
        m.iter().filter(|s| s.contains("WATCHDOG=1")).count() >= 3
            && m.iter().any(|s| s.contains("STATUS=connected to"))
    });
    assert!(msgs.iter().any(|m| m.contains("READY=1")), "{msgs:?}");
    assert!(
        msgs.iter()
            .any(|m| m.contains("STATUS=connected to") && m.contains("lease 1.0 s")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{msgs:?}"
    );

    // A wedged main loop stops feeding the watchdog (systemd would then restart the unit).
    let wpath = tmp.path().join("wedge.sock");
    let wsock = UnixDatagram::bind(&wpath)?;
    let wstate = tmp.path().join("wedge-agent");
    std::fs::create_dir_all(&wstate)?;
    let token2 = coord.api.token(1)?;
    let child = Command::new(bin("tandem-agent"))
        .args([
            "run",
            "--state-dir",
            wstate.to_str().unwrap(),
            "--coordinator",
            &coord.quic,
            "--name",
            "wedge-a",
            "--token",
            &token2,
        ])
        .env("NOTIFY_SOCKET", &wpath)
        .env("WATCHDOG_USEC", "200000")
        .env("TANDEM_TEST_WEDGE_AFTER_MS", "1500")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("wedge.log"))?)
        .spawn()?;
    let _wedged = Proc {
        child,
        log: tmp.path().join("wedge.log"),
    };
    // Pings while healthy ...
    let before = collect(&wsock, Duration::from_secs(20), |m| {
        m.iter().filter(|s| s.contains("WATCHDOG=1")).count() >= 3
    });
    assert!(
        before.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{before:?}"
    );
    // ... none once wedged: wait for the wedge to be logged, then listen for a while.
    wait_for(Duration::from_secs(20), "the wedge", || {
        std::fs::read_to_string(tmp.path().join("wedge.log"))
            .ok()?
            .contains("wedging the main loop")
            .then_some(())
    })?;
    // Drop what was sent before the wedge, then listen.
    wsock.set_nonblocking(true)?;
    let mut buf = [0u8; 4096];
    while wsock.recv(&mut buf).is_ok() {}
    wsock.set_nonblocking(false)?;
    let after = collect(&wsock, Duration::from_millis(1000), |_| false);
    assert!(
        after.iter().all(|m| !m.contains("WATCHDOG=1")),
        "pings went on after the wedge: {after:?}"
    );

    // The coordinator: READY=1 with its status once it serves.
    let cpath = tmp.path().join("coord-notify.sock");
    let csock = UnixDatagram::bind(&cpath)?;
    let dir = tmp.path().join("coord2");
    let out = Command::new(bin("tandem-coordinator"))
        .args([
            "init",
            "--data-dir",
            dir.to_str().unwrap(),
            "--admin-addr",
            "127.0.0.1:0",
            "--quic-addr",
            "127.0.0.1:0",
        ])
        .output()?;
    assert!(out.status.success());
    let child = Command::new(bin("tandem-coordinator"))
        .args(["serve", "--data-dir", dir.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &cpath)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _c = Proc {
        child,
        log: dir.join("none"),
    };
    let msgs = collect(&csock, Duration::from_secs(20), |m| {
        m.iter().filter(|s| s.contains("WATCHDOG=1")).count() >= 2
    });
    assert!(
        msgs.iter()
            .any(|m| m.contains("READY=1") && m.contains("STATUS=serving")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "{msgs:?}"
    );
    Ok(())
}
