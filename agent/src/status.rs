//! `tandem-agent status`: how the running agent stands, asked on the node itself.
//!
//! The agent serves its state on a unix socket in its state dir (`agent.sock`, mode 0600 in a
//! dir of mode 0700, so only the agent's user can open it): whoever connects gets one JSON
//! document and the socket closes. It must answer while the agent is cut off from the
//! coordinator, which is when people ask, so it never waits on the link: the link publishes a
//! plain [`Snapshot`] on a `watch` channel whenever something changes, and the server only
//! reads the latest one (no lock of the link's is ever taken, and nothing here decides
//! anything). Times in the snapshot are `Instant`s; they are turned into "remaining" and wall
//! clock values when a client asks, so the lease is seen counting down.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tandem_common::proto::HeldJob;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// The socket's file name in the state dir.
pub const SOCKET: &str = "agent.sock";

/// How many recent errors the snapshot keeps.
pub const LAST_ERRORS: usize = 10;

/// Why `status` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The socket cannot be reached: no agent runs with this state dir, or it is not ours.
    #[error("cannot reach the agent at {path}: {source} (is `tandem-agent run` running with this --state-dir, as this user?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The answer could not be read or parsed.
    #[error("the agent's answer on {path} does not read: {reason}")]
    Answer {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The socket could not be set up (the agent side).
    #[error("serving status on {path}: {source}")]
    Serve {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What the link publishes: a plain copy of its state, no handles.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The coordinator as configured.
    pub coordinator: String,
    /// The node's id and name, once joined.
    pub node: Option<(String, String)>,
    /// Whether a registered session is up.
    pub connected: bool,
    /// Since when `connected` has its value.
    pub since: Option<Instant>,
    /// The registered session.
    pub session: Option<u64>,
    /// The last beat's round trip.
    pub rtt: Option<Duration>,
    /// Until when the lease is held.
    pub lease_until: Option<Instant>,
    /// The beat whose ack gave it.
    pub lease_beat: Option<u64>,
    /// The session that acked that beat.
    pub lease_session: Option<u64>,
    /// The fence parameters of the last `Welcome`: heartbeat, lease, kill timeout (ms).
    pub fence: Option<(u32, u32, u32)>,
    /// Job copies held.
    pub jobs: Vec<HeldJob>,
    /// The last errors, newest last: when (Unix ms) and what.
    pub errors: VecDeque<(u64, String)>,
}

impl Snapshot {
    /// Records an error (keeps the last [`LAST_ERRORS`]).
    pub fn error(&mut self, what: String) {
        if self.errors.len() == LAST_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back((unix_ms(SystemTime::now()), what));
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The document a client gets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The coordinator as configured.
    pub coordinator: String,
    /// The node's id, once joined.
    pub node_id: Option<String>,
    /// The node's name, once joined.
    pub node_name: Option<String>,
    /// The link: `connected` or `disconnected`, for how long, its session and round trip.
    pub link: LinkDoc,
    /// The lease.
    pub lease: LeaseDoc,
    /// The fence parameters in force (from the coordinator's last `Welcome`).
    pub fence: Option<FenceDoc>,
    /// Job copies held.
    pub jobs: Vec<JobDoc>,
    /// How jobs are contained.
    pub containment: String,
    /// The last errors, newest last.
    pub last_errors: Vec<ErrorDoc>,
}

/// The link.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkDoc {
    /// `connected` or `disconnected`.
    pub state: String,
    /// For how long, in ms.
    pub for_ms: Option<u64>,
    /// The registered session.
    pub session: Option<u64>,
    /// The last beat's round trip, in microseconds.
    pub rtt_us: Option<u64>,
}

/// The lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseDoc {
    /// Whether it is held now.
    pub held: bool,
    /// Time left, in ms (0 when not held).
    pub remaining_ms: u64,
    /// Until when, Unix ms.
    pub until_unix_ms: Option<u64>,
    /// The beat whose ack gave it.
    pub from_beat: Option<u64>,
    /// The session that acked that beat.
    pub from_session: Option<u64>,
}

/// The fence parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FenceDoc {
    /// Beat interval.
    pub heartbeat_ms: u32,
    /// Lease per acknowledged beat.
    pub lease_ms: u32,
    /// SIGTERM to SIGKILL when the agent fences a job.
    pub kill_timeout_ms: u32,
}

/// One job copy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobDoc {
    /// The job.
    pub job_id: String,
    /// Its fencing token.
    pub fencing_token: u64,
    /// `starting` or `running`.
    pub state: String,
}

/// One error.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDoc {
    /// When, Unix ms.
    pub at_unix_ms: u64,
    /// What.
    pub error: String,
}

/// The document for `snap` at `now`.
pub fn document(snap: &Snapshot, now: Instant) -> StatusDoc {
    let wall = SystemTime::now();
    let remaining = snap
        .lease_until
        .map(|t| t.saturating_duration_since(now))
        .unwrap_or_default();
    let held = !remaining.is_zero();
    StatusDoc {
        coordinator: snap.coordinator.clone(),
        node_id: snap.node.as_ref().map(|n| n.0.clone()),
        node_name: snap.node.as_ref().map(|n| n.1.clone()),
        link: LinkDoc {
            state: if snap.connected {
                "connected"
            } else {
                "disconnected"
            }
            .into(),
            for_ms: snap
                .since
                .map(|s| now.saturating_duration_since(s).as_millis() as u64),
            session: snap.session.filter(|_| snap.connected),
            rtt_us: snap.rtt.map(|d| d.as_micros() as u64),
        },
        lease: LeaseDoc {
            held,
            remaining_ms: remaining.as_millis() as u64,
            until_unix_ms: held.then(|| unix_ms(wall + remaining)),
            from_beat: snap.lease_beat.filter(|_| held),
            from_session: snap.lease_session.filter(|_| held),
        },
        fence: snap.fence.map(|(h, l, k)| FenceDoc {
            heartbeat_ms: h,
            lease_ms: l,
            kill_timeout_ms: k,
        }),
        jobs: snap
            .jobs
            .iter()
            .map(|j| JobDoc {
                job_id: j.job_id.clone(),
                fencing_token: j.fencing_token,
                state: match j.state {
                    tandem_common::proto::HeldState::Starting => "starting",
                    tandem_common::proto::HeldState::Running => "running",
                }
                .into(),
            })
            .collect(),
        containment: crate::containment::running_mode().name().into(),
        last_errors: snap
            .errors
            .iter()
            .map(|(at, e)| ErrorDoc {
                at_unix_ms: *at,
                error: e.clone(),
            })
            .collect(),
    }
}

/// Binds the socket in `state_dir` (made 0700; the socket 0600) and serves snapshots until the
/// task is dropped. A stale socket of a previous run is replaced.
pub fn serve(
    state_dir: &Path,
    snapshots: watch::Receiver<Snapshot>,
) -> Result<tokio::task::JoinHandle<()>, StatusError> {
    use std::os::unix::fs::PermissionsExt;
    let path = state_dir.join(SOCKET);
    let err = |source| StatusError::Serve {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let doc = document(&snapshots.borrow(), Instant::now());
            let body = serde_json::to_vec(&doc).unwrap_or_default();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            });
        }
    }))
}

/// Asks the agent of `state_dir` (the client side of `tandem-agent status`).
pub fn ask(state_dir: &Path) -> Result<StatusDoc, StatusError> {
    use std::io::Read;
    let path = state_dir.join(SOCKET);
    let mut s =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| StatusError::Connect {
            path: path.clone(),
            source,
        })?;
    let answer = |reason: String| StatusError::Answer {
        path: path.clone(),
        reason,
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| answer(e.to_string()))?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)
        .map_err(|e| answer(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| answer(e.to_string()))
}

/// For people.
pub fn render_table(d: &StatusDoc) -> String {
    let mut o = String::new();
    let node = match (&d.node_name, &d.node_id) {
        (Some(n), Some(id)) => format!("{n} ({id})"),
        _ => "not joined yet".into(),
    };
    o.push_str(&format!("node:         {node}\n"));
    let rtt = d
        .link
        .rtt_us
        .map(|u| format!(", round trip {:.1} ms", u as f64 / 1000.0))
        .unwrap_or_default();
    let since = d
        .link
        .for_ms
        .map(|m| format!(" for {:.1} s", m as f64 / 1000.0))
        .unwrap_or_default();
    let session = d
        .link
        .session
        .map(|s| format!(", session {s}"))
        .unwrap_or_default();
    o.push_str(&format!(
        "coordinator:  {} {}{since}{session}{rtt}\n",
        d.coordinator, d.link.state
    ));
    if d.lease.held {
        o.push_str(&format!(
            "lease:        held, {} ms left (from beat {}, session {})\n",
            d.lease.remaining_ms,
            d.lease.from_beat.map(|b| b.to_string()).unwrap_or_default(),
            d.lease
                .from_session
                .map(|b| b.to_string())
                .unwrap_or_default()
        ));
    } else {
        o.push_str("lease:        not held (no job may run)\n");
    }
    match &d.fence {
        Some(f) => o.push_str(&format!(
            "fence:        heartbeat {} ms, lease {} ms, kill timeout {} ms\n",
            f.heartbeat_ms, f.lease_ms, f.kill_timeout_ms
        )),
        None => o.push_str("fence:        not known yet (no Welcome since the agent started)\n"),
    }
    o.push_str(&format!("containment:  {}\n", d.containment));
    o.push_str(&format!("jobs:         {}\n", d.jobs.len()));
    for j in &d.jobs {
        o.push_str(&format!(
            "  {}  token {}  {}\n",
            j.job_id, j.fencing_token, j.state
        ));
    }
    o.push_str(&format!("last errors:  {}\n", d.last_errors.len()));
    for e in &d.last_errors {
        o.push_str(&format!(
            "  {}  {}\n",
            tandem_common::time::rfc3339(e.at_unix_ms),
            e.error
        ));
    }
    o
}
