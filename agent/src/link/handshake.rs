//! The steps of the link that depend on no one agent's state: connecting within the reply
//! timeout, the two `Hello`s (join, register), sorting the answer into "retry" and "final",
//! the reconnect backoff, and the rules a session applies to its connection (how much silence
//! means it is gone; which closes void the lease).
//!
//! [`Link`](super::Link) runs them for the one node of a `tandem-agent`; `tandem-swarm`
//! (tests/src/bin/tandem_swarm.rs) runs them for each of its thousands of simulated agents, so
//! the load generator exercises the agent's own handshake rather than a copy of it.

use std::net::SocketAddr;
use std::time::Duration;
use tandem_common::hardware::HardwareReport;
use tandem_common::ids::NodeId;
use tandem_common::proto::*;
use tandem_common::tls;
use tandem_common::token::JoinToken;
use tandem_common::wire::{CloseCode, TlsAlert};

/// How long connecting, and the answer to a `Hello`'s connection, may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The version every `Hello` carries: this crate's.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Capped exponential backoff (100 ms doubling up to 2 s) with full jitter (each wait is drawn
/// from the upper half of the cap), so a fleet that lost its coordinator does not reconnect in
/// lock-step.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// No failure yet.
    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// The wait before the next try; each call counts one failure.
    pub fn next_wait(&mut self) -> Duration {
        let cap = BACKOFF_BASE
            .saturating_mul(1 << self.attempt.min(10))
            .min(BACKOFF_MAX);
        self.attempt += 1;
        let ms = cap.as_millis() as u64;
        Duration::from_millis(ms / 2 + rand::random_range(0..=ms / 2))
    }

    /// A try succeeded: the next failure waits the shortest again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A passing failure (no answer, a broken connection, a refusal that may clear): back off
    /// and try again.
    Retry(String),
    /// The coordinator refused our certificate as revoked: the node was removed. Final.
    Revoked,
    /// The coordinator refused us in a way retrying cannot fix (see [`is_final`]).
    Refused {
        /// The refusal's kind.
        code: RejectCode,
        /// The coordinator's reason.
        reason: String,
    },
}

/// Whether a refusal is final: a bad token, an unknown or removed node, a node its cluster
/// does not admit, a protocol version the coordinator does not speak. Any other (`Unavailable`,
/// `ProtocolViolation`) may clear on a new connection.
pub fn is_final(code: RejectCode) -> bool {
    matches!(
        code,
        RejectCode::BadToken
            | RejectCode::UnknownNode
            | RejectCode::NotAdmitted
            | RejectCode::UnsupportedVersion
    )
}

/// Whether a connection error is the TLS alert `certificate_revoked`, sent by the peer or
/// raised locally.
pub fn is_revoked(e: &quinn::ConnectionError) -> bool {
    let revoked = TlsAlert::CertificateRevoked.transport_code();
    match e {
        quinn::ConnectionError::TransportError(t) => t.code == revoked,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code == revoked,
        _ => false,
    }
}

/// Whether the coordinator closed `conn` because it refused our certificate as revoked.
pub fn was_revoked(conn: &quinn::Connection) -> bool {
    conn.close_reason().is_some_and(|e| is_revoked(&e))
}

/// Whether the coordinator closed the connection with a code that voids whatever lease the
/// node holds: it declared the node down, or removed it.
pub fn voids_lease(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            [CloseCode::DeclaredDown, CloseCode::Removed]
                .iter()
                .any(|code| c.error_code == code.code().into())
        }
        _ => false,
    }
}

/// How long a registered session waits without an ack before it takes the connection for
/// gone (the coordinator restarted and forgot it, say) and registers again on a new one,
/// rather than wait for QUIC's idle timeout. The lease is unaffected: it runs out on its own.
pub fn silence_limit(heartbeat: Duration, lease: Duration) -> Duration {
    (3 * heartbeat).max(lease / 2)
}

/// Connects to `addr` (`shown` is how errors name it) with `client`, within
/// [`REPLY_TIMEOUT`]. The caller sets the client's transport configuration.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    shown: &str,
) -> Result<quinn::Connection, Failure> {
    let connecting = endpoint
        .connect_with(client, addr, tls::SERVER_NAME)
        .map_err(|e| Failure::Retry(format!("cannot connect to {shown}: {e}")))?;
    match tokio::time::timeout(REPLY_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) if is_revoked(&e) => Err(Failure::Revoked),
        Ok(Err(e)) => Err(Failure::Retry(format!("connecting to {shown}: {e}"))),
        Err(_) => Err(Failure::Retry(format!(
            "connecting to {shown}: no answer within {} s",
            REPLY_TIMEOUT.as_secs()
        ))),
    }
}

/// Sends `hello` as the first frame and reads the answer. A `Reject` is a [`Failure`]: final
/// or not as [`is_final`] says; a connection the coordinator closed as revoked is
/// [`Failure::Revoked`].
pub async fn exchange(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    hello: Hello,
) -> Result<CoordMsg, Failure> {
    let hello = AgentMsg::Hello(Box::new(hello));
    match tandem_common::transport::exchange_hello(conn, send, recv, &hello).await {
        Ok(CoordMsg::Reject(r)) => {
            tracing::error!(code = ?r.code, reason = %r.reason, "the coordinator refused this node");
            if is_final(r.code) {
                Err(Failure::Refused {
                    code: r.code,
                    reason: r.reason,
                })
            } else {
                Err(Failure::Retry(format!(
                    "refused ({:?}): {}",
                    r.code, r.reason
                )))
            }
        }
        Ok(m) => Ok(m),
        Err(_) if was_revoked(conn) => Err(Failure::Revoked),
        Err(why) => Err(Failure::Retry(why)),
    }
}

/// The `Hello` of a node that has no certificate yet: the join token and a CSR for one.
pub fn join_hello(
    name: &str,
    token: &JoinToken,
    csr_pem: String,
    datagrams: bool,
    hardware: HardwareReport,
) -> Hello {
    Hello {
        join: Some(JoinRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            csr_pem,
        }),
        ..hello(name, datagrams, hardware)
    }
}

/// The `Hello` of a node with its certificate: what it holds and the exits not acknowledged.
pub fn register_hello(
    name: &str,
    node_id: &NodeId,
    datagrams: bool,
    jobs: Vec<HeldJob>,
    exited: Vec<JobExitReport>,
    hardware: HardwareReport,
) -> Hello {
    Hello {
        node_id: Some(node_id.clone()),
        jobs,
        exited,
        ..hello(name, datagrams, hardware)
    }
}

/// What every `Hello` says: the versions, the name, the path, the hardware.
fn hello(name: &str, datagrams: bool, hardware: HardwareReport) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: AGENT_VERSION.into(),
        name: name.to_string(),
        node_id: None,
        join: None,
        datagrams,
        jobs: Vec::new(),
        exited: Vec::new(),
        hardware,
    }
}

/// Trades `token` and a CSR (`NodeKey::csr_pem` of the node's key) for a certificate:
/// connects with `client` (which pins the token's CA: `tls::join_client_config`), says the
/// join `Hello`, and returns what the coordinator answered. The caller keeps the key for every
/// retry, so a join whose answer was lost gets its node back.
#[allow(clippy::too_many_arguments)]
pub async fn join(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    shown: &str,
    token: &JoinToken,
    name: &str,
    csr_pem: String,
    hardware: HardwareReport,
) -> Result<Joined, Failure> {
    let conn = match connect(endpoint, client, addr, shown).await {
        Ok(c) => c,
        Err(Failure::Retry(r)) => {
            return Err(Failure::Retry(format!(
                "join: {r} (is the token's CA pin this coordinator's?)"
            )))
        }
        Err(f) => return Err(f),
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| Failure::Retry(format!("join: cannot open the control stream: {e}")))?;
    let datagrams = conn.max_datagram_size().is_some();
    let hello = join_hello(name, token, csr_pem, datagrams, hardware);
    let answer = exchange(&conn, &mut send, &mut recv, hello).await;
    conn.close(0u32.into(), b"joined");
    match answer? {
        CoordMsg::Joined(j) => Ok(j),
        other => Err(Failure::Retry(format!(
            "unexpected answer to a join: {}",
            kind(&other)
        ))),
    }
}

/// A registered connection: the control stream and the coordinator's `Welcome`.
pub struct Registered {
    /// The connection.
    pub conn: quinn::Connection,
    /// The control stream, ours to write.
    pub send: quinn::SendStream,
    /// The control stream, theirs.
    pub recv: quinn::RecvStream,
    /// The answer to our `Hello`.
    pub welcome: Welcome,
    /// Whether the `Hello` said we beat on datagrams.
    pub datagrams: bool,
}

/// Connects with the node's certificate (`client`: `tls::node_client_config`) and registers:
/// `hello` makes the `Hello` once the connection is up (it tells whether the path carries
/// datagrams), and the answer must be a `Welcome`.
pub async fn register(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    shown: &str,
    hello: impl FnOnce(&quinn::Connection) -> Hello,
) -> Result<Registered, Failure> {
    let conn = connect(endpoint, client, addr, shown).await?;
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(_) if was_revoked(&conn) => return Err(Failure::Revoked),
        Err(e) => {
            return Err(Failure::Retry(format!(
                "cannot open the control stream: {e}"
            )))
        }
    };
    let hello = hello(&conn);
    let datagrams = hello.datagrams;
    match exchange(&conn, &mut send, &mut recv, hello).await? {
        CoordMsg::Welcome(welcome) => Ok(Registered {
            conn,
            send,
            recv,
            welcome,
            datagrams,
        }),
        other => {
            conn.close(0u32.into(), b"unexpected answer");
            Err(Failure::Retry(format!(
                "unexpected answer to Hello: {}",
                kind(&other)
            )))
        }
    }
}

/// A message's variant name, for errors (a full dump can hold a certificate).
fn kind(m: &CoordMsg) -> String {
    format!("{m:?}")
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("?")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new();
        for cap_ms in [100u64, 200, 400, 800, 1600, 2000, 2000, 2000] {
            let d = b.next_wait().as_millis() as u64;
            assert!(
                (cap_ms / 2..=cap_ms).contains(&d),
                "{d} ms for cap {cap_ms}"
            );
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn only_refusals_that_cannot_clear_are_final() {
        assert!(is_final(RejectCode::BadToken));
        assert!(is_final(RejectCode::UnknownNode));
        assert!(is_final(RejectCode::NotAdmitted));
        assert!(is_final(RejectCode::UnsupportedVersion));
        assert!(!is_final(RejectCode::Unavailable));
        assert!(!is_final(RejectCode::ProtocolViolation));
    }

    #[test]
    fn silence_limit_is_three_beats_or_half_a_lease() {
        let ms = Duration::from_millis;
        assert_eq!(silence_limit(ms(200), ms(1000)), ms(600));
        assert_eq!(silence_limit(ms(100), ms(5000)), ms(2500));
    }
}
