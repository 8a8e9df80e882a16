//! The hardware model string: what must match for two nodes to pair up in an HA cluster.
//!
//! `"<cpu brand> / <logical cores> cores / <memory class> GiB / <gpus>"`, for example
//! `Intel(R) Xeon(R) Processor / 16 cores / 128 GiB / 8x NVIDIA H100 80GB HBM3`, or `no GPU`.
//!
//! Only stable facts go in: not the serials, not the hostname, and not the exact memory size,
//! because `MemTotal` of two identical machines differs by what the firmware and kernel reserve.
//! Memory is rounded *up* to a class (see [`memory_class_gib`]) since `MemTotal` is always a
//! little below the installed size.

use super::HardwareReport;
use std::collections::BTreeMap;

const GIB: u64 = 1 << 30;

/// The memory size class in GiB: `total_bytes` rounded up to a step of 1/16 of its power-of-two
/// magnitude (at least 1 GiB). 125.9 GiB → 128, 94 → 96, 62.7 → 64, 503.7 → 512, 15.5 → 16,
/// 3.7 → 4. Two machines with the same DIMMs land in the same class; 96 and 128 GiB do not.
pub fn memory_class_gib(total_bytes: u64) -> u64 {
    if total_bytes == 0 {
        return 0;
    }
    // Magnitude of the size, in bytes: the largest power of two not above it.
    let magnitude = 1u64 << (63 - total_bytes.leading_zeros());
    let step = (magnitude / 16).max(GIB);
    // In GiB, so that it cannot overflow: `div_ceil(step) * step` overflowed u64 for sizes
    // within 2^59 bytes of u64::MAX, which an agent may report (a panic in debug builds, class
    // 0 in release; found by `fuzz/`'s `agent_msg` target). `step` is a power of two of at
    // least 1 GiB, so `step / GIB` is exact and the result is unchanged for every other size.
    total_bytes.div_ceil(step) * (step / GIB)
}

/// Collapses runs of whitespace and trims: brand strings are often padded.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl HardwareReport {
    /// The hardware model string (see the module docs). Identical machines give identical
    /// strings; a different CPU, core count, memory class, GPU model or GPU count does not.
    pub fn model(&self) -> String {
        let cpu = match squash(&self.cpu.brand) {
            b if b.is_empty() => "unknown CPU".to_string(),
            b => b,
        };
        let mut gpus: BTreeMap<String, usize> = BTreeMap::new();
        for g in &self.gpus {
            let name = g.name.as_deref().map(squash).unwrap_or_default();
            let name = if name.is_empty() {
                "unknown GPU".to_string()
            } else {
                name
            };
            *gpus.entry(name).or_default() += 1;
        }
        let gpus = if gpus.is_empty() {
            "no GPU".to_string()
        } else {
            gpus.iter()
                .map(|(name, n)| format!("{n}x {name}"))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        format!(
            "{cpu} / {} cores / {} GiB / {gpus}",
            self.cpu.logical_cores,
            memory_class_gib(self.memory.total_bytes)
        )
    }
}
