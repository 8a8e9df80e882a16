//! Jobs: what a job is, where it runs, and what happens to it when its node dies — the
//! decisions, without the doing.
//!
//! This is what Tandem exists for: when a node dies, its jobs run again elsewhere within about a
//! second, and at no moment do two nodes run the same job. Everything here is plain code (no
//! store, no sockets, no clock, no tokio), in the house style of `crate::detector` and
//! `crate::cluster`: the shell around it (admin API, store, agent protocol) passes records and
//! `now_ms` in and gets verdicts and [`decision::Decision`]s back. It persists each decision's
//! records before acting on it ([`decision`] says exactly what acting means), so a coordinator
//! that crashes mid-failover finds the move in its store and finishes it
//! ([`planner::Planner::reconcile`]) instead of inventing a second one.
//!
//! # Never two copies
//! DESIGN.md ("Leases and fencing") carries the argument; here is where each step of it lives:
//! 1. A node's jobs are placed again only after the detector declared it down, which happens
//!    after the node's lease has run out plus `fence_grace`: the agent has killed them
//!    ([`planner`], "Why a node's jobs may be placed again").
//! 2. Every placement gets a fencing token above every token the job ever had, stored before
//!    the start command is sent ([`fencing::next_token`]); the agent refuses older tokens
//!    ([`fencing::accept_command`]); reports about old tokens never change a job
//!    ([`decision::Decision::KillStale`], [`decision::Decision::Ignore`]).
//! 3. A drain stops the old copy before the new one starts
//!    ([`decision::Decision::Move`]).
//!
//! A property test (`planner::prop`) drives the planner with random sequences of node failures,
//! returns, drains, exits and replayed old reports, plays the decisions against a model of the
//! nodes, and checks that no job ever has two live copies, that tokens only grow, and that no
//! job is left without a placement and without a reason.
//!
//! # Using it (the shell's side)
//! - `POST /v1/jobs`: [`validate::validate_spec`], then store
//!   `JobRecord::new(model::new_job_id(rand::random()), spec, now_ms)` (it is `pending`), then
//!   [`planner::Planner::handle`] with `Event::Submitted`.
//! - The detector's `Down`, a registration, a drain, an agent's start or exit report, a
//!   `DELETE`: the matching [`planner::Event`], with the pairs already promoted by
//!   `crate::cluster::pairing`.
//! - At start (after the detector's restart grace): [`planner::Planner::reconcile`].
//! - Cluster capacity: [`placement::held_by_jobs`] is the `held` that
//!   `crate::cluster::capacity::capacity` takes, so it counts what jobs hold and reserve.
//! - For every decision returned, in order: persist what [`decision::Decision::apply`] makes of
//!   the records, then act (see [`decision`]).
//!
//! # Layout
//! - [`model`]: the records ([`model::JobSpec`], [`model::JobRecord`], [`model::Placement`]).
//! - [`validate`]: the rules for a spec, with errors that name the field.
//! - [`placement`]: which node, which GPUs, which standby keeps room ([`placement::place`]).
//! - [`fencing`]: the token rules for the coordinator and the agent.
//! - [`decision`]: what the planner decides, and how each decision changes a record.
//! - [`planner`]: events in, decisions out; failover, drain, restarts, the disruption guard.

pub mod decision;
pub mod fencing;
pub mod model;
pub mod placement;
pub mod planner;
pub mod validate;

#[cfg(test)]
pub(crate) mod testkit;
