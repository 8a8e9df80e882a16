//! One registered session: heartbeats and their acks, hardware updates, the coordinator's
//! orders on the control stream, and the job reports that go back up.
//!
//! Apart from `link` (connect, register, join, reconnect) because this loop is where the job
//! reports are decided: every exit is kept on disk before it is sent (`crate::exits`), an
//! `ExitAck` forgets it, and `ReportJobs` is answered with what is held and every exit not
//! acknowledged, as a `Hello` would carry them.

use super::jobs::{JobRx, Jobs};
use super::Link;
use crate::exits::{split_for_message, ExitsError, MESSAGE_BUDGET};
use crate::identity::Identity;
use crate::lease::AckOutcome;
use std::time::{Duration, Instant};
use tandem_common::codec::{self, DEFAULT_MAX_FRAME};
use tandem_common::hardware::HardwareReport;
use tandem_common::proto::*;
use tokio::sync::mpsc;

impl Link {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn session(
        &mut self,
        conn: &quinn::Connection,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        welcome: &Welcome,
        datagrams: bool,
        rx: &mut Option<JobRx>,
        identity: &mut Identity,
        overflow: Vec<JobExitReport>,
    ) -> String {
        let (mut ended, mut outbox, mut usage) = match rx.as_mut() {
            Some(r) => (Some(&mut r.ended), Some(&mut r.outbox), Some(&mut r.usage)),
            None => (None, None, None),
        };
        // A coordinator that refused our newest Hello (older than protocol 6) knows no Usage.
        if self.hello_version < tandem_common::proto::USAGE_PROTOCOL_VERSION {
            usage = None;
        }
        // The latest usage report goes out at once on every session (the containment mode
        // with it), then each new one.
        if let Some(u) = usage.as_mut() {
            u.mark_changed();
        }
        // Exits that did not fit in the Hello follow it at once, then those never kept.
        let unkept = std::mem::take(&mut self.unkept);
        for report in overflow.into_iter().chain(unkept) {
            let msg = AgentMsg::JobExited(report);
            if let Err(e) = codec::write_msg(&mut send, &msg, DEFAULT_MAX_FRAME).await {
                return format!("reporting a job exit: {e}");
            }
        }
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
        // Silence this long means the connection is gone: register again on a new one.
        let give_up_after = super::handshake::silence_limit(
            heartbeat,
            Duration::from_millis(welcome.lease_ms.into()),
        );
        // A planned stop's hand-over request: its number, when it was sent, and how long to
        // wait for the answer.
        let mut handover: Option<(u64, Instant, tokio::time::Instant)> = None;
        loop {
            tokio::select! {
                r = self.stop_rx.changed(), if handover.is_none() => {
                    if r.is_err() || !*self.stop_rx.borrow_and_update() {
                        continue;
                    }
                    match self.ask_handover(&mut send).await {
                        Ok(Some(h)) => handover = Some(h),
                        Ok(None) => return "stopping".into(),
                        Err(e) => return format!("stopping: asking for a hand-over: {e}"),
                    }
                }
                _ = async { match handover { Some((_, _, by)) => tokio::time::sleep_until(by).await, None => std::future::pending().await } } => {
                    tracing::warn!("the coordinator did not answer the hand-over request in time: the jobs are fenced at the end of the lease held");
                    return "stopping: no hand-over answer in time".into();
                }
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
                        last_rtt_us: self.lease.last_rtt_us(),
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
                    Ok(b) => { if self.on_ack(&b, welcome.session) { last_ack = Instant::now(); } }
                    Err(e) => return self.closed(e),
                },
                Some(b) = async { match acks.as_mut() { Some(rx) => rx.recv().await, None => None } }, if !datagrams => {
                    if self.on_ack(&b, welcome.session) { last_ack = Instant::now(); }
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
                Some(report) = async { match ended.as_mut() { Some(r) => r.next().await, None => None } } => {
                    // Kept on disk first: sent once here, and in every Hello until acknowledged.
                    let _sent_below = self.keep_exits(std::slice::from_ref(&report));
                    let msg = AgentMsg::JobExited(report);
                    if let Err(e) = codec::write_msg(&mut send, &msg, DEFAULT_MAX_FRAME).await {
                        return format!("reporting a job exit: {e}");
                    }
                }
                Some(report) = async { match usage.as_mut() { Some(u) => u.changed().await.ok().and_then(|()| u.borrow_and_update().clone()), None => None } } => {
                    let msg = AgentMsg::Usage(Box::new((*report).clone()));
                    if let Err(e) = codec::write_msg(&mut send, &msg, DEFAULT_MAX_FRAME).await {
                        return format!("sending a usage report: {e}");
                    }
                }
                Some(out) = async { match outbox.as_mut() { Some(r) => r.recv().await, None => None } } => {
                    if let Err(e) = codec::write_msg(&mut send, &out, DEFAULT_MAX_FRAME).await {
                        return format!("sending a job report: {e}");
                    }
                }
                msg = control.recv() => match msg.transpose() {
                    Ok(Some(CoordMsg::StartJob(cmd))) => {
                        if let Some(j) = &self.jobs { j.start(*cmd, welcome.session, None, None, None) }
                    }
                    Ok(Some(CoordMsg::StartLimited { start, limits, user })) => {
                        if let Some(j) = &self.jobs { j.start(*start, welcome.session, Some(limits), user, None) }
                    }
                    Ok(Some(CoordMsg::StartAs { start, limits, user, group })) => {
                        if let Some(j) = &self.jobs { j.start(*start, welcome.session, Some(limits), user, group) }
                    }
                    Ok(Some(CoordMsg::StopJob { job_id, fencing_token, kill_timeout_ms })) => {
                        if let Some(j) = &self.jobs { j.stop(job_id, fencing_token, kill_timeout_ms) }
                    }
                    Ok(Some(CoordMsg::TailLogs { request, job_id, lines })) => {
                        if let Some(j) = &self.jobs { j.tail_logs(request, job_id, lines) }
                    }
                    Ok(Some(CoordMsg::ExitAck { job_id, fencing_token })) => match self.exits.ack(&job_id, fencing_token) {
                        Ok(true) => {
                            tracing::debug!(job = %job_id, fencing_token, "exit acknowledged");
                            if let Some(j) = &self.jobs { j.exit_acknowledged(&job_id, fencing_token) }
                        }
                        Ok(false) => {
                            tracing::debug!(job = %job_id, fencing_token, "acknowledged an exit not kept (already acknowledged)");
                            if let Some(j) = &self.jobs { j.exit_acknowledged(&job_id, fencing_token) }
                        }
                        Err(e) => tracing::warn!(job = %job_id, fencing_token, error = %e, "cannot forget an acknowledged exit; it will be reported again"),
                    },
                    Ok(Some(CoordMsg::ReportJobs { request })) => {
                        // Held first, then the waiting exits (see `Jobs::held_then_drain`).
                        let jobs = self.jobs.as_ref().map(Jobs::held).unwrap_or_default();
                        let drained = ended.as_mut().map(|e| e.drain()).unwrap_or_default();
                        let refused = self.keep_exits(&drained);
                        let (exited, overflow) = split_for_message(self.exits.pending(), MESSAGE_BUDGET);
                        let msgs = std::iter::once(AgentMsg::JobsHeld { request, jobs, exited })
                            .chain(overflow.into_iter().chain(refused).map(AgentMsg::JobExited));
                        for msg in msgs {
                            if let Err(e) = codec::write_msg(&mut send, &msg, DEFAULT_MAX_FRAME).await {
                                return format!("answering a job report request: {e}");
                            }
                        }
                    }
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
                    Ok(Some(CoordMsg::Speaks { protocol_version })) => {
                        self.speaks = protocol_version;
                        if protocol_version >= HANDOVER_PROTOCOL_VERSION && !self.readopted.is_empty() {
                            let jobs = std::mem::take(&mut self.readopted);
                            if let Err(e) = codec::write_msg(&mut send, &AgentMsg::Readopted { jobs }, DEFAULT_MAX_FRAME).await {
                                return format!("reporting the re-adopted jobs: {e}");
                            }
                        }
                    }
                    Ok(Some(CoordMsg::HandoverGranted { request, lease_ms, until_unix_ms })) => {
                        match handover {
                            Some((r, sent_at, _)) if r == request => {
                                let until = sent_at + Duration::from_millis(lease_ms.into());
                                self.lease.extend_to(until);
                                self.publish(true);
                                // The lease goes to every shim through its control task; give
                                // those a moment to write it (a shim that misses it keeps the
                                // shorter lease it had: it only fences sooner).
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                tracing::info!(lease_ms, until_unix_ms, until = %tandem_common::time::rfc3339(until_unix_ms), jobs = self.jobs.as_ref().map_or(0, |j| j.held().len()), "hand-over granted: exiting without stopping the jobs; the next agent run re-adopts them");
                                return "stopping: hand-over granted".into();
                            }
                            _ => tracing::warn!(request, "ignored a hand-over answer to no request of ours"),
                        }
                    }
                    Ok(Some(CoordMsg::HandoverRefused { request, reason })) => {
                        if handover.is_some_and(|(r, _, _)| r == request) {
                            tracing::warn!(%reason, "the coordinator refused the hand-over: the jobs are fenced at the end of the lease held");
                            return format!("stopping: hand-over refused: {reason}");
                        }
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

    /// A planned stop: asks the coordinator for a hand-over lease (`agent_handover_ms`) when
    /// it speaks protocol 5 and jobs are held. `Ok(None)`: nothing to ask (the agent just
    /// exits, as before: the shims keep the lease held).
    async fn ask_handover(
        &mut self,
        send: &mut quinn::SendStream,
    ) -> Result<Option<(u64, Instant, tokio::time::Instant)>, String> {
        let held = self.jobs.as_ref().map_or(0, |j| j.held().len());
        if held == 0 {
            return Ok(None);
        }
        if self.speaks < HANDOVER_PROTOCOL_VERSION {
            tracing::warn!(
                "the coordinator grants no hand-overs (protocol {} < {HANDOVER_PROTOCOL_VERSION}): the jobs are fenced at the end of the lease held unless the next agent run re-adopts them before",
                self.speaks
            );
            return Ok(None);
        }
        let request = rand::random::<u64>();
        let hold_ms = u32::try_from(self.cfg.agent_handover.as_millis()).unwrap_or(u32::MAX);
        let sent_at = Instant::now();
        let msg = AgentMsg::RequestHandover { request, hold_ms };
        codec::write_msg(send, &msg, DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            hold_ms,
            jobs = held,
            "stopping: asked the coordinator for a hand-over lease"
        );
        Ok(Some((
            request,
            sent_at,
            tokio::time::Instant::now() + super::HANDOVER_WAIT,
        )))
    }

    /// Keeps exit reports on disk until acknowledged (see `crate::exits`), logging why one
    /// could not be kept. Returns those the outbox refused (it is full, or the job id is
    /// absurd): the caller sends each once, since no `Hello` will carry it.
    pub(super) fn keep_exits(&mut self, reports: &[JobExitReport]) -> Vec<JobExitReport> {
        let mut refused = Vec::new();
        for r in reports {
            let (job, token) = (&r.job_id, r.fencing_token);
            match self.exits.record(r.clone()) {
                Ok(()) => {}
                Err(e @ ExitsError::Io { .. }) => {
                    tracing::error!(job = %job, token, error = %e, "cannot keep a job exit on disk; it is reported, but an agent restart before it is acknowledged loses it")
                }
                Err(e) => {
                    tracing::error!(job = %job, token, error = %e, "not keeping a job exit; it is reported once");
                    refused.push(r.clone());
                }
            }
        }
        refused
    }

    fn on_ack(&mut self, body: &[u8], session: u64) -> bool {
        match codec::decode_datagram::<CoordDatagram>(body) {
            Ok(CoordDatagram::HeartbeatAck { seq, lease_ms }) => {
                let out =
                    self.lease
                        .on_ack(seq, Duration::from_millis(lease_ms.into()), Instant::now());
                if let AckOutcome::Extended(_) = out {
                    self.lease_session = Some(session);
                }
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
        if super::handshake::voids_lease(&e) {
            // Declared down, or removed: whatever lease we think we hold is void.
            self.lease.revoke();
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
