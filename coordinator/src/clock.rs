//! Where the decision layer reads time and chance from.
//!
//! The engine never calls `Instant::now`, the wall clock or the thread's random generator
//! itself: it asks its [`Clock`]. In the coordinator that
//! is [`SystemClock`]; in the deterministic simulation (`tests/sim`) it is a simulated clock
//! with a seeded generator, so that one seed replays the same run exactly. The maps the fleet
//! is kept in hash with [`FleetHash`] for the same reason: their iteration order (which node a
//! planner looks at first) must not change from one process to the next.

use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::time::Instant;

/// Time and chance, as the decision layer sees them.
pub trait Clock: Send + Sync + 'static {
    /// The monotonic clock (the detector's and the timers' time).
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the Unix epoch (what records and the planner keep).
    fn unix_ms(&self) -> u64;
    /// A random number, for ids and request numbers.
    fn random_u64(&self) -> u64;
    /// The boot clock, which no clock step moves and which a restarted coordinator on the
    /// same boot reads on from where it was (a planned restart's hold is kept in it). By
    /// default: no boot known, so the wall clock stands in.
    fn boot_time(&self) -> BootTime {
        BootTime {
            boot_id: String::new(),
            ms: self.unix_ms(),
        }
    }
}

/// A reading of the boot clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootTime {
    /// The kernel's id of this boot (`/proc/sys/kernel/random/boot_id`), empty if unknown.
    pub boot_id: String,
    /// `CLOCK_BOOTTIME` in ms (the wall clock when the boot is unknown).
    pub ms: u64,
}

/// The real clocks and the thread's random generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix_ms(&self) -> u64 {
        tandem_common::time::unix_ms()
    }
    fn random_u64(&self) -> u64 {
        rand::random()
    }
    fn boot_time(&self) -> BootTime {
        static BOOT_ID: OnceLock<String> = OnceLock::new();
        let boot_id = BOOT_ID.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        });
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own.
        if boot_id.is_empty() || unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0
        {
            return BootTime {
                boot_id: String::new(),
                ms: self.unix_ms(),
            };
        }
        BootTime {
            boot_id: boot_id.clone(),
            ms: ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000,
        }
    }
}

/// A short id such as `c-3f9a0c21b7e4`.
pub fn short_id(clock: &dyn Clock, prefix: &str) -> String {
    format!("{prefix}-{:012x}", clock.random_u64() & 0xffff_ffff_ffff)
}

static SEED: OnceLock<u64> = OnceLock::new();

/// Fixes the key of every [`FleetHash`] in this process, so that map iteration order repeats
/// from run to run (the simulation's replays). Must be called before any fleet map hashes a
/// key; returns whether the key is now `seed` (false: it was chosen before).
pub fn fix_hash_seed(seed: u64) -> bool {
    *SEED.get_or_init(|| seed) == seed
}

/// The hasher of the fleet's maps: SipHash keyed with a per-process secret (a flood of crafted
/// names cannot collide on purpose), or a fixed one in a simulation ([`fix_hash_seed`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct FleetHash;

impl BuildHasher for FleetHash {
    type Hasher = DefaultHasher;
    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write_u64(*SEED.get_or_init(rand::random));
        h
    }
}

/// A hash map with a repeatable order in a simulation (see [`FleetHash`]).
pub type Map<K, V> = std::collections::HashMap<K, V, FleetHash>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_maps_built_alike_iterate_alike() {
        let build = || {
            let mut m: Map<String, u32> = Map::default();
            for i in 0..200 {
                m.insert(format!("node-{i}"), i);
            }
            m.into_keys().collect::<Vec<_>>()
        };
        assert_eq!(build(), build());
    }
}
