//! Durable state, behind a trait.
//!
//! Every change to membership is handed to [`StateStore::commit`] as one batch and is on disk
//! (written and flushed) when `commit` returns; only then does the caller acknowledge it or act
//! on it. That is what makes a `kill -9` of the coordinator at any moment lose nothing it
//! acknowledged. Heartbeats never come here: they live in memory.
//!
//! Hot paths (joins and registrations, thousands a second in a join storm) use the two halves
//! of `commit` instead: [`StateStore::apply`] under their lock, then [`StateStore::durable`]
//! after releasing it and before answering, so that the batches of many nodes share one flush
//! (`group_commit` explains why that keeps the rule).
//!
//! [`MemStore`] keeps everything in memory with the same crash semantics (what was not made
//! durable is lost), for simulations and tests; sled stays the embedded default.
//!
//! The trait exists so that a replicated backend (several coordinators) can replace the
//! embedded sled store without touching the logic above it.

mod group_commit;
mod mem_store;
mod sled_store;

pub use group_commit::Ticket;
pub use mem_store::MemStore;
pub use sled_store::SledStore;

use crate::model::{
    ClusterRecord, Event, NewEvent, NodeRecord, OperationRecord, PairRecord, TokenRecord,
};
use tandem_common::ids::NodeId;

/// The schema version this build writes. A store with a newer one is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything that can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (disk full, I/O error, corruption).
    #[error("store engine: {0}")]
    Engine(String),
    /// A record on disk does not decode.
    #[error("stored record {key} does not decode: {reason}")]
    Corrupt {
        /// Which record.
        key: String,
        /// Why.
        reason: String,
    },
    /// The store was written by a newer Tandem.
    #[error("store schema version {found} is newer than this build's {supported}")]
    SchemaTooNew {
        /// On disk.
        found: u32,
        /// What we know.
        supported: u32,
    },
}

/// One change in a batch.
#[derive(Clone, Debug)]
pub enum Change {
    /// Insert or replace a node.
    PutNode(Box<NodeRecord>),
    /// Remove a node.
    DeleteNode(NodeId),
    /// Insert or replace a join token.
    PutToken(TokenRecord),
    /// Append an event.
    Event(NewEvent),
    /// Insert or replace a cluster.
    PutCluster(Box<ClusterRecord>),
    /// Remove a cluster by id.
    DeleteCluster(String),
    /// Insert or replace a pair.
    PutPair(PairRecord),
    /// Remove a pair by id.
    DeletePair(String),
    /// Insert or replace an operation.
    PutOperation(OperationRecord),
    /// Insert or replace a job.
    PutJob(Box<crate::jobs::model::JobRecord>),
    /// Record the fence parameters agents may hold.
    PutFenceParams(crate::model::FenceParams),
    /// Record (or, with `None`, clear) a planned restart's hold: nobody is declared down
    /// before it ends.
    PutRestartHold(Option<crate::model::RestartHold>),
    /// Record (or, with `None`, clear) an agent hand-over's hold: this node is not declared
    /// down before it ends.
    PutNodeHold(NodeId, Option<crate::model::RestartHold>),
    /// Remove a job (retention of finished jobs).
    DeleteJob(String),
    /// Remove a join token (retention of used-up or expired tokens).
    DeleteToken(String),
    /// Remove an operation (retention of finished operations).
    DeleteOperation(String),
}

/// Durable coordinator state.
pub trait StateStore: Send + Sync + 'static {
    /// Applies a batch atomically and flushes it to disk. Returns the events it recorded.
    fn commit(&self, changes: Vec<Change>) -> Result<Vec<Event>, StoreError> {
        let (events, ticket) = self.apply(changes)?;
        self.wait_durable(ticket);
        Ok(events)
    }
    /// Applies a batch atomically, in memory and in order, without waiting for the disk.
    /// Nothing may act on it before its ticket is durable.
    fn apply(&self, changes: Vec<Change>) -> Result<(Vec<Event>, Ticket), StoreError>;
    /// Blocks until the batch with `ticket` (and every one before it) is on disk. Never on an
    /// async worker or under a lock: the coordinator's own paths await [`StateStore::durable`]
    /// or hand the ticket to the session's outbox, which sends only once it is durable.
    fn wait_durable(&self, ticket: Ticket);
    /// The ticket of the newest batch applied so far (0 before the first). Whatever was
    /// decided after reading the state waits for this ticket before it is acted on: the
    /// decision may rest on any batch applied before it (see `outbox`).
    fn last_ticket(&self) -> Ticket;
    /// Resolves once the batch with `ticket` (and every one before it) is on disk.
    fn durable(
        &self,
        ticket: Ticket,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
    /// One node.
    fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError>;
    /// All nodes.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// One join token by id.
    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Events with `seq > after`, oldest first, at most `limit`.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// The newest `limit` events, oldest first.
    fn recent_events(&self, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// Reserves and durably records the next certificate serial.
    fn next_serial(&self) -> Result<u64, StoreError> {
        let (serial, ticket) = self.reserve_serial()?;
        self.wait_durable(ticket);
        Ok(serial)
    }
    /// Reserves the next certificate serial; durable with its ticket (a serial is only ever
    /// used together with a later batch, whose flush covers it).
    fn reserve_serial(&self) -> Result<(u64, Ticket), StoreError>;
    /// All clusters.
    fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError>;
    /// All pairs.
    fn pairs(&self) -> Result<Vec<PairRecord>, StoreError>;
    /// One operation.
    fn operation(&self, id: &str) -> Result<Option<OperationRecord>, StoreError>;
    /// All jobs.
    fn jobs(&self) -> Result<Vec<crate::jobs::model::JobRecord>, StoreError>;
    /// All join tokens.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// All operations.
    fn operations(&self) -> Result<Vec<OperationRecord>, StoreError>;
    /// The fence parameters recorded last (`None` in a store that never had any).
    fn fence_params(&self) -> Result<Option<crate::model::FenceParams>, StoreError>;
    /// The hold a planned restart recorded last (`None`: none, or cleared).
    fn restart_hold(&self) -> Result<Option<crate::model::RestartHold>, StoreError>;
    /// The agent hand-overs' holds recorded, by node.
    fn node_holds(&self) -> Result<Vec<(NodeId, crate::model::RestartHold)>, StoreError>;
}
