//! Nodes: joins, registrations, heartbeats, hardware reports, leaving, certificate renewals,
//! revocation and on-demand checks. Each change is applied to the store under the engine's
//! lock and acted on only once durable (the caller waits for the ticket, or the outbox does).

use super::core::{lock, Engine};
use super::fleet::{Fleet, Live, NodeEntry};
use crate::cluster::pairing::{self, PairDecision, PairNode};
use crate::detector::{Liveness, Transition};
use crate::model::*;
use crate::store::{Change, StoreError};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tandem_common::hardware::{GpuInfo, HardwareDelta, HardwareReport};
use tandem_common::ids::NodeId;
use tandem_common::proto::{CoordMsg, RejectCode};
use tandem_common::wire::CloseCode;

/// Why a membership operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The request was refused; the code and reason go back to the agent.
    #[error("{reason}")]
    Refused {
        /// The refusal's kind.
        code: RejectCode,
        /// Why, in words.
        reason: String,
    },
    /// The store failed; nothing was changed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

fn refused(code: RejectCode, reason: impl Into<String>) -> MembershipError {
    MembershipError::Refused {
        code,
        reason: reason.into(),
    }
}

/// Puts `issued` in as the node's certificate and keeps `(serial, not_after)` as the previous
/// one, still accepted until the node connects with the new one: the answer carrying the new
/// certificate may be lost (a renewal, a retried join), and the node must not be locked out.
fn switch_certificate(
    rec: &mut NodeRecord,
    (serial, not_after): (u64, i64),
    issued: &tandem_common::pki::IssuedCert,
) {
    rec.previous_cert_serial = Some(serial);
    rec.previous_cert_not_after_unix = not_after;
    rec.cert_serial = issued.serial;
    rec.cert_not_after_unix = issued.not_after_unix as i64;
    rec.key_sha256 = issued.key_sha256.clone();
}

/// What a successful registration returns.
pub struct Registered {
    /// The new session.
    pub session: u64,
    /// The node's name.
    pub name: String,
    /// Durable once this ticket is: wait for it before answering.
    pub ticket: crate::store::Ticket,
}

impl Engine {
    /// Records a new node that joined with `token` (whose use count is raised in the same batch).
    /// When the node is the first of an `ha_pairs` cluster, `cluster` carries the cluster with
    /// its hardware model now fixed, written in the same batch. Applied, not yet durable: the
    /// caller waits for the returned ticket before handing out the certificate.
    pub fn record_join(
        &self,
        rec: NodeRecord,
        mut token: TokenRecord,
        cluster: Option<ClusterRecord>,
    ) -> Result<crate::store::Ticket, MembershipError> {
        let mut t = self.lock();
        if let Some(other) = t.node_named(&rec.name) {
            return Err(refused(
                RejectCode::NotAdmitted,
                format!("node name `{}` is already used by node {}; remove that node first or choose another --name", rec.name, other.record.id),
            ));
        }
        token.uses += 1;
        let model_fixed = cluster.filter(|c| t.clusters.get(&c.id) != Some(c));
        let mut changes = vec![
            Change::PutNode(Box::new(rec.clone())),
            Change::PutToken(token.clone()),
            Change::Event(NewEvent {
                kind: "node_joined",
                node: Some(rec.id.clone()),
                message: format!(
                    "node {} joined from {} with token {} ({} of {} uses)",
                    rec.name, rec.address, token.id, token.uses, token.uses_allowed
                ),
            }),
        ];
        if let Some(c) = &model_fixed {
            changes.push(Change::PutCluster(Box::new(c.clone())));
            changes.push(Change::Event(NewEvent {
                kind: "cluster",
                node: Some(rec.id.clone()),
                message: format!(
                    "cluster {}: hardware model fixed by its first node {}: {}",
                    c.name,
                    rec.name,
                    c.model.as_deref().unwrap_or("-")
                ),
            }));
        }
        let (_, ticket) = self.store.apply(changes)?;
        if let Some(c) = model_fixed {
            t.clusters.insert(c.id.clone(), c);
        }
        self.metrics.joins.fetch_add(1, Ordering::Relaxed);
        self.set_member_serial(rec.cert_serial, true);
        t.insert_node(NodeEntry {
            record: rec,
            live: None,
        });
        Ok(ticket)
    }

    /// A join retried by a node whose first answer was lost: `node` joined, never registered,
    /// and asks again with the same key. It gets `issued`, a new certificate for the same id;
    /// the serial it was first given stays accepted (as after a renewal: the first answer may
    /// yet have arrived). No token use is spent. Applied, not yet durable: the caller waits for
    /// the ticket before answering.
    pub fn record_join_retry(
        &self,
        node: &NodeId,
        issued: &tandem_common::pki::IssuedCert,
        peer: SocketAddr,
    ) -> Result<crate::store::Ticket, MembershipError> {
        let mut t = lock(&self.table);
        let Some(current) = t.nodes.get(node).map(|e| e.record.clone()) else {
            return Err(refused(
                RejectCode::NotAdmitted,
                format!("node {node} was removed while its join was retried"),
            ));
        };
        if current.state != NodeState::Joining || current.key_sha256 != issued.key_sha256 {
            return Err(refused(
                RejectCode::NotAdmitted,
                format!("node name `{}` is already used by node {node}; remove that node first or choose another --name", current.name),
            ));
        }
        let mut rec = current;
        let dropped = rec.previous_cert_serial.filter(|s| *s != rec.cert_serial);
        let first = (rec.cert_serial, rec.cert_not_after_unix);
        switch_certificate(&mut rec, first, issued);
        rec.address = peer.to_string();
        let changes = vec![
            Change::PutNode(Box::new(rec.clone())),
            Change::Event(NewEvent {
                kind: "node_joined",
                node: Some(node.clone()),
                message: format!(
                    "node {} asked to join again from {peer} with the same key (its first answer was lost): same node, new certificate serial {}, no token use spent",
                    rec.name, issued.serial
                ),
            }),
        ];
        let (_, ticket) = self.store.apply(changes)?;
        self.set_member_serial(issued.serial, true);
        if let Some(s) = dropped {
            self.set_member_serial(s, false);
        }
        if let Some(e) = t.nodes.get_mut(node) {
            e.record = rec;
        }
        Ok(ticket)
    }

    /// A node presented its certificate and said hello: it is ready on a new session. An older
    /// connection of the same node is closed. Applied when it returns; durable once the
    /// returned ticket is (the caller waits for it before sending `Welcome`).
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        node: &NodeId,
        cert_serial: u64,
        address: SocketAddr,
        agent_version: String,
        hardware: HardwareReport,
        control: Arc<crate::outbox::Outbox>,
        now: Instant,
    ) -> Result<Registered, MembershipError> {
        let mut t = lock(&self.table);
        let current = t.nodes.get(node).map(|e| e.record.clone()).ok_or_else(|| {
            refused(RejectCode::UnknownNode, format!("node {node} is not a member (it was removed); delete the agent's state dir and join again with a new token"))
        })?;
        if current.cert_serial != cert_serial && current.previous_cert_serial != Some(cert_serial) {
            return Err(refused(
                RejectCode::UnknownNode,
                format!("certificate serial {cert_serial} of node {node} was replaced or revoked"),
            ));
        }
        let mut rec = current;
        // After a renewal the serial the node really uses wins; the other one is revoked.
        let mut dropped = None;
        if let Some(previous) = rec.previous_cert_serial.take() {
            if cert_serial == previous {
                dropped = Some(rec.cert_serial);
                rec.cert_serial = previous;
                rec.cert_not_after_unix = rec.previous_cert_not_after_unix;
            } else {
                dropped = Some(previous);
            }
            rec.previous_cert_not_after_unix = 0;
        }
        let previous = rec.state;
        rec.address = address.to_string();
        rec.agent_version = agent_version;
        rec.hardware = hardware;
        rec.state = NodeState::Ready;
        rec.state_reason = match previous {
            NodeState::Down => "registered again after being declared down".into(),
            NodeState::Joining => "registered with its new certificate".into(),
            _ => "registered".into(),
        };
        rec.state_since_ms = self.clock.unix_ms();
        let mut changes = vec![
            Change::PutNode(Box::new(rec.clone())),
            Change::Event(NewEvent {
                kind: "node_state",
                node: Some(node.clone()),
                message: format!(
                    "node {} is ready ({}) from {}",
                    rec.name, rec.state_reason, rec.address
                ),
            }),
        ];
        // A node that comes up may complete or restore a pair, or form a new one.
        let plan = self.plan_pairs(&t, &rec, true, rec.state_since_ms, |nodes, pairs, c| {
            pairing::on_node_up(nodes, pairs, node, c.failback, rec.state_since_ms)
        });
        if let Some((_, p)) = &plan {
            changes.extend(p.changes.iter().cloned());
        }
        let (_, ticket) = self.store.apply(changes)?;
        if let Some(serial) = dropped {
            self.set_member_serial(serial, false);
        }
        if let Some((cid, p)) = plan {
            super::pairs::install(&mut t, &cid, p);
        }
        let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.detector).handle_registered(node.clone(), session, now);
        let Some(entry) = t.nodes.get_mut(node) else {
            return Err(refused(
                RejectCode::UnknownNode,
                format!("node {node} vanished"),
            ));
        };
        if let Some(old) = entry.live.take() {
            old.control.close_connection(
                CloseCode::Replaced,
                "replaced by a newer connection of this node",
            );
        }
        let name = rec.name.clone();
        entry.record = rec;
        entry.live = Some(Live { session, control });
        Ok(Registered {
            session,
            name,
            ticket,
        })
    }

    /// A node's connection ended. Its state stays until the detector decides: a crash must go
    /// through lease expiry like any other silence.
    pub fn disconnected(&self, node: &NodeId, session: u64) {
        let mut t = lock(&self.table);
        if let Some(e) = t.nodes.get_mut(node) {
            if e.live.as_ref().is_some_and(|l| l.session == session) {
                if let Some(l) = e.live.take() {
                    l.control.close();
                }
            }
        }
    }

    /// A beat arrived: returns the lease to grant, or `None` to send no ack.
    pub fn heartbeat(
        &self,
        node: &NodeId,
        session: u64,
        now: Instant,
    ) -> Option<std::time::Duration> {
        let r = lock(&self.detector).handle_heartbeat(node, session, now);
        match r {
            Some((lease, recovered)) => {
                self.metrics
                    .heartbeats_received
                    .fetch_add(1, Ordering::Relaxed);
                if recovered {
                    self.apply(Transition::Recovered { node: node.clone() });
                }
                Some(lease)
            }
            None => {
                self.metrics
                    .heartbeats_refused
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Applies a hardware delta from a node, recording an event for every GPU whose health
    /// changed (or that appeared or vanished).
    pub fn hardware_update(
        &self,
        node: &NodeId,
        delta: HardwareDelta,
    ) -> Result<(), MembershipError> {
        let mut t = lock(&self.table);
        let Some(e) = t.nodes.get_mut(node) else {
            return Ok(());
        };
        let mut rec = e.record.clone();
        let before = rec.hardware.gpus.clone();
        rec.hardware.apply(delta);
        let mut changes = vec![Change::PutNode(Box::new(rec.clone()))];
        for ev in gpu_health_events(&rec.name, &before, &rec.hardware.gpus) {
            changes.push(Change::Event(NewEvent {
                kind: "gpu_health",
                node: Some(node.clone()),
                message: ev,
            }));
        }
        // Placement reads it too: a decision on it waits for its flush.
        self.store.apply(changes)?;
        let view = |r: &crate::model::NodeRecord| {
            let v = crate::jobs::placement::NodeView::from_record(r);
            (v.cores, v.memory_bytes, v.gpus)
        };
        let room_changed = view(&e.record) != view(&rec);
        e.record = rec;
        // A GPU healthy again (or one more GPU, more cores or memory) may be what a pending
        // job waits for: the node's cluster is planned again, under this lock. (Before, a GPU
        // job stayed pending after the GPU it waited for recovered.)
        if room_changed {
            let open = crate::jobs::planner::Event::NodeOpen { node: node.clone() };
            if let Err(e) = self.job_event_locked(&mut t, &open) {
                tracing::error!(%node, error = %e, "could not plan again after a hardware change");
            }
        }
        Ok(())
    }

    /// The agent left on purpose.
    /// Applied when it returns: the caller waits for the ticket before closing the
    /// connection, so that thousands of agents leaving at once share flushes.
    pub fn left(
        &self,
        node: &NodeId,
        session: u64,
        reason: &str,
    ) -> Result<Option<crate::store::Ticket>, MembershipError> {
        let mut t = lock(&self.table);
        let Some(e) = t.nodes.get_mut(node) else {
            return Ok(None);
        };
        if e.live.as_ref().is_none_or(|l| l.session != session) {
            return Ok(None);
        }
        let mut rec = e.record.clone();
        rec.state = NodeState::Left;
        rec.state_reason = format!("the agent left: {reason}");
        rec.state_since_ms = self.clock.unix_ms();
        let (_, ticket) = self.store.apply(vec![
            Change::PutNode(Box::new(rec.clone())),
            Change::Event(NewEvent {
                kind: "node_state",
                node: Some(node.clone()),
                message: format!("node {} left: {reason}", rec.name),
            }),
        ])?;
        lock(&self.detector).forget(node);
        e.record = rec;
        Ok(Some(ticket))
    }

    /// Plans the pair changes an event on node `rec` causes in its `ha_pairs` cluster: `decide`
    /// gets the planner's view (with `rec` counted as `live`) and returns the decisions.
    pub(super) fn plan_pairs(
        &self,
        t: &Fleet,
        rec: &NodeRecord,
        live: bool,
        now_ms: u64,
        decide: impl FnOnce(&[PairNode], &[PairRecord], &ClusterRecord) -> Vec<PairDecision>,
    ) -> Option<(String, super::pairs::PairPlan)> {
        let cid = rec.cluster.as_ref()?;
        let cluster = t.clusters.get(cid)?;
        if cluster.mode != ClusterMode::HaPairs {
            return None;
        }
        let nodes = super::pairs::pair_nodes(t, cid, Some((&rec.id, live)));
        let current = super::pairs::cluster_pairs(t, cid);
        let decisions = decide(&nodes, &current, cluster);
        let plan = super::pairs::plan(t, cluster, &nodes, decisions, now_ms, true, &*self.clock);
        plan.changed.then(|| (cid.clone(), plan))
    }

    /// Records a renewed certificate for `node`, asked for on a connection that presented
    /// `conn_serial`. Applied, not waited for: the certificate is sent once it is durable. The
    /// connection's serial stays valid as the previous one until the node registers with the
    /// new one; any other serial the node had is revoked.
    pub fn record_renewal(
        &self,
        node: &NodeId,
        conn_serial: u64,
        issued: &tandem_common::pki::IssuedCert,
    ) -> Result<(), MembershipError> {
        let mut t = lock(&self.table);
        let Some(current) = t.nodes.get(node).map(|e| e.record.clone()) else {
            return Err(refused(
                RejectCode::UnknownNode,
                format!("node {node} is not a member"),
            ));
        };
        let conn_not_after = if current.cert_serial == conn_serial {
            current.cert_not_after_unix
        } else if current.previous_cert_serial == Some(conn_serial) {
            current.previous_cert_not_after_unix
        } else {
            return Err(refused(
                RejectCode::UnknownNode,
                format!("certificate serial {conn_serial} of node {node} was replaced or revoked"),
            ));
        };
        let dropped: Vec<u64> = [Some(current.cert_serial), current.previous_cert_serial]
            .into_iter()
            .flatten()
            .filter(|s| *s != conn_serial)
            .collect();
        let mut rec = current;
        switch_certificate(&mut rec, (conn_serial, conn_not_after), issued);
        let changes = vec![
            Change::PutNode(Box::new(rec.clone())),
            Change::Event(NewEvent {
                kind: "certificate",
                node: Some(node.clone()),
                message: format!(
                    "node {}: certificate renewed (serial {conn_serial} -> {}, valid until Unix {})",
                    rec.name, issued.serial, issued.not_after_unix
                ),
            }),
        ];
        // Applied; the caller waits for it to be durable before the certificate is sent.
        self.store.apply(changes)?;
        self.set_member_serial(issued.serial, true);
        for s in dropped {
            self.set_member_serial(s, false);
        }
        self.metrics
            .certificate_renewals
            .fetch_add(1, Ordering::Relaxed);
        if let Some(e) = t.nodes.get_mut(node) {
            e.record = rec;
        }
        Ok(())
    }

    /// The TLS layer's revocation check: does this certificate serial belong to a member?
    pub fn serial_check(&self) -> tandem_common::tls::SerialCheck {
        let set = self.member_serials.clone();
        Arc::new(move |serial| {
            set.read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&serial)
        })
    }

    /// Marks a certificate serial as a member's (after the record is durable) or revokes it.
    pub(crate) fn set_member_serial(&self, serial: u64, member: bool) {
        let mut s = self
            .member_serials
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if member {
            s.insert(serial);
        } else {
            s.remove(&serial);
        }
    }

    /// The on-demand heartbeat check begins: pings the node over its live connection now.
    /// The runtime waits for the pong (`EngineHandle::check`) and then calls `end_check`.
    /// `Err(why not alive)` when there is no connection to ping.
    pub fn begin_check(
        &self,
        node: &NodeId,
    ) -> Result<(u64, tokio::sync::oneshot::Receiver<()>), String> {
        let t = self.lock();
        let e = t.nodes.get(node).ok_or_else(|| format!("no node {node}"))?;
        let Some(l) = &e.live else {
            return Err(format!(
                "node {} has no connection to the coordinator (state {})",
                e.record.name,
                e.record.state.as_str()
            ));
        };
        let nonce = self.clock().random_u64();
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.pings).insert(nonce, tx);
        if l.control.push(CoordMsg::Ping { nonce }).is_err() {
            lock(&self.pings).remove(&nonce);
            return Err("the node's connection closed".to_string());
        }
        Ok((nonce, rx))
    }

    /// The check with `nonce` has ended (answered or not): its waiter is forgotten.
    pub fn end_check(&self, nonce: u64) {
        lock(&self.pings).remove(&nonce);
    }

    /// A pong arrived.
    pub fn pong(&self, nonce: u64) {
        if let Some(tx) = lock(&self.pings).remove(&nonce) {
            let _ = tx.send(());
        }
    }

    /// How much of the restart grace is left (nobody is declared down before it ends).
    pub fn restart_grace_left(&self, now: Instant) -> std::time::Duration {
        lock(&self.detector).restart_grace_left(now)
    }

    /// Whether `node` may still hold a lease: the detector tracks it and has not declared it
    /// down.
    pub fn may_hold_lease(&self, node: &NodeId) -> bool {
        matches!(
            lock(&self.detector).liveness(node),
            Some(Liveness::Alive | Liveness::Suspect)
        )
    }

    /// Stops the detector tracking a node that was removed.
    pub fn forget(&self, node: &NodeId) {
        lock(&self.detector).forget(node);
    }
}

/// Messages for GPUs whose health changed between two lists (GPUs are matched by UUID: indexes
/// change across boots).
pub fn gpu_health_events(node: &str, before: &[GpuInfo], after: &[GpuInfo]) -> Vec<String> {
    let mut out = Vec::new();
    let label = |g: &GpuInfo| format!("GPU {} ({})", g.index, g.uuid);
    for g in after {
        match before.iter().find(|b| b.uuid == g.uuid) {
            Some(b) if b.health == g.health => {}
            Some(b) => out.push(format!(
                "node {node}: {} health {} -> {}{}",
                label(g),
                b.health.state.as_str(),
                g.health.state.as_str(),
                g.health
                    .reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )),
            None => out.push(format!(
                "node {node}: {} appeared, {}",
                label(g),
                g.health.state.as_str()
            )),
        }
    }
    for b in before
        .iter()
        .filter(|b| !after.iter().any(|g| g.uuid == b.uuid))
    {
        out.push(format!("node {node}: {} is gone", label(b)));
    }
    out
}
