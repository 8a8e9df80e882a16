//! The systemd units verify cleanly against the built binaries, and their exposure stays under
//! a threshold. Skipped, with the reason printed, where `systemd-analyze` is absent.

use std::path::Path;
use std::process::Command;
use tandem_tests::bin;

fn analyze_available() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Copies a unit into `dir` with its binaries pointing at the built ones.
fn unit_copy(dir: &Path, name: &str) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd")
        .join(name);
    let text = std::fs::read_to_string(&src).unwrap();
    let text = text
        .replace(
            "/usr/local/bin/tandem-coordinator",
            bin("tandem-coordinator").to_str().unwrap(),
        )
        .replace(
            "/usr/local/bin/tandem-agent",
            bin("tandem-agent").to_str().unwrap(),
        );
    let dst = dir.join(name);
    std::fs::write(&dst, text).unwrap();
    dst
}

#[test]
fn units_verify_without_warnings_and_stay_hardened() {
    if !analyze_available() {
        println!("SKIPPED: systemd-analyze is not installed here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (name, max_exposure) in [
        ("tandem-coordinator.service", 2.0),
        // 4.0 before job cgroups; Delegate=yes must not make it worse (issue 13).
        ("tandem-agent.service", 4.0),
    ] {
        let unit = unit_copy(tmp.path(), name);
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // verify exits 0 on warnings: any output at all is a finding.
        assert!(
            out.status.success() && text.trim().is_empty(),
            "{name}: {text}"
        );
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(&unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no exposure score in {text}"));
        println!("{name}: exposure {score}");
        assert!(
            score <= max_exposure,
            "{name}: exposure {score} over {max_exposure}"
        );
    }
}
