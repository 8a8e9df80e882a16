//! The host part of the report: OS, CPU, memory, disks, network, DMI.
//!
//! Blocking; runs on tokio's blocking pool. One long-lived `sysinfo::System` refreshed only for
//! CPU (usage and frequency) and memory; one `sysinfo::Networks`. Disks do not go through
//! sysinfo (see [`super::disks`]).

use super::{disks, ProbeError};
use std::path::Path;
use std::thread;
use std::time::Instant;
use sysinfo::{
    CpuRefreshKind, MemoryRefreshKind, Networks, RefreshKind, System, MINIMUM_CPU_UPDATE_INTERVAL,
};
use tandem_common::hardware::{
    CpuInfo, DmiInfo, HardwareReport, LoadAvg, MemoryInfo, NetworkInterface, OsInfo,
};

/// Interface name prefixes left out of the report: container and overlay-network plumbing that
/// comes and goes with every pod (`lo` is left out too).
const SKIPPED_INTERFACES: &[&str] = &["veth", "cali", "cni", "flannel", "docker", "virbr", "lxc"];

/// Where DMI identity lives.
const DMI_DIR: &str = "/sys/class/dmi/id";

fn cpu_kind() -> CpuRefreshKind {
    CpuRefreshKind::nothing().with_usage().with_frequency()
}

pub(crate) struct HostProbe {
    /// `None` when sysinfo could not start; retried on every sample.
    system: Option<System>,
    networks: Option<Networks>,
    /// When the CPU counters were last refreshed.
    last_cpu: Option<Instant>,
}

impl HostProbe {
    pub(crate) fn new() -> HostProbe {
        let mut probe = HostProbe {
            system: None,
            networks: None,
            last_cpu: None,
        };
        probe.start();
        probe
    }

    /// Creates the sysinfo views if they do not exist yet (the first CPU refresh happens here).
    fn start(&mut self) {
        if self.system.is_none() {
            let kind = RefreshKind::nothing()
                .with_cpu(cpu_kind())
                .with_memory(MemoryRefreshKind::everything());
            match System::new_with_specifics(kind) {
                Ok(s) => {
                    self.system = Some(s);
                    self.last_cpu = Some(Instant::now());
                }
                Err(e) => tracing::warn!("{}", ProbeError::Host(e.to_string())),
            }
        }
        if self.networks.is_none() {
            match Networks::new_with_refreshed_list() {
                Ok(n) => self.networks = Some(n),
                Err(e) => tracing::warn!("{}", ProbeError::Host(e.to_string())),
            }
        }
    }

    /// A report with every host section filled (the GPU sections left default).
    pub(crate) fn sample(&mut self) -> HardwareReport {
        self.start();
        let mut report = HardwareReport {
            hostname: System::host_name().unwrap_or_default(),
            os: os_info(),
            disks: disks::local_disks().unwrap_or_else(|e| {
                tracing::warn!("{e}");
                Vec::new()
            }),
            dmi: dmi_info(Path::new(DMI_DIR)),
            ..Default::default()
        };
        if let Some(system) = &mut self.system {
            // CPU usage is the change in counters between two refreshes at least 200 ms apart.
            if let Some(last) = self.last_cpu {
                if let Some(rest) = MINIMUM_CPU_UPDATE_INTERVAL.checked_sub(last.elapsed()) {
                    thread::sleep(rest);
                }
            }
            system.refresh_cpu_specifics(cpu_kind());
            self.last_cpu = Some(Instant::now());
            system.refresh_memory_specifics(MemoryRefreshKind::everything());
            report.cpu = cpu_info(system);
            report.memory = MemoryInfo {
                total_bytes: system.total_memory(),
                available_bytes: system.available_memory(),
                used_bytes: system.used_memory(),
                swap_total_bytes: system.total_swap(),
                swap_used_bytes: system.used_swap(),
            };
        }
        if let Some(networks) = &mut self.networks {
            networks.refresh(true);
            report.network = interfaces(networks);
        }
        report
    }
}

fn os_info() -> OsInfo {
    let load = System::load_average().unwrap_or(sysinfo::LoadAvg {
        one: 0.0,
        five: 0.0,
        fifteen: 0.0,
    });
    OsInfo {
        name: System::name().ok(),
        version: System::os_version().ok(),
        kernel: System::kernel_version().ok(),
        arch: System::cpu_arch(),
        uptime_s: System::uptime().unwrap_or(0),
        boot_time_unix: System::boot_time().unwrap_or(0),
        load_avg: LoadAvg {
            one: load.one,
            five: load.five,
            fifteen: load.fifteen,
        },
    }
}

fn cpu_info(system: &System) -> CpuInfo {
    let cpus = system.cpus();
    let first = cpus.first();
    CpuInfo {
        brand: first
            .map(|c| c.brand().trim().to_string())
            .unwrap_or_default(),
        vendor: first.map(|c| c.vendor_id().to_string()).unwrap_or_default(),
        logical_cores: cpus.len() as u32,
        physical_cores: System::physical_core_count().ok().map(|n| n as u32),
        frequency_mhz: first.map(|c| c.frequency()).unwrap_or(0),
        usage_percent: system.global_cpu_usage(),
    }
}

fn interfaces(networks: &Networks) -> Vec<NetworkInterface> {
    let mut list: Vec<NetworkInterface> = networks
        .iter()
        .filter_map(|(name, data)| {
            let name = name.to_string_lossy().into_owned();
            if name == "lo" || SKIPPED_INTERFACES.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            let mut addresses: Vec<String> = data
                .ip_networks()
                .iter()
                .map(|n| format!("{}/{}", n.addr, n.prefix))
                .collect();
            addresses.sort();
            Some(NetworkInterface {
                name,
                mac: data.mac_address().to_string(),
                addresses,
                mtu: data.mtu(),
                link_speed_mbps: data.transmit_link_speed().map(|bps| bps / 1_000_000),
                rx_bytes: data.total_received(),
                tx_bytes: data.total_transmitted(),
            })
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

/// Values firmware writes when the vendor left a DMI string empty.
const DMI_PLACEHOLDERS: &[&str] = &[
    "",
    "To Be Filled By O.E.M.",
    "To be filled by O.E.M.",
    "Default string",
    "Not Specified",
    "System Product Name",
    "System Serial Number",
    "0123456789",
];

/// Reads one DMI attribute; `None` when missing, unreadable (serials are root-only) or a
/// placeholder.
fn dmi_field(dir: &Path, name: &str) -> Option<String> {
    let value = std::fs::read_to_string(dir.join(name)).ok()?;
    let value = value.trim();
    (!DMI_PLACEHOLDERS.contains(&value)).then(|| value.to_string())
}

pub(crate) fn dmi_info(dir: &Path) -> DmiInfo {
    DmiInfo {
        product_name: dmi_field(dir, "product_name"),
        serial: dmi_field(dir, "product_serial"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmi_from_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dmi_info(dir.path()), DmiInfo::default());
        std::fs::write(dir.path().join("product_name"), "PowerEdge XE9680\n").unwrap();
        std::fs::write(
            dir.path().join("product_serial"),
            "To Be Filled By O.E.M.\n",
        )
        .unwrap();
        let dmi = dmi_info(dir.path());
        assert_eq!(dmi.product_name.as_deref(), Some("PowerEdge XE9680"));
        assert_eq!(dmi.serial, None);
    }

    #[test]
    fn a_sample_has_cpu_usage_and_memory() {
        let mut probe = HostProbe::new();
        let r = probe.sample();
        assert!(r.cpu.logical_cores > 0);
        assert!(r.cpu.usage_percent >= 0.0 && r.cpu.usage_percent <= 100.0);
        assert!(r.memory.total_bytes >= r.memory.available_bytes);
        assert!(!r.os.arch.is_empty());
        assert!(!r.network.iter().any(|n| n.name == "lo"));
        assert_eq!(probe.sample().cpu.logical_cores, r.cpu.logical_cores);
    }
}
