//! The Tandem agent: runs on every node, reports its hardware, heartbeats to the coordinator
//! and supervises the jobs it is given.
//!
//! # Layout
//! - [`probe`]: hardware probing ([`probe::Prober`]): the host through sysinfo and `/proc`,
//!   GPUs through NVML on a dedicated thread with a deadline, GPU health events, GPU fixtures.
//! - [`inventory`]: the `tandem-agent inventory` command's output (table or JSON).
pub mod inventory;
pub mod probe;
