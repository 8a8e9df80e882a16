//! The node's identity on disk: its key, its certificate, the CA it trusts, and its id.
//!
//! Written once at join, each file fsynced (the key created 0600), the directory fsynced last,
//! and `node.json` written last of all: an identity without `node.json` is incomplete and is
//! ignored, so a crash in the middle of writing leaves an agent that simply joins again.
//!
//! A renewed certificate comes with a new key, and the two must change together: a crash
//! between writing one and the other must never leave a key that does not fit its certificate.
//! So a renewal writes the pair under new names (`node-<serial>.key/.pem`) and then switches
//! `node.json`, whose atomic rename is the one moment the identity changes; the old pair is
//! deleted only after that. A crash before the switch leaves the old pair in use, which the
//! coordinator still accepts (it keeps the previous serial until the new one is seen).
//!
//! The key a join asks a certificate for is written (`join.key`, 0600) before the first try and
//! reused by every retry until the identity is saved: when the answer to a join is lost, the
//! coordinator knows the retry for the same node by its key and gives the node back instead of
//! refusing the name as taken (see the coordinator's `join` module).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tandem_common::ids::NodeId;

/// A joined node's identity.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The id the coordinator gave us.
    pub node_id: NodeId,
    /// Our name.
    pub name: String,
    /// Our private key (PEM).
    pub key_pem: String,
    /// Our certificate (PEM).
    pub cert_pem: String,
    /// The coordinator's CA (PEM).
    pub ca_pem: String,
}

#[derive(Serialize, Deserialize)]
struct NodeFile {
    node_id: NodeId,
    name: String,
    /// The key file in use (`node.key` until the first renewal).
    #[serde(default = "default_key_file")]
    key_file: String,
    /// The certificate file in use (`node.pem` until the first renewal).
    #[serde(default = "default_cert_file")]
    cert_file: String,
}

fn default_key_file() -> String {
    "node.key".into()
}

fn default_cert_file() -> String {
    "node.pem".into()
}

/// A file name from `node.json` must stay inside the identity directory.
fn plain_name(name: &str) -> std::io::Result<&str> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("identity/node.json names the file `{name}`, which is not a plain file name"),
        ));
    }
    Ok(name)
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("identity")
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The key to join with: the one kept from an earlier try, or a new one from `generate`,
/// written durably before it is used. [`Identity::save`] removes it.
pub fn join_key(
    state_dir: &Path,
    generate: impl FnOnce() -> std::io::Result<String>,
) -> std::io::Result<String> {
    let d = dir(state_dir);
    let path = d.join("join.key");
    match std::fs::read_to_string(&path) {
        Ok(pem) if !pem.trim().is_empty() => return Ok(pem),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)?;
    let pem = generate()?;
    write_file(&path, pem.as_bytes(), 0o600)?;
    std::fs::File::open(&d)?.sync_all()?;
    Ok(pem)
}

impl Identity {
    /// Loads the identity, or `None` if there is no complete one.
    pub fn load(state_dir: &Path) -> std::io::Result<Option<Identity>> {
        let d = dir(state_dir);
        let node = match std::fs::read(d.join("node.json")) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let node: NodeFile = serde_json::from_slice(&node).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("identity/node.json: {e}"),
            )
        })?;
        // A crash between writing node.json and removing the join key leaves the key behind;
        // it is the first node key, which a renewal later replaces: do not keep a copy.
        let _ = std::fs::remove_file(d.join("join.key"));
        Ok(Some(Identity {
            node_id: node.node_id,
            name: node.name,
            key_pem: std::fs::read_to_string(d.join(plain_name(&node.key_file)?))?,
            cert_pem: std::fs::read_to_string(d.join(plain_name(&node.cert_file)?))?,
            ca_pem: std::fs::read_to_string(d.join("ca.pem"))?,
        }))
    }

    /// Writes the identity durably.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let d = dir(state_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)?;
        write_file(&d.join("node.key"), self.key_pem.as_bytes(), 0o600)?;
        write_file(&d.join("node.pem"), self.cert_pem.as_bytes(), 0o644)?;
        write_file(&d.join("ca.pem"), self.ca_pem.as_bytes(), 0o644)?;
        let node = serde_json::to_vec_pretty(&NodeFile {
            node_id: self.node_id.clone(),
            name: self.name.clone(),
            key_file: default_key_file(),
            cert_file: default_cert_file(),
        })
        .map_err(std::io::Error::other)?;
        write_file(&d.join("node.json"), &node, 0o644)?;
        std::fs::File::open(&d)?.sync_all()?;
        // The join is done: its key now lives on as node.key.
        match std::fs::remove_file(d.join("join.key")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Switches to a renewed key and certificate, durably and all at once (see the module
    /// docs). `serial` names the new files.
    pub fn save_renewed(
        &mut self,
        state_dir: &Path,
        key_pem: String,
        cert_pem: String,
        serial: u64,
    ) -> std::io::Result<()> {
        let d = dir(state_dir);
        let old = std::fs::read(d.join("node.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<NodeFile>(&b).ok());
        let key_file = format!("node-{serial}.key");
        let cert_file = format!("node-{serial}.pem");
        write_file(&d.join(&key_file), key_pem.as_bytes(), 0o600)?;
        write_file(&d.join(&cert_file), cert_pem.as_bytes(), 0o644)?;
        std::fs::File::open(&d)?.sync_all()?;
        let node = serde_json::to_vec_pretty(&NodeFile {
            node_id: self.node_id.clone(),
            name: self.name.clone(),
            key_file: key_file.clone(),
            cert_file: cert_file.clone(),
        })
        .map_err(std::io::Error::other)?;
        write_file(&d.join("node.json"), &node, 0o644)?;
        std::fs::File::open(&d)?.sync_all()?;
        self.key_pem = key_pem;
        self.cert_pem = cert_pem;
        // The old pair is no longer named anywhere; losing this clean-up to a crash is harmless.
        if let Some(old) = old {
            for f in [old.key_file, old.cert_file] {
                if f != key_file && f != cert_file && plain_name(&f).is_ok() {
                    let _ = std::fs::remove_file(d.join(f));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_join_key_is_kept_until_the_identity_is_saved() {
        let tmp = tempfile::tempdir().unwrap();
        let first = join_key(tmp.path(), || Ok("KEY-1".into())).unwrap();
        assert_eq!(first, "KEY-1");
        let path = tmp.path().join("identity/join.key");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A retry (or a restarted agent) asks with the same key.
        let again = join_key(tmp.path(), || panic!("must reuse the kept key")).unwrap();
        assert_eq!(again, "KEY-1");
        let id = Identity {
            node_id: NodeId::random(),
            name: "n".into(),
            key_pem: first,
            cert_pem: "C".into(),
            ca_pem: "CA".into(),
        };
        id.save(tmp.path()).unwrap();
        assert!(!path.exists(), "join.key outlived the join");
        let next = join_key(tmp.path(), || Ok("KEY-2".into())).unwrap();
        assert_eq!(next, "KEY-2");
        // Left behind by a crash after the identity was written: loading removes it.
        assert!(Identity::load(tmp.path()).unwrap().is_some());
        assert!(!path.exists(), "a complete identity kept a join key");
    }

    #[test]
    fn round_trip_and_key_mode() {
        let d = tempfile::tempdir().unwrap();
        assert!(Identity::load(d.path()).unwrap().is_none());
        let id = Identity {
            node_id: NodeId::random(),
            name: "a".into(),
            key_pem: "K".into(),
            cert_pem: "C".into(),
            ca_pem: "A".into(),
        };
        id.save(d.path()).unwrap();
        let back = Identity::load(d.path()).unwrap().unwrap();
        assert_eq!(back.node_id, id.node_id);
        assert_eq!(back.key_pem, "K");
        let mode = std::fs::metadata(d.path().join("identity/node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn renewal_switches_key_and_certificate_together() {
        let d = tempfile::tempdir().unwrap();
        let mut id = Identity {
            node_id: NodeId::random(),
            name: "a".into(),
            key_pem: "K1".into(),
            cert_pem: "C1".into(),
            ca_pem: "A".into(),
        };
        id.save(d.path()).unwrap();
        id.save_renewed(d.path(), "K2".into(), "C2".into(), 7)
            .unwrap();
        let back = Identity::load(d.path()).unwrap().unwrap();
        assert_eq!(
            (back.key_pem.as_str(), back.cert_pem.as_str()),
            ("K2", "C2")
        );
        assert!(!d.path().join("identity/node.key").exists());
        let mode = std::fs::metadata(d.path().join("identity/node-7.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        id.save_renewed(d.path(), "K3".into(), "C3".into(), 9)
            .unwrap();
        let back = Identity::load(d.path()).unwrap().unwrap();
        assert_eq!(
            (back.key_pem.as_str(), back.cert_pem.as_str()),
            ("K3", "C3")
        );
        assert!(!d.path().join("identity/node-7.pem").exists());
        // A crash after writing the new pair but before the switch: the old pair is in use.
        std::fs::write(d.path().join("identity/node-11.key"), "K4").unwrap();
        let back = Identity::load(d.path()).unwrap().unwrap();
        assert_eq!(back.key_pem, "K3");
    }

    #[test]
    fn node_json_cannot_point_outside_the_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("identity")).unwrap();
        std::fs::write(
            d.path().join("identity/node.json"),
            format!(
                r#"{{"node_id":"{}","name":"a","key_file":"../../etc/shadow"}}"#,
                NodeId::random()
            ),
        )
        .unwrap();
        assert!(Identity::load(d.path()).is_err());
    }
}
