//! The NVML thread: loads and initialises NVML once per process and answers reading requests.
//!
//! NVML is loaded at run time (`libnvidia-ml.so.1`, through nvml-wrapper's libloading). The
//! first [`request`] starts the `tandem-nvml` thread, which calls `Nvml::init()` and then serves
//! requests one at a time for the life of the process (the `Nvml` is leaked on purpose: it is
//! shared with the event thread and lives as long as the process). Callers wait for the answer
//! with a deadline of their own, so a driver that hangs inside an NVML call stalls this thread
//! only; requests that queue up meanwhile are answered together by the next reading.
//!
//! Every per-GPU call that fails is recorded in the GPU's `unavailable` map (field → error) and
//! the reading goes on: on an H100, `retired_pages` and `fan_speed_percent` fail, and that is
//! normal. Errors `GpuLost` and `ResetRequired` also make the GPU unhealthy.

use super::health::{self, HealthBook};
use super::ProbeError;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PerformanceState, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_REMAPPED_COR, NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING,
    NVML_FI_DEV_REMAPPED_UNC,
};
use nvml_wrapper::{cuda_driver_version_major, cuda_driver_version_minor, Device, Nvml};
use std::sync::mpsc;
use std::sync::OnceLock;
use tandem_common::hardware::{
    GpuClocks, GpuEcc, GpuHealth, GpuInfo, GpuMemory, GpuPcie, GpuProcess, HealthState, MigState,
    NvmlInfo, NvmlStatus, RemappedRows, RetiredPages,
};
use tokio::sync::oneshot;

/// One answer of the GPU source: the NVML section and the GPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NvmlReading {
    /// The `nvml` section of the report.
    pub nvml: NvmlInfo,
    /// The `gpus` section.
    pub gpus: Vec<GpuInfo>,
}

impl NvmlReading {
    /// No GPUs, not available, with a reason.
    pub fn unavailable(status: NvmlStatus, reason: String) -> NvmlReading {
        NvmlReading {
            nvml: NvmlInfo {
                available: false,
                status,
                reason: Some(reason),
                ..Default::default()
            },
            gpus: Vec::new(),
        }
    }
}

struct Request {
    reply: oneshot::Sender<NvmlReading>,
}

static SERVICE: OnceLock<mpsc::Sender<Request>> = OnceLock::new();

/// Asks the NVML thread (started on first use) for a reading. The answer arrives on the
/// returned channel, or never if the driver hangs: wait on it with a deadline.
pub fn request() -> oneshot::Receiver<NvmlReading> {
    let service = SERVICE.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("tandem-nvml".into())
            .spawn(|| serve(rx));
        if let Err(e) = spawned {
            // The receiver is gone with the closure: every request answers "thread stopped".
            tracing::error!("{}", ProbeError::NvmlThread(e.to_string()));
        }
        tx
    });
    let (reply, answer) = oneshot::channel();
    if let Err(mpsc::SendError(req)) = service.send(Request { reply }) {
        let reason = ProbeError::NvmlThread("could not start".into()).to_string();
        let _ = req
            .reply
            .send(NvmlReading::unavailable(NvmlStatus::Unavailable, reason));
    }
    answer
}

/// The thread body: init once, then answer requests until the process ends.
fn serve(rx: mpsc::Receiver<Request>) {
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            let reason = ProbeError::NvmlInit(e.to_string()).to_string();
            tracing::info!("{reason}");
            for req in rx {
                let answer = NvmlReading::unavailable(NvmlStatus::Unavailable, reason.clone());
                let _ = req.reply.send(answer);
            }
            return;
        }
    };
    let nvml: &'static Nvml = Box::leak(Box::new(nvml));
    let book = HealthBook::default();
    health::spawn_event_thread(nvml, book.clone());
    while let Ok(first) = rx.recv() {
        // Requests that queued while the previous reading was slow share this one.
        let waiting: Vec<Request> = std::iter::once(first).chain(rx.try_iter()).collect();
        let reading = read_all(nvml, &book);
        for req in waiting {
            let _ = req.reply.send(reading.clone());
        }
    }
}

/// Reads the driver and every GPU.
pub(crate) fn read_all(nvml: &Nvml, book: &HealthBook) -> NvmlReading {
    let mut info = NvmlInfo {
        available: true,
        status: NvmlStatus::Ok,
        reason: None,
        driver_version: nvml.sys_driver_version().ok(),
        nvml_version: nvml.sys_nvml_version().ok(),
        cuda_driver_version: nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                cuda_driver_version_major(v),
                cuda_driver_version_minor(v)
            )
        }),
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            info.reason = Some(format!("cannot count GPUs: {e}"));
            return NvmlReading {
                nvml: info,
                gpus: Vec::new(),
            };
        }
    };
    let gpus = (0..count)
        .map(|index| match nvml.device_by_index(index) {
            Ok(device) => read_device(index, &device, book),
            Err(e) => {
                // The handle itself failed (e.g. the GPU fell off the bus): keep the last UUID
                // known for this index so the coordinator can still tell which GPU it is.
                let mut g = GpuInfo {
                    index,
                    uuid: book
                        .uuid_of(index)
                        .unwrap_or_else(|| format!("unknown-index-{index}")),
                    ..Default::default()
                };
                let mut r = Reader { gpu: &mut g };
                r.get::<()>("device", Err(e));
                g.health.merge(book.health_of(&g.uuid));
                g
            }
        })
        .collect();
    NvmlReading { nvml: info, gpus }
}

/// Records failed calls into a GPU's `unavailable` map and health.
struct Reader<'a> {
    gpu: &'a mut GpuInfo,
}

impl Reader<'_> {
    fn get<T>(&mut self, field: &str, result: Result<T, NvmlError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                match e {
                    NvmlError::GpuLost => self.gpu.health.merge(GpuHealth::new(
                        HealthState::Unhealthy,
                        format!("GPU lost: fell off the bus ({field})"),
                    )),
                    NvmlError::ResetRequired => self.gpu.health.merge(GpuHealth::new(
                        HealthState::Unhealthy,
                        format!("GPU reset required ({field})"),
                    )),
                    _ => {}
                }
                self.gpu
                    .unavailable
                    .insert(field.to_string(), e.to_string());
                None
            }
        }
    }
}

fn pstate_name(p: PerformanceState) -> String {
    match p {
        PerformanceState::Unknown => "unknown".into(),
        p => format!("P{}", p.as_c()),
    }
}

fn sample_u64(v: &SampleValue) -> u64 {
    match *v {
        SampleValue::U32(v) => u64::from(v),
        SampleValue::U64(v) => v,
        SampleValue::I64(v) => v.max(0) as u64,
        SampleValue::F64(v) => v.max(0.0) as u64,
    }
}

/// Remapped rows through NVML field values (Ampere and later).
fn remapped_rows(device: &Device) -> Result<RemappedRows, NvmlError> {
    let ids = [
        NVML_FI_DEV_REMAPPED_COR,
        NVML_FI_DEV_REMAPPED_UNC,
        NVML_FI_DEV_REMAPPED_PENDING,
        NVML_FI_DEV_REMAPPED_FAILURE,
    ]
    .map(FieldId);
    let values: Vec<u64> = device
        .field_values_for(&ids)?
        .into_iter()
        .map(|s: Result<FieldValueSample, NvmlError>| {
            s.and_then(|s| s.value).map(|v| sample_u64(&v))
        })
        .collect::<Result<_, _>>()?;
    Ok(RemappedRows {
        correctable: values[0] as u32,
        uncorrectable: values[1] as u32,
        pending: values[2] != 0,
        failure: values[3] != 0,
    })
}

/// Retired pages (before Ampere): `None` when every call failed.
fn retired_pages(device: &Device, r: &mut Reader) -> Option<RetiredPages> {
    let single = device.retired_pages(RetirementCause::MultipleSingleBitEccErrors);
    let double = device.retired_pages(RetirementCause::DoubleBitEccError);
    let pending = device.are_pages_pending_retired();
    if let (Err(_), Err(_), Err(_)) = (&single, &double, &pending) {
        r.get::<()>("retired_pages", single.map(drop));
        return None;
    }
    Some(RetiredPages {
        single_bit: r
            .get("retired_pages.single_bit", single)
            .map(|p| p.len() as u32),
        double_bit: r
            .get("retired_pages.double_bit", double)
            .map(|p| p.len() as u32),
        pending: r.get("retired_pages.pending", pending),
    })
}

/// Reads one GPU; never fails (failed calls go to `unavailable`).
pub(crate) fn read_device(index: u32, device: &Device, book: &HealthBook) -> GpuInfo {
    let mut g = GpuInfo {
        index,
        ..Default::default()
    };
    let mut r = Reader { gpu: &mut g };

    let uuid = r.get("uuid", device.uuid());
    let name = r.get("name", device.name());
    let serial = r.get("serial", device.serial());
    let pci_bus_id = r.get("pci_bus_id", device.pci_info()).map(|p| p.bus_id);
    let architecture = r
        .get("architecture", device.architecture())
        .map(|a| format!("{a:?}"));
    let compute_capability = r
        .get("compute_capability", device.cuda_compute_capability())
        .map(|c| format!("{}.{}", c.major, c.minor));
    let vbios_version = r.get("vbios_version", device.vbios_version());
    let board_part_number = r.get("board_part_number", device.board_part_number());
    let memory = r
        .get("memory", device.memory_info())
        .map_or_else(GpuMemory::default, |m| GpuMemory {
            total_bytes: Some(m.total),
            used_bytes: Some(m.used),
            free_bytes: Some(m.free),
            reserved_bytes: Some(m.reserved),
        });
    let utilization = r.get("utilization", device.utilization_rates());
    let temperature_c = r.get("temperature_c", device.temperature(TemperatureSensor::Gpu));
    let fan_speed_percent = r.get("fan_speed_percent", device.fan_speed(0));
    let power_draw_mw = r.get("power_draw_mw", device.power_usage());
    let power_limit_mw = r.get("power_limit_mw", device.enforced_power_limit());
    let performance_state = r
        .get("performance_state", device.performance_state())
        .map(pstate_name);
    let clocks = GpuClocks {
        graphics_mhz: r.get("clocks.graphics_mhz", device.clock_info(Clock::Graphics)),
        sm_mhz: r.get("clocks.sm_mhz", device.clock_info(Clock::SM)),
        memory_mhz: r.get("clocks.memory_mhz", device.clock_info(Clock::Memory)),
        max_graphics_mhz: r.get(
            "clocks.max_graphics_mhz",
            device.max_clock_info(Clock::Graphics),
        ),
        max_sm_mhz: r.get("clocks.max_sm_mhz", device.max_clock_info(Clock::SM)),
        max_memory_mhz: r.get(
            "clocks.max_memory_mhz",
            device.max_clock_info(Clock::Memory),
        ),
    };
    let mode = r.get("ecc.enabled", device.is_ecc_enabled());
    let count = |r: &mut Reader, field: &str, e: MemoryError, c: EccCounter| {
        r.get(field, device.total_ecc_errors(e, c))
    };
    let ecc = GpuEcc {
        enabled: mode.as_ref().map(|m| m.currently_enabled),
        pending_enabled: mode.as_ref().map(|m| m.pending_enabled),
        volatile_corrected: count(
            &mut r,
            "ecc.volatile_corrected",
            MemoryError::Corrected,
            EccCounter::Volatile,
        ),
        volatile_uncorrected: count(
            &mut r,
            "ecc.volatile_uncorrected",
            MemoryError::Uncorrected,
            EccCounter::Volatile,
        ),
        aggregate_corrected: count(
            &mut r,
            "ecc.aggregate_corrected",
            MemoryError::Corrected,
            EccCounter::Aggregate,
        ),
        aggregate_uncorrected: count(
            &mut r,
            "ecc.aggregate_uncorrected",
            MemoryError::Uncorrected,
            EccCounter::Aggregate,
        ),
    };
    let retired_pages = retired_pages(device, &mut r);
    let remapped_rows = r.get("remapped_rows", remapped_rows(device));
    let mig = r.get("mig", device.mig_mode()).map(|m| MigState {
        current: m.current == 1,
        pending: m.pending == 1,
    });
    let persistence_mode = r.get("persistence_mode", device.is_in_persistent_mode());
    let pcie = GpuPcie {
        link_gen: r.get("pcie.link_gen", device.current_pcie_link_gen()),
        link_width: r.get("pcie.link_width", device.current_pcie_link_width()),
        max_link_gen: r.get("pcie.max_link_gen", device.max_pcie_link_gen()),
        max_link_width: r.get("pcie.max_link_width", device.max_pcie_link_width()),
    };
    let compute_processes = r
        .get("compute_processes", device.running_compute_processes())
        .map(|procs| {
            procs
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    },
                })
                .collect()
        });
    let throttle_reasons = r
        .get("throttle_reasons", device.current_throttle_reasons())
        .map(|t| {
            t.iter_names()
                .map(|(n, _)| n.to_ascii_lowercase())
                .filter(|n| n != "none")
                .collect()
        });

    let uuid = match uuid {
        Some(u) => {
            book.remember(index, &u);
            u
        }
        None => book
            .uuid_of(index)
            .unwrap_or_else(|| format!("unknown-index-{index}")),
    };
    let unavailable = std::mem::take(&mut g.unavailable);
    let call_health = std::mem::take(&mut g.health);
    let mut g = GpuInfo {
        index,
        uuid,
        name,
        serial,
        pci_bus_id,
        architecture,
        compute_capability,
        vbios_version,
        board_part_number,
        memory,
        utilization_gpu_percent: utilization.as_ref().map(|u| u.gpu),
        utilization_memory_percent: utilization.as_ref().map(|u| u.memory),
        temperature_c,
        fan_speed_percent,
        power_draw_mw,
        power_limit_mw,
        performance_state,
        clocks,
        ecc,
        retired_pages,
        remapped_rows,
        mig,
        persistence_mode,
        pcie,
        compute_processes,
        throttle_reasons,
        unavailable,
        health: call_health,
    };
    let implied = g.readings_health();
    g.health.merge(implied);
    g.health.merge(book.health_of(&g.uuid));
    if let Some(reason) = book.events_unavailable(&g.uuid) {
        g.unavailable.insert("health_events".into(), reason);
    }
    g
}
