//! The simulated clock: nanoseconds since the start of the run, and a seeded generator.
//!
//! The coordinator reads it through its `Clock` trait; the world moves it forward from event to
//! event. `Instant`s are the base instant plus the simulated time, so only differences between
//! them mean anything, which is all the coordinator uses.

use rand::{rngs::StdRng, RngCore, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wall-clock time at the start of every run (2026-01-01), so that records repeat.
const EPOCH_MS: u64 = 1_767_225_600_000;

/// Simulated time, shared by the world and the coordinator.
#[derive(Debug)]
pub struct SimClock {
    base: Instant,
    now_ns: AtomicU64,
    rng: Mutex<StdRng>,
}

impl SimClock {
    /// A clock at 0, with the coordinator's chance drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            base: Instant::now(),
            now_ns: AtomicU64::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed_c00d)),
        }
    }

    /// Simulated nanoseconds.
    pub fn ns(&self) -> u64 {
        self.now_ns.load(Ordering::Relaxed)
    }

    /// Moves to `ns` (never back).
    pub fn advance_to(&self, ns: u64) {
        self.now_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// The instant of simulated time `ns`.
    pub fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }

    /// The simulated time of `i`.
    pub fn ns_of(&self, i: Instant) -> u64 {
        i.saturating_duration_since(self.base).as_nanos() as u64
    }
}

impl tandem_coordinator::clock::Clock for SimClock {
    fn now(&self) -> Instant {
        self.instant(self.ns())
    }
    fn unix_ms(&self) -> u64 {
        EPOCH_MS + self.ns() / 1_000_000
    }
    fn random_u64(&self) -> u64 {
        self.rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_u64()
    }
}

/// Milliseconds as simulated nanoseconds.
pub const fn ms(n: u64) -> u64 {
    n * 1_000_000
}
