//! Join tokens: how an agent that has no certificate yet proves it may join.
//!
//! Format: `tdm1.<id>.<secret>.<pin>`
//! - `tdm1`: the format version.
//! - `<id>`: 8 random bytes as 16 lowercase hex digits. It names the token in the store and
//!   in logs, so the secret never has to be logged or looked up by value.
//! - `<secret>`: 32 random bytes, base64url without padding (43 characters).
//! - `<pin>`: the [`CaPin`] of the coordinator's CA, 64 hex digits.
//!
//! Why the pin is inside the token: an unjoined agent has no CA certificate to verify the
//! coordinator with. The pin lets it authenticate the coordinator in the TLS handshake
//! ([`crate::tls::join_client_config`]) *before* it sends the secret, so a man in the middle
//! never sees a usable secret.
//!
//! Why only a hash is stored: the coordinator keeps [`hash_secret`] of the secret, so a leaked
//! store does not leak live tokens. The secret is 256 random bits, so an unsalted fast hash is
//! enough (there is nothing to brute-force), and [`verify_secret`] compares in constant time.

use crate::pki::CaPin;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;

/// The token format version, the first dot-separated field.
pub const TOKEN_PREFIX: &str = "tdm1";

/// Why a string is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The string does not have exactly four dot-separated fields.
    #[error(
        "malformed join token: expected tdm1.<id>.<secret>.<pin> (4 dot-separated fields), got {0}"
    )]
    WrongFieldCount(usize),
    /// The first field is not `tdm1` (an unknown version, or not a Tandem token at all).
    #[error("malformed join token: it must start with \"tdm1.\"")]
    WrongPrefix,
    /// The id is not 16 lowercase hex digits.
    #[error("malformed join token: the id must be 16 lowercase hex digits")]
    BadId,
    /// The secret is not 32 bytes in unpadded base64url.
    #[error(
        "malformed join token: the secret must be 32 bytes in unpadded base64url (43 characters)"
    )]
    BadSecret,
    /// The CA pin is not 64 hex digits.
    #[error("malformed join token: the CA pin must be 64 hex digits")]
    BadPin,
}

/// A join token. `Debug` hides the secret; `Display` writes the whole token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// 8 random bytes, 16 lowercase hex digits.
    pub id: String,
    /// 32 random bytes, base64url without padding.
    pub secret: String,
    /// The pin of the coordinator's CA.
    pub ca_pin: CaPin,
}

impl JoinToken {
    /// A fresh token with a random id and secret for the CA with `ca_pin`.
    pub fn generate(ca_pin: CaPin) -> Self {
        let id: [u8; 8] = rand::random();
        let secret: [u8; 32] = rand::random();
        JoinToken {
            id: hex::encode(id),
            secret: URL_SAFE_NO_PAD.encode(secret),
            ca_pin,
        }
    }

    /// The hash of this token's secret, the only form the coordinator stores.
    pub fn secret_hash(&self) -> [u8; 32] {
        hash_secret(&self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca_pin", &self.ca_pin)
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_pin
        )
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    /// Parses `tdm1.<id>.<secret>.<pin>`. Surrounding whitespace (a trailing newline from a
    /// token file) is ignored; anything else malformed is an error, never a panic.
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let fields: Vec<&str> = s.trim().split('.').collect();
        let [prefix, id, secret, pin] = fields[..] else {
            return Err(TokenError::WrongFieldCount(fields.len()));
        };
        if prefix != TOKEN_PREFIX {
            return Err(TokenError::WrongPrefix);
        }
        if id.len() != 16
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(TokenError::BadId);
        }
        // The base64 engine rejects non-canonical trailing bits, so a parsed token formats
        // back to exactly the same text (and hashes to the same value).
        if secret.len() != 43 || URL_SAFE_NO_PAD.decode(secret).map(|raw| raw.len()) != Ok(32) {
            return Err(TokenError::BadSecret);
        }
        let ca_pin = CaPin::from_hex(pin).map_err(|_| TokenError::BadPin)?;
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
            ca_pin,
        })
    }
}

/// SHA-256 of a token secret (of its text form).
pub fn hash_secret(secret: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Whether `secret` hashes to `stored_hash`, compared in constant time.
pub fn verify_secret(secret: &str, stored_hash: &[u8; 32]) -> bool {
    hash_secret(secret).ct_eq(stored_hash).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pin() -> CaPin {
        CaPin([7u8; 32])
    }

    #[test]
    fn generate_format_parse() {
        let t = JoinToken::generate(pin());
        let s = t.to_string();
        assert!(s.starts_with("tdm1."));
        assert_eq!(s.len(), 4 + 1 + 16 + 1 + 43 + 1 + 64);
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        assert_eq!(format!("  {s}\n").parse::<JoinToken>().unwrap(), t);
        assert_ne!(JoinToken::generate(pin()), t);
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn malformed_tokens_get_clear_errors() {
        let good = JoinToken::generate(pin()).to_string();
        let f: Vec<&str> = good.split('.').collect();
        let join = |v: &[&str]| v.join(".");
        let p = |s: &str| s.parse::<JoinToken>().unwrap_err();
        assert_eq!(p(""), TokenError::WrongFieldCount(1));
        assert_eq!(p("tdm1.a.b"), TokenError::WrongFieldCount(3));
        assert_eq!(p(&format!("{good}.x")), TokenError::WrongFieldCount(5));
        assert_eq!(
            p(&join(&["tdm2", f[1], f[2], f[3]])),
            TokenError::WrongPrefix
        );
        assert_eq!(
            p(&join(&["TDM1", f[1], f[2], f[3]])),
            TokenError::WrongPrefix
        );
        assert_eq!(p(&join(&["tdm1", "0123", f[2], f[3]])), TokenError::BadId);
        assert_eq!(
            p(&join(&["tdm1", "0123456789ABCDEF", f[2], f[3]])),
            TokenError::BadId
        );
        assert_eq!(
            p(&join(&["tdm1", "0123456789abcdeg", f[2], f[3]])),
            TokenError::BadId
        );
        assert_eq!(
            p(&join(&["tdm1", f[1], "abc", f[3]])),
            TokenError::BadSecret
        );
        assert_eq!(
            p(&join(&["tdm1", f[1], &format!("{}=", f[2]), f[3]])),
            TokenError::BadSecret
        );
        assert_eq!(
            p(&join(&["tdm1", f[1], &"+".repeat(43), f[3]])),
            TokenError::BadSecret
        );
        assert_eq!(
            p(&join(&["tdm1", f[1], &"A".repeat(44), f[3]])),
            TokenError::BadSecret
        );
        // 43 chars whose last one carries non-zero trailing bits: non-canonical.
        assert_eq!(
            p(&join(&[
                "tdm1",
                f[1],
                &format!("{}B", "A".repeat(42)),
                f[3]
            ])),
            TokenError::BadSecret
        );
        assert_eq!(p(&join(&["tdm1", f[1], f[2], "00"])), TokenError::BadPin);
        assert_eq!(
            p(&join(&["tdm1", f[1], f[2], &"z".repeat(64)])),
            TokenError::BadPin
        );
        assert_eq!(
            p(&join(&["tdm1", f[1], f[2], &"é".repeat(32)])),
            TokenError::BadPin
        );
    }

    #[test]
    fn secret_hash_verification() {
        let t = JoinToken::generate(pin());
        let stored = t.secret_hash();
        assert_eq!(stored, hash_secret(&t.secret));
        assert!(verify_secret(&t.secret, &stored));
        let other = JoinToken::generate(pin());
        assert!(!verify_secret(&other.secret, &stored));
        assert!(!verify_secret("", &stored));
        assert!(!verify_secret(&t.secret, &[0u8; 32]));
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            let _ = s.parse::<JoinToken>();
        }

        #[test]
        fn token_shaped_strings_never_panic(
            s in "tdm1\\.[0-9a-fA-F]{0,20}\\.[A-Za-z0-9_=+/-]{0,50}\\.[0-9a-fA-Fé]{0,70}"
        ) {
            let _ = s.parse::<JoinToken>();
        }

        #[test]
        fn parts_round_trip(id in any::<[u8; 8]>(), secret in any::<[u8; 32]>(), pin in any::<[u8; 32]>()) {
            let t = JoinToken {
                id: hex::encode(id),
                secret: URL_SAFE_NO_PAD.encode(secret),
                ca_pin: CaPin(pin),
            };
            let parsed: JoinToken = t.to_string().parse().unwrap();
            prop_assert_eq!(&parsed, &t);
            prop_assert_eq!(parsed.to_string(), t.to_string());
        }

        #[test]
        fn generated_round_trip(pin in any::<[u8; 32]>()) {
            let t = JoinToken::generate(CaPin(pin));
            prop_assert_eq!(t.to_string().parse::<JoinToken>().unwrap(), t);
        }
    }
}
