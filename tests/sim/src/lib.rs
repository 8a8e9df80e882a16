//! A deterministic simulation of a Tandem fleet.
//!
//! It runs the coordinator's real decision layer (`Engine`: the failure detector, the job
//! planner, pairing, the job runtime, over the in-memory `MemStore` with crash semantics)
//! against simulated agents built on the agent's real [`Lease`](tandem_agent::lease::Lease),
//! the shim's real [`Guard`](tandem_agent::supervisor::guard::Guard) and the supervisor's real
//! admission rule, over a simulated network, on a simulated clock. Everything that varies comes
//! from one seed: a failing run prints its seed, and `tandem-sim --seed N` replays it exactly.
//!
//! What it throws at the fleet: agents killed (`kill -9`: the shims live on until their lease
//! runs out), hung and restarted; nodes losing power; links cut one way or both; heartbeats
//! lost, delayed, duplicated and reordered; host clocks running up to 2% fast or slow; the
//! coordinator killed at any step (whatever its store had not flushed is lost, and so is every
//! command not yet delivered) and restarted from its store, half the time with a new lease,
//! fence kill timeout and restart grace (what an operator's config change does: agents that
//! stayed up hold the old values until they are welcomed again); and an operator submitting,
//! stopping, draining and undraining, removing, pairing and unpairing, moving nodes to another
//! cluster and back, putting `no_schedule` taints on nodes and taking them off, and forcing
//! failover (pool clusters, and `ha_pairs` clusters in 40% of runs).
//!
//! After every step it checks the promise ([`invariants`]): never two copies of a job alive at
//! once, never one GPU held by two alive copies (every node has two, and some jobs ask for
//! one or both), fencing tokens that only grow, a `never` job that ran to its end never
//! started again, a stopped job never started again, no node declared down while a copy it
//! ran is still alive.
//! At the end, after the faults stop and the fleet settles, no acknowledged job is lost: each
//! runs, is pending with a reason (in a pool cluster, only while no ready node of it is idle:
//! every simulated node has room for one job; a tainted node is not idle), or ended by its
//! policy.
//!
//! # Layout
//! - `clock`: the simulated clock and seeded chance the coordinator reads.
//! - `net`: links, connections, delivery (control streams in order, datagrams lossy).
//! - `agent`: one simulated agent and its job copies.
//! - `coordinator`: the coordinator host: `Engine`, its store, its sessions (as the QUIC
//!   server dispatches them).
//! - `invariants`: what is checked, and the violation reported.
//! - `world`: the event loop and delivery; below it `faults` (what the storm breaks),
//!   `operator` (the admin requests), `taints` (the operator's taint edits) and `settle` (the
//!   storm's end and the final check).

pub mod agent;
pub mod clock;
pub mod coordinator;
pub mod invariants;
pub mod net;
pub mod world;

pub use invariants::Violation;
pub use world::{run, Knobs, Report, DEFAULT_MAX_DRIFT_PPM};
