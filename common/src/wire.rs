//! Wire constants outside the messages: QUIC application close codes and the TLS alert the
//! coordinator's revocation check raises. Both ends act on them, so they live here, as enums,
//! never as bare numbers in either crate.

/// Why the coordinator closed a node's QUIC connection (the application close code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CloseCode {
    /// A newer connection of the same node replaced this one.
    Replaced = 1,
    /// The node was declared down; it must register again.
    DeclaredDown = 2,
    /// The connection was refused (the reason came in a `Reject`).
    Refused = 3,
    /// The coordinator is shutting down.
    Shutdown = 4,
    /// The peer broke the protocol (or did not read its commands).
    Protocol = 5,
    /// The node was removed; its certificate is revoked.
    Removed = 6,
}

impl CloseCode {
    /// Every code, for look-ups.
    pub const ALL: [CloseCode; 6] = [
        CloseCode::Replaced,
        CloseCode::DeclaredDown,
        CloseCode::Refused,
        CloseCode::Shutdown,
        CloseCode::Protocol,
        CloseCode::Removed,
    ];

    /// The code on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code for a number read off the wire, if it is one of ours.
    pub fn from_code(n: u64) -> Option<CloseCode> {
        Self::ALL.into_iter().find(|c| u64::from(c.code()) == n)
    }
}

impl From<CloseCode> for quinn::VarInt {
    fn from(c: CloseCode) -> Self {
        quinn::VarInt::from_u32(c.code())
    }
}

/// TLS alerts the coordinator's handshake raises that an agent acts on (RFC 8446, 6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TlsAlert {
    /// `certificate_revoked`: the node's certificate serial is no longer a member's (the node
    /// was removed). Final for the agent.
    CertificateRevoked = 44,
}

impl TlsAlert {
    /// The QUIC transport error code that carries this alert (`CRYPTO_ERROR` + alert).
    pub fn transport_code(self) -> quinn::TransportErrorCode {
        quinn::TransportErrorCode::crypto(self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip_and_unknown_ones_are_none() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code().into()), Some(c));
            assert_eq!(quinn::VarInt::from(c).into_inner(), u64::from(c.code()));
        }
        assert_eq!(CloseCode::from_code(0), None);
        assert_eq!(CloseCode::from_code(99), None);
    }

    #[test]
    fn certificate_revoked_is_crypto_error_44() {
        assert_eq!(
            TlsAlert::CertificateRevoked.transport_code(),
            quinn::TransportErrorCode::crypto(44)
        );
    }
}
