//! GPU health from NVML events, and the XID classification.
//!
//! The `tandem-nvml-events` thread registers, per GPU, the events it supports among critical
//! XID, single-bit ECC and double-bit ECC (`supported_event_types` masks them: registering an
//! unsupported type fails), then waits on the event set with a timeout in a loop. Verdicts go
//! into a [`HealthBook`] keyed by GPU UUID, which each reading merges into the GPU's `health`.
//!
//! Rules ([`event_health`]):
//! - critical XID: [`classify_xid`]; application XIDs → `warning`, XIDs that need a GPU reset or
//!   a reboot → `unhealthy`, any other XID → `warning` (seen, not known to be fatal);
//! - double-bit ECC error → `warning`; what it leads to (a pending row remap, or a pending page
//!   retirement before Ampere) shows in the readings and makes the GPU `unhealthy` there;
//! - single-bit ECC error → no change (corrected; counted in `ecc`).
//!
//! Verdicts are sticky for the life of the agent process: a GPU that needed a reset stays
//! unhealthy until the node (and so the agent) is restarted, which is what the reset implies.

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::event::EventSet;
use nvml_wrapper::Nvml;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_common::hardware::{GpuHealth, HealthState};

/// Application errors: the job's fault, the GPU is fine (as NVIDIA's k8s device plugin skips).
pub const APPLICATION_XIDS: &[u64] = &[13, 31, 43, 45, 68, 109];

/// XIDs that take a GPU out of service: 48 (double-bit ECC), 74 (NVLink), 79 (fallen off the
/// bus), and those whose catalogued action is a GPU reset or a reboot.
pub const FATAL_XIDS: &[u64] = &[
    46, 48, 62, 64, 74, 79, 95, 110, 119, 120, 136, 140, 143, 155, 156, 158,
];

/// How long one wait on the event set lasts before the loop goes round.
const WAIT_MS: u32 = 5_000;

/// What an XID means for the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XidClass {
    /// An application error ([`APPLICATION_XIDS`]): warning.
    Application,
    /// The GPU needs a reset, a reboot or service ([`FATAL_XIDS`]): unhealthy.
    Fatal,
    /// Not in either list: warning.
    Other,
}

/// Classifies an XID.
pub fn classify_xid(xid: u64) -> XidClass {
    if APPLICATION_XIDS.contains(&xid) {
        XidClass::Application
    } else if FATAL_XIDS.contains(&xid) {
        XidClass::Fatal
    } else {
        XidClass::Other
    }
}

/// A short name for the XIDs whose meaning is well known.
fn xid_name(xid: u64) -> Option<&'static str> {
    Some(match xid {
        13 => "graphics engine exception",
        31 => "GPU memory page fault",
        43 => "GPU stopped processing",
        45 => "preemptive cleanup after a previous error",
        48 => "double-bit ECC error",
        62 => "internal micro-controller halt",
        64 => "ECC page retirement or row remapper recording failure",
        68 => "video processor exception",
        74 => "NVLink error",
        79 => "GPU has fallen off the bus",
        95 => "uncontained ECC error",
        109 => "context switch timeout",
        119 => "GSP RPC timeout",
        120 => "GSP error",
        _ => return None,
    })
}

/// The health an XID implies, with a reason such as
/// `XID 79 (GPU has fallen off the bus): GPU reset or reboot required`.
pub fn xid_health(xid: u64) -> GpuHealth {
    let what = match xid_name(xid) {
        Some(name) => format!("XID {xid} ({name})"),
        None => format!("XID {xid}"),
    };
    match classify_xid(xid) {
        XidClass::Application => {
            GpuHealth::new(HealthState::Warning, format!("{what}: application error"))
        }
        XidClass::Fatal => GpuHealth::new(
            HealthState::Unhealthy,
            format!("{what}: GPU reset or reboot required"),
        ),
        XidClass::Other => GpuHealth::new(HealthState::Warning, format!("{what}: critical XID")),
    }
}

/// The health one event implies, `None` for "no change" (see the module docs).
pub fn event_health(kind: EventTypes, xid: Option<XidError>) -> Option<GpuHealth> {
    if kind.contains(EventTypes::CRITICAL_XID_ERROR) {
        return Some(match xid {
            Some(XidError::Value(x)) => xid_health(x),
            _ => GpuHealth::new(HealthState::Warning, "critical XID (number unknown)"),
        });
    }
    if kind.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
        return Some(GpuHealth::new(
            HealthState::Warning,
            "double-bit (uncorrectable) ECC error",
        ));
    }
    None
}

/// The events watched, before masking by what each device supports.
pub fn watched_events() -> EventTypes {
    EventTypes::CRITICAL_XID_ERROR
        | EventTypes::SINGLE_BIT_ECC_ERROR
        | EventTypes::DOUBLE_BIT_ECC_ERROR
}

#[derive(Default)]
struct Book {
    health: HashMap<String, GpuHealth>,
    uuids: HashMap<u32, String>,
    events_unavailable: HashMap<String, String>,
}

/// Shared between the event thread and the reading thread: verdicts by GPU UUID, the last UUID
/// seen at each index, and why events could not be watched for a GPU.
#[derive(Clone, Default)]
pub struct HealthBook(Arc<Mutex<Book>>);

impl HealthBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a verdict (the worse one stays).
    pub fn record(&self, uuid: &str, health: GpuHealth) {
        self.lock()
            .health
            .entry(uuid.to_string())
            .or_default()
            .merge(health);
    }

    /// The verdict for a GPU (healthy when none).
    pub fn health_of(&self, uuid: &str) -> GpuHealth {
        self.lock().health.get(uuid).cloned().unwrap_or_default()
    }

    /// Remembers which UUID an index had.
    pub fn remember(&self, index: u32, uuid: &str) {
        self.lock().uuids.insert(index, uuid.to_string());
    }

    /// The last UUID seen at an index.
    pub fn uuid_of(&self, index: u32) -> Option<String> {
        self.lock().uuids.get(&index).cloned()
    }

    fn set_events_unavailable(&self, uuid: &str, reason: String) {
        self.lock()
            .events_unavailable
            .insert(uuid.to_string(), reason);
    }

    /// Why health events are not watched for a GPU, if they are not.
    pub fn events_unavailable(&self, uuid: &str) -> Option<String> {
        self.lock().events_unavailable.get(uuid).cloned()
    }
}

/// Starts the event thread.
pub(crate) fn spawn_event_thread(nvml: &'static Nvml, book: HealthBook) {
    let thread_book = book.clone();
    let spawned = std::thread::Builder::new()
        .name("tandem-nvml-events".into())
        .spawn(move || watch(nvml, &thread_book));
    if let Err(e) = spawned {
        tracing::error!("cannot start the GPU event thread: {e}");
    }
}

/// (index, uuid, events to register).
type Target = (u32, String, EventTypes);

/// Registers every target on a new event set. A device whose registration fails is dropped from
/// `targets` (the failed call released the set) and `None` says "try again".
fn register<'n>(
    nvml: &'n Nvml,
    targets: &mut Vec<Target>,
    book: &HealthBook,
) -> Option<EventSet<'n>> {
    let mut set = match nvml.create_event_set() {
        Ok(set) => set,
        Err(e) => {
            for (_, uuid, _) in targets.drain(..) {
                book.set_events_unavailable(&uuid, format!("cannot create an event set: {e}"));
            }
            return None;
        }
    };
    for k in 0..targets.len() {
        let (index, uuid, mask) = targets[k].clone();
        let registered = match nvml.device_by_index(index) {
            Ok(device) => device.register_events(mask, set).map_err(|e| e.to_string()),
            Err(e) => {
                drop(set);
                Err(e.to_string())
            }
        };
        match registered {
            Ok(s) => set = s,
            Err(e) => {
                book.set_events_unavailable(&uuid, e);
                targets.remove(k);
                return None;
            }
        }
    }
    Some(set)
}

fn watch(nvml: &'static Nvml, book: &HealthBook) {
    let mut targets: Vec<Target> = Vec::new();
    for index in 0..nvml.device_count().unwrap_or(0) {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        let Ok(uuid) = device.uuid() else { continue };
        match device.supported_event_types() {
            Ok(supported) if !(supported & watched_events()).is_empty() => {
                targets.push((index, uuid, supported & watched_events()))
            }
            Ok(_) => book.set_events_unavailable(&uuid, "no health event type supported".into()),
            Err(e) => book.set_events_unavailable(&uuid, e.to_string()),
        }
    }
    let set = loop {
        if targets.is_empty() {
            return;
        }
        if let Some(set) = register(nvml, &mut targets, book) {
            break set;
        }
    };
    tracing::debug!("watching GPU health events on {} GPU(s)", targets.len());
    let mut logged = false;
    loop {
        match set.wait(WAIT_MS) {
            Ok(event) => {
                let Some(health) = event_health(event.event_type, event.event_data) else {
                    continue;
                };
                match event.device.uuid() {
                    Ok(uuid) => {
                        tracing::warn!("GPU {uuid}: {}", health.reason.as_deref().unwrap_or(""));
                        book.record(&uuid, health);
                    }
                    Err(e) => {
                        tracing::warn!("GPU event from an unreadable device ({e}): {health:?}")
                    }
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => {
                // GpuLost and the like: the readings will say which GPU; do not spin.
                if !logged {
                    tracing::warn!("waiting for GPU events failed: {e}");
                    logged = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xid_table() {
        for x in [13, 31, 43, 45, 68, 109] {
            assert_eq!(classify_xid(x), XidClass::Application, "XID {x}");
            assert_eq!(xid_health(x).state, HealthState::Warning, "XID {x}");
        }
        for x in [
            48, 74, 79, 46, 62, 64, 95, 110, 119, 120, 136, 140, 143, 155, 156, 158,
        ] {
            assert_eq!(classify_xid(x), XidClass::Fatal, "XID {x}");
            assert_eq!(xid_health(x).state, HealthState::Unhealthy, "XID {x}");
        }
        for x in [0, 1, 8, 32, 63, 92, 94, 999] {
            assert_eq!(classify_xid(x), XidClass::Other, "XID {x}");
            assert_eq!(xid_health(x).state, HealthState::Warning, "XID {x}");
        }
        assert_eq!(
            xid_health(79).reason.as_deref(),
            Some("XID 79 (GPU has fallen off the bus): GPU reset or reboot required")
        );
        assert_eq!(
            xid_health(136).reason.as_deref(),
            Some("XID 136: GPU reset or reboot required")
        );
        // The two lists do not overlap.
        assert!(APPLICATION_XIDS.iter().all(|x| !FATAL_XIDS.contains(x)));
    }

    #[test]
    fn events() {
        let xid = EventTypes::CRITICAL_XID_ERROR;
        assert_eq!(
            event_health(xid, Some(XidError::Value(79))).unwrap().state,
            HealthState::Unhealthy
        );
        assert_eq!(
            event_health(xid, Some(XidError::Value(13))).unwrap().state,
            HealthState::Warning
        );
        assert_eq!(
            event_health(xid, Some(XidError::Unknown)).unwrap().state,
            HealthState::Warning
        );
        assert_eq!(event_health(xid, None).unwrap().state, HealthState::Warning);
        let dbe = event_health(EventTypes::DOUBLE_BIT_ECC_ERROR, None).unwrap();
        assert_eq!(dbe.state, HealthState::Warning);
        assert_eq!(event_health(EventTypes::SINGLE_BIT_ECC_ERROR, None), None);
        assert_eq!(event_health(EventTypes::PSTATE_CHANGE, None), None);
        // The H100's supported set masked by what is watched.
        let h100 = EventTypes::SINGLE_BIT_ECC_ERROR
            | EventTypes::DOUBLE_BIT_ECC_ERROR
            | EventTypes::PSTATE_CHANGE
            | EventTypes::CRITICAL_XID_ERROR
            | EventTypes::CLOCK_CHANGE
            | EventTypes::POWER_SOURCE_CHANGE
            | EventTypes::MIG_CONFIG_CHANGE;
        assert_eq!(h100 & watched_events(), watched_events());
    }

    #[test]
    fn book_is_sticky_and_keeps_the_worst() {
        let book = HealthBook::default();
        assert_eq!(book.health_of("GPU-a"), GpuHealth::healthy());
        book.record("GPU-a", xid_health(13));
        book.record("GPU-a", xid_health(79));
        book.record("GPU-a", xid_health(31));
        assert_eq!(book.health_of("GPU-a").state, HealthState::Unhealthy);
        assert_eq!(book.health_of("GPU-b").state, HealthState::Healthy);
        book.remember(3, "GPU-a");
        assert_eq!(book.uuid_of(3).as_deref(), Some("GPU-a"));
    }
}
