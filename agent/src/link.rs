//! The agent's link to the coordinator: join, register, heartbeat, reconnect.
//!
//! One connection at a time. A new node first connects *without* a client certificate, pinning
//! the coordinator's CA by the hash carried in its join token (so the token's secret is never
//! sent to an impostor), and trades the token and a CSR for a certificate. From then on it
//! connects with that certificate and needs no token. After `Welcome`, it beats every
//! `heartbeat_ms` on QUIC datagrams (or a uni stream where the path has none) and holds its
//! lease as the `lease` module describes; the lease is published on a `watch` channel for the
//! code that runs jobs.
//!
//! Jobs (`jobs`) start once the first `Welcome` gives the fence kill timeout; every later
//! `Welcome` applies it again. Each `Hello` lists every copy held (starts in progress too) and
//! every exit the coordinator has not acknowledged, kept on disk by `crate::exits`, so a broken
//! link or a restart loses no exit; one registered session's loop is in `session`.
//!
//! Failures are retried with capped exponential backoff and full jitter, so a fleet that lost
//! its coordinator does not reconnect in lock-step. Refusals that cannot get better by retrying
//! (a bad join token, a node that was removed) end the agent with the coordinator's reason.
//! The steps that need no agent state (connect, the `Hello`s, sorting answers, the backoff)
//! are in `handshake`, public, so that tandem-swarm's simulated agents run them too.

use crate::config::Config;
use crate::exits::{split_for_message, ExitOutbox, ExitsError, MESSAGE_BUDGET};
use crate::identity::Identity;
use crate::lease::Lease;
use crate::supervisor::Supervisor;
use handshake::{Backoff, Failure};
use jobs::{Ended, Jobs};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_common::hardware::HardwareReport;
use tandem_common::pki::NodeKey;
use tandem_common::proto::*;
use tandem_common::tls;
use tokio::sync::watch;

pub mod handshake;
mod jobs;
mod session;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The coordinator refused us in a way retrying cannot fix.
    #[error("the coordinator refused this node ({code:?}): {reason}")]
    Refused {
        /// The refusal's kind.
        code: RejectCode,
        /// The coordinator's reason.
        reason: String,
    },
    /// The node has no certificate yet and no join token was given.
    #[error("this node has not joined yet (no identity in {0}) and no join token was given: pass --token or --token-file")]
    NoIdentity(String),
    /// Local I/O failed (state dir, socket).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// Keys, certificates or TLS setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The unacknowledged job exits cannot be kept (the exits dir).
    #[error("job exits: {0}")]
    Exits(#[from] ExitsError),
    /// Another agent runs with this state dir, or it cannot be locked.
    #[error(transparent)]
    StateDir(#[from] crate::statelock::StateLockError),
}

pub use crate::lease::LeaseView;

/// How a session ended when it can be retried.
enum Retry {
    /// Right away (we just joined and have a certificate now).
    Now,
    /// After backoff, for this reason.
    Later(String),
}

const REVOKED: &str = "the coordinator refused this node's certificate as revoked: the node was removed; delete the agent's state dir and join again with a new token";

/// The agent's link.
pub struct Link {
    cfg: Config,
    endpoint: quinn::Endpoint,
    lease: Lease,
    lease_tx: watch::Sender<LeaseView>,
    reports: watch::Receiver<HardwareReport>,
    /// Heartbeat sequence numbers grow across sessions, so an ack can never be matched to a
    /// beat of an older connection.
    seq: u64,
    /// systemd's watchdog, pinged from this loop only.
    watchdog: tandem_common::notify::Watchdog,
    /// Runs jobs; made once the node knows its id and the fencing kill timeout.
    jobs: Option<Jobs>,
    /// How the supervisor contains jobs (decided once at start).
    containment: Arc<crate::containment::Containment>,
    /// When to renew the certificate over the live connection.
    renewal: crate::renewal::Renewal,
    /// Job exits not acknowledged yet, on disk: each is kept before it is sent, and every
    /// `Hello` and `JobsHeld` carries them all.
    exits: ExitOutbox,
    /// Exits the outbox refused to keep (see `keep_exits`) while no session ran: sent once
    /// when the next session starts.
    unkept: Vec<JobExitReport>,
    /// The session whose ack extended the lease last.
    lease_session: Option<u64>,
    /// What `tandem-agent status` shows, published for its server (`crate::status`).
    status: watch::Sender<crate::status::Snapshot>,
    /// The protocol version the coordinator of this session said it speaks (`Speaks`; 0
    /// until it does: an older coordinator never says).
    speaks: u16,
    /// Copies re-adopted from the previous run, told to the coordinator once it speaks
    /// protocol 5 (`AgentMsg::Readopted`).
    readopted: Vec<tandem_common::proto::ReadoptedJob>,
    /// Set when the agent is asked to stop: a session then asks for a hand-over and ends.
    stop_rx: watch::Receiver<bool>,
    /// Whether a registered session runs (the stop waits for its hand-over only then).
    in_session: Arc<std::sync::atomic::AtomicBool>,
    /// The protocol version our `Hello` says: ours, or [`LIMITS_PROTOCOL_VERSION`] once a
    /// coordinator refused ours as unsupported (one older than protocol 5: the agent was
    /// upgraded first). Such a coordinator never says `Speaks`, so nothing of version 5 is
    /// sent to it.
    hello_version: u16,
}

/// How long a planned stop waits for the coordinator's answer to a hand-over request.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

fn tls_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Tls(e.to_string())
}

impl Link {
    /// Binds the local endpoint.
    pub fn new(
        cfg: Config,
        reports: watch::Receiver<HardwareReport>,
        lease_tx: watch::Sender<LeaseView>,
    ) -> Result<Self, AgentError> {
        let endpoint =
            quinn::Endpoint::client(SocketAddr::new(cfg.bind_addr, 0)).map_err(|source| {
                AgentError::Io {
                    what: format!("binding {}", cfg.bind_addr),
                    source,
                }
            })?;
        let (exits, skipped) = ExitOutbox::open(&cfg.state_dir)?;
        for s in &skipped {
            tracing::warn!(file = %s.path.display(), reason = %s.reason, "skipped a file in the exits dir");
        }
        if !exits.is_empty() {
            tracing::info!(
                exits = exits.len(),
                "job exits of an earlier run are not acknowledged yet; the next Hello carries them"
            );
        }
        let status = watch::Sender::new(crate::status::Snapshot {
            coordinator: cfg.coordinator.clone(),
            since: Some(Instant::now()),
            ..Default::default()
        });
        Ok(Self {
            speaks: 0,
            readopted: Vec::new(),
            stop_rx: watch::channel(false).1,
            in_session: Arc::default(),
            hello_version: PROTOCOL_VERSION,
            exits,
            unkept: Vec::new(),
            lease_session: None,
            status,
            cfg,
            endpoint,
            lease: Lease::new(),
            lease_tx,
            reports,
            seq: 0,
            watchdog: tandem_common::notify::Watchdog::from_env(),
            jobs: None,
            containment: Arc::new(crate::containment::Containment::process_group(
                "not detected",
            )),
            renewal: crate::renewal::Renewal::new(0.6 + 0.1 * rand::random::<f64>()),
        })
    }

    /// The snapshots `tandem-agent status` reads.
    pub fn status(&self) -> watch::Receiver<crate::status::Snapshot> {
        self.status.subscribe()
    }

    fn status_error(&self, what: String) {
        self.status.send_modify(|s| s.error(what));
    }

    /// Runs until `shutdown` resolves or a final refusal.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        self.stop_rx = stop_rx;
        let in_session = Arc::clone(&self.in_session);
        let handover = !self.cfg.agent_handover.is_zero();
        let result = loop {
            let r = {
                let once = self.connect_once(&mut backoff);
                tokio::pin!(once);
                tokio::select! {
                    r = &mut once => r,
                    _ = &mut shutdown => {
                        // A planned stop: a registered session first asks for a hand-over
                        // lease and pushes it to the shims (see `session`); the jobs then
                        // keep running until the next run re-adopts them.
                        if handover && in_session.load(std::sync::atomic::Ordering::SeqCst) {
                            let _ = stop_tx.send(true);
                            let _ = tokio::time::timeout(HANDOVER_WAIT + Duration::from_secs(1), &mut once).await;
                        }
                        break Ok(());
                    }
                }
            };
            self.publish(false);
            let wait = match r {
                Ok(Retry::Now) => Duration::ZERO,
                Ok(Retry::Later(reason)) => {
                    tandem_common::notify::status(&format!("reconnecting: {reason}"));
                    self.status_error(reason.clone());
                    let d = backoff.next_wait();
                    tracing::warn!(coordinator = %self.cfg.coordinator, %reason, retry_in_ms = d.as_millis() as u64, "link down; reconnecting");
                    d
                }
                Err(e) => {
                    self.status_error(e.to_string());
                    break Err(e);
                }
            };
            // Wait in short slices so the watchdog keeps being fed while we back off.
            let until = tokio::time::Instant::now() + wait;
            loop {
                self.watchdog.ping_if_due(Instant::now());
                // Exits that come while no session runs are kept at once, not at the next one.
                let drained = self.ended().map(Ended::drain).unwrap_or_default();
                let refused = self.keep_exits(&drained);
                self.unkept.extend(refused);
                let now = tokio::time::Instant::now();
                if now >= until {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until.min(now + Duration::from_millis(500))) => {}
                    _ = &mut shutdown => return self.stop(Ok(())).await,
                }
            }
        };
        self.stop(result).await
    }

    async fn stop(&self, result: Result<(), AgentError>) -> Result<(), AgentError> {
        tandem_common::notify::stopping();
        self.endpoint.close(0u32.into(), b"agent stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        result
    }

    /// Contains jobs as `containment` says (before [`Link::run`]).
    pub fn set_containment(&mut self, containment: Arc<crate::containment::Containment>) {
        self.containment = containment;
    }

    /// Keeps the recorded ends of the last copy of every job (`leftovers::ended`) as exits to
    /// report: the first `Hello` carries them. One the coordinator has decided on already is
    /// stale to it and only acknowledged.
    pub fn keep_leftover_exits(&mut self) {
        for r in crate::leftovers::ended(&self.cfg.state_dir) {
            tracing::info!(job = %r.job_id, token = r.fencing_token, cause = r.cause.as_str(), "a copy of the previous run ended while no agent ran; reporting its end");
            if let Err(e) = self.exits.record(r) {
                tracing::error!(error = %e, "could not keep the end of a copy of the previous run");
            }
        }
    }

    /// Re-adopts the shims of `alive` (job copies of the previous run that still live) before
    /// the first registration, so that the first `Hello` reports them as running and they
    /// continue (see `crate::supervisor::adopt`). Returns those adopted; the others are left
    /// to fence. The supervisor is made here with the default fence kill timeout; the first
    /// `Welcome` sets the coordinator's, and every adopted shim is sent it.
    pub async fn adopt_leftovers(
        &mut self,
        alive: &[String],
    ) -> Vec<crate::supervisor::adopt::AdoptedJob> {
        if alive.is_empty() {
            return Vec::new();
        }
        let identity = match Identity::load(&self.cfg.state_dir) {
            Ok(Some(i)) => i,
            Ok(None) => return Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the identity: no job copy is re-adopted");
                return Vec::new();
            }
        };
        if self.jobs.is_none() {
            match self.make_jobs(&identity, crate::supervisor::DEFAULT_FENCE_KILL_TIMEOUT) {
                Ok(j) => self.jobs = Some(j),
                Err(e) => {
                    tracing::error!(error = %e, "cannot run jobs on this node: no job copy is re-adopted");
                    return Vec::new();
                }
            }
        }
        let Some(jobs) = &self.jobs else {
            return Vec::new();
        };
        let adopted = jobs.adopt_all(alive).await;
        self.readopted = adopted
            .iter()
            .map(|a| tandem_common::proto::ReadoptedJob {
                job_id: a.job_id.clone(),
                fencing_token: a.fencing_token,
                pid: a.pid,
                started_unix_ms: a.started_unix_ms,
            })
            .collect();
        if !adopted.is_empty() {
            tracing::info!(
                jobs = adopted.len(),
                "re-adopted {} running jobs after an agent restart; they continue if the node was not declared down",
                adopted.len()
            );
        }
        self.publish(false);
        adopted
    }

    fn publish(&self, connected: bool) {
        let now = Instant::now();
        let view = LeaseView {
            node_id: self.lease_tx.borrow().node_id.clone(),
            held_until: self.lease.expires_at().filter(|t| *t > now),
            connected,
            session: self.lease_session,
        };
        let jobs = self.jobs.as_ref().map(Jobs::held).unwrap_or_default();
        self.status.send_modify(|s| {
            if s.connected != connected {
                s.since = Some(now);
            }
            s.connected = connected;
            s.lease_until = view.held_until;
            s.lease_beat = self.lease.granted_by();
            s.lease_session = self.lease_session;
            s.rtt = self.lease.last_rtt();
            s.jobs = jobs;
        });
        self.lease_tx.send_if_modified(|v| {
            let changed = *v != view;
            *v = view;
            changed
        });
    }

    async fn connect_once(&mut self, backoff: &mut Backoff) -> Result<Retry, AgentError> {
        let identity = Identity::load(&self.cfg.state_dir).map_err(|source| AgentError::Io {
            what: format!("reading the identity in {}", self.cfg.state_dir.display()),
            source,
        })?;
        let Some(mut identity) = identity else {
            return self.join().await;
        };
        self.lease_tx
            .send_modify(|v| v.node_id = Some(identity.node_id.clone()));
        let client =
            tls::node_client_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)
                .map_err(tls_err)?;
        // What is held is read before the waiting exits are drained (see `Jobs::held_then_drain`);
        // the exits that do not fit in the Hello follow it in the session.
        let mut overflow = Vec::new();
        let (endpoint, addr, shown) = (
            self.endpoint.clone(),
            self.cfg.coordinator_addr,
            self.cfg.coordinator.clone(),
        );
        let force_stream = self.cfg.force_stream_heartbeats;
        let registered =
            handshake::register(&endpoint, with_transport(client), addr, &shown, |conn| {
                let datagrams = conn.max_datagram_size().is_some() && !force_stream;
                let (held, drained) = self
                    .jobs
                    .as_mut()
                    .map(Jobs::held_then_drain)
                    .unwrap_or_default();
                let refused = self.keep_exits(&drained);
                self.unkept.extend(refused);
                let (exited, rest) = split_for_message(self.exits.pending(), MESSAGE_BUDGET);
                overflow = rest;
                let mut hello = handshake::register_hello(
                    &identity.name,
                    &identity.node_id,
                    datagrams,
                    held,
                    exited,
                    self.reports.borrow().clone(),
                );
                hello.protocol_version = self.hello_version;
                hello
            })
            .await;
        let handshake::Registered {
            conn,
            send,
            recv,
            welcome,
            datagrams,
        } = match registered {
            Ok(r) => r,
            Err(f) => return self.after(f),
        };
        backoff.reset();
        self.status.send_modify(|s| {
            s.node = Some((welcome.node_id.to_string(), welcome.name.clone()));
            s.session = Some(welcome.session);
            s.fence = Some((
                welcome.heartbeat_ms,
                welcome.lease_ms,
                welcome.fence_kill_timeout_ms,
            ));
        });
        tracing::info!(node = %welcome.node_id, name = %welcome.name, session = welcome.session, lease_ms = welcome.lease_ms, heartbeat_ms = welcome.heartbeat_ms, datagrams, "registered with the coordinator");
        tandem_common::notify::status(&format!(
            "connected to {} as {}, lease {:.1} s",
            self.cfg.coordinator,
            welcome.name,
            f64::from(welcome.lease_ms) / 1000.0
        ));
        self.publish(true);
        match self.renewal.plan(&identity.cert_pem) {
            Ok(at) => tracing::debug!(renew_at_unix = at, "certificate renewal planned"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read our certificate's validity; it will not be renewed")
            }
        }
        match &self.jobs {
            Some(j) => j.on_welcome(&welcome),
            None => match self.make_jobs(
                &identity,
                Duration::from_millis(welcome.fence_kill_timeout_ms.into()),
            ) {
                Ok(j) => self.jobs = Some(j),
                Err(e) => tracing::error!(error = %e, "cannot run jobs on this node"),
            },
        }
        let mut rx = self.jobs.as_mut().and_then(|j| j.rx.take());
        self.speaks = 0;
        self.in_session
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let reason = self
            .session(
                &conn,
                send,
                recv,
                &welcome,
                datagrams,
                &mut rx,
                &mut identity,
                overflow,
            )
            .await;
        self.in_session
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(j) = self.jobs.as_mut() {
            j.rx = rx;
        }
        conn.close(0u32.into(), b"session ended");
        Ok(Retry::Later(reason))
    }

    /// A failed step as the run loop takes it: back off and retry, or stop.
    fn after(&mut self, f: Failure) -> Result<Retry, AgentError> {
        match f {
            Failure::Refused {
                code: RejectCode::UnsupportedVersion,
                reason,
            } if self.hello_version > LIMITS_PROTOCOL_VERSION => {
                // One version down at a time: a coordinator of version 5 still grants
                // hand-overs; one of 4 or older none (nor usage reports, which need 6).
                self.hello_version -= 1;
                tracing::warn!(%reason, "the coordinator is older than this agent: registering with protocol {} (upgrade the coordinator)", self.hello_version);
                Ok(Retry::Now)
            }
            Failure::Retry(reason) => Ok(Retry::Later(reason)),
            Failure::Revoked => self.revoked(),
            Failure::Refused { code, reason } => Err(AgentError::Refused { code, reason }),
        }
    }

    async fn join(&mut self) -> Result<Retry, AgentError> {
        let Some(token) = self.cfg.token.clone() else {
            return Err(AgentError::NoIdentity(
                self.cfg.state_dir.display().to_string(),
            ));
        };
        // Every try asks with the same key, so a join whose answer was lost gets its node back.
        let key_pem = crate::identity::join_key(&self.cfg.state_dir, || {
            NodeKey::generate()
                .map(|k| k.key_pem())
                .map_err(std::io::Error::other)
        })
        .map_err(|source| AgentError::Io {
            what: format!("keeping the join key in {}", self.cfg.state_dir.display()),
            source,
        })?;
        let key = match NodeKey::from_pem(&key_pem) {
            Ok(k) => k,
            Err(e) => {
                // Unreadable (a disk fault): drop it; the next try makes a new one.
                let _ = std::fs::remove_file(self.cfg.state_dir.join("identity/join.key"));
                return Ok(Retry::Later(format!(
                    "the kept join key does not load ({e}); removed it, joining with a new key"
                )));
            }
        };
        let csr_pem = key.csr_pem(&self.cfg.name).map_err(tls_err)?;
        let client = tls::join_client_config(token.ca_pin).map_err(tls_err)?;
        let hardware = self.reports.borrow().clone();
        let joined = match handshake::join(
            &self.endpoint,
            with_transport(client),
            self.cfg.coordinator_addr,
            &self.cfg.coordinator,
            &token,
            &self.cfg.name,
            csr_pem,
            hardware,
        )
        .await
        {
            Ok(j) => j,
            Err(f) => return self.after(f),
        };
        let identity = Identity {
            node_id: joined.node_id.clone(),
            name: joined.name.clone(),
            key_pem: key.key_pem(),
            cert_pem: joined.cert_pem,
            ca_pem: joined.ca_pem,
        };
        identity
            .save(&self.cfg.state_dir)
            .map_err(|source| AgentError::Io {
                what: format!("saving the identity in {}", self.cfg.state_dir.display()),
                source,
            })?;
        tracing::info!(node = %joined.node_id, name = %joined.name, "joined the cluster; reconnecting with the new certificate");
        Ok(Retry::Now)
    }

    fn make_jobs(
        &self,
        identity: &Identity,
        fence_kill: Duration,
    ) -> Result<Jobs, crate::supervisor::SupervisorError> {
        let supervisor = Supervisor::new(
            &self.cfg.state_dir,
            identity.node_id.clone(),
            identity.name.clone(),
            fence_kill,
        )?;
        let supervisor = match &self.cfg.shim_program {
            Some(p) => supervisor.with_shim_program(p),
            None => supervisor,
        }
        .with_containment(Arc::clone(&self.containment))
        .with_job_accounts(
            self.cfg.job_user.clone(),
            self.cfg.allowed_job_users.clone(),
            self.cfg.allowed_job_groups.clone(),
        )?;
        Jobs::new(
            supervisor,
            self.lease_tx.subscribe(),
            self.cfg.retention,
            self.cfg.usage_interval,
        )
    }

    /// The exit reports waiting for the link, while no session has them.
    fn ended(&mut self) -> Option<&mut Ended> {
        self.jobs
            .as_mut()
            .and_then(|j| j.rx.as_mut())
            .map(|r| &mut r.ended)
    }

    /// Our certificate was refused as revoked: the node was removed. Final.
    fn revoked(&mut self) -> Result<Retry, AgentError> {
        self.lease.revoke();
        self.publish(false);
        Err(AgentError::Refused {
            code: RejectCode::UnknownNode,
            reason: REVOKED.to_string(),
        })
    }
}

/// `client` with the transport parameters both ends use.
fn with_transport(mut client: quinn::ClientConfig) -> quinn::ClientConfig {
    client.transport_config(Arc::new(tandem_common::transport::transport_config()));
    client
}
