//! `tandem-agent inventory` on this machine agrees with `nproc`, `/proc/meminfo` and `uname -r`,
//! finishes within 2 s, reports NVML as unavailable without a driver, and lists fixture GPUs.

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tandem-agent");

fn fixture(name: &str) -> String {
    format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn inventory(args: &[&str]) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    let out = Command::new(BIN)
        .arg("inventory")
        .args(args)
        .output()
        .expect("run tandem-agent");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    (
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
        took,
    )
}

fn command(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn mem_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn agrees_with_the_system() {
    let (r, took) = inventory(&["-o", "json"]);
    assert!(took < Duration::from_secs(2), "inventory took {took:?}");

    let nproc: u64 = command("nproc", &[]).parse().unwrap();
    assert_eq!(r["cpu"]["logical_cores"].as_u64(), Some(nproc));

    let total = r["memory"]["total_bytes"].as_u64().unwrap() as f64;
    let expected = mem_total_bytes() as f64;
    assert!(
        (total - expected).abs() / expected < 0.01,
        "{total} vs {expected}"
    );

    assert_eq!(
        r["os"]["kernel"].as_str(),
        Some(command("uname", &["-r"]).as_str())
    );

    for section in [
        "hostname", "os", "cpu", "memory", "disks", "network", "dmi", "gpus", "nvml",
    ] {
        assert!(r.get(section).is_some(), "{section} missing");
    }
    for disk in r["disks"].as_array().unwrap() {
        let fs = disk["file_system"].as_str().unwrap();
        assert!(
            !["tmpfs", "overlay", "proc", "sysfs", "nfs", "nfs4", "cifs"].contains(&fs),
            "{fs}"
        );
    }
}

#[test]
fn no_driver_means_nvml_unavailable_with_a_reason() {
    let has_nvml = [
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib64/libnvidia-ml.so.1",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    let (r, _) = inventory(&["-o", "json"]);
    if has_nvml {
        eprintln!("libnvidia-ml.so.1 present: skipping the no-driver check");
        return;
    }
    assert_eq!(r["nvml"]["available"], false);
    assert_eq!(r["nvml"]["status"], "unavailable");
    assert!(
        r["nvml"]["reason"]
            .as_str()
            .unwrap()
            .contains("libnvidia-ml.so.1"),
        "{}",
        r["nvml"]
    );
    assert_eq!(r["gpus"].as_array().unwrap().len(), 0);
}

#[test]
fn gpu_fixture_lists_its_gpus() {
    let path = fixture("gpus-2x-l4.json");
    let (r, _) = inventory(&["-o", "json", "--gpu-fixture", &path]);
    let gpus = r["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0]["name"], "NVIDIA L4");
    assert_eq!(gpus[1]["health"]["state"], "healthy");
    assert_eq!(r["nvml"]["available"], true);
    assert_eq!(r["nvml"]["status"], "fixture");

    let (r, _) = inventory(&["-o", "json", "--gpu-fixture", &fixture("gpus-8x-h100.json")]);
    assert_eq!(r["gpus"].as_array().unwrap().len(), 8);
}

#[test]
fn table_output_and_a_bad_fixture() {
    let out = Command::new(BIN).arg("inventory").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Model") && text.contains("GPUs"), "{text}");

    let out = Command::new(BIN)
        .args(["inventory", "--gpu-fixture", "/nonexistent/gpus.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read GPU fixture"));
}
