//! Code shared by the agent and the coordinator.
//!
//! # Layout
//! - `ids`: node ids.
//! - `hardware`: the hardware report.
//! - `pki`: the coordinator's CA, node keys and CSRs, node and server certificates, CA pins.
//! - `token`: join tokens (`tdm1.<id>.<secret>.<pin>`) and hashing of their secrets.
//! - `tls`: the rustls/quinn client and server configurations (mutual TLS, ALPN `tandem/1`).
pub mod hardware;
pub mod ids;
pub mod pki;
pub mod tls;
pub mod token;
