//! The coordinator engine: the one owner of fleet state.
//!
//! [`Engine`] holds every piece of fleet state: nodes and their sessions' outboxes, clusters,
//! pairs, jobs and placements, the job planner, moves waiting for an old copy, delayed starts,
//! unanswered starts, pending pings and log requests, and the failure detector. It does no I/O of its own and
//! never waits: not for the disk, not for a node.
//!
//! # Inputs and what comes out
//! Inputs are calls, each decided with time and chance from its
//! [`Clock`](crate::clock::Clock) (simulated in `tests/sim`). In the coordinator one task owns
//! the engine and makes every call, one at a time ([`crate::runtime`]); the simulation is a
//! runtime of its own and calls it directly. The fleet table and the detector keep a lock of
//! their own, which that one caller always finds free; it guards the table's invariants
//! within a call ("the fleet lock" below). The inputs: a message from a node's session
//! (`register`, `heartbeat`, and the rest through `on_agent_msg`), an admin
//! request (`submit_job`, `set_draining`, `remove_node`, ...), a tick (`tick`: the detector,
//! delayed starts, unanswered starts, fence parameters), a session that closed
//! (`disconnected`). What a decision produces, it hands over before the lock is released:
//! - **persist**: a batch applied to the store, which numbers it with a ticket; a flusher
//!   thread makes it durable (group commit: `store::group_commit`);
//! - **send once durable**: a command queued to the node's outbox, stamped with the store's
//!   newest ticket; the session task writes it only once that ticket is durable
//!   (`crate::outbox`);
//! - **close a session**: the outbox closed with a code, carried out the same way;
//! - **timers with tokens**: a delayed start carries its placement's token and is checked
//!   again when it fires (`fire_job_timers`); a stale one does nothing;
//! - **reply**: returned to the caller; the admin endpoint answers once every batch applied
//!   before the answer is durable (`admin::durable_replies`), a Welcome waits for the
//!   registration's ticket.
//!
//! So "durable before acted on" is one rule in one place (the ticket on every send and
//! reply), nothing waits for a flush under the lock or on an async worker, and a session's
//! commands leave in the order they were decided. Connections live in the session tasks
//! (`crate::server`), never in these tables.
//!
//! # The fencing argument, the coordinator's side
//! Every job decision is applied with its new fencing token before any command for it can
//! leave, so a `kill -9` at any point either loses a decision nobody acted on, or keeps one
//! whose token the agents honour. A node's jobs are placed elsewhere only once the detector has
//! declared it down, after its lease and fence grace (with the largest parameters any live
//! session may still hold): by then its shims have killed every copy. Every other way of taking
//! jobs from a node that may still run them (drain, remove, a move) stops the old copy first
//! and starts the new one only when the old copy's end is reported, or its node is down.
//! Delivery is reconciled, never assumed: a node's Hello, its exits and its answer to
//! `ReportJobs` are compared with the records, and the difference is resolved here (send
//! again, stop a stale copy, place again).
//!
//! # Layout
//! - `core`: the [`Engine`] struct, loading it from the store, reads.
//! - `fleet`: the tables ([`Fleet`], [`NodeEntry`], [`Live`]).
//! - `nodes`: joins, registrations, heartbeats, leaving, renewals, revocation, checks.
//! - `handover`: an agent restart: a planned one's hand-over (a per-node hold recorded before
//!   its lease is granted, honoured after a coordinator restart), and re-adopted jobs' event.
//! - `hold`: a planned restart's hold, recorded before any lease relies on it, honoured
//!   after.
//! - `transitions`: the detector's tick carried out (suspect, down, recovered, a removal's
//!   end), fence parameters in force, retention.
//! - `pairs`: pair decisions turned into records, inside the batch that caused them.
//! - `pair_admin`: pairs made and dissolved by hand.
//! - `job_state`: the job side's state and the commands decisions become.
//! - `jobs`: job decisions (events to the planner, submits, delayed and unanswered starts).
//! - `job_reports`: what agents report about their jobs, and moves waiting for an old copy.
//! - `session`: a registered session's messages, one front door for the server and the
//!   simulation.
//! - `clusters`, `node_admin`, `quotas`: administration.

mod clusters;
mod core;
mod fleet;
mod handover;
mod hold;
mod job_reports;
mod job_state;
mod jobs;
mod node_admin;
mod nodes;
mod pair_admin;
mod pairs;
mod quotas;
mod session;
mod transitions;

pub use self::core::Engine;
pub use clusters::{ClusterPatch, Member, NewCluster, NodePatch, OpError, Recycled};
pub use fleet::{Fleet, Live, NodeEntry};
pub use hold::fence_params_at_start;
pub use job_state::{Outgoing, SubmitError, START_DEADLINE, USER_KILL_TIMEOUT_MS};
pub use nodes::{gpu_health_events, MembershipError, Registered};
pub use quotas::Quotas;
pub use session::Handled;
