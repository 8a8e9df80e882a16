//! Code shared by the agent and the coordinator.
//!
//! # Layout
//! - `ids`: node ids.
//! - `config`: what both daemons' configurations share: `ConfigError`, where a value came from,
//!   reading a TOML file.
//! - `proto`: the typed messages of the wire protocol, and its version rule.
//! - `codec`: the only code that turns messages into bytes and back (frames, limits).
//! - `hardware`: the hardware report an agent sends.
//! - `pki`: the coordinator's CA, node keys and CSRs, node and server certificates, CA pins.
//! - `token`: join tokens (`tdm1.<id>.<secret>.<pin>`) and hashing of their secrets.
//! - `tls`: the rustls/quinn client and server configurations (mutual TLS, ALPN `tandem/1`).
//! - `transport`: the QUIC transport parameters both ends use.
//! - `time`: wall-clock helpers for records and events.
//! - `notify`: systemd readiness, status and watchdog notifications.
//! - `logging`: the binaries' logging to stderr (`RUST_LOG`, no colours under journald).
//! - `signal`: the shutdown future the daemons are given (SIGINT or SIGTERM).
//! - `wire`: constants outside the messages (QUIC close codes, the revocation TLS alert).
pub mod codec;
pub mod config;
pub mod hardware;
pub mod ids;
pub mod logging;
pub mod notify;
pub mod pki;
pub mod proto;
pub mod signal;
pub mod time;
pub mod tls;
pub mod token;
pub mod transport;
pub mod wire;
