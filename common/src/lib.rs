//! Code shared by the agent and the coordinator.
//!
//! # Layout
//! - `ids`: node ids.
//! - `hardware`: the hardware report.
pub mod hardware;
pub mod ids;
