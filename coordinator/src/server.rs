//! The QUIC endpoint: one task per connection.
//!
//! A connection proves nothing by completing its handshake (a QUIC client's connect succeeds
//! even when its certificate is about to be refused), so a node counts only after the
//! application-level exchange: `Hello` in, `Welcome` (or `Joined`, or `Reject`) out. Every
//! refusal is logged with the peer's address and reason and answered with a `Reject` before the
//! connection closes; nothing a peer sends can panic this code or touch another node.

use crate::engine::{Handled, MembershipError};
use crate::join::Joiner;
use crate::runtime::EngineHandle;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_common::codec::{self, CodecError};
use tandem_common::ids::NodeId;
use tandem_common::proto::*;
use tandem_common::wire::CloseCode;
use tokio::sync::mpsc;

/// QUIC handshakes in progress at most; more are refused until some finish.
const MAX_HANDSHAKES: u64 = 512;

/// How long a peer has to finish its handshake and send `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The one UDP socket every agent's connection shares, with kernel buffers sized for a fleet:
/// at 25,000 agents a second of heartbeats is 25,000 datagrams, and the default buffer (about
/// 200 KiB) overflows in a burst, which the agents would see as lost beats. Past the kernel's
/// `net.core.rmem_max` the size needs `SO_RCVBUFFORCE` (root or CAP_NET_ADMIN); without it the
/// effective size is logged so an operator can raise the sysctl.
pub fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    for (what, force) in [
        ("receive", libc::SO_RCVBUFFORCE),
        ("send", libc::SO_SNDBUFFORCE),
    ] {
        let plain = if what == "receive" {
            socket.set_recv_buffer_size(buffer)
        } else {
            socket.set_send_buffer_size(buffer)
        };
        let got = || {
            if what == "receive" {
                socket.recv_buffer_size()
            } else {
                socket.send_buffer_size()
            }
        };
        // The kernel reports twice the requested size (its bookkeeping share).
        if plain.is_err() || got().unwrap_or(0) < buffer {
            let v = libc::c_int::try_from(buffer).unwrap_or(libc::c_int::MAX);
            // SAFETY: a plain setsockopt on a socket we own, with a c_int value of its size.
            let _ = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::SOL_SOCKET,
                    force,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        let effective = got().unwrap_or(0);
        if effective < buffer {
            tracing::warn!(requested = buffer, effective, "the UDP {what} buffer is smaller than configured; raise net.core.{}mem_max or run with CAP_NET_ADMIN", if what == "receive" { "r" } else { "w" });
        } else {
            tracing::debug!(effective, "UDP {what} buffer");
        }
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// What the connection tasks share.
pub struct Server {
    /// The way to the engine.
    pub engine: EngineHandle,
    /// Join handling.
    pub joiner: Joiner,
    /// Heartbeat interval and lease told to agents.
    pub heartbeat: Duration,
    /// Largest control frame.
    pub max_frame: usize,
    /// The agents' SIGTERM-to-SIGKILL time when they fence themselves.
    pub fence_kill_timeout: Duration,
    /// Refusal log lines: a flood of bad connections costs a few lines a second.
    pub log_budget: std::sync::Mutex<crate::limits::LogBudget>,
}

/// Counts a connection task for as long as it lives.
struct ConnectionGauge<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> ConnectionGauge<'a> {
    fn new(g: &'a std::sync::atomic::AtomicU64) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Self(g)
    }
}

impl Drop for ConnectionGauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Server {
    /// Accepts connections until the endpoint closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        let handshaking = Arc::new(std::sync::atomic::AtomicU64::new(0));
        while let Some(incoming) = endpoint.accept().await {
            let peer = incoming.remote_address();
            // A join storm (a fleet restarting at once, or a coordinator restart) must not turn
            // into thousands of half-done handshakes that all time out: past the bound a new
            // connection is refused at once, and the agent backs off and comes back.
            if handshaking.load(Ordering::Relaxed) >= MAX_HANDSHAKES {
                self.log_refusal(
                    peer,
                    &format!(": {MAX_HANDSHAKES} handshakes are in progress; try again later"),
                );
                incoming.refuse();
                continue;
            }
            let server = self.clone();
            let handshaking = handshaking.clone();
            tokio::spawn(async move {
                let _held = ConnectionGauge::new(&server.engine.metrics.quic_connections);
                let in_handshake = ConnectionGauge::new(&handshaking);
                let conn = match tokio::time::timeout(HELLO_TIMEOUT, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        server.log_refusal(peer, &format!(" at the QUIC/TLS handshake: {e}"));
                        return;
                    }
                    Err(_) => {
                        server.log_refusal(peer, ": the handshake took longer than 5 s");
                        return;
                    }
                };
                drop(in_handshake);
                server.connection(conn, peer).await;
            });
        }
    }

    /// Reads the first frame, which must be a `Hello` of a protocol version we serve, or a
    /// `CheckJoin` (version 3 on). `Ok(None)`: the peer closed the stream without sending
    /// anything. `Err`: the refusal to send back.
    async fn read_first(
        &self,
        recv: &mut quinn::RecvStream,
    ) -> Result<Option<AgentMsg>, (RejectCode, String)> {
        let violation = |reason: String| (RejectCode::ProtocolViolation, reason);
        let first = match tokio::time::timeout(
            HELLO_TIMEOUT,
            codec::read_frame(recv, self.max_frame),
        )
        .await
        {
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => return Err(violation(format!("bad first frame: {e}"))),
            Err(_) => return Err(violation("no Hello within 5 s".into())),
        };
        let unsupported = |v: u16| {
            (
                RejectCode::UnsupportedVersion,
                format!("protocol version {v} is not supported; this coordinator speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"),
            )
        };
        match codec::peek_first_frame(&first) {
            Some(codec::FirstFrame::Hello(v))
                if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&v) => {}
            Some(codec::FirstFrame::CheckJoin(v))
                if (CHECK_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&v) => {}
            Some(codec::FirstFrame::Hello(v) | codec::FirstFrame::CheckJoin(v)) => {
                return Err(unsupported(v))
            }
            None => return Err(violation("the first frame is not a Hello".into())),
        }
        match codec::decode::<AgentMsg>(&first) {
            Ok(m @ (AgentMsg::Hello(_) | AgentMsg::CheckJoin(_))) => Ok(Some(m)),
            Ok(_) => Err(violation("the first frame is not a Hello".into())),
            Err(e) => Err(violation(format!("Hello does not decode: {e}"))),
        }
    }

    /// Answers a `CheckJoin` and closes: nothing is recorded (see `join_check`).
    async fn answer_check(
        &self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        peer: SocketAddr,
        check: &CheckJoin,
    ) {
        let cert = tandem_common::tls::peer_node_id(conn)
            .map(|n| (n, tandem_common::tls::peer_cert_serial(conn).unwrap_or(0)));
        let answer = self.joiner.check(check, cert, peer).await;
        tracing::info!(%peer, name = %check.name, token = ?answer.token, cluster = ?answer.cluster, admission = ?answer.admission, "join check answered");
        let _ = codec::write_msg(send, &CoordMsg::JoinCheck(answer), self.max_frame).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }

    async fn connection(&self, conn: quinn::Connection, peer: SocketAddr) {
        let (mut send, mut recv) = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection ended before its control stream opened");
                return;
            }
            Err(_) => {
                self.log_refusal(peer, ": no control stream within 5 s");
                conn.close(CloseCode::Protocol.into(), b"no control stream");
                return;
            }
        };
        let mut hello = match self.read_first(&mut recv).await {
            Ok(Some(AgentMsg::Hello(h))) => h,
            Ok(Some(AgentMsg::CheckJoin(c))) => {
                return self.answer_check(&conn, &mut send, peer, &c).await
            }
            Ok(_) => return,
            Err((code, reason)) => return self.refuse(&conn, &mut send, peer, code, reason).await,
        };

        let cert_node = tandem_common::tls::peer_node_id(&conn);
        let Some(cert_node) = cert_node else {
            // No client certificate: the only thing such a peer may do is join.
            let reply = match self.joiner.join(&hello, peer).await {
                Ok((joined, ticket)) => {
                    // The certificate goes out only once the node record is on disk.
                    self.engine.store().durable(ticket).await;
                    CoordMsg::Joined(joined)
                }
                Err(e) => return self.refuse_err(&conn, &mut send, peer, e).await,
            };
            let _ = codec::write_msg(&mut send, &reply, self.max_frame).await;
            let _ = send.finish();
            // Give the agent a moment to read the certificate, then close.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            return;
        };
        if hello.node_id.as_ref() != Some(&cert_node) {
            let claimed = hello
                .node_id
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "none".into());
            return self
                .refuse(
                    &conn,
                    &mut send,
                    peer,
                    RejectCode::ProtocolViolation,
                    format!(
                        "Hello claims node {claimed} but the certificate is for node {cert_node}"
                    ),
                )
                .await;
        }
        let serial = tandem_common::tls::peer_cert_serial(&conn).unwrap_or(0);
        // Commands go out as the session's protocol version understands them.
        let outbox = Arc::new(
            crate::outbox::Outbox::new(self.engine.store().clone())
                .for_protocol(hello.protocol_version),
        );
        // Only what the session needs outlives this point: the Hello (with a hardware report of
        // several KiB) is not kept for the life of the connection.
        let datagrams = hello.datagrams && conn.max_datagram_size().is_some();
        let version = hello.protocol_version;
        let held_jobs = std::mem::take(&mut hello.jobs);
        let exited = std::mem::take(&mut hello.exited);
        let Hello {
            agent_version,
            hardware,
            ..
        } = *hello;
        let registered = {
            let (node, outbox) = (cert_node.clone(), outbox.clone());
            self.engine
                .call(move |e| {
                    e.register(
                        &node,
                        serial,
                        peer,
                        agent_version,
                        hardware,
                        outbox,
                        Instant::now(),
                    )
                })
                .await
        };
        let reg = match registered {
            Ok(r) => r,
            Err(e) => return self.refuse_err(&conn, &mut send, peer, e).await,
        };
        // Welcome (and with it the first lease) only once the registration is on disk.
        self.engine.store().durable(reg.ticket).await;
        tracing::info!(%peer, node = %cert_node, name = %reg.name, session = reg.session, "node registered");
        let lease = self.joiner.lease;
        let welcome = CoordMsg::Welcome(Welcome {
            node_id: cert_node.clone(),
            name: reg.name.clone(),
            session: reg.session,
            heartbeat_ms: self.heartbeat.as_millis() as u32,
            lease_ms: lease.as_millis() as u32,
            fence_kill_timeout_ms: self.fence_kill_timeout.as_millis() as u32,
        });
        if codec::write_msg(&mut send, &welcome, self.max_frame)
            .await
            .is_err()
        {
            self.disconnected(&cert_node, reg.session).await;
            return;
        }
        // Sessions that know it learn what this coordinator speaks (hand-overs, re-adoption).
        if version >= tandem_common::proto::HANDOVER_PROTOCOL_VERSION {
            let speaks = CoordMsg::Speaks {
                protocol_version: tandem_common::proto::PROTOCOL_VERSION,
            };
            if codec::write_msg(&mut send, &speaks, self.max_frame)
                .await
                .is_err()
            {
                self.disconnected(&cert_node, reg.session).await;
                return;
            }
        }
        // What the node holds, and the exits it kept, decide which of its jobs stay, go, or are
        // placed again.
        {
            let node = cert_node.clone();
            self.engine
                .call(move |e| e.node_reported(&node, &held_jobs, &exited))
                .await;
        }
        let why = self
            .session(
                &conn,
                send,
                recv,
                &outbox,
                &cert_node,
                reg.session,
                datagrams,
                peer,
                serial,
            )
            .await;
        tracing::info!(%peer, node = %cert_node, session = reg.session, reason = %why, "node connection ended");
        outbox.close();
        self.disconnected(&cert_node, reg.session).await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        conn: &quinn::Connection,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        outbox: &crate::outbox::Outbox,
        node: &NodeId,
        session: u64,
        datagrams: bool,
        peer: SocketAddr,
        serial: u64,
    ) -> String {
        // Heartbeats arrive as datagrams, or as frames on a uni stream where the path has none.
        let (beat_tx, mut beat_rx) = mpsc::channel::<Vec<u8>>(64);
        let mut ack_stream: Option<quinn::SendStream> = None;
        if !datagrams {
            let conn2 = conn.clone();
            let tx = beat_tx.clone();
            let max = self.max_frame;
            tokio::spawn(async move {
                if let Ok(mut uni) = conn2.accept_uni().await {
                    while let Ok(Some(body)) = codec::read_frame(&mut uni, max).await {
                        if tx.send(body).await.is_err() {
                            break;
                        }
                    }
                }
            });
            match conn.open_uni().await {
                Ok(s) => ack_stream = Some(s),
                Err(e) => return format!("cannot open the heartbeat-ack stream: {e}"),
            }
        }
        drop(beat_tx);
        let mut control = codec::spawn_reader::<AgentMsg, _>(recv, self.max_frame);
        let mut control_open = true;
        // Made once, not per turn of the loop: a fresh `closed()` per beat registers and drops
        // a waiter on the connection's state every time.
        let closed = conn.closed();
        tokio::pin!(closed);
        let mut budget = crate::limits::MessageBudget::new(
            crate::limits::MESSAGES_PER_SECOND,
            crate::limits::MESSAGES_BURST,
            Instant::now(),
        );
        // While set, the control stream is not read: the node is over its message budget.
        let mut throttled: Option<tokio::time::Instant> = None;
        // Made once and again only after it completed, not per turn of the loop (every beat):
        // each new one registers a waiter with the outbox.
        let mut next_out = Box::pin(outbox.next());
        loop {
            tokio::select! {
                _ = async { match throttled { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                    throttled = None;
                }
                dg = conn.read_datagram(), if datagrams => {
                    match dg {
                        Ok(b) => self.on_beat(conn, &mut ack_stream, &b, node, session, peer).await,
                        Err(e) => return e.to_string(),
                    }
                }
                Some(b) = beat_rx.recv(), if !datagrams => {
                    self.on_beat(conn, &mut ack_stream, &b, node, session, peer).await;
                }
                msg = control.recv(), if control_open && throttled.is_none() => {
                    if let Some(wait) = budget.take(Instant::now()) {
                        self.engine.metrics.agent_messages_throttled.fetch_add(1, Ordering::Relaxed);
                        self.log_refusal(peer, &format!(": node {node} is over its budget of {} control messages a second; its stream is read again in {} ms", crate::limits::MESSAGES_PER_SECOND, wait.as_millis()));
                        throttled = Some(tokio::time::Instant::now() + wait);
                    }
                    match msg.transpose() {
                        Ok(Some(msg)) => match self.on_agent_msg(node, session, msg).await {
                            Handled::Done => {}
                            Handled::Left { ticket, reason } => {
                                if let Some(ticket) = ticket {
                                    self.engine.store().durable(ticket).await;
                                }
                                return format!("the agent left: {reason}");
                            }
                            Handled::Renew { csr_pem } => {
                                let allowed = budget.renewal(Instant::now());
                                let reply = if !allowed {
                                    self.engine.metrics.renewals_throttled.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!(%peer, %node, "refused a certificate renewal: asked again within {} s", crate::limits::RENEWAL_EVERY.as_secs());
                                    CoordMsg::RenewalRefused { reason: format!("renewal asked again within {} s; try later", crate::limits::RENEWAL_EVERY.as_secs()) }
                                } else { match self.joiner.renew(node, serial, &csr_pem).await {
                                    Ok(issued) => CoordMsg::CertificateRenewed {
                                        cert_pem: issued.cert_pem,
                                        not_after_unix: issued.not_after_unix,
                                    },
                                    Err(e) => {
                                        tracing::warn!(%peer, %node, error = %e, "refused a certificate renewal");
                                        CoordMsg::RenewalRefused { reason: e.to_string() }
                                    }
                                } };
                                // The new certificate (and its serial) is recorded before it leaves.
                                let store = self.engine.store();
                                store.durable(store.last_ticket()).await;
                                if let Err(e) = codec::write_msg(&mut send, &reply, self.max_frame).await {
                                    return format!("control stream write failed: {e}");
                                }
                            }
                            Handled::Refused(why) => tracing::warn!(%peer, %node, "refused {why}"),
                            Handled::Handover { request, hold } => {
                                // The lease goes out only once the node's hold is durable.
                                let granted = match hold {
                                    Ok(ticket) => {
                                        self.engine.store().durable(ticket).await;
                                        let node = node.clone();
                                        self.engine.call(move |e| e.grant_handover(&node, session, Instant::now())).await
                                    }
                                    Err(why) => Err(why),
                                };
                                let reply = match granted {
                                    Ok((lease, until_unix_ms)) => CoordMsg::HandoverGranted {
                                        request,
                                        lease_ms: lease.as_millis().min(u32::MAX as u128) as u32,
                                        until_unix_ms,
                                    },
                                    Err(reason) => CoordMsg::HandoverRefused { request, reason },
                                };
                                if let Err(e) = codec::write_msg(&mut send, &reply, self.max_frame).await {
                                    return format!("control stream write failed: {e}");
                                }
                            }
                        },
                        Ok(None) => control_open = false,
                        Err(CodecError::Decode(e)) => {
                            self.engine.metrics.bad_messages.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, %node, error = %e, "refused a control frame that does not decode; closing the connection");
                            conn.close(CloseCode::Protocol.into(), b"control frame does not decode");
                            return format!("bad frame: {e}");
                        }
                        Err(e) => {
                            self.engine.metrics.bad_messages.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, %node, error = %e, "control stream failed; closing the connection");
                            conn.close(CloseCode::Protocol.into(), b"control stream error");
                            return e.to_string();
                        }
                    }
                }
                out = &mut next_out => {
                    next_out = Box::pin(outbox.next());
                    match out {
                    crate::outbox::Drained::Batch(batch) => {
                        for m in &batch {
                            if let Err(e) = codec::write_msg(&mut send, m, self.max_frame).await {
                                return format!("control stream write failed: {e}");
                            }
                        }
                    }
                    crate::outbox::Drained::Overflowed => {
                        tracing::warn!(%peer, %node, "closing a session that does not read its commands ({} queued); its next registration is reconciled", crate::outbox::MAX_QUEUED);
                        conn.close(CloseCode::Protocol.into(), b"commands not read");
                        return "the node did not read its commands".into();
                    }
                    crate::outbox::Drained::Closed(Some((code, why))) => {
                        conn.close(code.into(), why.as_bytes());
                        return why.into();
                    }
                    crate::outbox::Drained::Closed(None) => return "the session ended".into(),
                    }
                }
                reason = &mut closed => return reason.to_string(),
            }
        }
    }

    async fn on_beat(
        &self,
        conn: &quinn::Connection,
        ack_stream: &mut Option<quinn::SendStream>,
        body: &[u8],
        node: &NodeId,
        session: u64,
        peer: SocketAddr,
    ) {
        let beat = match codec::decode_datagram::<AgentDatagram>(body) {
            Ok(AgentDatagram::Heartbeat(b)) => b,
            Err(e) => {
                self.engine
                    .metrics
                    .bad_messages
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, %node, error = %e, "dropped a heartbeat that does not decode");
                return;
            }
        };
        // The beat counts from its arrival, not from when the engine reaches it: the node was
        // alive then (and its own lease counts from its send, earlier still).
        let arrived = Instant::now();
        let node = node.clone();
        let metrics = self.engine.metrics.clone();
        // The lease the engine grants, as the ack that carries it; `None`: no lease (a stale
        // session, a node declared down), no ack.
        let answer = move |e: &crate::engine::Engine| {
            let lease = e.heartbeat(&node, session, arrived)?;
            if beat.last_rtt_us > 0 {
                metrics
                    .heartbeat_rtt
                    .observe(Duration::from_micros(beat.last_rtt_us.into()));
            }
            Some(CoordDatagram::HeartbeatAck {
                seq: beat.seq,
                lease_ms: lease.as_millis() as u32,
            })
        };
        match ack_stream {
            None => {
                // Over datagrams the beat goes to the engine's beat lane and the engine task
                // sends the ack itself, right after the decision (a datagram is queued to the
                // connection without waiting): no wake per beat, and no hop back to this task.
                let conn = conn.clone();
                self.engine
                    .queue_beat(move |e| {
                        if let Some(ack) = answer(e) {
                            if let Ok(body) = codec::encode(&ack) {
                                let _ = conn.send_datagram(body.into());
                            }
                        }
                    })
                    .await;
            }
            Some(s) => {
                let Some(ack) = self.engine.call(answer).await else {
                    return;
                };
                if let Ok(frame) = codec::encode_frame(&ack, self.max_frame) {
                    let _ = tokio::io::AsyncWriteExt::write_all(s, &frame).await;
                }
            }
        }
    }

    /// A control message of a registered session, decided by the engine.
    async fn on_agent_msg(&self, node: &NodeId, session: u64, msg: AgentMsg) -> Handled {
        let node = node.clone();
        self.engine
            .call(move |e| e.on_agent_msg(&node, session, msg))
            .await
    }

    /// The session `session` of `node` has ended.
    async fn disconnected(&self, node: &NodeId, session: u64) {
        let node = node.clone();
        self.engine
            .call(move |e| e.disconnected(&node, session))
            .await;
    }

    async fn refuse_err(
        &self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        peer: SocketAddr,
        e: MembershipError,
    ) {
        match e {
            MembershipError::Refused { code, reason } => {
                self.refuse(conn, send, peer, code, reason).await
            }
            MembershipError::Store(err) => {
                tracing::error!(%peer, error = %err, "store failure while admitting a node");
                self.refuse(
                    conn,
                    send,
                    peer,
                    RejectCode::Unavailable,
                    "the coordinator cannot write its store; try again later".into(),
                )
                .await
            }
        }
    }

    /// Logs "refused a connection" + `reason` (which starts with its own separator) with the
    /// peer, within the log budget: a flood of bad
    /// connections costs a few lines a second, and the next line says how many were left out.
    fn log_refusal(&self, peer: SocketAddr, reason: &str) {
        let allowed = self
            .log_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(std::time::Instant::now());
        if let Some(suppressed) = allowed {
            tracing::warn!(%peer, suppressed_since_last = suppressed, "refused a connection{reason}");
        }
    }

    async fn refuse(
        &self,
        conn: &quinn::Connection,
        send: &mut quinn::SendStream,
        peer: SocketAddr,
        code: RejectCode,
        reason: String,
    ) {
        self.engine
            .metrics
            .registrations_refused
            .fetch_add(1, Ordering::Relaxed);
        self.log_refusal(peer, &format!(" ({code:?}): {reason}"));
        let msg = CoordMsg::Reject(Reject { code, reason });
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = codec::write_msg(send, &msg, self.max_frame).await;
            let _ = send.finish();
            let _ = send.stopped().await;
        })
        .await;
        conn.close(CloseCode::Refused.into(), b"refused");
    }
}
