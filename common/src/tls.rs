//! rustls/quinn configurations for the agent <-> coordinator link.
//!
//! Why three configurations:
//! - [`server_config`]: the coordinator. Client certificates are *optional* but verified
//!   against the CA whenever one is presented: an unjoined agent has no certificate and must
//!   still reach the coordinator to send its join token, while a joined agent's certificate
//!   names its node id. Code that needs an identity reads it with [`peer_node_id`]; a
//!   connection without one may only join. A certificate from another CA fails the handshake.
//! - [`join_client_config`]: an unjoined agent. It has no CA certificate yet, only the
//!   [`CaPin`] from its join token, so it accepts the coordinator only if the presented chain
//!   holds a CA certificate with that pin *and* the server certificate verifies against that
//!   CA for [`SERVER_NAME`]. The token secret is only ever sent over such a connection.
//! - [`node_client_config`]: a joined agent. The CA is the only root; the node certificate is
//!   presented as the client certificate.
//!
//! Every builder uses the *ring* provider explicitly and TLS 1.3 only (QUIC requires 1.3);
//! nothing depends on a process-wide default provider. Transport parameters are left to the
//! caller. 0-RTT stays disabled: a replayed first flight must never re-send a join request.
//!
//! Clients must connect with server name [`SERVER_NAME`] (the server certificate also names
//! `localhost` and the coordinator's configured IPs).

use crate::ids::NodeId;
use crate::pki::{self, CaPin, PkiError, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::DistinguishedName;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// The QUIC ALPN protocol id of Tandem's wire protocol, version 1.
pub const ALPN: &[u8] = b"tandem/1";
/// The name the coordinator's server certificate carries and clients connect with.
pub use crate::pki::SERVER_NAME;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots_with(ca_der: CertificateDer<'static>) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der)?;
    Ok(Arc::new(roots))
}

fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::BadPem(format!("{what}: no certificate")));
    }
    Ok(certs)
}

fn parse_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::BadPem(format!("{what}: {e}")))
}

/// The coordinator's QUIC server configuration.
///
/// Sends the chain `[server cert, CA cert]` (the CA is appended if `server_cert_pem` does not
/// already end with it) so that joining agents can check the pin. Client certificates are
/// optional, verified against `ca_cert_der` when present. ALPN [`ALPN`].
///
/// `is_member` is asked about the serial of every client certificate that verified: a
/// certificate the CA signed for a node that has since been removed (or whose certificate was
/// replaced) is refused at the handshake as revoked.
pub fn server_config(
    ca_cert_der: CertificateDer<'static>,
    server_cert_pem: &str,
    server_key_pem: &str,
    is_member: SerialCheck,
) -> Result<quinn::ServerConfig> {
    let provider = provider();
    let mut chain = parse_certs(server_cert_pem, "server certificate")?;
    if chain.last() != Some(&ca_cert_der) {
        chain.push(ca_cert_der.clone());
    }
    let key = parse_key(server_key_pem, "server key")?;
    let client_verifier: Arc<dyn ClientCertVerifier> = Arc::new(MemberOnlyVerifier {
        inner: WebPkiClientVerifier::builder_with_provider(
            roots_with(ca_cert_der)?,
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?,
        is_member,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// The admin endpoint's HTTPS configuration: TLS 1.2/1.3 (HTTP clients vary), no client
/// certificates (the bearer token authenticates), ALPN `http/1.1`. The chain carries the CA so
/// clients that trust the CA file verify it.
pub fn https_server_config(
    ca_cert_der: CertificateDer<'static>,
    server_cert_pem: &str,
    server_key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>> {
    let mut chain = parse_certs(server_cert_pem, "admin certificate")?;
    if chain.last() != Some(&ca_cert_der) {
        chain.push(ca_cert_der);
    }
    let key = parse_key(server_key_pem, "admin key")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Tells whether a certificate serial belongs to a current member.
pub type SerialCheck = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// The CA's verification, then the member check: revocation at the handshake.
struct MemberOnlyVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    is_member: SerialCheck,
}

impl std::fmt::Debug for MemberOnlyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberOnlyVerifier")
    }
}

impl ClientCertVerifier for MemberOnlyVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match pki::cert_serial(end_entity.as_ref()) {
            Ok(serial) if (self.is_member)(serial) => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The configuration of an agent that joins with a token: no client certificate, and the
/// coordinator is trusted only through `pin` (see the module docs).
pub fn join_client_config(pin: CaPin) -> Result<quinn::ClientConfig> {
    let provider = provider();
    let verifier = PinnedCaVerifier {
        pin,
        server_name: ServerName::try_from(SERVER_NAME)
            .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?,
        provider: provider.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    client_config(tls)
}

/// The configuration of a joined agent: the CA (`ca_pem`) is the only root, and the node
/// certificate and key are presented for client authentication.
pub fn node_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<quinn::ClientConfig> {
    let provider = provider();
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| PkiError::BadPem(format!("CA certificate: {e}")))?;
    let chain = parse_certs(cert_pem, "node certificate")?;
    let key = parse_key(key_pem, "node key")?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots_with(ca)?)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    client_config(tls)
}

fn client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// The peer's certificate chain, end entity first; `None` if it presented none.
fn peer_certs(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    let certs = *conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    (!certs.is_empty()).then_some(certs)
}

/// The node id of the peer's (verified) client certificate; `None` if it presented none.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    pki::node_id_from_cert(&peer_certs(conn)?[0]).ok()
}

/// The serial number of the peer's (verified) certificate; `None` if it presented none.
pub fn peer_cert_serial(conn: &quinn::Connection) -> Option<u64> {
    pki::cert_serial(&peer_certs(conn)?[0]).ok()
}

/// Whether a connection failed because the coordinator's CA did not match the join token's
/// pin (our own verifier refused it, see [`join_client_config`]), as opposed to a timeout or
/// any other failure. `tandem-agent check` tells "wrong coordinator" from "no answer" by it.
pub fn is_pin_mismatch(e: &quinn::ConnectionError) -> bool {
    // rustls carries our error inside `CertificateError::Other`; quinn keeps only its text.
    matches!(e, quinn::ConnectionError::TransportError(t) if format!("{t:?}").contains("PinMismatch"))
}

/// Why the pinned verifier refused a coordinator.
#[derive(Debug, thiserror::Error)]
#[error("the coordinator presented no CA certificate matching the join token's pin")]
struct PinMismatch;

/// Accepts a server whose chain contains the pinned CA and whose end-entity certificate
/// verifies against that CA (as the only root) for [`SERVER_NAME`].
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: CaPin,
    server_name: ServerName<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The pin is public information, so an ordinary comparison is fine.
        let ca = intermediates
            .iter()
            .find(|c| CaPin::from_cert_der(c).is_ok_and(|p| p == self.pin))
            .ok_or_else(|| {
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    Arc::new(PinMismatch),
                )))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        // Always verified for SERVER_NAME, whatever name the caller dialled.
        inner.verify_server_cert(end_entity, &[], &self.server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, NodeKey};
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::time::timeout;

    const T: Duration = Duration::from_secs(10);

    struct Coordinator {
        ca: CertificateAuthority,
        endpoint: quinn::Endpoint,
    }

    fn coordinator() -> Coordinator {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let (cert, key) = ca
            .issue_server_cert(1, &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let cfg = server_config(ca.cert_der(), &cert, &key, Arc::new(|_| true)).unwrap();
        let endpoint = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        Coordinator { ca, endpoint }
    }

    fn addr(c: &Coordinator) -> SocketAddr {
        c.endpoint.local_addr().unwrap()
    }

    /// Connects with `cfg`; returns the client's and the server's view of the handshake.
    async fn connect(
        c: &Coordinator,
        cfg: quinn::ClientConfig,
    ) -> (
        Result<quinn::Connection, quinn::ConnectionError>,
        Result<quinn::Connection, quinn::ConnectionError>,
    ) {
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = client.connect_with(cfg, addr(c), SERVER_NAME).unwrap();
        let server = c.endpoint.clone();
        let accept = tokio::spawn(async move {
            let incoming = server.accept().await.expect("endpoint open");
            incoming.await
        });
        let client_res = timeout(T, connecting)
            .await
            .expect("client handshake timed out");
        if let Ok(conn) = &client_res {
            // In TLS 1.3 the client finishes before the server has checked its certificate:
            // wait for the server's verdict (a refusal closes the connection).
            let _ = timeout(Duration::from_millis(500), conn.closed()).await;
        }
        let server_res = timeout(T, accept)
            .await
            .expect("server handshake timed out")
            .unwrap();
        (client_res, server_res)
    }

    fn joined_node(ca: &CertificateAuthority) -> (NodeId, quinn::ClientConfig) {
        let key = NodeKey::generate().unwrap();
        let id = NodeId::random();
        let issued = ca
            .sign_node_csr(
                &key.csr_pem("node").unwrap(),
                &id,
                77,
                Duration::from_secs(3600),
            )
            .unwrap();
        let cfg = node_client_config(ca.cert_pem(), &issued.cert_pem, &key.key_pem()).unwrap();
        (id, cfg)
    }

    #[tokio::test]
    async fn join_with_right_pin_connects_without_client_cert() {
        let c = coordinator();
        let (client, server) = connect(&c, join_client_config(c.ca.pin()).unwrap()).await;
        let client = client.expect("client connects");
        let server = server.expect("server accepts");
        assert!(
            client.close_reason().is_none(),
            "{:?}",
            client.close_reason()
        );
        assert!(server.peer_identity().is_none());
        assert_eq!(peer_node_id(&server), None);
        assert_eq!(peer_cert_serial(&server), None);
        // The client sees the coordinator's chain [server cert, CA].
        let chain = client
            .peer_identity()
            .unwrap()
            .downcast::<Vec<CertificateDer<'static>>>()
            .unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], c.ca.cert_der());
        assert_eq!(peer_cert_serial(&client), Some(1));
        // The link works.
        let (mut send, _recv) = client.open_bi().await.unwrap();
        send.write_all(b"hi").await.unwrap();
        send.finish().unwrap();
        let (_s, mut recv) = timeout(T, server.accept_bi()).await.unwrap().unwrap();
        assert_eq!(
            timeout(T, recv.read_to_end(16)).await.unwrap().unwrap(),
            b"hi"
        );
    }

    #[tokio::test]
    async fn join_with_wrong_pin_fails() {
        let c = coordinator();
        let other = CertificateAuthority::generate("other CA").unwrap();
        let (client, server) = connect(&c, join_client_config(other.pin()).unwrap()).await;
        let err = client.expect_err("a coordinator with another CA must be refused");
        assert!(format!("{err:?}").contains("PinMismatch"), "{err:?}");
        assert!(is_pin_mismatch(&err), "{err:?}");
        assert!(server.is_err());
    }

    #[tokio::test]
    async fn node_cert_from_the_ca_connects_and_names_the_node() {
        let c = coordinator();
        let (id, cfg) = joined_node(&c.ca);
        let (client, server) = connect(&c, cfg).await;
        let client = client.expect("client connects");
        let server = server.expect("server accepts");
        assert!(client.close_reason().is_none());
        assert_eq!(peer_node_id(&server), Some(id));
        assert_eq!(peer_cert_serial(&server), Some(77));
    }

    #[tokio::test]
    async fn node_cert_from_another_ca_is_refused() {
        let c = coordinator();
        let other = CertificateAuthority::generate("other CA").unwrap();
        let key = NodeKey::generate().unwrap();
        let issued = other
            .sign_node_csr(
                &key.csr_pem("rogue").unwrap(),
                &NodeId::random(),
                5,
                Duration::from_secs(3600),
            )
            .unwrap();
        // The rogue node trusts the real CA (so it accepts the server) but its certificate is
        // signed by another one.
        let cfg = node_client_config(c.ca.cert_pem(), &issued.cert_pem, &key.key_pem()).unwrap();
        let (client, server) = connect(&c, cfg).await;
        let err = server.expect_err("the server must refuse a certificate from another CA");
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
        // The client's own handshake may complete first (TLS 1.3); it is then closed.
        if let Ok(client) = client {
            timeout(T, client.closed())
                .await
                .expect("the refused client is closed");
        }
    }

    #[tokio::test]
    async fn node_refuses_coordinator_of_another_ca() {
        let c = coordinator();
        let other = CertificateAuthority::generate("other CA").unwrap();
        let (_, cfg) = joined_node(&other);
        let (client, server) = connect(&c, cfg).await;
        let err = client.expect_err("a node must refuse a coordinator of another CA");
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
        assert!(server.is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ca = CertificateAuthority::generate("c").unwrap();
        assert!(server_config(ca.cert_der(), "junk", "junk", Arc::new(|_| true)).is_err());
        assert!(node_client_config("junk", "junk", "junk").is_err());
        let (cert, key) = ca.issue_server_cert(2, &[]).unwrap();
        assert!(server_config(ca.cert_der(), &cert, "", Arc::new(|_| true)).is_err());
        assert!(server_config(ca.cert_der(), "", &key, Arc::new(|_| true)).is_err());
        assert!(server_config(ca.cert_der(), &cert, &key, Arc::new(|_| true)).is_ok());
        assert!(node_client_config(ca.cert_pem(), &cert, "nope").is_err());
    }
}
