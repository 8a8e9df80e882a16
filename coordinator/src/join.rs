//! Joining: a new node trades a join token and a CSR for a certificate.
//!
//! The token's secret is compared in constant time with the stored SHA-256 hash (the secret is
//! never stored). The certificate is made from the CSR's *public key only*: the node id, names,
//! usages and lifetime are chosen here, so a CSR cannot ask for more than a node certificate.
//! The node record and the token's raised use count are one durable batch, written before the
//! certificate is sent: a crash cannot hand out a certificate that the store does not know, nor
//! let a single-use token be used twice.
//!
//! A join is idempotent for the node that asked: when its answer is lost (a timeout, a crash of
//! either side after the batch was written) the agent asks again with the same token and the
//! same key (it keeps the join key on disk until it has its identity). A name held by a node
//! that joined with that token and key and never registered is that node: it gets a new
//! certificate for the same id, and no token use is spent. Anyone else asking for the name is
//! refused.

use crate::engine::MembershipError;
use crate::model::{NodeRecord, NodeState};
use crate::runtime::EngineHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tandem_common::ids::NodeId;
use tandem_common::pki::CertificateAuthority;
use tandem_common::proto::{Hello, Joined, RejectCode};
use tandem_common::token;

/// Join handling.
pub struct Joiner {
    /// The CA that signs node certificates.
    pub ca: Arc<CertificateAuthority>,
    /// The engine the node is added to.
    pub engine: EngineHandle,
    /// Node certificate lifetime.
    pub cert_validity: Duration,
    /// The lease told to agents.
    pub lease: Duration,
    /// One join at a time: token use counts and names stay consistent. Also counts failed
    /// joins (and failed checks) per source address. Shared with the admin API, whose token
    /// revocation takes it too, so a join in flight cannot write back a token it read before
    /// the revocation.
    pub lock: Arc<tokio::sync::Mutex<crate::limits::FailedJoins>>,
}

fn refused(code: RejectCode, reason: impl Into<String>) -> MembershipError {
    MembershipError::Refused {
        code,
        reason: reason.into(),
    }
}

/// Checks a node name: 1-63 characters of letters (any script), digits, `-`, `_` and `.`.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > 63 {
        return Err(format!("node name must be 1-63 characters, got {n}"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "node name `{name}` has the character {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

impl Joiner {
    /// Admits a new node, or says why not. The admission is applied to the store; the caller
    /// waits for the returned ticket to be durable before sending the certificate.
    pub async fn join(
        &self,
        hello: &Hello,
        peer: SocketAddr,
    ) -> Result<(Joined, crate::store::Ticket), MembershipError> {
        let req = hello.join.as_ref().ok_or_else(|| {
            refused(
                RejectCode::ProtocolViolation,
                "no client certificate and no join token: join with a token first",
            )
        })?;
        check_node_name(&hello.name).map_err(|r| refused(RejectCode::NotAdmitted, r))?;
        let mut failures = self.lock.lock().await;
        let now = std::time::Instant::now();
        if let Err(wait) = failures.check(peer.ip(), now) {
            return Err(refused(
                RejectCode::BadToken,
                format!(
                    "too many failed joins from {}; try again in {} s",
                    peer.ip(),
                    wait.as_secs().max(1)
                ),
            ));
        }
        let r = self.join_locked(hello, req, peer).await;
        if let Err(MembershipError::Refused {
            code: RejectCode::BadToken,
            ..
        }) = &r
        {
            failures.failed(peer.ip(), now);
        }
        r
    }

    /// The token record for `id` if `secret` is its secret (compared in constant time with
    /// the stored hash), and not revoked. The one check of a token's identity, shared by
    /// joins and by `CheckJoin`.
    pub(crate) fn verify_token(
        &self,
        id: &str,
        secret: &str,
    ) -> Result<crate::model::TokenRecord, MembershipError> {
        let bad = || {
            refused(
                RejectCode::BadToken,
                "the join token is not valid (unknown id or wrong secret)",
            )
        };
        let rec = self.engine.store().token(id)?.ok_or_else(bad)?;
        let stored = hex::decode(&rec.secret_sha256)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok());
        match stored {
            Some(hash) if token::verify_secret(secret, &hash) => {}
            _ => return Err(bad()),
        }
        // Checked before the retry of a lost answer below: a revoked token admits nobody.
        if rec.revoked_ms.is_some() {
            return Err(refused(RejectCode::BadToken, crate::model::TOKEN_REVOKED));
        }
        Ok(rec)
    }

    async fn join_locked(
        &self,
        hello: &Hello,
        req: &tandem_common::proto::JoinRequest,
        peer: SocketAddr,
    ) -> Result<(Joined, crate::store::Ticket), MembershipError> {
        let store = self.engine.store();
        let rec = self.verify_token(&req.token_id, &req.token_secret)?;
        let now_ms = tandem_common::time::unix_ms();
        if let Some(other) = self.node_named(&hello.name).await {
            // The same node asking again because the answer to its first join was lost (a
            // timeout, a crash of either side): same token, same key, not registered yet. It
            // gets its node back, even if that join spent the token's last use.
            let retry = other.state == NodeState::Joining
                && other.joined_with_token == rec.id
                && !other.key_sha256.is_empty()
                && tandem_common::pki::csr_key_sha256(&req.csr_pem)
                    .is_ok_and(|k| k == other.key_sha256);
            if retry {
                return self.join_again(req, other, peer).await;
            }
            return Err(refused(
                RejectCode::NotAdmitted,
                format!("node name `{}` is already used by node {}; remove that node first or choose another --name", hello.name, other.id),
            ));
        }
        rec.usable(now_ms)
            .map_err(|r| refused(RejectCode::BadToken, r))?;
        // A token for a cluster admits only nodes that meet the cluster's rules.
        let cluster = match &rec.cluster {
            Some(cid) => Some(
                self.admit_to_cluster(cid.clone(), &hello.name, &hello.hardware)
                    .await?,
            ),
            None => None,
        };
        let node_id = NodeId::random();
        // Durable with the node record's batch below, which comes later.
        let (serial, _) = store.reserve_serial()?;
        let issued = self
            .ca
            .sign_node_csr(&req.csr_pem, &node_id, serial, self.cert_validity)
            .map_err(|e| {
                refused(
                    RejectCode::NotAdmitted,
                    format!("the certificate signing request was refused: {e}"),
                )
            })?;
        let record = NodeRecord {
            id: node_id.clone(),
            name: hello.name.clone(),
            state: NodeState::Joining,
            state_reason: "joined; has not registered with its certificate yet".into(),
            state_since_ms: now_ms,
            address: peer.to_string(),
            agent_version: hello.agent_version.clone(),
            cert_serial: issued.serial,
            cert_not_after_unix: issued.not_after_unix as i64,
            previous_cert_serial: None,
            previous_cert_not_after_unix: 0,
            key_sha256: issued.key_sha256.clone(),
            created_ms: now_ms,
            joined_with_token: rec.id.clone(),
            hardware: hello.hardware.clone(),
            cluster: cluster.as_ref().map(|c| c.id.clone()),
            labels: Default::default(),
            taints: Vec::new(),
            protected: false,
            draining: false,
            removed_ms: None,
        };
        let ticket = self
            .engine
            .call(move |e| e.record_join(record, rec, cluster))
            .await?;
        tracing::info!(%peer, node = %node_id, name = %hello.name, "node joined");
        Ok((
            Joined {
                node_id,
                name: hello.name.clone(),
                cert_pem: issued.cert_pem,
                ca_pem: self.ca.cert_pem().to_string(),
            },
            ticket,
        ))
    }
}

impl Joiner {
    /// The node that holds `name`, if any (the engine's look-up).
    pub(crate) async fn node_named(&self, name: &str) -> Option<NodeRecord> {
        let name = name.to_string();
        self.engine.call(move |e| e.node_named(&name)).await
    }

    /// The cluster `cid` if a node `name` with `hw` meets its rules (the engine's check).
    pub(crate) async fn admit_to_cluster(
        &self,
        cid: String,
        name: &str,
        hw: &tandem_common::hardware::HardwareReport,
    ) -> Result<crate::model::ClusterRecord, MembershipError> {
        let (name, hw) = (name.to_string(), hw.clone());
        self.engine
            .call(move |e| e.admit_to_cluster(&cid, &name, &hw))
            .await
    }

    /// Answers a retried join of `node` (see `join_locked`) with a new certificate for the same
    /// node id.
    async fn join_again(
        &self,
        req: &tandem_common::proto::JoinRequest,
        node: NodeRecord,
        peer: SocketAddr,
    ) -> Result<(Joined, crate::store::Ticket), MembershipError> {
        let (serial, _) = self.engine.store().reserve_serial()?;
        let issued = self
            .ca
            .sign_node_csr(&req.csr_pem, &node.id, serial, self.cert_validity)
            .map_err(|e| {
                refused(
                    RejectCode::NotAdmitted,
                    format!("the certificate signing request was refused: {e}"),
                )
            })?;
        let (id, cert) = (node.id.clone(), issued.clone());
        let ticket = self
            .engine
            .call(move |e| e.record_join_retry(&id, &cert, peer))
            .await?;
        tracing::info!(%peer, node = %node.id, name = %node.name, serial, "join retried with the same key: same node, new certificate");
        Ok((
            Joined {
                node_id: node.id,
                name: node.name,
                cert_pem: issued.cert_pem,
                ca_pem: self.ca.cert_pem().to_string(),
            },
            ticket,
        ))
    }

    /// Renews a member's certificate over its live connection, which presented `conn_serial`:
    /// signs a certificate for the CSR's key with a new serial and applies its record; the
    /// caller sends it only once the store's newest ticket is durable. The node's id and cluster stay; only the key, serial and expiry change.
    pub async fn renew(
        &self,
        node: &NodeId,
        conn_serial: u64,
        csr_pem: &str,
    ) -> Result<tandem_common::pki::IssuedCert, MembershipError> {
        // Durable with the renewal's own batch, which the caller waits for before answering.
        let (serial, _) = self.engine.store().reserve_serial()?;
        let issued = self
            .ca
            .sign_node_csr(csr_pem, node, serial, self.cert_validity)
            .map_err(|e| {
                refused(
                    RejectCode::ProtocolViolation,
                    format!("the certificate signing request was refused: {e}"),
                )
            })?;
        let (id, cert) = (node.clone(), issued.clone());
        self.engine
            .call(move |e| e.record_renewal(&id, conn_serial, &cert))
            .await?;
        tracing::info!(%node, old_serial = conn_serial, serial = issued.serial, not_after_unix = issued.not_after_unix, "node certificate renewed");
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::check_node_name;

    #[test]
    fn node_names() {
        assert!(check_node_name("edge-01.rack3").is_ok());
        assert!(check_node_name("边缘-1").is_ok());
        assert!(check_node_name("").is_err());
        assert!(check_node_name(&"a".repeat(64)).is_err());
        assert!(check_node_name("a b").is_err());
        assert!(check_node_name("a/b").is_err());
    }
}
