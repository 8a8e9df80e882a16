//! A UDP relay between agents and the coordinator that can cut the network, in one direction
//! or both, while the test runs — a partition without root.
//!
//! Agents are pointed at [`Relay::addr`] instead of the coordinator's QUIC address (the TLS
//! server name is fixed, so the coordinator's certificate still verifies). For every client
//! address the relay opens one upstream socket towards the coordinator, so the coordinator sees
//! each agent as a distinct peer, and a reconnecting agent (same local port) keeps its upstream.
//! One thread polls every socket; it stops when the relay is dropped.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Switches of a relay, shared with its thread.
#[derive(Debug, Default)]
pub struct Switches {
    /// Drop datagrams from agents to the coordinator.
    pub drop_up: AtomicBool,
    /// Drop datagrams from the coordinator to agents.
    pub drop_down: AtomicBool,
    /// Datagrams dropped so far (both directions).
    pub dropped: AtomicU64,
    /// Datagrams forwarded so far (both directions).
    pub forwarded: AtomicU64,
    stop: AtomicBool,
}

/// A running relay; stops (and joins its thread) on drop.
pub struct Relay {
    addr: SocketAddr,
    /// The switches.
    pub switches: Arc<Switches>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay on 127.0.0.1:0 forwarding to `upstream` (the coordinator's QUIC address).
    pub fn start(upstream: &str) -> Result<Relay> {
        let upstream: SocketAddr = upstream
            .parse()
            .with_context(|| format!("upstream address {upstream}"))?;
        let front = UdpSocket::bind("127.0.0.1:0")?;
        front.set_nonblocking(true)?;
        let addr = front.local_addr()?;
        let switches = Arc::new(Switches::default());
        let s = switches.clone();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{}", addr.port()))
            .spawn(move || pump(front, upstream, &s))?;
        Ok(Relay {
            addr,
            switches,
            thread: Some(thread),
        })
    }

    /// The address agents connect to (`127.0.0.1:PORT`).
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Drops (or forwards again) agent -> coordinator datagrams.
    pub fn drop_up(&self, on: bool) {
        self.switches.drop_up.store(on, Ordering::SeqCst);
    }

    /// Drops (or forwards again) coordinator -> agent datagrams.
    pub fn drop_down(&self, on: bool) {
        self.switches.drop_down.store(on, Ordering::SeqCst);
    }

    /// Cuts (or heals) both directions.
    pub fn cut(&self, on: bool) {
        self.drop_up(on);
        self.drop_down(on);
    }

    /// Datagrams forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.switches.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.switches.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The relay's loop: poll the front socket and every upstream socket, forward what arrives
/// unless its direction is cut.
fn pump(front: UdpSocket, upstream: SocketAddr, s: &Switches) {
    // client address -> its upstream socket; and the reverse by index in `ups`.
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
    let mut ups: Vec<(SocketAddr, UdpSocket)> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let count = |dropped: bool| {
        if dropped {
            s.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            s.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    };
    while !s.stop.load(Ordering::SeqCst) {
        let mut fds: Vec<libc::pollfd> = std::iter::once(front.as_raw_fd())
            .chain(ups.iter().map(|(_, u)| u.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            while let Ok((len, from)) = front.recv_from(&mut buf) {
                let i = match by_client.get(&from) {
                    Some(i) => *i,
                    None => {
                        let Ok(u) = UdpSocket::bind("127.0.0.1:0") else {
                            continue;
                        };
                        if u.set_nonblocking(true).is_err() || u.connect(upstream).is_err() {
                            continue;
                        }
                        ups.push((from, u));
                        by_client.insert(from, ups.len() - 1);
                        ups.len() - 1
                    }
                };
                let cut = s.drop_up.load(Ordering::SeqCst);
                count(cut);
                if !cut {
                    let _ = ups[i].1.send(&buf[..len]);
                }
            }
        }
        for (k, fd) in fds.iter().enumerate().skip(1) {
            if fd.revents == 0 {
                continue;
            }
            let (client, u) = &ups[k - 1];
            while let Ok(len) = u.recv(&mut buf) {
                let cut = s.drop_down.load(Ordering::SeqCst);
                count(cut);
                if !cut {
                    let _ = front.send_to(&buf[..len], client);
                }
            }
        }
    }
}
