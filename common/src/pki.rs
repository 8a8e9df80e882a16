//! The coordinator's certificate authority and the node's key.
//!
//! Why a private CA: the coordinator must know *which* node is on the other end of a
//! connection without trusting anything the node says about itself. At join, the coordinator
//! signs a certificate that names the node id it chose; afterwards the TLS handshake alone
//! proves the id, and a node can never claim another node's id.
//!
//! Why the coordinator ignores the CSR's contents: a CSR is written by the node, so every field
//! in it (names, CA flag, key usages) is attacker-controlled. [`CertificateAuthority::sign_node_csr`]
//! takes only the public key from the CSR (after checking the CSR's self-signature, which
//! proves the node holds the private key) and fills in every other field itself.
//!
//! # Certificate scheme
//! - CA: ECDSA P-256, self-signed, `CA:true` with path length 0 (it signs only end-entity
//!   certificates), key usages `keyCertSign`, `cRLSign`, `digitalSignature`, 10-year validity.
//! - Node certificate: subject CN = node id, **one DNS SAN `<node-id>.node.tandem`** (the
//!   authoritative source of the id, see [`node_id_from_cert`]; a DNS SAN rather than a URI SAN
//!   because webpki and every X.509 tool understand DNS names natively), `CA:false`, key usage
//!   `digitalSignature`, extended key usage `clientAuth` only, never outliving the CA.
//! - Coordinator server certificate: SAN DNS [`SERVER_NAME`] and `localhost` plus
//!   the given IP addresses, extended key usage `serverAuth` only.
//!
//! # Pin
//! A [`CaPin`] is the SHA-256 of the CA certificate's SubjectPublicKeyInfo DER. It travels in
//! join tokens so that an unjoined agent can authenticate the coordinator before sending its
//! token secret (see [`crate::tls::join_client_config`]). Hashing the public key rather than
//! the whole certificate keeps the pin valid if the CA certificate is ever re-issued with the
//! same key.

use crate::ids::NodeId;

/// The name the coordinator's server certificate carries and clients connect with (re-exported
/// as `tls::SERVER_NAME`, where clients use it).
pub const SERVER_NAME: &str = "tandem-coordinator";
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// File name of the CA certificate (PEM) inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key (PKCS#8 PEM, mode 0600) inside the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// DNS suffix of the SAN that names a node: `<node-id>.node.tandem`.
pub const NODE_SAN_SUFFIX: &str = ".node.tandem";

/// How long a freshly generated CA is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// How far in the past certificates start, to tolerate clock skew between machines.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// How far before its issue a certificate's `notBefore` is set (clock skew between machines).
/// Whoever times a renewal from `notBefore` adds this back to find the moment of issue.
pub const BACKDATE_S: i64 = 5 * 60;

/// Errors of the PKI and of the TLS configuration built on it.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not generate a key, a certificate or a CSR.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Reading or writing a CA file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `save` refuses to overwrite an existing CA: that would orphan every node certificate.
    #[error("{0} already exists: refusing to overwrite an existing CA")]
    AlreadyExists(PathBuf),
    /// A PEM input held no usable object of the expected kind.
    #[error("invalid PEM: {0}")]
    BadPem(String),
    /// A certificate did not parse as X.509.
    #[error("invalid certificate: {0}")]
    BadCertificate(String),
    /// A CSR did not parse, or its self-signature did not verify.
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
    /// The CA private key does not belong to the CA certificate.
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    /// A certificate carries no `<node-id>.node.tandem` SAN with a valid node id.
    #[error("the certificate names no node id")]
    NoNodeId,
    /// A serial number was zero (RFC 5280 requires a positive serial) or longer than 64 bits.
    #[error("invalid certificate serial number: {0}")]
    BadSerial(String),
    /// The requested validity does not fit in a certificate's time range.
    #[error("certificate validity out of range")]
    ValidityOutOfRange,
    /// A CA pin was not 64 hex digits.
    #[error("invalid CA pin: expected 64 hex digits")]
    BadPin,
    /// rustls refused a configuration (for example a key it cannot use).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// rustls could not build a certificate verifier (for example an empty root store).
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The crypto provider lacks the cipher suite QUIC needs for its initial packets.
    #[error("QUIC TLS configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// Result of this module.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256 of a CA certificate's SubjectPublicKeyInfo DER.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaPin(pub [u8; 32]);

impl CaPin {
    /// The pin of a DER certificate (of its SubjectPublicKeyInfo).
    pub fn from_cert_der(der: &[u8]) -> Result<Self> {
        let cert = parse_cert(der)?;
        Ok(Self::from_spki_der(cert.tbs_certificate.subject_pki.raw))
    }

    /// The pin of a SubjectPublicKeyInfo DER.
    pub fn from_spki_der(spki: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        let mut pin = [0u8; 32];
        pin.copy_from_slice(digest.as_ref());
        CaPin(pin)
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self> {
        if s.len() != 64 {
            return Err(PkiError::BadPin);
        }
        let mut pin = [0u8; 32];
        hex::decode_to_slice(s, &mut pin).map_err(|_| PkiError::BadPin)?;
        Ok(CaPin(pin))
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaPin({})", self.to_hex())
    }
}

impl FromStr for CaPin {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_hex(s)
    }
}

impl serde::Serialize for CaPin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for CaPin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CaPin::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// A certificate signed for a node by [`CertificateAuthority::sign_node_csr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number.
    pub serial: u64,
    /// Its `notAfter`, seconds since the Unix epoch.
    pub not_after_unix: u64,
    /// SHA-256 of the public key it was issued for (hex of the SubjectPublicKeyInfo DER), as
    /// [`csr_key_sha256`] gives it for the CSR: lets a retried join with the same key be told
    /// from another node taking the name.
    pub key_sha256: String,
}

/// The coordinator's certificate authority: its certificate and signing key.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority")
            .field("pin", &self.pin())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a new self-signed CA (ECDSA P-256, 10 years) with the given common name.
    pub fn generate(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        // A random positive serial: RFC 5280 wants serials unique per issuer.
        params.serial_number = Some(SerialNumber::from((rand::random::<u64>() >> 1) | 1));
        let cert = params.self_signed(&key)?;
        Self::from_parts(cert.pem(), cert.der().clone(), key)
    }

    fn from_parts(
        cert_pem: String,
        cert_der: CertificateDer<'static>,
        key: KeyPair,
    ) -> Result<Self> {
        let parsed = parse_cert(&cert_der)?;
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::KeyMismatch);
        }
        let not_after = parsed.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            cert_der,
            cert_pem,
            issuer,
            not_after,
        })
    }

    /// Writes `ca.pem` and `ca.key` into `dir` (created if missing).
    ///
    /// The key file is created with mode 0600 from the start (never world-readable, not even
    /// briefly) and both files are fsynced, as is the directory. Refuses to overwrite an
    /// existing CA ([`PkiError::AlreadyExists`]).
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        for p in [&key_path, &cert_path] {
            if p.exists() {
                return Err(PkiError::AlreadyExists(p.clone()));
            }
        }
        write_new_file(
            &key_path,
            self.issuer.key().serialize_pem().as_bytes(),
            0o600,
        )?;
        write_new_file(&cert_path, self.cert_pem.as_bytes(), 0o644)?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok(())
    }

    /// Reads `ca.pem` and `ca.key` from `dir` and checks that the key matches the certificate.
    pub fn load(dir: &Path) -> Result<Self> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::BadPem(format!("{}: {e}", key_path.display())))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::BadPem(format!("{}: {e}", cert_path.display())))?;
        Self::from_parts(cert_pem, cert_der, key)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The pin that join tokens carry.
    pub fn pin(&self) -> CaPin {
        CaPin::from_spki_der(&self.issuer.key().subject_public_key_info())
    }

    /// Signs a node certificate for the public key of `csr_pem`.
    ///
    /// Only the public key is taken from the CSR (after its self-signature is verified); every
    /// other field is chosen here: CN = `node_id`, the single SAN `<node-id>.node.tandem`,
    /// `CA:false`, extended key usage `clientAuth` only, the given `serial` (must be non-zero),
    /// `notBefore` = now - 5 min, `notAfter` = now + `validity` (capped at the CA's own
    /// `notAfter`).
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: &NodeId,
        serial: u64,
        validity: std::time::Duration,
    ) -> Result<IssuedCert> {
        check_serial(serial)?;
        let (public_key, key_sha256) = csr_public_key(csr_pem)?;
        let now = OffsetDateTime::now_utc();
        let validity =
            time::Duration::try_from(validity).map_err(|_| PkiError::ValidityOutOfRange)?;
        let not_after = now
            .checked_add(validity)
            .ok_or(PkiError::ValidityOutOfRange)?
            .min(self.not_after);

        let mut params = CertificateParams::default();
        params.distinguished_name = dn(node_id.as_str());
        params.subject_alt_names = vec![SanType::DnsName(node_san(node_id).try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial,
            not_after_unix: u64::try_from(not_after.unix_timestamp()).unwrap_or(0),
            key_sha256,
        })
    }

    /// Issues the coordinator's QUIC server certificate with a fresh P-256 key.
    ///
    /// SANs: DNS [`SERVER_NAME`], DNS `localhost`, and `extra_ips`; extended key
    /// usage `serverAuth` only; valid from now - 5 min until the CA expires (it is meant to be
    /// re-issued at each coordinator start). Returns `(cert_pem, key_pem)`.
    pub fn issue_server_cert(&self, serial: u64, extra_ips: &[IpAddr]) -> Result<(String, String)> {
        self.issue_server_cert_for(serial, extra_ips, &[])
    }

    /// [`CertificateAuthority::issue_server_cert`] with extra DNS names too (the admin
    /// endpoint's HTTPS certificate names the hosts operators reach it by).
    pub fn issue_server_cert_for(
        &self,
        serial: u64,
        extra_ips: &[IpAddr],
        extra_dns: &[String],
    ) -> Result<(String, String)> {
        check_serial(serial)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(SERVER_NAME);
        let mut sans = vec![
            SanType::DnsName(SERVER_NAME.try_into()?),
            SanType::DnsName("localhost".try_into()?),
        ];
        for ip in extra_ips {
            let san = SanType::IpAddress(*ip);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        for name in extra_dns {
            let san = SanType::DnsName(name.as_str().try_into()?);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = now - BACKDATE;
        params.not_after = self.not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A node's private key (ECDSA P-256), made by the node itself; it never leaves the node.
pub struct NodeKey {
    key: KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl NodeKey {
    /// Generates a fresh P-256 key.
    pub fn generate() -> Result<NodeKey> {
        Ok(NodeKey {
            key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// Loads a key written by [`NodeKey::key_pem`].
    pub fn from_pem(key_pem: &str) -> Result<NodeKey> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadPem(e.to_string()))?;
        Ok(NodeKey { key })
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The public key as a SubjectPublicKeyInfo, DER (compare with
    /// [`NodeCertFacts::spki_der`]).
    pub fn spki_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key)
    }

    /// A CSR for this key. `name_hint` goes into the CSR's CN for humans reading logs; the
    /// coordinator ignores it (and every other CSR field but the key).
    pub fn csr_pem(&self, name_hint: &str) -> Result<String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name_hint);
        Ok(params.serialize_request(&self.key)?.pem()?)
    }
}

/// The node id a node certificate names, read from its `<node-id>.node.tandem` DNS SAN.
///
/// The CN is not consulted: the SAN is the field certificate verifiers are built around, and
/// the one [`CertificateAuthority::sign_node_csr`] writes. A certificate with no such SAN, or
/// with two different node ids, gives [`PkiError::NoNodeId`].
pub fn node_id_from_cert(der: &[u8]) -> Result<NodeId> {
    let cert = parse_cert(der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?
        .ok_or(PkiError::NoNodeId)?;
    let mut found: Option<NodeId> = None;
    for name in &san.value.general_names {
        if let GeneralName::DNSName(dns) = name {
            if let Some(id) = dns.strip_suffix(NODE_SAN_SUFFIX).and_then(NodeId::parse) {
                if found.as_ref().is_some_and(|f| *f != id) {
                    return Err(PkiError::NoNodeId);
                }
                found = Some(id);
            }
        }
    }
    found.ok_or(PkiError::NoNodeId)
}

/// A certificate's serial number, which must fit in 64 bits.
pub fn cert_serial(der: &[u8]) -> Result<u64> {
    let cert = parse_cert(der)?;
    let raw = cert.raw_serial();
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let digits = &raw[first..];
    if digits.len() > 8 {
        return Err(PkiError::BadSerial(format!("{} bytes long", digits.len())));
    }
    Ok(digits
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// What a node certificate says about itself, read from its PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertFacts {
    /// The node id in its SAN.
    pub node_id: NodeId,
    /// Its serial.
    pub serial: u64,
    /// `notBefore`, Unix s (the moment of issue minus [`BACKDATE_S`]).
    pub not_before_unix: i64,
    /// `notAfter`, Unix s.
    pub not_after_unix: i64,
    /// The SubjectPublicKeyInfo, DER: compared with a key's to see that the two belong together.
    pub spki_der: Vec<u8>,
}

/// Reads the facts of the first certificate in `cert_pem`.
pub fn node_cert_facts(cert_pem: &str) -> Result<NodeCertFacts> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::BadPem(format!("node certificate: {e}")))?;
    let cert = parse_cert(&der)?;
    Ok(NodeCertFacts {
        node_id: node_id_from_cert(&der)?,
        serial: cert_serial(&der)?,
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        spki_der: cert.public_key().raw.to_vec(),
    })
}

/// The DNS SAN that names `node_id`.
pub fn node_san(node_id: &NodeId) -> String {
    format!("{}{NODE_SAN_SUFFIX}", node_id.as_str())
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCertificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

fn check_serial(serial: u64) -> Result<()> {
    if serial == 0 {
        return Err(PkiError::BadSerial("serial 0 is not allowed".into()));
    }
    Ok(())
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Parses a CSR, verifies its self-signature and returns only its public key.
///
/// Parsed with x509-parser rather than `rcgen::CertificateSigningRequestParams::from_pem`,
/// which rejects CSRs with extensions it does not know: we ignore every extension anyway.
/// SHA-256 (hex) of the public key a CSR asks a certificate for, after its self-signature is
/// verified: the same value [`IssuedCert::key_sha256`] records.
pub fn csr_key_sha256(csr_pem: &str) -> Result<String> {
    csr_public_key(csr_pem).map(|(_, digest)| digest)
}

/// The CSR's public key, after its self-signature is verified, and the SHA-256 (hex) of its
/// SubjectPublicKeyInfo DER.
fn csr_public_key(csr_pem: &str) -> Result<(rcgen::SubjectPublicKeyInfo, String)> {
    use x509_parser::certification_request::X509CertificationRequest;
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| PkiError::BadCsr(format!("PEM: {e}")))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| PkiError::BadCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCsr("trailing bytes after the request".into()));
    }
    csr.verify_signature()
        .map_err(|e| PkiError::BadCsr(format!("signature does not verify: {e}")))?;
    let raw = csr.certification_request_info.subject_pki.raw;
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, raw).as_ref());
    let key = rcgen::SubjectPublicKeyInfo::from_der(raw)
        .map_err(|e| PkiError::BadCsr(format!("unsupported public key: {e}")))?;
    Ok((key, digest))
}

/// Creates `path` (which must not exist) with `mode`, writes `data` and fsyncs it.
fn write_new_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::AlreadyExists(path.to_path_buf()),
            _ => PkiError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;
    use x509_parser::extensions::ParsedExtension;

    #[test]
    fn the_key_digest_names_the_key_not_the_request() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let key = NodeKey::generate().unwrap();
        let want = hex::encode(ring::digest::digest(&ring::digest::SHA256, &key.spki_der()));
        // Two requests for the same key (as a retried join makes) name the same key.
        let a = csr_key_sha256(&key.csr_pem("a").unwrap()).unwrap();
        let b = csr_key_sha256(&key.csr_pem("b").unwrap()).unwrap();
        assert_eq!((a.as_str(), b.as_str()), (want.as_str(), want.as_str()));
        let issued = ca
            .sign_node_csr(
                &key.csr_pem("a").unwrap(),
                &NodeId::random(),
                7,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(issued.key_sha256, want);
        let other = NodeKey::generate().unwrap();
        assert_ne!(csr_key_sha256(&other.csr_pem("a").unwrap()).unwrap(), want);
        assert!(csr_key_sha256("junk").is_err());
    }

    #[test]
    fn ca_save_load_round_trip_and_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("tandem test CA").unwrap();
        ca.save(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let loaded = CertificateAuthority::load(dir.path()).unwrap();
        assert_eq!(loaded.pin(), ca.pin());
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(CaPin::from_cert_der(&ca.cert_der()).unwrap(), ca.pin());

        // The loaded CA signs certificates that chain to the original.
        let key = NodeKey::generate().unwrap();
        let id = NodeId::random();
        let issued = loaded
            .sign_node_csr(
                &key.csr_pem("x").unwrap(),
                &id,
                7,
                Duration::from_secs(3600),
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let ca_der = ca.cert_der();
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();

        // No overwrite.
        assert!(matches!(
            ca.save(dir.path()),
            Err(PkiError::AlreadyExists(_))
        ));
    }

    #[test]
    fn load_rejects_key_of_another_ca() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        CertificateAuthority::generate("a")
            .unwrap()
            .save(a.path())
            .unwrap();
        CertificateAuthority::generate("b")
            .unwrap()
            .save(b.path())
            .unwrap();
        fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).unwrap();
        assert!(matches!(
            CertificateAuthority::load(a.path()),
            Err(PkiError::KeyMismatch)
        ));
    }

    #[test]
    fn ca_cert_is_a_constrained_ca() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let der = ca.cert_der();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let years = (cert.validity().not_after.timestamp()
            - cert.validity().not_before.timestamp())
            / 86400
            / 365;
        assert_eq!(years, 10);
    }

    #[test]
    fn node_cert_facts_match_what_was_issued() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let key = NodeKey::generate().unwrap();
        let id = NodeId::random();
        let issued = ca
            .sign_node_csr(
                &key.csr_pem("x").unwrap(),
                &id,
                77,
                Duration::from_secs(600),
            )
            .unwrap();
        let facts = node_cert_facts(&issued.cert_pem).unwrap();
        assert_eq!(facts.node_id, id);
        assert_eq!(facts.serial, 77);
        assert_eq!(facts.not_after_unix as u64, issued.not_after_unix);
        assert_eq!(
            facts.not_after_unix - facts.not_before_unix,
            600 + BACKDATE_S
        );
        assert_eq!(facts.spki_der, key.spki_der());
        assert_ne!(facts.spki_der, NodeKey::generate().unwrap().spki_der());
        assert!(node_cert_facts("junk").is_err());
    }

    #[test]
    fn csr_fields_are_ignored() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // A greedy CSR: other names, CA=true, server auth, key cert sign.
        let mut params = CertificateParams::new(vec![
            "tandem-coordinator".to_string(),
            "n-0000000000000001.node.tandem".to_string(),
            "10.0.0.1".to_string(),
        ])
        .unwrap();
        params.distinguished_name = dn("n-0000000000000001");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::Any,
        ];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();

        let id = NodeId::parse("n-00000000000000ff").unwrap();
        let issued = ca
            .sign_node_csr(&csr, &id, 42, Duration::from_secs(86400))
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();

        // The key is the CSR's.
        assert_eq!(
            cert.tbs_certificate.subject_pki.raw,
            key.subject_public_key_info().as_slice()
        );
        // Everything else is ours.
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, vec![id.as_str().to_string()]);
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(sans.len(), 1);
        assert!(matches!(
            sans[0],
            GeneralName::DNSName("n-00000000000000ff.node.tandem")
        ));
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        for ext in cert.extensions() {
            assert!(!matches!(
                ext.parsed_extension(),
                ParsedExtension::NameConstraints(_)
            ));
        }
        assert_eq!(node_id_from_cert(&der).unwrap(), id);
        assert_eq!(cert_serial(&der).unwrap(), 42);
        assert_eq!(issued.serial, 42);
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        assert_eq!(na as u64, issued.not_after_unix);
        assert!((na - nb - 86400 - 300).abs() <= 2, "validity {}", na - nb);
    }

    #[test]
    fn serials_round_trip_including_high_bit() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_pem("name").unwrap();
        for serial in [1u64, 255, 256, u64::MAX >> 1, u64::MAX] {
            let issued = ca
                .sign_node_csr(&csr, &NodeId::random(), serial, Duration::from_secs(60))
                .unwrap();
            let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
            assert_eq!(cert_serial(&der).unwrap(), serial);
        }
        assert!(matches!(
            ca.sign_node_csr(&csr, &NodeId::random(), 0, Duration::from_secs(60)),
            Err(PkiError::BadSerial(_))
        ));
    }

    #[test]
    fn node_validity_is_capped_at_the_ca() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let csr = NodeKey::generate().unwrap().csr_pem("n").unwrap();
        let issued = ca
            .sign_node_csr(
                &csr,
                &NodeId::random(),
                1,
                Duration::from_secs(100 * 365 * 86400),
            )
            .unwrap();
        assert_eq!(issued.not_after_unix as i64, ca.not_after.unix_timestamp());
        assert!(matches!(
            ca.sign_node_csr(&csr, &NodeId::random(), 1, Duration::MAX),
            Err(PkiError::ValidityOutOfRange)
        ));
    }

    #[test]
    fn bad_csrs_are_refused() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let id = NodeId::random();
        let day = Duration::from_secs(86400);
        assert!(matches!(
            ca.sign_node_csr("", &id, 1, day),
            Err(PkiError::BadCsr(_))
        ));
        assert!(matches!(
            ca.sign_node_csr("junk", &id, 1, day),
            Err(PkiError::BadCsr(_))
        ));
        // A certificate is not a CSR.
        assert!(matches!(
            ca.sign_node_csr(ca.cert_pem(), &id, 1, day),
            Err(PkiError::BadCsr(_))
        ));
        // A CSR whose signature was tampered with.
        let csr = NodeKey::generate().unwrap().csr_pem("tamper").unwrap();
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .unwrap();
        let mut bytes = der.as_ref().to_vec();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x55;
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes)
        );
        assert!(matches!(
            ca.sign_node_csr(&pem, &id, 1, day),
            Err(PkiError::BadCsr(_))
        ));
    }

    #[test]
    fn server_cert_has_server_names_and_usage() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let (cert_pem, key_pem) = ca.issue_server_cert(9, &[ip]).unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(sans
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName(SERVER_NAME))));
        assert!(sans
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName("localhost"))));
        assert!(sans
            .iter()
            .any(|n| matches!(n, GeneralName::IPAddress(b) if *b == [192, 0, 2, 7])));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert_eq!(cert_serial(&der).unwrap(), 9);
        assert!(matches!(node_id_from_cert(&der), Err(PkiError::NoNodeId)));
    }

    #[test]
    fn pins() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let pin = ca.pin();
        assert_eq!(pin.to_hex().len(), 64);
        assert_eq!(CaPin::from_hex(&pin.to_hex()).unwrap(), pin);
        assert_eq!(CaPin::from_hex(&pin.to_hex().to_uppercase()).unwrap(), pin);
        assert_eq!(pin.to_string(), pin.to_hex());
        assert!(CaPin::from_hex("").is_err());
        assert!(CaPin::from_hex(&"g".repeat(64)).is_err());
        assert!(CaPin::from_hex(&"é".repeat(32)).is_err());
        let json = serde_json::to_string(&pin).unwrap();
        assert_eq!(serde_json::from_str::<CaPin>(&json).unwrap(), pin);
        assert_ne!(CertificateAuthority::generate("c").unwrap().pin(), pin);
    }

    #[test]
    fn node_key_pem_round_trip() {
        let key = NodeKey::generate().unwrap();
        let again = NodeKey::from_pem(&key.key_pem()).unwrap();
        assert_eq!(again.key_pem(), key.key_pem());
        assert!(NodeKey::from_pem("nope").is_err());
        assert!(node_id_from_cert(b"junk").is_err());
        assert!(cert_serial(b"").is_err());
    }
}
