//! The hardware report an agent sends at registration, and the deltas that follow it.
//!
//! The report travels inside bincode-2 frames (serde mode) and is shown as JSON by the admin API,
//! so it keeps to serde features that both formats support: no `flatten`, no
//! `skip_serializing_if`, no untagged or internally tagged enums, no `serde_json::Value`. Enums are
//! plain unit enums (`rename_all = "snake_case"`), and every value that a probe may fail to read
//! is an `Option`.
//!
//! The JSON shape has one key per section: `hostname`, `os`, `cpu`, `memory`, `disks`, `network`,
//! `dmi`, `gpus`, `nvml`. Each GPU lists the NVML calls that failed under `unavailable`
//! (field name → reason): on an H100, for example, retired pages and fan speed are not supported,
//! and that is normal.
//!
//! - [`HardwareReport::model`] derives the hardware model string used to keep an HA cluster
//!   homogeneous (see `model.rs`).
//! - [`HardwareReport::diff`] / [`HardwareReport::apply`] give a compact delta (see `delta.rs`
//!   for the noise rule).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod delta;
mod model;
#[cfg(test)]
mod tests;

pub use delta::HardwareDelta;
pub use model::memory_class_gib;

/// Version of the report's layout. Bump it with the protocol version whenever a field is
/// added, removed or changes meaning: bincode is not self-describing, so both sides must agree.
pub const HARDWARE_REPORT_VERSION: u16 = 1;

/// Everything an agent knows about its machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HardwareReport {
    /// The host name.
    pub hostname: String,
    /// Operating system and kernel.
    pub os: OsInfo,
    /// Processor.
    pub cpu: CpuInfo,
    /// Memory and swap.
    pub memory: MemoryInfo,
    /// Local block-device file systems (no pseudo, overlay or network file systems).
    pub disks: Vec<DiskInfo>,
    /// Network interfaces (loopback and container plumbing left out).
    pub network: Vec<NetworkInterface>,
    /// DMI (SMBIOS) product identity, where readable.
    pub dmi: DmiInfo,
    /// GPUs, ordered by NVML index. Identify a GPU by its `uuid`: indexes change across boots.
    pub gpus: Vec<GpuInfo>,
    /// The state of the NVML library that the GPU section comes from.
    pub nvml: NvmlInfo,
}

/// Operating system and kernel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OsInfo {
    /// Distribution or OS name, e.g. `Ubuntu`.
    pub name: Option<String>,
    /// OS version, e.g. `24.04`.
    pub version: Option<String>,
    /// Kernel release, as `uname -r` prints it.
    pub kernel: Option<String>,
    /// CPU architecture, e.g. `x86_64`.
    pub arch: String,
    /// Seconds since boot.
    pub uptime_s: u64,
    /// Boot time, seconds since the Unix epoch.
    pub boot_time_unix: u64,
    /// Load average.
    pub load_avg: LoadAvg,
}

/// Load average over 1, 5 and 15 minutes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadAvg {
    /// One minute.
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub one: f64,
    /// Five minutes.
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub five: f64,
    /// Fifteen minutes.
    #[serde(deserialize_with = "nan_as_null::f64")]
    pub fifteen: f64,
}

/// Reads the `null` that JSON writes for a non-finite float back as NaN.
///
/// JSON has no NaN or infinity, so serde_json writes them as `null`, and a plain `f64` then
/// refuses to read that `null` back. The coordinator stores reports as JSON, and a report can
/// carry NaN (a probe's first sample, or anything an agent sends), so without this one such
/// reading made the node record unreadable and the whole store fail to load at the next start
/// (found by `fuzz/`'s `agent_msg` target). Only human-readable formats are affected: the bincode
/// wire format is unchanged. An infinity comes back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer};

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        if d.is_human_readable() {
            Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
        } else {
            f64::deserialize(d)
        }
    }

    pub fn f32<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        if d.is_human_readable() {
            Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
        } else {
            f32::deserialize(d)
        }
    }
}

/// Processor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Brand string, e.g. `Intel(R) Xeon(R) Processor`.
    pub brand: String,
    /// Vendor id, e.g. `GenuineIntel`.
    pub vendor: String,
    /// Logical CPUs (hardware threads) online.
    pub logical_cores: u32,
    /// Physical cores, where known.
    pub physical_cores: Option<u32>,
    /// Current frequency of the first CPU, MHz.
    pub frequency_mhz: u64,
    /// Usage over all CPUs since the previous sample, percent (0–100).
    #[serde(deserialize_with = "nan_as_null::f32")]
    pub usage_percent: f32,
}

/// Memory and swap, bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// Total RAM (`MemTotal`).
    pub total_bytes: u64,
    /// RAM available for new work (`MemAvailable`).
    pub available_bytes: u64,
    /// RAM in use.
    pub used_bytes: u64,
    /// Total swap.
    pub swap_total_bytes: u64,
    /// Swap in use.
    pub swap_used_bytes: u64,
}

/// The kind of storage behind a file system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskKind {
    /// Solid state (not rotational).
    Ssd,
    /// Rotational disk.
    Hdd,
    /// Not known (e.g. a device-mapper or virtual disk the kernel does not describe).
    #[default]
    Unknown,
}

/// One mounted local file system.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Device, e.g. `/dev/nvme0n1p2`.
    pub name: String,
    /// Mount point.
    pub mount_point: String,
    /// File system type, e.g. `ext4`.
    pub file_system: String,
    /// SSD, HDD or unknown.
    pub kind: DiskKind,
    /// Size, bytes.
    pub total_bytes: u64,
    /// Space available to unprivileged users, bytes.
    pub available_bytes: u64,
    /// Mounted read-only.
    pub read_only: bool,
}

/// One network interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Addresses with prefix length, e.g. `10.0.0.5/24`.
    pub addresses: Vec<String>,
    /// MTU, bytes.
    pub mtu: u64,
    /// Negotiated link speed, Mbit/s, where the driver reports one.
    pub link_speed_mbps: Option<u64>,
    /// Bytes received since boot.
    pub rx_bytes: u64,
    /// Bytes sent since boot.
    pub tx_bytes: u64,
}

/// DMI (SMBIOS) identity from `/sys/class/dmi/id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmiInfo {
    /// `product_name`, e.g. `PowerEdge XE9680`.
    pub product_name: Option<String>,
    /// `product_serial`; usually readable by root only.
    pub serial: Option<String>,
}

/// Where the GPU section comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NvmlStatus {
    /// NVML answered this sample.
    Ok,
    /// NVML could not be loaded or initialised (no driver, no GPU): `gpus` is empty.
    #[default]
    Unavailable,
    /// NVML did not answer within the deadline (a hung driver): `gpus` holds the last readings.
    Unresponsive,
    /// `gpus` comes from a `--gpu-fixture` file, a testing aid; NVML was not asked.
    Fixture,
}

/// The state of NVML on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmlInfo {
    /// Whether GPU readings are available (from NVML or a fixture).
    pub available: bool,
    /// See [`NvmlStatus`].
    pub status: NvmlStatus,
    /// Why NVML is unavailable or unresponsive, or which fixture is used.
    pub reason: Option<String>,
    /// Driver version, e.g. `580.159.04`.
    pub driver_version: Option<String>,
    /// NVML version, e.g. `13.580.159.04`.
    pub nvml_version: Option<String>,
    /// CUDA version the driver supports, e.g. `13.0` (as `nvidia-smi` prints it).
    pub cuda_driver_version: Option<String>,
}

/// One GPU. Every reading is an `Option`: `None` with an entry in `unavailable` when the call
/// failed, `None` without one when it does not apply (e.g. remapped rows before Ampere).
///
/// `#[serde(default)]` lets hand-written fixtures leave fields out (JSON only: bincode always
/// carries every field).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuInfo {
    /// NVML index (changes across boots; use `uuid` as the key).
    pub index: u32,
    /// `GPU-…` UUID: the stable key, also what `CUDA_VISIBLE_DEVICES` takes.
    pub uuid: String,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: Option<String>,
    /// Board serial number.
    pub serial: Option<String>,
    /// PCI bus id, e.g. `00000000:00:06.0`.
    pub pci_bus_id: Option<String>,
    /// Architecture, e.g. `Hopper`.
    pub architecture: Option<String>,
    /// CUDA compute capability, e.g. `9.0`.
    pub compute_capability: Option<String>,
    /// VBIOS version.
    pub vbios_version: Option<String>,
    /// Board part number.
    pub board_part_number: Option<String>,
    /// Framebuffer memory.
    pub memory: GpuMemory,
    /// GPU (SM) utilisation over the last sample period, percent.
    pub utilization_gpu_percent: Option<u32>,
    /// Memory controller utilisation, percent.
    pub utilization_memory_percent: Option<u32>,
    /// Core temperature, °C.
    pub temperature_c: Option<u32>,
    /// Fan speed, percent (fails on passively cooled boards).
    pub fan_speed_percent: Option<u32>,
    /// Power draw, mW.
    pub power_draw_mw: Option<u32>,
    /// Power management limit, mW.
    pub power_limit_mw: Option<u32>,
    /// Performance state, `P0` (max) to `P15`.
    pub performance_state: Option<String>,
    /// Clocks.
    pub clocks: GpuClocks,
    /// ECC mode and error counts.
    pub ecc: GpuEcc,
    /// Retired pages (before Ampere; unsupported on Ampere and later).
    pub retired_pages: Option<RetiredPages>,
    /// Remapped rows (Ampere and later).
    pub remapped_rows: Option<RemappedRows>,
    /// MIG mode.
    pub mig: Option<MigState>,
    /// Persistence mode.
    pub persistence_mode: Option<bool>,
    /// PCIe link.
    pub pcie: GpuPcie,
    /// Running compute processes.
    pub compute_processes: Option<Vec<GpuProcess>>,
    /// Active clock throttle reasons, e.g. `gpu_idle`; empty when none.
    pub throttle_reasons: Option<Vec<String>>,
    /// Field → reason, for every reading that failed.
    pub unavailable: BTreeMap<String, String>,
    /// Health, from NVML events and the readings above.
    pub health: GpuHealth,
}

/// Framebuffer memory, bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuMemory {
    /// Installed.
    pub total_bytes: Option<u64>,
    /// Allocated.
    pub used_bytes: Option<u64>,
    /// Unallocated.
    pub free_bytes: Option<u64>,
    /// Reserved by the driver.
    pub reserved_bytes: Option<u64>,
}

/// Clocks, MHz.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuClocks {
    /// Current graphics clock.
    pub graphics_mhz: Option<u32>,
    /// Current SM clock.
    pub sm_mhz: Option<u32>,
    /// Current memory clock.
    pub memory_mhz: Option<u32>,
    /// Maximum graphics clock.
    pub max_graphics_mhz: Option<u32>,
    /// Maximum SM clock.
    pub max_sm_mhz: Option<u32>,
    /// Maximum memory clock.
    pub max_memory_mhz: Option<u32>,
}

/// ECC mode and error counts (errors since driver load = volatile; lifetime = aggregate).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuEcc {
    /// ECC currently enabled.
    pub enabled: Option<bool>,
    /// ECC enabled after the next reboot.
    pub pending_enabled: Option<bool>,
    /// Corrected (single-bit) errors since the driver loaded.
    pub volatile_corrected: Option<u64>,
    /// Uncorrected (double-bit) errors since the driver loaded.
    pub volatile_uncorrected: Option<u64>,
    /// Corrected errors over the board's life.
    pub aggregate_corrected: Option<u64>,
    /// Uncorrected errors over the board's life.
    pub aggregate_uncorrected: Option<u64>,
}

/// Retired pages (pre-Ampere page retirement).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredPages {
    /// Pages retired for multiple single-bit errors.
    pub single_bit: Option<u32>,
    /// Pages retired for a double-bit error.
    pub double_bit: Option<u32>,
    /// Retirements waiting for a reboot or GPU reset.
    pub pending: Option<bool>,
}

/// Remapped rows (Ampere and later row remapping).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemappedRows {
    /// Rows remapped for correctable errors.
    pub correctable: u32,
    /// Rows remapped for uncorrectable errors.
    pub uncorrectable: u32,
    /// A remap waits for a GPU reset.
    pub pending: bool,
    /// A remap failed: the GPU needs service.
    pub failure: bool,
}

/// MIG mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigState {
    /// Enabled now.
    pub current: bool,
    /// Enabled after the next GPU reset.
    pub pending: bool,
}

/// PCIe link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuPcie {
    /// Current link generation.
    pub link_gen: Option<u32>,
    /// Current link width (lanes).
    pub link_width: Option<u32>,
    /// Maximum link generation of the device and system.
    pub max_link_gen: Option<u32>,
    /// Maximum link width.
    pub max_link_width: Option<u32>,
}

/// A compute process on a GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// Process id (in the host's pid namespace).
    pub pid: u32,
    /// GPU memory it holds, bytes, where NVML knows it.
    pub used_memory_bytes: Option<u64>,
}

/// A GPU's health, worst first when ordered descending.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Nothing wrong known.
    #[default]
    Healthy,
    /// Something happened that does not take the GPU out of service (e.g. an application XID).
    Warning,
    /// Do not place work here: the GPU needs a reset, a reboot or service.
    Unhealthy,
}

impl HealthState {
    /// The name used in the API, events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Warning => "warning",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

/// A GPU's health with the reason for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuHealth {
    /// State.
    pub state: HealthState,
    /// Why, when not healthy.
    pub reason: Option<String>,
}

impl GpuHealth {
    /// Healthy, no reason.
    pub fn healthy() -> Self {
        GpuHealth::default()
    }

    /// A state with its reason.
    pub fn new(state: HealthState, reason: impl Into<String>) -> Self {
        GpuHealth {
            state,
            reason: Some(reason.into()),
        }
    }

    /// Keeps the worse of `self` and `other` (the first one on a tie).
    pub fn merge(&mut self, other: GpuHealth) {
        if other.state > self.state {
            *self = other;
        }
    }
}

impl GpuInfo {
    /// The health implied by this GPU's own readings: a pending or failed row remap, or a pending
    /// page retirement, makes it unhealthy. (`GpuLost`/`ResetRequired` errors and XID events are
    /// judged by the agent, which sees the typed errors.)
    pub fn readings_health(&self) -> GpuHealth {
        let mut h = GpuHealth::healthy();
        if let Some(r) = &self.remapped_rows {
            if r.failure {
                h.merge(GpuHealth::new(
                    HealthState::Unhealthy,
                    "row remapping failed",
                ));
            } else if r.pending {
                h.merge(GpuHealth::new(
                    HealthState::Unhealthy,
                    "row remap pending: GPU reset required",
                ));
            }
        }
        if let Some(RetiredPages {
            pending: Some(true),
            ..
        }) = &self.retired_pages
        {
            h.merge(GpuHealth::new(
                HealthState::Unhealthy,
                "page retirement pending: GPU reset required",
            ));
        }
        h
    }
}
