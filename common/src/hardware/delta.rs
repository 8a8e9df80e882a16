//! Compact hardware deltas: only the sections that changed, each replaced whole.
//!
//! The agent sends the full report at registration, then `HardwareDelta`s. A section is in the
//! delta when it differs from the last one sent by more than noise. The rule, per section:
//!
//! | section    | sent when                                                                   |
//! |------------|-----------------------------------------------------------------------------|
//! | `hostname`, `dmi`, `nvml` | any change                                                   |
//! | `os`       | name, version, kernel, arch or boot time change (uptime and load average never) |
//! | `cpu`      | brand, vendor or core counts change, or usage moves ≥ 10 points (frequency never) |
//! | `memory`   | a total changes, or available/used/swap used move ≥ 5 % of their total       |
//! | `disks`    | the set of file systems or any size/kind/flag changes, or available moves ≥ 1 % of the disk |
//! | `network`  | anything but the byte counters changes                                       |
//! | `gpus`     | GPUs appear/disappear/reorder, health, ECC, remaps, MIG, persistence, processes (pids) or any identity field changes; utilisation moves ≥ 10 points, temperature ≥ 5 °C, power ≥ 5 % of the limit, memory used ≥ 5 % of total, fan ≥ 10 points; current clocks, p-state and throttle reasons never |
//!
//! Within-noise drift accumulates: the sender must diff against what the receiver holds, so it
//! keeps `last_sent` and, after sending `delta`, does `last_sent.apply(delta.clone())`, not
//! `last_sent = current` (else slow drift would never cross a threshold).

use super::{
    CpuInfo, DiskInfo, DmiInfo, GpuInfo, HardwareReport, MemoryInfo, NetworkInterface, NvmlInfo,
    OsInfo,
};
use serde::{Deserialize, Serialize};

/// The sections of a report that changed; `None` means "unchanged".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HardwareDelta {
    /// New host name.
    pub hostname: Option<String>,
    /// New OS section.
    pub os: Option<OsInfo>,
    /// New CPU section.
    pub cpu: Option<CpuInfo>,
    /// New memory section.
    pub memory: Option<MemoryInfo>,
    /// New disk list.
    pub disks: Option<Vec<DiskInfo>>,
    /// New interface list.
    pub network: Option<Vec<NetworkInterface>>,
    /// New DMI section.
    pub dmi: Option<DmiInfo>,
    /// New GPU list.
    pub gpus: Option<Vec<GpuInfo>>,
    /// New NVML section.
    pub nvml: Option<NvmlInfo>,
}

impl HardwareDelta {
    /// Whether the delta carries no section.
    pub fn is_empty(&self) -> bool {
        *self == HardwareDelta::default()
    }
}

/// `|a - b| >= threshold`, for unsigned readings.
fn moved(a: u64, b: u64, threshold: u64) -> bool {
    a.abs_diff(b) >= threshold.max(1)
}

/// Like [`moved`] for optional readings: appearing or disappearing counts as a move.
fn moved_opt<T: Into<u64> + Copy>(a: Option<T>, b: Option<T>, threshold: u64) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => moved(a.into(), b.into(), threshold),
        (None, None) => false,
        _ => true,
    }
}

fn os_changed(a: &OsInfo, b: &OsInfo) -> bool {
    a.name != b.name
        || a.version != b.version
        || a.kernel != b.kernel
        || a.arch != b.arch
        || a.boot_time_unix != b.boot_time_unix
}

fn cpu_changed(a: &CpuInfo, b: &CpuInfo) -> bool {
    a.brand != b.brand
        || a.vendor != b.vendor
        || a.logical_cores != b.logical_cores
        || a.physical_cores != b.physical_cores
        || (a.usage_percent - b.usage_percent).abs() >= 10.0
        || a.usage_percent.is_nan() != b.usage_percent.is_nan()
}

fn memory_changed(a: &MemoryInfo, b: &MemoryInfo) -> bool {
    let ram = a.total_bytes / 20;
    let swap = a.swap_total_bytes / 20;
    a.total_bytes != b.total_bytes
        || a.swap_total_bytes != b.swap_total_bytes
        || moved(a.available_bytes, b.available_bytes, ram)
        || moved(a.used_bytes, b.used_bytes, ram)
        || moved(a.swap_used_bytes, b.swap_used_bytes, swap)
}

fn disks_changed(a: &[DiskInfo], b: &[DiskInfo]) -> bool {
    a.len() != b.len()
        || a.iter().zip(b).any(|(a, b)| {
            let quiet = |d: &DiskInfo| DiskInfo {
                available_bytes: 0,
                ..d.clone()
            };
            quiet(a) != quiet(b) || moved(a.available_bytes, b.available_bytes, a.total_bytes / 100)
        })
}

fn network_changed(a: &[NetworkInterface], b: &[NetworkInterface]) -> bool {
    let quiet = |n: &NetworkInterface| NetworkInterface {
        rx_bytes: 0,
        tx_bytes: 0,
        ..n.clone()
    };
    a.len() != b.len() || a.iter().zip(b).any(|(a, b)| quiet(a) != quiet(b))
}

/// A GPU with its fast-moving readings blanked, for comparing everything else exactly.
fn gpu_quiet(g: &GpuInfo) -> GpuInfo {
    let mut q = g.clone();
    q.utilization_gpu_percent = None;
    q.utilization_memory_percent = None;
    q.temperature_c = None;
    q.fan_speed_percent = None;
    q.power_draw_mw = None;
    q.performance_state = None;
    q.memory.used_bytes = None;
    q.memory.free_bytes = None;
    q.clocks.graphics_mhz = None;
    q.clocks.sm_mhz = None;
    q.clocks.memory_mhz = None;
    q.throttle_reasons = None;
    if let Some(procs) = &mut q.compute_processes {
        let mut pids: Vec<_> = procs.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        *procs = pids
            .into_iter()
            .map(|pid| super::GpuProcess {
                pid,
                used_memory_bytes: None,
            })
            .collect();
    }
    q
}

/// Whether a field was unavailable in one reading and not the other (errors are not noise).
fn presence_changed<T>(a: &Option<T>, b: &Option<T>) -> bool {
    a.is_some() != b.is_some()
}

fn gpu_changed(a: &GpuInfo, b: &GpuInfo) -> bool {
    let mem_total = a.memory.total_bytes.unwrap_or(0);
    let power = a
        .power_limit_mw
        .map(|l| u64::from(l) / 20)
        .unwrap_or(10_000);
    gpu_quiet(a) != gpu_quiet(b)
        || moved_opt(a.utilization_gpu_percent, b.utilization_gpu_percent, 10)
        || moved_opt(
            a.utilization_memory_percent,
            b.utilization_memory_percent,
            10,
        )
        || moved_opt(a.temperature_c, b.temperature_c, 5)
        || moved_opt(a.fan_speed_percent, b.fan_speed_percent, 10)
        || moved_opt(a.power_draw_mw, b.power_draw_mw, power)
        || moved_opt(a.memory.used_bytes, b.memory.used_bytes, mem_total / 20)
        || moved_opt(a.memory.free_bytes, b.memory.free_bytes, mem_total / 20)
        || presence_changed(&a.performance_state, &b.performance_state)
        || presence_changed(&a.throttle_reasons, &b.throttle_reasons)
        || presence_changed(&a.clocks.graphics_mhz, &b.clocks.graphics_mhz)
        || presence_changed(&a.clocks.sm_mhz, &b.clocks.sm_mhz)
        || presence_changed(&a.clocks.memory_mhz, &b.clocks.memory_mhz)
}

fn gpus_changed(a: &[GpuInfo], b: &[GpuInfo]) -> bool {
    a.len() != b.len() || a.iter().zip(b).any(|(a, b)| gpu_changed(a, b))
}

/// `Some(new.clone())` when `changed(old, new)`.
fn section<T: ?Sized + ToOwned>(
    old: &T,
    new: &T,
    changed: impl Fn(&T, &T) -> bool,
) -> Option<T::Owned> {
    changed(old, new).then(|| new.to_owned())
}

impl HardwareReport {
    /// The delta that brings `old` to `self` (see the module docs for what counts as a change),
    /// or `None` when nothing changed beyond noise.
    pub fn diff(&self, old: &HardwareReport) -> Option<HardwareDelta> {
        let delta = HardwareDelta {
            hostname: section(&old.hostname, &self.hostname, |a, b| a != b),
            os: section(&old.os, &self.os, os_changed),
            cpu: section(&old.cpu, &self.cpu, cpu_changed),
            memory: section(&old.memory, &self.memory, memory_changed),
            disks: section(&old.disks[..], &self.disks[..], disks_changed),
            network: section(&old.network[..], &self.network[..], network_changed),
            dmi: section(&old.dmi, &self.dmi, |a, b| a != b),
            gpus: section(&old.gpus[..], &self.gpus[..], gpus_changed),
            nvml: section(&old.nvml, &self.nvml, |a, b| a != b),
        };
        (!delta.is_empty()).then_some(delta)
    }

    /// Replaces the sections that `delta` carries.
    pub fn apply(&mut self, delta: HardwareDelta) {
        let HardwareDelta {
            hostname,
            os,
            cpu,
            memory,
            disks,
            network,
            dmi,
            gpus,
            nvml,
        } = delta;
        if let Some(v) = hostname {
            self.hostname = v;
        }
        if let Some(v) = os {
            self.os = v;
        }
        if let Some(v) = cpu {
            self.cpu = v;
        }
        if let Some(v) = memory {
            self.memory = v;
        }
        if let Some(v) = disks {
            self.disks = v;
        }
        if let Some(v) = network {
            self.network = v;
        }
        if let Some(v) = dmi {
            self.dmi = v;
        }
        if let Some(v) = gpus {
            self.gpus = v;
        }
        if let Some(v) = nvml {
            self.nvml = v;
        }
    }
}
