//! The engine's state and its reads: the one owner of fleet state (see the module above).

use super::fleet::{Fleet, NodeEntry};
use crate::clock::Map as HashMap;
use crate::detector::FailureDetector;
use crate::metrics::Metrics;
use crate::model::{NodeRecord, NodeState};
use crate::store::{StateStore, StoreError};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tandem_common::ids::NodeId;

/// The membership table and the detector, with the store behind them.
pub struct Engine {
    pub(super) store: Arc<dyn StateStore>,
    pub(super) table: Mutex<Fleet>,
    pub(super) detector: Mutex<FailureDetector>,
    pub(super) sessions: AtomicU64,
    /// Limits on clusters and their nodes.
    pub quotas: super::quotas::Quotas,
    /// The job side's settings and the log requests waiting for their answer.
    pub jobs: super::job_state::JobRuntime,
    /// Serials of the certificates of current members: any other certificate of our CA is
    /// refused at the TLS handshake (revocation).
    pub(super) member_serials: Arc<std::sync::RwLock<std::collections::HashSet<u64>>>,
    /// On-demand pings waiting for their pong, by nonce.
    pub(super) pings: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    /// Shared with the admin endpoint.
    pub metrics: Arc<Metrics>,
    /// Time and chance (simulated in the deterministic simulation).
    pub(super) clock: Arc<dyn crate::clock::Clock>,
    /// How long finished records are kept.
    pub(super) retention: crate::retention::Retention,
    /// What each node's jobs use, as last reported (memory only: never stored).
    pub usage: Arc<crate::usage::UsageBoard>,
    /// The longest agent hand-over granted (zero: none; see `handover`).
    pub(super) max_handover: std::time::Duration,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_mut<T>(m: &mut Mutex<T>) -> &mut T {
    m.get_mut().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Loads the table from the store. Nodes that were alive when the coordinator stopped are
    /// handed to the detector as restored: they have the restart grace to come back.
    pub fn load(
        store: Arc<dyn StateStore>,
        detector: FailureDetector,
        metrics: Arc<Metrics>,
        now: Instant,
    ) -> Result<Self, StoreError> {
        let mut detector = detector;
        let cfg = *detector.config();
        let mut table = Fleet::new(crate::jobs::planner::Planner::new(
            cfg.lease.as_millis() as u64
        ));
        let mut restored = 0usize;
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
                restored += 1;
                table.removing.insert(rec.id.clone(), rec);
                continue;
            }
            if matches!(
                rec.state,
                NodeState::Ready | NodeState::Suspect | NodeState::Joining
            ) {
                detector.handle_restored(rec.id.clone(), now);
                restored += 1;
            }
            table.insert_node(NodeEntry {
                record: rec,
                live: None,
            });
        }
        if restored == 0 {
            // Nobody that may still be running was remembered (a new store, or every node
            // down or gone): there is nobody to wait for.
            detector.end_restart_grace(now);
        }
        // fence_grace = fence kill timeout + 5% of the lease + 50 ms (see the config).
        let serials = table
            .nodes
            .values()
            .flat_map(|e| [Some(e.record.cert_serial), e.record.previous_cert_serial])
            .flatten()
            .collect();
        let fence_kill = cfg
            .fence_grace
            .saturating_sub(cfg.lease / 20 + std::time::Duration::from_millis(50));
        Ok(Self {
            store,
            table: Mutex::new(table),
            detector: Mutex::new(detector),
            sessions: AtomicU64::new(0),
            quotas: Default::default(),
            jobs: super::job_state::JobRuntime::new(fence_kill),
            member_serials: Arc::new(std::sync::RwLock::new(serials)),
            pings: Mutex::new(HashMap::default()),
            metrics,
            clock: Arc::new(crate::clock::SystemClock),
            retention: Default::default(),
            usage: Default::default(),
            max_handover: std::time::Duration::from_secs(60),
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

    /// The configured fence parameters, to record once no node may hold older ones.
    pub fn with_fence_update(mut self, configured: Option<crate::model::FenceParams>) -> Self {
        lock_mut(&mut self.table).fence_update = configured;
        self
    }

    /// Sets the longest agent hand-over granted (zero: none).
    pub fn with_max_handover(mut self, max: std::time::Duration) -> Self {
        self.max_handover = max;
        self
    }

    /// Sets how long finished records are kept.
    pub fn with_retention(mut self, retention: crate::retention::Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the cluster quotas (at start-up).
    pub fn with_quotas(mut self, quotas: super::quotas::Quotas) -> Self {
        self.quotas = quotas;
        self
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

    /// The node named `name`, if any.
    pub fn node_named(&self, name: &str) -> Option<NodeRecord> {
        lock(&self.table).node_named(name).map(|e| e.record.clone())
    }

    /// The name of `node` if a certificate of `serial` is still accepted for it (the rule
    /// `register` applies: a member whose current or previous serial it is), or why not.
    pub fn certificate_accepted(&self, node: &NodeId, serial: u64) -> Result<String, String> {
        let t = lock(&self.table);
        let Some(e) = t.nodes.get(node) else {
            return Err(format!("node {node} is not a member (it was removed); delete the agent's state dir and join again with a new token"));
        };
        let r = &e.record;
        if r.cert_serial != serial && r.previous_cert_serial != Some(serial) {
            return Err(format!(
                "certificate serial {serial} of node {node} was replaced or revoked"
            ));
        }
        Ok(r.name.clone())
    }
}

#[cfg(test)]
impl Engine {
    /// An engine over an empty in-memory store (200 ms beats, 1 s lease, 300 ms fence grace,
    /// 2 s restart grace), for unit tests.
    pub(crate) fn for_tests() -> (Engine, Arc<crate::store::MemStore>) {
        let store = Arc::new(crate::store::MemStore::new());
        let now = Instant::now();
        let detector = FailureDetector::new(
            crate::detector::DetectorConfig {
                heartbeat: std::time::Duration::from_millis(200),
                lease: std::time::Duration::from_secs(1),
                fence_grace: std::time::Duration::from_millis(300),
                suspect_after_missed: 3,
                restart_grace: std::time::Duration::from_secs(2),
            },
            now,
        );
        let e = Engine::load(store.clone(), detector, Default::default(), now)
            .expect("an empty store loads");
        (e, store)
    }
}
