//! The node's identity on disk: its key, its certificate, the CA it trusts, and its id.
//!
//! Written once at join, each file fsynced (the key created 0600), the directory fsynced last,
//! and `node.json` written last of all: an identity without `node.json` is incomplete and is
//! ignored, so a crash in the middle of writing leaves an agent that simply joins again.

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
        Ok(Some(Identity {
            node_id: node.node_id,
            name: node.name,
            key_pem: std::fs::read_to_string(d.join("node.key"))?,
            cert_pem: std::fs::read_to_string(d.join("node.pem"))?,
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
        })
        .map_err(std::io::Error::other)?;
        write_file(&d.join("node.json"), &node, 0o644)?;
        std::fs::File::open(&d)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
}
