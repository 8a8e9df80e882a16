//! Membership: the node table, and every change to it.
//!
//! The table lives in memory for reads and in the [`StateStore`] for durability. Every change
//! (a join, a registration, a state change) is applied to the store under the table's lock, so
//! the order in the store is the order of the decisions, and is durable *before* anyone is
//! told: what goes to a node waits in its outbox for the batch's ticket (see `outbox`), and a
//! reply (a Welcome, an admin answer) waits for it too. Nobody waits for the disk under the
//! lock. A `kill -9` before the flush loses only what nobody was told.
//!
//! Heartbeats never come through here; they go to the failure detector, which is in memory.

use crate::clock::Map as HashMap;
use crate::cluster::pairing::{self, PairDecision, PairNode};
use crate::detector::{FailureDetector, Liveness, Transition};
use crate::metrics::Metrics;
use crate::model::{
    ClusterMode, ClusterRecord, NewEvent, NodeRecord, NodeState, PairRecord, TokenRecord,
};
use crate::pairs;
use crate::store::{Change, StateStore, StoreError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

/// A node's live connection.
#[derive(Clone, Debug)]
pub struct Live {
    /// The connection's session number.
    pub session: u64,
    /// Commands to send on its control stream (never dropped: see `outbox`), and the way to
    /// close its connection: the connection itself belongs to the session task.
    pub control: Arc<crate::outbox::Outbox>,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct NodeEntry {
    /// What is stored.
    pub record: NodeRecord,
    /// Its connection, if it has one now.
    pub live: Option<Live>,
}

/// Everything membership decides on, under one lock so that decisions are serialised.
#[derive(Default)]
pub struct Fleet {
    /// Nodes by id.
    pub nodes: HashMap<NodeId, NodeEntry>,
    /// Clusters by id.
    pub clusters: HashMap<String, ClusterRecord>,
    /// Pairs by id.
    pub pairs: HashMap<String, PairRecord>,
    /// Jobs by id.
    pub jobs: HashMap<String, crate::jobs::model::JobRecord>,
    /// Nodes removed while they may still hold a lease, by id: out of the node table (their
    /// certificate is revoked, their name is free), kept as tombstones in the store, and shown
    /// to the job planner as live and draining until the detector declares them down.
    pub removing: HashMap<NodeId, NodeRecord>,
    /// Node ids by name (names are unique), kept with `nodes` by [`Fleet::insert_node`] and
    /// [`Fleet::remove_node`]: a join or a look-up by name must not compare every name of a
    /// large fleet (at 25,000 nodes those scans were a fifth of a join storm's CPU).
    names: HashMap<String, NodeId>,
}

impl Fleet {
    /// Adds (or replaces) a node, keeping the name index.
    pub fn insert_node(&mut self, entry: NodeEntry) {
        if let Some(old) = self.nodes.get(&entry.record.id) {
            if old.record.name != entry.record.name {
                self.names.remove(&old.record.name);
            }
        }
        self.names
            .insert(entry.record.name.clone(), entry.record.id.clone());
        self.nodes.insert(entry.record.id.clone(), entry);
    }

    /// Removes a node, keeping the name index.
    pub fn remove_node(&mut self, id: &NodeId) -> Option<NodeEntry> {
        let e = self.nodes.remove(id)?;
        if self.names.get(&e.record.name) == Some(id) {
            self.names.remove(&e.record.name);
        }
        Some(e)
    }

    /// The node named `name`.
    pub fn node_named(&self, name: &str) -> Option<&NodeEntry> {
        self.names.get(name).and_then(|id| self.nodes.get(id))
    }
}

/// The membership table and the detector, with the store behind them.
pub struct Membership {
    store: Arc<dyn StateStore>,
    table: Mutex<Fleet>,
    detector: Mutex<FailureDetector>,
    sessions: AtomicU64,
    /// Limits on clusters and their nodes.
    pub quotas: crate::administration::Quotas,
    /// The job planner and the commands in flight.
    pub jobs: crate::job_runtime::JobRuntime,
    /// Serials of the certificates of current members: any other certificate of our CA is
    /// refused at the TLS handshake (revocation).
    member_serials: Arc<std::sync::RwLock<std::collections::HashSet<u64>>>,
    /// On-demand pings waiting for their pong, by nonce.
    pings: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    /// Shared with the admin endpoint.
    pub metrics: Arc<Metrics>,
    /// The configured fence parameters, to be recorded as the ones in force once no node may
    /// hold older ones (see the detector's "Fence parameters").
    fence_update: Mutex<Option<crate::model::FenceParams>>,
    /// Time and chance (simulated in the deterministic simulation).
    clock: Arc<dyn crate::clock::Clock>,
    /// How long finished records are kept.
    retention: crate::retention::Retention,
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

impl Membership {
    /// Loads the table from the store. Nodes that were alive when the coordinator stopped are
    /// handed to the detector as restored: they have the restart grace to come back.
    pub fn load(
        store: Arc<dyn StateStore>,
        detector: FailureDetector,
        metrics: Arc<Metrics>,
        now: Instant,
    ) -> Result<Self, StoreError> {
        let mut detector = detector;
        let mut table = Fleet::default();
        for c in store.clusters()? {
            table.clusters.insert(c.id.clone(), c);
        }
        for p in store.pairs()? {
            table.pairs.insert(p.id.clone(), p);
        }
        for j in store.jobs()? {
            table.jobs.insert(j.id.clone(), j);
        }
        for rec in store.nodes()? {
            if rec.removed_ms.is_some() {
                // A removal that waited for the node's lease when we stopped: the lease it may
                // hold ends within the restart grace, after which the detector finishes it.
                detector.handle_restored(rec.id.clone(), now);
                table.removing.insert(rec.id.clone(), rec);
                continue;
            }
            if matches!(
                rec.state,
                NodeState::Ready | NodeState::Suspect | NodeState::Joining
            ) {
                detector.handle_restored(rec.id.clone(), now);
            }
            table.insert_node(NodeEntry {
                record: rec,
                live: None,
            });
        }
        // fence_grace = fence kill timeout + 5% of the lease + 50 ms (see the config).
        let serials = table
            .nodes
            .values()
            .flat_map(|e| [Some(e.record.cert_serial), e.record.previous_cert_serial])
            .flatten()
            .collect();
        let cfg = *detector.config();
        let fence_kill = cfg
            .fence_grace
            .saturating_sub(cfg.lease / 20 + std::time::Duration::from_millis(50));
        Ok(Self {
            store,
            table: Mutex::new(table),
            detector: Mutex::new(detector),
            sessions: AtomicU64::new(0),
            quotas: Default::default(),
            jobs: crate::job_runtime::JobRuntime::new(cfg.lease, fence_kill),
            member_serials: Arc::new(std::sync::RwLock::new(serials)),
            pings: Mutex::new(HashMap::default()),
            metrics,
            fence_update: Mutex::new(None),
            clock: Arc::new(crate::clock::SystemClock),
            retention: Default::default(),
        })
    }

    /// Reads time and chance from `clock` instead of the system's (the simulation's clock).
    pub fn with_clock(mut self, clock: Arc<dyn crate::clock::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where time and chance come from.
    pub fn clock(&self) -> &dyn crate::clock::Clock {
        &*self.clock
    }

    /// A look at the fleet, for observers (the simulation's checks): nothing can change it.
    pub fn read<R>(&self, f: impl FnOnce(&Fleet) -> R) -> R {
        f(&lock(&self.table))
    }

    /// The fleet table, locked. Every change to it is applied to the store while the lock is
    /// held, before the table itself changes.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Fleet> {
        lock(&self.table)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// A snapshot of every node.
    pub fn snapshot(&self) -> Vec<NodeEntry> {
        let mut v: Vec<_> = lock(&self.table).nodes.values().cloned().collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        v
    }

    /// `(node name, GPU)` for every GPU of the fleet, or `None` when there are more than
    /// `limit` (copies only the GPU sections, never whole records).
    pub fn gpus_for_metrics(
        &self,
        limit: usize,
    ) -> Option<Vec<(String, tandem_common::hardware::GpuInfo)>> {
        let t = lock(&self.table);
        let total: usize = t.nodes.values().map(|e| e.record.hardware.gpus.len()).sum();
        if total > limit {
            return None;
        }
        let mut out: Vec<_> = t
            .nodes
            .values()
            .flat_map(|e| {
                e.record
                    .hardware
                    .gpus
                    .iter()
                    .map(|g| (e.record.name.clone(), g.clone()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.index).cmp(&(&b.0, b.1.index)));
        Some(out)
    }

    /// One page of nodes in name order: those named after `after`, at most `limit`, and
    /// whether more follow. Only the page is copied out of the table: a large fleet's pages
    /// cost O(fleet) comparisons, not O(fleet) copies of every node's hardware report.
    pub fn page(&self, after: Option<&str>, limit: usize) -> (Vec<NodeEntry>, bool) {
        let t = lock(&self.table);
        let mut rest: Vec<&NodeEntry> = t
            .nodes
            .values()
            .filter(|e| after.is_none_or(|a| e.record.name.as_str() > a))
            .collect();
        let more = rest.len() > limit;
        if more {
            rest.select_nth_unstable_by(limit, |a, b| a.record.name.cmp(&b.record.name));
            rest.truncate(limit);
        }
        rest.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        (rest.into_iter().cloned().collect(), more)
    }

    /// One node by id or name.
    pub fn find(&self, id_or_name: &str) -> Option<NodeEntry> {
        let t = lock(&self.table);
        if let Some(e) = NodeId::parse(id_or_name).and_then(|id| t.nodes.get(&id)) {
            return Some(e.clone());
        }
        t.node_named(id_or_name).cloned()
    }

    /// Milliseconds since the node's last beat, as the detector saw it.
    pub fn silent_for_ms(&self, node: &NodeId, now: Instant) -> Option<u64> {
        lock(&self.detector)
            .silent_for(node, now)
            .map(|d| d.as_millis() as u64)
    }

    /// How many nodes the table holds.
    pub fn node_count(&self) -> usize {
        lock(&self.table).nodes.len()
    }

    /// Nodes by state, and how many hold a live connection.
    pub fn counts(&self) -> (Vec<(&'static str, usize)>, usize) {
        let t = lock(&self.table);
        let by_state = NodeState::ALL
            .iter()
            .map(|s| {
                (
                    s.as_str(),
                    t.nodes.values().filter(|e| e.record.state == *s).count(),
                )
            })
            .collect();
        (
            by_state,
            t.nodes.values().filter(|e| e.live.is_some()).count(),
        )
    }

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

    /// The node named `name`, if any.
    pub fn node_named(&self, name: &str) -> Option<NodeRecord> {
        lock(&self.table).node_named(name).map(|e| e.record.clone())
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
            pairs::install(&mut t, &cid, p);
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
        // Shown only (placement reads it too, and a decision on it waits for its flush).
        self.store.apply(changes)?;
        e.record = rec;
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
    fn plan_pairs(
        &self,
        t: &Fleet,
        rec: &NodeRecord,
        live: bool,
        now_ms: u64,
        decide: impl FnOnce(&[PairNode], &[PairRecord], &ClusterRecord) -> Vec<PairDecision>,
    ) -> Option<(String, pairs::PairPlan)> {
        let cid = rec.cluster.as_ref()?;
        let cluster = t.clusters.get(cid)?;
        if cluster.mode != ClusterMode::HaPairs {
            return None;
        }
        let nodes = pairs::pair_nodes(t, cid, Some((&rec.id, live)));
        let current = pairs::cluster_pairs(t, cid);
        let decisions = decide(&nodes, &current, cluster);
        let plan = pairs::plan(t, cluster, &nodes, decisions, now_ms, true, &*self.clock);
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

    /// The configured fence parameters, to record once no node may hold older ones.
    pub fn with_fence_update(self, configured: Option<crate::model::FenceParams>) -> Self {
        *lock(&self.fence_update) = configured;
        self
    }

    /// Records the configured fence parameters as the ones in force once no node may hold
    /// the old ones any more.
    fn maybe_record_fence_params(&self, now: Instant) {
        let mut pending = lock(&self.fence_update);
        let Some(p) = *pending else { return };
        if lock(&self.detector).legacy_left(now) {
            return;
        }
        // Applied, not waited for: until it is durable a restart reads the older (larger)
        // parameters, which is the safe side.
        match self.store.apply(vec![
            Change::PutFenceParams(p),
            Change::Event(NewEvent {
                kind: "fence",
                node: None,
                message: format!(
                    "every node holds the new fence parameters (lease {} ms, fence kill timeout {} ms); they are the ones in force",
                    p.lease_ms, p.fence_kill_timeout_ms
                ),
            }),
        ]) {
            Ok(_) => {
                tracing::info!(lease_ms = p.lease_ms, fence_kill_timeout_ms = p.fence_kill_timeout_ms, "every node holds the new fence parameters");
                *pending = None;
            }
            Err(err) => tracing::error!(%err, "could not record the fence parameters in force"),
        }
    }

    /// Sets how long finished records are kept (at start-up).
    pub fn with_retention(mut self, retention: crate::retention::Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Deletes the finished jobs, spent tokens and finished operations past their retention,
    /// in one durable batch. Run now and then (it reads every token and operation).
    pub fn sweep(&self, now_ms: u64) -> Result<crate::retention::Expired, StoreError> {
        let tokens = self.store.tokens()?;
        let operations = self.store.operations()?;
        let mut t = self.lock();
        let e = crate::retention::expired(
            &self.retention,
            now_ms,
            t.jobs.values(),
            &tokens,
            &operations,
        );
        if e.is_empty() {
            return Ok(e);
        }
        let mut changes: Vec<Change> = Vec::new();
        changes.extend(e.jobs.iter().cloned().map(Change::DeleteJob));
        changes.extend(e.tokens.iter().cloned().map(Change::DeleteToken));
        changes.extend(e.operations.iter().cloned().map(Change::DeleteOperation));
        self.store.apply(changes)?;
        for id in &e.jobs {
            t.jobs.remove(id);
        }
        drop(t);
        let m = &self.metrics;
        m.retention_jobs_deleted
            .fetch_add(e.jobs.len() as u64, Ordering::Relaxed);
        m.retention_tokens_deleted
            .fetch_add(e.tokens.len() as u64, Ordering::Relaxed);
        m.retention_operations_deleted
            .fetch_add(e.operations.len() as u64, Ordering::Relaxed);
        tracing::info!(
            jobs = e.jobs.len(),
            tokens = e.tokens.len(),
            operations = e.operations.len(),
            "deleted finished records past their retention"
        );
        Ok(e)
    }

    /// Sets the cluster quotas (at start-up).
    pub fn with_quotas(mut self, quotas: crate::administration::Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// The on-demand heartbeat check: pings the node over its live connection now and waits
    /// at most `timeout` for the answer. `Ok(round trip)` or `Err(why not alive)`.
    pub async fn check(
        &self,
        node: &NodeId,
        timeout: std::time::Duration,
    ) -> Result<std::time::Duration, String> {
        let control = {
            let t = self.lock();
            let e = t.nodes.get(node).ok_or_else(|| format!("no node {node}"))?;
            match &e.live {
                Some(l) => l.control.clone(),
                None => {
                    return Err(format!(
                        "node {} has no connection to the coordinator (state {})",
                        e.record.name,
                        e.record.state.as_str()
                    ))
                }
            }
        };
        let nonce = rand::random::<u64>();
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.pings).insert(nonce, tx);
        let start = Instant::now();
        let sent = control.push(CoordMsg::Ping { nonce }).is_ok();
        let r = if !sent {
            Err("the node's connection closed".to_string())
        } else {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(())) => Ok(start.elapsed()),
                Ok(Err(_)) => Err("the node's connection closed".to_string()),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            }
        };
        lock(&self.pings).remove(&nonce);
        r
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

    /// Runs the detector at `now` and applies what it decides.
    pub fn tick(&self, now: Instant) {
        self.fire_job_timers(now);
        self.maybe_record_fence_params(now);
        self.check_unanswered_starts(now);
        let transitions = lock(&self.detector).handle_tick(now);
        // A wave (a stalled network, a rack losing power) brings thousands of transitions in
        // one tick. Each is recorded and acted on before the next one is even recorded: the
        // job planner's disruption guard counts the downs it has been told of against the
        // nodes it sees, and must see them one by one. Nothing here waits for the disk: what
        // a down leads to (its jobs' starts elsewhere, its connection's close) is queued to
        // outboxes, which send only once the down's batch is durable, so a wave's downs share
        // flushes instead of paying one each.
        let (downs, others): (Vec<_>, Vec<_>) = transitions
            .into_iter()
            .partition(|t| matches!(t, Transition::Down { .. }));
        for tr in others {
            if let Some((_, f)) = self.record_transition(tr) {
                self.follow_up(f);
            }
        }
        for tr in downs {
            if let Some((_, f)) = self.record_transition(tr) {
                self.follow_up(f);
            }
        }
    }

    /// A transition outside the tick (a suspect beat again): recorded, then acted on. What it
    /// leads to (job decisions) is applied after this record and leaves once durable.
    fn apply(&self, tr: Transition) {
        if let Some((_, f)) = self.record_transition(tr) {
            self.follow_up(f);
        }
    }

    /// Acts on a recorded transition.
    fn follow_up(&self, f: FollowUp) {
        match f {
            FollowUp::Down { node, live } => {
                if let Some(live) = live {
                    live.control
                        .close_connection(CloseCode::DeclaredDown, "declared down: register again");
                }
                // The node's lease and fence grace are over: its jobs may start elsewhere.
                if let Err(err) = self.jobs_on_node_down(&node) {
                    tracing::error!(node = %node, %err, "could not place the node's jobs again");
                }
            }
            FollowUp::Removed { node } => {
                // Shown to the planner as removed for this one event, then gone.
                if let Err(err) = self.jobs_on_node_removed(&node) {
                    tracing::error!(node = %node, %err, "could not place a removed node's jobs again");
                }
                self.lock().removing.remove(&node);
                self.forget(&node);
            }
            FollowUp::Recovered { node } => {
                // A failover that waited to see whether this suspect goes down too goes on.
                let event = crate::jobs::planner::Event::Recovered { node: node.clone() };
                if let Err(err) = self.job_event(event) {
                    tracing::error!(node = %node, %err, "could not reconcile jobs after a recovery");
                }
            }
            FollowUp::Nothing => {}
        }
    }

    /// Applies a transition to the table and the store (not yet durable: see the callers).
    fn record_transition(&self, tr: Transition) -> Option<(crate::store::Ticket, FollowUp)> {
        let (node, state, reason) = match &tr {
            Transition::Suspect { node, silent_for } => (
                node,
                NodeState::Suspect,
                format!("no heartbeat for {} ms", silent_for.as_millis()),
            ),
            Transition::Recovered { node } => (node, NodeState::Ready, "heartbeats resumed".into()),
            Transition::Down { node, silent_for } => (
                node,
                NodeState::Down,
                format!(
                    "no heartbeat for {} ms: its lease and fence grace ran out",
                    silent_for.as_millis()
                ),
            ),
        };
        let mut t = lock(&self.table);
        // The detector decided on what it knew when it scanned; the downs of a wave are then
        // recorded one by one, each waiting for its flush. A node that registered again in
        // between (a new session, Alive again) must not be overwritten: that would close its
        // live connection and place its running jobs elsewhere. Registration changes the
        // detector under this same table lock, so what is checked here is what is acted on.
        let expected = match &tr {
            Transition::Suspect { .. } => Liveness::Suspect,
            Transition::Recovered { .. } => Liveness::Alive,
            Transition::Down { .. } => Liveness::Down,
        };
        let now_is = lock(&self.detector).liveness(node);
        if now_is != Some(expected) {
            tracing::info!(node = %node, to = state.as_str(), ?now_is, "state change not recorded: the node registered again (or recovered) since the detector decided");
            return None;
        }
        if let Some(tomb) = t.removing.get_mut(node) {
            if state != NodeState::Down {
                return None;
            }
            // A removed node's lease is over: its removal ends, and its jobs may move.
            let name = tomb.name.clone();
            let ticket = match self.store.apply(vec![
                Change::DeleteNode(node.clone()),
                Change::Event(NewEvent {
                    kind: "node_removed",
                    node: Some(node.clone()),
                    message: format!("node {name}: removal complete, its lease is over ({reason}); its jobs may run elsewhere"),
                }),
            ]) {
                Ok((_, ticket)) => ticket,
                Err(err) => {
                    tracing::error!(node = %node, %err, "could not record the end of a removal");
                    return None;
                }
            };
            tomb.state = NodeState::Down;
            tomb.state_reason = reason;
            tracing::info!(node = %node, %name, "removal complete: the node's lease is over");
            return Some((ticket, FollowUp::Removed { node: node.clone() }));
        }
        let current = t.nodes.get(node).map(|e| e.record.clone())?;
        if current.state == state || current.state == NodeState::Left {
            return None;
        }
        let mut rec = current;
        rec.state = state;
        rec.state_reason = reason.clone();
        rec.state_since_ms = self.clock.unix_ms();
        let mut changes = vec![
            Change::PutNode(Box::new(rec.clone())),
            Change::Event(NewEvent {
                kind: "node_state",
                node: Some(node.clone()),
                message: format!("node {} is {}: {reason}", rec.name, state.as_str()),
            }),
        ];
        // Only `down` changes a pair: a suspect node may still hold its lease.
        let plan = if state == NodeState::Down {
            let now_ms = rec.state_since_ms;
            let silent = match &tr {
                Transition::Down { silent_for, .. } => silent_for.as_millis(),
                _ => 0,
            };
            self.plan_pairs(&t, &rec, false, now_ms, |nodes, pairs, _| {
                let mut d = pairing::on_node_down(nodes, pairs, node, now_ms);
                for x in &mut d {
                    if let PairDecision::Promote { reason, .. } = x {
                        reason.push_str(&format!("; {silent} ms after its last heartbeat"));
                    }
                }
                d
            })
        } else {
            None
        };
        if let Some((_, p)) = &plan {
            changes.extend(p.changes.iter().cloned());
        }
        let ticket = match self.store.apply(changes) {
            Ok((_, ticket)) => ticket,
            // Nothing is acted on without a record. The detector has moved on and refuses
            // this node's beats, so the node will register again, which is recorded.
            Err(err) => {
                tracing::error!(node = %node, %err, "could not record a state change");
                return None;
            }
        };
        if let Transition::Down { silent_for, .. } = &tr {
            self.metrics
                .nodes_declared_down
                .fetch_add(1, Ordering::Relaxed);
            self.metrics.detection.observe(*silent_for);
        }
        tracing::info!(node = %node, name = %rec.name, state = state.as_str(), %reason, "node state changed");
        if let Some((cid, p)) = plan {
            pairs::install(&mut t, &cid, p);
        }
        let mut live = None;
        if let Some(e) = t.nodes.get_mut(node) {
            e.record = rec;
            if state == NodeState::Down {
                live = e.live.take();
            }
        }
        let follow = match tr {
            Transition::Down { .. } => FollowUp::Down {
                node: node.clone(),
                live,
            },
            Transition::Recovered { .. } => FollowUp::Recovered { node: node.clone() },
            Transition::Suspect { .. } => FollowUp::Nothing,
        };
        Some((ticket, follow))
    }
}

/// What is left to do once a transition is recorded.
enum FollowUp {
    /// Close the node's connection and move its jobs.
    Down {
        /// The node.
        node: NodeId,
        /// Its connection, taken from the table.
        live: Option<Live>,
    },
    /// A removed node's lease is over: place its jobs again, then forget it.
    Removed {
        /// The node.
        node: NodeId,
    },
    /// Let held failovers go on.
    Recovered {
        /// The node.
        node: NodeId,
    },
    /// Shown only.
    Nothing,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_index_follows_inserts_replacements_and_removals() {
        let mut f = Fleet::default();
        let a = crate::model::test_node("a");
        let id = a.id.clone();
        f.insert_node(NodeEntry {
            record: a.clone(),
            live: None,
        });
        assert_eq!(f.node_named("a").map(|e| &e.record.id), Some(&id));
        // Replaced under another name: the old name is free.
        let mut b = a;
        b.name = "b".into();
        f.insert_node(NodeEntry {
            record: b,
            live: None,
        });
        assert!(f.node_named("a").is_none());
        assert_eq!(f.node_named("b").map(|e| &e.record.id), Some(&id));
        assert!(f.remove_node(&id).is_some());
        assert!(f.node_named("b").is_none() && f.nodes.is_empty());
        assert!(f.remove_node(&id).is_none());
    }
}
