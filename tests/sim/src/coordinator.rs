//! The coordinator host: the real `Engine` over a `MemStore`, and its sessions.
//!
//! What the QUIC server does with a connection is done here the same way, in the same order:
//! `register`, wait for its ticket, `Welcome`, then `node_reported`; a heartbeat goes to the
//! detector and its lease comes back in an ack; job reports go to the job runtime; the
//! outboxes are drained onto the connections a moment later, each batch once its ticket is
//! durable; admin answers wait for the newest ticket; a closed outbox closes its connection; a lost
//! connection is `disconnected`. Startup is `run`'s: fence parameters, the detector with the
//! legacy fence, `load`, `reconcile_jobs`.

use crate::clock::SimClock;
use crate::net::Packet;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tandem_common::ids::NodeId;
use tandem_common::proto::{AgentMsg, CoordMsg, Reject, Welcome};
use tandem_coordinator::detector::{DetectorConfig, FailureDetector};
use tandem_coordinator::engine::{Engine, Handled, MembershipError};
use tandem_coordinator::model::FenceParams;
use tandem_coordinator::outbox::{Drained, Outbox};
use tandem_coordinator::store::{Change, MemStore, StateStore};

/// The coordinator's settings in a run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Lease.
    pub lease: Duration,
    /// Fence kill timeout given to agents.
    pub fence_kill: Duration,
    /// The detector's grace after a lease (the config's formula, unless a knob changes it).
    pub fence_grace: Duration,
    /// Restart grace.
    pub restart_grace: Duration,
}

/// What the host sends.
#[derive(Debug)]
pub enum CoordOut {
    /// A packet on a connection.
    Send(u64, Packet),
    /// Close a connection.
    Close(u64, &'static str),
}

struct Session {
    node: NodeId,
    session: u64,
    outbox: Arc<Outbox>,
}

/// One coordinator process.
pub struct CoordHost {
    /// The decision layer.
    pub m: Arc<Engine>,
    /// Its store.
    pub store: Arc<MemStore>,
    sessions: BTreeMap<u64, Session>,
    params: Params,
    /// Deliberate bug: commands and answers leave without waiting for their tickets.
    pub send_before_durable: bool,
    /// A deliberate bug: hand-over leases twice as long as granted (past the node's hold).
    pub handover_lease_past_hold: bool,
}

impl CoordHost {
    /// Starts a coordinator on `store`, as `tandem_coordinator::run` does.
    /// With `honour_hold` false (a deliberate bug), a planned restart's hold is ignored; with
    /// `forget_in_force` (another), the fence parameters recorded as in force are ignored.
    pub fn start(
        store: Arc<MemStore>,
        clock: Arc<SimClock>,
        params: Params,
        honour_hold: bool,
        forget_in_force: bool,
    ) -> Self {
        let now = tandem_coordinator::clock::Clock::now(&*clock);
        let configured = FenceParams {
            lease_ms: params.lease.as_millis() as u64,
            fence_kill_timeout_ms: params.fence_kill.as_millis() as u64,
        };
        let in_force = if forget_in_force {
            store
                .apply(vec![Change::PutFenceParams(configured)])
                .expect("mem store");
            configured
        } else {
            tandem_coordinator::engine::fence_params_at_start(&*store, configured)
                .expect("mem store")
        };
        let detector = FailureDetector::new(
            DetectorConfig {
                heartbeat: params.heartbeat,
                lease: params.lease,
                fence_grace: params.fence_grace,
                suspect_after_missed: 3,
                restart_grace: params.restart_grace,
            },
            now,
        )
        .with_legacy(in_force.lease() + in_force.fence_grace());
        let m = Engine::load(store.clone(), detector, Default::default(), now)
            .expect("mem store")
            .with_fence_update((in_force != configured).then_some(configured))
            .with_clock(clock);
        let m = Arc::new(m);
        m.reconcile_jobs().expect("mem store");
        if honour_hold {
            m.honour_restart_hold(now).expect("mem store");
        }
        m.honour_node_holds(now).expect("mem store");
        Self {
            m,
            store,
            sessions: BTreeMap::new(),
            params,
            send_before_durable: false,
            handover_lease_past_hold: false,
        }
    }

    /// Waits for `ticket` as a sender does before acting (unless the knob says not to).
    fn durable(&self, ticket: tandem_coordinator::store::Ticket) {
        if !self.send_before_durable {
            self.store.wait_durable(ticket);
        }
    }

    /// The admin endpoint's rule: an answer waits for every batch applied before it.
    pub fn answer(&self) {
        self.durable(self.store.last_ticket());
    }

    /// The group-commit flusher: whatever is applied becomes durable.
    pub fn flush(&self) {
        self.store.wait_durable(self.store.last_ticket());
    }

    /// Whether `conn` has a session here.
    pub fn has(&self, conn: u64) -> bool {
        self.sessions.contains_key(&conn)
    }

    /// A packet arrived on `conn`.
    pub fn on_packet(
        &mut self,
        clock: &SimClock,
        conn: u64,
        packet: Packet,
        out: &mut Vec<CoordOut>,
    ) {
        let now = clock.instant(clock.ns());
        let Some(s) = self.sessions.get(&conn) else {
            let Packet::Agent(AgentMsg::Hello(h)) = packet else {
                return;
            };
            return self.hello(conn, *h, out);
        };
        let node = s.node.clone();
        let session = s.session;
        match packet {
            Packet::Beat(seq) => {
                if let Some(lease) = self.m.heartbeat(&node, session, now) {
                    out.push(CoordOut::Send(
                        conn,
                        Packet::Ack {
                            seq,
                            lease_ms: lease.as_millis() as u32,
                        },
                    ));
                }
            }
            Packet::Agent(msg) => match self.m.on_agent_msg(&node, session, msg) {
                // The simulated agents send neither Goodbyes nor renewals.
                Handled::Done | Handled::Left { .. } | Handled::Renew { .. } => {}
                // As the server: the lease only once the node's hold is durable.
                Handled::Handover { request, hold } => {
                    let granted = hold.and_then(|ticket| {
                        self.durable(ticket);
                        self.m.grant_handover(&node, session, now)
                    });
                    let reply = match granted {
                        Ok((lease, until_unix_ms)) => CoordMsg::HandoverGranted {
                            request,
                            lease_ms: (lease.as_millis() as u32)
                                .saturating_mul(1 + u32::from(self.handover_lease_past_hold)),
                            until_unix_ms,
                        },
                        Err(reason) => CoordMsg::HandoverRefused { request, reason },
                    };
                    out.push(CoordOut::Send(conn, Packet::Coord(reply)));
                }
                Handled::Refused(why) => panic!("a simulated agent sent {why}"),
            },
            _ => {}
        }
    }

    fn hello(&mut self, conn: u64, h: tandem_common::proto::Hello, out: &mut Vec<CoordOut>) {
        let Some(node) = h.node_id.clone() else {
            return;
        };
        let outbox = Arc::new(Outbox::new(self.store.clone()));
        let serial = self
            .m
            .find(&node.0)
            .map(|e| e.record.cert_serial)
            .unwrap_or(0);
        let addr = "10.0.0.1:7000".parse().expect("literal");
        let now = tandem_coordinator::clock::Clock::now(self.m.clock());
        match self.m.register(
            &node,
            serial,
            addr,
            h.agent_version.clone(),
            h.hardware.clone(),
            outbox.clone(),
            now,
        ) {
            Ok(reg) => {
                self.durable(reg.ticket);
                out.push(CoordOut::Send(
                    conn,
                    Packet::Coord(CoordMsg::Welcome(Welcome {
                        node_id: node.clone(),
                        name: reg.name.clone(),
                        session: reg.session,
                        heartbeat_ms: self.params.heartbeat.as_millis() as u32,
                        lease_ms: self.params.lease.as_millis() as u32,
                        fence_kill_timeout_ms: self.params.fence_kill.as_millis() as u32,
                    })),
                ));
                self.sessions.insert(
                    conn,
                    Session {
                        node: node.clone(),
                        session: reg.session,
                        outbox,
                    },
                );
                self.m.node_reported(&node, &h.jobs, &h.exited);
            }
            Err(MembershipError::Refused { code, reason }) => {
                out.push(CoordOut::Send(
                    conn,
                    Packet::Coord(CoordMsg::Reject(Reject { code, reason })),
                ));
                out.push(CoordOut::Close(conn, "refused"));
            }
            Err(MembershipError::Store(e)) => panic!("the mem store failed: {e}"),
        }
    }

    /// The detector's tick.
    pub fn tick(&mut self, clock: &SimClock) {
        self.m.tick(clock.instant(clock.ns()));
    }

    /// Whether an outbox holds something to carry out.
    pub fn has_output(&self) -> bool {
        self.sessions
            .values()
            .any(|s| !s.outbox.is_empty() || s.outbox.is_closed())
    }

    /// Carries what the outboxes hold onto the connections, each batch once its ticket is
    /// durable (as the session task does).
    pub fn drain(&mut self, out: &mut Vec<CoordOut>) {
        let mut ended = Vec::new();
        for (conn, s) in &self.sessions {
            let Some((drained, after)) = s.outbox.try_next() else {
                continue;
            };
            self.durable(after);
            match drained {
                Drained::Batch(b) => out.extend(
                    b.into_iter()
                        .map(|m| CoordOut::Send(*conn, Packet::Coord(m))),
                ),
                Drained::Overflowed => {
                    out.push(CoordOut::Close(*conn, "commands not read"));
                    ended.push(*conn);
                }
                Drained::Closed(why) => {
                    out.push(CoordOut::Close(*conn, why.map_or("ended", |w| w.1)));
                    ended.push(*conn);
                }
            }
        }
        for conn in ended {
            self.lost(conn);
        }
    }

    /// The connection is gone (closed here, or timed out).
    pub fn lost(&mut self, conn: u64) {
        if let Some(s) = self.sessions.remove(&conn) {
            s.outbox.close();
            self.m.disconnected(&s.node, s.session);
        }
    }
}
