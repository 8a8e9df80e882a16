//! systemd readiness, status and watchdog notifications (`sd_notify`), shared by both daemons.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op. The watchdog is pinged only
//! from each daemon's main loop, at half of `WatchdogSec`, so a loop that wedges stops the pings
//! and systemd restarts the unit.

use std::time::{Duration, Instant};

/// Tells systemd the daemon is ready.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Sets the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Pings the watchdog at half its interval; call it from the main loop as often as you like.
pub struct Watchdog {
    every: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`) from the environment.
    pub fn from_env() -> Self {
        Self {
            every: sd_notify::watchdog_enabled().map(|d| d / 2),
            last: None,
        }
    }

    /// How often it pings, if the watchdog is on.
    pub fn interval(&self) -> Option<Duration> {
        self.every
    }

    /// Pings if half the watchdog interval passed since the last ping.
    pub fn ping_if_due(&mut self, now: Instant) {
        let Some(every) = self.every else { return };
        if self.last.is_none_or(|l| now.duration_since(l) >= every) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            self.last = Some(now);
        }
    }
}
