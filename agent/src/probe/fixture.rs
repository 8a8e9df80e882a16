//! `--gpu-fixture FILE`: GPUs read from a JSON file instead of NVML. A testing aid, so that
//! tests and demos on machines without GPUs exercise GPU placement and health.
//!
//! The file holds a JSON list of GPUs in the report's own format (`GpuInfo`, as
//! `tandem-agent inventory -o json` prints under `gpus`). The report built from it says
//! `nvml.available = true`, `nvml.status = "fixture"`, `nvml.reason = "GPU readings from fixture
//! FILE (testing aid)"`, and no driver versions. Each GPU's `health` is the file's, merged with
//! what its readings imply (`GpuInfo::readings_health`: a pending row remap is unhealthy).
//!
//! The file is read again when its modification time or size changes. A read or parse error
//! keeps the last good GPUs (a writer may be half-way through) and says why in `nvml.reason`;
//! with no good read yet, the report has no GPUs and `nvml.available = false`.

use super::nvml::NvmlReading;
use super::ProbeError;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use tandem_common::hardware::{GpuInfo, NvmlInfo, NvmlStatus};

/// Reads and checks a fixture file.
pub fn load(path: &Path) -> Result<Vec<GpuInfo>, ProbeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProbeError::FixtureRead {
        path: path.to_path_buf(),
        source,
    })?;
    let mut gpus: Vec<GpuInfo> =
        serde_json::from_str(&text).map_err(|source| ProbeError::FixtureParse {
            path: path.to_path_buf(),
            source,
        })?;
    for g in &mut gpus {
        let implied = g.readings_health();
        g.health.merge(implied);
    }
    Ok(gpus)
}

/// A fixture file and what was last read from it.
pub(crate) struct Fixture {
    path: PathBuf,
    /// (mtime, size) of the last good read.
    stamp: Option<(SystemTime, u64)>,
    gpus: Option<Vec<GpuInfo>>,
    error: Option<String>,
}

impl Fixture {
    pub(crate) fn new(path: PathBuf) -> Fixture {
        Fixture {
            path,
            stamp: None,
            gpus: None,
            error: None,
        }
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    /// The GPUs, re-reading the file if it changed.
    pub(crate) fn reading(&mut self) -> NvmlReading {
        let stamp = self.stamp();
        if stamp.is_none() || stamp != self.stamp {
            match load(&self.path) {
                Ok(gpus) => {
                    self.gpus = Some(gpus);
                    self.stamp = stamp;
                    self.error = None;
                }
                Err(e) => self.error = Some(e.to_string()),
            }
        }
        let used = format!(
            "GPU readings from fixture {} (testing aid)",
            self.path.display()
        );
        let reason = match &self.error {
            None => used,
            Some(e) if self.gpus.is_some() => format!("{used}; last read failed: {e}"),
            Some(e) => e.clone(),
        };
        NvmlReading {
            nvml: NvmlInfo {
                available: self.gpus.is_some(),
                status: NvmlStatus::Fixture,
                reason: Some(reason),
                ..Default::default()
            },
            gpus: self.gpus.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_common::hardware::{HealthState, RemappedRows};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    #[test]
    fn shipped_fixtures_load() {
        let h100 = load(&fixtures().join("gpus-8x-h100.json")).unwrap();
        assert_eq!(h100.len(), 8);
        assert!(h100
            .iter()
            .all(|g| g.name.as_deref() == Some("NVIDIA H100 80GB HBM3")));
        assert!(h100
            .iter()
            .all(|g| g.unavailable.contains_key("retired_pages")));
        let l4 = load(&fixtures().join("gpus-2x-l4.json")).unwrap();
        assert_eq!(l4.len(), 2);
        let mut uuids: Vec<_> = h100.iter().chain(&l4).map(|g| g.uuid.clone()).collect();
        uuids.sort();
        uuids.dedup();
        assert_eq!(uuids.len(), 10);
    }

    #[test]
    fn rereads_on_change_and_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        let mut gpus = load(&fixtures().join("gpus-2x-l4.json")).unwrap();
        std::fs::write(&path, serde_json::to_string(&gpus).unwrap()).unwrap();
        let mut f = Fixture::new(path.clone());
        let r = f.reading();
        assert!(r.nvml.available);
        assert_eq!(r.nvml.status, NvmlStatus::Fixture);
        assert!(r
            .gpus
            .iter()
            .all(|g| g.health.state == HealthState::Healthy));

        // A GPU turns unhealthy through a pending row remap (also changes the size).
        gpus[1].remapped_rows = Some(RemappedRows {
            pending: true,
            ..Default::default()
        });
        std::fs::write(&path, serde_json::to_string_pretty(&gpus).unwrap()).unwrap();
        let r = f.reading();
        assert_eq!(r.gpus[1].health.state, HealthState::Unhealthy);
        assert_eq!(r.gpus[0].health.state, HealthState::Healthy);

        // A half-written file keeps the last good GPUs.
        std::fs::write(&path, "[{\"index\": 0,").unwrap();
        let r = f.reading();
        assert_eq!(r.gpus.len(), 2);
        assert!(r.nvml.reason.unwrap().contains("last read failed"));

        // A missing file from the start: no GPUs, not available.
        let mut missing = Fixture::new(dir.path().join("none.json"));
        let r = missing.reading();
        assert!(!r.nvml.available && r.gpus.is_empty());
        assert!(r.nvml.reason.unwrap().contains("cannot read GPU fixture"));
    }
}
