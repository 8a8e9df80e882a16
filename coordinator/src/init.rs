//! `tandem-coordinator init`: makes a data directory ready to serve.
//!
//! It writes the CA (`ca.pem`, `ca.key` mode 0600), the admin token (`admin.token`, 0600) and
//! `coordinator.toml`, and creates the store. It refuses to touch a directory that already
//! holds a coordinator: overwriting the CA would orphan every node's certificate.

use crate::config::RawConfig;
use crate::CoordinatorError;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use tandem_common::pki::CertificateAuthority;

/// Writes a file readable by its owner only, created with that mode (never widened later).
pub fn write_secret(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn io(what: &str, source: std::io::Error) -> CoordinatorError {
    CoordinatorError::Io {
        what: what.to_string(),
        source,
    }
}

/// Initialises `dir` with the given addresses.
pub fn init(
    dir: &Path,
    admin_addr: Option<&str>,
    quic_addr: Option<&str>,
) -> Result<(), CoordinatorError> {
    let cfg_path = dir.join("coordinator.toml");
    if cfg_path.exists() || dir.join("ca.key").exists() {
        return Err(CoordinatorError::AlreadyInitialised(
            dir.display().to_string(),
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("creating the data dir", e))?;
    let mut raw = RawConfig::default();
    if let Some(a) = admin_addr {
        raw.set_admin_addr(a.to_string());
    }
    if let Some(q) = quic_addr {
        raw.set_quic_addr(q.to_string());
    }
    raw.addresses()?;
    let token = hex::encode(rand::random::<[u8; 32]>());
    write_secret(&dir.join(&raw.admin_token_file), token.as_bytes())
        .map_err(|e| io("writing admin.token", e))?;
    raw.clone().validate(dir)?;
    let ca = CertificateAuthority::generate("Tandem coordinator CA")
        .map_err(|e| CoordinatorError::Pki(e.to_string()))?;
    ca.save(dir)
        .map_err(|e| CoordinatorError::Pki(e.to_string()))?;
    crate::store::SledStore::open(&dir.join("state"))?;
    let text = format!(
        "# Tandem coordinator configuration (see the README for every field).\n{}",
        toml::to_string_pretty(&raw).map_err(|e| CoordinatorError::Pki(e.to_string()))?
    );
    std::fs::write(&cfg_path, text).map_err(|e| io("writing coordinator.toml", e))?;
    Ok(())
}
