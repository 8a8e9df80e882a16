//! Hardware probing: the host through sysinfo and `/proc`/`/sys`, GPUs through NVML.
//!
//! [`Prober`] is what the rest of the agent calls: `Prober::new(options)` once, then
//! `prober.report().await` whenever a report is due. It never blocks the async runtime and never
//! fails: a part that cannot be read is reported as such (`nvml.status`, a GPU's `unavailable`
//! map, an `Option` left `None`) and the rest of the report still comes.
//!
//! # Threads
//! - Host sampling (sysinfo, `statvfs`, `/sys` reads) runs on tokio's blocking pool. It keeps one
//!   long-lived `sysinfo::System` and refreshes only what is reported. CPU usage needs two
//!   refreshes at least [`sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`] (200 ms) apart; the first
//!   report waits out the rest of that interval, later ones do not.
//! - NVML is initialised once per process, on a dedicated thread (`tandem-nvml`) that owns it
//!   ([`nvml`]). A report asks that thread for a reading over a channel and waits at most
//!   [`ProbeOptions::nvml_timeout`]; a driver that hangs gives `nvml.status = "unresponsive"`
//!   with the last GPU readings unchanged, never a stalled report. Without `libnvidia-ml.so.1`
//!   the report says `nvml.available = false` with the load error, and no GPUs.
//! - GPU health events (critical XID, single/double-bit ECC) are watched by a second thread
//!   (`tandem-nvml-events`, see [`health`]); its verdicts are merged into each GPU's `health`.
//!
//! # GPU fixtures (testing aid)
//! With [`ProbeOptions::gpu_fixture`], NVML is never touched: the GPUs come from a JSON file
//! holding a list of GPUs in the report's own format (`tests/fixtures/gpus-*.json`). The report
//! then says `nvml.available = true`, `nvml.status = "fixture"` and names the file in
//! `nvml.reason`. The file is read again whenever its modification time or size changes, so a
//! test can flip a GPU to unhealthy while the agent runs: each GPU's `health` is taken from the
//! file and merged with what its readings imply (a pending row remap makes it unhealthy).
//! A file that cannot be parsed keeps the last good GPUs and says why in `nvml.reason`.

pub mod disks;
pub mod fixture;
pub mod health;
mod host;
pub mod nvml;

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_common::hardware::{HardwareReport, NvmlInfo, NvmlStatus};
use tokio::sync::oneshot;

pub use health::{classify_xid, XidClass};
pub use nvml::NvmlReading;

/// Errors of the probes. None of them fails a report: each becomes a reason in it. They are
/// returned directly only where a caller asked for one thing (e.g. [`fixture::load`]).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The GPU fixture file could not be read.
    #[error("cannot read GPU fixture {path}: {source}", path = path.display())]
    FixtureRead {
        /// The fixture path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The GPU fixture file is not a JSON list of GPUs in the report's format.
    #[error("GPU fixture {path} is not a JSON list of GPUs: {source}", path = path.display())]
    FixtureParse {
        /// The fixture path.
        path: PathBuf,
        /// The parse error, with line and column.
        source: serde_json::Error,
    },
    /// sysinfo could not set up its view of the system (an unsupported platform).
    #[error("host probe unavailable: {0}")]
    Host(String),
    /// The mount table could not be read, so no disk is listed.
    #[error("cannot read the mount table {path}: {source}")]
    Mounts {
        /// The mount table path.
        path: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// NVML could not be loaded (no `libnvidia-ml.so.1`) or initialised (no driver, no GPU).
    #[error("NVML unavailable: {0}")]
    NvmlInit(String),
    /// NVML did not answer within the deadline: the driver may hang.
    #[error("NVML did not answer within {0:?}")]
    NvmlTimeout(Duration),
    /// The NVML thread could not be started or has stopped.
    #[error("NVML thread stopped: {0}")]
    NvmlThread(String),
}

/// How to probe.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Read GPUs from this JSON file instead of NVML (a testing aid, see the module docs).
    pub gpu_fixture: Option<PathBuf>,
    /// How long a report waits for NVML before calling it unresponsive.
    pub nvml_timeout: Duration,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            gpu_fixture: None,
            nvml_timeout: Duration::from_secs(2),
        }
    }
}

/// Asks the GPU source for a reading; the answer comes on the returned channel, or never.
type RequestFn = fn() -> oneshot::Receiver<NvmlReading>;

enum GpuSource {
    Nvml {
        request: RequestFn,
        /// A request that has not been answered yet (after a timeout): waited on again next
        /// time rather than queueing another behind a hung driver.
        pending: Option<oneshot::Receiver<NvmlReading>>,
        /// The last answer, reused (marked unresponsive) when NVML does not answer.
        last: Option<NvmlReading>,
    },
    Fixture(Arc<Mutex<fixture::Fixture>>),
}

/// Builds hardware reports. Keep one per process: it holds the sampling state (the previous
/// CPU counters) and the NVML request in flight.
pub struct Prober {
    host: Arc<Mutex<host::HostProbe>>,
    gpu: GpuSource,
    nvml_timeout: Duration,
}

impl Prober {
    /// A prober; cheap (reads the CPU list once to start the CPU usage interval). NVML is
    /// started on the first report.
    pub fn new(options: ProbeOptions) -> Prober {
        let gpu = match options.gpu_fixture {
            Some(path) => GpuSource::Fixture(Arc::new(Mutex::new(fixture::Fixture::new(path)))),
            None => GpuSource::Nvml {
                request: nvml::request,
                pending: None,
                last: None,
            },
        };
        Prober {
            host: Arc::new(Mutex::new(host::HostProbe::new())),
            gpu,
            nvml_timeout: options.nvml_timeout,
        }
    }

    /// Samples the machine. Takes at most about `max(200 ms, nvml_timeout)` the first time and
    /// the NVML time afterwards; never fails.
    pub async fn report(&mut self) -> HardwareReport {
        let host = self.host.clone();
        let host = tokio::task::spawn_blocking(move || lock(&host).sample());
        let (host, gpu) = tokio::join!(host, self.gpu_reading());
        let mut report = match host {
            Ok(report) => report,
            Err(e) => {
                // The sampling panicked: report what we can rather than nothing.
                tracing::error!("host probe failed: {e}");
                HardwareReport::default()
            }
        };
        report.nvml = gpu.nvml;
        report.gpus = gpu.gpus;
        report
    }

    async fn gpu_reading(&mut self) -> NvmlReading {
        match &mut self.gpu {
            GpuSource::Fixture(f) => {
                let f = f.clone();
                match tokio::task::spawn_blocking(move || lock(&f).reading()).await {
                    Ok(r) => r,
                    Err(e) => NvmlReading::unavailable(NvmlStatus::Fixture, e.to_string()),
                }
            }
            GpuSource::Nvml {
                request,
                pending,
                last,
            } => {
                let mut rx = pending.take().unwrap_or_else(*request);
                match tokio::time::timeout(self.nvml_timeout, &mut rx).await {
                    Ok(Ok(reading)) => {
                        *last = Some(reading.clone());
                        reading
                    }
                    Ok(Err(_closed)) => NvmlReading::unavailable(
                        NvmlStatus::Unavailable,
                        ProbeError::NvmlThread("no answer".into()).to_string(),
                    ),
                    Err(_elapsed) => {
                        *pending = Some(rx);
                        let reason = ProbeError::NvmlTimeout(self.nvml_timeout).to_string();
                        let mut r = last.clone().unwrap_or_default();
                        r.nvml = NvmlInfo {
                            status: NvmlStatus::Unresponsive,
                            reason: Some(reason),
                            ..r.nvml
                        };
                        r
                    }
                }
            }
        }
    }
}

/// Locks, ignoring poisoning: a panicked sample leaves no broken invariant behind.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How often the agent samples its hardware while running.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Samples the hardware every `interval` on its own task and publishes the latest report.
///
/// Probing can be slow (a hung driver is only given up on after the NVML deadline), so it never
/// runs inside the link's loop: heartbeats must not wait for it. The first report is taken
/// before this returns, so registration always carries a full one.
pub async fn spawn_sampler(
    mut prober: Prober,
    interval: Duration,
) -> tokio::sync::watch::Receiver<HardwareReport> {
    let (tx, rx) = tokio::sync::watch::channel(prober.report().await);
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(interval);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        iv.tick().await;
        loop {
            iv.tick().await;
            let report = prober.report().await;
            if tx.send(report).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tandem_common::hardware::GpuInfo;

    fn never() -> oneshot::Receiver<NvmlReading> {
        let (tx, rx) = oneshot::channel();
        std::mem::forget(tx); // a hung driver: the answer never comes
        rx
    }

    fn two_gpus() -> oneshot::Receiver<NvmlReading> {
        let (tx, rx) = oneshot::channel();
        let gpus = (0..2).map(|i| GpuInfo {
            index: i,
            uuid: format!("GPU-{i}"),
            ..Default::default()
        });
        let nvml = NvmlInfo {
            available: true,
            status: NvmlStatus::Ok,
            ..Default::default()
        };
        let _ = tx.send(NvmlReading {
            nvml,
            gpus: gpus.collect(),
        });
        rx
    }

    fn prober(request: RequestFn, timeout_ms: u64) -> Prober {
        let mut p = Prober::new(ProbeOptions {
            gpu_fixture: None,
            nvml_timeout: Duration::from_millis(timeout_ms),
        });
        p.gpu = GpuSource::Nvml {
            request,
            pending: None,
            last: None,
        };
        p
    }

    #[tokio::test]
    async fn hung_nvml_is_unresponsive_and_the_host_part_still_comes() {
        let mut p = prober(never, 300);
        let start = Instant::now();
        let r = p.report().await;
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(r.nvml.status, NvmlStatus::Unresponsive);
        assert!(!r.nvml.available);
        assert!(r.nvml.reason.unwrap().contains("did not answer"));
        assert!(r.gpus.is_empty());
        assert!(r.cpu.logical_cores > 0 && r.memory.total_bytes > 0);
    }

    #[tokio::test]
    async fn unresponsive_keeps_the_last_gpus() {
        let mut p = prober(two_gpus, 300);
        let first = p.report().await;
        assert_eq!(first.nvml.status, NvmlStatus::Ok);
        assert_eq!(first.gpus.len(), 2);
        if let GpuSource::Nvml { request, .. } = &mut p.gpu {
            *request = never;
        }
        let second = p.report().await;
        assert_eq!(second.nvml.status, NvmlStatus::Unresponsive);
        assert!(second.nvml.available);
        assert_eq!(second.gpus, first.gpus);
        // No GPU is reported as changed, only the NVML section.
        let delta = second.diff(&first).unwrap();
        assert!(delta.gpus.is_none() && delta.nvml.is_some());
        // The request still in flight is waited on again, not queued anew.
        assert!(matches!(
            &p.gpu,
            GpuSource::Nvml {
                pending: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn prober_is_send() {
        fn send<T: Send>(_: &T) {}
        let mut p = Prober::new(ProbeOptions::default());
        send(&p);
        send(&p.report());
    }
}
