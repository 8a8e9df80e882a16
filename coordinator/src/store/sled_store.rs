//! The embedded store: sled 0.34 in the data directory.
//!
//! Trees: `nodes`, `tokens`, `clusters`, `pairs`, `operations`, `jobs`, `events` (key: big-endian
//! sequence number) and `meta` (schema version, certificate serial counter). A batch is one sled transaction over the trees it
//! touches, so a batch is all-or-nothing; it is durable once the flusher thread's next flush
//! covers its ticket (see `group_commit`).

use super::group_commit::{Flusher, GroupCommit, Ticket};
use super::{Change, StateStore, StoreError, SCHEMA_VERSION};
use crate::model::{ClusterRecord, Event, NodeRecord, OperationRecord, PairRecord, TokenRecord};
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tandem_common::ids::NodeId;

/// How long to wait for the store's lock held by a process that is still exiting.
/// The meta tree's keys of agent hand-over holds: `node_hold/<node id>`.
const NODE_HOLD_PREFIX: &str = "node_hold/";

const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// sled's page cache.
const STORE_CACHE_BYTES: u64 = 16 << 20;

/// Events kept; older ones are pruned.
const EVENTS_KEPT: u64 = 10_000;

/// The sled-backed [`StateStore`].
pub struct SledStore {
    nodes: sled::Tree,
    tokens: sled::Tree,
    events: sled::Tree,
    clusters: sled::Tree,
    pairs: sled::Tree,
    operations: sled::Tree,
    jobs: sled::Tree,
    meta: sled::Tree,
    /// Serialises commits so event sequence numbers are handed out in commit order.
    commit_lock: Mutex<u64>,
    /// Tickets and the one flush that many batches share.
    group: Arc<GroupCommit>,
    /// The flusher thread; dropping the store flushes what is left and stops it.
    _flusher: Flusher,
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|r| {
            let (k, v) = r.map_err(engine)?;
            decode(&k, &v)
        })
        .collect()
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // The fleet is read from the store once, at start; afterwards the table in memory
            // answers every read. sled's default 1 GiB page cache would only hold a second
            // copy of what is written (it grew with every record written).
            .cache_capacity(STORE_CACHE_BYTES);
        // A coordinator restarted right after a `kill -9` can start before the kernel has
        // finished tearing the old process down and released its lock on the store: wait for
        // it a little instead of failing (a second coordinator on the same data dir still gets
        // a clear error once this runs out).
        let give_up = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled reports a held lock as `Other` with this text (sled 0.34 config.rs).
                Err(sled::Error::Io(e))
                    if e.to_string().starts_with("could not acquire lock")
                        && std::time::Instant::now() < give_up =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(engine(format!(
                        "{e} (is another coordinator using {}?)",
                        dir.display()
                    )))
                }
            }
        };
        let meta = db.open_tree("meta").map_err(engine)?;
        match meta.get("schema_version").map_err(engine)? {
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        key: "schema_version".into(),
                        reason: "not 4 bytes".into(),
                    })?);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(engine)?;
                db.flush().map_err(engine)?;
            }
        }
        let events = db.open_tree("events").map_err(engine)?;
        let last_seq = match events.last().map_err(engine)? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])),
            None => 0,
        };
        let flush_db = db.clone();
        let (group, flusher) =
            GroupCommit::start(move || flush_db.flush().map(|_| ()).map_err(|e| e.to_string()))
                .map_err(engine)?;
        Ok(Self {
            group,
            _flusher: flusher,
            nodes: db.open_tree("nodes").map_err(engine)?,
            tokens: db.open_tree("tokens").map_err(engine)?,
            clusters: db.open_tree("clusters").map_err(engine)?,
            pairs: db.open_tree("pairs").map_err(engine)?,
            operations: db.open_tree("operations").map_err(engine)?,
            jobs: db.open_tree("jobs").map_err(engine)?,
            events,
            meta,
            commit_lock: Mutex::new(last_seq),
        })
    }
}

impl StateStore for SledStore {
    fn wait_durable(&self, ticket: Ticket) {
        self.group.wait(ticket)
    }

    fn last_ticket(&self) -> Ticket {
        self.group.last()
    }

    fn durable(
        &self,
        ticket: Ticket,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.group.durable(ticket))
    }

    fn apply(&self, changes: Vec<Change>) -> Result<(Vec<Event>, Ticket), StoreError> {
        let mut seq = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = tandem_common::time::unix_ms();
        let mut next = *seq;
        let mut recorded = Vec::new();
        let mut writes: Vec<(u8, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for c in changes {
            match c {
                Change::PutNode(n) => writes.push((
                    0,
                    n.id.as_str().as_bytes().to_vec(),
                    Some(serde_json::to_vec(&n).map_err(engine)?),
                )),
                Change::DeleteNode(id) => writes.push((0, id.as_str().as_bytes().to_vec(), None)),
                Change::PutToken(t) => writes.push((
                    1,
                    t.id.as_bytes().to_vec(),
                    Some(serde_json::to_vec(&t).map_err(engine)?),
                )),
                Change::PutCluster(c) => writes.push((
                    3,
                    c.id.as_bytes().to_vec(),
                    Some(serde_json::to_vec(&c).map_err(engine)?),
                )),
                Change::DeleteCluster(id) => writes.push((3, id.into_bytes(), None)),
                Change::PutPair(p) => writes.push((
                    4,
                    p.id.as_bytes().to_vec(),
                    Some(serde_json::to_vec(&p).map_err(engine)?),
                )),
                Change::DeletePair(id) => writes.push((4, id.into_bytes(), None)),
                Change::PutOperation(o) => writes.push((
                    5,
                    o.id.as_bytes().to_vec(),
                    Some(serde_json::to_vec(&o).map_err(engine)?),
                )),
                Change::PutJob(j) => writes.push((
                    6,
                    j.id.as_bytes().to_vec(),
                    Some(serde_json::to_vec(&j).map_err(engine)?),
                )),
                Change::DeleteJob(id) => writes.push((6, id.into_bytes(), None)),
                Change::DeleteToken(id) => writes.push((1, id.into_bytes(), None)),
                Change::DeleteOperation(id) => writes.push((5, id.into_bytes(), None)),
                Change::PutFenceParams(f) => writes.push((
                    7,
                    b"fence_params".to_vec(),
                    Some(serde_json::to_vec(&f).map_err(engine)?),
                )),
                Change::PutRestartHold(h) => writes.push((
                    7,
                    b"restart_hold".to_vec(),
                    h.map(|h| serde_json::to_vec(&h))
                        .transpose()
                        .map_err(engine)?,
                )),
                Change::PutNodeHold(n, h) => writes.push((
                    7,
                    format!("{NODE_HOLD_PREFIX}{n}").into_bytes(),
                    h.map(|h| serde_json::to_vec(&h))
                        .transpose()
                        .map_err(engine)?,
                )),
                Change::Event(e) => {
                    next += 1;
                    let ev = Event {
                        seq: next,
                        time_ms: now,
                        kind: e.kind.to_string(),
                        node: e.node.map(|n| n.0),
                        message: e.message,
                    };
                    writes.push((
                        2,
                        next.to_be_bytes().to_vec(),
                        Some(serde_json::to_vec(&ev).map_err(engine)?),
                    ));
                    recorded.push(ev);
                }
            }
        }
        let trees = (
            &self.nodes,
            &self.tokens,
            &self.events,
            &self.clusters,
            &self.pairs,
            &self.operations,
            &self.jobs,
            &self.meta,
        );
        let res: Result<(), TransactionError<()>> = trees.transaction(
            |(nodes, tokens, events, clusters, pairs, operations, jobs, meta)| {
                for (tree, k, v) in &writes {
                    let t = match tree {
                        0 => nodes,
                        1 => tokens,
                        3 => clusters,
                        4 => pairs,
                        5 => operations,
                        6 => jobs,
                        7 => meta,
                        _ => events,
                    };
                    match v {
                        Some(v) => {
                            t.insert(k.as_slice(), v.as_slice())?;
                        }
                        None => {
                            t.remove(k.as_slice())?;
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            },
        );
        res.map_err(|e| engine(format!("{e:?}")))?;
        let ticket = self.group.applied();
        *seq = next;
        // Prune old events outside the transaction; losing a prune to a crash is harmless.
        if next > EVENTS_KEPT && !recorded.is_empty() {
            let cutoff = (next - EVENTS_KEPT).to_be_bytes();
            for k in self
                .events
                .range(..cutoff.as_slice())
                .keys()
                .flatten()
                .take(256)
            {
                let _ = self.events.remove(k);
            }
        }
        Ok((recorded, ticket))
    }

    fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        let key = id.as_str().as_bytes();
        self.nodes
            .get(key)
            .map_err(engine)?
            .map(|v| decode(key, &v))
            .transpose()
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.nodes
            .iter()
            .map(|r| {
                let (k, v) = r.map_err(engine)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.tokens
            .get(id)
            .map_err(engine)?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        self.events
            .range(start.as_slice()..)
            .take(limit)
            .map(|r| {
                let (k, v) = r.map_err(engine)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut out: Vec<Event> = self
            .events
            .iter()
            .rev()
            .take(limit)
            .map(|r| {
                let (k, v) = r.map_err(engine)?;
                decode(&k, &v)
            })
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        all(&self.clusters)
    }

    fn pairs(&self) -> Result<Vec<PairRecord>, StoreError> {
        all(&self.pairs)
    }

    fn jobs(&self) -> Result<Vec<crate::jobs::model::JobRecord>, StoreError> {
        all(&self.jobs)
    }

    fn operation(&self, id: &str) -> Result<Option<OperationRecord>, StoreError> {
        self.operations
            .get(id)
            .map_err(engine)?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        all(&self.tokens)
    }

    fn operations(&self) -> Result<Vec<OperationRecord>, StoreError> {
        all(&self.operations)
    }

    fn fence_params(&self) -> Result<Option<crate::model::FenceParams>, StoreError> {
        self.meta
            .get("fence_params")
            .map_err(engine)?
            .map(|v| decode(b"fence_params", &v))
            .transpose()
    }

    fn node_holds(&self) -> Result<Vec<(NodeId, crate::model::RestartHold)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.meta.scan_prefix(NODE_HOLD_PREFIX) {
            let (k, v) = kv.map_err(engine)?;
            let Some(id) = std::str::from_utf8(&k)
                .ok()
                .and_then(|k| k.strip_prefix(NODE_HOLD_PREFIX))
            else {
                continue;
            };
            out.push((NodeId(id.to_string()), decode(&k, &v)?));
        }
        Ok(out)
    }

    fn restart_hold(&self) -> Result<Option<crate::model::RestartHold>, StoreError> {
        self.meta
            .get("restart_hold")
            .map_err(engine)?
            .map(|v| decode(b"restart_hold", &v))
            .transpose()
    }

    fn reserve_serial(&self) -> Result<(u64, Ticket), StoreError> {
        // Under the commit lock, so the ticket comes after the write it covers.
        let _order = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let new = self
            .meta
            .update_and_fetch("cert_serial", |old| {
                let cur = old
                    .and_then(|o| o.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(1);
                Some((cur + 1).to_be_bytes().to_vec())
            })
            .map_err(engine)?
            .ok_or_else(|| engine("serial counter vanished"))?;
        let ticket = self.group.applied();
        Ok((
            u64::from_be_bytes(new.as_ref().try_into().map_err(engine)?),
            ticket,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewEvent;

    #[test]
    fn open_waits_for_the_lock_of_a_store_being_closed() {
        let d = tempfile::tempdir().unwrap();
        let first = SledStore::open(d.path()).unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let second = SledStore::open(d.path());
        closer.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
    }

    fn node(name: &str) -> NodeRecord {
        crate::model::test_node(name)
    }

    #[test]
    fn batches_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let n = node("a");
        {
            let s = SledStore::open(dir.path()).unwrap();
            let evs = s
                .commit(vec![
                    Change::PutNode(Box::new(n.clone())),
                    Change::Event(NewEvent {
                        kind: "node_joined",
                        node: Some(n.id.clone()),
                        message: "hi".into(),
                    }),
                ])
                .unwrap();
            assert_eq!(evs[0].seq, 1);
            assert_eq!(s.next_serial().unwrap(), 2);
            assert_eq!(s.next_serial().unwrap(), 3);
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.node(&n.id).unwrap(), Some(n.clone()));
        assert_eq!(s.nodes().unwrap().len(), 1);
        assert_eq!(
            s.next_serial().unwrap(),
            4,
            "serials never repeat across restarts"
        );
        let evs = s
            .commit(vec![Change::Event(NewEvent {
                kind: "x",
                node: None,
                message: "m".into(),
            })])
            .unwrap();
        assert_eq!(evs[0].seq, 2, "event numbers continue after reopen");
        assert_eq!(s.events_after(1, 10).unwrap().len(), 1);
        assert_eq!(s.recent_events(1).unwrap()[0].seq, 2);
        s.commit(vec![Change::DeleteNode(n.id.clone())]).unwrap();
        assert_eq!(s.node(&n.id).unwrap(), None);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("schema_version", &99u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            SledStore::open(dir.path()),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }
}
