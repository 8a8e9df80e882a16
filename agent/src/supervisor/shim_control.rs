//! The shim's control channels: the lines on its stdin (from the agent that started it) and
//! its control socket (`CONTROL_SOCKET` in the job dir), through which a new agent run
//! re-adopts it (see `super::adopt`). Threads that turn each into [`Event`]s for the shim's
//! main thread, which alone decides; a socket connection's lines count only while it is the
//! newest (its generation), so the agent that adopted the shim last is the one it follows.

use super::protocol::*;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// What the shim's main thread hears.
pub(super) enum Event {
    Command(ShimCommand),
    BadLine(String),
    StdinClosed,
    Signal(i32),
    LeaderExited,
    /// A new agent connected to the control socket (it re-adopts this shim).
    Controller(UnixStream),
    /// A line from the controller of this generation.
    SocketCommand(u64, ShimCommand),
    /// A bad line from the controller of this generation.
    SocketBadLine(u64, String),
    /// The controller of this generation went away.
    SocketClosed(u64),
}

/// Binds the control socket at `path` (a stale one of an earlier shim is replaced), mode 0600.
pub(super) fn listen(path: &Path) -> io::Result<UnixListener> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Hands every connection to the control socket to the main thread.
pub(super) fn accept_thread(listener: UnixListener, tx: mpsc::Sender<Event>) {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            match stream {
                // Only the agent's user (the file's mode already says so; this says it again
                // where the socket's dir was opened up by mistake).
                Ok(s) if peer_uid(&s) != Some(me) => {
                    tracing::warn!(uid = ?peer_uid(&s), "refused a control connection from another user");
                }
                Ok(s) => {
                    if tx.send(Event::Controller(s)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    });
}

/// The uid of the process on the other end of `s` (`SO_PEERCRED`).
fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a valid ucred.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// Sends the greeting on a new control connection and starts reading its lines.
pub(super) fn greet(
    stream: &UnixStream,
    hello: &ShimHello,
    generation: u64,
    tx: mpsc::Sender<Event>,
) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    (&*stream).write_all(hello.to_line().as_bytes())?;
    let reader = stream.try_clone()?;
    std::thread::spawn(move || {
        read_lines(
            reader,
            |c| Event::SocketCommand(generation, c),
            |e| Event::SocketBadLine(generation, e),
            &tx,
        );
        let _ = tx.send(Event::SocketClosed(generation));
    });
    Ok(())
}

/// Reads command lines from `from` until EOF, each as `ok` or `bad` says.
fn read_lines(
    from: impl Read,
    ok: impl Fn(ShimCommand) -> Event,
    bad: impl Fn(String) -> Event,
    tx: &mpsc::Sender<Event>,
) {
    let mut input = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) if line.last() != Some(&b'\n') && line.len() > MAX_LINE => {
                // Too long: drop it up to its newline.
                let mut rest = Vec::new();
                let _ = input.read_until(b'\n', &mut rest);
                let _ = tx.send(bad("line too long".into()));
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let ev = match ShimCommand::parse(&text) {
                    Ok(c) => ok(c),
                    Err(e) => bad(e),
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        }
    }
}

pub(super) fn stdin_thread(tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        read_lines(io::stdin(), Event::Command, Event::BadLine, &tx);
        let _ = tx.send(Event::StdinClosed);
    });
}
