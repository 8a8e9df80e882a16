//! TEMPORARY minimal probe, replaced by the hardware-inventory work before commit.
use std::path::PathBuf;
use std::time::Duration;
use tandem_common::hardware::HardwareReport;
use tandem_common::proto::LoadSummary;

#[derive(Default, Clone, Debug)]
pub struct ProbeOptions {
    pub gpu_fixture: Option<PathBuf>,
    pub nvml_timeout: Duration,
}

pub struct Prober;

impl Prober {
    pub fn new(_o: ProbeOptions) -> Self {
        Prober
    }
    pub async fn report(&mut self) -> HardwareReport {
        HardwareReport {
            hostname: sysinfo::System::host_name().unwrap_or_default(),
        }
    }
    pub fn load_summary(&self) -> LoadSummary {
        LoadSummary::default()
    }
}
