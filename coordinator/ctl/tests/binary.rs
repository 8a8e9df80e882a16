//! The `tandemctl` binary itself, without a coordinator. (Having an integration test here also
//! makes `cargo test --workspace` build the binary, which the end-to-end tests in `tests/`
//! start.)

use std::process::Command;

#[test]
fn tandemctl_without_a_token_says_how_to_give_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandemctl"))
        .args(["nodes", "list"])
        .env_remove("TANDEM_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TANDEM_TOKEN"));
}
