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
//! Failures are retried with capped exponential backoff and full jitter, so a fleet that lost
//! its coordinator does not reconnect in lock-step. Refusals that cannot get better by retrying
//! (a bad join token, a node that was removed) end the agent with the coordinator's reason.

use crate::config::Config;
use crate::identity::Identity;
use crate::lease::{AckOutcome, Lease};
use crate::supervisor::{JobExit, JobStart, Supervisor, SupervisorError};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_common::codec::{self, DEFAULT_MAX_FRAME};
use tandem_common::hardware::HardwareReport;
use tandem_common::ids::NodeId;
use tandem_common::pki::NodeKey;
use tandem_common::proto::*;
use tandem_common::tls;
use tokio::sync::{mpsc, watch};

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
}

/// The lease as the rest of the agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// Our node id, once joined.
    pub node_id: Option<NodeId>,
    /// Until when we may run jobs; `None` when no lease is held.
    pub held_until: Option<Instant>,
    /// Whether a registered connection is up.
    pub connected: bool,
}

/// How a session ended when it can be retried.
enum Retry {
    /// Right away (we just joined and have a certificate now).
    Now,
    /// After backoff, for this reason.
    Later(String),
}

/// TLS alert `certificate_revoked`: the coordinator no longer accepts our certificate.
const CERTIFICATE_REVOKED: u8 = 44;
const REVOKED: &str = "the coordinator refused this node's certificate as revoked: the node was removed; delete the agent's state dir and join again with a new token";

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Capped exponential backoff with full jitter.
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let cap = BACKOFF_BASE
            .saturating_mul(1 << self.attempt.min(10))
            .min(BACKOFF_MAX);
        self.attempt += 1;
        let ms = cap.as_millis() as u64;
        Duration::from_millis(ms / 2 + rand::random_range(0..=ms / 2))
    }
}

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
    /// When to renew the certificate over the live connection.
    renewal: crate::renewal::Renewal,
}

/// The job side of the link: the supervisor, its exits, and messages its tasks want sent.
struct Jobs {
    supervisor: Arc<Supervisor>,
    outbox_tx: mpsc::Sender<AgentMsg>,
    /// Lent to the session loop while a session runs.
    rx: Option<JobRx>,
}

/// What the session loop listens to for jobs.
struct JobRx {
    exits: mpsc::Receiver<JobExit>,
    outbox: mpsc::Receiver<AgentMsg>,
}

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
        Ok(Self {
            cfg,
            endpoint,
            lease: Lease::new(),
            lease_tx,
            reports,
            seq: 0,
            watchdog: tandem_common::notify::Watchdog::from_env(),
            jobs: None,
            renewal: crate::renewal::Renewal::new(0.6 + 0.1 * rand::random::<f64>()),
        })
    }

    /// Runs until `shutdown` resolves or a final refusal.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut backoff = Backoff { attempt: 0 };
        let result = loop {
            let r = tokio::select! {
                r = self.connect_once(&mut backoff) => r,
                _ = &mut shutdown => break Ok(()),
            };
            self.publish(false);
            let wait = match r {
                Ok(Retry::Now) => Duration::ZERO,
                Ok(Retry::Later(reason)) => {
                    tandem_common::notify::status(&format!("reconnecting: {reason}"));
                    let d = backoff.next();
                    tracing::warn!(coordinator = %self.cfg.coordinator, %reason, retry_in_ms = d.as_millis() as u64, "link down; reconnecting");
                    d
                }
                Err(e) => break Err(e),
            };
            // Wait in short slices so the watchdog keeps being fed while we back off.
            let until = tokio::time::Instant::now() + wait;
            loop {
                self.watchdog.ping_if_due(Instant::now());
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

    fn publish(&self, connected: bool) {
        let now = Instant::now();
        let view = LeaseView {
            node_id: self.lease_tx.borrow().node_id.clone(),
            held_until: self.lease.expires_at().filter(|t| *t > now),
            connected,
        };
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
        let conn = match self.connect(client).await {
            Ok(c) => c,
            Err(reason) if reason == REVOKED => return self.revoked(),
            Err(reason) => return Ok(Retry::Later(reason)),
        };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(_) if was_revoked(&conn) => return self.revoked(),
            Err(e) => return Ok(Retry::Later(format!("cannot open the control stream: {e}"))),
        };
        let datagrams = conn.max_datagram_size().is_some() && !self.cfg.force_stream_heartbeats;
        let hello = AgentMsg::Hello(Box::new(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            name: identity.name.clone(),
            node_id: Some(identity.node_id.clone()),
            join: None,
            datagrams,
            jobs: self
                .jobs
                .as_ref()
                .map(|j| j.supervisor.held())
                .unwrap_or_default(),
            exited: Vec::new(),
            hardware: self.reports.borrow().clone(),
        }));
        let welcome = match self.exchange(&conn, &mut send, &mut recv, &hello).await? {
            Ok(CoordMsg::Welcome(w)) => w,
            Err(_) if was_revoked(&conn) => return self.revoked(),
            Ok(other) => {
                return Ok(Retry::Later(format!(
                    "unexpected answer to Hello: {other:?}"
                )))
            }
            Err(reason) => return Ok(Retry::Later(reason)),
        };
        *backoff = Backoff { attempt: 0 };
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
        if self.jobs.is_none() {
            match self.make_jobs(&identity, &welcome) {
                Ok(j) => self.jobs = Some(j),
                Err(e) => tracing::error!(error = %e, "cannot run jobs on this node"),
            }
        }
        let mut rx = self.jobs.as_mut().and_then(|j| j.rx.take());
        let reason = self
            .session(
                &conn,
                send,
                recv,
                &welcome,
                datagrams,
                &mut rx,
                &mut identity,
            )
            .await;
        if let Some(j) = self.jobs.as_mut() {
            j.rx = rx;
        }
        conn.close(0u32.into(), b"session ended");
        Ok(Retry::Later(reason))
    }

    async fn connect(&self, client: quinn::ClientConfig) -> Result<quinn::Connection, String> {
        let mut client = client;
        client.transport_config(Arc::new(tandem_common::transport::transport_config()));
        let connecting = self
            .endpoint
            .connect_with(client, self.cfg.coordinator_addr, tls::SERVER_NAME)
            .map_err(|e| format!("cannot connect to {}: {e}", self.cfg.coordinator))?;
        match tokio::time::timeout(REPLY_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) if is_revoked(&e) => Err(REVOKED.to_string()),
            Ok(Err(e)) => Err(format!("connecting to {}: {e}", self.cfg.coordinator)),
            Err(_) => Err(format!(
                "connecting to {}: no answer within 5 s",
                self.cfg.coordinator
            )),
        }
    }

    /// Sends the first frame and reads the answer. A final refusal is an `AgentError`; a
    /// passing failure is the inner `Err(reason)`.
    async fn exchange(
        &self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        hello: &AgentMsg,
    ) -> Result<Result<CoordMsg, String>, AgentError> {
        match tandem_common::transport::exchange_hello(conn, send, recv, hello).await {
            Ok(CoordMsg::Reject(r)) => {
                tracing::error!(code = ?r.code, reason = %r.reason, "the coordinator refused this node");
                match r.code {
                    RejectCode::BadToken
                    | RejectCode::UnknownNode
                    | RejectCode::NotAdmitted
                    | RejectCode::UnsupportedVersion => Err(AgentError::Refused {
                        code: r.code,
                        reason: r.reason,
                    }),
                    _ => Ok(Err(format!("refused ({:?}): {}", r.code, r.reason))),
                }
            }
            other => Ok(other),
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
        let conn = match self.connect(client).await {
            Ok(c) => c,
            Err(reason) => {
                return Ok(Retry::Later(format!(
                    "join: {reason} (is the token's CA pin this coordinator's?)"
                )))
            }
        };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                return Ok(Retry::Later(format!(
                    "join: cannot open the control stream: {e}"
                )))
            }
        };
        let hello = AgentMsg::Hello(Box::new(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            name: self.cfg.name.clone(),
            node_id: None,
            join: Some(JoinRequest {
                token_id: token.id.clone(),
                token_secret: token.secret.clone(),
                csr_pem,
            }),
            datagrams: conn.max_datagram_size().is_some(),
            jobs: Vec::new(),
            exited: Vec::new(),
            hardware: self.reports.borrow().clone(),
        }));
        let joined = match self.exchange(&conn, &mut send, &mut recv, &hello).await? {
            Ok(CoordMsg::Joined(j)) => j,
            Ok(other) => {
                return Ok(Retry::Later(format!(
                    "unexpected answer to a join: {other:?}"
                )))
            }
            Err(reason) => return Ok(Retry::Later(reason)),
        };
        conn.close(0u32.into(), b"joined");
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

    #[allow(clippy::too_many_arguments)]
    async fn session(
        &mut self,
        conn: &quinn::Connection,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        welcome: &Welcome,
        datagrams: bool,
        rx: &mut Option<JobRx>,
        identity: &mut Identity,
    ) -> String {
        let (mut exits, mut outbox) = match rx.as_mut() {
            Some(r) => (Some(&mut r.exits), Some(&mut r.outbox)),
            None => (None, None),
        };
        let mut control = codec::spawn_reader::<CoordMsg, _>(recv, DEFAULT_MAX_FRAME);
        let heartbeat = Duration::from_millis(welcome.heartbeat_ms.max(10).into());
        // Beats sent on an older connection must not extend this session's lease.
        let (mut beat_stream, mut acks) = if datagrams {
            (None, None)
        } else {
            let s = match conn.open_uni().await {
                Ok(s) => s,
                Err(e) => return format!("cannot open the heartbeat stream: {e}"),
            };
            let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
            let c = conn.clone();
            tokio::spawn(async move {
                if let Ok(mut uni) = c.accept_uni().await {
                    while let Ok(Some(b)) = codec::read_frame(&mut uni, DEFAULT_MAX_FRAME).await {
                        if tx.send(b).await.is_err() {
                            break;
                        }
                    }
                }
            });
            (Some(s), Some(rx))
        };
        let mut iv = tokio::time::interval(heartbeat);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What the coordinator has: the report sent in Hello, then every delta applied to it.
        let mut sent = self.reports.borrow_and_update().clone();
        let mut last_ack = Instant::now();
        // Silence this long means the connection is gone (e.g. the coordinator restarted and
        // forgot it): register again on a new one rather than wait for QUIC's idle timeout.
        // The lease is unaffected: it still runs out on its own time if no new ack comes.
        let lease_len = Duration::from_millis(welcome.lease_ms.into());
        let give_up_after = (3 * heartbeat).max(lease_len / 2);
        loop {
            tokio::select! {
                _ = iv.tick() => {
                    let now = Instant::now();
                    wedge_hook();
                    self.watchdog.ping_if_due(now);
                    if now.duration_since(last_ack) > give_up_after {
                        return format!("no heartbeat ack for {} ms; registering again", now.duration_since(last_ack).as_millis());
                    }
                    self.seq += 1;
                    let seq = self.seq;
                    let beat = AgentDatagram::Heartbeat(Heartbeat {
                        seq,
                        last_rtt_us: self.lease.last_rtt().map(|d| d.as_micros().min(u32::MAX as u128) as u32).unwrap_or(0),
                        load: load_summary(&self.reports.borrow()),
                    });
                    self.lease.on_beat_sent(seq, now);
                    let sent = match &mut beat_stream {
                        None => codec::encode(&beat).map_err(|e| e.to_string()).and_then(|b| conn.send_datagram(b.into()).map_err(|e| e.to_string())),
                        Some(s) => match codec::encode_frame(&beat, DEFAULT_MAX_FRAME) {
                            Ok(f) => tokio::io::AsyncWriteExt::write_all(s, &f).await.map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        },
                    };
                    if let Err(e) = sent {
                        return format!("sending a heartbeat: {e}");
                    }
                    self.publish(true);
                    match self.renewal.poll(unix_now(), &identity.name) {
                        Ok(Some(req)) => {
                            tracing::info!("renewing the node certificate over the live connection");
                            if let Err(e) = codec::write_msg(&mut send, &req, DEFAULT_MAX_FRAME).await {
                                return format!("sending a certificate renewal: {e}");
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot make a renewal request"),
                    }
                }
                dg = conn.read_datagram(), if datagrams => match dg {
                    Ok(b) => { if self.on_ack(&b) { last_ack = Instant::now(); } }
                    Err(e) => return self.closed(e),
                },
                Some(b) = async { match acks.as_mut() { Some(rx) => rx.recv().await, None => None } }, if !datagrams => {
                    if self.on_ack(&b) { last_ack = Instant::now(); }
                }
                Ok(()) = self.reports.changed() => {
                    let current = self.reports.borrow_and_update().clone();
                    if let Some(delta) = current.diff(&sent) {
                        sent.apply(delta.clone());
                        let msg = AgentMsg::HardwareUpdate(Box::new(delta));
                        if let Err(e) = codec::write_msg(&mut send, &msg, DEFAULT_MAX_FRAME).await {
                            return format!("sending a hardware update: {e}");
                        }
                    }
                }
                Some(exit) = async { match exits.as_mut() { Some(r) => r.recv().await, None => None } } => {
                    let msg = AgentMsg::JobExited(JobExitReport {
                        job_id: exit.job_id.clone(),
                        fencing_token: exit.fencing_token,
                        code: exit.code,
                        signal: exit.signal,
                        cause: exit.reason.cause(),
                        reason: format!("{:?}", exit.reason).to_lowercase(),
                    });
                    if let Err(e) = codec::write_msg(&mut send, &msg, DEFAULT_MAX_FRAME).await {
                        return format!("reporting a job exit: {e}");
                    }
                }
                Some(out) = async { match outbox.as_mut() { Some(r) => r.recv().await, None => None } } => {
                    if let Err(e) = codec::write_msg(&mut send, &out, DEFAULT_MAX_FRAME).await {
                        return format!("sending a job report: {e}");
                    }
                }
                msg = control.recv() => match msg.transpose() {
                    Ok(Some(CoordMsg::StartJob(cmd))) => self.start_job(*cmd),
                    Ok(Some(CoordMsg::StopJob { job_id, fencing_token, kill_timeout_ms })) => {
                        self.stop_job(job_id, fencing_token, kill_timeout_ms)
                    }
                    Ok(Some(CoordMsg::TailLogs { request, job_id, lines })) => self.tail_logs(request, job_id, lines),
                    Ok(Some(CoordMsg::Ping { nonce })) => {
                        if let Err(e) = codec::write_msg(&mut send, &AgentMsg::Pong { nonce }, DEFAULT_MAX_FRAME).await {
                            return format!("answering a ping: {e}");
                        }
                    }
                    Ok(Some(CoordMsg::CertificateRenewed { cert_pem, .. })) => {
                        match self.renewal.on_renewed(identity, &self.cfg.state_dir, cert_pem, unix_now()) {
                            Ok((serial, not_after)) => tracing::info!(serial, not_after_unix = not_after, next_renewal_unix = ?self.renewal.next_at(), "certificate renewed; used from the next connection on"),
                            Err(e) => tracing::warn!(error = %e, retry_at_unix = ?self.renewal.next_at(), "certificate renewal failed; the current certificate stays in use"),
                        }
                    }
                    Ok(Some(CoordMsg::RenewalRefused { reason })) => {
                        self.renewal.on_refused(identity, unix_now());
                        tracing::warn!(%reason, retry_at_unix = ?self.renewal.next_at(), "the coordinator refused to renew the certificate; the current one stays in use");
                    }
                    Ok(Some(CoordMsg::Reject(r))) => {
                        self.lease.revoke();
                        return format!("refused ({:?}): {}", r.code, r.reason);
                    }
                    Ok(Some(other)) => tracing::warn!(?other, "ignored an unexpected control message"),
                    Ok(None) => return self.closed_reason(conn, "the coordinator closed the control stream"),
                    Err(e) => return self.closed_reason(conn, &format!("control stream: {e}")),
                },
            }
        }
    }

    fn make_jobs(
        &self,
        identity: &Identity,
        welcome: &Welcome,
    ) -> Result<Jobs, crate::supervisor::SupervisorError> {
        let supervisor = Supervisor::new(
            &self.cfg.state_dir,
            identity.node_id.clone(),
            identity.name.clone(),
            Duration::from_millis(welcome.fence_kill_timeout_ms.into()),
        )?;
        let supervisor = match &self.cfg.shim_program {
            Some(p) => supervisor.with_shim_program(p),
            None => supervisor,
        };
        let supervisor = Arc::new(supervisor);
        supervisor.follow_lease(self.lease_tx.subscribe());
        let exits = supervisor
            .exits()
            .ok_or_else(|| crate::supervisor::SupervisorError::InvalidJob("exits taken".into()))?;
        let (outbox_tx, outbox) = mpsc::channel(256);
        Ok(Jobs {
            supervisor,
            outbox_tx,
            rx: Some(JobRx { exits, outbox }),
        })
    }

    /// Starts a job copy on a task of its own; the answer (started, or refused as an exit)
    /// goes back through the outbox.
    fn start_job(&self, cmd: StartJob) {
        let Some(j) = &self.jobs else { return };
        let (sup, out) = (j.supervisor.clone(), j.outbox_tx.clone());
        tokio::spawn(async move {
            // A start can arrive right after registration, before the first ack: the
            // supervisor waits a moment for the lease (and refuses to start without one).
            let (job_id, fencing_token) = (cmd.job_id.clone(), cmd.fencing_token);
            let start = JobStart {
                job_id: cmd.job_id,
                job_name: cmd.job_name,
                fencing_token: cmd.fencing_token,
                command: cmd.command,
                env: cmd.env,
                workdir: cmd.workdir.map(Into::into),
                gpus: cmd.gpus,
            };
            let msg = match sup.start(start).await {
                Ok(_) => {
                    tracing::info!(job = %job_id, fencing_token, "job started");
                    AgentMsg::JobStarted {
                        job_id,
                        fencing_token,
                    }
                }
                // A repeat of a start still in progress: that start answers.
                Err(SupervisorError::StartInProgress { .. }) => {
                    tracing::info!(job = %job_id, fencing_token, "start repeated while in progress; the first one answers");
                    return;
                }
                Err(e) => {
                    tracing::warn!(job = %job_id, fencing_token, error = %e, "refused to start a job");
                    AgentMsg::JobExited(JobExitReport {
                        job_id,
                        fencing_token,
                        code: None,
                        signal: None,
                        cause: ExitCause::Refused,
                        reason: format!("refused: {e}"),
                    })
                }
            };
            let _ = out.send(msg).await;
        });
    }

    fn stop_job(&self, job_id: String, token: u64, kill_timeout_ms: u32) {
        let Some(j) = &self.jobs else { return };
        let sup = j.supervisor.clone();
        tokio::spawn(async move {
            if let Err(e) = sup
                .stop(
                    &job_id,
                    token,
                    Duration::from_millis(kill_timeout_ms.into()),
                )
                .await
            {
                tracing::info!(job = %job_id, token, error = %e, "stop: nothing to stop");
            }
        });
    }

    fn tail_logs(&self, request: u64, job_id: String, lines: u32) {
        let Some(j) = &self.jobs else { return };
        let (sup, out) = (j.supervisor.clone(), j.outbox_tx.clone());
        tokio::spawn(async move {
            let msg = match sup.tail_logs(&job_id, lines.min(10_000) as usize).await {
                Ok(t) => AgentMsg::Logs {
                    request,
                    stdout: t.stdout,
                    stderr: t.stderr,
                    error: None,
                },
                Err(e) => AgentMsg::Logs {
                    request,
                    stdout: vec![],
                    stderr: vec![],
                    error: Some(e.to_string()),
                },
            };
            let _ = out.send(msg).await;
        });
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

    fn on_ack(&mut self, body: &[u8]) -> bool {
        match codec::decode_datagram::<CoordDatagram>(body) {
            Ok(CoordDatagram::HeartbeatAck { seq, lease_ms }) => {
                let out =
                    self.lease
                        .on_ack(seq, Duration::from_millis(lease_ms.into()), Instant::now());
                if out != AckOutcome::Ignored {
                    self.publish(true);
                }
                out != AckOutcome::Ignored
            }
            Err(e) => {
                tracing::debug!(error = %e, "dropped an ack that does not decode");
                false
            }
        }
    }

    fn closed(&mut self, e: quinn::ConnectionError) -> String {
        if let quinn::ConnectionError::ApplicationClosed(c) = &e {
            if c.error_code == 2u32.into() || c.error_code == 6u32.into() {
                // Declared down, or removed: whatever lease we think we hold is void.
                self.lease.revoke();
            }
        }
        format!("connection closed: {e}")
    }

    fn closed_reason(&mut self, conn: &quinn::Connection, fallback: &str) -> String {
        match conn.close_reason() {
            Some(e) => self.closed(e),
            None => fallback.to_string(),
        }
    }
}

/// Whether the coordinator closed `conn` because it refused our certificate as revoked.
fn was_revoked(conn: &quinn::Connection) -> bool {
    conn.close_reason().is_some_and(|e| is_revoked(&e))
}

/// Whether a connection error is the TLS alert `certificate_revoked`, sent by the peer or
/// raised locally.
fn is_revoked(e: &quinn::ConnectionError) -> bool {
    let revoked = quinn::TransportErrorCode::crypto(CERTIFICATE_REVOKED);
    match e {
        quinn::ConnectionError::TransportError(t) => t.code == revoked,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code == revoked,
        _ => false,
    }
}

/// Test hook: with `TANDEM_TEST_WEDGE_AFTER_MS` set, the main loop blocks for good that long
/// after start, as a wedged loop would, so a test can see systemd's watchdog pings stop.
fn wedge_hook() {
    use std::sync::OnceLock;
    static AT: OnceLock<Option<Instant>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var("TANDEM_TEST_WEDGE_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(|ms| Instant::now() + Duration::from_millis(ms))
    });
    if at.is_some_and(|t| Instant::now() >= t) {
        tracing::error!("TANDEM_TEST_WEDGE_AFTER_MS: wedging the main loop");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Wall-clock seconds, for certificate validity.
fn unix_now() -> i64 {
    (tandem_common::time::unix_ms() / 1000) as i64
}

/// The small summary that rides with every beat, from the latest report.
fn load_summary(r: &HardwareReport) -> LoadSummary {
    LoadSummary {
        cpu_centi_percent: (r.cpu.usage_percent.clamp(0.0, 100.0) * 100.0) as u16,
        memory_available_mib: (r.memory.available_bytes >> 20).min(u32::MAX as u64) as u32,
        jobs_running: 0,
    }
}
