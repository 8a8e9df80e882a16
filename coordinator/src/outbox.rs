//! The queue of commands to one node's session.
//!
//! # Why it never drops
//! A job command that is decided but never delivered strands a job: a start that never
//! arrives leaves it `starting` for ever, a stop that never arrives leaves a drain waiting for
//! ever. The old 16-slot channel filled with `try_send` dropped whatever did not fit (24
//! pending jobs and one node joining: 8 never started). Here a push never fails while the
//! session lives: commands are queued in order and the session task drains them onto the
//! control stream.
//!
//! The queue is bounded all the same ([`MAX_QUEUED`]): a node that stops reading its control
//! stream must not grow the coordinator's memory for ever. Past the bound the outbox is marked
//! *overflowed* and the session is closed; nothing is dropped silently, because what the node
//! should run is in the job records, and the node's next `Hello` (everything it holds) is
//! reconciled against them (a start it never got is placed again, a copy it should not hold is
//! killed).
//!
//! Pushing takes a plain mutex for a moment and never waits: it is called while the fleet
//! table is locked, so it must not await or block on the session.
//!
//! # Sent only once durable
//! Every command is stamped, as it is pushed, with the store's newest ticket
//! ([`StateStore::last_ticket`]), and the session writes it only once that ticket is durable.
//! A command is decided on the fleet's state after some batch was applied to the store; the
//! batch (and every one before it: the store's log is written in order) is on disk before the
//! command leaves. So the deciders apply their batches under the fleet lock and never wait for
//! the disk there ("no fsync under a lock"), and "durable before acted on" is this one rule in
//! one place instead of a wait in every decider. Commands are pushed under the same lock their
//! decision was taken under, so a session's commands leave in the order they were decided.

use crate::store::{StateStore, Ticket};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tandem_common::proto::CoordMsg;
use tandem_common::wire::CloseCode;
use tokio::sync::Notify;

/// Commands queued to one session at most before it is closed as not reading.
pub const MAX_QUEUED: usize = 65_536;

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// The session ended; its node gets what it should run when it registers again.
    #[error("the session is closed")]
    Closed,
    /// The node did not read its commands: the session is being closed, and its next
    /// registration is reconciled against the job records.
    #[error("{MAX_QUEUED} commands are queued to the session; it is being closed")]
    Overflowed,
}

#[derive(Default)]
struct State {
    /// Commands, each with the ticket that must be durable before it is written.
    queue: VecDeque<(Ticket, CoordMsg)>,
    closed: bool,
    overflowed: bool,
    /// Set by [`Outbox::close_connection`]: the session's connection is to be closed with it,
    /// once the ticket is durable.
    close: Option<(CloseCode, &'static str, Ticket)>,
}

/// One session's queue of commands.
#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// Where the tickets come from (none: every command may leave at once, for tests of the
    /// queue alone).
    store: Option<Arc<dyn StateStore>>,
    /// The protocol version the session speaks: commands are queued as it understands them
    /// (0, the default: the oldest served).
    protocol: u16,
}

/// What the session task gets from [`Outbox::next`] (or [`Outbox::try_next`], with the ticket
/// that must be durable before it is carried out).
#[derive(Debug, PartialEq)]
pub enum Drained {
    /// Commands to write, in order.
    Batch(Vec<CoordMsg>),
    /// The queue overflowed: close the session.
    Overflowed,
    /// The outbox was closed; with a code, the connection is to be closed with it (the
    /// decision layer never holds a connection: the session task that owns it closes it).
    Closed(Option<(CloseCode, &'static str)>),
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued", &self.len())
            .finish()
    }
}

impl Outbox {
    /// An outbox whose commands leave only once the newest batch of `store` at their push is
    /// durable.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self {
            store: Some(store),
            ..Self::default()
        }
    }

    /// For a session of protocol `version`.
    pub fn for_protocol(mut self, version: u16) -> Self {
        self.protocol = version;
        self
    }

    /// The protocol version the session speaks (0: the oldest served).
    pub fn protocol(&self) -> u16 {
        self.protocol
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ticket(&self) -> Ticket {
        self.store.as_ref().map_or(0, |s| s.last_ticket())
    }

    /// Queues `msg`, to be written once every batch applied so far is durable. Never waits.
    pub fn push(&self, msg: CoordMsg) -> Result<(), OutboxError> {
        let msg = msg.for_version(self.protocol);
        let after = self.ticket();
        let mut s = self.state();
        if s.closed {
            return Err(OutboxError::Closed);
        }
        if s.overflowed {
            return Err(OutboxError::Overflowed);
        }
        if s.queue.len() >= MAX_QUEUED {
            s.overflowed = true;
            drop(s);
            self.notify.notify_one();
            return Err(OutboxError::Overflowed);
        }
        s.queue.push_back((after, msg));
        drop(s);
        self.notify.notify_one();
        Ok(())
    }

    /// Waits for commands (or the end), takes every queued command at once, and returns them
    /// once their tickets are durable.
    pub async fn next(&self) -> Drained {
        loop {
            // Registered before the check: a push between the check and the await wakes us.
            let notified = self.notify.notified();
            if let Some((drained, after)) = self.try_next() {
                if let Some(store) = &self.store {
                    store.durable(after).await;
                }
                return drained;
            }
            notified.await;
        }
    }

    /// Takes what is queued without waiting (`None`: nothing is), with the ticket that must be
    /// durable before it is carried out: for a runtime that is not async, such as the
    /// deterministic simulation.
    pub fn try_next(&self) -> Option<(Drained, Ticket)> {
        let mut s = self.state();
        if s.overflowed {
            Some((Drained::Overflowed, 0))
        } else if !s.queue.is_empty() {
            let after = s.queue.iter().map(|(t, _)| *t).max().unwrap_or(0);
            let batch = s.queue.drain(..).map(|(_, m)| m).collect();
            Some((Drained::Batch(batch), after))
        } else if s.closed {
            let after = s.close.map_or(0, |c| c.2);
            Some((Drained::Closed(s.close.map(|(c, why, _)| (c, why))), after))
        } else {
            None
        }
    }

    /// Takes back a start of `job_id` with `token` that is still queued (not yet taken by the
    /// session task): a stop decided now must not be preceded on the wire by the start it
    /// stops, or the copy would begin after the user was told the job is stopped. Returns
    /// whether one was taken back.
    pub fn retract_start(&self, job_id: &str, token: u64) -> bool {
        let mut s = self.state();
        let before = s.queue.len();
        s.queue
            .retain(|(_, m)| m.started_copy() != Some((job_id, token)));
        s.queue.len() != before
    }

    /// Closes the outbox: later pushes are refused, the session task sees [`Drained::Closed`]
    /// once the queue is empty.
    pub fn close(&self) {
        self.state().closed = true;
        self.notify.notify_one();
    }

    /// Closes the outbox and asks the session task to close its connection with `code`: what
    /// is queued is dropped, since the node reconciles with its next registration anyway.
    pub fn close_connection(&self, code: CloseCode, reason: &'static str) {
        let after = self.ticket();
        let mut s = self.state();
        s.closed = true;
        let after = s.queue.drain(..).map(|(t, _)| t).fold(after, u64::max);
        s.close.get_or_insert((code, reason, after));
        drop(s);
        self.notify.notify_one();
    }

    /// Whether the outbox was closed (its session task has yet to see it, or has).
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// How many commands wait.
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    /// Whether no command waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(n: u64) -> CoordMsg {
        CoordMsg::Ping { nonce: n }
    }

    #[tokio::test]
    async fn many_commands_are_all_delivered_in_order() {
        let o = Outbox::default();
        for n in 0..1000 {
            o.push(ping(n)).unwrap();
        }
        let Drained::Batch(b) = o.next().await else {
            panic!("expected a batch")
        };
        assert_eq!(b, (0..1000).map(ping).collect::<Vec<_>>());
        assert!(o.is_empty());
    }

    fn start(job: &str, token: u64) -> CoordMsg {
        CoordMsg::StartJob(Box::new(tandem_common::proto::StartJob {
            job_id: job.into(),
            job_name: job.into(),
            fencing_token: token,
            command: vec!["/bin/true".into()],
            env: Default::default(),
            workdir: None,
            gpus: Vec::new(),
        }))
    }

    #[test]
    fn only_a_queued_start_of_that_copy_is_taken_back() {
        let o = Outbox::default();
        o.push(start("a", 1)).unwrap();
        o.push(start("a", 2)).unwrap();
        o.push(start("b", 1)).unwrap();
        o.push(ping(1)).unwrap();
        assert!(o.retract_start("a", 2));
        assert!(!o.retract_start("a", 2));
        let Some((Drained::Batch(b), _)) = o.try_next() else {
            panic!("expected a batch")
        };
        assert_eq!(b, vec![start("a", 1), start("b", 1), ping(1)]);
        // Once taken by the session task, nothing is left to take back.
        assert!(!o.retract_start("a", 1));
    }

    #[tokio::test]
    async fn a_push_wakes_a_waiting_session() {
        let o = std::sync::Arc::new(Outbox::default());
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { o2.next().await });
        tokio::task::yield_now().await;
        o.push(ping(7)).unwrap();
        assert_eq!(waiter.await.unwrap(), Drained::Batch(vec![ping(7)]));
    }

    #[tokio::test]
    async fn past_the_bound_the_session_is_told_to_close_and_nothing_is_dropped_silently() {
        let o = Outbox::default();
        for n in 0..MAX_QUEUED as u64 {
            o.push(ping(n)).unwrap();
        }
        assert_eq!(o.push(ping(0)), Err(OutboxError::Overflowed));
        assert_eq!(o.push(ping(0)), Err(OutboxError::Overflowed));
        assert_eq!(o.next().await, Drained::Overflowed);
    }

    #[tokio::test]
    async fn a_closed_outbox_refuses_and_ends_after_its_queue() {
        let o = Outbox::default();
        o.push(ping(1)).unwrap();
        o.close();
        assert_eq!(o.push(ping(2)), Err(OutboxError::Closed));
        assert_eq!(o.next().await, Drained::Batch(vec![ping(1)]));
        assert_eq!(o.next().await, Drained::Closed(None));
    }

    #[tokio::test]
    async fn closing_the_connection_drops_the_queue_and_carries_the_code() {
        let o = Outbox::default();
        o.push(ping(1)).unwrap();
        o.close_connection(CloseCode::Replaced, "replaced");
        assert_eq!(o.push(ping(2)), Err(OutboxError::Closed));
        assert_eq!(
            o.try_next(),
            Some((Drained::Closed(Some((CloseCode::Replaced, "replaced"))), 0))
        );
        assert_eq!(
            o.next().await,
            Drained::Closed(Some((CloseCode::Replaced, "replaced")))
        );
    }

    #[tokio::test]
    async fn a_command_leaves_only_once_the_batches_before_it_are_durable() {
        use crate::store::{Change, MemStore};
        let store = std::sync::Arc::new(MemStore::new());
        let o = Outbox::new(store.clone());
        o.push(ping(0)).unwrap();
        assert_eq!(o.try_next(), Some((Drained::Batch(vec![ping(0)]), 0)));
        let (_, t1) = store.apply(vec![Change::DeleteJob("a".into())]).unwrap();
        o.push(ping(1)).unwrap();
        let (_, t2) = store.apply(vec![Change::DeleteJob("b".into())]).unwrap();
        o.close_connection(CloseCode::Replaced, "replaced");
        assert_eq!(store.pending(), 2);
        // Dropped by the close, the ping's ticket still holds the close back.
        assert!(t1 < t2);
        assert_eq!(
            o.try_next(),
            Some((Drained::Closed(Some((CloseCode::Replaced, "replaced"))), t2))
        );
        let o = Outbox::new(store.clone());
        o.push(ping(2)).unwrap();
        assert_eq!(o.next().await, Drained::Batch(vec![ping(2)]));
        assert_eq!(
            store.pending(),
            0,
            "both batches are durable once the ping leaves"
        );
    }
}
