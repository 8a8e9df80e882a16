//! Renewing the node certificate over the live connection.
//!
//! Node certificates are short-lived (30 days by default) so that a stolen key is worth little
//! for long. An agent renews at about two thirds of its certificate's life, with jitter so that
//! a fleet that joined in one hour does not renew in one second, by sending a CSR for a fresh
//! key on the control stream of the connection it already has. Nothing about the connection
//! changes: heartbeats and the lease carry on, and the new certificate is used from the next
//! connection on. That is why renewal can never cost a missed lease.
//!
//! Crash safety is split between the two sides. The coordinator records the new serial before
//! it answers and keeps accepting the serial the request came on until the agent shows up with
//! the new one; the agent switches key and certificate in one atomic step
//! ([`crate::identity::Identity::save_renewed`]). So whichever side dies wherever, the agent's
//! next connection presents a pair the coordinator accepts.
//!
//! The timing here is a plain struct driven by the wall clock passed in (certificate validity
//! is wall-clock time), tested without sockets.

use crate::identity::Identity;
use std::path::Path;
use tandem_common::pki::{self, NodeKey};
use tandem_common::proto::AgentMsg;

/// How long to wait for an answer before asking again.
const ANSWER_TIMEOUT_S: i64 = 30;
/// Retry delay after a refusal or a failure, at least.
const RETRY_MIN_S: i64 = 5;
/// ... and at most.
const RETRY_MAX_S: i64 = 600;

/// Why a renewal step failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    /// The current or the new certificate cannot be read.
    #[error("certificate: {0}")]
    Certificate(#[from] pki::PkiError),
    /// The coordinator sent a certificate we did not ask for or that does not fit.
    #[error("the renewed certificate does not fit: {0}")]
    Mismatch(String),
    /// Writing the new identity failed (the old one stays in use).
    #[error("saving the renewed identity: {0}")]
    Save(#[from] std::io::Error),
}

/// When, in the life of a certificate, to renew it: `fraction` of the way from its issue
/// (`notBefore` + the backdate) to `notAfter`.
pub fn renew_at_unix(not_before_unix: i64, not_after_unix: i64, fraction: f64) -> i64 {
    let issued = not_before_unix.saturating_add(pki::BACKDATE_S);
    let life = not_after_unix.saturating_sub(issued).max(0);
    issued.saturating_add((life as f64 * fraction.clamp(0.0, 1.0)) as i64)
}

/// The renewal schedule of one agent run.
#[derive(Debug)]
pub struct Renewal {
    /// Where in the certificate's life to renew (about 2/3, jittered per agent run).
    fraction: f64,
    /// When to send the next request (Unix s); `None` until a certificate is known.
    next_at: Option<i64>,
    /// The key of the request in flight, and when it was sent.
    pending: Option<(NodeKey, i64)>,
    /// How many renewals succeeded in this run.
    pub renewed: u64,
}

impl Renewal {
    /// A schedule at `fraction` of the certificate's life; pass `0.6 + 0.1 * random` for
    /// two thirds with jitter.
    pub fn new(fraction: f64) -> Self {
        Self {
            fraction,
            next_at: None,
            pending: None,
            renewed: 0,
        }
    }

    /// Plans the renewal of the certificate in use (called at each new connection).
    pub fn plan(&mut self, cert_pem: &str) -> Result<i64, RenewalError> {
        let facts = pki::node_cert_facts(cert_pem)?;
        let at = renew_at_unix(facts.not_before_unix, facts.not_after_unix, self.fraction);
        self.next_at = Some(at);
        self.pending = None;
        Ok(at)
    }

    /// The request to send now, if one is due. A request that got no answer within
    /// `ANSWER_TIMEOUT_S` is replaced by a new one.
    pub fn poll(
        &mut self,
        now_unix: i64,
        name_hint: &str,
    ) -> Result<Option<AgentMsg>, RenewalError> {
        match (&self.pending, self.next_at) {
            (Some((_, sent)), _) if now_unix < sent + ANSWER_TIMEOUT_S => return Ok(None),
            (None, Some(at)) if now_unix < at => return Ok(None),
            (None, None) => return Ok(None),
            _ => {}
        }
        let key = NodeKey::generate()?;
        let csr_pem = key.csr_pem(name_hint)?;
        self.pending = Some((key, now_unix));
        Ok(Some(AgentMsg::RenewCertificate { csr_pem }))
    }

    /// The coordinator's new certificate: checks it belongs to us and to the key we made, and
    /// switches the identity on disk. Returns the new serial and expiry.
    pub fn on_renewed(
        &mut self,
        identity: &mut Identity,
        state_dir: &Path,
        cert_pem: String,
        now_unix: i64,
    ) -> Result<(u64, i64), RenewalError> {
        let Some((key, _)) = self.pending.take() else {
            return Err(RenewalError::Mismatch(
                "no renewal was asked for on this connection".into(),
            ));
        };
        let result = (|| {
            let facts = pki::node_cert_facts(&cert_pem)?;
            if facts.node_id != identity.node_id {
                return Err(RenewalError::Mismatch(format!(
                    "it is for node {}, we are {}",
                    facts.node_id, identity.node_id
                )));
            }
            if facts.spki_der != key.spki_der() {
                return Err(RenewalError::Mismatch(
                    "it is not for the key we sent".into(),
                ));
            }
            identity.save_renewed(state_dir, key.key_pem(), cert_pem.clone(), facts.serial)?;
            Ok(facts)
        })();
        match result {
            Ok(facts) => {
                self.renewed += 1;
                self.next_at = Some(renew_at_unix(
                    facts.not_before_unix,
                    facts.not_after_unix,
                    self.fraction,
                ));
                Ok((facts.serial, facts.not_after_unix))
            }
            Err(e) => {
                self.retry_later(identity, now_unix);
                Err(e)
            }
        }
    }

    /// The coordinator refused: try again later, while the certificate is still valid.
    pub fn on_refused(&mut self, identity: &Identity, now_unix: i64) {
        self.pending = None;
        self.retry_later(identity, now_unix);
    }

    /// A tenth of the remaining life, within bounds.
    fn retry_later(&mut self, identity: &Identity, now_unix: i64) {
        let remaining = pki::node_cert_facts(&identity.cert_pem)
            .map(|f| f.not_after_unix - now_unix)
            .unwrap_or(0);
        self.next_at = Some(now_unix + (remaining / 10).clamp(RETRY_MIN_S, RETRY_MAX_S));
    }

    /// When the next request goes out (Unix s), for the log.
    pub fn next_at(&self) -> Option<i64> {
        self.next_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_common::ids::NodeId;
    use tandem_common::pki::CertificateAuthority;

    #[test]
    fn renews_at_the_fraction_of_the_life_since_issue() {
        // Issued at 1000 (notBefore backdated), valid 300 s.
        let nb = 1000 - pki::BACKDATE_S;
        assert_eq!(renew_at_unix(nb, 1300, 2.0 / 3.0), 1200);
        assert_eq!(renew_at_unix(nb, 1300, 0.6), 1180);
        assert_eq!(renew_at_unix(nb, 1300, 0.7), 1210);
        // Nonsense never overflows or goes before issue.
        assert_eq!(renew_at_unix(nb, 0, 0.6), 1000);
        assert_eq!(renew_at_unix(i64::MAX, i64::MAX, 0.6), i64::MAX);
    }

    fn setup(validity_s: u64) -> (CertificateAuthority, Identity, tempfile::TempDir) {
        let ca = CertificateAuthority::generate("c").unwrap();
        let key = NodeKey::generate().unwrap();
        let id = NodeId::random();
        let issued = ca
            .sign_node_csr(
                &key.csr_pem("n").unwrap(),
                &id,
                1,
                std::time::Duration::from_secs(validity_s),
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity {
            node_id: id,
            name: "n".into(),
            key_pem: key.key_pem(),
            cert_pem: issued.cert_pem,
            ca_pem: ca.cert_pem().into(),
        };
        identity.save(dir.path()).unwrap();
        (ca, identity, dir)
    }

    fn csr_of(msg: AgentMsg) -> String {
        match msg {
            AgentMsg::RenewCertificate { csr_pem } => csr_pem,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn asks_once_when_due_and_switches_to_the_new_pair() {
        let (ca, mut identity, dir) = setup(3000);
        let mut r = Renewal::new(2.0 / 3.0);
        let at = r.plan(&identity.cert_pem).unwrap();
        let now = tandem_common::time::unix_ms() as i64 / 1000;
        assert!((at - (now + 2000)).abs() <= 2, "at {at}, now {now}");
        assert!(r.poll(at - 1, "n").unwrap().is_none());
        let csr = csr_of(r.poll(at, "n").unwrap().unwrap());
        // In flight: no second request until the answer times out.
        assert!(r.poll(at + 1, "n").unwrap().is_none());
        let issued = ca
            .sign_node_csr(
                &csr,
                &identity.node_id,
                2,
                std::time::Duration::from_secs(3000),
            )
            .unwrap();
        let (serial, _) = r
            .on_renewed(&mut identity, dir.path(), issued.cert_pem.clone(), at + 1)
            .unwrap();
        assert_eq!(serial, 2);
        assert_eq!(r.renewed, 1);
        let back = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.cert_pem, issued.cert_pem);
        // The saved key is the one the certificate is for.
        let key = NodeKey::from_pem(&back.key_pem).unwrap();
        assert_eq!(
            pki::node_cert_facts(&back.cert_pem).unwrap().spki_der,
            key.spki_der()
        );
        // The next renewal is planned from the new certificate (issued now, 3000 s).
        assert!((r.next_at().unwrap() - (now + 2000)).abs() <= 2);
    }

    #[test]
    fn refuses_a_certificate_for_another_key_or_node() {
        let (ca, mut identity, dir) = setup(3000);
        let before = identity.cert_pem.clone();
        let mut r = Renewal::new(0.0);
        r.plan(&identity.cert_pem).unwrap();
        let now = tandem_common::time::unix_ms() as i64 / 1000;
        let _ = csr_of(r.poll(now, "n").unwrap().unwrap());
        let other = NodeKey::generate().unwrap();
        let wrong_key = ca
            .sign_node_csr(
                &other.csr_pem("n").unwrap(),
                &identity.node_id,
                3,
                std::time::Duration::from_secs(3000),
            )
            .unwrap();
        assert!(matches!(
            r.on_renewed(&mut identity, dir.path(), wrong_key.cert_pem, now),
            Err(RenewalError::Mismatch(_))
        ));
        // Unasked-for answers are refused too, and the old identity stays.
        let csr = csr_of(r.poll(now + 3000, "n").unwrap().unwrap());
        let wrong_node = ca
            .sign_node_csr(
                &csr,
                &NodeId::random(),
                4,
                std::time::Duration::from_secs(3000),
            )
            .unwrap();
        assert!(r
            .on_renewed(&mut identity, dir.path(), wrong_node.cert_pem.clone(), now)
            .is_err());
        assert!(r
            .on_renewed(&mut identity, dir.path(), wrong_node.cert_pem, now)
            .is_err());
        assert_eq!(
            Identity::load(dir.path()).unwrap().unwrap().cert_pem,
            before
        );
    }

    #[test]
    fn a_refusal_retries_within_the_remaining_life() {
        let (_ca, identity, _dir) = setup(1000);
        let mut r = Renewal::new(0.0);
        r.plan(&identity.cert_pem).unwrap();
        let now = tandem_common::time::unix_ms() as i64 / 1000;
        assert!(r.poll(now, "n").unwrap().is_some());
        r.on_refused(&identity, now);
        let next = r.next_at().unwrap();
        assert!(
            next >= now + RETRY_MIN_S && next <= now + 100,
            "{next} vs {now}"
        );
    }
}
