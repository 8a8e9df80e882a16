//! `tandem-coordinator init` on a real data directory. (Having an integration test here also
//! makes `cargo test --workspace` build this package's binaries, which the end-to-end tests in
//! `tests/` start.)

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_secrets_owner_only_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let exe = env!("CARGO_BIN_EXE_tandem-coordinator");
    let out = Command::new(exe)
        .args([
            "init",
            "--data-dir",
            dir.to_str().unwrap(),
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert_eq!(mode(&dir.join("admin.token")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let cfg = std::fs::read_to_string(dir.join("coordinator.toml")).unwrap();
    assert!(cfg.contains("admin_addr = \"127.0.0.1:0\""), "{cfg}");
    assert!(cfg.contains("quic_addr = \"127.0.0.1:7443\""), "{cfg}");
    let ca_before = std::fs::read(dir.join("ca.key")).unwrap();

    let again = Command::new(exe)
        .args(["init", "--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(dir.join("ca.key")).unwrap(),
        ca_before,
        "the CA is untouched"
    );

    let bad = Command::new(exe)
        .args([
            "init",
            "--data-dir",
            tmp.path().join("x").to_str().unwrap(),
            "--quic-addr",
            "nowhere",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("quic_addr"));
    assert!(
        !tmp.path().join("x/admin.token").exists(),
        "nothing written for a bad address"
    );
}
